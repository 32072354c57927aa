"""MLflow model registry: log G_ema as a pyfunc model, register it once per snapshot, alias it by FID.

Policy (the ``register`` stage):

- Refuse (raise :class:`RegistrationError`) when ``eval.json`` is missing or its FID is not finite, when it scores
  another snapshot than the one in the run directory, or when the training run is marked failed.
- Idempotent: the snapshot's content SHA-256 is a version tag; a snapshot already registered under
  ``cfg.model_name`` is returned as it is, never registered twice.
- Alias ``champion`` when there is no champion yet or the new FID is strictly lower than the champion's (its
  version tag ``fid``, else its run's ``fid`` metric) *measured the same way* (same protocol, number of samples
  and dataset); otherwise ``challenger``. FIDs from different protocols or sample counts are not comparable
  (FID is biased in the sample count: Chong & Forsyth, "Effectively Unbiased FID", CVPR 2020), so such a model
  never silently replaces a champion. A champion displaced by a better version becomes ``challenger``. The
  read-decide-write of the aliases holds an inter-process lock (:func:`_alias_lock`), so concurrent registrations
  end consistent: the best comparable FID holds ``champion``.

Each version carries a model card: a Markdown description (see :func:`ganops.model_card.model_card`; the MLflow UI renders it on the
version page) and tags. Both hold FID/KID with protocol and sample counts, dataset sha256, git commit, DVC data
version (md5 of the prepared directory in ``dvc.lock``), training wall time, architecture and loss. The sample grid
is logged with the model and as run artifact ``model_card/samples-<snapshot sha256[:12]>.png``, which the
description shows inline and links.

MLflow 3 API: ``log_model(name=...)`` creates a LoggedModel, ``register_model`` a version, aliases replace stages.
"""

from __future__ import annotations

import contextlib
import json
import math
import logging
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ganops.config import RegisterConfig
from ganops.io import read_json, sha256_file, write_json
from ganops.model_card import model_card, model_signature
from ganops.provenance import dataset_sha256, dvc_out_md5, git_commit
from ganops.rundir import RunDir
from ganops.tracking import STATUS_TAG, read_run_id, tracking_uri

log = logging.getLogger(__name__)

GRID_ARTIFACT_DIR = "model_card"  # run artifact folder of the sample grids linked from model cards
MODEL_CODE_FILE = Path(__file__).with_name("_mlflow_model_code.py")
# What the pyfunc needs at load time; versions are read from this environment without local tags ("+cpu"),
# which MLflow's own inference would keep and which pip cannot resolve from PyPI.
RUNTIME_DISTRIBUTIONS = ("mlflow", "torch", "numpy", "pandas", "scipy", "pydantic", "pyyaml")
# Version tags that must agree for two FIDs to be compared.
COMPARABLE_TAGS = ("protocol", "num_samples", "dataset_sha256")


class RegistrationError(RuntimeError):
    """The model must not be registered (missing/non-finite evaluation, stale evaluation, failed training run)."""


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def read_evaluation(eval_json: str | Path) -> dict[str, Any]:
    """Read ``metrics/eval.json`` and check that it can justify a registration.

    Raises:
        RegistrationError: the file is missing or not JSON, or ``fid`` is missing or not a finite number.
    """
    path = Path(eval_json)
    if not path.is_file():
        raise RegistrationError(f"evaluation file {path} not found: run `ganops evaluate` (or `dvc repro evaluate`) "
                                "before registering")
    try:
        ev = read_json(path)
    except json.JSONDecodeError as err:
        raise RegistrationError(f"evaluation file {path} is not valid JSON ({err}); re-run `ganops evaluate`") from None
    fid = ev.get("fid") if isinstance(ev, dict) else None
    if not isinstance(fid, (int, float)) or isinstance(fid, bool) or not math.isfinite(fid):
        raise RegistrationError(f"FID in {path} is {fid!r}, not a finite number: the generator is not registered "
                                "(check the training run for divergence)")
    return ev


def pip_requirements() -> list[str]:
    """Exact pins of :data:`RUNTIME_DISTRIBUTIONS` from the current environment, local version labels stripped."""
    reqs = []
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def _check_training_run(client: Any, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:  # e.g. the tracking store was reset after training; train.json still proves success
        log.warning("training run %s is not in the tracking store; cannot check its status", run_id)
        return
    failed_tag = run.data.tags.get(STATUS_TAG.format(stage="train")) == "failed"
    if run.info.status == "FAILED" or failed_tag:
        raise RegistrationError(f"MLflow run {run_id} is marked failed (status {run.info.status}, "
                                f"{STATUS_TAG.format(stage='train')}={run.data.tags.get(STATUS_TAG.format(stage='train'))}); "
                                "re-run training before registering")


# ---------------------------------------------------------------------------------------------------------------
# Registry queries
# ---------------------------------------------------------------------------------------------------------------


def find_version_by_snapshot(client: Any, model_name: str, snapshot_sha256: str) -> Any | None:
    """The model version of ``model_name`` tagged with ``snapshot_sha256``, or None."""
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        if mv.tags.get("snapshot_sha256") == snapshot_sha256:
            return mv
    return None


def _champion(client: Any, model_name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        return None


def _version_fid(client: Any, mv: Any) -> float | None:
    raw = mv.tags.get("fid")
    if raw is None and mv.run_id:
        raw = client.get_run(mv.run_id).data.metrics.get("fid")
    try:
        fid = float(raw)
    except (TypeError, ValueError):
        return None
    return fid if math.isfinite(fid) else None


def choose_alias(new_fid: float, new_tags: dict[str, str], champion_fid: float | None,
                 champion_tags: dict[str, str] | None) -> tuple[str, str]:
    """``("champion" | "challenger", reason)`` for a new version (lower FID is better).

    A champion without a readable FID is replaced; one measured differently (any of :data:`COMPARABLE_TAGS`
    differs) is kept and the new version becomes ``challenger``.
    """
    if champion_tags is None:
        return "champion", "no champion yet"
    if champion_fid is None:
        return "champion", "current champion has no finite FID"
    differs = [k for k in COMPARABLE_TAGS if champion_tags.get(k) != new_tags.get(k)]
    if differs:
        return "challenger", f"FID not comparable with the champion's (different {', '.join(differs)})"
    if new_fid < champion_fid:
        return "champion", f"FID {new_fid:.4f} < champion's {champion_fid:.4f}"
    return "challenger", f"FID {new_fid:.4f} >= champion's {champion_fid:.4f}"


# ---------------------------------------------------------------------------------------------------------------
# Logging the model
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active fluent run for ``log_model`` unless it already is."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    if active is not None:
        raise RegistrationError(f"another MLflow run ({active.info.run_id}) is active; expected {run_id}")
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()  # keep the run's status as the training left it: FINISHED


def _resolve_run(run_dir: Path, run_id: str | None) -> tuple[Any, str]:
    import mlflow
    from mlflow import MlflowClient

    active = mlflow.active_run()
    if active is None:  # called outside stage_logger: use the project store and the training run
        uri = tracking_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    client = MlflowClient()
    run_id = run_id or (active.info.run_id if active else None) or read_run_id(run_dir)
    if run_id is None:
        raise RegistrationError(f"no MLflow run to attach the model to: {run_dir}/mlflow_run.json is missing and no "
                                "run is active; run the train stage through `ganops train` or `dvc repro`")
    return client, run_id


def register(cfg: RegisterConfig, *, run_dir: str | Path, eval_json: str | Path,
             run_id: str | None = None) -> dict[str, Any]:
    """Log G_ema from ``<run_dir>/network-snapshot.pt`` as an MLflow pyfunc model and register it.

    Args:
        cfg: ``register`` section (model name, output report path).
        run_dir: training run directory (``network-snapshot.pt``, ``train.json``, ``training_options.json``,
            ``mlflow_run.json``).
        eval_json: ``metrics/eval.json`` written by the evaluate stage for this snapshot.
        run_id: MLflow run to log the model into; default the active run, else the one in ``mlflow_run.json``.

    Returns:
        The registration record, also written to ``cfg.out``: ``model_name, version, alias, reason, run_id, fid,
        kid, model_uri (models:/<name>/<version>), logged_model_uri, snapshot_sha256, newly_registered``.

    Raises:
        RegistrationError: see the module docstring (nothing is registered).
        FileNotFoundError: the snapshot is missing.
    """
    run_dir = Path(run_dir)
    ev = read_evaluation(eval_json)
    snapshot = RunDir(run_dir).snapshot
    if not snapshot.is_file():
        raise FileNotFoundError(f"generator snapshot {snapshot} not found: run the train stage first")
    snapshot_sha = sha256_file(snapshot)
    if ev.get("snapshot_sha256") not in (None, snapshot_sha):
        raise RegistrationError(f"{eval_json} scores snapshot {str(ev['snapshot_sha256'])[:12]} but {snapshot} is "
                                f"{snapshot_sha[:12]}: re-run `ganops evaluate`")
    client, run_id = _resolve_run(run_dir, run_id)
    for rid in {run_id, read_run_id(run_dir)} - {None}:
        _check_training_run(client, rid)

    existing = find_version_by_snapshot(client, cfg.model_name, snapshot_sha)
    if existing is not None:
        # search_model_versions leaves ``aliases`` empty; the single-version read fills it.
        existing = client.get_model_version(cfg.model_name, existing.version)
        alias = next(iter(existing.aliases), None) if existing.aliases else None
        record = _record(cfg, existing, alias, "snapshot already registered", ev, snapshot_sha, None, False)
        write_json(cfg.out, record)
        return record
    _check_writable(cfg.out)  # fail before registering anything when the report cannot be written
    displaced = _champion(client, cfg.model_name)
    record = _log_and_register(cfg, client, run_id, run_dir, snapshot, snapshot_sha, ev)
    try:
        write_json(cfg.out, record)
    except OSError:
        _unregister(client, cfg.model_name, record["version"], displaced)
        raise
    return record


def _check_writable(path: str | Path) -> None:
    """Create and remove a probe file beside ``path``. Raises OutputWriteError (naming ``path``) when impossible."""
    from ganops.io import atomic_write

    probe = Path(path).with_name(f".{Path(path).name}.probe")
    with atomic_write(probe, "w") as f:
        f.write("")
    probe.unlink(missing_ok=True)


def _unregister(client: Any, model_name: str, version: int, displaced: Any | None) -> None:
    """Undo a registration whose report could not be written: delete the new version, give the champion alias
    back to the version that held it. Best effort: a failure here is logged, the original error is what is raised."""
    try:
        client.delete_model_version(model_name, str(version))
        if displaced is not None:
            client.set_registered_model_alias(model_name, "champion", displaced.version)
        log.warning("%s version %s was unregistered again: its registration report could not be written",
                    model_name, version)
    except Exception as err:  # noqa: BLE001 - keep the write error as the one the user sees
        log.error("could not undo the registration of %s version %s (%s); delete it in the MLflow UI",
                  model_name, version, err)


def _log_and_register(cfg: RegisterConfig, client: Any, run_id: str, run_dir: Path, snapshot: Path,
                      snapshot_sha: str, ev: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    import ganops
    from ganops.training.snapshot import load_generator

    _, meta = load_generator(snapshot, device="cpu")
    run = RunDir(run_dir)
    options, train_summary = run.read_json(RunDir.OPTIONS), run.read_json(RunDir.SUMMARY)
    dataset_sha = dataset_sha256(ev, train_summary, options) or client.get_run(run_id).data.params.get(
        "dataset_sha256", "unknown")
    tags = {
        "fid": repr(float(ev["fid"])), "kid": repr(float(ev.get("kid_mean", float("nan")))),
        "protocol": str(ev.get("protocol", "unknown")), "num_samples": str(ev.get("num_generated", "unknown")),
        "dataset_sha256": str(dataset_sha), "snapshot_sha256": snapshot_sha,
        "arch": str(meta.get("arch", options.get("arch", "unknown"))),
        "loss": str(options.get("loss", meta.get("loss", "unknown"))), "kimg": str(meta.get("kimg", "")),
        "train_wall_time_s": f"{float(train_summary.get('wall_time_s') or 'nan'):.1f}",
        "git_commit": git_commit(),
        "dvc_data_md5": str(dvc_out_md5("dvc.lock", options.get("prepared_dir") or "data/prepared") or "unknown"),
        "num_classes": str(int(meta.get("num_classes", 0) or 0)),
    }
    for key, src in (("kid_std", "kid_std"), ("num_real", "num_real"), ("inception_sha256", "weights_sha256")):
        if ev.get(src) is not None:
            tags[key] = repr(float(ev[src])) if key == "kid_std" else str(ev[src])
    artifacts = {"snapshot": str(snapshot)}
    grid = run.fakes_latest
    grid_artifact = None
    if grid.is_file():  # the model version carries its own samples (shown under the model's artifacts)
        artifacts["sample_grid"] = str(grid)
        grid_artifact = _log_grid_to_run(client, run_id, grid, snapshot_sha)
        tags["sample_grid_run_artifact"] = grid_artifact
    signature, example = model_signature(meta)
    with _active_run(run_id):
        info = mlflow.pyfunc.log_model(
            name="generator", python_model=str(MODEL_CODE_FILE), artifacts=artifacts,
            code_paths=[str(Path(ganops.__file__).parent)], pip_requirements=pip_requirements(),
            signature=signature, input_example=example, tags={"snapshot_sha256": snapshot_sha},
        )
    if grid.is_file():
        # A plain artifact URI (file://, s3://...): downloadable and clickable, unlike a models:/m-<id> path.
        root = mlflow.get_logged_model(info.model_id).artifact_location.rstrip("/")
        tags["sample_grid"] = f"{root}/artifacts/{grid.name}"
    mv = mlflow.register_model(info.model_uri, cfg.model_name, tags=tags)
    card = model_card(cfg.model_name, str(mv.version), meta, ev, tags, client.get_run(run_id), grid_artifact)
    client.update_model_version(cfg.model_name, mv.version, description=card)
    # Read the champion, decide and move the aliases as one critical section: two registrations at once must not
    # both see "no champion" and both claim it.
    with _alias_lock(client.tracking_uri):
        champion = _champion(client, cfg.model_name)
        alias, reason = choose_alias(float(ev["fid"]), tags, _version_fid(client, champion) if champion else None,
                                     dict(champion.tags) if champion else None)
        client.set_registered_model_alias(cfg.model_name, alias, mv.version)
        if alias == "champion" and champion is not None and str(champion.version) != str(mv.version):
            # The displaced champion stays reachable as the runner-up.
            client.set_registered_model_alias(cfg.model_name, "challenger", champion.version)
    log.info("registered %s version %s as @%s (%s)", cfg.model_name, mv.version, alias, reason)
    return _record(cfg, mv, alias, reason, ev, snapshot_sha, info.model_uri, True, run_id)


def _log_grid_to_run(client: Any, run_id: str, grid: Path, snapshot_sha: str) -> str:
    """Log the sample grid as run artifact ``model_card/samples-<snapshot sha256[:12]>.png``; return that path.

    The model card links and shows it (the MLflow server serves run artifacts at ``get-artifact``); one file per
    registered snapshot, so a run that registers several snapshots keeps each one's grid.
    """
    import shutil
    import tempfile

    name = f"samples-{snapshot_sha[:12]}.png"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(grid, Path(tmp) / name)
        client.log_artifact(run_id, str(Path(tmp) / name), GRID_ARTIFACT_DIR)
    return f"{GRID_ARTIFACT_DIR}/{name}"


@contextlib.contextmanager
def _alias_lock(uri: str) -> Iterator[None]:
    """An exclusive inter-process lock around alias decisions for one tracking store.

    For a SQLite store the lock file sits beside the database, so every process using that store shares it. For a
    remote tracking server it is a per-host lock file (keyed by the URI): registrations from several machines at
    the same instant are not serialised by it.
    """
    import fcntl
    import hashlib
    import tempfile

    if uri.startswith("sqlite:///"):
        lock_path = Path(uri[len("sqlite:///"):] + ".ganops-alias.lock")
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / f"ganops-alias-{digest}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _record(cfg: RegisterConfig, mv: Any, alias: str | None, reason: str, ev: dict[str, Any], snapshot_sha: str,
            logged_model_uri: str | None, new: bool, run_id: str | None = None) -> dict[str, Any]:
    return {
        "model_name": cfg.model_name, "version": int(mv.version), "alias": alias, "reason": reason,
        "run_id": run_id or mv.run_id, "fid": float(ev["fid"]), "kid": ev.get("kid_mean"),
        "model_uri": f"models:/{cfg.model_name}/{mv.version}", "logged_model_uri": logged_model_uri or mv.source,
        "snapshot_sha256": snapshot_sha, "newly_registered": new,
    }
