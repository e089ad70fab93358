"""Scoring sampled predictions against ground truth: the one path validation and evaluation share.

``evaluate`` runs a model over batches of sequences and keeps every number per sample, predicted
frame and sequence (PSNR and SSIM from ``svg.metrics``), the copy-last-frame baseline on the same
sequences and the posterior KL per latent dimension. ``summarize`` turns those into the reported
figures: the mean over N samples, the best of N (chosen per sequence and per metric over the
averaged frames, as in the SVG paper), the baseline, each with a 95% interval over sequences.
Validation is the same call with one sample and every predicted frame averaged.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from tqdm import tqdm

from svg.config import Experiment
from svg.data import SEQ_LEN
from svg.data import eval_batches, open_split
from svg.errors import SvgError
from svg.losses import active_units
from svg.media import write_curves, write_gif, write_strip
from svg.metrics import copy_last, psnr_per_frame, ssim_per_frame
from svg.models import SVG
from svg.tracking import Tracker

MEDIA_SEQUENCES = 4
"""Sequences shown in GIFs and strips."""

MEDIA_SAMPLES = 5
"""Samples drawn for the best-of-N column of the media logged during training."""

Z95 = 1.96
"""Normal quantile of a two-sided 95% interval."""


@dataclass
class Panels:
    """The media sequences: ground truth, the first sample and the best sample by PSNR, each
    (T, k, 3, H, W) with the context frames included."""

    truth: torch.Tensor
    sample: torch.Tensor
    best: torch.Tensor
    n_samples: int

    def videos(self) -> list[tuple[str, torch.Tensor]]:
        """(label, video) columns for ``svg.media``; with one sample there is no best-of column."""
        columns = [("ground truth", self.truth), ("sample", self.sample)]
        return columns + [(f"best of {self.n_samples}", self.best)] if self.n_samples > 1 else columns


@dataclass
class Evaluation:
    psnr: torch.Tensor
    """(N, T, S): sample, predicted frame, sequence."""
    ssim: torch.Tensor
    """(N, T, S)."""
    copy_last_psnr: torch.Tensor
    """(T, S): the last context frame repeated."""
    copy_last_ssim: torch.Tensor
    """(T, S)."""
    kl_per_dim: torch.Tensor
    """(z_dim,) posterior KL to the prior per latent dimension, averaged over steps and sequences."""
    n_past: int
    panels: Panels | None


@dataclass
class _Shown:
    """The first sample and, per sequence, the best so far by PSNR over the predicted frames."""

    first: torch.Tensor | None = None
    best: torch.Tensor | None = None
    score: torch.Tensor | None = None

    def add(self, pred: torch.Tensor, psnr: torch.Tensor) -> None:
        score = psnr.mean(0)
        if self.first is None:
            self.first, self.best, self.score = pred, pred.clone(), score
            return
        better = score > self.score  # strict: ties keep the earlier sample, as best_of_n's argmax does
        self.best[:, better] = pred[:, better]
        self.score = torch.maximum(score, self.score)


def evaluate(
    model: SVG,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_past: int,
    n_samples: int,
    device: torch.device,
    amp: Callable[[], AbstractContextManager],
    seed: int,
    media_sequences: int = MEDIA_SEQUENCES,
) -> Evaluation:
    """Predict every sequence ``n_samples`` times from its first ``n_past`` frames and score each
    following frame. BatchNorm runs in eval mode; z comes from the prior through one generator
    seeded with ``seed``, so the same seed, batches and device give the same numbers. The first
    ``media_sequences`` sequences are kept for media (none when 0)."""
    from svg.train import to_model_layout

    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    psnr, ssim, cl_psnr, cl_ssim, kl_sum, count = [], [], [], [], None, 0
    panels = None
    try:
        with torch.no_grad():
            for frames, cond in batches:
                x, c = to_model_layout(frames, cond, device)
                target, baseline = x[n_past:], copy_last(x, n_past, x.shape[0])
                k = min(media_sequences, x.shape[1]) if panels is None else 0
                shown = _Shown()
                batch_psnr, batch_ssim = [], []
                for _ in range(n_samples):
                    with amp():
                        pred = model.predict(x[:n_past], c, n_past, generator=gen).float()
                    batch_psnr.append(psnr_per_frame(pred, target).cpu())
                    batch_ssim.append(ssim_per_frame(pred, target).float())
                    if k:
                        shown.add(pred[:, :k].cpu(), batch_psnr[-1][:, :k])
                if k:
                    context = x[:n_past, :k].cpu()
                    panels = Panels(
                        x[:, :k].cpu(), torch.cat([context, shown.first]), torch.cat([context, shown.best]), n_samples
                    )
                psnr.append(torch.stack(batch_psnr))
                ssim.append(torch.stack(batch_ssim))
                cl_psnr.append(psnr_per_frame(baseline, target).cpu())
                cl_ssim.append(ssim_per_frame(baseline, target).float())
                kl = _posterior_kl(model, x, c, n_past, amp) * x.shape[1]
                kl_sum, count = (kl if kl_sum is None else kl_sum + kl), count + x.shape[1]
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("evaluate: no sequences to score")
    return Evaluation(
        psnr=torch.cat(psnr, 2),
        ssim=torch.cat(ssim, 2),
        copy_last_psnr=torch.cat(cl_psnr, 1),
        copy_last_ssim=torch.cat(cl_ssim, 1),
        kl_per_dim=kl_sum / count,
        n_past=n_past,
        panels=panels,
    )


def _posterior_kl(
    model: SVG, x: torch.Tensor, c: torch.Tensor, n_past: int, amp: Callable[[], AbstractContextManager]
) -> torch.Tensor:
    """KL per latent dimension of the posterior on these sequences to the prior (fixed or learned),
    averaged over steps and sequences: teacher forced, so it measures the data, not the samples."""
    eps = torch.zeros(x.shape[0] - 1, x.shape[1], model.z_dim, device=x.device)
    with amp():
        return model.training_step(x, c, n_past, True, eps).kld_per_dim.float().cpu()


def mean_ci(per_sequence: torch.Tensor) -> tuple[float, float]:
    """Mean over sequences (the last dimension) and the half-width of its 95% interval,
    1.96 * sample std / sqrt(n); 0 for a single sequence."""
    n = per_sequence.shape[-1]
    values = per_sequence.double()
    half = Z95 * values.std(-1) / math.sqrt(n) if n > 1 else torch.zeros(())
    return values.mean(-1).item(), half.item()


def mean_ci_per_frame(per_sequence: torch.Tensor) -> tuple[list[float], list[float]]:
    """(T, S) -> mean and 95% half-width per frame."""
    pairs = [mean_ci(row) for row in per_sequence]
    return [m for m, _ in pairs], [h for _, h in pairs]


def best_of_n(values: torch.Tensor, frames: int) -> torch.Tensor:
    """(N, T, S) -> (T, S): per sequence, every frame of the sample whose mean over the first
    ``frames`` predicted frames is highest (the first such sample on ties)."""
    index = values[:, :frames].mean(1).argmax(0)  # (S,)
    return values.gather(0, index.expand(1, *values.shape[1:]))[0]


def figures(ev: Evaluation, frames: int) -> dict[str, float]:
    """The headline numbers averaged over the first ``frames`` predicted frames, each with ``_ci95``."""
    per_sequence = {
        "psnr": ev.psnr[:, :frames].mean((0, 1)),
        "ssim": ev.ssim[:, :frames].mean((0, 1)),
        "psnr_best_of_n": best_of_n(ev.psnr, frames)[:frames].mean(0),
        "ssim_best_of_n": best_of_n(ev.ssim, frames)[:frames].mean(0),
        "copy_last_psnr": ev.copy_last_psnr[:frames].mean(0),
        "copy_last_ssim": ev.copy_last_ssim[:frames].mean(0),
    }
    out = {}
    for name, values in per_sequence.items():
        out[name], out[f"{name}_ci95"] = mean_ci(values)
    return out


def summarize(ev: Evaluation, frames: int) -> dict:
    """Everything the evaluation JSON holds: headline figures over the first ``frames`` predicted
    frames (the seed's test protocol: 10), the same over the whole horizon, per-frame curves over
    the horizon with their intervals (best-of-N chosen over the horizon), latent usage."""
    n_samples, horizon, n_sequences = ev.psnr.shape
    if not 0 < frames <= horizon:
        raise ValueError(f"frames = {frames} must be between 1 and the horizon {horizon}")
    curves = {
        "psnr_per_frame": ev.psnr.mean(0),
        "ssim_per_frame": ev.ssim.mean(0),
        "psnr_best_of_n_per_frame": best_of_n(ev.psnr, horizon),
        "ssim_best_of_n_per_frame": best_of_n(ev.ssim, horizon),
        "copy_last_psnr_per_frame": ev.copy_last_psnr,
        "copy_last_ssim_per_frame": ev.copy_last_ssim,
    }
    out: dict = {
        "n_sequences": n_sequences,
        "n_samples": n_samples,
        "n_past": ev.n_past,
        "horizon": horizon,
        "frames": frames,
        **figures(ev, frames),
    }
    for name, values in curves.items():
        out[name], out[f"{name}_ci95"] = mean_ci_per_frame(values)
    out["long_horizon"] = figures(ev, horizon)
    out["kl"] = ev.kl_per_dim.sum().item()
    out["kl_per_dim"] = ev.kl_per_dim.tolist()
    out["active_units"] = active_units(ev.kl_per_dim)
    return _rounded(out)


def _rounded(value, digits: int = 6):
    """Six decimals: far below any real difference, and the JSON stays readable."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def per_frame_series(summary: dict) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """The summary's curves grouped for ``svg.media.write_curves``: metric -> label -> (mean, ci95)."""
    n = summary["n_samples"]
    return {
        metric.upper(): {
            f"mean of {n}": (summary[f"{metric}_per_frame"], summary[f"{metric}_per_frame_ci95"]),
            f"best of {n}": (summary[f"{metric}_best_of_n_per_frame"], summary[f"{metric}_best_of_n_per_frame_ci95"]),
            "copy last": (summary[f"copy_last_{metric}_per_frame"], summary[f"copy_last_{metric}_per_frame_ci95"]),
        }
        for metric in ("psnr", "ssim")
    }


def headline(summary: dict) -> str:
    """One line a person reads first."""
    s, lh = summary, summary["long_horizon"]
    return (
        f"PSNR {s['psnr']:.2f} ± {s['psnr_ci95']:.2f} dB over {s['frames']} frames "
        f"(best of {s['n_samples']} {s['psnr_best_of_n']:.2f}, copy-last {s['copy_last_psnr']:.2f}), "
        f"SSIM {s['ssim']:.3f} (best {s['ssim_best_of_n']:.3f}, copy-last {s['copy_last_ssim']:.3f}); "
        f"{s['horizon']} frames: PSNR {lh['psnr']:.2f} (copy-last {lh['copy_last_psnr']:.2f}); "
        f"{s['active_units']} active latent units; {s['n_sequences']} sequences"
    )


@dataclass
class Options:
    """How ``evaluate_checkpoint`` runs; the evaluate CLI's flags."""

    split: str = "test"
    data_root: str | None = None
    """None: the checkpoint's data.root."""
    samples: int = 10
    frames: int = 10
    horizon: int | None = None
    """Predicted frames; None: every frame after the context (28 of 30 with 2 given)."""
    seed: int = 0
    limit: int | None = None
    batch_size: int | None = None
    """None: the checkpoint's data.batch_size."""
    device: str = "auto"
    precision: str = "fp32"
    tracking: str | None = None
    """W&B mode; None: the checkpoint's tracking.mode."""
    progress: bool = True


def load_model(path: Path) -> tuple[SVG, Experiment, dict]:
    """A checkpoint's model (weights loaded), its experiment and the raw checkpoint dict; SvgError
    naming the file when it is missing, unreadable or not a checkpoint of this project."""
    from svg.train import load_checkpoint

    if not path.is_file():
        raise SvgError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else would get torch's long hint
        raise SvgError(f"checkpoint {path}: not a PyTorch checkpoint (damaged, truncated or another format)")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise SvgError(f"checkpoint {path}: not an svg-sweeps checkpoint (expected 'model' and 'config' entries)")
    try:
        exp = Experiment.model_validate(state["config"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SvgError(f"checkpoint {path}: its config is invalid ({where}: {first['msg']})") from None
    model = SVG(exp.model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as e:
        reason = str(e).splitlines()[0]
        raise SvgError(f"checkpoint {path}: weights do not match its model config ({reason})") from None
    return model, exp, state


def default_output(checkpoint: Path, split: str) -> Path:
    """RUN/eval/SPLIT-NAME.json for a checkpoint in RUN/checkpoints/, else beside the checkpoint."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / "eval" / f"{split}-{checkpoint.stem}.json"


def evaluate_checkpoint(checkpoint: Path, out: Path, opts: Options) -> dict:
    """Evaluate a checkpoint on a split; write the results JSON, a GIF, a strip and a per-frame plot
    beside it, and log them to the checkpoint's W&B run (resumed by id; a new run if it has none)."""
    from svg.train import autocast, setup_runtime

    model, exp, state = load_model(checkpoint)
    n_past = exp.train.n_past
    horizon = opts.horizon or SEQ_LEN - n_past
    if n_past + horizon > SEQ_LEN:
        raise SvgError(f"--horizon: {horizon} predicted frames after {n_past} given exceed the {SEQ_LEN} frames")
    if opts.frames > horizon:
        raise SvgError(f"--frames: {opts.frames} is more than the horizon of {horizon} predicted frames")
    root = opts.data_root or exp.data.root
    dataset = open_split(root, opts.split, seq_len=n_past + horizon)
    n = len(dataset) if opts.limit is None else min(opts.limit, len(dataset))
    batch_size = opts.batch_size or exp.data.batch_size

    runtime_exp = exp.model_copy(deep=True)
    runtime_exp.train.device, runtime_exp.train.precision = opts.device, opts.precision
    rt = setup_runtime(runtime_exp)
    model.to(rt.device)
    batches = tqdm(
        eval_batches(dataset, batch_size, limit=n), total=math.ceil(n / batch_size), unit="batch",
        desc=f"evaluate {opts.split} ({opts.samples} samples)", disable=not opts.progress, dynamic_ncols=True,
    )  # fmt: skip
    ev = evaluate(model, batches, n_past, opts.samples, rt.device, lambda: autocast(rt), opts.seed)
    summary = summarize(ev, opts.frames)

    stem = out.with_suffix("")
    media = {
        "gif": write_gif(stem.with_suffix(".gif"), ev.panels.videos(), n_past),
        "strip": write_strip(stem.with_name(f"{stem.name}_strip.png"), ev.panels.videos(), n_past),
        "per_frame": write_curves(
            stem.with_name(f"{stem.name}_per_frame.png"), per_frame_series(summary), mark=opts.frames
        ),
    }
    result = {
        "checkpoint": str(checkpoint),
        "split": opts.split,
        "data_root": str(root),
        "seed": opts.seed,
        **summary,
        "media": {k: p.name for k, p in media.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    if opts.tracking:
        exp.tracking.mode = opts.tracking
    _log(Tracker(exp, out.parent, run_id=state.get("wandb_id")), result, media)
    return result


def _log(tracker: Tracker, result: dict, media: dict[str, Path]) -> None:
    """Scalars to the history and the summary under ``SPLIT/``, per-frame curves, the media."""
    split = result["split"]
    scalars = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
    scalars.update({f"{split}/long_horizon/{k}": v for k, v in result["long_horizon"].items()})
    lists = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, list)}
    curves = {
        f"{split}/{k}": (result[k], "predicted frame")
        for k in ("psnr_per_frame", "ssim_per_frame", "psnr_best_of_n_per_frame", "copy_last_psnr_per_frame")
    }
    columns = ["figure", "horizon", "mean", "ci95", "best_of_n", "copy_last"]
    rows = [
        [m, frames, r[m], r[f"{m}_ci95"], r[f"{m}_best_of_n"], r[f"copy_last_{m}"]]
        for frames, r in ((result["frames"], result), (result["horizon"], result["long_horizon"]))
        for m in ("psnr", "ssim")
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
