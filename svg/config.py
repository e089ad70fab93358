"""Every hyperparameter of an experiment, typed, bounded and described.

Sources, later wins: a preset or YAML file, dotted overrides (``--kl.mode=cyclical``) from the
command line or a W&B sweep agent. The resolved ``Experiment`` is saved with every run.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from svg.data.course import SEQ_LEN
from svg.errors import SvgError, first_line, validation_line
from svg.values import dotted


class ConfigError(SvgError):
    """A config value, file or override is invalid."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Data(Section):
    source: Literal["synthetic", "folder"] = Field(
        "synthetic",
        description="synthetic: the embedded dataset, generated at data.root on first use; folder: a dataset "
        "already at data.root (a --data.root given without --data.source means folder)",
    )
    root: str = Field("data/synthetic", description="dataset folder in the course layout (or with a packed cache)")
    conditions: Literal["action+position", "action", "none"] = Field(
        "action+position",
        description="what the model is told per step: the action and the arm's position (the seed), the action "
        "alone, or nothing (action-free, as in the SVG paper)",
    )
    window: Literal["first", "random"] = Field(
        "first",
        description="which frames of a training sequence a step sees: its first n_past + n_future (the seed), or "
        "that many from a start drawn per sequence and step",
    )
    n_train: int = Field(2000, gt=0, description="synthetic training sequences to generate")
    n_val: int = Field(128, gt=0, description="synthetic validation sequences to generate")
    n_test: int = Field(256, gt=0, description="synthetic test sequences to generate")
    batch_size: int = Field(12, gt=0, description="sequences per training batch (per process under DDP)")
    num_workers: int = Field(0, ge=0, description="data-loading worker processes (0 = load in the main process)")
    skip_bad: bool = Field(False, description="skip unreadable sequences with a warning instead of stopping")


class Model(Section):
    encoder: Literal["vgg64", "dcgan64"] = Field("vgg64", description="frame encoder/decoder architecture")
    channels: int = Field(64, gt=0, description="base channel width of the encoder/decoder (the seed's vgg64: 64)")
    g_dim: int = Field(128, gt=0, description="size of the frame encoding fed to the LSTMs")
    z_dim: int = Field(64, gt=0, description="size of the latent variable z_t")
    rnn_size: int = Field(256, gt=0, description="hidden units of every LSTM")
    predictor_layers: int = Field(2, gt=0, description="stacked LSTM cells of the frame predictor")
    posterior_layers: int = Field(1, gt=0, description="stacked LSTM cells of the posterior (and learned prior)")
    prior: Literal["fixed", "learned"] = Field(
        "fixed", description="fixed N(0,I) prior (SVG-FP) or a learned prior LSTM (SVG-LP)"
    )
    likelihood: Literal["mse", "psnr", "gaussian", "laplace"] = Field(
        "mse",
        description="reconstruction term: pixel-mean MSE as the seed (beta then weighs nats against it); 'psnr': "
        "the same value, each sequence's frame weighted by the batch's mean MSE over its own, so its gradient is "
        "that of the mean PSNR over frames the evaluation reports (not in SVG or the seed); or a Gaussian/Laplace "
        "negative log-likelihood summed over pixels with a learned scale (beta = 1: the ELBO)",
    )
    last_frame_skip: bool = Field(
        False, description="take decoder skips from the latest input frame instead of the last context frame"
    )
    decoder_condition: bool = Field(
        False,
        description="also give the decoder the step's condition at every scale, tiled over the image beside the "
        "pixel coordinates, so a given position maps to a place in the frame (not in SVG or the seed)",
    )
    composite: bool = Field(
        False,
        description="the decoder paints a frame and a mask, and the prediction is the mask's blend of the frame the "
        "skips come from with the painting, so what does not change is "
        "copied (not in SVG or the seed)",
    )
    position_spots: bool = Field(
        False,
        description="also give the decoder, at every scale, Gaussian spots where a learned affine map of the "
        "end-effector position (x, y, z) puts the arm in the image, starting from x, y read as image coordinates "
        "(needs data.conditions=action+position; not in SVG or the seed)",
    )
    shifted_copy: bool = Field(
        False,
        description="with model.composite and model.position_spots, the mask may also copy the skips' frame moved "
        "by the arm's displacement in the image since that frame, so the gripper is carried along rather than "
        "redrawn (not in SVG or the seed)",
    )
    copy_transforms: int = Field(
        0,
        ge=0,
        le=16,
        description="with model.composite, this many affine transforms of the skips' frame, each predicted from "
        "the step's code and starting as the identity, that the mask may also copy from, so what moves (a rolling "
        "ball, a pushed object, a turning arm) can be carried rather than redrawn (not in SVG or the seed)",
    )
    predictor_batchnorm: bool = Field(
        True,
        description="BatchNorm1d before the frame predictor's tanh, as the seed's text has it (the original SVG "
        "code leaves it out)",
    )

    @model_validator(mode="after")
    def _what_is_copied_needs_a_composite(self) -> Model:
        if self.shifted_copy and not (self.composite and self.position_spots):
            raise ValueError(
                "model.shifted_copy moves the copied frame by the arm's displacement: it needs model.composite and "
                f"model.position_spots, but they are {self.composite} and {self.position_spots}"
            )
        if self.copy_transforms and not self.composite:
            raise ValueError(
                f"model.copy_transforms = {self.copy_transforms} transforms the copied frame: it needs "
                "model.composite, but it is False"
            )
        return self


class KL(Section):
    mode: Literal["monotonic", "cyclical", "none"] = Field("monotonic", description="KL annealing schedule for beta")
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of each cycle during which beta rises")
    cycles: int = Field(3, gt=0, description="number of annealing cycles over the run (cyclical mode)")
    beta_max: float = Field(1.0, ge=0, description="value beta rises to")
    free_bits: float = Field(
        0.0, ge=0, description="nats per latent dimension and step the KL term counts at least (0: plain KL)"
    )


class TeacherForcing(Section):
    start_decay_epoch: float = Field(
        10,
        ge=0,
        description="epoch, possibly fractional, at which the teacher forcing ratio starts to decay "
        "(>= train.epochs: never)",
    )
    decay_step: float | None = Field(
        None, gt=0, le=1, description="decrease of the ratio per epoch (None: reach 0 at the last epoch)"
    )
    lower: float = Field(0.0, ge=0, le=1, description="floor of the teacher-forcing ratio")


class Optim(Section):
    lr: float = Field(0.002, gt=0, description="Adam learning rate")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (None: off)")
    warmup_iters: int = Field(0, ge=0, description="iterations over which the learning rate rises linearly from 0")
    decay: Literal["none", "cosine"] = Field(
        "none", description="after the warm-up: keep optim.lr (none), or follow a cosine down to optim.final_lr"
    )
    final_lr: float = Field(0.0, ge=0, description="learning rate at the last iteration with decay cosine")


class Train(Section):
    epochs: int = Field(300, gt=0, description="training epochs")
    iters_per_epoch: int = Field(600, gt=0, description="optimizer steps per epoch")
    n_past: int = Field(2, gt=0, description="context (ground-truth) frames given to the model")
    n_future: int = Field(10, gt=0, description="frames predicted during training")
    n_eval: int = Field(30, gt=1, description="frames per validation sequence (context + predicted)")
    schedule: Literal["continuous", "epoch"] = Field(
        "continuous",
        description="evaluate beta and tfr at the fractional epoch (iteration / iters_per_epoch) or once per "
        "whole epoch as the seed did",
    )
    log_every: int = Field(10, gt=0, description="log training figures (the only wait for the device) every N steps")
    val_every: int = Field(1, gt=0, description="validate every this many epochs (and after the last)")
    val_sequences: int = Field(128, gt=0, description="validation sequences scored each validation")
    val_batch_size: int | None = Field(
        None,
        gt=0,
        description="sequences per validation batch (default: data.batch_size); on a GPU a larger batch means "
        "fewer kernel launches per validated sequence",
    )
    val_samples: int = Field(
        1, gt=0, description="samples per validation sequence (2 or more also log the best of N, its gain and spread)"
    )
    media_every: int = Field(5, gt=0, description="log a prediction GIF every this many validations")
    checkpoint_every: int = Field(200, gt=0, description="also save a mid-epoch checkpoint every this many iterations")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="validate, select best.pt and evaluate with an exponential moving average of the weights and "
        "BatchNorm statistics, updated every step with this decay (None: the trained weights themselves)",
    )
    max_bad_steps: int = Field(5, gt=0, description="stop after this many non-finite losses in a row")
    seed: int = Field(1, ge=0, description="random seed of data order, initialisation and sampling")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train (auto: cuda when present)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast precision (auto: bf16 on CPUs with AMX or AVX512 bf16, fp32 with TF32 on CUDA, "
        "else fp32)",
    )
    channels_last: bool = Field(
        True,
        description="run convolutions in channels last memory format (on CUDA only eager bf16/fp16 steps use it: "
        "the one case measured faster there)",
    )
    compile: Literal["off", "auto", "default", "reduce-overhead"] = Field(
        "off",
        description="torch.compile the training step: off; auto (default on a CPU or under DDP, reduce-overhead on "
        "one GPU); default (inductor kernels); or reduce-overhead (inductor kernels replayed as CUDA graphs; runs "
        "as default on a CPU); true and false mean default and off. If compiling fails the step runs eagerly",
    )
    threads: int | None = Field(
        None,
        gt=0,
        description="CPU threads for torch (None: all cores of this process; CPU ranks under torchrun share them)",
    )
    deterministic: bool = Field(False, description="deterministic kernels, for exact resume checks")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: Any) -> Any:
        """Older configs, checkpoints and command lines said true/false."""
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
            return "default" if str(value).lower() == "true" else "off"
        return value


class Tracking(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="W&B mode (auto: online with credentials, else offline)"
    )
    project: str = Field("svg-sweeps", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user); None: your default")
    name: str | None = Field(None, description="W&B run name; None: derived from what the run varies")
    group: str | None = Field(None, description="W&B group, e.g. one study")
    tags: list[str] = Field(default_factory=list, description="W&B tags")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    kl: KL = Field(default_factory=KL)
    tfr: TeacherForcing = Field(default_factory=TeacherForcing)
    optim: Optim = Field(default_factory=Optim)
    train: Train = Field(default_factory=Train)
    tracking: Tracking = Field(default_factory=Tracking)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        t = self.train
        if t.n_past + t.n_future > SEQ_LEN:
            raise ValueError(f"train.n_past + train.n_future = {t.n_past + t.n_future} exceeds the {SEQ_LEN} frames")
        if t.n_eval > SEQ_LEN:
            raise ValueError(f"train.n_eval = {t.n_eval} exceeds the {SEQ_LEN} frames of a sequence")
        if t.n_eval <= t.n_past:
            raise ValueError(f"train.n_eval = {t.n_eval} leaves nothing to predict after {t.n_past} context frames")
        if self.model.position_spots and self.data.conditions != "action+position":
            raise ValueError(
                f"model.position_spots needs the end-effector position, but data.conditions = {self.data.conditions!r}"
            )
        return self

    @property
    def val_batch_size(self) -> int:
        """Sequences per validation and evaluation batch: ``train.val_batch_size``, else ``data.batch_size``."""
        return self.train.val_batch_size or self.data.batch_size


PRESETS = ("seed", "svg", "cpu", "study", "smoke")


def _read_yaml(source: str) -> dict[str, Any]:
    if source in PRESETS:
        text = resources.files("svg.presets").joinpath(f"{source}.yaml").read_text()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"--config: {source} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {source} is not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {source} must hold a mapping of sections")
    return data


def _parse_value(text: str) -> Any:
    """Values as a shell or ``wandb agent`` spells them: ``None``/``null`` -> None, lists as YAML."""
    if text in ("None", "null", "~"):
        return None
    if text.startswith("["):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, field = dotted.partition(".")
    if not field or "." in field:
        raise ConfigError(f"--{dotted}: expected --section.field=value")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"--{dotted}: {section} is not a section")
    node[field] = value


def load_experiment(config: str | None = None, overrides: dict[str, Any] | None = None) -> Experiment:
    """Build an Experiment from a preset name or YAML path plus dotted overrides; ConfigError if invalid.

    A ``data.root`` named without ``data.source`` in the same place (file or overrides) is a dataset the
    user has: it must exist. The embedded synthetic set is generated only where ``source: synthetic`` says."""
    tree = _read_yaml(config) if config else {}
    data = tree.get("data")
    if isinstance(data, dict) and "root" in data:
        data.setdefault("source", "folder")
    overrides = dict(overrides or {})
    if "data.root" in overrides:
        overrides.setdefault("data.source", "folder")
    for name, value in overrides.items():
        _set_dotted(tree, name, _parse_value(value) if isinstance(value, str) else value)
    try:
        return Experiment.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(validation_line(e)) from None


def to_yaml(exp: Experiment) -> str:
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)


def flat(exp: Experiment) -> dict[str, Any]:
    """Dotted view (``kl.mode``) used for W&B config, so sweep parameters and config keys coincide."""
    return dotted(exp.model_dump(mode="json"))
