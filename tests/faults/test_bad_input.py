"""Hostile image files in a folder source (random bytes, truncated PNGs, extreme and lying sizes) end in a clean
DataError from ``prepare`` (on_bad_image=fail) or are skipped and reported (on_bad_image=skip); never another
exception, never a partial prepared directory."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ganops.config import PrepareConfig
from ganops.data.errors import DataError
from ganops.data.prepare import prepare

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _png(width: int, height: int, mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR that claims ``width x height`` pixels, with one tiny IDAT (a lying header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


_random_bytes = st.binary(min_size=0, max_size=512)
_truncated_png = st.tuples(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 0.95)).map(
    lambda t: _png(t[0], t[1])[: int(len(_png(t[0], t[1])) * t[2])])
_extreme_png = st.tuples(st.sampled_from([1, 2, 3, 2000]), st.sampled_from([1, 2, 3, 2000]),
                         st.sampled_from(["L", "RGB", "RGBA"])).map(lambda t: _png(t[0], t[1], t[2]))
_lying_png = st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)).map(lambda t: _png_claiming(*t))
_hostile = st.one_of(_random_bytes, _truncated_png, _extreme_png, _lying_png)


def _folder_with(tmp: Path, payload: bytes, name: str) -> Path:
    folder = tmp / "images"
    folder.mkdir(parents=True)
    for i in range(6):
        (folder / f"good{i}.png").write_bytes(_png(10, 12, seed=i))
    (folder / name).write_bytes(payload)
    return folder


def _cfg(tmp: Path, folder: Path, on_bad_image: str) -> PrepareConfig:
    return PrepareConfig(source="folder", folder=str(folder), resolution=8, channels=1, test_fraction=0.25,
                         on_bad_image=on_bad_image, max_image_pixels=5_000_000, out_dir=str(tmp / "prepared"))


@SETTINGS
@given(payload=_hostile, name=st.sampled_from(["x.png", "x.jpg", "x.jpeg"]), policy=st.sampled_from(["fail", "skip"]))
def test_hostile_file_gives_data_error_or_is_skipped(tmp_path_factory, payload, name, policy):
    tmp = tmp_path_factory.mktemp("bad")
    folder = _folder_with(tmp, payload, name)
    out = tmp / "prepared"
    try:
        summary = prepare(_cfg(tmp, folder, policy), seed=0)
    except DataError as err:
        assert name in str(err) or "image" in str(err)
        assert not out.exists(), "partial output after a DataError"
        return
    # Accepted: either the file was a decodable image, or it was skipped (skip policy) and the rest is intact.
    counts = summary["counts"]
    assert counts["train"] + counts["test"] in (6, 7)
    assert (out / "train-images.npy").is_file() and (out / "summary.json").is_file()


@pytest.mark.parametrize("payload", [b"", b"\x89PNG\r\n\x1a\n", _png_claiming(100_000, 100_000)],
                         ids=["empty", "signature-only", "claims-1e10-pixels"])
def test_known_bad_files_fail_with_the_file_named(tmp_path, payload):
    folder = _folder_with(tmp_path, payload, "bad.png")
    with pytest.raises(DataError, match="bad.png"):
        prepare(_cfg(tmp_path, folder, "fail"), seed=0)
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())
