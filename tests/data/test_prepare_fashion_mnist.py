"""prepare(source=fashion_mnist): IDX parsing, D1 (files absent), D2 (truncated / inconsistent files), outputs."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganops.config import PrepareConfig
from ganops.data import source_fashion_mnist as fmnist
from ganops.data.dataset import load_split, load_summary
from ganops.data.errors import DataError
from ganops.data.prepare import dataset_sha256, prepare
from ganops.io import read_json

from .conftest import idx_bytes, make_fashion_dir, write_idx_gz


def cfg(tmp_path: Path, src: Path, **kw) -> PrepareConfig:
    return PrepareConfig(fashion_mnist_dir=str(src), out_dir=str(tmp_path / "prepared"), **kw)


def test_read_idx_gz_known_header_and_values(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02" and raw[12:16] == b"\x00\x00\x00\x04"
    out = fmnist.read_idx_gz(write_idx_gz(tmp_path / "a.gz", arr))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_prepare_synthetic_outputs_match_inputs(tmp_path, fashion_dir):
    src, arrays = fashion_dir
    summary = prepare(cfg(tmp_path, src))
    out = tmp_path / "prepared"
    assert sorted(p.name for p in out.iterdir()) == ["metadata.parquet", "summary.json", "test-images.npy",
                                                     "test-labels.npy", "train-images.npy", "train-labels.npy"]
    for split in ("train", "test"):
        images, labels = load_split(out, split)
        assert images.dtype == np.uint8 and images.shape == (len(arrays[split][0]), 1, 28, 28)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images[:, 0], arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
    assert summary == load_summary(out) == read_json(out / "summary.json")
    assert summary["counts"] == {"train": 40, "test": 20} and summary["num_classes"] == 10
    assert summary["class_names"][0] == "T-shirt/top" and summary["class_names"][9] == "Ankle boot"

    meta = pd.read_parquet(out / "metadata.parquet")
    assert list(meta.columns) == ["index", "split", "label", "mean", "std", "min", "max", "sha256"]
    row = meta[(meta.split == "test") & (meta["index"] == 7)].iloc[0]
    img = arrays["test"][0][7].astype(np.float64)
    assert row["mean"] == pytest.approx(img.mean()) and row["std"] == pytest.approx(img.std())
    assert (row["min"], row["max"], row["label"]) == (img.min(), img.max(), 7)
    assert row["sha256"] == hashlib.sha256(arrays["test"][0][7].tobytes()).hexdigest()


def test_dataset_sha256_changes_with_one_pixel_or_label(tmp_path, fashion_dir):
    src, _ = fashion_dir
    base = prepare(cfg(tmp_path, src))["dataset_sha256"]
    assert prepare(cfg(tmp_path, src))["dataset_sha256"] == base  # deterministic
    splits = {s: load_split(tmp_path / "prepared", s) for s in ("train", "test")}
    assert dataset_sha256(splits) == base  # prepare's chunk-by-chunk digest = the whole-array definition
    images, labels = splits["test"]
    images = images.copy()
    images[3, 0, 5, 5] ^= 1
    assert dataset_sha256({**splits, "test": (images, labels)}) != base
    labels2 = splits["train"][1].copy()
    labels2[0] = (labels2[0] + 1) % 10
    assert dataset_sha256({**splits, "train": (splits["train"][0], labels2)}) != base


def test_resize_and_channels_and_subsets(tmp_path, fashion_dir):
    src, arrays = fashion_dir
    summary = prepare(cfg(tmp_path, src, resolution=32, channels=3, max_train=7, max_test=3))
    images, labels = load_split(tmp_path / "prepared", "train")
    assert images.shape == (7, 3, 32, 32) and summary["counts"] == {"train": 7, "test": 3}
    np.testing.assert_array_equal(images[:, 0], images[:, 2])  # gray replicated into RGB
    np.testing.assert_array_equal(labels, arrays["train"][1][:7])
    # A constant image stays constant under Lanczos resizing (kernel weights sum to 1).
    const = np.full((1, 28, 28), 77, np.uint8)
    from ganops.data.prepare import to_nchw

    assert np.all(to_nchw(const, resolution=32, channels=1) == 77)


# --- D1: files absent ----------------------------------------------------------------------------------------------


def test_d1_missing_files_message_gives_install_command_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        prepare(PrepareConfig(out_dir=str(tmp_path / "prepared")))
    msg = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "data/raw/fashion-mnist") in msg
    assert "train-images-idx3-ubyte.gz" in msg
    assert not (tmp_path / "prepared").exists()


def test_d1_cli_exits_nonzero_with_the_message(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ganops.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"prepare:\n  fashion_mnist_dir: {tmp_path / 'absent'}\n")
    result = CliRunner().invoke(app, ["prepare", "--params", "params.yaml"])
    assert result.exit_code == 1
    assert "sudo apt-get install dataset-fashion-mnist" in result.output and str(tmp_path / "absent") in result.output
    assert not (tmp_path / "data").exists()


def test_d1_local_fallback_dir_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    make_fashion_dir(tmp_path / "data/raw/fashion-mnist", n_train=10, n_test=10)
    assert prepare(PrepareConfig(out_dir="prepared"))["counts"] == {"train": 10, "test": 10}


def test_d1_explicit_dir_with_one_file_missing(tmp_path, fashion_dir):
    src, _ = fashion_dir
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing: t10k-labels-idx1-ubyte\.gz"):
        prepare(cfg(tmp_path, src))


# --- D2: truncated / inconsistent files ----------------------------------------------------------------------------


def _no_output(tmp_path: Path) -> bool:
    return not (tmp_path / "prepared").exists() and not list(tmp_path.glob(".prepared*"))


def test_d2_truncated_gzip_names_file(tmp_path, fashion_dir):
    src, _ = fashion_dir
    path = src / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot decompress .*truncated"):
        prepare(cfg(tmp_path, src))
    assert _no_output(tmp_path)


def test_d2_header_count_disagrees_with_length(tmp_path, fashion_dir):
    src, arrays = fashion_dir
    write_idx_gz(src / "t10k-images-idx3-ubyte.gz", arrays["test"][0], dims=(25, 28, 28))  # 20 images stored
    with pytest.raises(DataError) as err:
        prepare(cfg(tmp_path, src))
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "(25, 28, 28)" in msg
    assert f"{25 * 784} payload bytes" in msg and f"holds {20 * 784}" in msg
    assert _no_output(tmp_path)


def test_d2_image_label_count_mismatch_and_bad_magic(tmp_path, fashion_dir):
    src, arrays = fashion_dir
    write_idx_gz(src / "train-labels-idx1-ubyte.gz", arrays["train"][1][:39])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: holds \(39,\) labels but .* 40 images"):
        prepare(cfg(tmp_path, src))
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"GIF89a" + bytes(50)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: not an IDX file"):
        prepare(cfg(tmp_path, src))
    assert _no_output(tmp_path)


def test_failed_prepare_keeps_previous_output(tmp_path, fashion_dir):
    src, _ = fashion_dir
    before = prepare(cfg(tmp_path, src))
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError):
        prepare(cfg(tmp_path, src))
    assert load_summary(tmp_path / "prepared") == before
    assert not list(tmp_path.glob(".prepared*"))


# --- real Fashion-MNIST ------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not fmnist._all_present(fmnist.SYSTEM_DIR), reason="Fashion-MNIST not installed in /usr/share/datasets"
)
def test_real_fashion_mnist_subset_matches_raw_bytes(tmp_path):
    summary = prepare(PrepareConfig(out_dir=str(tmp_path / "prepared"), max_train=64, max_test=32))
    for split, (img_name, lbl_name) in fmnist.FILES.items():
        raw_images = gzip.decompress((fmnist.SYSTEM_DIR / img_name).read_bytes())
        raw_labels = gzip.decompress((fmnist.SYSTEM_DIR / lbl_name).read_bytes())
        images, labels = load_split(tmp_path / "prepared", split)
        n = summary["counts"][split]
        assert images.shape == (n, 1, 28, 28)
        # Independent parse: 16-byte image header, 8-byte label header, then raw uint8 values.
        expected = np.frombuffer(raw_images, np.uint8, count=n * 784, offset=16).reshape(n, 1, 28, 28)
        np.testing.assert_array_equal(images, expected)
        np.testing.assert_array_equal(labels, np.frombuffer(raw_labels, np.uint8, count=n, offset=8))
    train, labels = load_split(tmp_path / "prepared", "train")
    assert labels[:5].tolist() == [9, 0, 0, 3, 0]  # Ankle boot, T-shirt, T-shirt, Dress, T-shirt
    assert summary["counts"] == {"train": 64, "test": 32} and summary["num_classes"] == 10
