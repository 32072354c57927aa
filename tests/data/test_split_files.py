"""The prepared split files: memory-mapped ``.npy`` read by row, the old ``.npz`` format, broken files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ganops.data.dataset import load_split, save_split
from ganops.data.errors import DataError
from ganops.data.npy import RowReader, write_header


def _split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8), rng.integers(0, 5, n).astype(np.int64)


def test_load_split_maps_images_read_only_and_rows_read_back_exactly(tmp_path):
    images, labels = _split()
    save_split(tmp_path, "train", images, labels)
    got_images, got_labels = load_split(tmp_path, "train")
    assert isinstance(got_images, np.memmap) and not got_images.flags.writeable
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    idx = np.array([49, 0, 7, 7, 13])  # any order, repeats
    reader = RowReader(got_images)
    np.testing.assert_array_equal(reader(idx), images[idx])
    assert reader(idx).flags.writeable and reader(np.array([], np.int64)).shape == (0, 3, 4, 4)
    with pytest.raises(IndexError, match="out of range"):
        reader(np.array([50]))
    with pytest.raises(ValueError, match="not the whole file"):
        RowReader(got_images[1:])


def test_streamed_header_matches_numpy_save(tmp_path):
    images, _ = _split(7)
    with open(tmp_path / "a.npy", "wb") as f:
        write_header(f, np.uint8, images.shape)
        for chunk in np.array_split(images, 3):
            f.write(chunk.tobytes())
    np.save(tmp_path / "b.npy", images)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_old_npz_split_loads_with_a_re_run_prepare_warning(tmp_path, caplog):
    images, labels = _split()
    np.savez(tmp_path / "test.npz", images=images, labels=labels)
    with caplog.at_level(logging.WARNING, logger="ganops.data.dataset"):
        got_images, got_labels = load_split(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert "old prepared format" in caplog.text and "re-run prepare" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "wrong_dtype", "labels_missing", "label_count"])
def test_broken_split_files_say_re_run_prepare(tmp_path, damage):
    images, labels = _split()
    save_split(tmp_path, "train", images, labels)
    path = tmp_path / "train-images.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "wrong_dtype":
        np.save(path, images.astype(np.int16))
    elif damage == "labels_missing":
        (tmp_path / "train-labels.npy").unlink()
    else:
        np.save(tmp_path / "train-labels.npy", labels[:-1])
    with pytest.raises(DataError, match="re-run prepare|run `ganops prepare`"):
        load_split(tmp_path, "train")
