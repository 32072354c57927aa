"""ganops.sweep_fanout: workspace and sweep-dir resolution, a point workspace cloned at a commit with the checkout's
DVC cache, the result tag round trip, and the successive-halving rule (the fan-out itself runs in
tests/e2e/test_sweep_fanout.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ganops.sweep import PointResult
from ganops.sweep_fanout import (
    HalvingStop, checkout_dir, halving_stops, make_workspace, result_from_tag, result_tag, rung_value, sweep_root,
)


def test_checkout_and_sweep_dir_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GANOPS_CHECKOUT", raising=False)
    monkeypatch.delenv("GANOPS_SWEEP_DIR", raising=False)
    assert checkout_dir(tmp_path / "repo") == (tmp_path / "repo").resolve()
    assert sweep_root(tmp_path / "repo") == tmp_path / "repo-sweeps"  # next to the checkout, not inside it
    monkeypatch.setenv("GANOPS_CHECKOUT", str(tmp_path / "other"))
    monkeypatch.setenv("GANOPS_SWEEP_DIR", str(tmp_path / "points"))
    assert checkout_dir(tmp_path / "repo") == (tmp_path / "other").resolve()
    assert sweep_root(tmp_path / "repo") == (tmp_path / "points").resolve()


def test_make_workspace_clones_the_commit_and_shares_the_dvc_cache(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../../remote\n")
    (repo / "params.yaml").write_text("seed: 0\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "params.yaml").write_text("seed: 1\n")
    subprocess.run([*git, "commit", "-qam", "two"], cwd=repo, check=True)

    ws = make_workspace(repo, tmp_path / "sweeps" / "s1" / "p0", first)
    (ws / "stale").write_text("x")
    ws = make_workspace(repo, ws, first)  # a retried point starts from a clean workspace
    assert (ws / "params.yaml").read_text() == "seed: 0\n" and not (ws / "stale").exists()
    local = (ws / ".dvc" / "config.local").read_text()
    assert str(repo / ".dvc" / "cache") in local
    assert str(tmp_path / "remote") in local  # the relative remote, as seen from the checkout
    proc = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=ws, capture_output=True, text=True)
    assert proc.stdout.strip() == str(repo / ".dvc" / "cache")
    with pytest.raises(RuntimeError, match="git checkout"):
        make_workspace(repo, tmp_path / "sweeps" / "s1" / "p1", "0" * 40)


def test_result_tag_round_trip_shortens_the_error():
    result = PointResult("p", {"train.lr_g": 1e-4}, ok=False, error="x" * 5000, status="failed", workspace="/w")
    back = result_from_tag(result_tag(result))
    assert back.name == "p" and back.overrides == {"train.lr_g": 1e-4} and back.workspace == "/w"
    assert len(back.error) == 1500 and not back.ok


def test_rung_value_is_the_first_fid_at_or_after_the_rung():
    history = [(0.1, 300.0), (0.2, math.nan), (0.3, 200.0)]
    assert rung_value(history, 0.05) == 300.0 and rung_value(history, 0.2) == math.inf
    assert rung_value(history, 0.25) == 200.0 and rung_value(history, 0.5) is None


def test_halving_stops_the_points_outside_the_best_half_seen_at_each_rung():
    judged: dict = {}
    # a reaches the rung first: alone, it goes on; b is worse than a: 2 seen, keep 1 -> b stops.
    stops = halving_stops({"a": [(0.2, 100.0)], "b": [(0.2, 150.0)], "c": []}, [0.2], 2, judged, {"a", "b", "c"})
    assert stops == [HalvingStop("b", 0.2, 150.0)]
    # c arrives later with the best FID: 3 seen, keep 2 -> c goes on; d (3rd of 4, keep 2) stops.
    stops = halving_stops({"a": [(0.2, 100.0)], "b": [(0.2, 150.0)], "c": [(0.2, 50.0)], "d": [(0.2, 120.0)]},
                          [0.2], 2, judged, {"a", "c", "d"})
    assert stops == [HalvingStop("d", 0.2, 120.0)]
    assert judged == {0.2: {"a": 100.0, "b": 150.0, "c": 50.0, "d": 120.0}}
    # A finished point is ranked but not stopped; a later rung judges again.
    judged = {}
    stops = halving_stops({"a": [(0.1, 10.0), (0.4, 90.0)], "b": [(0.1, 20.0), (0.4, 30.0)]}, [0.1, 0.4], 2,
                          judged, {"a"})
    assert stops == [HalvingStop("a", 0.4, 90.0)]
    with pytest.raises(ValueError, match="eta must be >= 2"):
        halving_stops({}, [0.1], 1, {}, set())


def test_point_fid_history_prefers_the_reachable_run_directory(tmp_path):
    import json
    from types import SimpleNamespace

    from ganops.rundir import RunDir
    from ganops.sweep_fanout import TAG_WORKSPACE, point_fid_history

    class Client:
        def get_metric_history(self, run_id, key):
            return [SimpleNamespace(step=4, value=9.0)]

    run_dir = RunDir(tmp_path / "ws" / "runs" / "train")
    run_dir.path.mkdir(parents=True)
    run_dir.stats.write_text("\n".join(json.dumps(e) for e in (
        {"step": 4, "kimg": 0.064, "loss_G": 1.0}, {"step": 4, "kimg": 0.064, "metric/fid": 438.2},
        {"step": 7, "kimg": 0.112, "metric/fid": 417.8})) + "\n")
    here = SimpleNamespace(info=SimpleNamespace(run_id="r"),
                           data=SimpleNamespace(tags={TAG_WORKSPACE: str(tmp_path / "ws")}))
    elsewhere = SimpleNamespace(info=SimpleNamespace(run_id="r"),
                                data=SimpleNamespace(tags={TAG_WORKSPACE: "/no/such/workspace"}))
    assert point_fid_history(Client(), here, "runs/train", 16) == [(0.064, 438.2), (0.112, 417.8)]
    assert point_fid_history(Client(), elsewhere, "runs/train", 16) == [(0.064, 9.0)]  # MLflow: step 4 x 16 images
