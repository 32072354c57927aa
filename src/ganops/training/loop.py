"""The GAN training loop: data -> step -> interval actions (stats, grid, FID, checkpoint), in commented blocks.

The step itself (G/D forward, losses, penalties, optimizer steps, G_ema, CUDA graph) is ``ganops.training.step``;
the training state and the resume decision are ``ganops.training.state``; schedules are
``ganops.training.schedules``. The loop writes the run directory, the contract other stages read:

    training_options.json     resolved config + derived values (device, resolution, G_kwargs, ...)
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

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganops.config import ConfigError, TrainConfig
from ganops.data.dataset import load_split, load_summary
from ganops.io import remove_stale_temps, sha256_file, write_json
from ganops.losses import get_loss
from ganops.models import arch_kwargs, build_D, build_G, check_arch
from ganops.progress import progress_bar
from ganops.tracking import Logger, NullLogger
from ganops.training import distributed as ddp
from ganops.training import state as st
from ganops.training.augment import AdaptiveAugment, parse_policy
from ganops.training.device import resolve_device, resolve_precision
from ganops.training.sampling import diversity_ratio, latents, save_grid
from ganops.training.schedules import step_hyper
from ganops.training.snapshot import ResumeMismatchError, TrainingDivergedError, save_snapshot
from ganops.training.state import RESUMABLE_OPTIONS, STATE_FORMAT
from ganops.training.step import (
    GRAPH_WARMUP_STEPS,
    CudaGraphCaptureError,
    GANStep,
    graph_capturable,
    has_schedules,
)

log = logging.getLogger(__name__)

MetricFn = Callable[[torch.nn.Module], dict[str, float]]
STAT_KEYS = ("loss_G", "loss_D", "D_real", "D_fake", "grad_norm_D", "grad_norm_G", "gp", "r1", "r2")


def _guard(name: str, value: float, step: int, limit: float | None = None) -> None:
    """Raise TrainingDivergedError when ``value`` is NaN/inf or above ``limit``; ``step`` counts from 1, as the
    ``step`` field of stats.jsonl does (the failing step; the one before it is the last that finished)."""
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"training diverged in step {step}: {name} is {value}; nothing of this step was saved (the run directory "
            "keeps its last checkpoint, if any). Lower lr_g/lr_d, raise r1_gamma/r2_gamma, enable spectral_norm "
            "(dcgan, resnet) or use another loss, then run again."
        )
    if limit is not None and value > limit:
        raise TrainingDivergedError(
            f"training diverged in step {step}: {name} = {value:.4g} exceeds grad_norm_limit = {limit:.4g}; the "
            "last good training-state.pt and snapshots were kept. Lower the learning rates or raise "
            "train.grad_norm_limit, then resume."
        )


def _check_step(values: dict[str, float], step: int, cfg: TrainConfig, use_scaler: bool) -> None:
    # Divergence guard, in step order. A bad step has already updated G and D in memory, but nothing of it reaches
    # the disk: the run stops before any checkpoint. fp16: an overflowed step was skipped by the scaler.
    for loss_key, norm_key in (("loss_D", "grad_norm_D"), ("loss_G", "grad_norm_G")):
        _guard(loss_key, values[loss_key], step)
        if not (use_scaler and not math.isfinite(values[norm_key])):
            _guard(norm_key, values[norm_key], step, cfg.grad_norm_limit)


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def _load_data(cfg: TrainConfig, prepared_dir: str | Path, device: torch.device):
    """The train split as uint8 (N, C, H, W) and int64 (N,) tensors on ``device``, the summary, num_classes."""
    images_np, labels_np = load_split(prepared_dir, "train")
    summary = load_summary(prepared_dir)
    num_images, _, height, width = images_np.shape
    if height != width:
        raise ConfigError(f"training needs square images, got {height}x{width}; set prepare.resolution")
    num_classes = int(summary.get("num_classes", 0)) if cfg.conditional else 0
    if cfg.conditional and num_classes < 2:
        raise ConfigError(f"train.conditional=true needs labelled data with >= 2 classes, summary.json says "
                          f"num_classes={summary.get('num_classes')}; set train.conditional=false")
    if cfg.batch_size > num_images:
        log.warning("train.batch_size=%d is larger than the %d training images: every batch repeats images (batches "
                    "are drawn with replacement); lower train.batch_size or raise prepare.max_train",
                    cfg.batch_size, num_images)
    return torch.from_numpy(images_np).to(device), torch.from_numpy(labels_np).to(device), summary, num_classes


class _Run:
    """The state one training run shares between its blocks: networks, counters, fixed inputs, the run directory."""

    def __init__(self, cfg: TrainConfig, seed: int, run_dir: Path, logger: Logger, metric_fn: MetricFn | None,
                 is_main: bool):
        self.cfg, self.seed, self.run_dir, self.logger, self.metric_fn = cfg, seed, run_dir, logger, metric_fn
        self.is_main = is_main
        self.eval_on = cfg.eval_every_kimg > 0 and metric_fn is not None
        self.step, self.cur_nimg, self.best_fid, self.wall_time_s = 0, 0, math.inf, 0.0
        self.last: dict[str, float] = {}
        self.stats_path, self.state_path = run_dir / st.STATS_NAME, run_dir / st.STATE_NAME

    def meta(self) -> dict[str, Any]:
        cfg = self.cfg
        return dict(arch=cfg.arch, G_kwargs=self.G_kwargs, **self.G_kwargs, kimg=self.cur_nimg / 1000,
                    step=self.step, seed=self.seed, loss=cfg.loss, ema_halflife_kimg=cfg.ema_halflife_kimg,
                    best_fid=self.best_fid if self.eval_on else None,
                    dataset_sha256=self.summary.get("dataset_sha256"), class_names=self.summary.get("class_names"))

    def write_stats(self, entry: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.stats_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ---- interval actions -------------------------------------------------------------------------------------------
    def fixed_inputs(self, data: torch.Tensor, num_classes: int, device: torch.device) -> None:
        # Fixed inputs for sample grids and the mode-collapse signal (own seeds; the global RNG is untouched).
        cfg, seed, num_images = self.cfg, self.seed, data.shape[0]
        self.grid_rows = num_classes or cfg.grid_size
        self.grid_z = latents(self.grid_rows * cfg.grid_size, cfg.z_dim, seed).to(device)
        self.grid_c = torch.arange(num_classes, device=device).repeat_interleave(cfg.grid_size) \
            if num_classes else None
        div_n = min(cfg.mode_collapse_num_images, num_images)
        self.div_z = latents(div_n, cfg.z_dim, seed + 1).to(device)
        self.div_c = torch.arange(div_n, device=device) % num_classes if num_classes else None
        div_idx = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:div_n].to(device)
        self.div_reals = data[div_idx].float() / 127.5 - 1.0

    def sample_grid(self) -> None:
        if not self.is_main:
            return
        G_ema, cfg = self.G_ema, self.cfg
        with torch.no_grad():
            fakes = torch.cat([G_ema(z, None if self.grid_c is None else self.grid_c[i:i + len(z)])
                               for i, z in zip(range(0, len(self.grid_z), 256), self.grid_z.split(256))])
            ratio = diversity_ratio(G_ema(self.div_z, self.div_c), self.div_reals)
        path = self.run_dir / f"fakes{self.cur_nimg // 1000:06d}.png"
        save_grid(fakes.float(), self.grid_rows, path)
        save_grid(fakes.float(), self.grid_rows, self.run_dir / "fakes-latest.png")
        self.logger.log_image(path)
        self.write_stats({"step": self.step, "kimg": self.cur_nimg / 1000, "diversity_ratio": ratio})
        self.logger.log_metrics({"diversity_ratio": ratio}, step=self.step)
        if ratio < cfg.mode_collapse_threshold:
            log.warning("possible mode collapse at step %d: G_ema/real pairwise-distance ratio %.3f < %.3f",
                        self.step, ratio, cfg.mode_collapse_threshold)

    def evaluate(self, device: torch.device) -> None:
        if not self.is_main:
            return
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            metrics = {k: float(v) for k, v in self.metric_fn(self.G_ema).items()}
        if "fid" not in metrics:
            raise ValueError(f"metric_fn must return a 'fid' key to keep the best snapshot, got {sorted(metrics)}")
        named = {f"metric/{k}": v for k, v in metrics.items()}
        self.write_stats({"step": self.step, "kimg": self.cur_nimg / 1000, **named})
        self.logger.log_metrics(named, step=self.step)
        if metrics["fid"] < self.best_fid:
            self.best_fid = metrics["fid"]
            save_snapshot(self.run_dir / "network-snapshot.pt", self.G_ema, self.meta())

    def check_finite_weights(self) -> None:
        # Belt and braces behind the per-step guards: never write a grid, a statistic, a snapshot or a state from
        # broken weights.
        for name, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            if not _all_finite(net):
                raise TrainingDivergedError(f"non-finite weights in {name} after step {self.step}; last good "
                                            "state kept")

    def checkpoint(self, t_start: float) -> None:  # callers run check_finite_weights() first
        for net in (self.G, self.D, self.G_ema):
            ddp.broadcast_buffers(net, self.dist_info)  # every rank holds rank 0's BN statistics, as saved
        if not self.is_main:
            return
        save_snapshot(self.run_dir / "network-snapshot-latest.pt", self.G_ema, self.meta())
        if not self.eval_on:
            save_snapshot(self.run_dir / "network-snapshot.pt", self.G_ema, self.meta())
        counters = {"step": self.step, "cur_nimg": self.cur_nimg, "best_fid": self.best_fid,
                    "wall_time_s": self.wall_time_s + (time.time() - t_start), "last_stats": self.last}
        st.save_state(self.state_path, nets={"G": self.G, "D": self.D, "G_ema": self.G_ema},
                      opts={"opt_G": self.opt_G, "opt_D": self.opt_D}, scaler=self.scaler,
                      use_scaler=self.use_scaler, counters=counters, ada=self.ada, policy=self.policy,
                      data_gen=self.data_gen, arch_config=self.arch_config, cfg=self.cfg)


def _build(run: _Run, cfg: TrainConfig, device: torch.device, channels: int, resolution: int, num_classes: int,
           use_graph: bool, memory_format: torch.memory_format) -> None:
    """Networks, optimizers, scaler, ADA and the data-index generator, seeded (fresh weights; resume comes later)."""
    seed = run.seed
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    extra = arch_kwargs(cfg.arch, cfg)
    run.G_kwargs = dict(z_dim=cfg.z_dim, ngf=cfg.ngf, resolution=resolution, channels=channels,
                        num_classes=num_classes, **extra)
    run.D_kwargs = dict(ndf=cfg.ndf, resolution=resolution, channels=channels, num_classes=num_classes,
                        spectral_norm=cfg.spectral_norm, **extra)
    run.arch_config = dict(arch=cfg.arch, **run.G_kwargs, ndf=cfg.ndf, conditional=cfg.conditional, loss=cfg.loss,
                           spectral_norm=cfg.spectral_norm, dataset_sha256=run.summary.get("dataset_sha256"))
    run.G = build_G(cfg.arch, **run.G_kwargs).to(device, memory_format=memory_format).train()
    run.D = build_D(cfg.arch, **run.D_kwargs).to(device, memory_format=memory_format).train()
    run.G_ema = copy.deepcopy(run.G).eval().requires_grad_(False)
    # Fused Adam (one kernel for all parameters; CPU and CUDA): ~4x faster optimizer step than the per-tensor loop.
    # capturable: the step count lives on the GPU and is advanced by the kernel, so a CUDA graph can replay it.
    run.opt_G = torch.optim.Adam(run.G.parameters(), lr=cfg.lr_g, betas=cfg.betas_g, fused=True,
                                 capturable=use_graph)
    run.opt_D = torch.optim.Adam(run.D.parameters(), lr=cfg.lr_d, betas=cfg.betas_d, fused=True,
                                 capturable=use_graph)
    run.scaler = torch.amp.GradScaler(device.type, enabled=run.use_scaler)
    run.ada = AdaptiveAugment(cfg.ada_policy, target=cfg.ada_target, speed_kimg=cfg.ada_kimg,
                              interval=cfg.ada_interval) if cfg.ada_target > 0 else None
    # Decorrelated from the global stream, which draws z, fake labels, augmentations and GP epsilons.
    run.data_gen = torch.Generator().manual_seed(seed + 0x5EED)


def _resume(run: _Run, use_graph: bool) -> int | None:
    """Continue from the run directory's training state when there is one to continue; return its step."""
    if run.is_main:  # a run killed mid-write (SIGKILL) leaves atomic_write's temporary files behind
        for p in remove_stale_temps(run.run_dir):
            log.info("removed %s, a partial write of an interrupted run", p)
    state = st.resume_state(run.run_dir, run.cfg, run.arch_config)
    if state is None:
        if run.is_main:
            st.truncate_stats(run.stats_path, -1)  # stale lines from a run killed before its first checkpoint
        return None
    counters = st.load_state(state, nets={"G": run.G, "D": run.D, "G_ema": run.G_ema},
                             opts={"opt_G": run.opt_G, "opt_D": run.opt_D}, scaler=run.scaler, ada=run.ada,
                             data_gen=run.data_gen, capturable=use_graph)
    run.step, run.cur_nimg, run.best_fid = counters["step"], counters["cur_nimg"], counters["best_fid"]
    run.wall_time_s, run.last = counters["wall_time_s"], counters["last_stats"]
    if run.is_main:
        st.truncate_stats(run.stats_path, run.step)
    log.info("resumed %s at step %d (%.3f kimg)", run.run_dir, run.step, run.cur_nimg / 1000)
    return run.step


def _varying_stats(run: _Run, hyper) -> dict[str, float]:
    """Scheduled values worth logging (only those that change in this run)."""
    cfg, out = run.cfg, {}
    if has_schedules(cfg):
        out.update(lr_G=hyper.lr_g, lr_D=hyper.lr_d, beta2=hyper.beta2_d, ema_halflife_kimg=hyper.ema_halflife_kimg)
        if cfg.r1_gamma_end is not None or cfg.r2_gamma_end is not None:
            out.update(r1_gamma=hyper.r1_gamma, r2_gamma=hyper.r2_gamma)
    if run.ada is not None:
        out["ada_p"] = run.ada.p
        if run.ada.last_rt is not None:
            out["ada_rt"] = run.ada.last_rt
    return out


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
        prepared_dir: directory written by ``ganops prepare`` (train.npz, summary.json).
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

    # ---- Device, threads, precision ---------------------------------------------------------------------------
    device = resolve_device(cfg.device)
    dist_info, device = ddp.setup(device)  # torchrun: join the group, one device per rank; else a no-op
    ddp.check_batch(cfg.batch_size, dist_info)  # the global batch must split evenly over ranks
    run = _Run(cfg, seed, Path(cfg.run_dir), logger if dist_info.is_main else NullLogger(), metric_fn,
               dist_info.is_main)  # only rank 0 writes the run directory and logs
    run.dist_info, run.policy, progress = dist_info, policy, progress and dist_info.is_main
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":  # fixed shapes: cuDNN times its kernels once and keeps the fastest (as StyleGAN2-ADA)
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_precision(cfg.precision, device)
    run.use_scaler = amp_dtype == torch.float16
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # CUDA graph (CUDA only): after GRAPH_WARMUP_STEPS eager steps the step is captured once and replayed: one launch
    # per step instead of a few hundred, which is what bounds a small GAN on a GPU. Not for steps whose work or
    # hyper-parameters vary (lazy R1/R2, augmentation, GP, lr/beta2/gamma schedules; the G_ema ramp-up is fine) or
    # that need the host (fp16 scaler, DDP).
    use_graph = (device.type == "cuda" and cfg.cuda_graph and dist_info.world_size == 1
                 and not (loss.needs_gradient_penalty and cfg.gp_lambda > 0) and cfg.r1_gamma == 0
                 and cfg.r2_gamma == 0 and not policy and cfg.ada_target == 0 and not run.use_scaler
                 and graph_capturable(cfg))

    def autocast():
        # A captured graph must not rely on autocast's cache of cast weights (the cache is cleared on exit).
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                              cache_enabled=not use_graph)

    # ---- Data, networks, resume -------------------------------------------------------------------------------
    data, labels, run.summary, num_classes = _load_data(cfg, prepared_dir, device)
    num_images, channels, resolution, _ = data.shape
    _build(run, cfg, device, channels, resolution, num_classes, use_graph, memory_format)
    resumed_from_step = _resume(run, use_graph)
    G_train, D_train = ddp.wrap(run.G, dist_info, device), ddp.wrap(run.D, dist_info, device)  # after resume
    if run.is_main:
        write_json(run.run_dir / "training_options.json", {
            **cfg.model_dump(mode="json"), "seed": seed, "prepared_dir": str(prepared_dir), "device": str(device),
            "autocast_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
            "num_images": num_images, "G_kwargs": run.G_kwargs, "D_kwargs": run.D_kwargs,
            "arch_config": run.arch_config, "resumed_from_step": resumed_from_step,
            "torch_num_threads": torch.get_num_threads(), "world_size": dist_info.world_size,
        })
    run.fixed_inputs(data, num_classes, device)
    step_fn = GANStep(G=run.G, D=run.D, G_train=G_train, D_train=D_train, G_ema=run.G_ema, opt_G=run.opt_G,
                      opt_D=run.opt_D, scaler=run.scaler, loss=loss, cfg=cfg, data=data, labels=labels,
                      num_classes=num_classes, dist_info=dist_info, autocast=autocast, memory_format=memory_format,
                      augment=policy, ada=run.ada)

    # ---- Main loop: one D step then one G step per iteration -----------------------------------------------------
    B, total_nimg = cfg.batch_size, int(round(cfg.total_kimg * 1000))
    saved_step = run.step if resumed_from_step is not None else None
    window_s, window_steps = 0.0, 0
    # initial is capped at total: tqdm drops the total (and fails on the bar format) once n >= total + 0.5.
    pbar = progress_bar(total=cfg.total_kimg, initial=min(run.cur_nimg / 1000, cfg.total_kimg), desc="train",
                        unit="kimg", disable=not progress,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
    while run.cur_nimg < total_nimg:
        # Data and step: indices from the seeded data generator, hyper-parameters from the schedules.
        t_step = time.perf_counter()
        idx = ddp.shard(torch.randint(num_images, (B,), generator=run.data_gen), dist_info).to(device)
        hyper = step_hyper(cfg, run.cur_nimg)
        step_fn.set_hyper(hyper)
        names, stats_t = step_fn.run(idx, run.step, use_graph)
        values = dict(zip(names, stats_t.tolist(), strict=True))  # the step's one host synchronisation
        _check_step(values, run.step + 1, cfg, run.use_scaler)
        if run.ada is not None:
            run.ada.update(B)

        # Counters.
        prev_nimg = run.cur_nimg
        run.cur_nimg += B
        run.step += 1
        pbar.update((min(run.cur_nimg, total_nimg) - min(prev_nimg, total_nimg)) / 1000)
        window_s += time.perf_counter() - t_step
        window_steps += 1

        # Logging: stats.jsonl, the logger, the progress bar's postfix.
        run.last = {k: values[k] for k in STAT_KEYS if k in values}
        stop = bool(on_step is not None and on_step(run.step, run.cur_nimg, run.G_ema))
        done = run.cur_nimg >= total_nimg or stop
        if run.step % cfg.log_every_steps == 0 or done:
            sec_per_step = window_s / window_steps
            entry = {"step": run.step, "kimg": run.cur_nimg / 1000,
                     **ddp.mean_over_ranks(run.last, dist_info, device), **_varying_stats(run, hyper),
                     "sec_per_step": sec_per_step, "images_per_s": B / sec_per_step}
            run.write_stats(entry)
            run.logger.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=run.step)
            pbar.set_postfix_str(f"{entry['images_per_s']:.0f} img/s, loss_G {entry['loss_G']:.3f}, "
                                 f"loss_D {entry['loss_D']:.3f}", refresh=False)
            window_s, window_steps = 0.0, 0

        # Interval actions (and always at the end), after one weights check so none of them writes from NaN weights.
        do_grid = _crossed(cfg.sample_every_kimg, prev_nimg, run.cur_nimg) or done
        do_eval = run.eval_on and (_crossed(cfg.eval_every_kimg, prev_nimg, run.cur_nimg) or done)
        do_checkpoint = _crossed(cfg.checkpoint_every_kimg, prev_nimg, run.cur_nimg) or done
        if do_grid or do_eval or do_checkpoint:
            run.check_finite_weights()
        if do_grid:
            run.sample_grid()
        if do_eval:
            run.evaluate(device)
        if do_checkpoint:
            run.checkpoint(t_start)
            saved_step = run.step
        if stop:
            break
    pbar.close()

    # ---- Summary ---------------------------------------------------------------------------------------------------
    if saved_step != run.step:  # e.g. total_kimg reached with no step taken in this call and no state yet
        run.check_finite_weights()
        run.checkpoint(t_start)
    return _finish(run, t_start, device, cfg, step_fn, resumed_from_step)


def _crossed(interval_kimg: float, prev_nimg: int, cur_nimg: int) -> bool:
    every = interval_kimg * 1000
    return interval_kimg > 0 and int(cur_nimg // every) > int(prev_nimg // every)


def _finish(run: _Run, t_start: float, device: torch.device, cfg: TrainConfig, step_fn: GANStep,
            resumed_from_step: int | None) -> dict[str, Any]:
    """Check that DDP ranks agree, write train.json (rank 0) and return it."""
    dist_info = run.dist_info
    # DDP: the ranks must end with bit-identical G and D (gradient all-reduce + rank 0's buffers); a mismatch would
    # mean a shard trained a different model than the one saved.
    rank_checksums = ddp.gather_strings(ddp.state_checksum(run.G.state_dict(), run.D.state_dict()), dist_info)
    if len(set(rank_checksums)) != 1:
        raise RuntimeError(f"DDP ranks ended with different G/D weights (checksums {rank_checksums}); "
                           "this is a bug in the distributed loop, please report it")
    if not run.is_main:
        ddp.barrier(dist_info)  # return only once rank 0 has written the summary
        return {}
    snapshot_path = run.run_dir / "network-snapshot.pt"
    if not snapshot_path.is_file():  # eval on but every FID was NaN: fall back to latest
        save_snapshot(snapshot_path, run.G_ema, run.meta())
    summary_out = {
        "step": run.step, "kimg": run.cur_nimg / 1000, "cur_nimg": run.cur_nimg,
        "wall_time_s": run.wall_time_s + (time.time() - t_start),
        "loss_G": run.last.get("loss_G"), "loss_D": run.last.get("loss_D"),
        "best_fid": run.best_fid if run.eval_on and math.isfinite(run.best_fid) else None,
        "snapshot": str(snapshot_path), "snapshot_sha256": sha256_file(snapshot_path),
        "snapshot_latest_sha256": sha256_file(run.run_dir / "network-snapshot-latest.pt"),
        "resumed_from_step": resumed_from_step, "device": str(device), "precision": cfg.precision,
        "cuda_graph": step_fn.graph is not None, "arch": cfg.arch, "loss": cfg.loss,
        "world_size": dist_info.world_size, "rank_checksums": rank_checksums,
        "ada_p": run.ada.p if run.ada is not None else None,
    }
    write_json(run.run_dir / "train.json", summary_out)
    ddp.barrier(dist_info)
    return summary_out


__all__ = ["GRAPH_WARMUP_STEPS", "RESUMABLE_OPTIONS", "STATE_FORMAT", "CudaGraphCaptureError", "ResumeMismatchError",
           "TrainingDivergedError", "resolve_device", "resolve_precision", "training_loop"]
