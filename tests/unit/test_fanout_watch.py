"""flows/fanout.py against fake Prefect and MLflow clients: successive halving cancels the worse running point
(Cancelling, noted "stopped early"), a RUNNING point without heartbeats is set Crashed, and the results take their
status from the final states, ending the MLflow runs of points that did not complete. (The real servers and workers
run in tests/e2e/test_sweep_fanout.py.)"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ganops.config import load_params
from ganops.sweep import PointResult
from ganops.sweep_fanout import TAG_POINT, TAG_RESULT, result_tag

REPO = Path(__file__).resolve().parents[2]


def _ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)


def _load_fanout(monkeypatch):
    spec = importlib.util.spec_from_file_location("ganops_flows_fanout", REPO / "flows" / "fanout.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    return module


class FakeState:
    def __init__(self, type_: str, age_s: float = 0.0, message: str = "") -> None:
        self.type = SimpleNamespace(value=type_)
        self.message, self.timestamp = message, _ago(age_s)

    def is_final(self) -> bool:
        return self.type.value in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    def is_running(self) -> bool:
        return self.type.value == "RUNNING"

    def is_pending(self) -> bool:
        return self.type.value == "PENDING"


class FakePrefect:
    """Flow runs whose states follow a script, one entry per poll; records the states the sweep sets."""

    def __init__(self, script: dict[str, list[str]], started_ago_s: dict[str, float]) -> None:
        self.script, self.started_ago_s, self.polls, self.set = script, started_ago_s, {}, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_flow_run(self, fr_id):
        i = self.polls.get(fr_id, 0)
        self.polls[fr_id] = i + 1
        forced = [s for f, s in self.set if f == fr_id]
        type_ = {"Cancelling": "CANCELLED", "Crashed": "CRASHED"}[forced[-1].name] if forced and i > 0 else \
            self.script[fr_id][min(i, len(self.script[fr_id]) - 1)]
        return SimpleNamespace(id=fr_id, state=FakeState(type_), end_time=None,
                               start_time=_ago(self.started_ago_s[fr_id]))

    def read_events(self, filter, limit):  # no heartbeats at all
        return SimpleNamespace(events=[])

    def set_flow_run_state(self, fr_id, state, force):
        assert force
        self.set.append((fr_id, state))


class FakeMlflow:
    def __init__(self, fids: dict[str, list[tuple[int, float]]], tags: dict[str, dict[str, str]]) -> None:
        self.fids, self.tags, self.terminated = fids, tags, []

    def search_runs(self, experiment_ids, filter_string, order_by, max_results):
        return [SimpleNamespace(info=SimpleNamespace(run_id=f"run-{n}", status="RUNNING"),
                                data=SimpleNamespace(tags={TAG_POINT: n, **self.tags.get(n, {})})) for n in self.fids]

    def get_metric_history(self, run_id, key):
        assert key == "metric/fid"
        return [SimpleNamespace(step=s, value=v) for s, v in self.fids[run_id.removeprefix("run-")]]

    def set_terminated(self, run_id, status):
        self.terminated.append((run_id, status))


def test_halving_cancels_the_worse_point_and_a_silent_point_is_crashed(monkeypatch):
    fanout = _load_fanout(monkeypatch)
    params = load_params(REPO / "params.yaml")  # batch_size 64: step 2 = 0.128 kimg
    runs = {"a": "fr-a", "b": "fr-b", "c": "fr-c"}
    prefect = FakePrefect({"fr-a": ["RUNNING", "COMPLETED"], "fr-b": ["RUNNING", "RUNNING"],
                           "fr-c": ["RUNNING"]}, {"fr-a": 10, "fr-b": 10, "fr-c": 500})
    monkeypatch.setattr(fanout, "get_client", lambda sync_client: prefect)
    ml = FakeMlflow({"a": [(2, 100.0)], "b": [(2, 150.0)], "c": []},
                    {"a": {TAG_RESULT: result_tag(PointResult("a", {}, ok=True, fid=90.0))}})
    logged: list[str] = []

    states = fanout.watch_points(runs, {n: params for n in runs}, ml, "1", "s", logged.append, rungs_kimg=[0.1],
                                 eta=2, stale_after_s=300)

    assert {n: s["state"] for n, s in states.items()} == {"a": "COMPLETED", "b": "CANCELLED", "c": "CRASHED"}
    assert states["b"]["note"] == "stopped early at 0.1 kimg (FID 150)"
    assert states["c"]["note"] == "no heartbeat for 300 s: worker lost"
    assert [(f, s.name) for f, s in prefect.set] == [("fr-c", "Crashed"), ("fr-b", "Cancelling")]

    results = fanout.collect_results(runs, states, {n: {} for n in runs}, ml, "1", "s")
    assert [(r.name, r.status, r.ok) for r in results] == [("a", "ok", True), ("b", "stopped", False),
                                                           ("c", "crashed", False)]
    assert results[0].fid == 90.0 and results[1].note.startswith("stopped early")
    assert ml.terminated == [("run-b", "KILLED"), ("run-c", "KILLED")]


def test_nested_overrides_for_the_deployment_schema(monkeypatch):
    fanout = _load_fanout(monkeypatch)
    assert fanout.nested({"train.lr_g": 1e-4, "train.loss": "hinge", "seed": 1}) == {
        "train": {"lr_g": 1e-4, "loss": "hinge"}, "seed": 1}


@pytest.mark.parametrize("state, age_s, lost", [("PENDING", 400, True), ("PENDING", 10, False),
                                                ("SCHEDULED", 4000, False)])
def test_lost_reason_for_runs_that_never_started(monkeypatch, state, age_s, lost):
    fanout = _load_fanout(monkeypatch)
    fr = SimpleNamespace(id="x", state=FakeState(state, age_s), start_time=None)
    assert (fanout.lost_reason(FakePrefect({}, {}), fr, 300) is not None) == lost
