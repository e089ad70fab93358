"""The evaluator: a checkpoint scored on a split under a named protocol (``svg.protocols``), written as
JSON with media beside it, and logged to the checkpoint's W&B run. The numbers come from
``svg.evaluation``, as validation's do; the weights of LPIPS and FVD from ``svg.weights``, found
before anything runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from svg.checkpoint import load_model, model_weights
from svg.data import SEQ_LEN, eval_batches, open_split
from svg.errors import SvgError
from svg.evaluation import COPY_LAST_PSNR, LPIPS, PSNR, PSNR_BEST_OF_N, SSIM, Networks, Summary, evaluate, summarize
from svg.fvd import load_i3d
from svg.media import write_curves, write_gif, write_strip
from svg.perceptual import BACKBONES, load_lpips
from svg.protocols import ALWAYS, METRICS, PROTOCOLS, SSIM_SETTINGS, FvdSettings, LpipsSettings
from svg.runtime import setup_runtime
from svg.tracking import Tracker
from svg.weights import I3D, find_all


@dataclass
class EvaluationOptions:
    """How ``evaluate_checkpoint`` runs; the evaluate CLI's flags."""

    split: str = "test"
    protocol: str = "project"
    """A PROTOCOLS name; the results say "custom" where samples, frames or horizon depart from it."""
    data_root: str | None = None
    """None: the checkpoint's data.root."""
    samples: int | None = None
    frames: int | None = None
    horizon: int | None = None
    """samples, frames, horizon: None takes the protocol's (a horizon of None there: every frame after the
    context, 28 of 30 with 2 given)."""
    metrics: tuple[str, ...] | None = None
    """Names from ``svg.protocols.METRICS``; None: the protocol's. PSNR and SSIM are always computed."""
    lpips_net: str | None = None
    """alex or vgg; None: the protocol's."""
    lpips_weights: str | None = None
    """The LPIPS backbone's weights file; None: torch's cache, fetched there when missing (``svg.weights``)."""
    i3d: str | None = None
    """The FVD I3D TorchScript file; None: torch's cache, fetched there when missing."""
    seed: int = 0
    limit: int | None = None
    """None: the protocol's number of sequences, else the whole split."""
    batch_size: int | None = None
    """None: the checkpoint's train.val_batch_size, else its data.batch_size."""
    weights: str = "auto"
    """ema, trained, or auto: the moving average where the checkpoint has one (``svg.checkpoint.load_model``)."""
    device: str = "auto"
    precision: str = "fp32"
    tracking: str | None = None
    """W&B mode; None: the checkpoint's tracking.mode."""
    progress: bool = True


def default_output(checkpoint: Path, split: str) -> Path:
    """RUN/eval/SPLIT-NAME.json for a checkpoint in RUN/checkpoints/, else beside the checkpoint."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "eval" / f"{split}-{checkpoint.stem}.json"


def evaluate_checkpoint(checkpoint: Path, out: Path, opts: EvaluationOptions) -> Summary:
    """Evaluate a checkpoint on a split; write the results JSON, a GIF, a strip and a per-frame plot
    beside it, and log them to the checkpoint's W&B run (resumed by id; a new run if it has none)."""
    model, exp, state = load_model(checkpoint, opts.weights)
    n_past = exp.train.n_past
    protocol = PROTOCOLS[opts.protocol]
    if protocol.n_past not in (None, n_past):
        raise SvgError(
            f"--protocol {protocol.name}: needs {protocol.n_past} given frames; the model was trained on {n_past}"
        )
    as_named = (protocol.samples, protocol.frames, protocol.horizon or SEQ_LEN - n_past)
    samples, frames, horizon = (
        given or named for given, named in zip((opts.samples, opts.frames, opts.horizon), as_named, strict=True)
    )
    if n_past + horizon > SEQ_LEN:
        raise SvgError(f"--horizon: {horizon} predicted frames after {n_past} given exceed the {SEQ_LEN} frames")
    if frames > horizon:
        raise SvgError(f"--frames: {frames} is more than the horizon of {horizon} predicted frames")
    metrics = tuple(m for m in METRICS if m in {*ALWAYS, *(opts.metrics or protocol.metrics)})
    lpips_net = opts.lpips_net or protocol.lpips_net
    wanted = [(BACKBONES[lpips_net], opts.lpips_weights)] if "lpips" in metrics else []
    wanted += [(I3D, opts.i3d)] if "fvd" in metrics else []
    found = iter(find_all(wanted))  # before anything runs: a missing file fails at once
    lpips_weights = next(found) if "lpips" in metrics else None
    i3d_weights = next(found) if "fvd" in metrics else None
    root = opts.data_root or exp.data.root
    dataset = open_split(root, opts.split, seq_len=n_past + horizon, conditions=exp.data.conditions)
    limit = opts.limit or protocol.sequences
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if "fvd" in metrics and n < 2:
        raise SvgError(f"--metrics fvd: a Frechet distance needs 2 sequences at least, {n} scored")
    batch_size = opts.batch_size or exp.val_batch_size

    rt = setup_runtime(exp.train.model_copy(update={"device": opts.device, "precision": opts.precision}))
    model.to(rt.device).in_layout(rt.channels_last)
    batches = tqdm(
        eval_batches(dataset, batch_size, limit=n),
        total=math.ceil(n / batch_size),
        unit="batch",
        desc=f"evaluate {opts.split} ({samples} samples)",
        disable=not opts.progress,
        dynamic_ncols=True,
    )
    networks = Networks(
        lpips=None if lpips_weights is None else load_lpips(lpips_net, lpips_weights.path, rt.device),
        i3d=None if i3d_weights is None else load_i3d(i3d_weights.path, rt.device),
        video_frames=frames,
    )
    ev = evaluate(model, batches, n_past, samples, rt, opts.seed, networks=networks)
    summary = summarize(ev, frames)

    stem = out.with_suffix("")
    curves = summary.per_frame_series()
    media = {
        "gif": write_gif(stem.with_suffix(".gif"), ev.panels.videos(), n_past),
        "strip": write_strip(stem.with_name(f"{stem.name}_strip.png"), ev.panels.videos(), n_past),
        "per_frame": write_curves(stem.with_name(f"{stem.name}_per_frame.png"), curves, mark=frames),
    }
    named = (samples, frames, horizon) == as_named and protocol.sequences in (None, n)
    named = named and ("lpips" not in metrics or lpips_net == protocol.lpips_net)
    stamp = {
        "name": protocol.name if named else "custom",
        "n_past": n_past,
        "frames": frames,
        "horizon": horizon,
        "samples": samples,
        "ssim": SSIM_SETTINGS,
    }
    if metrics != ALWAYS:  # the stamp of a PSNR and SSIM evaluation stays as it was
        stamp["metrics"] = list(metrics)
    if lpips_weights is not None:
        stamp["lpips"] = {**asdict(LpipsSettings(lpips_net)), "weights": lpips_weights.stamp()}
    if i3d_weights is not None:
        fvd = FvdSettings(videos=n, frames=n_past + frames, context_frames=n_past)
        stamp["fvd"] = {**asdict(fvd), "weights": i3d_weights.stamp()}
    result = {
        "checkpoint": str(checkpoint),
        "split": opts.split,
        "data_root": str(root),
        "seed": opts.seed,
        "weights": model_weights(state, opts.weights),
        "protocol": stamp,
        **summary.to_json(),
        "media": {k: p.name for k, p in media.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    if opts.tracking:
        exp.tracking.mode = opts.tracking
    _log(Tracker(exp, out.parent, run_id=state.get("wandb_id")), result, summary, media)
    return summary


def _log(tracker: Tracker, result: dict, summary: Summary, media: dict[str, Path]) -> None:
    """Scalars to the history and the summary under ``SPLIT/``, per-frame curves, the media."""
    split = result["split"]
    scalars = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
    scalars.update({f"{split}/long_horizon/{k}": v for k, v in result["long_horizon"].items()})
    lists = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, list)}
    plotted = [PSNR, SSIM, PSNR_BEST_OF_N, COPY_LAST_PSNR] + ([LPIPS] if LPIPS in summary.metrics else [])
    curves = {
        f"{split}/{name}_per_frame": (getattr(summary.per_frame, name).mean, "predicted frame") for name in plotted
    }
    columns = ["figure", "horizon", "mean", "ci95", "best_of_n", "copy_last"]
    rows = [
        [m, frames, c.mean.mean, c.mean.ci95, c.best_of_n.mean, c.copy_last.mean]
        for frames, w in ((summary.frames, summary.headline), (summary.horizon, summary.long_horizon))
        for m in summary.metrics
        for c in [w.compared(m)]
    ]
    tracker.log(
        {**scalars, **lists},
        tables={f"{split}/results": (columns, rows)},
        gifs={f"{split}/media/prediction": media["gif"]},
        images={f"{split}/media/strip": media["strip"], f"{split}/media/per_frame": media["per_frame"]},
        curves=curves,
    )
    tracker.summary(scalars)
    tracker.finish()
