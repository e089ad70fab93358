"""Training, top to bottom: runtime, data, model, resume, the loop, validation, checkpoints.

A run folder holds config.yaml, metrics.jsonl, checkpoints/{last,best}.pt, media/ and the W&B run.
Resume is the normal path: a checkpoint holds everything needed to continue exactly (weights,
optimizer, RNG states, position in the data stream, partial epoch sums, W&B run id).
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from svg.config import Experiment, to_yaml
from svg.data import ensure_synthetic, eval_batches, holds_other_data, open_split, train_batches
from svg.errors import Interrupted, SvgError
from svg.evaluation import MEDIA_SAMPLES, MEDIA_SEQUENCES, evaluate, summarize
from svg.losses import active_units
from svg.media import write_gif, write_strip
from svg.models import SVG
from svg.schedules import beta, teacher_forcing_ratio
from svg.tracking import Tracker


class TrainingStopped(SvgError):
    """Training cannot go on (diverged, or the run folder does not match); the last checkpoint is intact."""


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def cpu_has_fast_bf16() -> bool:
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def keep_freed_memory() -> None:
    """Ask glibc to keep freed activation buffers instead of returning them to the OS: otherwise every
    CPU training step page-faults its large tensors in again (measured: ~100k faults and ~20% slower)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: its maximum, so buffers come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap


def setup_runtime(exp: Experiment) -> Runtime:
    """Device, precision, threads and (under torchrun) the process group."""
    cfg = exp.train
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SvgError("train.device: cuda was asked for but no CUDA device is available")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        keep_freed_memory()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    precision = cfg.precision
    if precision == "auto":
        if use_cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Runtime(device, amp_dtype, rank, world_size)


def autocast(rt: Runtime):
    return torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None)


def to_model_layout(frames: torch.Tensor, cond: torch.Tensor, device: torch.device):
    """Loader batches (B, T, H, W, 3) uint8 and (B, T, 7) -> time-major float (T, B, 3, H, W), (T, B, 7)."""
    x = frames.to(device, non_blocking=True).permute(1, 0, 4, 2, 3).float().div_(255.0)
    return x, cond.to(device, non_blocking=True).transpose(0, 1).float()


def atomic_save(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """Write via a temp file, fsync, rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.stem + ".prev.pt"))
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain values only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a one-line error naming the file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SvgError(f"checkpoint {path}: unreadable or unsafe ({reason})") from None


def load_latest(ckpt_dir: Path) -> dict | None:
    """last.pt, or last.prev.pt when last.pt is damaged (said on stderr); None when there is neither."""
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "last.prev.pt"
    if not last.exists():
        return load_checkpoint(prev) if prev.exists() else None
    try:
        return load_checkpoint(last)
    except SvgError as e:
        if not prev.exists():
            raise
        print(f"svg-sweeps: {e}; resuming from {prev} instead", file=sys.stderr)
        return load_checkpoint(prev)


def _rng_state(tf_gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "teacher_forcing": tf_gen.get_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: dict, tf_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    tf_gen.set_state(state["teacher_forcing"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def architecture_mismatch(saved: dict, exp: Experiment) -> list[str]:
    """Config fields whose change would make a checkpoint unusable for this experiment."""
    now = exp.model_dump(mode="json")
    fields = [f"model.{k}" for k in now["model"]] + ["train.n_past", "train.n_future", "data.batch_size"]
    diff = []
    for dotted in fields:
        section, key = dotted.split(".")
        if saved.get(section, {}).get(key) != now[section][key]:
            diff.append(f"{dotted} ({saved.get(section, {}).get(key)!r} -> {now[section][key]!r})")
    return diff


@dataclass
class EpochSums:
    loss: float = 0.0
    mse: float = 0.0
    kld: float = 0.0
    count: int = 0
    kl_per_dim: list[float] = field(default_factory=list)


class Trainer:
    def __init__(self, exp: Experiment, out: Path, resume: str | None = None):
        self.exp, self.out = exp, out
        self.rt = setup_runtime(exp)
        self.ckpt_dir = out / "checkpoints"
        self.media_dir = out / "media"
        if self.rt.main:
            _check_writable(out)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(to_yaml(exp))

        cfg = exp.train
        torch.manual_seed(cfg.seed + self.rt.rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.tf_gen = torch.Generator().manual_seed(cfg.seed + 1000 * self.rt.rank)

        data = exp.data
        if data.synthetic and self.rt.main and not holds_other_data(data.root):
            ensure_synthetic(data.root, data.n_train, data.n_val, data.n_test, seed=0, progress=True)
        if self.rt.world_size > 1:
            dist.barrier()
        self.seq_len = cfg.n_past + cfg.n_future
        self.train_set = open_split(data.root, "train", seq_len=self.seq_len, skip_bad=data.skip_bad)
        self.val_set = open_split(data.root, "validate", seq_len=cfg.n_eval, skip_bad=data.skip_bad)

        self.model = SVG(exp.model).to(self.rt.device)
        if cfg.channels_last:
            self.model.channels_last = True
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=exp.optim.lr, betas=(exp.optim.beta1, exp.optim.beta2)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.rt.amp_dtype == torch.float16 and self.rt.device.type == "cuda")
        self.iteration, self.best_psnr, self.bad_steps, self.validations = 0, -math.inf, 0, 0
        self.skipped_steps = 0
        self.sums = EpochSums()

        run_id = None
        state = self._resume_state(resume)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best_psnr = state["iteration"], state["best_psnr"]
            self.validations, self.skipped_steps = state["validations"], state["skipped_steps"]
            self.sums = EpochSums(**state["epoch_sums"])
            _set_rng_state(state["rng"], self.tf_gen)
            run_id = state["wandb_id"]
        if cfg.compile:
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.step_model = self.model
        if self.rt.world_size > 1:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.step_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.tracker = Tracker(exp, out, run_id=run_id, enabled=self.rt.main)
        if self.rt.main and state is not None:
            self.tracker.truncate_after("iter", self.iteration)
        self.stop_signal: int | None = None

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

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, name: str = "last") -> Path:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_psnr": self.best_psnr,
            "validations": self.validations,
            "skipped_steps": self.skipped_steps,
            "epoch_sums": vars(self.sums),
            "rng": _rng_state(self.tf_gen),
            "config": self.exp.model_dump(mode="json"),
            "wandb_id": self.tracker.run_id,
        }
        path = self.ckpt_dir / f"{name}.pt"
        atomic_save(state, path, keep_previous=name == "last")
        return path

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        exp, cfg, rt = self.exp, self.exp.train, self.rt
        total = cfg.epochs * cfg.iters_per_epoch
        batches = train_batches(
            self.train_set, exp.data.batch_size, seed=cfg.seed, num_workers=exp.data.num_workers,
            rank=rt.rank, world_size=rt.world_size, start_batch=self.iteration,
        )  # fmt: skip
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=total, initial=self.iteration, disable=not rt.main, unit="it", dynamic_ncols=True)
        result: dict = {}
        try:
            while self.iteration < total:
                epoch = self.iteration // cfg.iters_per_epoch
                b, tfr = beta(epoch, cfg.epochs, exp.kl), teacher_forcing_ratio(epoch, cfg.epochs, exp.tfr)
                t0 = time.perf_counter()
                frames, cond = next(batches)
                logged = self._step(frames, cond, b, tfr)
                self.iteration += 1
                if rt.main and logged is not None:
                    logged["train/seq_per_s"] = frames.shape[0] * rt.world_size / (time.perf_counter() - t0)
                    self.tracker.log({"iter": self.iteration, "epoch": epoch, **logged})
                    bar.set_postfix(loss=f"{logged['train/loss']:.4f}", beta=f"{b:.3g}", tfr=f"{tfr:.2f}")
                bar.update()
                if self.iteration % cfg.iters_per_epoch == 0:
                    result = self._end_epoch(epoch, b, tfr)
                elif self.iteration % cfg.checkpoint_every == 0 and rt.main:
                    self.checkpoint()
                if self.stop_signal is not None:
                    if rt.main:
                        self.checkpoint()
                    raise Interrupted(f"stopped by signal {self.stop_signal} at iteration {self.iteration}")
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if rt.main:
            self.tracker.log_checkpoint(self.ckpt_dir / "best.pt", aliases=["best"])
            self.tracker.finish()
        return result

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _step(self, frames: torch.Tensor, cond: torch.Tensor, b: float, tfr: float) -> dict | None:
        exp, rt = self.exp, self.rt
        x, c = to_model_layout(frames[:, : self.seq_len], cond[:, : self.seq_len], rt.device)
        teacher_forcing = bool(torch.rand((), generator=self.tf_gen) < tfr)
        eps = torch.randn(self.seq_len - 1, x.shape[1], exp.model.z_dim, device=rt.device)
        self.model.train()
        with autocast(rt):
            res = self.step_model(x, c, exp.train.n_past, teacher_forcing, eps)
        loss = res.mse + b * res.kld
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.bad_steps += 1
            self.skipped_steps += 1
            if self.bad_steps >= exp.train.max_bad_steps:
                raise TrainingStopped(
                    f"training diverged: {self.bad_steps} non-finite losses in a row at iteration "
                    f"{self.iteration}; last good checkpoint: {self.ckpt_dir / 'last.pt'} (try a lower optim.lr)"
                )
            return None
        self.bad_steps = 0
        self.scaler.scale(loss).backward()
        if exp.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), exp.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

        n = res.steps
        values = {"train/loss": loss.item() / n, "train/mse": res.mse.item() / n, "train/kld": res.kld.item() / n}
        s = self.sums
        s.loss, s.mse, s.kld, s.count = (
            s.loss + values["train/loss"],
            s.mse + values["train/mse"],
            s.kld + values["train/kld"],
            s.count + 1,
        )
        per_dim = res.kld_per_dim.tolist()
        s.kl_per_dim = [a + v for a, v in zip(s.kl_per_dim, per_dim, strict=True)] if s.kl_per_dim else per_dim
        values["train/teacher_forced"] = int(teacher_forcing)
        return values

    def _end_epoch(self, epoch: int, b: float, tfr: float) -> dict:
        exp, cfg = self.exp, self.exp.train
        s = self.sums
        record: dict = {
            "train/skipped_steps": self.skipped_steps,
            "epoch": epoch + 1,
            "iter": self.iteration,
            "beta": b,
            "tfr": tfr,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if s.count:
            kl_dims = torch.tensor(s.kl_per_dim) / s.count
            record.update(
                {
                    "epoch/loss": s.loss / s.count,
                    "epoch/mse": s.mse / s.count,
                    "epoch/kld": s.kld / s.count,
                    "kl/active_units": active_units(kl_dims),
                    "kl/per_dim": [round(v, 6) for v in kl_dims.tolist()],
                }
            )
        self.sums = EpochSums()
        last = epoch + 1 == cfg.epochs
        gifs, images, curves = {}, {}, {}
        if self.rt.main and ((epoch + 1) % cfg.val_every == 0 or last):
            scoring = dict(n_past=cfg.n_past, device=self.rt.device, amp=lambda: autocast(self.rt), seed=cfg.seed)
            ev = evaluate(
                self.model, eval_batches(self.val_set, exp.data.batch_size, limit=cfg.val_sequences),
                n_samples=1, media_sequences=0, **scoring,
            )  # fmt: skip
            sc = summarize(ev, frames=ev.psnr.shape[1])
            self.validations += 1
            improved = sc["psnr"] > self.best_psnr
            self.best_psnr = max(self.best_psnr, sc["psnr"])
            record.update(
                {
                    "val/psnr": sc["psnr"],
                    "val/psnr_best": self.best_psnr,
                    "val/ssim": sc["ssim"],
                    "val/psnr_copy_last": sc["copy_last_psnr"],
                    "val/psnr_per_frame": [round(v, 4) for v in sc["psnr_per_frame"]],
                }
            )
            curves["val/psnr_per_frame"] = (record["val/psnr_per_frame"], "predicted frame")
            if self.validations % cfg.media_every == 1 or cfg.media_every == 1 or last:
                name = f"epoch{epoch + 1:04d}"
                shown = evaluate(
                    self.model, eval_batches(self.val_set, MEDIA_SEQUENCES, limit=MEDIA_SEQUENCES),
                    n_samples=MEDIA_SAMPLES, **scoring,
                ).panels.videos()  # fmt: skip
                gifs["media/prediction"] = write_gif(self.media_dir / f"{name}.gif", shown, cfg.n_past)
                images["media/strip"] = write_strip(self.media_dir / f"{name}_strip.png", shown, cfg.n_past)
            if improved:
                self.checkpoint("best")
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}  val psnr {sc['psnr']:.2f} dB (copy-last {sc['copy_last_psnr']:.2f}, "
                f"best {self.best_psnr:.2f})  ssim {sc['ssim']:.3f}  kld {record.get('epoch/kld', 0):.4f}  "
                f"beta {b:.3g}  tfr {tfr:.2f}"
            )
        if self.rt.world_size > 1:
            dist.barrier()
        if self.rt.main:
            self.tracker.log(record, gifs=gifs, images=images, curves=curves)
            self.checkpoint()
            if "val/psnr" in record:
                self.tracker.summary(
                    {"val/psnr_final": record["val/psnr"], "val/psnr_copy_last": record["val/psnr_copy_last"]}
                )
        return record


def _check_writable(out: Path) -> None:
    """Fail before training, not at the first checkpoint, when the run folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"\0" * 1024 * 1024)
        probe.unlink()
    except OSError as e:
        raise SvgError(f"--out: cannot write to {out} ({e.strerror or e})") from None
