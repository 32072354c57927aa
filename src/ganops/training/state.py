"""Training state: everything a run needs to continue bit-exactly, and the resume decision.

``training-state.pt`` holds G, D, G_ema, both optimizers, the grad scaler, the step and image counters, the best
FID, the ADA state, every RNG state (torch, CUDA, numpy, Python, the data-index generator), the architecture config
and the options the run was trained with. :func:`resume_state` decides what happens when a run directory already
holds one (continue, restart, or refuse); :func:`save_state` and :func:`load_state` write and apply it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganops.config import TrainConfig
from ganops.io import atomic_write
from ganops.rundir import RunDir
from ganops.training.snapshot import (
    CorruptCheckpointError,
    ResumeMismatchError,
    arch_mismatch,
    changed_options,
    describe_changes,
    load_torch,
    save_torch,
)

log = logging.getLogger(__name__)

STATE_FORMAT = 1

# Options a run may resume with when they change (train.on_config_change=restart restarts on any other change):
# its length, logging / sampling / checkpoint / evaluation intervals, where and how fast it runs, and the policy.
RESUMABLE_OPTIONS = frozenset({
    "total_kimg", "log_every_steps", "sample_every_kimg", "checkpoint_every_kimg", "eval_every_kimg",
    "eval_num_samples", "grid_size", "device", "num_threads", "precision", "channels_last",
    "cuda_graph", "run_dir", "on_config_change", "mode_collapse_threshold", "mode_collapse_num_images",
    "grad_norm_limit", "resident_data_mb",
})


def rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    """Every RNG state as tensors and Python scalars only, so it loads with ``torch.load(weights_only=True)``."""
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


def set_rng_state(state: dict[str, Any], data_gen: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    pyst = state["python"]
    random.setstate((pyst["version"], tuple(int(v) for v in pyst["state"].tolist()), pyst["gauss"]))
    data_gen.set_state(state["data"].cpu())


def truncate_stats(path: Path, keep_through_step: int) -> None:
    """Drop stats.jsonl lines after ``keep_through_step`` (written after the checkpoint a run resumes from) and
    lines torn by a kill."""
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


def resume_state(run_dir: Path, cfg: TrainConfig, arch_config: dict[str, Any]) -> dict[str, Any] | None:
    """The training state to continue from, or None to start from scratch.

    A state made with another architecture config is refused (``on_config_change=refuse``) or its run's outputs
    are deleted (``restart``); with ``restart`` a changed training hyper-parameter (anything outside
    ``RESUMABLE_OPTIONS``) also restarts, since `dvc exp run -S train.lr_g=...` is another experiment.

    Raises:
        ResumeMismatchError: another architecture config and ``on_config_change=refuse``.
        CorruptCheckpointError, UnsafeCheckpointError: the state file cannot be read safely.
    """
    state_path = RunDir(run_dir).state
    state = load_torch(state_path, "cpu") if state_path.is_file() else None
    if state is None:
        return None
    diffs = arch_mismatch(state["arch_config"], arch_config)
    if diffs and cfg.on_config_change == "refuse":
        raise ResumeMismatchError(
            f"{state_path} was trained with a different architecture config ({'; '.join(diffs)}). Delete "
            f"{run_dir} to start over (or set train.on_config_change=restart), or restore those params to resume."
        )
    if diffs:
        log.warning("%s was trained with a different architecture config (%s); train.on_config_change=restart: "
                    "discarding its training outputs and training from scratch", state_path, "; ".join(diffs))
        RunDir(run_dir).discard_training_outputs()
        return None
    changed = changed_options(state["options"], cfg.model_dump(mode="json"))
    retrained = describe_changes({k: v for k, v in changed.items() if k not in RESUMABLE_OPTIONS})
    if retrained and cfg.on_config_change == "restart":
        log.warning("%s was trained with other hyper-parameters (%s); train.on_config_change=restart: "
                    "training from scratch", state_path, "; ".join(retrained))
        RunDir(run_dir).discard_training_outputs()
        return None
    if changed:
        log.warning("resuming %s with changed options: %s", run_dir, "; ".join(describe_changes(changed)))
    return state


def save_state(path: Path, *, nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer], scaler,
               use_scaler: bool, counters: dict[str, Any], ada, policy: tuple[str, ...], data_gen: torch.Generator,
               arch_config: dict[str, Any], cfg: TrainConfig) -> None:
    """Write ``training-state.pt`` atomically. ``counters``: step, cur_nimg, best_fid, wall_time_s, last_stats."""
    save_torch({
        "format": STATE_FORMAT, **{k: net.state_dict() for k, net in nets.items()},
        **{k: opt.state_dict() for k, opt in opts.items()},
        "scaler": scaler.state_dict() if use_scaler else {}, **counters,
        "augment": {"policy": ",".join(policy), "ada": ada.state_dict() if ada is not None else {}},
        "rng": rng_state(data_gen), "arch_config": arch_config, "options": cfg.model_dump(mode="json"),
    }, path)


def load_state(state: dict[str, Any], *, nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer],
               scaler, ada, data_gen: torch.Generator, capturable: bool) -> dict[str, Any]:
    """Apply a saved state to the networks, optimizers, scaler, ADA and RNGs; return its counters."""
    for k, net in nets.items():
        net.load_state_dict(state[k])
    for k, opt in opts.items():
        opt.load_state_dict(state[k])
        for group in opt.param_groups:  # a loaded state brings its run's setting
            group["capturable"] = capturable
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if ada is not None and state.get("augment", {}).get("ada"):
        try:
            ada.load_state_dict(state["augment"]["ada"])
        except ValueError as err:
            raise CorruptCheckpointError(f"{RunDir.STATE}: {err}; delete the run directory to start over, or "
                                         "restore the file from the DVC cache (dvc checkout)") from None
    set_rng_state(state["rng"], data_gen)
    return {"step": int(state["step"]), "cur_nimg": int(state["cur_nimg"]), "best_fid": float(state["best_fid"]),
            "wall_time_s": float(state["wall_time_s"]), "last_stats": dict(state["last_stats"])}


__all__ = ["RESUMABLE_OPTIONS", "STATE_FORMAT", "ResumeMismatchError",
           "load_state", "resume_state", "rng_state", "save_state", "set_rng_state",
           "truncate_stats"]
