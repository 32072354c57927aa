"""Where the training step's real batches come from: a device-resident copy of the train split, or rows streamed
from its ``.npy`` file, behind one ``gather(idx)`` so the step has no branch for it.

Both return the same pixels for the same indices, so a run trains bit-identically either way; only memory and
speed differ. Resident (``train.resident_data_mb`` at or above the split's size): one uint8 tensor on the device,
indexed on the device, CUDA-graph capturable. Streamed: each batch is read from disk on the host with
:class:`ganops.data.npy.RowReader` (memory flat in the dataset size), then copied to the device; the step then runs
eagerly (a graph cannot read the host).
"""

from __future__ import annotations

import numpy as np
import torch

from ganops.data.npy import RowReader

BYTES_PER_MB = 1e6


class ResidentData:
    """The train split on ``device``: images uint8 (N, C, H, W), labels int64 (N,)."""

    streamed = False

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        # np.array: one host copy of the (read-only, memory-mapped) split; on CPU it is the resident tensor itself.
        self.images = torch.from_numpy(np.array(images)).to(device)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
        self.shape, self.device = tuple(self.images.shape), device

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` int64 (B,) on the device -> (uint8 (B, C, H, W), int64 (B,)) on the device."""
        return self.images[idx], self.labels[idx]


class StreamedData:
    """The train split read batch by batch from disk: ``images`` as :func:`ganops.data.dataset.load_split` maps it,
    ``labels`` int64 (N,) (in memory: 8 bytes per image)."""

    streamed = True

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        # An old in-memory .npz split has no file to read rows from: index it in memory.
        self._rows = RowReader(images) if isinstance(images, np.memmap) else images.__getitem__
        self.labels = np.asarray(labels, dtype=np.int64)
        self.shape, self.device = tuple(images.shape), device

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` int64 (B,) on any device -> (uint8 (B, C, H, W), int64 (B,)) on the device (a host sync)."""
        i = idx.cpu().numpy()
        images = torch.from_numpy(self._rows(i)).to(self.device)
        return images, torch.from_numpy(self.labels[i]).to(self.device)


def train_data(images: np.ndarray, labels: np.ndarray, device: torch.device,
               resident_data_mb: float) -> ResidentData | StreamedData:
    """Resident when the images' size in MB (10^6 bytes) is at most ``resident_data_mb``, else streamed."""
    if is_streamed(images, resident_data_mb):
        return StreamedData(images, labels, device)
    return ResidentData(images, labels, device)


def is_streamed(images: np.ndarray, resident_data_mb: float) -> bool:
    """Whether a train split of ``images`` (its ``nbytes``) is streamed under ``train.resident_data_mb``."""
    return images.nbytes > resident_data_mb * BYTES_PER_MB


__all__ = ["ResidentData", "StreamedData", "is_streamed", "train_data"]
