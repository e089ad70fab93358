"""The SVG conditional VAE: encoder, posterior (and learned prior), frame predictor, decoder.

Sequences are time-major: frames (T, B, 3, 64, 64) in [0, 1], conditions (T, B, 7). Step t predicts
x_t from the input frame x_{t-1} (ground truth or the model's own x̂_{t-1}), the condition c_t and
z_t. Context frames x_0..x_{n_past-1} are always ground truth. Decoder skips come from the last
context frame x_{n_past-1} (the seed's text; its code used x_{n_past-2}) or, with
``last_frame_skip``, from the latest input frame.

The training step does each piece of work once: every ground-truth frame is encoded once, in one
batch over time; with teacher forcing the decoder also runs once over all steps. Only the path
that feeds the model its own predictions is sequential. ``svg.models.reference`` keeps the seed's
per-frame step, which this one must match in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from svg.config import Experiment, Model
from svg.data import COND_DIM, CONDITIONS
from svg.data.course import ACTION_DIM
from svg.losses import (
    INITIAL_LOG_SCALE,
    kl_between_gaussians,
    kl_to_standard_normal,
    likelihood_nll,
    psnr_weighted_mse,
    reconstruction,
)
from svg.models.encoders import ARCHITECTURES, ConditionMaps, full_precision, per_step_statistics
from svg.models.lstm import FramePredictor, GaussianLSTM, reparameterize


@dataclass
class StepResult:
    mse: torch.Tensor
    """Sum over predicted steps of the per-step pixel MSE (differentiable)."""
    nll: torch.Tensor
    """The objective's reconstruction term, summed over steps: ``mse`` itself with the seed's pixel-mean
    MSE, else the negative log-likelihood summed over pixels and averaged over the batch."""
    kld: torch.Tensor
    """Sum over steps of the per-step KL (summed over z, averaged over the batch; differentiable)."""
    kl_step_dim: torch.Tensor
    """(T-1, z_dim) KL per step and latent dimension averaged over the batch (differentiable): what
    free bits clamp."""
    kld_per_dim: torch.Tensor
    """(z_dim,) KL per latent dimension averaged over steps and batch, detached."""
    pred: torch.Tensor
    """(T-1, B, 3, 64, 64) predictions of x_1..x_{T-1}, detached."""
    steps: int

    @classmethod
    def collect(
        cls, mse: torch.Tensor, kls: list[torch.Tensor], pred: torch.Tensor, nll: torch.Tensor | None = None
    ) -> StepResult:
        """Sum the per-step terms; ``kls`` holds (B, z) KL per step, ``pred`` is (T-1, B, 3, H, W)."""
        kl_all = torch.stack(kls).float()  # (T-1, B, z)
        kl_step_dim = kl_all.mean(1)
        return cls(
            mse=mse,
            nll=mse if nll is None else nll,
            kld=kl_step_dim.sum(),
            kl_step_dim=kl_step_dim,
            kld_per_dim=kl_all.detach().mean((0, 1)),
            pred=pred.detach(),
            steps=len(kls),
        )


MASK_START_LOGIT = 2.0
MOVED_START_LOGIT = -2.0
POSITION_COLUMNS = slice(ACTION_DIM, COND_DIM)
"""The end-effector position (x, y, z) within the action+position condition."""


def _start_the_mask_copying(decoder: nn.Module) -> None:
    """Start a compositing decoder's mask at sigmoid(2) = 0.88 everywhere: most of a frame does not change, and a
    mask that starts at 0.5 settles at a veil of painting over a static scene. The shares of the copy that move
    (with the arm, or by a transform) start small (sigmoid(-2) = 0.12): most of what is copied stays put."""
    final = [m for m in decoder.blocks[-1].modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        final.bias[3] = MASK_START_LOGIT
        final.bias[4:] = MOVED_START_LOGIT


def resampled(frame: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``frame`` (N, 3, H, W) with each output pixel sampled bilinearly where the affine ``theta`` (N, 2, 3), in the
    image's (-1, 1) coordinates, maps it; beyond the border the edge pixels repeat."""
    grid = F.affine_grid(theta, list(frame.shape), align_corners=False)
    return F.grid_sample(frame, grid, mode="bilinear", padding_mode="border", align_corners=False)


class CopyTransforms(nn.Module):
    """K affine transforms of a frame, predicted per sample from the step's code g and starting as the identity
    (the spatial-transformer predictor of Finn et al., 2016): each moves, turns or scales the whole frame, and the
    decoder's masks take from each only where it fits. The transforms are computed in full precision, not under
    autocast."""

    def __init__(self, g_dim: int, transforms: int):
        super().__init__()
        self.transforms = transforms
        self.to_theta = nn.Linear(g_dim, transforms * 6)  # each transform's change from the identity
        nn.init.zeros_(self.to_theta.weight)
        nn.init.zeros_(self.to_theta.bias)

    def forward(self, frame: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frame, (N, g_dim) code -> (N, K, 3, H, W) transformed frames; beyond the border the edge
        pixels repeat."""
        n, k = len(frame), self.transforms
        delta = full_precision(self.to_theta, g)  # (N, 6K)
        identity = torch.eye(2, 3, dtype=delta.dtype, device=delta.device)
        theta = (identity + delta.view(n * k, 2, 3)).to(frame.dtype)
        return resampled(frame.repeat_interleave(k, 0), theta).view(n, k, *frame.shape[1:])


class SVG(nn.Module):
    def __init__(self, cfg: Model, cond_dim: int = COND_DIM):
        super().__init__()
        encoder, decoder = ARCHITECTURES[cfg.encoder]
        self.encoder = encoder(cfg.g_dim, cfg.channels)
        self.composite = cfg.composite
        if cfg.position_spots and cond_dim < COND_DIM:
            raise ValueError("model.position_spots needs the end-effector position: data.conditions=action+position")
        self.shifted_copy = cfg.shifted_copy
        condition = ConditionMaps(
            cond_dim, tiled=cfg.decoder_condition, position=POSITION_COLUMNS if cfg.position_spots else None
        )
        # a frame, then the mask, the share of the copy that moves with the arm and the share each transform takes
        out_channels = 3 + cfg.composite + cfg.shifted_copy + cfg.copy_transforms
        self.decoder = decoder(cfg.g_dim, cfg.channels, condition, out_channels)
        self.copy_transforms = CopyTransforms(cfg.g_dim, cfg.copy_transforms) if cfg.copy_transforms else None
        if cfg.composite:
            _start_the_mask_copying(self.decoder)
        self.predictor = FramePredictor(
            cond_dim + cfg.g_dim + cfg.z_dim, cfg.g_dim, cfg.rnn_size, cfg.predictor_layers, cfg.predictor_batchnorm
        )
        self.posterior = GaussianLSTM(cfg.g_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_layers)
        self.prior = (
            GaussianLSTM(cfg.g_dim + cond_dim, cfg.z_dim, cfg.rnn_size, cfg.posterior_layers)
            if cfg.prior == "learned"
            else None
        )
        self.z_dim, self.cond_dim = cfg.z_dim, cond_dim
        self.last_frame_skip = cfg.last_frame_skip
        self.channels_last = False
        self.likelihood = cfg.likelihood
        learned_scale = cfg.likelihood in ("gaussian", "laplace")
        self.log_scale = nn.Parameter(torch.full((3, 1, 1), INITIAL_LOG_SCALE)) if learned_scale else None

    @classmethod
    def for_experiment(cls, exp: Experiment) -> SVG:
        """The model an experiment trains: its ``model`` section, fed the conditions ``data`` names."""
        columns = CONDITIONS[exp.data.conditions]
        return cls(exp.model, columns.stop - columns.start)

    def in_layout(self, channels_last: bool) -> SVG:
        """The model with its weights, and the frames it encodes, in channels-last memory (or as they are)."""
        if channels_last:
            self.channels_last = True
            self.to(memory_format=torch.channels_last)
        return self

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode frames (N, 3, H, W): h (N, g) and the skips a decoder takes from them; with
        ``model.composite`` the frame itself is the last skip, the one the prediction blends with."""
        h, skips = self.encoder(self._image(x))
        return h, [*skips, self._image(x)] if self.composite else skips

    def encode_steps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode (T, B, 3, H, W) as one batch, statistics per step: h (T, B, g), skips (T, B, C, h, w)."""
        t, b = x.shape[:2]
        with per_step_statistics(self.encoder, t):
            h, skips = self.encode(x.flatten(0, 1))
        return h.view(t, b, -1), [s.view(t, b, *s.shape[1:]) for s in skips]

    def decode(
        self, g: torch.Tensor, skips: list[torch.Tensor], cond_t: torch.Tensor, source_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step's frame from its code g (B, g), skips and condition (B, C); the decoder sees the
        condition only when built with ``model.decoder_condition``. With ``model.composite`` it paints a
        frame and a mask m, and the prediction is m * (the skips' frame) + (1 - m) * painting. With
        ``model.shifted_copy`` the copied frame is itself a blend of the skips' frame and that frame moved by the
        arm's displacement from ``source_cond`` (the condition of the frame the skips come from) to ``cond_t``; with
        ``model.copy_transforms`` each transform of the skips' frame then takes its share of the copy in turn."""
        cond = cond_t if self.decoder.condition.channels else None
        if not self.composite:
            return self.decoder(g, skips, cond)
        source = copied = skips[-1]
        out = self.decoder(g, skips[:-1], cond).to(source.dtype)  # blended at the frame's precision
        if self.shifted_copy:
            if source_cond is None:
                raise ValueError("a shifted copy needs the condition of the frame the skips come from")
            copied = torch.lerp(copied, self._moved_with_the_arm(source, cond_t, source_cond), out[:, 4:5])
        if self.copy_transforms is not None:
            first = 4 + self.shifted_copy  # the transforms' shares follow the mask and the arm's share
            for k, moved in enumerate(self.copy_transforms(source, g).unbind(1)):
                copied = torch.lerp(copied, moved, out[:, first + k : first + k + 1])
        return torch.lerp(out[:, :3], copied, out[:, 3:4])

    def _moved_with_the_arm(self, frame: torch.Tensor, cond_t: torch.Tensor, source_cond: torch.Tensor) -> torch.Tensor:
        """``frame`` (N, 3, H, W) translated by where the arm is at ``cond_t`` less where it was at ``source_cond``
        (the spots' learned image map), resampled bilinearly; beyond the border the edge pixels repeat."""
        maps = self.decoder.condition
        shift = (maps.image_position(cond_t) - maps.image_position(source_cond)).to(frame.dtype)
        identity = torch.eye(2, dtype=frame.dtype, device=frame.device).expand(len(frame), 2, 2)
        return resampled(frame, torch.cat([identity, -shift[:, :, None]], 2))  # each pixel samples where it came from

    def decode_steps(
        self, g: torch.Tensor, skips: list[torch.Tensor], cond: torch.Tensor, source_cond: torch.Tensor
    ) -> torch.Tensor:
        """Decode (T, B, g) with skips (T, B, C, h, w), conditions (T, B, C) and the conditions of the frames the
        skips come from (T, B, C) as one batch, statistics per step."""
        t, b = g.shape[:2]
        with per_step_statistics(self.decoder, t):
            flat = [s.flatten(0, 1) for s in skips]
            out = self.decode(g.flatten(0, 1), flat, cond.flatten(0, 1), source_cond.flatten(0, 1))
        return out.view(t, b, *out.shape[1:])

    def skip_source(self, t: int, n_past: int) -> int:
        """The frame whose skips step t decodes with: the one before with ``last_frame_skip``, else the one before
        while it is a context frame, then the last context frame."""
        return t - 1 if self.last_frame_skip else min(t - 1, n_past - 1)

    def initial_states(self, batch: int, device: torch.device) -> tuple:
        """(posterior, learned prior or None, predictor) LSTM states at the start of a sequence."""
        prior = self.prior.initial_state(batch, device) if self.prior else None
        return self.posterior.initial_state(batch, device), prior, self.predictor.initial_state(batch, device)

    def input_frame(self, t: int, n_past: int, h_known: torch.Tensor, skips_known: list, x_prev, skip: list):
        """Encoding of step t's input frame and the skips to decode with: the known frame's while it is
        a context frame, else the model's own x̂_{t-1} encoded now (its skips only with last_frame_skip)."""
        if t - 1 < n_past:
            return h_known[t - 1], [s[t - 1] for s in skips_known]
        h, own_skip = self.encode(x_prev)
        return h, (own_skip if self.last_frame_skip else skip)

    def latent_step(self, h_target, h_prev, cond_t, eps_t, states: tuple, from_prior: bool = False):
        """Posterior on the target's encoding, its KL to the prior, z (from the posterior, or with
        ``from_prior`` from the prior: a diagnostic of how much the decoder relies on z) and the
        predictor's code g_t."""
        post, prior, pred = states
        mu, logvar, post = self.posterior(h_target, post)
        if self.prior is None:
            kl = kl_to_standard_normal(mu, logvar)
            z = eps_t if from_prior else reparameterize(mu, logvar, eps_t)
        else:
            mu_p, logvar_p, prior = self.prior(torch.cat([h_prev, cond_t], 1), prior)
            kl = kl_between_gaussians(mu, logvar, mu_p, logvar_p)
            z = reparameterize(mu_p, logvar_p, eps_t) if from_prior else reparameterize(mu, logvar, eps_t)
        g, pred = self.predictor(torch.cat([cond_t, h_prev, z], 1), pred)
        return g, kl, (post, prior, pred)

    def training_step(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        n_past: int,
        teacher_forcing: bool,
        eps: torch.Tensor,
        from_prior: bool = False,
    ) -> StepResult:
        """Run one training sequence; ``eps`` (T-1, B, z_dim) is the reparameterization noise; z comes from
        the posterior (training) or, with ``from_prior``, from the prior (a diagnostic)."""
        steps, batch = x.shape[0], x.shape[1]
        h_gt, skips_gt = self.encode_steps(x)
        states = self.initial_states(batch, x.device)
        kls = []
        if teacher_forcing:
            gs = []
            for t in range(1, steps):
                g, kl, states = self.latent_step(h_gt[t], h_gt[t - 1], cond[t], eps[t - 1], states, from_prior)
                gs.append(g)
                kls.append(kl)
            # step t decodes with frame t-1's skips (last_frame_skip) or, past the context, the last context
            # frame's; the index is made on the device, so a compiled graph holds no host constant
            index = torch.arange(steps - 1, device=x.device)
            index = index if self.last_frame_skip else index.clamp_max(n_past - 1)
            # plain indexing keeps the skips' memory format (index_select would return them contiguous)
            pred = self.decode_steps(torch.stack(gs), [s[index] for s in skips_gt], cond[1:], cond[index])
            mse = reconstruction(pred, x[1:]) * (steps - 1)  # every step has as many pixels: sum of step means
        else:
            mse, x_prev, skip, preds = x.new_zeros(()), None, None, []
            for t in range(1, steps):
                h_prev, skip = self.input_frame(t, n_past, h_gt, skips_gt, x_prev, skip)
                g, kl, states = self.latent_step(h_gt[t], h_prev, cond[t], eps[t - 1], states, from_prior)
                kls.append(kl)
                x_prev = self.decode(g, skip, cond[t], cond[self.skip_source(t, n_past)])
                preds.append(x_prev)
                mse = mse + reconstruction(x_prev, x[t])
            pred = torch.stack(preds)
        return self.result(mse, kls, pred, x)

    def result(self, mse: torch.Tensor, kls: list[torch.Tensor], pred: torch.Tensor, x: torch.Tensor) -> StepResult:
        """A sequence's terms from its summed MSE, per-step KLs and predictions of x[1:]."""
        if self.likelihood == "psnr":
            nll = psnr_weighted_mse(pred, x[1:])
        elif self.log_scale is not None:
            nll = likelihood_nll(pred, x[1:], self.log_scale, self.likelihood)
        else:
            nll = None
        return StepResult.collect(mse, kls, pred, nll)

    forward = training_step
    """``forward`` is the training step, so DistributedDataParallel can wrap the model."""

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, cond: torch.Tensor, n_past: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample x̂_{n_past}..x̂_{T-1} given the context x[:n_past] and all T conditions; z from the prior.

        During the context steps z comes from the posterior on the known frames (as in SVG) so the
        LSTMs start from the context. Call with the model in eval mode.
        """
        total, batch = cond.shape[0], cond.shape[1]
        h_ctx, skips_ctx = self.encode_steps(x[:n_past])
        post_state, prior_state, pred_state = self.initial_states(batch, x.device)
        x_prev, skip, outputs = None, None, []
        for t in range(1, total):
            h_prev, skip = self.input_frame(t, n_past, h_ctx, skips_ctx, x_prev, skip)
            if self.prior is not None:
                mu_p, logvar_p, prior_state = self.prior(torch.cat([h_prev, cond[t]], 1), prior_state)
            if t < n_past:
                mu, logvar, post_state = self.posterior(h_ctx[t], post_state)
            elif self.prior is not None:
                mu, logvar = mu_p, logvar_p
            else:
                mu = logvar = torch.zeros(batch, self.z_dim, device=x.device, dtype=h_prev.dtype)
            noise = torch.randn(mu.shape, generator=generator, device=x.device)
            z = reparameterize(mu, logvar, noise.to(mu.dtype))
            g, pred_state = self.predictor(torch.cat([cond[t], h_prev, z], 1), pred_state)
            if t >= n_past:
                x_prev = self.decode(g, skip, cond[t], cond[self.skip_source(t, n_past)])
                outputs.append(x_prev.float())
        return torch.stack(outputs)
