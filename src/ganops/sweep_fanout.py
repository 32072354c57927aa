"""Sweep points that run anywhere: one workspace per point, its MLflow run, and successive halving.

A fanned-out sweep (``flows/sweep.py`` with a deployment, ``flows/sweep_point.py`` on the workers) runs each point
in its own workspace, a ``git clone --shared`` of the worker's checkout (:data:`ENV_CHECKOUT`) at the sweep's base
commit, under :data:`ENV_SWEEP_DIR`. Workspaces share the checkout's DVC cache (so DVC's run-cache restores
``prepare`` / ``validate`` outputs another point already produced) and its DVC remotes. Each point logs into one
MLflow run tagged with the sweep and the point (:data:`TAG_SWEEP`, :data:`TAG_POINT`); its outcome is stored on that
run as JSON (:data:`TAG_RESULT`), so the sweep reads every result from the tracking store, whichever machine ran
the point. :func:`halving_stops` is the asynchronous successive-halving rule applied to in-training FIDs
(:func:`point_fid_history`).

Git and DVC run in child processes (``python -m dvc``); this module imports neither DVC nor Prefect.
"""

from __future__ import annotations

import configparser
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ganops.sweep import PointResult

ENV_CHECKOUT = "GANOPS_CHECKOUT"
ENV_SWEEP_DIR = "GANOPS_SWEEP_DIR"
TAG_SWEEP, TAG_POINT, TAG_RESULT = "ganops.sweep", "ganops.dvc_exp", "ganops.sweep.result"
TAG_WORKSPACE, TAG_FLOW_RUN = "ganops.sweep.workspace", "prefect.flow_run_id"
RESULT_ERROR_CHARS = 1500  # MLflow tag values hold at most 8000 characters


def checkout_dir(default: Path) -> Path:
    """The checkout workspaces are cloned from: ``$GANOPS_CHECKOUT`` when set, else ``default`` (resolved)."""
    value = os.environ.get(ENV_CHECKOUT, "").strip()
    return Path(value).expanduser().resolve() if value else Path(default).resolve()


def sweep_root(checkout: Path) -> Path:
    """Where point workspaces go: ``$GANOPS_SWEEP_DIR``, else ``<checkout>-sweeps`` next to the checkout (outside
    it, so the checkout's git and DVC never see the workspaces)."""
    value = os.environ.get(ENV_SWEEP_DIR, "").strip()
    return Path(value).expanduser().resolve() if value else checkout.parent / f"{checkout.name}-sweeps"


def head_commit(project: Path) -> str:
    """``git rev-parse HEAD`` in ``project``.

    Raises:
        ValueError: ``project`` is not a git repository with a commit.
    """
    proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{project} is not a git repository with a commit: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def _dvc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _relative_remotes(checkout: Path) -> dict[str, str]:
    """Remotes of the checkout's DVC config whose URL is a relative local path, made absolute (DVC reads them
    relative to the ``.dvc`` folder, which differs in a workspace)."""
    out: dict[str, str] = {}
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(checkout / ".dvc" / name)
        except configparser.Error:
            continue
        for section in parser.sections():
            url = parser[section].get("url", "")
            if section.startswith("'remote \"") or section.startswith('remote "'):
                remote = section.split('"')[1]
                if url and "://" not in url and not Path(url).is_absolute():
                    out[remote] = str((checkout / ".dvc" / url).resolve())
    return out


def make_workspace(checkout: Path, workspace: Path, commit: str) -> Path:
    """A fresh workspace for one point: ``git clone --shared`` of ``checkout`` at ``commit`` (detached) that uses
    the checkout's DVC cache (``dvc cache dir --local``) and its remotes (relative local URLs made absolute).

    A leftover workspace at the same path (a point retried after its worker died) is removed first.

    Returns:
        ``workspace``.

    Raises:
        RuntimeError: a git or DVC command failed, e.g. ``commit`` is not in ``checkout`` (fetch it there first).
    """
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    _git(["clone", "--quiet", "--shared", "--no-checkout", str(checkout), str(workspace)], workspace.parent)
    _git(["checkout", "--quiet", "--detach", commit], workspace)
    cache = _dvc(["cache", "dir"], checkout)
    if cache.returncode != 0:
        raise RuntimeError(f"dvc cache dir in {checkout} exited {cache.returncode}: {cache.stderr[-2000:]}")
    steps = [["cache", "dir", "--local", cache.stdout.strip()]]
    steps += [["remote", "modify", "--local", name, "url", url] for name, url in _relative_remotes(checkout).items()]
    for args in steps:
        proc = _dvc(args, workspace)
        if proc.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)} in {workspace} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return workspace


def has_default_remote(workspace: Path) -> bool:
    """True when ``dvc remote default`` names a remote in ``workspace``."""
    proc = _dvc(["remote", "default"], workspace)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def push_experiment(workspace: Path, name: str, env: dict[str, str]) -> str | None:
    """``dvc exp push origin <name>``: the experiment's git refs into the checkout the workspace was cloned from,
    its outputs into the default DVC remote (when one is configured). Returns None, or DVC's error output."""
    args = ["exp", "push", "origin", name] + ([] if has_default_remote(workspace) else ["--no-cache"])
    proc = _dvc(args, workspace, env)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr)[-RESULT_ERROR_CHARS:]


def result_tag(result: PointResult) -> str:
    """``result`` as the JSON stored in :data:`TAG_RESULT` (the error's tail shortened to fit a tag)."""
    data = asdict(result)
    if data.get("error"):
        data["error"] = data["error"][-RESULT_ERROR_CHARS:]
    return json.dumps(data, default=str)


def result_from_tag(value: str) -> PointResult:
    """The :class:`PointResult` stored by :func:`result_tag`; raises ValueError on malformed JSON."""
    data = json.loads(value)
    fields = PointResult.__dataclass_fields__
    return PointResult(**{k: v for k, v in data.items() if k in fields})


def point_runs(client: Any, experiment_id: str, sweep_id: str) -> dict[str, Any]:
    """The MLflow runs of a sweep's points by point name (the newest run per point)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return {r.data.tags[TAG_POINT]: r for r in runs if TAG_POINT in r.data.tags}


def fid_history(client: Any, run_id: str, batch_size: int) -> list[tuple[float, float]]:
    """In-training FIDs of a run as ``[(kimg, fid), ...]`` in step order, from the MLflow metric ``metric/fid``
    (logged at training step ``s``: ``kimg = s * batch_size / 1000``)."""
    history = client.get_metric_history(run_id, "metric/fid")
    return [(m.step * batch_size / 1000, float(m.value)) for m in sorted(history, key=lambda m: m.step)]


def point_fid_history(client: Any, run: Any, train_run_dir: str, batch_size: int) -> list[tuple[float, float]]:
    """In-training FIDs of a point as ``[(kimg, fid), ...]``.

    Read from ``<workspace>/<train_run_dir>/stats.jsonl`` (written at each evaluation) when the point's workspace
    (tag :data:`TAG_WORKSPACE` of its MLflow ``run``) is on this machine, else from MLflow (:func:`fid_history`),
    where they can arrive minutes late: the train stage sends metrics in batches.
    """
    from ganops.rundir import RunDir

    workspace = run.data.tags.get(TAG_WORKSPACE)
    run_dir = Path(workspace) / train_run_dir if workspace else None
    if run_dir is not None and run_dir.is_dir():
        return [(float(e["kimg"]), float(e["metric/fid"])) for e in RunDir(run_dir).read_stats("metric/fid")]
    return fid_history(client, run.info.run_id, batch_size)


@dataclass(frozen=True)
class HalvingStop:
    """A point stopped at a rung: its FID there (unitless) and the rung's length in kimg."""

    name: str
    rung_kimg: float
    fid: float


def rung_value(history: list[tuple[float, float]], rung_kimg: float) -> float | None:
    """The first FID at or after ``rung_kimg`` (None before the point gets there); NaN counts as infinitely bad."""
    for kimg, fid in history:
        if kimg >= rung_kimg - 1e-9:
            return fid if math.isfinite(fid) else math.inf
    return None


def halving_stops(histories: dict[str, list[tuple[float, float]]], rungs_kimg: list[float], eta: int,
                  judged: dict[float, dict[str, float]], running: set[str]) -> list[HalvingStop]:
    """Asynchronous successive halving: which running points to stop now.

    Each point is judged once per rung, when its FID there is first seen: it goes on when that FID ranks within
    the best ``ceil(n / eta)`` of the ``n`` FIDs recorded at the rung so far (itself and the points that arrived in
    the same call included), else it stops. The first point at a rung always goes on; points that are not
    ``running`` are recorded but never stopped.

    Args:
        histories: ``{point: [(kimg, fid), ...]}`` (see :func:`fid_history`).
        rungs_kimg: the rungs, in kimg (ascending).
        eta: keep 1 in ``eta`` (>= 2).
        judged: ``{rung: {point: fid}}``, updated in place; pass the same dict on every call.
        running: the points that can still be stopped.

    Returns:
        The points to stop, each at the first rung it fails.

    Raises:
        ValueError: ``eta`` < 2.
    """
    if eta < 2:
        raise ValueError(f"halving eta must be >= 2, got {eta}")
    stops: list[HalvingStop] = []
    stopped: set[str] = set()
    for rung in sorted(rungs_kimg):
        seen = judged.setdefault(rung, {})
        arrived = {name: rung_value(history, rung) for name, history in sorted(histories.items())
                   if name not in seen and name not in stopped}
        arrived = {name: value for name, value in arrived.items() if value is not None}
        seen.update(arrived)
        ranking = sorted(seen.values())
        keep = math.ceil(len(seen) / eta)
        for name, value in arrived.items():
            if ranking.index(value) >= keep and name in running:
                stops.append(HalvingStop(name, rung, value))
                stopped.add(name)
    return stops


__all__ = ["ENV_CHECKOUT", "ENV_SWEEP_DIR", "TAG_FLOW_RUN", "TAG_POINT", "TAG_RESULT", "TAG_SWEEP", "TAG_WORKSPACE",
           "HalvingStop", "checkout_dir", "fid_history", "halving_stops", "has_default_remote", "head_commit",
           "make_workspace", "point_fid_history", "point_runs", "push_experiment", "result_from_tag", "result_tag", "rung_value",
           "sweep_root"]
