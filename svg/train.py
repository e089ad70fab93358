"""Training, top to bottom: runtime, run folder, data, model, resume, the loop, validation, checkpoints.

A run folder holds config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, media/ and the W&B run.
Resume is the normal path: a checkpoint holds everything needed to continue (weights, optimizer, RNG
states, position in the data stream, running sums, W&B run id). A folder that holds a run is never
written by a new one. The step (``svg.step``) never waits for the host; the loop reads its figures
every ``train.log_every`` iterations.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from svg.checkpoint import CheckpointWriter, architecture_mismatch, load_latest, rng_state, set_rng_state
from svg.config import Experiment, to_yaml
from svg.data import Prefetcher, ensure_synthetic, eval_batches, open_split, train_batches, training_clips
from svg.errors import Interrupted, SvgError
from svg.evaluation import (
    MEDIA_SAMPLES,
    MEDIA_SEQUENCES,
    VAL_COPY_LAST_PSNR,
    VAL_PSNR_PER_FRAME,
    Summary,
    evaluate,
    summarize,
    validation_line,
    validation_record,
)
from svg.losses import active_units
from svg.media import write_gif, write_strip
from svg.models import SVG
from svg.runtime import Runtime, setup_runtime
from svg.schedules import beta_at, epoch_progress, learning_rate, teacher_forcing_ratio
from svg.step import CompiledStep, Divergence, Parts, StepInput, Sums, compile_counts, make_optimizer, make_step
from svg.tracking import METRICS_FILE, Tracker


class TrainingStopped(SvgError):
    """Training cannot go on (diverged, or the run folder does not match); the last checkpoint is intact."""


def holds_run(out: Path) -> bool:
    """A folder another run already wrote: its config, metrics or checkpoints."""
    return (out / "config.yaml").exists() or (out / METRICS_FILE).exists() or any(out.glob("checkpoints/*.pt"))


class TrainingState:
    """Where a run stands, apart from its weights and optimizer: iteration, best validation PSNR, validations
    done, training wall time, the running sums, the divergence counts, every rank's random streams and the W&B
    run id. ``state_dict`` and ``load_state_dict`` are the one list of what a checkpoint keeps of it.

    Under DDP ``state_dict`` is a collective (every rank's random streams are gathered to every rank) and
    each rank continues its own streams on resume; resumed on another number of ranks, rank 0 takes the
    saved rank 0's and every other rank seeds its own from the run's seed, its rank and the iteration, so
    that no two ranks draw the same noise."""

    def __init__(self, seed: int, z_dim: int, rt: Runtime):
        self.seed, self.rt = seed, rt
        self.iteration, self.best_psnr, self.validations = 0, -math.inf, 0
        self.elapsed_before, self._clock = 0.0, time.perf_counter()  # training time of earlier processes
        self.window, self.epoch_sums = Sums(z_dim, rt.device), Sums(z_dim, rt.device)
        self.divergence = Divergence(rt.device)
        self.wandb_id: str | None = None
        torch.manual_seed(seed + rt.rank)
        random.seed(seed)
        np.random.seed(seed)
        self.tf_gen = torch.Generator().manual_seed(seed)  # one coin for all ranks: one branch, no waiting

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds this run has spent in its training loop (validation included), over every resume."""
        return self.elapsed_before + time.perf_counter() - self._clock

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "best_psnr": self.best_psnr,
            "validations": self.validations,
            "elapsed_s": self.elapsed(),
            "window": self.window.state(),
            "epoch_sums": self.epoch_sums.state(),
            "divergence": self.divergence.counts.cpu(),
            "rng": self._random_streams(),
            "wandb_id": self.wandb_id,
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.best_psnr = state["iteration"], state["best_psnr"]
        self.validations = state["validations"]
        self.elapsed_before = state.get("elapsed_s", 0.0)  # absent in checkpoints older than the figure
        self.window.load(state["window"])
        self.epoch_sums.load(state["epoch_sums"])
        self.divergence.counts.copy_(state["divergence"])
        self.wandb_id = state["wandb_id"]
        streams = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        rank = self.rt.rank
        if len(streams) == self.rt.world_size:
            set_rng_state(streams[rank], self.tf_gen)
            return
        set_rng_state(streams[0], self.tf_gen)
        if rank:
            torch.manual_seed(self.seed + rank + 1_000_003 * self.iteration)  # the CUDA generators too

    def _random_streams(self) -> list[dict]:
        mine = rng_state(self.tf_gen)
        if self.rt.world_size == 1:
            return [mine]
        streams: list = [None] * self.rt.world_size
        dist.all_gather_object(streams, mine)
        return streams


class Trainer:
    def __init__(self, exp: Experiment, out: Path, resume: str | None = None):
        self.exp, self.out = exp, out
        self.rt = setup_runtime(exp.train)
        self.ckpt_dir, self.media_dir = out / "checkpoints", out / "media"
        saved = self._resume_state(resume)
        if self.rt.main and resume is None and holds_run(out):
            raise SvgError(f"--out: {out} already holds a run; continue it with --resume auto or choose another --out")
        self.state = TrainingState(exp.train.seed, exp.model.z_dim, self.rt)
        self._open_data()
        if self.rt.main:
            _make_run_folder(out, exp)
        self._build_model()
        if saved is not None:
            self._load(saved)
        self.step = make_step(self.parts, exp.train.compile)  # eager, compiled, or replayed as CUDA graphs
        self.writer = CheckpointWriter()
        self.tracker = Tracker(exp, out, run_id=self.state.wandb_id, enabled=self.rt.main)
        self.state.wandb_id = self.tracker.run_id
        if self.rt.main and resume is not None:
            self.tracker.truncate_after("iter", self.state.iteration)  # what a killed run logged after its checkpoint
        self.stop_signal: int | None = None

    def _open_data(self) -> None:
        """The training and validation splits (the embedded set generated first where the config says so)."""
        data, cfg = self.exp.data, self.exp.train
        if data.source == "synthetic" and self.rt.main:
            ensure_synthetic(data.root, data.n_train, data.n_val, data.n_test, seed=0, progress=True)
        if self.rt.world_size > 1:
            dist.barrier()
        self.seq_len = cfg.n_past + cfg.n_future
        self.train_set = open_split(data.root, "train", self.seq_len, data.skip_bad, data.conditions)
        self.val_set = open_split(data.root, "validate", cfg.n_eval, data.skip_bad, data.conditions)

    def _build_model(self) -> None:
        """The model in the runtime's layout, what a step updates (DDP-wrapped under several processes) and the
        moving average of its weights."""
        exp, rt = self.exp, self.rt
        self.model = SVG.for_experiment(exp).to(rt.device).in_layout(rt.channels_last)
        forward = self.model
        if rt.world_size > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        optimizer = make_optimizer(self.model, exp.optim)
        self.parts = Parts(self.model, optimizer, rt, exp.optim.grad_clip, forward, free_bits=exp.kl.free_bits)
        decay = exp.train.ema_decay
        self.ema = (
            None
            if decay is None
            else AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        )

    def _load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(saved["ema"])
            self.ema.n_averaged.fill_(saved["ema_steps"])
        self.parts.optimizer.load_state_dict(saved["optimizer"])
        self.parts.scaler.load_state_dict(saved["scaler"])
        self.state.load_state_dict(saved)

    def _resume_state(self, resume: str | None) -> dict | None:
        if resume is None:
            return None
        state = load_latest(self.ckpt_dir)
        if state is None:
            if resume == "must":
                raise SvgError(f"--resume: no checkpoint in {self.ckpt_dir}")
            return None
        diff = architecture_mismatch(state["config"], self.exp)
        if diff:
            raise SvgError(
                f"--resume: the checkpoint in {self.ckpt_dir} was trained with other settings: {', '.join(diff)}"
            )
        return state

    def checkpoint(self, *names: str) -> None:
        """Save the run's state as checkpoints/<name>.pt for each name (default: last), written in the
        background (``CheckpointWriter``) by rank 0; last.pt keeps its predecessor as last.prev.pt. Under DDP
        every rank calls it at the same iteration: the checkpoint keeps each rank's random streams."""
        progress = self.state.state_dict()  # a collective under DDP: every rank calls it
        if not self.rt.main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.parts.optimizer.state_dict(),
            "scaler": self.parts.scaler.state_dict(),
            **({} if self.ema is None else {"ema": self.ema.module.state_dict(), "ema_steps": self.ema.n_averaged}),
            "config": self.exp.model_dump(mode="json"),
            **progress,
        }
        names = names or ("last",)
        self.writer.save(state, [(self.ckpt_dir / f"{name}.pt", name == "last") for name in names])

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the last epoch's end (or to a signal: a checkpoint, then ``Interrupted``); returns the last
        epoch's record."""
        exp, cfg, rt, state = self.exp, self.exp.train, self.rt, self.state
        total = cfg.epochs * cfg.iters_per_epoch
        batches = train_batches(
            self.train_set,
            exp.data.batch_size,
            seed=cfg.seed,
            num_workers=exp.data.num_workers,
            rank=rt.rank,
            world_size=rt.world_size,
            start_batch=state.iteration,
        )
        if rt.device.type == "cuda":  # the next batch loads, pinned, while the step runs
            batches = Prefetcher(batches, pin=True)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=total, initial=state.iteration, disable=not rt.main, unit="it", dynamic_ncols=True)
        result: dict = {}
        window_start, window_iter = time.perf_counter(), state.iteration
        state.start_clock()
        try:
            while state.iteration < total:
                progress = epoch_progress(state.iteration, cfg)
                beta, tfr = beta_at(progress, cfg.epochs, exp.kl), teacher_forcing_ratio(progress, cfg.epochs, exp.tfr)
                for group in self.parts.optimizer.param_groups:
                    group["lr"] = learning_rate(state.iteration, total, exp.optim)
                frames, cond = next(batches)
                frames, cond = training_clips(
                    frames, cond, self.seq_len, exp.data.window == "random", cfg.seed, state.iteration, rt.rank
                )
                batch = frames.shape[0]
                teacher_forcing = bool(torch.rand((), generator=state.tf_gen) < tfr)  # a Python bool: one graph each
                eps = torch.randn(self.seq_len - 1, batch, exp.model.z_dim, device=rt.device)
                fig = self.step(StepInput(frames, cond, eps, cfg.n_past, teacher_forcing, beta))
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                for sums in (state.window, state.epoch_sums):
                    sums.add(fig, teacher_forcing)
                state.divergence.add(fig.finite)
                state.iteration += 1
                bar.update()
                if state.iteration % cfg.log_every == 0 or state.iteration % cfg.iters_per_epoch == 0:
                    seqs = (state.iteration - window_iter) * batch * rt.world_size
                    window_start = self._log_window(int(progress), beta, tfr, seqs, window_start, bar)
                    window_iter = state.iteration
                if state.iteration % cfg.iters_per_epoch == 0:
                    result = self._end_epoch(int(progress), beta, tfr)
                    window_start = time.perf_counter()  # the training rate leaves validation out
                elif state.iteration % cfg.checkpoint_every == 0:
                    self.checkpoint()
                if self._stop_agreed():
                    self.checkpoint()
                    raise Interrupted(
                        f"stopped by signal {self.stop_signal or 'on another rank'} at iteration {state.iteration}"
                    )
        finally:
            batches.close()
            bar.close()
            self.writer.wait()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if rt.main:
            self.tracker.log_checkpoint(self.ckpt_dir / "best.pt", aliases=["best"])
            self.tracker.finish()
        return result

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _stop_agreed(self) -> bool:
        """Whether to stop now. Under DDP every rank stops at the same iteration, whichever got the signal:
        they agree every ``train.log_every`` iterations, where the loop waits for the device anyway."""
        if self.rt.world_size == 1:
            return self.stop_signal is not None
        if self.state.iteration % self.exp.train.log_every:
            return False
        flag = torch.tensor([int(self.stop_signal is not None)], device=self.rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _log_window(self, epoch: int, beta: float, tfr: float, seqs: int, started: float, bar: tqdm) -> float:
        """Read the window's figures (the loop's only host sync), stop a diverged run, log. The window's
        rate is ``seqs`` over the time from ``started`` to the end of the sync, so that it counts the wait
        for the device; returns that moment, the next window's start."""
        state = self.state
        skipped, longest = state.divergence.read()
        now = time.perf_counter()
        seq_per_s = seqs / (now - started)
        if longest >= self.exp.train.max_bad_steps:
            raise TrainingStopped(
                f"training diverged: {longest} non-finite losses in a row before iteration {state.iteration}; "
                f"last good checkpoint: {self.ckpt_dir / 'last.pt'} (try a lower optim.lr)"
            )
        means = state.window.read()
        if not self.rt.main:
            return now
        lr = self.parts.optimizer.param_groups[0]["lr"]
        record = {"iter": state.iteration, "epoch": epoch, "train/skipped_steps": skipped, "beta": beta, "tfr": tfr}
        record["lr"] = lr
        if means is not None:
            record.update({f"train/{k}": v for k, v in means.items() if k != "kl_per_dim"})
            record["train/seq_per_s"] = seq_per_s
            bar.set_postfix(
                loss=f"{means['loss']:.4f}", kld=f"{means['kld']:.3g}", beta=f"{beta:.3g}", tfr=f"{tfr:.2f}"
            )
        self.tracker.log(record)
        return now

    # -- the end of an epoch: validate, record, log, save --------------------------------------
    def _end_epoch(self, epoch: int, beta: float, tfr: float) -> dict:
        cfg, state = self.exp.train, self.state
        record = self._epoch_record(epoch, beta, tfr)
        last = epoch + 1 == cfg.epochs
        media: dict = {}
        improved = False
        validation: Summary | None = None
        if self.rt.main and ((epoch + 1) % cfg.val_every == 0 or last):
            validation = self._validate()
            psnr = validation.headline.psnr.mean
            improved = psnr > state.best_psnr
            state.best_psnr = max(state.best_psnr, psnr)
            record.update(validation_record(validation), **{"val/psnr_best": state.best_psnr})
            if state.validations % cfg.media_every == 1 or cfg.media_every == 1 or last:
                media = self._media(f"epoch{epoch + 1:04d}")
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}  {validation_line(validation, state.best_psnr)}  "
                f"beta {beta:.3g}  tfr {tfr:.2f}"
            )
        if self.rt.world_size > 1:
            dist.barrier()
        record["time/elapsed_s"] = round(state.elapsed(), 2)
        if isinstance(self.step, CompiledStep):  # whether the compiled graphs, and CUDA graphs, ran as asked
            record.update({f"compile/{k}": v for k, v in dataclasses.asdict(compile_counts()).items()})
        if self.rt.main:
            curves = (
                {VAL_PSNR_PER_FRAME: (record[VAL_PSNR_PER_FRAME], "predicted frame")} if validation is not None else {}
            )
            self.tracker.log(record, curves=curves, **media)
        self.checkpoint(*(("last", "best") if improved else ("last",)))
        if validation is not None:
            scores = validation.headline
            self.tracker.summary({"val/psnr_final": scores.psnr.mean, VAL_COPY_LAST_PSNR: scores.copy_last_psnr.mean})
        return record

    def _epoch_record(self, epoch: int, beta: float, tfr: float) -> dict:
        """The epoch's schedules and its training means (loss, MSE, KL, active units)."""
        record: dict = {
            "epoch": epoch + 1,
            "iter": self.state.iteration,
            "beta": beta,
            "tfr": tfr,
            "lr": self.parts.optimizer.param_groups[0]["lr"],
        }
        means = self.state.epoch_sums.read()
        if means is not None:
            record.update({f"epoch/{k}": means[k] for k in ("loss", "mse", "kld")})
            record["kl/active_units"] = active_units(torch.tensor(means["kl_per_dim"]))
            record["kl/per_dim"] = [round(v, 6) for v in means["kl_per_dim"]]
        return record

    @property
    def scored_model(self) -> SVG:
        """What validation, media and best.pt use: the weights' moving average when the run keeps one."""
        return self.model if self.ema is None else self.ema.module

    def _validate(self) -> Summary:
        """``train.val_samples`` samples per validation sequence, scored over every predicted frame."""
        cfg = self.exp.train
        batches = eval_batches(self.val_set, self.exp.val_batch_size, limit=cfg.val_sequences)
        ev = evaluate(self.scored_model, batches, cfg.n_past, cfg.val_samples, self.rt, cfg.seed, media_sequences=0)
        self.state.validations += 1
        return summarize(ev, frames=ev.psnr.shape[1])

    def _media(self, name: str) -> dict:
        """A GIF and a strip of ground truth, a sample and the best of several, for the first sequences."""
        cfg = self.exp.train
        batches = eval_batches(self.val_set, MEDIA_SEQUENCES, limit=MEDIA_SEQUENCES)
        shown = evaluate(self.scored_model, batches, cfg.n_past, MEDIA_SAMPLES, self.rt, cfg.seed).panels.videos()
        return {
            "gifs": {"media/prediction": write_gif(self.media_dir / f"{name}.gif", shown, cfg.n_past)},
            "images": {"media/strip": write_strip(self.media_dir / f"{name}_strip.png", shown, cfg.n_past)},
        }


def _make_run_folder(out: Path, exp: Experiment) -> None:
    """The run folder with its resolved config; a one-line error when it cannot be written."""
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"\0" * 1024 * 1024)
        probe.unlink()
        (out / "config.yaml").write_text(to_yaml(exp))
    except OSError as e:
        raise SvgError(f"--out: cannot write to {out} ({e.strerror or e})") from None
