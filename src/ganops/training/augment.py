"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transforms are applied to real and fake images before D (each call draws fresh
parameters per image), so gradients flow through them to G. Images are float (N, C, H, W) in [-1, 1]; outputs
keep shape and dtype. Randomness comes from ``generator`` when given, else from the global torch RNG (which the
training loop seeds and checkpoints).

Policies: ``translation`` (shift by up to 1/8 of the size, zero fill), ``cutout`` (one zeroed square of half the
size), ``color`` (brightness for every image; saturation and contrast only for 3-channel images).
"""

from __future__ import annotations

import math

import torch

POLICIES = ("translation", "cutout", "color")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color, translation"`` -> ``("color", "translation")``.

    Raises:
        ValueError: an unknown name (message lists the valid ones).
    """
    names = tuple(n.strip() for n in policy.split(",") if n.strip())
    bad = [n for n in names if n not in POLICIES]
    if bad:
        raise ValueError(f"unknown DiffAugment policy {bad}; valid: {', '.join(POLICIES)}")
    return names


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness shift U[-0.5, 0.5); for C=3 also saturation x U[0, 2) and contrast x U[0.5, 1.5)."""
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    if x.shape[1] == 3:
        mean_c = x.mean(dim=1, keepdim=True)
        x = (x - mean_c) * (_rand(n, x, generator) * 2.0) + mean_c
        mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean_all) * (_rand(n, x, generator) + 0.5) + mean_all
    return x


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by integers in [-s, s] per axis (s = round(size * ratio)); vacated pixels become 0."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device, generator=generator)
    # Output pixel (i, j) reads padded input (i + sy - dy, j + sx - dx): content moves by (+dy, +dx).
    gy = (torch.arange(h, device=x.device)[None, :, None] + sy - dy).expand(n, h, w)
    gx = (torch.arange(w, device=x.device)[None, None, :] + sx - dx).expand(n, h, w)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy)).permute(0, 2, 3, 1)  # (N, H+2sy, W+2sx, C)
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
    return padded[batch, gy, gx].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one (round(H * ratio), round(W * ratio)) rectangle per image, centred uniformly (clipped at borders)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - (cy - ch // 2)) >= 0) & ((ys - (cy - ch // 2)) < ch) & ((xs - (cx - cw // 2)) >= 0) & (
        (xs - (cx - cw // 2)) < cw
    )
    return x * (~inside).to(x.dtype)[:, None]


_FNS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated ``policy`` in the order color -> translation -> cutout (as the reference code).

    Args:
        x: float (N, C, H, W) in [-1, 1] (may require grad).
        policy: e.g. ``"translation,cutout,color"``; empty = identity.
        generator: optional torch.Generator (global RNG otherwise).
    Raises:
        ValueError: unknown policy name.
    """
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in POLICIES:
        if name in names:
            x = _FNS[name](x, generator=generator)
    return x


class AdaptiveAugment:
    """Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks with
    Limited Data", sec. 3; reference: stylegan2-ada-pytorch ``training_loop``, ``ada_target`` / ``ada_kimg``).

    Every op of ``policy`` (the DiffAugment ops above) is applied to each image with probability ``p``, to real and
    fake images alike, before D. ``p`` follows the overfitting heuristic ``r_t = E[sign(D(x_real))]``: every
    ``interval`` D steps, ``p += sign(r_t - target) * (batch_size * interval) / (speed_kimg * 1000)``, clipped to
    [0, 1]; so p rises when D is too sure of the reals (r_t > target) and falls otherwise.

    ``state_dict()`` / ``load_state_dict()`` hold p and the running sums, so a resumed run continues exactly.

    Args:
        policy: op names (see ``POLICIES``); empty = ADA off (``p`` stays 0).
        target: r_t target (0.6 in the paper). speed_kimg: images, in kimg, for p to move from 0 to 1 (ADA: 500;
            later configs 100). interval: D steps between updates (ADA: 4). p: initial probability in [0, 1].
    Raises:
        ValueError: unknown op names, ``target`` outside (0, 1), ``speed_kimg <= 0``, ``interval < 1``, p outside
            [0, 1].
    """

    def __init__(self, policy: str | tuple[str, ...], *, target: float = 0.6, speed_kimg: float = 100.0,
                 interval: int = 4, p: float = 0.0):
        self.policy = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
        if not 0.0 < target < 1.0 or speed_kimg <= 0 or interval < 1 or not 0.0 <= p <= 1.0:
            raise ValueError(f"ADA needs 0 < target < 1, speed_kimg > 0, interval >= 1 and 0 <= p <= 1; got "
                             f"target={target}, speed_kimg={speed_kimg}, interval={interval}, p={p}")
        self.target, self.speed_kimg, self.interval = target, speed_kimg, interval
        self.p = float(p)
        self._sign_sum: torch.Tensor | None = None  # sum of sign(D(real)) since the last update (device tensor)
        self._count = 0  # real logits summed since the last update
        self._steps = 0  # D steps since the last update
        self.last_rt: float | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment float (N, C, H, W) images in [-1, 1]: each op applied per image with probability p (the ops
        are differentiable, so G's gradient passes through them)."""
        if not self.policy or self.p <= 0.0:
            return x
        for name in POLICIES:
            if name in self.policy:
                apply = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=generator) < self.p
                x = torch.where(apply, _FNS[name](x, generator=generator), x)
        return x

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add one D step's raw logits on the real batch, float (N,), to the r_t estimate (no host sync)."""
        if not self.policy:
            return
        s = real_logits.detach().sign().sum()
        self._sign_sum = s if self._sign_sum is None else self._sign_sum + s
        self._count += real_logits.numel()
        self._steps += 1

    def update(self, batch_size: int) -> bool:
        """After a D step: every ``interval`` steps move p from the accumulated r_t (reads the device once; under
        ``torch.distributed`` the sums of every rank are added first, so all ranks keep the same p).
        Returns True when p was updated."""
        if not self.policy or self._steps < self.interval:
            return False
        sums = torch.stack([self._sign_sum.double().reshape(()),
                            torch.tensor(float(self._count), dtype=torch.float64, device=self._sign_sum.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        sign_sum, count = sums.tolist()
        rt = sign_sum / max(count, 1.0)
        adjust = (1.0 if rt > self.target else -1.0 if rt < self.target else 0.0)
        self.p = min(max(self.p + adjust * batch_size * self._steps / (self.speed_kimg * 1000.0), 0.0), 1.0)
        self.last_rt = rt
        self._sign_sum, self._count, self._steps = None, 0, 0
        return True

    def state_dict(self) -> dict:
        return {"p": self.p, "sign_sum": float(self._sign_sum) if self._sign_sum is not None else 0.0,
                "count": self._count, "steps": self._steps, "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: a malformed state (a field missing or of the wrong type, p outside [0, 1] or not finite,
                negative counts, r_t outside [-1, 1]); nothing is changed then.
        """
        try:
            p, count, steps = float(state["p"]), int(state["count"]), int(state["steps"])
            sign_sum = float(state["sign_sum"])
            last_rt = None if state["last_rt"] is None else float(state["last_rt"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"invalid ADA state {state!r:.200}: {type(err).__name__}: {err}") from None
        ok = (math.isfinite(p) and 0.0 <= p <= 1.0 and count >= 0 and steps >= 0 and math.isfinite(sign_sum)
              and abs(sign_sum) <= count and (last_rt is None or -1.0 <= last_rt <= 1.0))
        if not ok:
            raise ValueError(f"invalid ADA state (p={p}, sign_sum={sign_sum}, count={count}, steps={steps}, "
                             f"last_rt={last_rt}): p must lie in [0, 1], counts be >= 0 and |sign_sum| <= count")
        self.p, self._count, self._steps, self.last_rt = p, count, steps, last_rt
        self._sign_sum = torch.tensor(sign_sum) if steps else None


__all__ = ["POLICIES", "AdaptiveAugment", "color", "cutout", "diff_augment", "parse_policy", "translation"]
