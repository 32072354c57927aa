"""The benchmark suite's scripts check their numbers up front: a bad value is an argparse error naming the flag, not
a traceback (or an empty median) after minutes of training."""

from __future__ import annotations

import sys

import pytest

from tests.scripts import load_benchmark


@pytest.fixture(scope="module")
def bench_train():
    return load_benchmark("bench_train")


@pytest.mark.parametrize(("argv", "flag", "why"), [
    (["--variants", "--steps", "0"], "--steps", "must be >= 1, got 0"),
    (["--variants", "--repeats", "0"], "--repeats", "must be >= 1, got 0"),
    (["--reference", "--threads", "0"], "--threads", "must be >= 1, got 0"),
    # [2:] drops two warm-up steps per run: 2 steps used to end in statistics.median([]) after the whole section.
    (["--reference", "--reference-steps", "2"], "--reference-steps", "must be >= 3, got 2"),
    (["--reference", "--reference-workers", "-1"], "--reference-workers", "must be >= 0, got -1"),
    (["--scaling", "--scaling-batches", "32,abc"], "--scaling-batches", "'abc' is not an integer"),
    (["--scaling", "--scaling-batches", ","], "--scaling-batches", "expected a comma list"),
    (["--scaling", "--scaling-threads", "1,0"], "--scaling-threads", "must be >= 1, got 0"),
    (["--quality", "--quality-samples", "1"], "--quality-samples", "must be >= 2, got 1"),
])
def test_bench_train_bad_numbers_are_refused_at_parse_time(bench_train, capsys, argv, flag, why):
    with pytest.raises(SystemExit) as info:
        bench_train.build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and why in err


def test_bench_train_lists_are_parsed(bench_train):
    args = bench_train.build_parser().parse_args(["--scaling", "--scaling-batches", "32, 64", "--scaling-workers", "0"])
    assert (args.scaling_batches, args.scaling_threads, args.scaling_workers) == ([32, 64], [1, 2], [0])


@pytest.mark.parametrize(("argv", "why"), [([], "choose at least one section"),
                                           (["--variants", "--budget-min", "0"], "--budget-min must be > 0")])
def test_bench_train_main_refuses_before_any_work(bench_train, monkeypatch, capsys, argv, why):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", *argv])
    monkeypatch.setattr(bench_train, "bench_variants", lambda *a, **k: pytest.fail("a section ran"))
    with pytest.raises(SystemExit) as info:
        bench_train.main()
    assert info.value.code == 2 and why in capsys.readouterr().err


def test_bench_orchestration_repeats_below_one(monkeypatch, capsys):
    mod = load_benchmark("bench_orchestration")
    monkeypatch.setattr(sys, "argv", ["bench_orchestration.py", "--repeats", "0"])
    monkeypatch.setattr(mod, "bench_imports", lambda repeats: pytest.fail("ran with 0 repeats"))
    with pytest.raises(SystemExit) as info:
        mod.main()
    assert info.value.code == 2 and "--repeats must be >= 1" in capsys.readouterr().err
