"""Image-folder source: PNG/JPEG files directly in a folder (one class) or one sub-folder per class.

Layout: ``root/*.png`` (every label 0, class name = the folder's name) or ``root/<class>/*.{png,jpg}`` (class
folders sorted by name -> labels 0..K-1). Hidden entries (``.name``) are ignored; anything else is a candidate and
must decode as PNG or JPEG.

Conversion, in this order (all via Pillow):

1. EXIF orientation applied (``ImageOps.exif_transpose``).
2. 16-bit gray (``I;16``) scaled to 8 bits as ``round(v / 257)`` (Pillow's own ``convert("L")`` clips instead of
   scaling); 32-bit ``I`` likewise when its maximum exceeds 255 (else taken as already 8-bit); float gray (``F``)
   is clipped to 0..255.
3. Transparency (RGBA, LA, PA, palette or RGB with a transparent colour) is alpha-composited onto **white**.
4. Colour conversion to ``L`` (ITU-R 601-2 luma) or ``RGB``; CMYK JPEGs go through Pillow's CMYK->RGB.
5. Centre crop to a square (the shorter side), then Lanczos resize to ``resolution x resolution``.

Refused (a "bad image", subject to ``on_bad_image``): files that do not decode as PNG/JPEG, truncated files,
symlinks whose target lies outside ``root``, and images with more than ``max_image_pixels`` pixels; the pixel
count is read from the header before any pixel data is decoded, so a 40000x40000 image costs no memory.
Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, error above twice its value, ~179 Mpx) also
refuses from the header, whatever ``max_image_pixels`` says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ganops.data.errors import DataError

FORMATS = ("PNG", "JPEG")
_BACKGROUND = 255  # alpha is composited onto white


@dataclass(frozen=True)
class FolderImage:
    """One decoded image: ``pixels`` uint8 (C, H, W) 0..255 and where it came from."""

    path: str  # relative to the folder root, POSIX separators
    label: int
    pixels: np.ndarray
    orig_mode: str
    orig_width: int
    orig_height: int


@dataclass(frozen=True)
class BadImage:
    """A file that was refused, with the reason."""

    path: str
    reason: str


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def discover(root: str | Path) -> tuple[list[str], list[tuple[Path, int]], list[BadImage]]:
    """List class names and candidate files under ``root`` (sorted, deterministic).

    Returns:
        ``(class_names, [(path, label), ...], refused)`` where ``refused`` holds symlinks escaping ``root`` and
        nested folders (only one level of class folders is supported).

    Raises:
        DataError: ``root`` is not a directory, a class folder is empty, files sit next to class folders, or there
            is no candidate file at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root.resolve()} does not exist or is not a directory; set prepare.folder")
    real_root = root.resolve()
    entries = sorted(p for p in root.iterdir() if not _is_hidden(p))
    refused: list[BadImage] = []
    dirs = [p for p in entries if p.is_dir()]
    if not entries:
        raise DataError(f"image folder {root.resolve()} is empty; add PNG/JPEG files or one sub-folder per class")
    if not dirs:
        classes, groups = [root.resolve().name], [(root, entries)]
    else:
        loose = [p.name for p in entries if not p.is_dir()]
        if loose:
            raise DataError(
                f"{root}: files {loose[:5]} sit next to class folders {[d.name for d in dirs[:5]]}; "
                "move them into a class folder (or remove them)"
            )
        for d in dirs:
            if not _inside(d, real_root):
                refused.append(BadImage(str(d.relative_to(root)), f"symlink to {d.resolve()} outside {real_root}"))
        dirs = [d for d in dirs if _inside(d, real_root)]
        classes = [d.name for d in dirs]
        groups = [(d, sorted(p for p in d.iterdir() if not _is_hidden(p))) for d in dirs]
    files: list[tuple[Path, int]] = []
    for label, (folder, members) in enumerate(groups):
        if not members:
            raise DataError(f"class folder {folder} is empty; add images to it or remove it")
        for p in members:
            rel = p.relative_to(root).as_posix()
            if not _inside(p, real_root):
                refused.append(BadImage(rel, f"symlink to {p.resolve()} outside the image folder {real_root}"))
            elif p.is_dir():
                refused.append(BadImage(rel, "is a folder; only one level of class folders is supported"))
            else:
                files.append((p, label))
    return classes, files, refused


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 257.0 if (im.mode.startswith("I;16") or arr.max(initial=0) > 255) else 1.0
        return Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8), "L")
    return im


def _flatten_alpha(im: Image.Image) -> Image.Image:
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (_BACKGROUND,) * 3 + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def center_crop_resize(im: Image.Image, resolution: int) -> Image.Image:
    """Crop the centred square of side min(W, H), then Lanczos-resize it to ``resolution`` x ``resolution``.

    The crop happens first so no pixel outside the square leaks in through the filter support (``ImageOps.fit``
    resizes from a box and lets the Lanczos kernel read neighbours outside it).
    """
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    return im if side == resolution else im.resize((resolution, resolution), Image.Resampling.LANCZOS)


def convert_image(im: Image.Image, *, resolution: int, channels: int) -> np.ndarray:
    """Convert a loaded Pillow image per the module docstring.

    Returns:
        uint8 (channels, resolution, resolution) 0..255.
    """
    im = ImageOps.exif_transpose(im)
    im = _flatten_alpha(_to_8bit(im))
    im = im.convert("L" if channels == 1 else "RGB")
    im = center_crop_resize(im, resolution)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def load_image(path: Path, rel: str, label: int, *, resolution: int, channels: int, max_image_pixels: int):
    """Open, check and convert one file (``rel`` is its path relative to the folder, for reports).

    Returns:
        :class:`FolderImage` with uint8 (channels, resolution, resolution) pixels, or :class:`BadImage` with the
        reason; a bad file never raises.
    """
    try:
        with Image.open(path, formats=FORMATS) as im:  # parses the header only
            width, height = im.size
            if width * height > max_image_pixels:
                return BadImage(rel, _too_large(width, height, max_image_pixels))
            mode = im.mode
            im.load()
            pixels = convert_image(im, resolution=resolution, channels=channels)
    except Image.DecompressionBombError as err:  # raised by Image.open from the header, before decoding
        return BadImage(rel, f"refused by Pillow's decompression-bomb guard before decoding: {err}")
    except Image.UnidentifiedImageError:
        return BadImage(rel, f"not a {'/'.join(FORMATS)} image (cannot identify the file)")
    except (OSError, SyntaxError, ValueError) as err:
        return BadImage(rel, f"corrupt or truncated image ({type(err).__name__}: {err})")
    return FolderImage(rel, label, pixels, mode, width, height)


def _too_large(width: int, height: int, limit: int) -> str:
    return (
        f"{width}x{height} = {width * height} pixels exceeds prepare.max_image_pixels={limit}; "
        "downscale the file or raise the limit"
    )


def decode_files(
    root: str | Path, files: list[tuple[Path, int]], *, resolution: int, channels: int, max_image_pixels: int,
    chunk_size: int = 1024, num_threads: int | None = None,
) -> Iterator[list[FolderImage | BadImage]]:
    """Decode ``files`` (from :func:`discover`) in order, ``chunk_size`` at a time on a thread pool (Pillow releases
    the GIL while decoding); yields each chunk's results in file order, so at most one chunk of pixels is held."""
    root = Path(root)
    threads = num_threads or min(8, len(os.sched_getaffinity(0)))

    def work(item: tuple[Path, int]):
        path, label = item
        return load_image(
            path, path.relative_to(root).as_posix(), label,
            resolution=resolution, channels=channels, max_image_pixels=max_image_pixels,
        )  # fmt: skip

    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(files), chunk_size):
            yield list(pool.map(work, files[lo : lo + chunk_size]))


def load_folder(
    root: str | Path, *, resolution: int, channels: int, max_image_pixels: int, num_threads: int | None = None
) -> tuple[list[str], list[FolderImage], list[BadImage]]:
    """Discover and decode every image under ``root`` into memory (small folders; ``prepare`` streams with
    :func:`decode_files`).

    Returns:
        ``(class_names, images in sorted path order, bad files)``.

    Raises:
        DataError: see :func:`discover`.
    """
    classes, files, bad = discover(root)
    results = [r for chunk in decode_files(root, files, resolution=resolution, channels=channels,
                                           max_image_pixels=max_image_pixels, num_threads=num_threads) for r in chunk]
    good = [r for r in results if isinstance(r, FolderImage)]
    bad = sorted(bad + [r for r in results if isinstance(r, BadImage)], key=lambda b: b.path)
    return classes, good, bad
