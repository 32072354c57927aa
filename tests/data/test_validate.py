"""validate(): GX suite over metadata.parquet; D4 (skipped files reported), D5 (labels, rows), D6 (duplicates)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganops.config import PrepareConfig, ValidateConfig
from ganops.data.errors import DataError, DataValidationError
from ganops.data.prepare import prepare
from ganops.data.validate import class_balance_table, duplicate_report, validate

from .conftest import make_fashion_dir, write_idx_gz


def vcfg(tmp_path: Path, **kw) -> ValidateConfig:
    kw.setdefault("min_train_rows", 10)
    kw.setdefault("min_test_rows", 5)
    return ValidateConfig(report_dir=str(tmp_path / "report"), **kw)


@pytest.fixture
def prepared(tmp_path) -> Path:
    make_fashion_dir(tmp_path / "src", n_train=40, n_test=20)
    prepare(PrepareConfig(fashion_mnist_dir=str(tmp_path / "src"), out_dir=str(tmp_path / "prepared")))
    return tmp_path / "prepared"


def test_clean_data_passes_and_writes_report_and_data_docs(tmp_path, prepared):
    report = validate(vcfg(tmp_path), prepared_dir=prepared)
    assert report["success"] and report["failed"] == [] and report["warnings"] == []
    on_disk = json.loads((tmp_path / "report/result.json").read_text())
    assert on_disk["success"] is True and on_disk["num_rows"] == 60
    stats = on_disk["statistics"]
    assert stats["evaluated_expectations"] == stats["successful_expectations"] == len(on_disk["expectations"]) > 20
    names = {o["name"] for o in on_disk["expectations"]}
    assert {"label_in_class_set", "min_train_rows", "class_balance", "unique_index_per_split"} <= names
    rows = {o["name"]: o for o in on_disk["expectations"]}
    assert rows["min_train_rows"]["observed_value"] == 40 and rows["min_test_rows"]["observed_value"] == 20
    assert (tmp_path / "report/data_docs/index.html").is_file()
    assert list((tmp_path / "report/data_docs/validations").rglob("*.html"))


def test_d5_labels_outside_class_set_rows_and_balance_fail(tmp_path, prepared):
    # The data holds labels 0..9; declaring only 0..4 makes labels 5..9 offending values.
    with pytest.raises(DataValidationError) as err:
        validate(vcfg(tmp_path, expected_classes=[0, 1, 2, 3, 4], min_train_rows=41), prepared_dir=prepared)
    msg = str(err.value)
    assert "label_in_class_set" in msg and "min_train_rows" in msg and "observed 40" in msg
    assert "30 offending rows" in msg  # 20 train + 10 test rows carry labels 5..9
    assert "'label': 5" in msg
    failed = {f["name"]: f for f in err.value.failures}
    assert set(failed) == {"label_in_class_set", "min_train_rows"}
    assert {e["label"] for e in failed["label_in_class_set"]["examples"]} <= {5, 6, 7, 8, 9}
    report = json.loads((tmp_path / "report/result.json").read_text())
    assert report["success"] is False and set(report["failed"]) == set(failed)
    assert report["statistics"]["failed_critical"] == 2


def test_d5_class_imbalance_fails_naming_class(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.array([0] * 31 + list(range(1, 10)), np.uint8)  # class 0 holds 31/40 of train
    src = tmp_path / "src"
    make_fashion_dir(src, n_train=40, n_test=20)
    write_idx_gz(src / "train-images-idx3-ubyte.gz", images)
    write_idx_gz(src / "train-labels-idx1-ubyte.gz", labels)
    prepare(PrepareConfig(fashion_mnist_dir=str(src), out_dir=str(tmp_path / "prepared")))
    with pytest.raises(DataValidationError, match="class_balance") as err:
        validate(vcfg(tmp_path, class_balance_tolerance=0.5), prepared_dir=tmp_path / "prepared")
    (failure,) = err.value.failures
    # Shares: class 0 = 31/40 (> 0.15), classes 1..9 = 1/40 (< 0.05): all ten out of bounds.
    assert failure["unexpected_count"] == 10
    assert {"label": 0, "share": 31 / 40} in failure["examples"]


def test_d6_duplicates_warn_then_fail(tmp_path):
    src = tmp_path / "src"
    arrays = make_fashion_dir(src, n_train=40, n_test=20)
    test_images = arrays["test"][0].copy()
    test_images[[2, 11]] = arrays["train"][0][[5, 17]]  # two test images copied from train
    write_idx_gz(src / "t10k-images-idx3-ubyte.gz", test_images)
    prepare(PrepareConfig(fashion_mnist_dir=str(src), out_dir=str(tmp_path / "prepared")))

    report = validate(vcfg(tmp_path, duplicates="warn"), prepared_dir=tmp_path / "prepared")
    assert report["success"] and report["warnings"] == ["test_not_duplicate_of_train"]
    assert report["duplicates"]["count"] == 2
    pairs = {(e["test_index"], tuple(e["train_indices"])) for e in report["duplicates"]["examples"]}
    assert pairs == {(2, (5,)), (11, (17,))}

    with pytest.raises(DataValidationError, match="test_not_duplicate_of_train") as err:
        validate(vcfg(tmp_path, duplicates="fail"), prepared_dir=tmp_path / "prepared")
    assert "'test_index': 2" in str(err.value) and "'train_indices': [5]" in str(err.value)


def test_d4_skipped_files_reach_the_report(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (10, 10), 20 * i + (100 if cls == "b" else 0)).save(root / cls / f"{i}.png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "b" / "readme.md").write_text("# hi")
    prepare(PrepareConfig(source="folder", folder=str(root), resolution=8, on_bad_image="skip",
                          out_dir=str(tmp_path / "prepared")))  # fmt: skip
    report = validate(vcfg(tmp_path, min_train_rows=4, min_test_rows=2), prepared_dir=tmp_path / "prepared")
    assert [s["path"] for s in report["skipped_files"]] == ["a/broken.jpg", "b/readme.md"]


def test_prepare_not_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"summary\.json not found: the prepare stage has not been run"):
        validate(vcfg(tmp_path), prepared_dir=tmp_path / "nothing")


def test_helpers_count_by_hand():
    meta = pd.DataFrame(
        {
            "split": ["train"] * 4 + ["test"] * 2,
            "index": [0, 1, 2, 3, 0, 1],
            "label": [0, 0, 1, 7, 1, 0],
            "sha256": ["h0", "h1", "h2", "h0", "h0", "zz"],
        }
    )
    table = class_balance_table(meta, [0, 1, 2])
    assert table["count"].tolist() == [2, 1, 0] and table["share"].tolist() == [2 / 3, 1 / 3, 0.0]
    rep = duplicate_report(meta)
    assert rep == {"count": 1, "examples": [{"sha256": "h0", "test_index": 0, "train_indices": [0, 3]}]}
