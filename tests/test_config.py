import pytest
from conftest import run_entrypoint

from svg.config import ConfigError, Experiment, load_experiment


def test_presets_load_and_differ():
    seed, cpu = load_experiment("seed"), load_experiment("cpu")
    assert seed.model.encoder == "vgg64" and seed.train.epochs == 300 and seed.data.batch_size == 12
    assert cpu.model.encoder == "dcgan64"
    study = load_experiment("study")  # the cpu preset at a shorter budget, nothing else
    assert study.model == cpu.model and study.kl == cpu.kl and study.tfr == cpu.tfr and study.optim == cpu.optim
    assert study.data == cpu.data and study.train.iters_per_epoch < cpu.train.iters_per_epoch


def test_agent_spellings_parse_into_the_config():
    """wandb agent passes str() of each value: True/False, None, floats in e-notation, dotted names."""
    exp = load_experiment(
        "smoke",
        {
            "kl.mode": "cyclical",
            "model.last_frame_skip": "True",
            "optim.grad_clip": "None",
            "optim.lr": "2e-4",
            "tfr.decay_step": "0.25",
            "tracking.tags": "[a, b]",
        },
    )
    assert exp.kl.mode == "cyclical"
    assert exp.model.last_frame_skip is True
    assert exp.optim.grad_clip is None
    assert exp.optim.lr == 2e-4
    assert exp.tfr.decay_step == 0.25
    assert exp.tracking.tags == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"optim.lr": "-1"}, "optim.lr"),
        ({"kl.mode": "sometimes"}, "kl.mode"),
        ({"model.encoder": "resnet"}, "model.encoder"),
        ({"train.n_future": "40"}, "train.n_past + train.n_future"),
        ({"optim.lr": "inf"}, "optim.lr"),
        ({"kl.beta_max": "nan"}, "kl.beta_max"),
        ({"model.z_dimm": "3"}, "model.z_dimm"),
        ({"kl.ratio": "1.5"}, "kl.ratio"),
        ({"data.batch_size": "many"}, "data.batch_size"),
    ],
)
def test_invalid_values_name_the_field(overrides, named):
    with pytest.raises(ConfigError, match=named.replace("+", r"\+")):
        load_experiment("smoke", overrides)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--optim.lr=-1"], "optim.lr"),
        (["--kl.mode=sometimes"], "kl.mode"),
        (["--nosuch.field=1"], "--nosuch.field"),
        (["--config=nosuchpreset"], "nosuchpreset"),
        (["--train.epochs", "0"], "train.epochs"),
    ],
)
def test_train_cli_exits_2_with_one_line(args, named, tmp_path):
    proc = run_entrypoint("train", "--config=smoke", *args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_field_with_its_description():
    proc = run_entrypoint("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for section, model in Experiment.model_fields.items():
        for name, field in model.annotation.model_fields.items():
            assert f"--{section}.{name}" in text
            assert " ".join(field.description.split()) in text


def test_teacher_forcing_that_never_decays_is_accepted():
    """What a W&B agent runs with --train.epochs=1 appended to a preset whose decay starts later."""
    exp = load_experiment("cpu", {"train.epochs": "1"})
    assert exp.tfr.start_decay_epoch >= exp.train.epochs


def test_a_named_data_root_is_a_dataset_not_a_place_to_generate(tmp_path):
    assert load_experiment("cpu").data.source == "synthetic"
    assert load_experiment("cpu", {"data.root": str(tmp_path)}).data.source == "folder"
    both = load_experiment("cpu", {"data.root": str(tmp_path), "data.source": "synthetic"})
    assert both.data.source == "synthetic"
    (tmp_path / "mine.yaml").write_text(f"data:\n  root: {tmp_path}\n")
    assert load_experiment(str(tmp_path / "mine.yaml")).data.source == "folder"


def test_validation_batches_default_to_the_training_batch():
    assert load_experiment("smoke").val_batch_size == load_experiment("smoke").data.batch_size
    cpu = load_experiment("cpu")  # set apart: larger batches validate faster on a CPU
    assert (cpu.data.batch_size, cpu.val_batch_size) == (8, 32)
    assert load_experiment("seed").val_batch_size == 64
    assert load_experiment("cpu", {"train.val_batch_size": 5}).val_batch_size == 5
