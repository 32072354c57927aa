"""Data-parallel training with ``torch.distributed`` (DistributedDataParallel; gloo on CPU, NCCL on CUDA).

Launch (one process per CPU socket share or per GPU; ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*)::

    torchrun --standalone --nproc_per_node=2 -m ganops.cli train -p params.yaml

How the loop uses it (``ganops.training.loop.training_loop`` calls :func:`setup` itself, so a single process
without torchrun's environment is unchanged):

* ``train.batch_size`` stays the **global** batch. Every rank draws the same global batch of indices and the same
  global latents from identically seeded generators and keeps its shard ``[rank::world_size]``
  (``torch.utils.data.DistributedSampler`` semantics: disjoint shards whose union is the global batch). RNG
  streams therefore stay equal across ranks, and the state rank 0 saves resumes every rank exactly.
* G and D are wrapped in DDP for the steps that update them (gradients all-reduced = averaged over ranks); BatchNorm
  buffers follow rank 0 (DDP's ``broadcast_buffers``) and are broadcast again before every checkpoint.
* Rank 0 alone writes the run directory (stats.jsonl, grids, checkpoints, snapshots, train.json) and logs.

Limitations: per-rank DiffAugment / gradient-penalty randomness is drawn from the shared stream, so shards at the
same position get the same augmentation parameters; BatchNorm statistics are per shard (no SyncBatchNorm).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DistributedEnvError(ValueError):
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...) is incomplete or inconsistent."""


_ENV_HINT = ("launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or unset "
             "these variables for a single process")


def env_info() -> DistInfo:
    """Read torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (absent = single process).

    Raises:
        DistributedEnvError: the variables are not integers or are inconsistent (rank outside ``[0, world_size)``).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise DistributedEnvError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {err}; {_ENV_HINT}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedEnvError(f"inconsistent distributed environment: RANK={rank} WORLD_SIZE={world} "
                                  f"LOCAL_RANK={local}; {_ENV_HINT}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def setup(device: torch.device, timeout_s: float = 300.0) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; pick this rank's device.

    Backend: NCCL when ``device`` is CUDA, else gloo. On CUDA each rank uses ``cuda:LOCAL_RANK``. A no-op for a
    single process, and idempotent when the group already exists.

    Returns:
        ``(info, device)`` with ``device`` specialised to this rank.
    Raises:
        DistributedEnvError: bad torchrun environment (e.g. MASTER_ADDR missing).
        ValueError: more local ranks than visible GPUs.
    """
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                             "visible; lower --nproc_per_node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except ValueError as err:  # torch's env:// rendezvous: a variable it needs is missing
            raise DistributedEnvError(f"{err}; {_ENV_HINT}") from None
    return info, device


def teardown() -> None:
    """Leave the process group (no-op when none exists)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, info: DistInfo) -> int:
    """The per-rank batch for global ``batch_size``.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the world size (shards would differ in size).
    """
    if batch_size % info.world_size:
        raise ValueError(f"train.batch_size={batch_size} (the global batch) must be a multiple of the number of "
                         f"processes ({info.world_size}); pick e.g. {info.world_size * max(1, batch_size // info.world_size)}")
    return batch_size // info.world_size


def shard(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's rows ``x[rank::world_size]`` of a global batch (dim 0); ``x`` itself for one process."""
    return x[info.rank::info.world_size] if info.enabled else x


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module``.

    The wrapper is only used for forward passes whose backward must all-reduce gradients; the raw module stays the
    one that is saved, averaged into G_ema and used for penalties.
    """
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, spectral-norm vectors) into every rank."""
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar stats over ranks (a collective: every rank must call it at the same step)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_strings(value: str, info: DistInfo) -> list[str]:
    """Every rank's ``value``, in rank order (a collective; ``[value]`` for one process)."""
    if not info.enabled:
        return [value]
    out: list[str] = [""] * info.world_size
    dist.all_gather_object(out, value)
    return out


def state_checksum(*state_dicts: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and raw bytes of every tensor in ``state_dicts`` (each in its own key order).

    Two ranks holding bit-identical weights (``module.state_dict()``: parameters and buffers) give the same digest.
    """
    h = hashlib.sha256()
    for sd in state_dicts:
        for name, t in sd.items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
