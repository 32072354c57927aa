"""Screening proxy FID: a Fréchet distance in a small Fashion-MNIST classifier's feature space, in seconds per snapshot.

Ranks recipes where an Inception FID-10k costs an hour of CPU. Not comparable with Inception FIDs (benchmarks/README.md,
"Tried, not kept", gives two calibration points). The classifier (2 conv + 1 hidden layer of 128, ReLU) is trained for
2 epochs of Adam(1e-3), batch 128, on the prepared train split (seed 0) and cached; the proxy is the Fréchet distance
(``ganops.metrics.fid``) between its 128-d hidden features of ``--num-samples`` G_ema samples (latents
``torch.randn(500, z_dim)`` per batch from one generator seeded ``--seed``) and of the whole prepared test split.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/proxy_fid.py benchmarks/ttq_long/lr1e3/t0*.pt

Prints one JSON object: ``{snapshot path: {"kimg": float, "proxy_fid": float}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 500


class Classifier(nn.Module):
    """uint8-derived images (B, 1, 28, 28) float32 in [-1, 1] -> logits (B, 10); ``features`` gives (B, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_float(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 0..255 (array or tensor) -> float32 in [-1, 1], as the classifier was trained."""
    return torch.as_tensor(np.ascontiguousarray(images_u8)).float() / 127.5 - 1


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = 2, seed: int = 0) -> Classifier:
    """Train :class:`Classifier` on uint8 (N, 1, 28, 28) images and int labels (N,) in 0..9; returns it in eval mode."""
    torch.manual_seed(seed)
    clf = Classifier()
    opt = torch.optim.Adam(clf.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=gen).numpy()
        for i in range(0, len(images), 128):
            j = perm[i:i + 128]
            loss = F.cross_entropy(clf(_to_float(images[j])), torch.from_numpy(labels[j]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def features(clf: Classifier, images: torch.Tensor) -> np.ndarray:
    """float64 (N, 128) hidden features of uint8 images (N, 1, 28, 28) in 0..255; ValueError for another dtype."""
    if images.dtype != torch.uint8:
        raise ValueError(f"features() takes uint8 images in 0..255, got {images.dtype}")
    out = [clf.features(_to_float(images[i:i + BATCH])).numpy() for i in range(0, len(images), BATCH)]
    return np.concatenate(out).astype(np.float64)


@torch.no_grad()
def generated_uint8(G: nn.Module, num_samples: int, seed: int) -> torch.Tensor:
    """uint8 (num_samples, C, H, W) samples of an unconditional G, rounded from [-1, 1] as the pipeline stores
    images."""
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(0, num_samples, BATCH):
        x = G(torch.randn(BATCH, G.z_dim, generator=gen))
        xs.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(xs)[:num_samples]


def proxy_fid(clf: Classifier, G: nn.Module, real_features: np.ndarray, num_samples: int = 5000,
              seed: int = 123) -> float:
    """Fréchet distance between the classifier features of ``num_samples`` samples of G and ``real_features``."""
    from ganops.metrics.fid import frechet_distance, stats_from_features

    fake = stats_from_features(features(clf, generated_uint8(G, num_samples, seed)))
    return frechet_distance(*fake, *stats_from_features(real_features))


def main(argv: list[str] | None = None) -> None:
    from ganops.config import load_params
    from ganops.data.dataset import load_split
    from ganops.io import atomic_write
    from ganops.training.snapshot import load_generator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", nargs="+", type=Path, help="G_ema snapshot files (t*.pt, network-snapshot*.pt)")
    ap.add_argument("--num-samples", type=int, default=5000,
                    help="G samples per snapshot, drawn in batches of 500 (at least 500: the covariance is 128-d)")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--classifier", type=Path, default=ROOT / "cache" / "proxy_classifier.pt",
                    help="cached classifier weights; trained on the prepared train split and written when absent")
    a = ap.parse_args(argv)
    if a.num_samples < BATCH:
        raise SystemExit(f"--num-samples must be at least {BATCH} (the proxy's covariance is 128-d; 5000 is the "
                         f"documented setting), got {a.num_samples}")
    missing = [str(p) for p in a.snapshots if not p.is_file()]
    if missing:
        raise SystemExit(f"snapshot(s) not found: {missing}")
    generators = {}
    for path in a.snapshots:  # every snapshot is checked before any work
        try:
            G, meta = load_generator(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise SystemExit(f"{path} is not a G_ema snapshot ({type(err).__name__}: {err})") from None
        if meta.get("num_classes", 0):
            raise SystemExit(f"{path}: a class-conditional G ({meta['num_classes']} classes); the proxy samples "
                             "unconditional snapshots only (use bench_time_to_quality.py evaluate for this one)")
        generators[path] = (G, meta)
    prepared = ROOT / load_params(ROOT / "params.yaml").prepare.out_dir
    clf = Classifier()
    if a.classifier.is_file():
        try:
            clf.load_state_dict(torch.load(a.classifier, weights_only=True))
        except Exception as err:  # noqa: BLE001 - empty, truncated, not a state dict, other keys
            raise SystemExit(f"{a.classifier} is not a proxy classifier ({type(err).__name__}: {err}); delete it "
                             "and run again to train one (1-2 min)") from None
        clf.eval()
    else:
        print(f"training the proxy classifier (2 epochs) -> {a.classifier}", file=sys.stderr)
        clf = train_classifier(*load_split(prepared, "train"))
        with atomic_write(a.classifier, "wb") as f:  # creates the folder; no half-written cache file
            torch.save(clf.state_dict(), f)
    test_images, _ = load_split(prepared, "test")
    real = features(clf, torch.from_numpy(np.array(test_images)))
    out = {}
    for path, (G, meta) in generators.items():
        out[str(path)] = {"kimg": meta.get("kimg"), "proxy_fid": round(proxy_fid(clf, G, real, a.num_samples,
                                                                                  a.seed), 2)}
        print(path, out[str(path)], file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
