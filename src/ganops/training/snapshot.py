"""Network snapshot (G_ema + how to rebuild it; for evaluation and the registry) and training state (for resume).

Both are plain ``torch.save`` dicts of tensors and Python scalars/containers, written atomically and loadable with
``torch.load(weights_only=True)`` (no pickled classes): the architecture is rebuilt from ``arch`` + ``G_kwargs``
through :func:`ganops.models.build_G`.

Snapshot layout: ``{"format": 1, "G_ema": state_dict, "metadata": {arch, z_dim, resolution, channels, num_classes,
kimg, step, G_kwargs, ...}}``.
"""

from __future__ import annotations

import errno
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganops.io import atomic_write
from ganops.models import build_G

SNAPSHOT_FORMAT = 1


class TrainingDivergedError(RuntimeError):
    """A loss became NaN/inf or a gradient norm exceeded ``train.grad_norm_limit``; nothing from that step was
    saved, the last good ``training-state.pt`` / snapshots in the run directory are intact."""


class ResumeMismatchError(ValueError):
    """``training-state.pt`` in the run directory was made with a different architecture config."""


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint holds pickled Python objects other than tensors and plain containers (e.g. a class or a
    function such as ``os.system``); it was refused by ``torch.load(weights_only=True)`` without running any of it."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is empty, truncated or not a ``torch.save`` file at all."""


def _weights_only_reason(err: Exception) -> str:
    """The line of torch's weights-only error that names the refused object (torch's text also suggests
    ``weights_only=False``, which is exactly what a user must not do with a file of unknown origin)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln]
    reason = (named or lines[-1:] or [type(err).__name__])[0]
    return reason.split(". Please")[0].rstrip(".")


def load_torch(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` mapped to ``device``: tensors, numbers, strings and plain
    containers only; no pickled class or function is ever imported or called.

    Raises:
        FileNotFoundError: ``path`` does not exist (message says how it is produced).
        UnsafeCheckpointError: the file holds other pickled objects (nothing of it was executed).
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `ganops train` to produce it")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _names_a_global(err):  # not a refused object, just bytes that are no pickle at all
            raise _corrupt(path, err) from None
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it holds pickled Python objects, not only tensors and plain containers "
            f"(Weights only load failed: {_weights_only_reason(err)}). ganops loads checkpoints with "
            "torch.load(weights_only=True) and never unpickles code: use snapshots written by `ganops train`, and "
            "do not load this file with weights_only=False unless you trust where it came from"
        ) from None
    except (EOFError, KeyError, RuntimeError, zipfile.BadZipFile, ValueError) as err:
        raise _corrupt(path, err) from None
    except OSError as err:
        if err.errno != errno.EINVAL:  # torch's zip reader on a truncated archive; other OS errors are real ones
            raise
        raise _corrupt(path, err) from None


def _names_a_global(err: Exception) -> bool:
    """True when torch refused a pickled class/function (``GLOBAL module.name``), not malformed bytes."""
    text = str(err)
    return "GLOBAL" in text or "global" in text


def _corrupt(path: Path, err: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path} is not a readable torch checkpoint ({type(err).__name__}: {_weights_only_reason(err)[:200] if str(err).strip() else 'no data'})"
        ": it is empty, truncated or another kind of file: replace it with one written by `ganops train` (or delete "
        "a broken training-state.pt to train from scratch)")


def save_snapshot(path: str | Path, G_ema: nn.Module, metadata: dict[str, Any]) -> None:
    """Write G_ema's state_dict + ``metadata`` (must hold ``arch`` and ``G_kwargs``) atomically to ``path``."""
    missing = {"arch", "G_kwargs", "z_dim", "resolution", "channels", "num_classes", "kimg", "step"} - set(metadata)
    if missing:
        raise ValueError(f"snapshot metadata lacks {sorted(missing)}")
    state = {k: v.detach().cpu() for k, v in G_ema.state_dict().items()}
    save_torch({"format": SNAPSHOT_FORMAT, "G_ema": state, "metadata": metadata}, path)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild G_ema from a ``network-snapshot*.pt`` file.

    Returns:
        (G_ema in eval mode with ``requires_grad=False``, on ``device``; the metadata dict with at least ``arch,
        z_dim, resolution, channels, num_classes (0 = unconditional), kimg, step, G_kwargs``).
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ganops snapshot (wrong keys or format version).
    """
    blob = load_torch(path, device)
    if not isinstance(blob, dict) or blob.get("format") != SNAPSHOT_FORMAT or "G_ema" not in blob:
        raise ValueError(f"{path} is not a ganops network snapshot (format {SNAPSHOT_FORMAT}); re-export it")
    meta = dict(blob["metadata"])
    G = build_G(meta["arch"], **meta["G_kwargs"])
    G.load_state_dict(blob["G_ema"])
    G.to(device).eval().requires_grad_(False)
    return G, meta


def changed_options(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for every key whose value differs (a missing key reads as None)."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> list[str]:
    """``changed_options`` output as ``"key: saved -> current"`` strings, for messages."""
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()]


def arch_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of the architecture config whose values differ, as ``"key: saved -> current"`` strings."""
    return describe_changes(changed_options(saved, current))


__all__ = [
    "CorruptCheckpointError",
    "ResumeMismatchError",
    "TrainingDivergedError",
    "UnsafeCheckpointError",
    "arch_mismatch",
    "changed_options",
    "describe_changes",
    "load_generator",
    "load_torch",
    "save_snapshot",
    "save_torch",
]
