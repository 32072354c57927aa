"""One GAN optimisation step: G/D forward, the adversarial loss, regularisers, both optimizer steps, G_ema.

:class:`GANStep` owns everything that happens between drawing a batch index and having new weights; the loop
(``ganops.training.loop``) only feeds it indices and reads back one tensor of statistics per step. Recipes plug in
here as data, not as branches in the loop: the loss comes from the ``ganops.losses`` registry, the penalties (R1 on
reals, R2 on fakes, WGAN-GP) and their weights from the config and its schedules (``ganops.training.schedules``),
augmentation from DiffAugment and ADA (``ganops.training.augment``).

On CUDA the step can be captured once as a CUDA graph and replayed (:meth:`GANStep.run`), when nothing in it varies
from step to step but the G_ema decay (no lazy penalties, augmentation, lr / beta2 / gamma schedules, fp16 scaler or
DDP).
"""

from __future__ import annotations

from typing import Any

import torch

from ganops.config import SCHEDULE_END_KEYS, TrainConfig
from ganops.losses import GANLoss, gradient_penalty, r1_penalty, r2_penalty
from ganops.training import distributed as ddp
from ganops.training.augment import AdaptiveAugment, diff_augment
from ganops.training.ema import update_ema
from ganops.training.schedules import StepHyper

GRAPH_WARMUP_STEPS = 3  # eager steps before the CUDA graph capture


class CudaGraphCaptureError(RuntimeError):
    """The training step could not be captured as a CUDA graph (``train.cuda_graph=false`` trains eagerly)."""


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """L2 norm over all of ``module``'s gradients, a 0-d tensor on their device (no host synchronisation)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.nn.utils.get_total_norm(grads, foreach=True)  # one call for all grads


def _scheduled(cfg: TrainConfig, keys: tuple[str, ...]) -> bool:
    return cfg.schedule_kimg > 0 and any(getattr(cfg, k) is not None for k in keys)


def has_schedules(cfg: TrainConfig) -> bool:
    """True when a hyper-parameter changes during training (cosine schedules or the G_ema ramp-up)."""
    return _scheduled(cfg, SCHEDULE_END_KEYS) or cfg.ema_rampup is not None


def graph_capturable(cfg: TrainConfig) -> bool:
    """Whether every scheduled value can change under a captured CUDA graph: the G_ema decay can (a device tensor
    the graph reads at each replay); learning rates, Adam beta2 and penalty weights cannot (baked into the capture)."""
    return not _scheduled(cfg, tuple(k for k in SCHEDULE_END_KEYS if k != "ema_halflife_kimg_end"))


class GANStep:
    """One D step then one G step on a real batch ``data.gather(idx)``, plus the G_ema update.

    Args:
        G, D: the networks as trained (G_train / D_train: their DDP wrappers, or themselves on one process).
        data: the train split (``ganops.training.data``): ``gather(idx)`` -> uint8 (B, C, H, W) images and int64
            (B,) labels on the device, resident (graph capturable) or streamed from disk (eager only).
        num_classes: 0 = unconditional. augment: DiffAugment policy (always on); ada: adaptive augmentation or None.
        autocast: a callable returning the autocast context of the run's precision.
    Each call of :meth:`__call__` returns the step's statistics as names and one float32 device tensor, read once by
    the caller: the step itself never synchronises with the host, so it can be captured as a CUDA graph.
    """

    def __init__(self, *, G, D, G_train, D_train, G_ema, opt_G, opt_D, scaler, loss: GANLoss, cfg: TrainConfig,
                 data, num_classes: int, dist_info, autocast,
                 memory_format: torch.memory_format, augment: tuple[str, ...], ada: AdaptiveAugment | None):
        self.G, self.D, self.G_train, self.D_train, self.G_ema = G, D, G_train, D_train, G_ema
        self.opt_G, self.opt_D, self.scaler, self.loss, self.cfg = opt_G, opt_D, scaler, loss, cfg
        self.data, self.num_classes, self.dist_info = data, num_classes, dist_info
        self.autocast, self.memory_format, self.policy, self.ada = autocast, memory_format, augment, ada
        self.use_gp = loss.needs_gradient_penalty and cfg.gp_lambda > 0
        self.hyper: StepHyper | None = None
        self._ema_weight = torch.ones((), device=data.device)  # 1 - G_ema decay, read also inside a CUDA graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self._graph_io: dict[str, Any] = {}
        self._eager_steps = 0

    # ---- hyper-parameters -----------------------------------------------------------------------------------------
    def set_hyper(self, hyper: StepHyper) -> None:
        """Apply a step's scheduled values: learning rates and Adam beta2 into the optimizers, the penalty weights
        and the G_ema decay for the next step(s)."""
        for opt, lr, beta2 in ((self.opt_G, hyper.lr_g, hyper.beta2_g), (self.opt_D, hyper.lr_d, hyper.beta2_d)):
            for group in opt.param_groups:
                group["lr"] = lr
                group["betas"] = (group["betas"][0], beta2)
        self._ema_weight.fill_(1.0 - hyper.ema_beta)
        self.hyper = hyper

    def regularizes(self, step: int) -> bool:
        """Whether step ``step`` (0-based) adds the lazy R1/R2 penalties: every ``r1_interval`` D steps, when a
        scheduled weight is above 0 at this step."""
        hyper = self.hyper
        active = hyper is not None and (hyper.r1_gamma > 0 or hyper.r2_gamma > 0)
        return active and step % self.cfg.r1_interval == 0

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy:
            x = diff_augment(x, self.policy)
        if self.ada is not None:
            x = self.ada(x)
        return x

    # ---- the step -------------------------------------------------------------------------------------------------
    def __call__(self, idx: torch.Tensor, regularize: bool) -> tuple[list[str], torch.Tensor]:
        cfg, hyper, B = self.cfg, self.hyper, self.cfg.batch_size
        if hyper is None:
            raise RuntimeError("GANStep.set_hyper() must be called before the first step")
        G, D, scaler = self.G, self.D, self.scaler
        # D step: real batch by seeded index, fakes from fresh z (with the real batch's labels when conditional).
        # DDP: every rank draws the same global indices / latents and keeps its disjoint shard [rank::world].
        images, labels = self.data.gather(idx)
        reals = (images.float() / 127.5 - 1.0).contiguous(memory_format=self.memory_format)
        c = labels if self.num_classes else None  # fakes use the real batch's labels
        z = ddp.shard(torch.randn(B, G.z_dim, device=reals.device), self.dist_info)
        D.requires_grad_(True)
        with self.autocast():
            # One G forward per step (as pytorch/examples dcgan): D sees it detached, the G step below reuses it.
            fakes = self.G_train(z, c)
            aug_reals, aug_fakes = self._augment(reals), self._augment(fakes.detach().float())
            real_logits = self.D_train(aug_reals, c).float()
            fake_logits = self.D_train(aug_fakes, c).float()
        loss_D = self.loss.d_loss(real_logits, fake_logits)
        extra: dict[str, torch.Tensor] = {}
        if self.use_gp:  # penalties in fp32: double backward under autocast is fragile
            extra["gp"] = gradient_penalty(D, aug_reals.float(), aug_fakes.float(), c)
            loss_D = loss_D + cfg.gp_lambda * extra["gp"]
        if regularize:  # lazy R1 / R2 (StyleGAN2 sec. 3.1): every r1_interval steps, weighted by the interval
            if hyper.r1_gamma > 0:
                extra["r1"] = r1_penalty(D, aug_reals.float(), c)
                loss_D = loss_D + extra["r1"] * (hyper.r1_gamma / 2) * cfg.r1_interval
            if hyper.r2_gamma > 0:
                extra["r2"] = r2_penalty(D, aug_fakes.float(), c)
                loss_D = loss_D + extra["r2"] * (hyper.r2_gamma / 2) * cfg.r1_interval
        self.opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        scaler.unscale_(self.opt_D)
        grad_norm_D = grad_norm(D)
        scaler.step(self.opt_D)  # fp16: the scaler skips a step whose gradients overflowed
        if self.ada is not None:
            self.ada.accumulate(real_logits)

        # G step on the D step's fakes (saves a G forward, ~10% of a step): D frozen so its grads stay untouched.
        D.requires_grad_(False)
        with self.autocast():  # raw D: no gradient sync for D here, G's gradients are all-reduced by G_train
            gen_logits = D(self._augment(fakes.float()), c).float()
            real_for_g = None
            if self.loss.uses_real_in_g:  # relativistic: the pairs' real side, through the updated D
                with torch.no_grad():
                    real_for_g = D(aug_reals, c).float()
        loss_G = self.loss.g_loss(gen_logits, real_for_g) if real_for_g is not None else self.loss.g_loss(gen_logits)
        self.opt_G.zero_grad(set_to_none=True)
        scaler.scale(loss_G).backward()
        scaler.unscale_(self.opt_G)
        grad_norm_G = grad_norm(G)
        scaler.step(self.opt_G)
        scaler.update()
        update_ema(self.G_ema, G, hyper.ema_beta, weight=self._ema_weight)
        named = {"loss_D": loss_D, "loss_G": loss_G, "D_real": real_logits.mean(), "D_fake": fake_logits.mean(),
                 "grad_norm_D": grad_norm_D, "grad_norm_G": grad_norm_G, **extra}
        return list(named), torch.stack([v.detach().float() for v in named.values()])

    # ---- eager or CUDA graph ----------------------------------------------------------------------------------------
    def run(self, idx: torch.Tensor, step: int, use_graph: bool) -> tuple[list[str], torch.Tensor]:
        """Run step ``step`` (0-based) eagerly, or, with ``use_graph`` after ``GRAPH_WARMUP_STEPS`` eager steps,
        capture it once as a CUDA graph and replay it from then on.

        Raises:
            CudaGraphCaptureError: the capture failed (nothing of the failed step is applied).
        """
        io = self._graph_io
        if self.graph is not None:
            io["idx"].copy_(idx)
            self.graph.replay()
            return io["names"], io["stats"]
        if use_graph and self._eager_steps >= GRAPH_WARMUP_STEPS:
            io["idx"] = idx.clone()
            torch.cuda.synchronize()
            candidate = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(candidate):
                    io["names"], io["stats"] = self(io["idx"], False)
            except RuntimeError as err:
                # No eager fallback: a failed capture can leave the CUDA RNG, allocator and current stream in states
                # that later steps trip over. Capturing runs no kernel, so this step never happened.
                raise CudaGraphCaptureError(
                    f"CUDA graph capture of the training step failed in step {step + 1} "
                    f"({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}); set "
                    "train.cuda_graph=false and run again (training resumes from the last checkpoint, eagerly)"
                ) from err
            self.graph = candidate
            self.graph.replay()  # capturing ran nothing: this is the step's real execution
            return io["names"], io["stats"]
        self._eager_steps += 1
        if not use_graph:
            return self(idx, self.regularizes(step))
        warm = io.setdefault("stream", torch.cuda.Stream())
        warm.wait_stream(torch.cuda.current_stream())  # warm-up on a side stream, as graph capture asks
        with torch.cuda.stream(warm):
            out = self(idx, self.regularizes(step))
        torch.cuda.current_stream().wait_stream(warm)
        return out


__all__ = ["GRAPH_WARMUP_STEPS", "CudaGraphCaptureError", "GANStep", "grad_norm", "graph_capturable",
           "has_schedules"]
