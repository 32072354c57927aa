"""ganops.provenance: the dataset content hash of a registered model, from wherever it was recorded."""

from __future__ import annotations

import json

from ganops.provenance import dataset_sha256


def test_dataset_sha256_prefers_recorded_hashes_then_the_prepared_summary(tmp_path):
    assert dataset_sha256({"dataset_sha256": "ev"}, {"dataset_sha256": "train"}, {}) == "ev"
    assert dataset_sha256({}, {"dataset_sha256": "train"}, {"dataset_sha256": "opt"}) == "train"
    assert dataset_sha256({}, {}, {}) is None
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    assert dataset_sha256({}, {}, {"prepared_dir": str(prepared)}) is None  # no summary.json
    (prepared / "summary.json").write_text(json.dumps({"dataset_sha256": "abc"}))
    assert dataset_sha256({}, {}, {"prepared_dir": str(prepared)}) == "abc"
