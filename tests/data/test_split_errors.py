"""Broken prepared splits give a DataError that names the broken file and says to re-run prepare."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ganops.data.dataset import images_file, labels_file, load_split, save_split
from ganops.data.errors import DataError


@pytest.fixture()
def prepared(tmp_path):
    images = np.zeros((6, 1, 4, 4), np.uint8)
    save_split(tmp_path, "train", images, np.arange(6))
    return tmp_path


def test_truncated_labels_file_is_named(prepared):
    path = prepared / labels_file("train")
    path.write_bytes(path.read_bytes()[:140])
    with pytest.raises(DataError, match=rf"{labels_file('train')}: cannot be read .*re-run prepare"):
        load_split(prepared, "train")


def test_float_labels_are_named(prepared):
    np.save(prepared / labels_file("train"), np.zeros(6))
    with pytest.raises(DataError, match=rf"{labels_file('train')}: expected labels int64"):
        load_split(prepared, "train")


def test_zip_archive_under_the_npy_name(prepared, tmp_path_factory):
    archive = tmp_path_factory.mktemp("z") / "a.npz"
    np.savez(archive, images=np.zeros((2, 1, 4, 4), np.uint8))
    shutil.copy(archive, prepared / images_file("train"))
    with pytest.raises(DataError, match=r"not an \.npy array"):
        load_split(prepared, "train")


@pytest.mark.parametrize("damage", ["truncated", "object_array"])
def test_broken_old_format_npz_says_re_run_prepare(tmp_path, damage):
    path = tmp_path / "train.npz"
    if damage == "truncated":
        np.savez(path, images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.zeros(2, np.int64))
        path.write_bytes(path.read_bytes()[:300])
    else:
        np.savez(path, images=np.array([object()] * 2, dtype=object), labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"train\.npz: cannot be read .*re-run prepare"):
        load_split(tmp_path, "train")
