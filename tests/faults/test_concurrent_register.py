"""Two `register` processes at the same time on one MLflow store: the aliases must end consistent, the better FID
holding ``champion`` and the other ``challenger`` (one slow test, marked e2e: two processes import MLflow and log a
pyfunc model each)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ganops.io import write_json
from ganops.tracking import RUN_ID_FILE, configure_mlflow
from tests.unit.test_registry import _write_eval, _write_snapshot

REPO = Path(__file__).resolve().parents[2]
MODEL = "race-gan"

# Each child registers its own run directory once `go` exists. `hold_s` widens the window between reading the
# current champion and setting the alias, so the interleaving "both read, better one writes first" is forced.
_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import ganops.registry as registry
    from ganops.config import RegisterConfig

    real_choose = registry.choose_alias
    def slow_choose(*args, **kwargs):
        out = real_choose(*args, **kwargs)
        time.sleep({hold_s})
        return out
    registry.choose_alias = slow_choose
    import mlflow  # import before the start signal so both processes race on registry calls, not imports
    while not Path("go").exists():
        time.sleep(0.02)
    rec = registry.register(RegisterConfig(model_name={model!r}, out={out!r}), run_dir={run_dir!r},
                            eval_json={eval_json!r})
    print(rec["version"], rec["alias"])
""")


@pytest.mark.e2e
def test_two_concurrent_registrations_leave_the_better_fid_champion(tmp_path, migrated_mlflow_db):
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID")}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        client, exp_id = configure_mlflow("race")
        children = []
        for name, seed, fid, hold_s in (("better", 1, 5.0, 1.0), ("worse", 2, 9.0, 4.0)):
            run_dir = tmp_path / "runs" / name
            run = client.create_run(exp_id)
            client.set_terminated(run.info.run_id, "FINISHED")
            write_json(run_dir / RUN_ID_FILE, {"run_id": run.info.run_id})
            _write_eval(tmp_path / f"eval-{name}.json", fid, _write_snapshot(run_dir, seed))
            script = _CHILD.format(repo=str(REPO), hold_s=hold_s, model=MODEL, out=f"reg-{name}.json",
                                   run_dir=str(run_dir), eval_json=f"eval-{name}.json")
            children.append(subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1.0)
        Path("go").write_text("")
        outs = [c.communicate(timeout=240) for c in children]
        for c, (out, err) in zip(children, outs, strict=True):
            assert c.returncode == 0, err[-3000:]
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert len(versions) == 2
        champion = client.get_model_version_by_alias(MODEL, "champion")
        challenger = client.get_model_version_by_alias(MODEL, "challenger")
        assert float(champion.tags["fid"]) == 5.0
        assert float(challenger.tags["fid"]) == 9.0
    finally:
        os.chdir(cwd)
