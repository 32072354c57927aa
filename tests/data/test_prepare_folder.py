"""prepare(source=folder): D3 (mixed modes/sizes), D4 (bad files), D5 (empty), D7 (symlink escape, huge image)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ganops.config import PrepareConfig
from ganops.data.dataset import load_split, load_summary
from ganops.data.errors import DataError
from ganops.data.prepare import prepare, stratified_test_mask
from ganops.data.source_folder import center_crop_resize, convert_image, load_image

from .conftest import png_with_header_only


def folder_cfg(tmp_path: Path, folder: Path, **kw) -> PrepareConfig:
    kw.setdefault("resolution", 16)
    return PrepareConfig(source="folder", folder=str(folder), out_dir=str(tmp_path / "prepared"), **kw)


def solid(mode: str, size: tuple[int, int], value) -> Image.Image:
    return Image.new(mode, size, value)


def make_two_class_folder(root: Path, n_per_class: int = 6) -> Path:
    for cls, value in (("cats", 30), ("dogs", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            solid("L", (20 + i, 24), value + i).save(root / cls / f"{i:02d}.png")
    return root


# --- D3: modes and sizes ---------------------------------------------------------------------------------------------


def test_d3_every_mode_converted_and_recorded(tmp_path):
    root = tmp_path / "imgs" / "only"
    root.mkdir(parents=True)
    rgba = solid("RGBA", (30, 20), (0, 0, 0, 0))  # fully transparent -> white background
    rgba.save(root / "a_rgba.png")
    solid("RGB", (17, 17), (255, 0, 0)).save(root / "b_rgb.png")
    pal = solid("RGB", (12, 40), (0, 0, 255)).convert("P")
    pal.save(root / "c_palette.png")
    Image.fromarray(np.full((25, 25), 32896, np.uint16)).save(root / "d_gray16.png")  # 32896/257 = 128
    solid("L", (33, 21), 90).save(root / "e_gray.jpg", quality=100)
    solid("RGB", (40, 30), (0, 255, 0)).save(root / "f_rgb.jpg", quality=100)
    solid("CMYK", (19, 23), (0, 0, 0, 0)).save(root / "g_cmyk.jpg", quality=100)  # no ink = white
    solid("L", (9, 9), 10).save(root / "h_small.png")

    prepare(folder_cfg(tmp_path, tmp_path / "imgs", channels=1, test_fraction=0.2, resolution=8))
    meta = pd.read_parquet(tmp_path / "prepared/metadata.parquet").set_index("path")
    assert meta.loc["only/a_rgba.png", ["orig_mode", "orig_width", "orig_height"]].tolist() == ["RGBA", 30, 20]
    assert meta.loc["only/c_palette.png", "orig_mode"] == "P"
    assert meta.loc["only/d_gray16.png", "orig_mode"].startswith("I")
    assert meta.loc["only/g_cmyk.jpg", "orig_mode"] == "CMYK"
    assert meta.loc["only/f_rgb.jpg", ["orig_width", "orig_height"]].tolist() == [40, 30]
    assert set(meta["label"]) == {0} and len(meta) == 8

    # Luma of solid colours (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B); JPEG allowed +-3.
    expected = {
        "only/a_rgba.png": 255, "only/b_rgb.png": 76, "only/c_palette.png": 29, "only/d_gray16.png": 128,
        "only/e_gray.jpg": 90, "only/f_rgb.jpg": 150, "only/g_cmyk.jpg": 255, "only/h_small.png": 10,
    }  # fmt: skip
    for split in ("train", "test"):
        images, _ = load_split(tmp_path / "prepared", split)
        assert images.shape[1:] == (1, 8, 8)
        rows = meta[meta["split"] == split].sort_values("index")
        for path, img in zip(rows.index, images):
            assert np.abs(img.astype(int) - expected[path]).max() <= 3, path


def test_d3_rgb_output_and_center_crop(tmp_path):
    # 30x10 image: left and right 10 px black, centre 10 px white; centre-crop keeps only the white square.
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255
    out = convert_image(Image.fromarray(arr), resolution=5, channels=3)
    assert out.shape == (3, 5, 5) and out.dtype == np.uint8
    assert out.min() == 255
    # Crop box is centred: a 7x3 image keeps columns 2..4.
    ramp = Image.fromarray(np.tile(np.arange(7, dtype=np.uint8) * 10, (3, 1)))
    assert np.asarray(center_crop_resize(ramp, 3))[0].tolist() == [20, 30, 40]
    gray = convert_image(Image.fromarray(arr), resolution=5, channels=1)
    assert gray.shape == (1, 5, 5)


def test_folder_classes_sorted_split_stratified_and_seeded(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs", n_per_class=10)
    summary = prepare(folder_cfg(tmp_path, root, test_fraction=0.3), seed=5)
    assert summary["class_names"] == ["cats", "dogs"] and summary["num_classes"] == 2
    assert summary["counts"] == {"train": 14, "test": 6}
    _, test_labels = load_split(tmp_path / "prepared", "test")
    assert np.bincount(test_labels).tolist() == [3, 3]  # stratified
    meta = pd.read_parquet(tmp_path / "prepared/metadata.parquet")
    assert set(meta[meta.label == 0]["path"].str.split("/").str[0]) == {"cats"}
    # Same seed -> same split; the mask differs for another seed.
    labels = np.repeat([0, 1], 50)
    a = stratified_test_mask(labels, test_fraction=0.2, seed=1)
    assert np.array_equal(a, stratified_test_mask(labels, test_fraction=0.2, seed=1))
    assert not np.array_equal(a, stratified_test_mask(labels, test_fraction=0.2, seed=2))
    assert a[:50].sum() == a[50:].sum() == 10


# --- D4: corrupt and non-image files -------------------------------------------------------------------------------


def _add_bad_files(root: Path) -> None:
    good = root / "cats" / "00.png"
    (root / "cats" / "zz_corrupt.png").write_bytes(good.read_bytes()[:40])  # PNG signature + header, data cut off
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_d4_bad_files_fail_naming_both_and_write_nothing(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs")
    _add_bad_files(root)
    with pytest.raises(DataError) as err:
        prepare(folder_cfg(tmp_path, root))
    msg = str(err.value)
    assert "cats/zz_corrupt.png" in msg and "dogs/notes.txt" in msg and "on_bad_image=skip" in msg
    assert "2 bad file(s)" in msg
    assert not (tmp_path / "prepared").exists() and not list(tmp_path.glob(".prepared*"))


def test_d4_bad_files_skipped_are_listed(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs")
    _add_bad_files(root)
    summary = prepare(folder_cfg(tmp_path, root, on_bad_image="skip"))
    assert [s["path"] for s in summary["skipped"]] == ["cats/zz_corrupt.png", "dogs/notes.txt"]
    assert "not a PNG/JPEG" in summary["skipped"][1]["reason"]
    assert summary["counts"]["train"] + summary["counts"]["test"] == 12
    assert load_summary(tmp_path / "prepared")["skipped"] == summary["skipped"]


# --- D5: empty class folder, empty dataset -------------------------------------------------------------------------


def test_d5_empty_class_folder(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs")
    (root / "birds").mkdir()
    with pytest.raises(DataError, match=r"class folder .*birds is empty"):
        prepare(folder_cfg(tmp_path, root))


def test_d5_empty_dataset_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        prepare(folder_cfg(tmp_path, tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        prepare(folder_cfg(tmp_path, tmp_path / "nope"))
    assert not (tmp_path / "prepared").exists()


def test_d5_too_few_images_for_a_test_split(tmp_path):
    (tmp_path / "one").mkdir()
    solid("L", (8, 8), 1).save(tmp_path / "one" / "a.png")
    with pytest.raises(DataError, match="too few images"):
        prepare(folder_cfg(tmp_path, tmp_path / "one"))


# --- D7: symlink escaping the folder, huge image ---------------------------------------------------------------------


def test_d7_symlink_outside_folder_refused(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs")
    secret = tmp_path / "outside.png"
    solid("L", (8, 8), 0).save(secret)
    (root / "cats" / "link.png").symlink_to(secret)
    (root / "cats" / "inside_link.png").symlink_to(root / "dogs" / "00.png")  # inside: allowed
    with pytest.raises(DataError, match=r"cats/link\.png: symlink to .*outside\.png outside the image folder"):
        prepare(folder_cfg(tmp_path, root))
    summary = prepare(folder_cfg(tmp_path, root, on_bad_image="skip"))
    assert [s["path"] for s in summary["skipped"]] == ["cats/link.png"]
    assert summary["counts"]["train"] + summary["counts"]["test"] == 13


def test_d7_huge_image_refused_from_header_without_decoding(tmp_path):
    root = make_two_class_folder(tmp_path / "imgs")
    png_with_header_only(root / "dogs" / "huge.png", 40000, 40000)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"dogs/huge\.png: refused by Pillow's decompression-bomb guard before decod"):
        prepare(folder_cfg(tmp_path, root))
    assert time.perf_counter() - t0 < 10  # decoding 1.6 Gpx would take far longer; generous bound on 2 cores
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib < 200_000  # < 200 MiB growth

    # Below Pillow's guard, our own limit (prepare.max_image_pixels) refuses it from the header.
    png_with_header_only(root / "dogs" / "huge.png", 5000, 4000)
    with pytest.raises(DataError, match=r"dogs/huge\.png: 5000x4000 = 20000000 pixels exceeds .*max_image_pixels=1000000"):
        prepare(folder_cfg(tmp_path, root, max_image_pixels=1_000_000))
    bad = load_image(root / "dogs" / "huge.png", "dogs/huge.png", 1, resolution=8, channels=1, max_image_pixels=10**6)
    assert "downscale the file or raise the limit" in bad.reason
