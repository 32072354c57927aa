"""The GAN training loop: one top-to-bottom function with commented blocks (StyleGAN3 ``training_loop`` style).

It reads the prepared train split, trains G and D, and writes the run directory (the contract other stages read):

    training_options.json     resolved config + derived values (device, resolution, G_kwargs, ...)
    stats.jsonl               one JSON object per logged step: step, kimg, loss_G, loss_D, D_real / D_fake (mean
                              raw D logit on the real / fake batch, i.e. D(x) and D(G(z)) before any sigmoid),
                              grad_norm_D, grad_norm_G (L2 over all parameters), gp / r1 when active, sec_per_step,
                              images_per_s; plus one line per sample interval (diversity_ratio, the mode-collapse
                              signal) and one per evaluation (metric/<name> from metric_fn)
    fakes{kimg:06d}.png       G_ema samples from fixed z every sample_every_kimg (one row per class if conditional)
    fakes-latest.png          the newest grid
    training-state.pt         G, D, G_ema, optimizers, grad scaler, step, nimg, best FID, augmentation policy,
                              every RNG state (torch, cuda, numpy, python, data-index generator): resume is exact
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
from tqdm.auto import tqdm

from ganops.config import ConfigError, TrainConfig
from ganops.data.dataset import load_split, load_summary
from ganops.io import atomic_write, remove_stale_temps, sha256_file, write_json
from ganops.losses import get_loss, gradient_penalty, r1_penalty
from ganops.models import build_D, build_G, check_arch
from ganops.tracking import Logger, NullLogger
from ganops.training import distributed as ddp
from ganops.training.augment import diff_augment, parse_policy
from ganops.training.ema import ema_beta, update_ema
from ganops.training.sampling import diversity_ratio, latents, save_grid
from ganops.training.snapshot import (
    ResumeMismatchError,
    TrainingDivergedError,
    arch_mismatch,
    changed_options,
    describe_changes,
    load_torch,
    save_snapshot,
    save_torch,
)

log = logging.getLogger(__name__)

STATE_FORMAT = 1
MetricFn = Callable[[torch.nn.Module], dict[str, float]]


# ----------------------------------------------------------------------------------------------------------------
# Small helpers (device, precision, RNG capture, divergence guard, stats file)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given.

    Raises:
        ConfigError (a ValueError): ``cuda`` without a CUDA device (``key`` names the parameter in the message).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto``: bf16 on CUDA when supported, else fp16 (with a GradScaler); fp32 on CPU (bf16 was measured slower
    on the project CPU, see benchmarks/bench_train.py).

    Raises:
        ValueError: fp16 on CPU (CPU autocast supports bf16 only).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs CUDA (CPU autocast supports bf16 only); use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    # Only tensors / Python scalars, so the state loads with torch.load(weights_only=True).
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "data": data_gen.get_state(),
    }


def _set_rng_state(state: dict[str, Any], data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["state"].tolist()), pyst["gauss"]))
    data_gen.set_state(state["data"].cpu())


def _grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """L2 norm over all of ``module``'s gradients, a 0-d tensor on their device (no host synchronisation)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.nn.utils.get_total_norm(grads, foreach=True)  # one call for all grads


def _guard(name: str, value: float, step: int, limit: float | None = None) -> None:
    """Raise TrainingDivergedError when ``value`` is NaN/inf or above ``limit``; ``step`` counts from 1, as the
    ``step`` field of stats.jsonl does (the failing step; the one before it is the last that finished)."""
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"training diverged in step {step}: {name} is {value}; the last good training-state.pt and snapshots "
            "were kept. Lower lr_g/lr_d, enable spectral_norm or r1_gamma, or use another loss, then resume."
        )
    if limit is not None and value > limit:
        raise TrainingDivergedError(
            f"training diverged in step {step}: {name} = {value:.4g} exceeds grad_norm_limit = {limit:.4g}; the "
            "last good training-state.pt and snapshots were kept. Lower the learning rates or raise "
            "train.grad_norm_limit, then resume."
        )


def _truncate_stats(path: Path, keep_through_step: int) -> None:
    # After a crash, stats.jsonl may hold lines written after the checkpoint we resume from; drop them.
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        try:
            if json.loads(ln)["step"] <= keep_through_step:
                kept.append(ln)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by the kill
    with atomic_write(path, "w") as f:
        f.write("".join(ln + "\n" for ln in kept))


GRAPH_WARMUP_STEPS = 3  # eager steps before the CUDA graph capture


class CudaGraphCaptureError(RuntimeError):
    """The training step could not be captured as a CUDA graph (``train.cuda_graph=false`` trains eagerly)."""

# Options a run may resume with when they change (train.on_config_change=restart restarts on any other change):
# its length, logging / sampling / checkpoint / evaluation intervals, where and how fast it runs, and the policy.
RESUMABLE_OPTIONS = frozenset({
    "total_kimg", "log_every_steps", "sample_every_kimg", "checkpoint_every_kimg", "eval_every_kimg",
    "eval_num_samples", "grid_size", "device", "num_threads", "num_workers", "precision", "channels_last",
    "cuda_graph", "run_dir", "on_config_change", "mode_collapse_threshold", "mode_collapse_num_images",
    "grad_norm_limit",
})


def _discard_training_outputs(run_dir: Path) -> None:
    # Only what this loop writes; other files in run_dir (e.g. the tracker's mlflow_run.json) stay.
    patterns = ("training-state.pt", "stats.jsonl", "train.json", "network-snapshot*.pt", "fakes*.png")
    for pattern in patterns:
        for path in run_dir.glob(pattern):
            path.unlink()


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


# ----------------------------------------------------------------------------------------------------------------


def training_loop(
    cfg: TrainConfig,
    *,
    prepared_dir: str | Path,
    seed: int,
    logger: Logger = NullLogger(),
    metric_fn: MetricFn | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train G and D on the prepared train split; write and return the ``train.json`` summary.

    Resumes from ``<run_dir>/training-state.pt`` when present; only options outside the architecture config may
    differ (e.g. a larger ``total_kimg`` extends training). On CPU the result is bit-identical for the same seed
    and params, with or without interruptions (torch thread count held equal).

    Args:
        cfg: the ``train`` section.
        prepared_dir: directory written by ``ganops prepare`` (train.npz, summary.json).
        seed: global seed (params.yaml ``seed``).
        logger: receives losses every ``log_every_steps``, grids, metrics.
        metric_fn: optional ``G_ema -> {"fid": ..., ...}``, called every ``eval_every_kimg`` and at the end; then
            ``network-snapshot.pt`` is the snapshot with the lowest ``fid``.
        progress: show a tqdm bar in kimg.
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
    augment_policy = parse_policy(cfg.diffaugment)
    eval_on = cfg.eval_every_kimg > 0 and metric_fn is not None
    if cfg.eval_every_kimg > 0 and metric_fn is None:
        log.warning("train.eval_every_kimg=%s but no metric_fn was given: in-training evaluation is off",
                    cfg.eval_every_kimg)
    run_dir = Path(cfg.run_dir)

    # ---- Device, threads, precision ---------------------------------------------------------------------------
    device = resolve_device(cfg.device)
    dist_info, device = ddp.setup(device)  # torchrun: join the group, one device per rank; else a no-op
    ddp.check_batch(cfg.batch_size, dist_info)  # the global batch must split evenly over ranks
    is_main = dist_info.is_main  # only rank 0 writes the run directory and logs
    if not is_main:
        logger, progress = NullLogger(), False
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":  # fixed shapes: cuDNN times its kernels once and keeps the fastest (as StyleGAN2-ADA)
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_precision(cfg.precision, device)
    use_scaler = amp_dtype == torch.float16
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    use_gp = loss.needs_gradient_penalty and cfg.gp_lambda > 0
    # CUDA graph (CUDA only): after GRAPH_WARMUP_STEPS eager steps (cuDNN autotuning, Adam state, allocator) the
    # step is captured once and replayed: one launch per step instead of a few hundred, which is what bounds a
    # small GAN on a GPU. Not for steps whose work varies (lazy R1, augmentation, GP) or needs the host (fp16
    # scaler, DDP). Replays run the captured kernels on the same tensors: the same arithmetic as eager steps.
    # A failed capture stops the run with CudaGraphCaptureError (cuda_graph=false then trains eagerly).
    use_graph = (device.type == "cuda" and cfg.cuda_graph and dist_info.world_size == 1 and not use_gp
                 and cfg.r1_gamma == 0 and not augment_policy and not use_scaler)

    def autocast():
        # A captured graph must not rely on autocast's cache of cast weights (the cache is cleared on exit).
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                              cache_enabled=not use_graph)

    # ---- Data: the whole train split as one uint8 tensor; batches are drawn by seeded random index ------------
    images_np, labels_np = load_split(prepared_dir, "train")
    summary = load_summary(prepared_dir)
    num_images, channels, height, width = images_np.shape
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
    data = torch.from_numpy(images_np).to(device)
    labels = torch.from_numpy(labels_np).to(device)

    # ---- Networks and optimizers ----------------------------------------------------------------------------------
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    G_kwargs = dict(z_dim=cfg.z_dim, ngf=cfg.ngf, resolution=height, channels=channels, num_classes=num_classes)
    D_kwargs = dict(ndf=cfg.ndf, resolution=height, channels=channels, num_classes=num_classes,
                    spectral_norm=cfg.spectral_norm)
    arch_config = dict(arch=cfg.arch, **G_kwargs, ndf=cfg.ndf, conditional=cfg.conditional, loss=cfg.loss,
                       spectral_norm=cfg.spectral_norm, dataset_sha256=summary.get("dataset_sha256"))
    G = build_G(cfg.arch, **G_kwargs).to(device, memory_format=memory_format).train()
    D = build_D(cfg.arch, **D_kwargs).to(device, memory_format=memory_format).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Fused Adam (one kernel for all parameters; CPU and CUDA): ~4x faster optimizer step than the per-tensor loop.
    # capturable: the step count lives on the GPU and is advanced by the kernel, so a CUDA graph can replay it.
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas_g, fused=True, capturable=use_graph)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas_d, fused=True, capturable=use_graph)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    # Decorrelated from the global stream, which draws z, fake labels, augmentations and GP epsilons.
    data_gen = torch.Generator().manual_seed(seed + 0x5EED)
    step, cur_nimg, best_fid, wall_time_s = 0, 0, math.inf, 0.0
    last: dict[str, float] = {}

    # ---- Resume from training-state.pt; an architecture change is refused or restarts (on_config_change) -------
    if is_main:  # a run killed mid-write (SIGKILL) leaves atomic_write's temporary files behind
        for p in remove_stale_temps(run_dir):
            log.info("removed %s, a partial write of an interrupted run", p)
    state_path, stats_path = run_dir / "training-state.pt", run_dir / "stats.jsonl"
    resumed_from_step = None
    state = load_torch(state_path, "cpu") if state_path.is_file() else None
    diffs = arch_mismatch(state["arch_config"], arch_config) if state is not None else []
    if diffs and cfg.on_config_change == "refuse":
        raise ResumeMismatchError(
            f"{state_path} was trained with a different architecture config ({'; '.join(diffs)}). Delete "
            f"{run_dir} to start over (or set train.on_config_change=restart), or restore those params to resume."
        )
    if diffs:
        log.warning("%s was trained with a different architecture config (%s); train.on_config_change=restart: "
                    "discarding its training outputs and training from scratch", state_path, "; ".join(diffs))
        _discard_training_outputs(run_dir)
        state = None
    # Options (everything in train, not only the architecture) that differ from the saved run's.
    changed = changed_options(state["options"], cfg.model_dump(mode="json")) if state is not None else {}
    retrained = describe_changes({k: v for k, v in changed.items() if k not in RESUMABLE_OPTIONS})
    if retrained and cfg.on_config_change == "restart":
        # A changed hyper-parameter (learning rate, betas, EMA, R1, augmentation, batch size...) is another
        # experiment: `dvc exp run -S train.lr_g=...` restores the persisted run dir, and resuming it would silently
        # continue (or, past total_kimg, just return) the previous run. Length, intervals and device may change.
        log.warning("%s was trained with other hyper-parameters (%s); train.on_config_change=restart: "
                    "training from scratch", state_path, "; ".join(retrained))
        _discard_training_outputs(run_dir)
        state = None
    if state is not None:
        if changed:
            log.warning("resuming %s with changed options: %s", run_dir, "; ".join(describe_changes(changed)))
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        for group in (*opt_G.param_groups, *opt_D.param_groups):  # a loaded state brings its run's setting
            group["capturable"] = use_graph
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        step, cur_nimg, best_fid = int(state["step"]), int(state["cur_nimg"]), float(state["best_fid"])
        wall_time_s, last = float(state["wall_time_s"]), dict(state["last_stats"])
        _set_rng_state(state["rng"], data_gen)
        resumed_from_step = step
        if is_main:
            _truncate_stats(stats_path, step)
        log.info("resumed %s at step %d (%.3f kimg)", run_dir, step, cur_nimg / 1000)
    elif is_main:
        _truncate_stats(stats_path, -1)  # stale lines from a run killed before its first checkpoint
    G_train, D_train = ddp.wrap(G, dist_info, device), ddp.wrap(D, dist_info, device)  # after resume: same start
    if is_main:
        write_json(run_dir / "training_options.json", {
        **cfg.model_dump(mode="json"), "seed": seed, "prepared_dir": str(prepared_dir), "device": str(device),
        "autocast_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "num_images": num_images, "G_kwargs": G_kwargs, "D_kwargs": D_kwargs, "arch_config": arch_config,
        "resumed_from_step": resumed_from_step, "torch_num_threads": torch.get_num_threads(),
        "world_size": dist_info.world_size,
    })

    # ---- Fixed inputs for sample grids and the mode-collapse signal (own seeds; the global RNG is untouched) ---
    grid_rows = num_classes or cfg.grid_size
    grid_z = latents(grid_rows * cfg.grid_size, cfg.z_dim, seed).to(device)
    grid_c = torch.arange(num_classes, device=device).repeat_interleave(cfg.grid_size) if num_classes else None
    div_n = min(cfg.mode_collapse_num_images, num_images)
    div_z = latents(div_n, cfg.z_dim, seed + 1).to(device)
    div_c = torch.arange(div_n, device=device) % num_classes if num_classes else None
    div_idx = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:div_n].to(device)
    div_reals = data[div_idx].float() / 127.5 - 1.0

    def snapshot_meta() -> dict[str, Any]:
        return dict(arch=cfg.arch, G_kwargs=G_kwargs, **G_kwargs, kimg=cur_nimg / 1000, step=step, seed=seed,
                    loss=cfg.loss, ema_halflife_kimg=cfg.ema_halflife_kimg, best_fid=best_fid if eval_on else None,
                    dataset_sha256=summary.get("dataset_sha256"), class_names=summary.get("class_names"))

    def write_stats(entry: dict[str, Any]) -> None:
        if not is_main:
            return
        with open(stats_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    # ---- Per-interval actions: sample grid + diversity, evaluation, checkpoint -------------------------------
    def sample_grid() -> None:
        if not is_main:
            return
        with torch.no_grad():
            fakes = torch.cat([G_ema(z, None if grid_c is None else grid_c[i:i + len(z)])
                               for i, z in zip(range(0, len(grid_z), 256), grid_z.split(256))])
            ratio = diversity_ratio(G_ema(div_z, div_c), div_reals)
        path = run_dir / f"fakes{cur_nimg // 1000:06d}.png"
        save_grid(fakes.float(), grid_rows, path)
        save_grid(fakes.float(), grid_rows, run_dir / "fakes-latest.png")
        logger.log_image(path)
        write_stats({"step": step, "kimg": cur_nimg / 1000, "diversity_ratio": ratio})
        logger.log_metrics({"diversity_ratio": ratio}, step=step)
        if ratio < cfg.mode_collapse_threshold:
            log.warning("possible mode collapse at step %d: G_ema/real pairwise-distance ratio %.3f < %.3f",
                        step, ratio, cfg.mode_collapse_threshold)

    def evaluate() -> None:
        nonlocal best_fid
        if not is_main:
            return
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            metrics = {k: float(v) for k, v in metric_fn(G_ema).items()}
        if "fid" not in metrics:
            raise ValueError(f"metric_fn must return a 'fid' key to keep the best snapshot, got {sorted(metrics)}")
        write_stats({"step": step, "kimg": cur_nimg / 1000, **{f"metric/{k}": v for k, v in metrics.items()}})
        logger.log_metrics({f"metric/{k}": v for k, v in metrics.items()}, step=step)
        if metrics["fid"] < best_fid:
            best_fid = metrics["fid"]
            save_snapshot(run_dir / "network-snapshot.pt", G_ema, snapshot_meta())

    def check_finite_weights() -> None:
        # Belt and braces behind the per-step guards: never write a grid, a statistic, a snapshot or a state from
        # broken weights.
        for name, net in (("G", G), ("D", D), ("G_ema", G_ema)):
            if not _all_finite(net):
                raise TrainingDivergedError(f"non-finite weights in {name} after step {step}; last good state kept")

    def checkpoint() -> None:  # callers run check_finite_weights() first
        for net in (G, D, G_ema):
            ddp.broadcast_buffers(net, dist_info)  # every rank holds rank 0's BN statistics, as saved
        if not is_main:
            return
        save_snapshot(run_dir / "network-snapshot-latest.pt", G_ema, snapshot_meta())
        if not eval_on:
            save_snapshot(run_dir / "network-snapshot.pt", G_ema, snapshot_meta())
        save_torch({
            "format": STATE_FORMAT, "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {}, "step": step, "cur_nimg": cur_nimg,
            "best_fid": best_fid, "wall_time_s": wall_time_s + (time.time() - t_start), "last_stats": last,
            "augment": {"policy": ",".join(augment_policy)}, "rng": _rng_state(data_gen),
            "arch_config": arch_config, "options": cfg.model_dump(mode="json"),
        }, state_path)

    def crossed(interval_kimg: float, prev_nimg: int) -> bool:
        every = interval_kimg * 1000
        return interval_kimg > 0 and int(cur_nimg // every) > int(prev_nimg // every)

    # ---- Main loop: one D step then one G step per iteration -----------------------------------------------------
    B = cfg.batch_size
    total_nimg = int(round(cfg.total_kimg * 1000))
    beta = ema_beta(B, cfg.ema_halflife_kimg)
    saved_step = step if resumed_from_step is not None else None
    window_s, window_steps = 0.0, 0
    # initial is capped at total: tqdm drops the total (and fails on the bar format) once n >= total + 0.5.
    pbar = tqdm(total=cfg.total_kimg, initial=min(cur_nimg / 1000, cfg.total_kimg), unit="kimg", disable=not progress,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}]")

    def augment(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, augment_policy) if augment_policy else x

    def train_step(idx: torch.Tensor, with_r1: bool) -> tuple[list[str], torch.Tensor]:
        """One D step then one G step on the real batch ``data[idx]``, plus the G_ema update.

        Returns the step's statistics as names and one float32 device tensor, which the caller reads once: no
        host synchronisation happens in here, so the whole step can be captured as a CUDA graph.
        """
        # D step: real batch by seeded index, fakes from fresh z (with the real batch's labels when conditional).
        # DDP: every rank draws the same global indices / latents and keeps its disjoint shard [rank::world].
        reals = (data[idx].float() / 127.5 - 1.0).contiguous(memory_format=memory_format)
        c_real = labels[idx] if num_classes else None
        z = ddp.shard(torch.randn(B, cfg.z_dim, device=device), dist_info)
        c_fake = c_real  # fake labels follow the data's class frequencies; also lets GP share one label per pair
        D.requires_grad_(True)
        with autocast():
            # One G forward per step (as pytorch/examples dcgan): D sees it detached, the G step below reuses it.
            fakes = G_train(z, c_fake)
            aug_reals, aug_fakes = augment(reals), augment(fakes.detach().float())
            real_logits = D_train(aug_reals, c_real).float()
            fake_logits = D_train(aug_fakes, c_fake).float()
        loss_D = loss.d_loss(real_logits, fake_logits)
        extra: dict[str, torch.Tensor] = {}
        if use_gp:  # penalties in fp32: double backward under autocast is fragile
            extra["gp"] = gradient_penalty(D, aug_reals.float(), aug_fakes.float(), c_real)
            loss_D = loss_D + cfg.gp_lambda * extra["gp"]
        if with_r1:  # lazy R1 (StyleGAN2 sec. 3.1)
            extra["r1"] = r1_penalty(D, aug_reals.float(), c_real)
            loss_D = loss_D + extra["r1"] * (cfg.r1_gamma / 2) * cfg.r1_interval
        opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        scaler.unscale_(opt_D)
        grad_norm_D = _grad_norm(D)
        scaler.step(opt_D)  # fp16: the scaler skips a step whose gradients overflowed

        # G step on the D step's fakes (saves a G forward, ~10% of a step): D frozen so its grads stay untouched.
        D.requires_grad_(False)
        with autocast():  # raw D: no gradient sync for D here, G's gradients are all-reduced by G_train
            gen_logits = D(augment(fakes.float()), c_fake).float()
        loss_G = loss.g_loss(gen_logits)
        opt_G.zero_grad(set_to_none=True)
        scaler.scale(loss_G).backward()
        scaler.unscale_(opt_G)
        grad_norm_G = _grad_norm(G)
        scaler.step(opt_G)
        scaler.update()
        update_ema(G_ema, G, beta)
        named = {"loss_D": loss_D, "loss_G": loss_G, "D_real": real_logits.mean(), "D_fake": fake_logits.mean(),
                 "grad_norm_D": grad_norm_D, "grad_norm_G": grad_norm_G, **extra}
        return list(named), torch.stack([v.detach().float() for v in named.values()])

    graph: torch.cuda.CUDAGraph | None = None
    graph_io: dict[str, Any] = {}
    warm_stream = torch.cuda.Stream() if use_graph else None
    eager_steps = 0

    def run_step(idx: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        nonlocal graph, eager_steps
        if graph is not None:
            graph_io["idx"].copy_(idx)
            graph.replay()
            return graph_io["names"], graph_io["stats"]
        if use_graph and eager_steps >= GRAPH_WARMUP_STEPS:
            graph_io["idx"] = idx.clone()
            torch.cuda.synchronize()
            candidate = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(candidate):
                    graph_io["names"], graph_io["stats"] = train_step(graph_io["idx"], False)
            except RuntimeError as err:
                # No eager fallback: a failed capture can leave the CUDA RNG, allocator and current stream in states
                # that later steps trip over. Capturing runs no kernel, so this step never happened; the run dir
                # holds the last checkpoint.
                raise CudaGraphCaptureError(
                    f"CUDA graph capture of the training step failed in step {step + 1} "
                    f"({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}); set "
                    "train.cuda_graph=false and run again (training resumes from the last checkpoint, eagerly)"
                ) from err
            graph = candidate
            graph.replay()  # capturing ran nothing: this is the step's real execution
            return graph_io["names"], graph_io["stats"]
        eager_steps += 1
        with_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        if warm_stream is None:
            return train_step(idx, with_r1)
        warm_stream.wait_stream(torch.cuda.current_stream())  # warm-up on a side stream, as graph capture asks
        with torch.cuda.stream(warm_stream):
            out = train_step(idx, with_r1)
        torch.cuda.current_stream().wait_stream(warm_stream)
        return out

    while cur_nimg < total_nimg:
        t_step = time.perf_counter()
        idx = ddp.shard(torch.randint(num_images, (B,), generator=data_gen), dist_info).to(device)
        names, stats_t = run_step(idx)
        values = dict(zip(names, stats_t.tolist(), strict=True))  # the step's one host synchronisation
        # Divergence guard, in step order. A bad step has already updated G and D in memory, but nothing of it
        # reaches the disk: the run stops here, before any checkpoint.
        _guard("loss_D", values["loss_D"], step + 1)
        if not (use_scaler and not math.isfinite(values["grad_norm_D"])):  # fp16 overflow: the scaler skipped it
            _guard("grad_norm_D", values["grad_norm_D"], step + 1, cfg.grad_norm_limit)
        _guard("loss_G", values["loss_G"], step + 1)
        if not (use_scaler and not math.isfinite(values["grad_norm_G"])):
            _guard("grad_norm_G", values["grad_norm_G"], step + 1, cfg.grad_norm_limit)

        # Counters.
        prev_nimg = cur_nimg
        cur_nimg += B
        step += 1
        pbar.update((min(cur_nimg, total_nimg) - min(prev_nimg, total_nimg)) / 1000)
        window_s += time.perf_counter() - t_step
        window_steps += 1

        # Logging.
        last = {k: values[k] for k in ("loss_G", "loss_D", "D_real", "D_fake", "grad_norm_D", "grad_norm_G",
                                       "gp", "r1") if k in values}
        done = cur_nimg >= total_nimg
        if step % cfg.log_every_steps == 0 or done:
            sec_per_step = window_s / window_steps
            entry = {"step": step, "kimg": cur_nimg / 1000, **ddp.mean_over_ranks(last, dist_info, device),
                     "sec_per_step": sec_per_step,
                     "images_per_s": B / sec_per_step}
            write_stats(entry)
            logger.log_metrics({k: v for k, v in entry.items() if k != "step"}, step=step)
            window_s, window_steps = 0.0, 0

        # Interval actions (and always at the end), after one weights check so none of them writes from NaN weights.
        do_grid = crossed(cfg.sample_every_kimg, prev_nimg) or done
        do_eval = eval_on and (crossed(cfg.eval_every_kimg, prev_nimg) or done)
        do_checkpoint = crossed(cfg.checkpoint_every_kimg, prev_nimg) or done
        if do_grid or do_eval or do_checkpoint:
            check_finite_weights()
        if do_grid:
            sample_grid()
        if do_eval:
            evaluate()
        if do_checkpoint:
            checkpoint()
            saved_step = step
    pbar.close()

    # ---- Summary ---------------------------------------------------------------------------------------------------
    if saved_step != step:  # e.g. total_kimg reached with no step taken in this call and no state yet
        check_finite_weights()
        checkpoint()
    # DDP: the ranks must end with bit-identical G and D (gradient all-reduce + rank 0's buffers); a mismatch would
    # mean a shard trained a different model than the one saved.
    rank_checksums = ddp.gather_strings(ddp.state_checksum(G.state_dict(), D.state_dict()), dist_info)
    if len(set(rank_checksums)) != 1:
        raise RuntimeError(f"DDP ranks ended with different G/D weights (checksums {rank_checksums}); "
                           "this is a bug in the distributed loop, please report it")
    if not is_main:
        ddp.barrier(dist_info)  # return only once rank 0 has written the summary
        return {}
    snapshot_path = run_dir / "network-snapshot.pt"
    if not snapshot_path.is_file():  # eval on but every FID was NaN: fall back to latest
        save_snapshot(snapshot_path, G_ema, snapshot_meta())
    summary_out = {
        "step": step, "kimg": cur_nimg / 1000, "cur_nimg": cur_nimg,
        "wall_time_s": wall_time_s + (time.time() - t_start),
        "loss_G": last.get("loss_G"), "loss_D": last.get("loss_D"),
        "best_fid": best_fid if eval_on and math.isfinite(best_fid) else None,
        "snapshot": str(snapshot_path), "snapshot_sha256": sha256_file(snapshot_path),
        "snapshot_latest_sha256": sha256_file(run_dir / "network-snapshot-latest.pt"),
        "resumed_from_step": resumed_from_step, "device": str(device), "precision": cfg.precision,
        "cuda_graph": graph is not None, "arch": cfg.arch, "loss": cfg.loss,
        "world_size": dist_info.world_size, "rank_checksums": rank_checksums,
    }
    write_json(run_dir / "train.json", summary_out)
    ddp.barrier(dist_info)
    return summary_out


__all__ = ["CudaGraphCaptureError", "ResumeMismatchError", "TrainingDivergedError", "resolve_device",
           "resolve_precision", "training_loop"]
