"""One training run's state and the actions the loop takes on it: build, resume, log, sample, evaluate, checkpoint,
finish. The loop (``ganops.training.loop``) decides when; this module does the work and names files through
:class:`ganops.rundir.RunDir`.
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
from ganops.models import arch_kwargs, build_D, build_G
from ganops.rundir import RunDir
from ganops.tracking import Logger
from ganops.training import distributed as ddp
from ganops.training import state as st
from ganops.training.augment import AdaptiveAugment
from ganops.training.data import ResidentData, StreamedData
from ganops.training.sampling import diversity_ratio, latents, save_grid
from ganops.training.schedules import StepHyper
from ganops.training.snapshot import TrainingDivergedError, save_snapshot
from ganops.training.step import GANStep, has_schedules

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


def check_step(values: dict[str, float], step: int, cfg: TrainConfig, use_scaler: bool) -> None:
    # Divergence guard, in step order. A bad step has already updated G and D in memory, but nothing of it reaches
    # the disk: the run stops before any checkpoint. fp16: an overflowed step was skipped by the scaler.
    for loss_key, norm_key in (("loss_D", "grad_norm_D"), ("loss_G", "grad_norm_G")):
        _guard(loss_key, values[loss_key], step)
        if not (use_scaler and not math.isfinite(values[norm_key])):
            _guard(norm_key, values[norm_key], step, cfg.grad_norm_limit)


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def load_train_split(cfg: TrainConfig, prepared_dir: str | Path):
    """The train split as :func:`ganops.data.dataset.load_split` opens it (images memory-mapped, uint8
    (N, C, H, W); labels int64 (N,)), the summary and num_classes, checked against the config."""
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
    return images_np, labels_np, summary, num_classes


class TrainingRun:
    """The state one training run shares between the loop's blocks (networks, optimizers, counters, fixed inputs, the
    run directory) and the actions on it. Only rank 0 (``is_main``) writes files and logs.

    Args:
        cfg: the ``train`` section. seed: global seed. logger: tracker (a NullLogger on other ranks).
        metric_fn: ``G_ema -> {"fid": ...}`` for in-training evaluation, or None.
        dist_info: this process's rank / world size (``ganops.training.distributed``).
    """

    def __init__(self, cfg: TrainConfig, seed: int, logger: Logger, metric_fn: MetricFn | None,
                 dist_info: ddp.DistInfo):
        self.cfg, self.seed, self.logger, self.metric_fn = cfg, seed, logger, metric_fn
        self.dist_info, self.is_main = dist_info, dist_info.is_main
        self.rd = RunDir(cfg.run_dir)
        self.run_dir = self.rd.path
        self.eval_on = cfg.eval_every_kimg > 0 and metric_fn is not None
        self.step, self.cur_nimg, self.best_fid, self.wall_time_s = 0, 0, math.inf, 0.0
        self.last: dict[str, float] = {}
        self.window_s, self.window_steps = 0.0, 0

    def meta(self) -> dict[str, Any]:
        cfg = self.cfg
        return dict(arch=cfg.arch, G_kwargs=self.G_kwargs, **self.G_kwargs, kimg=self.cur_nimg / 1000,
                    step=self.step, seed=self.seed, loss=cfg.loss, ema_halflife_kimg=cfg.ema_halflife_kimg,
                    best_fid=self.best_fid if self.eval_on else None,
                    dataset_sha256=self.summary.get("dataset_sha256"), class_names=self.summary.get("class_names"))

    def write_stats(self, entry: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.rd.stats, "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ---- set-up -----------------------------------------------------------------------------------------------------
    def build(self, device: torch.device, channels: int, resolution: int, num_classes: int, use_graph: bool,
              memory_format: torch.memory_format) -> None:
        """Networks, optimizers, scaler, ADA and the data-index generator, seeded (fresh weights; resume comes
        later)."""
        cfg, seed = self.cfg, self.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        extra = arch_kwargs(cfg.arch, cfg)
        self.G_kwargs = dict(z_dim=cfg.z_dim, ngf=cfg.ngf, resolution=resolution, channels=channels,
                             num_classes=num_classes, **extra)
        self.D_kwargs = dict(ndf=cfg.ndf, resolution=resolution, channels=channels, num_classes=num_classes,
                             spectral_norm=cfg.spectral_norm, **extra)
        self.arch_config = dict(arch=cfg.arch, **self.G_kwargs, ndf=cfg.ndf, conditional=cfg.conditional,
                                loss=cfg.loss, spectral_norm=cfg.spectral_norm,
                                dataset_sha256=self.summary.get("dataset_sha256"))
        self.G = build_G(cfg.arch, **self.G_kwargs).to(device, memory_format=memory_format).train()
        self.D = build_D(cfg.arch, **self.D_kwargs).to(device, memory_format=memory_format).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # Fused Adam (one kernel for all parameters; CPU and CUDA): ~4x faster optimizer step than the per-tensor
        # loop. capturable: the step count lives on the GPU and is advanced by the kernel, so a CUDA graph can
        # replay it.
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas_g, fused=True,
                                      capturable=use_graph)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas_d, fused=True,
                                      capturable=use_graph)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_scaler)
        self.ada = AdaptiveAugment(cfg.ada_policy, target=cfg.ada_target, speed_kimg=cfg.ada_kimg,
                                   interval=cfg.ada_interval) if cfg.ada_target > 0 else None
        # Decorrelated from the global stream, which draws z, fake labels, augmentations and GP epsilons.
        self.data_gen = torch.Generator().manual_seed(seed + 0x5EED)

    def resume(self, use_graph: bool) -> int | None:
        """Continue from the run directory's training state when there is one to continue; return its step."""
        if self.is_main:  # a run killed mid-write (SIGKILL) leaves atomic_write's temporary files behind
            for p in remove_stale_temps(self.run_dir):
                log.info("removed %s, a partial write of an interrupted run", p)
        state = st.resume_state(self.run_dir, self.cfg, self.arch_config)
        if state is None:
            if self.is_main:
                st.truncate_stats(self.rd.stats, -1)  # stale lines from a run killed before its first checkpoint
            return None
        counters = st.load_state(state, nets={"G": self.G, "D": self.D, "G_ema": self.G_ema},
                                 opts={"opt_G": self.opt_G, "opt_D": self.opt_D}, scaler=self.scaler, ada=self.ada,
                                 data_gen=self.data_gen, capturable=use_graph)
        self.step, self.cur_nimg, self.best_fid = counters["step"], counters["cur_nimg"], counters["best_fid"]
        self.wall_time_s, self.last = counters["wall_time_s"], counters["last_stats"]
        if self.is_main:
            st.truncate_stats(self.rd.stats, self.step)
        log.info("resumed %s at step %d (%.3f kimg)", self.run_dir, self.step, self.cur_nimg / 1000)
        return self.step

    def write_options(self, prepared_dir: str | Path, device: torch.device, amp_dtype: torch.dtype | None,
                      num_images: int, resumed_from_step: int | None, data_streamed: bool = False) -> None:
        """``training_options.json``: the resolved config and what was derived from it (rank 0); ``data_streamed``:
        the train split is read from disk per batch (``train.resident_data_mb``)."""
        if self.is_main:
            write_json(self.rd.options, {
                **self.cfg.model_dump(mode="json"), "seed": self.seed, "prepared_dir": str(prepared_dir),
                "device": str(device),
                "autocast_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
                "num_images": num_images, "data_streamed": data_streamed, "G_kwargs": self.G_kwargs, "D_kwargs": self.D_kwargs,
                "arch_config": self.arch_config, "resumed_from_step": resumed_from_step,
                "torch_num_threads": torch.get_num_threads(), "world_size": self.dist_info.world_size,
            })

    def fixed_inputs(self, data: ResidentData | StreamedData, num_classes: int, device: torch.device) -> None:
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
        self.div_reals = data.gather(div_idx)[0].float() / 127.5 - 1.0

    # ---- per-step logging -------------------------------------------------------------------------------------------
    def varying_stats(self, hyper: StepHyper) -> dict[str, float]:
        """Scheduled values worth logging (only those that change in this run)."""
        cfg, out = self.cfg, {}
        if has_schedules(cfg):
            out.update(lr_G=hyper.lr_g, lr_D=hyper.lr_d, beta2=hyper.beta2_d,
                       ema_halflife_kimg=hyper.ema_halflife_kimg)
            if cfg.r1_gamma_end is not None or cfg.r2_gamma_end is not None:
                out.update(r1_gamma=hyper.r1_gamma, r2_gamma=hyper.r2_gamma)
        if self.ada is not None:
            out["ada_p"] = self.ada.p
            if self.ada.last_rt is not None:
                out["ada_rt"] = self.ada.last_rt
        return out

    def log_step(self, values: dict[str, float], hyper: StepHyper, device: torch.device, done: bool) -> str | None:
        """Keep the step's statistics; every ``log_every_steps`` (and at the end) write a stats.jsonl line (means
        over ranks, images/s over the window since the last line) and send it to the logger. Returns the progress
        bar's postfix when a line was written."""
        self.last = {k: values[k] for k in STAT_KEYS if k in values}
        if not (self.step % self.cfg.log_every_steps == 0 or done):
            return None
        sec_per_step = self.window_s / self.window_steps
        entry = {"step": self.step, "kimg": self.cur_nimg / 1000,
                 **ddp.mean_over_ranks(self.last, self.dist_info, device), **self.varying_stats(hyper),
                 "sec_per_step": sec_per_step, "images_per_s": self.cfg.batch_size / sec_per_step}
        self.write_stats(entry)
        self.logger.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=self.step)
        self.window_s, self.window_steps = 0.0, 0
        return f"{entry['images_per_s']:.0f} img/s, loss_G {entry['loss_G']:.3f}, loss_D {entry['loss_D']:.3f}"

    # ---- interval actions -------------------------------------------------------------------------------------------
    def sample_grid(self) -> None:
        if not self.is_main:
            return
        G_ema, cfg = self.G_ema, self.cfg
        with torch.no_grad():
            fakes = torch.cat([G_ema(z, None if self.grid_c is None else self.grid_c[i:i + len(z)])
                               for i, z in zip(range(0, len(self.grid_z), 256), self.grid_z.split(256))])
            ratio = diversity_ratio(G_ema(self.div_z, self.div_c), self.div_reals)
        path = self.rd.fakes(self.cur_nimg // 1000)
        save_grid(fakes.float(), self.grid_rows, path)
        save_grid(fakes.float(), self.grid_rows, self.rd.fakes_latest)
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
            save_snapshot(self.rd.snapshot, self.G_ema, self.meta())

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
        save_snapshot(self.rd.snapshot_latest, self.G_ema, self.meta())
        if not self.eval_on:
            save_snapshot(self.rd.snapshot, self.G_ema, self.meta())
        counters = {"step": self.step, "cur_nimg": self.cur_nimg, "best_fid": self.best_fid,
                    "wall_time_s": self.wall_time_s + (time.time() - t_start), "last_stats": self.last}
        st.save_state(self.rd.state, nets={"G": self.G, "D": self.D, "G_ema": self.G_ema},
                      opts={"opt_G": self.opt_G, "opt_D": self.opt_D}, scaler=self.scaler,
                      use_scaler=self.use_scaler, counters=counters, ada=self.ada, policy=self.policy,
                      data_gen=self.data_gen, arch_config=self.arch_config, cfg=self.cfg)

    def interval_actions(self, prev_nimg: int, done: bool, device: torch.device, t_start: float) -> bool:
        """Grid, evaluation and checkpoint when their intervals were crossed by the last step (all of them when
        ``done``), after one weights check so none of them writes from NaN weights. Returns whether it
        checkpointed."""
        cfg = self.cfg
        do_grid = _crossed(cfg.sample_every_kimg, prev_nimg, self.cur_nimg) or done
        do_eval = self.eval_on and (_crossed(cfg.eval_every_kimg, prev_nimg, self.cur_nimg) or done)
        do_checkpoint = _crossed(cfg.checkpoint_every_kimg, prev_nimg, self.cur_nimg) or done
        if do_grid or do_eval or do_checkpoint:
            self.check_finite_weights()
        if do_grid:
            self.sample_grid()
        if do_eval:
            self.evaluate(device)
        if do_checkpoint:
            self.checkpoint(t_start)
        return do_checkpoint

    def finish(self, t_start: float, device: torch.device, step_fn: GANStep,
               resumed_from_step: int | None) -> dict[str, Any]:
        """Check that DDP ranks agree, write train.json (rank 0) and return it ({} on other ranks)."""
        cfg, dist_info = self.cfg, self.dist_info
        # DDP: the ranks must end with bit-identical G and D (gradient all-reduce + rank 0's buffers); a mismatch would
        # mean a shard trained a different model than the one saved.
        rank_checksums = ddp.gather_strings(ddp.state_checksum(self.G.state_dict(), self.D.state_dict()), dist_info)
        if len(set(rank_checksums)) != 1:
            raise RuntimeError(f"DDP ranks ended with different G/D weights (checksums {rank_checksums}); "
                               "this is a bug in the distributed loop, please report it")
        if not self.is_main:
            ddp.barrier(dist_info)  # return only once rank 0 has written the summary
            return {}
        snapshot_path = self.rd.snapshot
        if not snapshot_path.is_file():  # eval on but every FID was NaN: fall back to latest
            save_snapshot(snapshot_path, self.G_ema, self.meta())
        summary_out = {
            "step": self.step, "kimg": self.cur_nimg / 1000, "cur_nimg": self.cur_nimg,
            "wall_time_s": self.wall_time_s + (time.time() - t_start),
            "loss_G": self.last.get("loss_G"), "loss_D": self.last.get("loss_D"),
            "best_fid": self.best_fid if self.eval_on and math.isfinite(self.best_fid) else None,
            "snapshot": str(snapshot_path), "snapshot_sha256": sha256_file(snapshot_path),
            "snapshot_latest_sha256": sha256_file(self.rd.snapshot_latest),
            "resumed_from_step": resumed_from_step, "device": str(device), "precision": cfg.precision,
            "cuda_graph": step_fn.graph is not None, "arch": cfg.arch, "loss": cfg.loss,
            "world_size": dist_info.world_size, "rank_checksums": rank_checksums,
            "ada_p": self.ada.p if self.ada is not None else None,
        }
        write_json(self.rd.summary, summary_out)
        ddp.barrier(dist_info)
        return summary_out


def _crossed(interval_kimg: float, prev_nimg: int, cur_nimg: int) -> bool:
    every = interval_kimg * 1000
    return interval_kimg > 0 and int(cur_nimg // every) > int(prev_nimg // every)
