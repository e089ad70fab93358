"""The compiled training step (``train.compile``): it trains exactly as the eager step, one graph per
teacher forcing branch with no graph break, a non-finite loss still skips the update; ``reduce-overhead``
(CUDA graphs) runs as ``default`` on a CPU; the CUDA runtime choices rest on the H100 measurement."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from svg.config import Model, Optim, Train, load_experiment
from svg.errors import SvgError
from svg.models import SVG
from svg.runtime import Runtime, resolve_channels_last, resolve_precision
from svg.step import CompiledStep, Parts, StepInput, _warn_once, make_optimizer, make_step

CPU = Runtime(torch.device("cpu"), None, channels_last=False)


def tiny(prior: str = "learned") -> SVG:
    torch.manual_seed(0)
    return SVG(Model(encoder="dcgan64", channels=8, g_dim=16, z_dim=4, rnn_size=16, prior=prior))


def batch(b: int = 3, steps: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, steps, 64, 64, 3), dtype=torch.uint8, generator=g)
    return frames, torch.randn(b, steps, 7, generator=g), torch.randn(4, steps - 1, b, 4, generator=g)


@pytest.mark.parametrize(
    ("given", "means"),
    [(True, "default"), (False, "off"), ("True", "default"), ("false", "off"), ("reduce-overhead", "reduce-overhead")],
)
def test_compile_accepts_the_modes_and_the_old_booleans(given, means):
    assert load_experiment("smoke", {"train.compile": given}).train.compile == means


def test_an_unknown_compile_mode_is_named():
    with pytest.raises(SvgError, match=r"^train\.compile: .*'reduce-overhead'.*\(got 'max'\)$"):
        load_experiment("smoke", {"train.compile": "max"})


def test_cuda_auto_precision_is_fp32_and_channels_last_only_helps_eager_autocast():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_precision("auto", cuda) == "fp32" and resolve_precision("bf16", cuda) == "bf16"
    assert resolve_channels_last(Train(channels_last=True), cuda, "fp32") is False
    assert resolve_channels_last(Train(channels_last=True), cuda, "bf16") is True
    assert resolve_channels_last(Train(channels_last=False), cuda, "bf16") is False
    with pytest.warns(UserWarning, match="channels_last=false"):
        assert resolve_channels_last(Train(channels_last=True, compile="default"), cuda, "bf16") is False
    for compile_mode in ("off", "reduce-overhead"):  # the CPU follows the setting
        assert resolve_channels_last(Train(channels_last=True, compile=compile_mode), cpu, "fp32") is True


def test_reduce_overhead_runs_as_default_on_a_cpu_with_one_warning():
    model = tiny()
    parts = Parts(model, make_optimizer(model, Optim()), CPU)
    _warn_once.cache_clear()
    with pytest.warns(UserWarning, match="reduce-overhead runs as default on a CPU") as caught:
        step = make_step(parts, "reduce-overhead")
        make_step(parts, "reduce-overhead")
    assert isinstance(step, CompiledStep) and step.mode == "default" and not step.graphs
    assert len([w for w in caught if "reduce-overhead" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="train.compile"):
        CompiledStep(parts, "off")


def test_auto_compiles_on_a_cpu_and_a_failing_compiler_falls_back_to_the_eager_step(monkeypatch, one_thread):
    """train.compile=auto is default (inductor) on a CPU; when compiling fails the run goes on eagerly,
    said once, and the step computes what the eager step computes."""
    from svg.step import resolve_compile

    assert resolve_compile("auto", CPU) == "default" and resolve_compile("off", CPU) == "off"
    assert load_experiment("smoke", {"train.compile": "auto"}).train.compile == "auto"

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    frames, cond, eps = batch()
    models = [tiny("fixed") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    parts = [Parts(m, make_optimizer(m, Optim()), CPU) for m in models]
    _warn_once.cache_clear()
    step = make_step(parts[0], "auto")
    assert isinstance(step, CompiledStep) and step.mode == "default"
    with pytest.warns(UserWarning, match=r"train.compile=default failed \(RuntimeError: InvalidCxxCompiler"):
        fig = step(StepInput(frames, cond, eps[0], 2, True, 1e-3))
    assert step.mode == "off"
    eager = make_step(parts[1], "off")(StepInput(frames, cond, eps[0], 2, True, 1e-3))
    assert fig.loss.item() == eager.loss.item()
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True))
    step(StepInput(frames, cond, eps[1], 2, False, 1e-3))  # the other branch steps eagerly too


def test_auto_on_one_cpu_process_compiles_the_teacher_forced_branch_only(monkeypatch):
    """A free-running step under train.compile=auto on a CPU never reaches the compiler; the teacher-forced one
    does, and a mode named explicitly compiles both."""
    from svg.step import compiles_free_running

    assert not compiles_free_running("auto", CPU) and compiles_free_running("default", CPU)
    compiled_calls = []

    def counting_compile(fn, **kwargs):
        def compiled(*args, **kw):
            compiled_calls.append(args[0].teacher_forcing)
            return fn(*args, **kw)

        return compiled

    monkeypatch.setattr(torch, "compile", counting_compile)
    frames, cond, eps = batch()
    for mode, expected in (("auto", [True]), ("default", [True, False])):
        compiled_calls.clear()
        model = tiny()
        step = make_step(Parts(model, make_optimizer(model, Optim()), CPU), mode)
        step(StepInput(frames, cond, eps[0], 2, True, 1e-3))
        fig = step(StepInput(frames, cond, eps[1], 2, False, 1e-3))
        assert compiled_calls == expected and bool(fig.finite), mode


@pytest.fixture
def float64():
    """float64 weights and batches: float32 rounding of gradients that are mathematically zero (the
    convolution biases before batch norm) would otherwise flip Adam's first steps by +-lr."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_compiled_step_trains_as_the_eager_step(float64, teacher_forcing, device):
    """Learned prior, gradient clipping, beta changing every step: losses, weights, Adam's moments and
    the batch-norm statistics after each step equal the eager step's, from one graph without breaks.
    On CUDA the compiled step replays as CUDA graphs: inductor skipped none."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    frames, cond, eps = batch()
    rt = Runtime(torch.device(device), None, channels_last=False)
    eps = eps.to(rt.device)
    initial = tiny("learned").to(rt.device)
    runs = {}
    for mode in ("off", "reduce-overhead"):
        model = copy.deepcopy(initial)
        parts = Parts(model, make_optimizer(model, Optim(grad_clip=0.5)), rt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step = make_step(parts, mode)
        losses, states = [], []
        for i in range(3):
            losses.append(step(StepInput(frames, cond, eps[i], 2, teacher_forcing, 1e-4 * (i + 1))).loss.item())
            states.append([t.detach().clone() for t in (*model.parameters(), *model.buffers())])
        states.append([s["exp_avg_sq"].clone() for s in parts.optimizer.state.values()])
        before = [p.detach().clone() for p in model.parameters()]
        skipped = step(StepInput(frames, cond, torch.full_like(eps[3], float("nan")), 2, teacher_forcing, 1e-4))
        assert not skipped.finite.item()
        assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
        runs[mode] = losses, states
    (eager_losses, eager_states), (compiled_losses, compiled_states) = runs["off"], runs["reduce-overhead"]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert len(set(eager_losses)) == 3  # the weights moved
    for eager, compiled in zip(eager_states, compiled_states, strict=True):
        for a, b in zip(eager, compiled, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-9)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # one branch, beta and the batch change without recompiling
    if device == "cuda":
        assert counters["inductor"]["cudagraph_skips"] == 0
