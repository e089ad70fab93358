"""Scoring sampled predictions against ground truth: the one path validation and evaluation share.

``evaluate`` runs a model over batches of sequences and keeps every number per sample, predicted
frame and sequence (PSNR and SSIM from ``svg.metrics``; LPIPS from ``svg.perceptual`` when asked),
the copy-last-frame baseline on the same sequences, the posterior KL per latent dimension and, for
FVD, the I3D features (``svg.fvd``) of the real, the first sample's and the copy-last videos.
``summarize`` turns those into the reported figures: the mean over N samples, the best of N (chosen
per sequence and per metric over the averaged frames, as in the SVG paper; the lowest LPIPS), the
baseline, each with a 95% interval over sequences, and the FVDs. Validation is the same call with
one sample and every predicted frame averaged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from svg.data.loaders import Prefetcher
from svg.fvd import I3D, frechet_distance
from svg.losses import active_units
from svg.metrics import copy_last, psnr_per_frame, ssim_per_frame
from svg.models import SVG
from svg.perceptual import Lpips
from svg.runtime import Runtime
from svg.step import to_model_layout
from svg.values import plain

MEDIA_SEQUENCES = 4
"""Sequences shown in GIFs and strips."""

MEDIA_SAMPLES = 5
"""Samples drawn for the best-of-N column of the media logged during training."""

Z95 = 1.96
"""Normal quantile of a two-sided 95% interval."""

# The names other modules read figures by: fields of ``Window`` and ``Summary``, keys of the evaluation JSON and,
# as ``SPLIT/<protocol>/NAME``, of the W&B summary the study reads. Renaming a figure is a change in this module.
PSNR, SSIM, LPIPS, FVD = "psnr", "ssim", "lpips", "fvd"
PSNR_BEST_OF_N, SSIM_BEST_OF_N, LPIPS_BEST_OF_N = "psnr_best_of_n", "ssim_best_of_n", "lpips_best_of_n"
COPY_LAST_PSNR = "copy_last_psnr"
PSNR_PER_FRAME = "psnr_per_frame"
BEST_MINUS_MEAN = "best_minus_mean"
ACTIVE_UNITS = "active_units"
KL = "kl"
VAL_PSNR, VAL_PSNR_PER_FRAME = f"val/{PSNR}", f"val/{PSNR_PER_FRAME}"
VAL_COPY_LAST_PSNR = "val/psnr_copy_last"
"""The validation record (``validation_record``) keys every figure NAME as ``val/NAME``, but copy-last's PSNR."""
PERCEPTUAL = (LPIPS, LPIPS_BEST_OF_N, FVD)
"""The figures computed only when asked for (``--metrics``)."""


@dataclass
class Panels:
    """The media sequences: ground truth, the first two samples and the best sample by PSNR, each
    (T, k, 3, H, W) with the context frames included (``second`` is None with one sample)."""

    truth: torch.Tensor
    sample: torch.Tensor
    second: torch.Tensor | None
    best: torch.Tensor
    n_samples: int

    def to_cpu(self) -> Panels:
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        return Panels(cpu(self.truth), cpu(self.sample), cpu(self.second), cpu(self.best), self.n_samples)

    def videos(self) -> list[tuple[str, torch.Tensor]]:
        """(label, video) columns for ``svg.media``: two samples side by side show whether the model
        draws different futures; with one sample there is neither a second nor a best-of column."""
        if self.n_samples == 1:
            return [("ground truth", self.truth), ("sample", self.sample)]
        return [
            ("ground truth", self.truth),
            ("sample 1", self.sample),
            ("sample 2", self.second),
            (f"best of {self.n_samples}", self.best),
        ]


@dataclass
class Networks:
    """The networks of the metrics beyond PSNR and SSIM, on the evaluation's device; None: not computed."""

    lpips: Lpips | None = None
    i3d: I3D | None = None
    video_frames: int = 0
    """Predicted frames of each FVD video, after the ground-truth context frames."""


@dataclass
class Videos:
    """I3D features per sequence, (S, D) float64: of the real videos, of the first sample's and of copy-last's, each
    the ground-truth context followed by the first ``Networks.video_frames`` predicted frames."""

    real: torch.Tensor
    sample: torch.Tensor
    copy_last: torch.Tensor


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
    z_use: torch.Tensor
    """(S,) teacher-forced MSE with z from the prior minus with the posterior mean: > 0 when the decoder
    draws on what the posterior encodes, 0 for a model that ignores z."""
    diversity: torch.Tensor
    """(S,) pixel std across the samples, averaged over predicted frames and pixels (0 with one sample)."""
    n_past: int
    panels: Panels | None
    lpips: torch.Tensor | None = None
    """(N, T, S), when LPIPS was computed."""
    copy_last_lpips: torch.Tensor | None = None
    """(T, S)."""
    videos: Videos | None = None
    """When FVD was computed."""


@dataclass
class _Shown:
    """The first two samples and, per sequence, the best so far by PSNR over the predicted frames."""

    first: torch.Tensor | None = None
    second: torch.Tensor | None = None
    best: torch.Tensor | None = None
    score: torch.Tensor | None = None

    def add(self, pred: torch.Tensor, psnr: torch.Tensor) -> None:
        score = psnr.mean(0)
        if self.first is None:
            self.first, self.best, self.score = pred, pred, score
            return
        if self.second is None:
            self.second = pred
        better = score > self.score  # strict: ties keep the earlier sample, as best_of_n's argmax does
        self.best = torch.where(better.view(1, -1, 1, 1, 1), pred, self.best)  # a mask index would wait for the device
        self.score = torch.maximum(score, self.score)

    def panels(self, truth: torch.Tensor, n_past: int, n_samples: int) -> Panels:
        """The media columns, each led by the context frames of ``truth`` (T, k, 3, H, W)."""
        context = truth[:n_past]
        second = None if self.second is None else torch.cat([context, self.second])
        return Panels(truth, torch.cat([context, self.first]), second, torch.cat([context, self.best]), n_samples)


def evaluate(
    model: SVG,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_past: int,
    n_samples: int,
    rt: Runtime,
    seed: int,
    media_sequences: int = MEDIA_SEQUENCES,
    networks: Networks | None = None,
) -> Evaluation:
    """Predict every sequence ``n_samples`` times from its first ``n_past`` frames and score each
    following frame. BatchNorm runs in eval mode; z comes from the prior through one generator
    seeded with ``seed``, so the same seed, batches and device give the same numbers. The first
    ``media_sequences`` sequences are kept for media (none when 0). ``networks``: LPIPS and FVD too."""
    device = rt.device
    nets = networks or Networks()
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    names = ("psnr", "ssim", "cl_psnr", "cl_ssim", "z_use", "div", "lpips", "cl_lpips", "real", "sample", "cl_video")
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    kl_sum, count, panels = None, 0, None
    if device.type == "cuda":  # the next batch loads, pinned, while the device scores this one
        batches = Prefetcher(iter(batches), pin=True)
    try:
        with torch.no_grad():
            for frames, cond in batches:
                x, c = to_model_layout(frames, cond, rt)
                target, baseline = x[n_past:], copy_last(x, n_past, x.shape[0])
                k = min(media_sequences, x.shape[1]) if panels is None else 0
                shown = _Shown()
                batch_psnr, batch_ssim, batch_lpips = [], [], []
                total, total_sq, shift = torch.zeros_like(target), torch.zeros_like(target), None
                for i in range(n_samples):
                    with rt.autocast():
                        pred = model.predict(x[:n_past], c, n_past, generator=gen).float()
                    if nets.i3d is not None and i == 0:  # FVD: one video per sequence, the first draw
                        kept["sample"].append(_video_features(nets, x[:n_past], pred))
                    shift = pred if shift is None else shift  # moments about the first sample: no cancellation
                    total += pred - shift
                    total_sq += (pred - shift).square()
                    batch_psnr.append(psnr_per_frame(pred, target))
                    batch_ssim.append(ssim_per_frame(pred, target).float())
                    if nets.lpips is not None:
                        batch_lpips.append(nets.lpips.per_frame(pred, target))
                    if k:
                        shown.add(pred[:, :k], batch_psnr[-1][:, :k])
                if k:
                    panels = shown.panels(x[:, :k], n_past, n_samples)
                variance = (total_sq / n_samples - (total / n_samples).square()).clamp_min(0)
                kept["div"].append(variance.sqrt().mean((0, 2, 3, 4)))
                kept["psnr"].append(torch.stack(batch_psnr))
                kept["ssim"].append(torch.stack(batch_ssim))
                kept["cl_psnr"].append(psnr_per_frame(baseline, target))
                kept["cl_ssim"].append(ssim_per_frame(baseline, target).float())
                if nets.lpips is not None:
                    kept["lpips"].append(torch.stack(batch_lpips))
                    kept["cl_lpips"].append(nets.lpips.per_frame(baseline, target))
                if nets.i3d is not None:
                    kept["real"].append(_video_features(nets, x[:n_past], target))
                    kept["cl_video"].append(_video_features(nets, x[:n_past], baseline))
                kl, use = _latent_use(model, x, c, n_past, rt, gen)
                kept["z_use"].append(use)
                kl_sum, count = (kl * x.shape[1] if kl_sum is None else kl_sum + kl * x.shape[1]), count + x.shape[1]
    finally:
        model.train(was_training)
        if isinstance(batches, Prefetcher):
            batches.close()
    if not count:
        raise ValueError("evaluate: no sequences to score")
    # One copy to the host at the end: on a GPU nothing above waits for the device.
    psnr, ssim, cl_psnr, cl_ssim, z_use, diversity = (
        torch.cat(kept[name], dim).cpu()
        for name, dim in (("psnr", 2), ("ssim", 2), ("cl_psnr", 1), ("cl_ssim", 1), ("z_use", 0), ("div", 0))
    )
    lpips, cl_lpips, real, sample, cl_video = (
        torch.cat(kept[name], dim).cpu() if kept[name] else None
        for name, dim in (("lpips", 2), ("cl_lpips", 1), ("real", 0), ("sample", 0), ("cl_video", 0))
    )
    return Evaluation(
        psnr=psnr,
        ssim=ssim,
        copy_last_psnr=cl_psnr,
        copy_last_ssim=cl_ssim,
        kl_per_dim=(kl_sum / count).cpu(),
        z_use=z_use,
        diversity=diversity,
        n_past=n_past,
        panels=None if panels is None else panels.to_cpu(),
        lpips=lpips,
        copy_last_lpips=cl_lpips,
        videos=None if real is None else Videos(real, sample, cl_video),
    )


def _video_features(nets: Networks, context: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """I3D features of the context followed by the first ``nets.video_frames`` predicted frames."""
    return nets.i3d.features(torch.cat([context, predicted[: nets.video_frames]]))


def _latent_use(
    model: SVG, x: torch.Tensor, c: torch.Tensor, n_past: int, rt: Runtime, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced passes of the training step's forward: the posterior's KL to the prior per latent
    dimension (averaged over steps and sequences: it measures the data, not the samples), and per
    sequence the MSE with z drawn from the prior minus the MSE with the posterior mean."""
    steps, batch = x.shape[0] - 1, x.shape[1]
    zero = torch.zeros(steps, batch, model.z_dim, device=x.device)
    noise = torch.randn(steps, batch, model.z_dim, device=x.device, generator=gen)
    with rt.autocast():
        posterior = model.training_step(x, c, n_past, True, zero)
        prior = model.training_step(x, c, n_past, True, noise, from_prior=True)

    def per_sequence_mse(pred: torch.Tensor) -> torch.Tensor:
        return (pred.float() - x[1:]).square().mean((0, 2, 3, 4))

    use = per_sequence_mse(prior.pred) - per_sequence_mse(posterior.pred)
    return posterior.kld_per_dim.float(), use


def z_interval(per_sequence: torch.Tensor) -> tuple[float, float]:
    """Mean over sequences (the last dimension) and the half-width of its 95% normal interval,
    1.96 * sample std / sqrt(n); 0 for a single sequence. (Over a few seeds the report uses Student's t:
    ``svg.report.stats.mean_ci``.)"""
    n = per_sequence.shape[-1]
    values = per_sequence.double()
    half = Z95 * values.std(-1) / math.sqrt(n) if n > 1 else torch.zeros(())
    return values.mean(-1).item(), half.item()


def z_interval_per_frame(per_sequence: torch.Tensor) -> tuple[list[float], list[float]]:
    """(T, S) -> mean and 95% half-width per frame."""
    pairs = [z_interval(row) for row in per_sequence]
    return [m for m, _ in pairs], [h for _, h in pairs]


def best_of_n(values: torch.Tensor, frames: int, lower: bool = False) -> torch.Tensor:
    """(N, T, S) -> (T, S): per sequence, every frame of the sample whose mean over the first
    ``frames`` predicted frames is highest (lowest with ``lower``: LPIPS), the first such sample on ties."""
    means = values[:, :frames].mean(1)
    index = means.argmin(0) if lower else means.argmax(0)  # (S,)
    return values.gather(0, index.expand(1, *values.shape[1:]))[0]


DIGITS = 6
"""Decimals a summary keeps: far below any real difference, and the JSON stays readable."""


def _number(value: float) -> float | None:
    return plain(value, DIGITS)  # rounded; None where not finite (a PSNR of a frame predicted exactly)


@dataclass(frozen=True)
class Estimate:
    """A mean over sequences and the half-width of its 95% normal interval (``z_interval``)."""

    mean: float | None
    ci95: float | None

    @classmethod
    def over(cls, per_sequence: torch.Tensor) -> Estimate:
        mean, half = z_interval(per_sequence)
        return cls(_number(mean), _number(half))


@dataclass(frozen=True)
class Curve:
    """Per predicted frame: the mean over sequences and its 95% half-width."""

    mean: list[float | None]
    ci95: list[float | None]

    @classmethod
    def over(cls, per_sequence: torch.Tensor) -> Curve:
        means, halves = z_interval_per_frame(per_sequence)
        return cls([_number(m) for m in means], [_number(h) for h in halves])


F = TypeVar("F")


@dataclass(frozen=True)
class Compared(Generic[F]):
    """One metric three ways: the mean over samples, the best of N and the copy-last baseline."""

    mean: F
    best_of_n: F
    copy_last: F


def _compared(figures: object, metric: str) -> Compared:
    return Compared(
        getattr(figures, metric), getattr(figures, f"{metric}_best_of_n"), getattr(figures, f"copy_last_{metric}")
    )


def _flat(figures: object, suffix: str = "") -> dict[str, object]:
    """A dataclass of Estimates or Curves as the evaluation JSON's keys: NAME<suffix> and NAME<suffix>_ci95."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(figures):
        value = getattr(figures, f.name)
        if value is not None:
            out[f"{f.name}{suffix}"], out[f"{f.name}{suffix}_ci95"] = value.mean, value.ci95
    return out


@dataclass(frozen=True)
class Window:
    """The figures averaged over the first ``frames`` predicted frames, per sequence, then over sequences.
    Best of N is the sample with the best mean over those frames; LPIPS where it was computed."""

    psnr: Estimate
    ssim: Estimate
    psnr_best_of_n: Estimate
    ssim_best_of_n: Estimate
    copy_last_psnr: Estimate
    copy_last_ssim: Estimate
    best_minus_mean: Estimate
    """Paired per sequence: what choosing the best of N samples gains over a typical sample."""
    lpips: Estimate | None = None
    lpips_best_of_n: Estimate | None = None
    copy_last_lpips: Estimate | None = None

    @classmethod
    def of(cls, ev: Evaluation, frames: int) -> Window:
        best_psnr = best_of_n(ev.psnr, frames)[:frames].mean(0)
        mean_psnr = ev.psnr[:, :frames].mean((0, 1))
        lpips = {}
        if ev.lpips is not None:
            lpips = {
                "lpips": Estimate.over(ev.lpips[:, :frames].mean((0, 1))),
                LPIPS_BEST_OF_N: Estimate.over(best_of_n(ev.lpips, frames, lower=True)[:frames].mean(0)),
                "copy_last_lpips": Estimate.over(ev.copy_last_lpips[:frames].mean(0)),
            }
        return cls(
            psnr=Estimate.over(mean_psnr),
            ssim=Estimate.over(ev.ssim[:, :frames].mean((0, 1))),
            psnr_best_of_n=Estimate.over(best_psnr),
            ssim_best_of_n=Estimate.over(best_of_n(ev.ssim, frames)[:frames].mean(0)),
            copy_last_psnr=Estimate.over(ev.copy_last_psnr[:frames].mean(0)),
            copy_last_ssim=Estimate.over(ev.copy_last_ssim[:frames].mean(0)),
            best_minus_mean=Estimate.over(best_psnr - mean_psnr),
            **lpips,
        )

    def compared(self, metric: str) -> Compared[Estimate]:
        """``metric`` (psnr, ssim or lpips) as the mean, the best of N and copy-last."""
        return _compared(self, metric)

    def to_json(self) -> dict[str, object]:
        return _flat(self)


@dataclass(frozen=True)
class Curves:
    """Every frame of the horizon, best of N chosen over the whole horizon."""

    psnr: Curve
    ssim: Curve
    psnr_best_of_n: Curve
    ssim_best_of_n: Curve
    copy_last_psnr: Curve
    copy_last_ssim: Curve
    lpips: Curve | None = None
    lpips_best_of_n: Curve | None = None
    copy_last_lpips: Curve | None = None

    @classmethod
    def of(cls, ev: Evaluation) -> Curves:
        horizon = ev.psnr.shape[1]
        lpips = {}
        if ev.lpips is not None:
            lpips = {
                "lpips": Curve.over(ev.lpips.mean(0)),
                LPIPS_BEST_OF_N: Curve.over(best_of_n(ev.lpips, horizon, lower=True)),
                "copy_last_lpips": Curve.over(ev.copy_last_lpips),
            }
        return cls(
            psnr=Curve.over(ev.psnr.mean(0)),
            ssim=Curve.over(ev.ssim.mean(0)),
            psnr_best_of_n=Curve.over(best_of_n(ev.psnr, horizon)),
            ssim_best_of_n=Curve.over(best_of_n(ev.ssim, horizon)),
            copy_last_psnr=Curve.over(ev.copy_last_psnr),
            copy_last_ssim=Curve.over(ev.copy_last_ssim),
            **lpips,
        )

    def compared(self, metric: str) -> Compared[Curve]:
        """``metric`` (psnr, ssim or lpips) as the mean, the best of N and copy-last."""
        return _compared(self, metric)

    def to_json(self) -> dict[str, object]:
        return _flat(self, "_per_frame")


@dataclass(frozen=True)
class Summary:
    """What an evaluation reports: the headline window (the first ``frames`` predicted frames: the seed's
    test protocol's 10), the same over the whole horizon, per-frame curves, FVD where computed, and how the
    latent is used. Validation, the evaluator, reports and the study read it; ``to_json`` is the evaluation
    JSON's layout."""

    n_sequences: int
    n_samples: int
    n_past: int
    horizon: int
    frames: int
    headline: Window
    long_horizon: Window
    per_frame: Curves
    sample_diversity: float | None
    """Mean pixel spread of the samples."""
    z_use: Estimate
    """MSE with z from the prior minus with the posterior mean, teacher forced."""
    kl: float | None
    """Nats per predicted step."""
    kl_per_dim: list[float | None]
    active_units: int
    fvd: float | None = None
    copy_last_fvd: float | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The per-frame metrics it holds: PSNR, SSIM and, when computed, LPIPS."""
        return (PSNR, SSIM, LPIPS) if self.headline.lpips is not None else (PSNR, SSIM)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "n_sequences": self.n_sequences,
            "n_samples": self.n_samples,
            "n_past": self.n_past,
            "horizon": self.horizon,
            "frames": self.frames,
            **self.headline.to_json(),
            **self.per_frame.to_json(),
            "long_horizon": self.long_horizon.to_json(),
        }
        if self.fvd is not None:
            out[FVD], out[f"copy_last_{FVD}"] = self.fvd, self.copy_last_fvd
        out["sample_diversity"] = self.sample_diversity
        out["z_use"], out["z_use_ci95"] = self.z_use.mean, self.z_use.ci95
        out.update(kl=self.kl, kl_per_dim=self.kl_per_dim, active_units=self.active_units)
        return out

    def describe(self) -> str:
        """What a person reads first: PSNR beside copy-last, over the headline frames and the whole
        horizon, best of N and its paired gain, and whether the latent is used."""
        h, lh, n = self.headline, self.long_horizon, self.n_samples
        return (
            f"PSNR {h.psnr.mean:.2f} ± {h.psnr.ci95:.2f} dB over {self.frames} frames "
            f"(best of {n} {h.psnr_best_of_n.mean:.2f}, copy-last {h.copy_last_psnr.mean:.2f}), "
            f"SSIM {h.ssim.mean:.3f} (best {h.ssim_best_of_n.mean:.3f}, copy-last {h.copy_last_ssim.mean:.3f}); "
            f"{self.horizon} frames: PSNR {lh.psnr.mean:.2f}, best of {n} {lh.psnr_best_of_n.mean:.2f} "
            f"(gain {lh.best_minus_mean.mean:+.2f} ± {lh.best_minus_mean.ci95:.2f}), "
            f"copy-last {lh.copy_last_psnr.mean:.2f}; "
            f"latent: active units {self.active_units}, KL {self.kl:.3g} nats/step, z use {self.z_use.mean:.2g}, "
            f"sample spread {self.sample_diversity:.3f}; {self.n_sequences} sequences"
            + (
                f"; LPIPS {h.lpips.mean:.3f} (best of {n} {h.lpips_best_of_n.mean:.3f}, "
                f"copy-last {h.copy_last_lpips.mean:.3f})"
                if h.lpips is not None
                else ""
            )
            + (f"; FVD {self.fvd:.1f} (copy-last {self.copy_last_fvd:.1f})" if self.fvd is not None else "")
        )

    def per_frame_series(self) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
        """The curves grouped for ``svg.media.write_curves``: metric -> label -> (mean, ci95)."""
        n, series = self.n_samples, {}
        for metric in self.metrics:
            curves = self.per_frame.compared(metric)
            series[metric.upper()] = {
                f"mean of {n}": (curves.mean.mean, curves.mean.ci95),
                f"best of {n}": (curves.best_of_n.mean, curves.best_of_n.ci95),
                "copy last": (curves.copy_last.mean, curves.copy_last.ci95),
            }
        return series


def summarize(ev: Evaluation, frames: int) -> Summary:
    """The reported figures of an evaluation, over its first ``frames`` predicted frames and its horizon."""
    n_samples, horizon, n_sequences = ev.psnr.shape
    if not 0 < frames <= horizon:
        raise ValueError(f"frames = {frames} must be between 1 and the horizon {horizon}")
    fvd = {}
    if ev.videos is not None:  # one number per set of videos: no interval over sequences
        fvd = {
            FVD: _number(frechet_distance(ev.videos.sample, ev.videos.real)),
            "copy_last_fvd": _number(frechet_distance(ev.videos.copy_last, ev.videos.real)),
        }
    return Summary(
        n_sequences=n_sequences,
        n_samples=n_samples,
        n_past=ev.n_past,
        horizon=horizon,
        frames=frames,
        headline=Window.of(ev, frames),
        long_horizon=Window.of(ev, horizon),
        per_frame=Curves.of(ev),
        sample_diversity=_number(ev.diversity.mean().item()),
        z_use=Estimate.over(ev.z_use),
        kl=_number(ev.kl_per_dim.sum().item()),
        kl_per_dim=[_number(v) for v in ev.kl_per_dim.tolist()],
        active_units=active_units(ev.kl_per_dim),
        **fvd,
    )


def validation_record(summary: Summary) -> dict:
    """What a validation logs (``val/…``): PSNR over every predicted frame beside copy-last, and how
    the latent is used; with several samples also best-of-N, its paired gain and the samples' spread."""
    s, window = summary, summary.headline
    record = {
        VAL_PSNR: window.psnr.mean,
        f"val/{SSIM}": window.ssim.mean,
        VAL_COPY_LAST_PSNR: window.copy_last_psnr.mean,
        VAL_PSNR_PER_FRAME: [None if v is None else round(v, 4) for v in s.per_frame.psnr.mean],
        f"val/{KL}": s.kl,
        f"val/{ACTIVE_UNITS}": s.active_units,
        "val/z_use": s.z_use.mean,
    }
    if s.n_samples > 1:
        record[f"val/{PSNR_BEST_OF_N}"] = window.psnr_best_of_n.mean
        record[f"val/{BEST_MINUS_MEAN}"] = window.best_minus_mean.mean
        record[f"val/{BEST_MINUS_MEAN}_ci95"] = window.best_minus_mean.ci95
        record["val/sample_diversity"] = s.sample_diversity
    return record


def validation_line(summary: Summary, best_psnr: float) -> str:
    """A validation's figures as training prints them beside its epoch and schedules."""
    s, window = summary, summary.headline
    gain = f"best-of-{s.n_samples} gain {window.best_minus_mean.mean:+.2f} dB  " if s.n_samples > 1 else ""
    return (
        f"val psnr {window.psnr.mean:.2f} dB (copy-last {window.copy_last_psnr.mean:.2f}, best {best_psnr:.2f})  "
        f"{gain}kl {s.kl:.3g} nats/step, active units {s.active_units}"
    )
