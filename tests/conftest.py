"""Session-wide test environment: no telemetry from MLflow / Great Expectations / Prefect.

Set at import time, before any test module imports those libraries. The Prefect test harness (a temporary
server, several seconds to start) is opt-in through the ``prefect_harness`` fixture, started once per session.
"""

from __future__ import annotations

import os

import pytest

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)
# A pipeline run id leaking in from the caller's shell would redirect every test's logging into it.
os.environ.pop("GANOPS_MLFLOW_RUN_ID", None)


@pytest.fixture(autouse=True)
def _isolated_tracking_env(monkeypatch):
    """Each test starts without MLFLOW_TRACKING_URI / GANOPS_MLFLOW_RUN_ID.

    ``mlflow.set_tracking_uri`` also writes ``os.environ["MLFLOW_TRACKING_URI"]``, so one test's store would
    otherwise become every later test's default (and their subprocesses' too).
    """
    for key in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    yield
    for key in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID"):
        os.environ.pop(key, None)


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect server + database for the whole session (only for tests that run flows)."""
    from prefect.testing.utilities import prefect_test_harness

    # A fresh server migrates its database first: well over Prefect's 30 s default on a busy 2-core machine.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory):
    """An empty MLflow SQLite store with its schema already migrated (creating one costs seconds on 2 cores).

    Tests copy it to ``<project>/mlflow.db`` instead of letting each test run the migrations again.
    """
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
    return path


@pytest.fixture()
def mlflow_project(tmp_path, monkeypatch, migrated_mlflow_db):
    """cwd = an empty project root holding a migrated ``mlflow.db``; active MLflow runs are ended afterwards."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
