"""The GAN training loop: data -> step -> interval actions (stats, grid, FID, checkpoint), in commented blocks.

The step itself (G/D forward, losses, penalties, optimizer steps, G_ema, CUDA graph) is ``ganops.training.step``;
the run's state and its actions (build, resume, log, grid, FID, checkpoint, summary) are ``ganops.training.run``;
the training state file and the resume decision are ``ganops.training.state``; schedules are
``ganops.training.schedules``. The loop writes the run directory (file names: ``ganops.rundir.RunDir``), the
contract other stages read:

    training_options.json     resolved config + derived values (device, resolution, G_kwargs, data_streamed, ...)
    stats.jsonl               one JSON object per logged step: step, kimg, loss_G, loss_D, D_real / D_fake (mean
                              raw D logit on the real / fake batch, i.e. D(x) and D(G(z)) before any sigmoid),
                              grad_norm_D, grad_norm_G (L2 over all parameters), gp / r1 / r2 when active, lr_G,
                              lr_D, ema_halflife_kimg and ada_p when they vary, sec_per_step, images_per_s; plus one
                              line per sample interval (diversity_ratio, the mode-collapse signal) and one per
                              evaluation (metric/<name> from metric_fn)
    fakes{kimg:06d}.png       G_ema samples from fixed z every sample_every_kimg (one row per class if conditional)
    fakes-latest.png          the newest grid
    training-state.pt         everything for an exact resume (``ganops.training.state``)
    network-snapshot.pt       G_ema + metadata; the best one by FID when in-training evaluation runs, else latest
    network-snapshot-latest.pt  G_ema at the latest checkpoint
    train.json                summary (step, kimg, wall time seconds, final losses, snapshot sha256)

The loop knows nothing about trackers: it reports through a :class:`ganops.tracking.Logger`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganops.config import TrainConfig
from ganops.losses import GANLoss, get_loss
from ganops.models import check_arch
from ganops.progress import progress_bar
from ganops.tracking import Logger, NullLogger
from ganops.training import distributed as ddp
from ganops.training.augment import parse_policy
from ganops.training.device import resolve_device, resolve_precision
from ganops.training.data import is_streamed, train_data
from ganops.training.run import MetricFn, TrainingRun, check_step, load_train_split
from ganops.training.schedules import step_hyper
from ganops.training.snapshot import ResumeMismatchError, TrainingDivergedError
from ganops.training.state import RESUMABLE_OPTIONS, STATE_FORMAT
from ganops.training.step import (
    GRAPH_WARMUP_STEPS,
    CudaGraphCaptureError,
    GANStep,
    graph_capturable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Runtime:
    """Where and how the step runs: device, rank, autocast dtype, fp16 scaler, memory format, CUDA graph."""

    dist_info: ddp.DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    use_graph: bool

    @property
    def use_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self):
        # A captured graph must not rely on autocast's cache of cast weights (the cache is cleared on exit).
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None, cache_enabled=not self.use_graph)


def _runtime(cfg: TrainConfig, loss: GANLoss, policy: list, streamed: bool) -> _Runtime:
    """Join the torchrun group (a no-op without torchrun), pick the device, threads, precision and CUDA graph
    (``streamed``: the train split is read from disk batch by batch)."""
    device = resolve_device(cfg.device)
    dist_info, device = ddp.setup(device)  # torchrun: join the group, one device per rank; else a no-op
    ddp.check_batch(cfg.batch_size, dist_info)  # the global batch must split evenly over ranks
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":  # fixed shapes: cuDNN times its kernels once and keeps the fastest (as StyleGAN2-ADA)
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_precision(cfg.precision, device)
    # CUDA graph (CUDA only): after GRAPH_WARMUP_STEPS eager steps the step is captured once and replayed: one launch
    # per step instead of a few hundred, which is what bounds a small GAN on a GPU. Not for steps whose work or
    # hyper-parameters vary (lazy R1/R2, augmentation, GP, lr/beta2/gamma schedules; the G_ema ramp-up is fine) or
    # that need the host (fp16 scaler, DDP, batches streamed from disk).
    use_graph = (device.type == "cuda" and cfg.cuda_graph and dist_info.world_size == 1 and not streamed
                 and not (loss.needs_gradient_penalty and cfg.gp_lambda > 0) and cfg.r1_gamma == 0
                 and cfg.r2_gamma == 0 and not policy and cfg.ada_target == 0 and amp_dtype != torch.float16
                 and graph_capturable(cfg))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return _Runtime(dist_info, device, amp_dtype, memory_format, use_graph)


def training_loop(
    cfg: TrainConfig,
    *,
    prepared_dir: str | Path,
    seed: int,
    logger: Logger = NullLogger(),
    metric_fn: MetricFn | None = None,
    progress: bool = True,
    on_step: Callable[[int, int, torch.nn.Module], bool] | None = None,
) -> dict[str, Any]:
    """Train G and D on the prepared train split; write and return the ``train.json`` summary.

    Resumes from ``<run_dir>/training-state.pt`` when present; only options outside the architecture config may
    differ (e.g. a larger ``total_kimg`` extends training). On CPU the result is bit-identical for the same seed
    and params, with or without interruptions (torch thread count held equal): schedules are functions of the
    image count and the ADA state is saved.

    Args:
        cfg: the ``train`` section.
        prepared_dir: directory written by ``ganops prepare`` (the train split, summary.json); the split is
            copied to the device when it fits ``cfg.resident_data_mb``, else read from disk batch by batch.
        seed: global seed (params.yaml ``seed``).
        logger: receives losses every ``log_every_steps``, grids, metrics.
        metric_fn: optional ``G_ema -> {"fid": ..., ...}``, called every ``eval_every_kimg`` and at the end; then
            ``network-snapshot.pt`` is the snapshot with the lowest ``fid``.
        progress: show a tqdm bar in kimg (images/s, losses, ETA).
        on_step: optional ``on_step(step, cur_nimg, G_ema) -> stop`` called after every step (benchmarks use it to
            keep G_ema at fixed wall-clock points); a true result ends training after this step, with the end's
            grid and checkpoint, as if total_kimg had been reached.
    Returns:
        dict: step, kimg, wall_time_s, loss_G, loss_D, snapshot_sha256, best_fid, ... (also in train.json).
    Raises:
        ValueError: unknown arch/loss/augment name, unsupported resolution, a conditional run on unlabeled data,
            fp16 on CPU, or a metric_fn result without ``fid``.
        ResumeMismatchError: the run directory's state has a different architecture config and
            ``cfg.on_config_change`` is ``refuse`` (with ``restart`` that run's outputs are deleted and training
            starts from scratch).
        TrainingDivergedError: a loss is NaN/inf or a gradient norm exceeds ``grad_norm_limit``.
        CudaGraphCaptureError: on CUDA with ``cuda_graph``, the step could not be captured (nothing of the failed
            step is applied or written; rerun with ``cuda_graph=false``).
        ganops.data.errors.DataError: the prepared directory is missing or malformed.
    """
    t_start = time.time()

    # ---- Validate names up front, before touching the run directory --------------------------------------------
    check_arch(cfg.arch)
    loss = get_loss(cfg.loss)
    policy = parse_policy(cfg.diffaugment)
    if cfg.eval_every_kimg > 0 and metric_fn is None:
        log.warning("train.eval_every_kimg=%s but no metric_fn was given: in-training evaluation is off",
                    cfg.eval_every_kimg)

    # ---- Data (memory-mapped until placed), device, threads, precision; only rank 0 writes and logs --------------
    images_np, labels_np, summary, num_classes = load_train_split(cfg, prepared_dir)
    rt = _runtime(cfg, loss, policy, streamed=is_streamed(images_np, cfg.resident_data_mb))
    device, is_main = rt.device, rt.dist_info.is_main
    run = TrainingRun(cfg, seed, logger if is_main else NullLogger(), metric_fn, rt.dist_info)
    run.policy, run.use_scaler, run.summary = policy, rt.use_scaler, summary

    # ---- Data on the device (or streamed), networks, resume -----------------------------------------------------
    data = train_data(images_np, labels_np, device, cfg.resident_data_mb)
    log.info("train split: %d images, %.1f MB, %s", images_np.shape[0], images_np.nbytes / 1e6,
             "streamed from disk (train.resident_data_mb)" if data.streamed else f"resident on {device}")
    del images_np, labels_np
    num_images, channels, resolution, _ = data.shape
    run.build(device, channels, resolution, num_classes, rt.use_graph, rt.memory_format)
    resumed_from_step = run.resume(rt.use_graph)
    G_train, D_train = ddp.wrap(run.G, rt.dist_info, device), ddp.wrap(run.D, rt.dist_info, device)  # after resume
    run.write_options(prepared_dir, device, rt.amp_dtype, num_images, resumed_from_step, data.streamed)
    run.fixed_inputs(data, num_classes, device)
    step_fn = GANStep(G=run.G, D=run.D, G_train=G_train, D_train=D_train, G_ema=run.G_ema, opt_G=run.opt_G,
                      opt_D=run.opt_D, scaler=run.scaler, loss=loss, cfg=cfg, data=data,
                      num_classes=num_classes, dist_info=rt.dist_info, autocast=rt.autocast,
                      memory_format=rt.memory_format, augment=policy, ada=run.ada)

    # ---- Main loop: one D step then one G step per iteration -----------------------------------------------------
    B, total_nimg = cfg.batch_size, int(round(cfg.total_kimg * 1000))
    saved_step = run.step if resumed_from_step is not None else None
    # initial is capped at total: tqdm drops the total (and fails on the bar format) once n >= total + 0.5.
    pbar = progress_bar(total=cfg.total_kimg, initial=min(run.cur_nimg / 1000, cfg.total_kimg), desc="train",
                        unit="kimg", disable=not (progress and is_main),
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
    while run.cur_nimg < total_nimg:
        # Data and step: indices from the seeded data generator, hyper-parameters from the schedules.
        t_step = time.perf_counter()
        idx = ddp.shard(torch.randint(num_images, (B,), generator=run.data_gen), rt.dist_info).to(device)
        hyper = step_hyper(cfg, run.cur_nimg)
        step_fn.set_hyper(hyper)
        names, stats_t = step_fn.run(idx, run.step, rt.use_graph)
        values = dict(zip(names, stats_t.tolist(), strict=True))  # the step's one host synchronisation
        check_step(values, run.step + 1, cfg, rt.use_scaler)  # divergence guard: raise before anything is saved
        if run.ada is not None:
            run.ada.update(B)

        # Counters, progress, stats.jsonl / logger lines.
        prev_nimg = run.cur_nimg
        run.cur_nimg += B
        run.step += 1
        pbar.update((min(run.cur_nimg, total_nimg) - min(prev_nimg, total_nimg)) / 1000)
        run.window_s += time.perf_counter() - t_step
        run.window_steps += 1
        stop = bool(on_step is not None and on_step(run.step, run.cur_nimg, run.G_ema))
        done = run.cur_nimg >= total_nimg or stop
        postfix = run.log_step(values, hyper, device, done)
        if postfix is not None:
            pbar.set_postfix_str(postfix, refresh=False)

        # Interval actions: grid, FID, checkpoint (each also at the end).
        if run.interval_actions(prev_nimg, done, device, t_start):
            saved_step = run.step
        if stop:
            break
    pbar.close()

    # ---- Summary ---------------------------------------------------------------------------------------------------
    if saved_step != run.step:  # e.g. total_kimg reached with no step taken in this call and no state yet
        run.check_finite_weights()
        run.checkpoint(t_start)
    return run.finish(t_start, device, step_fn, resumed_from_step)


__all__ = ["GRAPH_WARMUP_STEPS", "RESUMABLE_OPTIONS", "STATE_FORMAT", "CudaGraphCaptureError", "MetricFn",
           "ResumeMismatchError", "TrainingDivergedError", "resolve_device", "resolve_precision", "training_loop"]
