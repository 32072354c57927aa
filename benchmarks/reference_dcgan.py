"""The baseline training loop the benchmarks compare ganops against.

Written in the style of PyTorch's official DCGAN example (pytorch/examples ``dcgan/main.py``), adapted to 28x28x1
so that the networks are exactly ganops' (``build_G("dcgan")`` / ``build_D("dcgan")``, same DCGAN init), with:

- a ``torch.utils.data.Dataset`` whose ``__getitem__`` does per-image Python work as torchvision's
  ``FashionMNIST`` + ``ToTensor()`` + ``Normalize((0.5,), (0.5,))`` do (uint8 array -> PIL image -> float tensor
  in [0, 1] -> (x - 0.5) / 0.5), batched by a ``DataLoader(shuffle=True, drop_last=True)`` with ``num_workers``;
- ``nn.BCELoss`` on ``sigmoid(D(x))`` with real label 1 / fake label 0, ``Adam(lr=2e-4, betas=(0.5, 0.999))``;
- per iteration: D on reals (backward), G(z) -> D(fake.detach()) (backward), D step; then D(fake) with label 1
  (backward through D and G), G step; ``.item()`` on the losses each step as the example prints them.

Only torchvision is left out (the project never installs it); its two transforms are reproduced per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ganops.models import build_D, build_G


class ImageArrayDataset(torch.utils.data.Dataset):
    """uint8 (N, 1, H, W) images -> float32 (1, H, W) in [-1, 1], one PIL round trip per image (torchvision style)."""

    def __init__(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"need uint8 (N, 1, H, W) images, got {images.dtype} {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i, 0], mode="L")  # as torchvision.datasets.FashionMNIST.__getitem__
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).unsqueeze(0).float().div(255)  # ToTensor
        return (x - 0.5) / 0.5, 0  # Normalize((0.5,), (0.5,))


def reference_train(images: np.ndarray, *, steps: int, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                    z_dim: int = 100, ngf: int = 64, ndf: int = 64,
                    on_step: Callable[[int, float], None] | None = None) -> tuple[nn.Module, dict]:
    """Train the DCGAN pair for ``steps`` iterations the pytorch/examples way; return ``(G, stats)``.

    Args:
        images: uint8 (N, 1, H, W) training images, N >= batch_size.
        steps: iterations (one D step and one G step each); the loader restarts its epoch as needed.
        on_step: called as ``on_step(step, seconds)`` after every iteration (seconds include waiting for data).
    Returns:
        G in train mode and ``{"sec_per_step": [...], "loss_D": float, "loss_G": float}``.
    """
    torch.manual_seed(seed)
    res = images.shape[-1]
    G = build_G("dcgan", z_dim=z_dim, ngf=ngf, resolution=res, channels=1, num_classes=0).train()
    D = build_D("dcgan", ndf=ndf, resolution=res, channels=1, num_classes=0).train()
    criterion = nn.BCELoss()
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(ImageArrayDataset(images), batch_size=batch_size, shuffle=True,
                                         num_workers=num_workers, drop_last=True,
                                         persistent_workers=num_workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    real_label, fake_label = 1.0, 0.0
    seconds: list[float] = []
    step, err_D, err_G = 0, float("nan"), float("nan")
    while step < steps:
        t = time.perf_counter()
        for real, _ in loader:
            # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
            D.zero_grad()
            label = torch.full((batch_size,), real_label)
            err_D_real = criterion(torch.sigmoid(D(real)).view(-1), label)
            err_D_real.backward()
            noise = torch.randn(batch_size, z_dim)
            fake = G(noise)
            label.fill_(fake_label)
            err_D_fake = criterion(torch.sigmoid(D(fake.detach())).view(-1), label)
            err_D_fake.backward()
            opt_D.step()
            # (2) Update G: maximize log(D(G(z)))
            G.zero_grad()
            label.fill_(real_label)
            err_G_t = criterion(torch.sigmoid(D(fake)).view(-1), label)
            err_G_t.backward()
            opt_G.step()
            err_D, err_G = (err_D_real + err_D_fake).item(), err_G_t.item()
            seconds.append(time.perf_counter() - t)
            if on_step:
                on_step(step, seconds[-1])
            step += 1
            if step >= steps:
                break
            t = time.perf_counter()
    return G, {"sec_per_step": seconds, "loss_D": err_D, "loss_G": err_G}
