"""Property-based tests over image files for the folder source (hypothesis), complementing test_bad_input.py
(random bytes, truncated PNGs, lying PNG sizes through ``prepare``):

- every pixel mode a PNG/JPEG can hold (L, LA, RGB, RGBA, palette with and without a transparent index, 16-bit
  gray, 1-bit, CMYK JPEG) at any size from 1x1 to long strips decodes to the value an independent oracle predicts
  (ITU-R 601 luma, alpha composited onto white, 16-bit scaled by 1/257);
- mutated files (truncated JPEGs, flipped bytes, huge sizes declared in PNG and JPEG headers beyond Pillow's
  decompression-bomb limit, other formats under a .png name, compressed-text bombs) give a clean image or a
  per-file refusal with a reason, never an exception;
- through ``ganops prepare``: refused files are listed in summary.json (skip) or in the one-line error (fail).

Examples are derandomized (the same set on every run, so CI is reproducible); widen them locally with
``--hypothesis-seed=N`` and a larger ``max_examples`` when touching the decoder.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from ganops.data.source_folder import BadImage, FolderImage, load_image

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)
RES = 8


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _decode(tmp: Path, data: bytes, name: str, channels: int = 1, max_image_pixels: int = 10**12):
    path = tmp / name
    path.write_bytes(data)
    return load_image(path, name, 0, resolution=RES, channels=channels, max_image_pixels=max_image_pixels)


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _on_white(value: float, alpha: int) -> float:
    return value * alpha / 255 + 255 * (1 - alpha / 255)


# ---- valid files in every mode: the decoded value follows the documented conversion ----------------------------

_sizes = st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40)),
                   st.sampled_from([(1, 1), (1, 200), (200, 1), (3, 2)]))
_byte = st.integers(0, 255)


@st.composite
def _constant_image(draw):
    """(encoded bytes, file name, expected RGB after conversion or None, tolerance) for a one-colour image."""
    w, h = draw(_sizes)
    kind = draw(st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "P+transparency", "I;16", "1", "L.jpg", "RGB.jpg",
                                 "CMYK.jpg"]))
    r, g, b, a = draw(_byte), draw(_byte), draw(_byte), draw(_byte)
    if kind == "L":
        return _encode(Image.new("L", (w, h), r), "PNG"), "x.png", (r, r, r), 1
    if kind == "LA":
        v = _on_white(r, a)
        return _encode(Image.new("LA", (w, h), (r, a)), "PNG"), "x.png", (v, v, v), 1.5
    if kind == "RGB":
        return _encode(Image.new("RGB", (w, h), (r, g, b)), "PNG"), "x.png", (r, g, b), 1
    if kind == "RGBA":
        rgb = tuple(_on_white(c, a) for c in (r, g, b))
        return _encode(Image.new("RGBA", (w, h), (r, g, b, a)), "PNG"), "x.png", rgb, 1.5
    if kind in ("P", "P+transparency"):
        im = Image.new("P", (w, h), 5)
        im.putpalette([0, 0, 0] * 5 + [r, g, b] + [9, 9, 9] * 250)
        if kind == "P":
            return _encode(im, "PNG"), "x.png", (r, g, b), 1
        return _encode(im, "PNG", transparency=5), "x.png", (255, 255, 255), 1  # transparent -> white
    if kind == "I;16":
        v16 = draw(st.integers(0, 65535))
        v = round(v16 / 257)
        return _encode(Image.fromarray(np.full((h, w), v16, np.uint16)), "PNG"), "x.png", (v, v, v), 1
    if kind == "1":
        v = 255 if r >= 128 else 0
        return _encode(Image.new("1", (w, h), int(v > 0)), "PNG"), "x.png", (v, v, v), 0
    if kind == "L.jpg":
        return _encode(Image.new("L", (w, h), r), "JPEG", quality=95), "x.jpg", (r, r, r), 3
    if kind == "RGB.jpg":
        return _encode(Image.new("RGB", (w, h), (r, g, b)), "JPEG", quality=95), "x.jpg", (r, g, b), 6
    return _encode(Image.new("CMYK", (w, h), (r, g, b, a)), "JPEG", quality=95), "x.jpeg", None, None


@SETTINGS
@given(case=_constant_image(), channels=st.sampled_from([1, 3]))
def test_every_mode_and_size_decodes_to_the_expected_value(tmp_path_factory, case, channels):
    data, name, rgb, tol = case
    out = _decode(tmp_path_factory.mktemp("img"), data, name, channels)
    assert isinstance(out, FolderImage), out
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (channels, RES, RES)
    if rgb is None:  # CMYK: only that it converts (Pillow's CMYK->RGB has no simple closed form)
        return
    expected = np.array([_luma(rgb)] if channels == 1 else list(rgb), dtype=np.float64)[:, None, None]
    assert np.abs(out.pixels.astype(np.float64) - expected).max() <= tol + 1  # +1: uint8 rounding after Lanczos


# ---- mutated / hostile files: a clean image or a refusal with a reason, never an exception ------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _small(fmt: str, seed: int, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (12, 10) if mode == "L" else (12, 10, 3)
    return _encode(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode), fmt)


def _jpeg_claiming(width: int, height: int, seed: int) -> bytes:
    """A real small JPEG whose SOF0 header is rewritten to declare ``width x height``."""
    data = bytearray(_small("JPEG", seed))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_claiming(width: int, height: int, seed: int) -> bytes:
    """A real small PNG whose IHDR (with a correct CRC) declares ``width x height``."""
    data = _small("PNG", seed)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return data[:8] + _png_chunk(b"IHDR", ihdr) + data[33:]


def _png_with_text_bomb(seed: int) -> bytes:
    """A valid PNG carrying a zTXt chunk that inflates to 64 MB (Pillow caps decompressed text)."""
    data = _small("PNG", seed)
    bomb = _png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9))
    return data[:33] + bomb + data[33:]


def _other_format(fmt: str, seed: int) -> bytes:
    return _small(fmt, seed, "RGB")


_seed = st.integers(0, 2**16)
_hostile = st.one_of(
    st.tuples(st.sampled_from(["PNG", "JPEG"]), _seed, st.floats(0.0, 0.98)).map(
        lambda t: _small(t[0], t[1])[: int(len(_small(t[0], t[1])) * t[2])]),                      # truncated
    st.tuples(st.sampled_from(["PNG", "JPEG"]), _seed, st.lists(st.tuples(st.integers(0, 10**6), _byte),
                                                               min_size=1, max_size=8)).map(
        lambda t: _flip(_small(t[0], t[1]), t[2])),                                                # corrupted bytes
    st.tuples(st.integers(1, 65535), st.integers(1, 65535), _seed).map(lambda t: _jpeg_claiming(*t)),
    st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), _seed).map(lambda t: _png_claiming(*t)),
    _seed.map(_png_with_text_bomb),
    st.tuples(st.sampled_from(["GIF", "BMP", "TIFF", "WEBP", "ICO"]), _seed).map(lambda t: _other_format(*t)),
    st.binary(min_size=0, max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),                     # PNG signature + junk
    st.binary(min_size=0, max_size=64).map(lambda b: b"\xff\xd8\xff" + b),                          # JPEG SOI + junk
)


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


@SETTINGS
@given(payload=_hostile, name=st.sampled_from(["a.png", "a.jpg", "a.jpeg"]), channels=st.sampled_from([1, 3]))
def test_hostile_file_decodes_cleanly_or_is_refused_with_a_reason(tmp_path_factory, payload, name, channels):
    # max_image_pixels at 1e12: Pillow's own decompression-bomb guard is what must stop lying headers here.
    out = _decode(tmp_path_factory.mktemp("bad"), payload, name, channels)
    if isinstance(out, BadImage):
        assert out.path == name and out.reason.strip()
        return
    assert isinstance(out, FolderImage) and out.pixels.dtype == np.uint8 and out.pixels.shape == (channels, RES, RES)
    assert out.orig_width * out.orig_height <= 2 * Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: _png_claiming(100_000, 100_000, 0), "decompression-bomb guard"),
    (lambda: _jpeg_claiming(65_000, 65_000, 0), "decompression-bomb guard"),
    (lambda: _png_with_text_bomb(0), "corrupt or truncated"),
    (lambda: _other_format("GIF", 0), "not a PNG/JPEG image"),
    (lambda: _small("JPEG", 0)[:200], "corrupt or truncated"),
])
def test_specific_refusals_give_their_reason(tmp_path, make, reason):
    out = _decode(tmp_path, make(), "f.png")
    assert isinstance(out, BadImage) and reason in out.reason, out


def test_declared_size_over_max_image_pixels_is_refused_from_the_header(tmp_path):
    out = _decode(tmp_path, _jpeg_claiming(9000, 9000, 1), "big.jpg", max_image_pixels=64_000_000)
    assert isinstance(out, BadImage) and "9000x9000 = 81000000 pixels exceeds prepare.max_image_pixels" in out.reason


# ---- through `ganops prepare`: each refused file listed (skip) or named in the error (fail) ------------------------

HOSTILE_FILES = {
    "empty.png": lambda: b"",
    "noise.jpg": lambda: np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes(),
    "cut.png": lambda: _small("PNG", 2)[:60],
    "cut.jpg": lambda: _small("JPEG", 3)[:200],
    "gif.png": lambda: _other_format("GIF", 4),
    "huge.png": lambda: _png_claiming(100_000, 100_000, 5),
    "huge.jpg": lambda: _jpeg_claiming(65_000, 65_000, 6),
}


def _prepare_cli(project: Path, policy: str):
    from ganops.cli import app

    (project / "params.yaml").write_text(yaml.safe_dump({"prepare": {
        "source": "folder", "folder": str(project / "images"), "resolution": RES, "test_fraction": 0.25,
        "on_bad_image": policy, "out_dir": str(project / "prepared")}}))
    return CliRunner().invoke(app, ["prepare", "--params", str(project / "params.yaml")])


def test_prepare_lists_every_refused_file_or_names_them_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for i, mode in enumerate(["L", "LA", "RGB", "RGBA", "P", "I;16", "1", "L"]):
        im = Image.new(mode if mode != "I;16" else "I;16", (9 + i, 7), 100 if mode in ("L", "P", "1", "I;16")
                       else (100,) * len(mode))
        im.save(images / f"good{i}.png")
    for name, make in HOSTILE_FILES.items():
        (images / name).write_bytes(make())

    failed = _prepare_cli(tmp_path, "fail")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert f"{len(HOSTILE_FILES)} bad file(s)" in failed.output
    for name in HOSTILE_FILES:
        assert f"  - {name}: " in failed.output
    assert not (tmp_path / "prepared").exists()

    ok = _prepare_cli(tmp_path, "skip")
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert sorted(s["path"] for s in summary["skipped"]) == sorted(HOSTILE_FILES)
    assert all(s["reason"] for s in summary["skipped"])
    assert summary["counts"]["train"] + summary["counts"]["test"] == 8
