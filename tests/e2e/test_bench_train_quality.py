"""bench_train.py's quality and cuda sections end to end on a tiny budget (the cuda section on the CPU)."""

from __future__ import annotations

import math
import statistics

import pytest

from tests.scripts import load_benchmark

pytestmark = pytest.mark.e2e


def test_quality_section_measures_both_loops_over_seeds(tmp_path):
    bench = load_benchmark("bench_train")
    out = bench.bench_quality(tmp_path, steps=2, samples=16, threads=1, seeds=[0, 1])
    assert [r["seed"] for r in out["runs"]] == [0, 1]
    fids = [r[k] for r in out["runs"] for k in ("fid_ganops", "fid_reference")]
    assert all(math.isfinite(f) and f > 0 for f in fids)
    g, r = [x["fid_ganops"] for x in out["runs"]], [x["fid_reference"] for x in out["runs"]]
    assert out["fid_delta"] == pytest.approx(sum(g) / 2 - sum(r) / 2, abs=0.011)
    assert out["fid_seed_spread"] == pytest.approx(max(statistics.stdev(g), statistics.stdev(r)), abs=0.011)
    assert out["no_fid_loss"] is (out["fid_delta"] <= out["fid_seed_spread"] + 0.005)


def test_cuda_section_code_runs_on_cpu_and_rows_hold_every_contender(tmp_path):
    bench = load_benchmark("bench_train")
    out = bench.bench_cuda(tmp_path, batches=[16, 32], steps=4, repeats=1, workers_list=[0, 1], device="cpu")
    assert [r["batch_size"] for r in out["rows"]] == [16, 32]
    for row in out["rows"]:
        rates = {k: row[k] for k in ("ganops_fp32", "ganops_amp_bf16", "reference_workers0", "reference_workers1")}
        assert all(v > 0 for v in rates.values()), rates
        best = row["best_reference"]
        assert rates[best] == max(rates["reference_workers0"], rates["reference_workers1"])
        assert row["speedup_ganops_fp32"] == pytest.approx(rates["ganops_fp32"] / rates[best], rel=0.02)
