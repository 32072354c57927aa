"""bench_train.py's quality section end to end on a tiny budget: both loops train, every FID is measured."""

from __future__ import annotations

import math

import pytest

from tests.scripts import load_benchmark

pytestmark = pytest.mark.e2e


def test_quality_section_measures_both_loops_and_the_fid_noise(tmp_path):
    bench = load_benchmark("bench_train")
    out = bench.bench_quality(tmp_path, steps=3, samples=16, threads=1)
    fids = [out[k] for k in ("fid_ganops_G", "fid_ganops_G_ema", "fid_reference_G", "fid_reference_G_other_latents")]
    assert all(math.isfinite(f) and f > 0 for f in fids)
    assert out["fid_noise"] == pytest.approx(abs(out["fid_reference_G"] - out["fid_reference_G_other_latents"]),
                                             abs=0.011)
    assert out["fid_delta"] == pytest.approx(out["fid_ganops_G"] - out["fid_reference_G"], abs=0.011)
    assert out["no_fid_loss"] is (out["fid_ganops_G"] - out["fid_reference_G"] <= out["fid_noise"])
