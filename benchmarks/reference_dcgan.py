"""The baseline training loop the benchmarks compare ganops against.

Written in the style of PyTorch's official DCGAN example (pytorch/examples ``dcgan/main.py``), adapted to 28x28x1
so that the networks are ganops' architecture: the example's ``Generator`` / ``Discriminator`` classes (an
``nn.Sequential`` of stock ``ConvTranspose2d`` / ``Conv2d`` / ``BatchNorm2d`` layers, the D ending in a conv to one
logit and a ``Sigmoid``) with ganops' layer sizes and biases, started from the very weights ``build_G("dcgan")`` /
``build_D("dcgan")`` draw for the seed (DCGAN init); the outputs equal ganops' to float rounding (unit test). With:

- a ``torch.utils.data.Dataset`` whose ``__getitem__`` does per-image Python work as torchvision's
  ``FashionMNIST`` + ``ToTensor()`` + ``Normalize((0.5,), (0.5,))`` do (uint8 array -> PIL image -> float tensor
  in [0, 1] -> (x - 0.5) / 0.5), batched by a ``DataLoader(shuffle=True, drop_last=True)`` with ``num_workers``;
- ``nn.BCELoss`` on the D's sigmoid output with real label 1 / fake label 0, ``Adam(lr=2e-4, betas=(0.5, 0.999))``;
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
from ganops.models.layers import resolution_plan


class Generator(nn.Module):
    """pytorch/examples' DCGAN ``Generator`` with ganops' sizes: z (N, nz) -> (N, nc, res, res) in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 1, res: int = 28):
        super().__init__()
        base, n = resolution_plan(res)
        width = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, width, base, 1, 0, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        self.main = nn.Sequential(*layers, nn.ConvTranspose2d(width, nc, 4, 2, 1), nn.Tanh())
        self.z_dim = nz  # what ganops' samplers (training.sampling.iter_samples) read

    def forward(self, z: torch.Tensor, c: None = None) -> torch.Tensor:
        if c is not None:
            raise ValueError("the example Generator is unconditional; pass no class labels")
        return self.main(z[:, :, None, None])


class Discriminator(nn.Module):
    """pytorch/examples' DCGAN ``Discriminator`` with ganops' sizes: (N, nc, res, res) -> (N,) probabilities."""

    def __init__(self, ndf: int = 64, nc: int = 1, res: int = 28):
        super().__init__()
        base, n = resolution_plan(res)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        self.main = nn.Sequential(*layers, nn.Conv2d(width, 1, base, 1, 0), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def example_networks(G: nn.Module, D: nn.Module) -> tuple[Generator, Discriminator]:
    """The example-style pair holding the weights (and BN buffers) of ganops' unconditional DCGAN ``G`` and ``D``.

    Raises:
        ValueError: a conditional pair or a spectrally normalised D (the example has neither).
    """
    if G.num_classes or D.num_classes or any("parametrizations" in k for k in D.state_dict()):
        raise ValueError("the pytorch/examples networks hold an unconditional DCGAN without spectral norm; build G "
                         "and D with num_classes=0 and spectral_norm=False")
    ngf = G.net[0].out_channels >> (resolution_plan(G.resolution)[1] - 1)  # first width = ngf * 2**(n - 1)
    G_ref = Generator(G.z_dim, ngf, G.channels, G.resolution)
    G_ref.main.load_state_dict({k.removeprefix("net."): v for k, v in G.state_dict().items()})
    D_ref = Discriminator(D.features[0].out_channels, D.channels, D.resolution)
    state = {k.removeprefix("features."): v for k, v in D.state_dict().items() if k.startswith("features.")}
    head = D_ref.main[-2]
    state[f"{len(D_ref.main) - 2}.weight"] = D.head.linear.weight.detach().view_as(head.weight)
    state[f"{len(D_ref.main) - 2}.bias"] = D.head.linear.bias.detach()
    D_ref.main.load_state_dict(state)
    return G_ref, D_ref


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
                    z_dim: int = 100, ngf: int = 64, ndf: int = 64, device: str | torch.device = "cpu",
                    on_step: Callable[[int, float], None] | None = None,
                    stop_fn: Callable[[int, nn.Module], bool] | None = None) -> tuple[nn.Module, dict]:
    """Train the DCGAN pair for ``steps`` iterations the pytorch/examples way; return ``(G, stats)``.

    Args:
        images: uint8 (N, 1, H, W) training images, N >= batch_size.
        steps: iterations (one D step and one G step each); the loader restarts its epoch as needed.
        device: "cpu" or "cuda"; on CUDA, as the example: ``cudnn.benchmark = True``, each batch copied with
            ``.to(device)``, labels and noise made on the device (the per-step ``.item()`` synchronises).
        on_step: called as ``on_step(step, seconds)`` after every iteration (seconds include waiting for data).
        stop_fn: called as ``stop_fn(steps_done, G)`` after every iteration; a true result ends training there
            (the time-to-quality benchmark keeps G at wall-clock points with it).
    Returns:
        G in train mode and ``{"sec_per_step": [...], "loss_D": float, "loss_G": float}``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)
    res = images.shape[-1]
    G, D = example_networks(build_G("dcgan", z_dim=z_dim, ngf=ngf, resolution=res, channels=1, num_classes=0),
                            build_D("dcgan", ndf=ndf, resolution=res, channels=1, num_classes=0))
    G, D = G.to(device).train(), D.to(device).train()
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
            real = real.to(device)
            label = torch.full((batch_size,), real_label, device=device)
            err_D_real = criterion(D(real), label)
            err_D_real.backward()
            noise = torch.randn(batch_size, z_dim, device=device)
            fake = G(noise)
            label.fill_(fake_label)
            err_D_fake = criterion(D(fake.detach()), label)
            err_D_fake.backward()
            opt_D.step()
            # (2) Update G: maximize log(D(G(z)))
            G.zero_grad()
            label.fill_(real_label)
            err_G_t = criterion(D(fake), label)
            err_G_t.backward()
            opt_G.step()
            err_D, err_G = (err_D_real + err_D_fake).item(), err_G_t.item()
            seconds.append(time.perf_counter() - t)
            if on_step:
                on_step(step, seconds[-1])
            step += 1
            if step >= steps or (stop_fn is not None and stop_fn(step, G)):
                steps = step  # ends the outer loop too
                break
            t = time.perf_counter()
    return G, {"sec_per_step": seconds, "loss_D": err_D, "loss_G": err_G}
