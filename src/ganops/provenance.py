"""Provenance of a registered model: git commit, DVC data version (from ``dvc.lock``) and dataset content hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganops.io import read_json


def git_commit(cwd: str | Path = ".") -> str:
    """``git rev-parse HEAD`` in ``cwd`` (suffix ``-dirty`` when tracked files differ), or ``unknown`` when ``cwd``
    is no git checkout or git fails (never raises)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def dvc_out_md5(lock_path: str | Path, out_path: str | Path) -> str | None:
    """The md5 DVC recorded for output ``out_path`` in ``dvc.lock`` (a directory's ends in ``.dir``), or None.

    This is the DVC data version: ``dvc checkout`` / ``dvc pull`` of that lock restores exactly this content.
    ``dvc.lock`` is read as YAML; a trailing ``/`` on either path is ignored.

    Raises:
        yaml.YAMLError: ``lock_path`` is not valid YAML.
    """
    import yaml

    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return None
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
    want = Path(out_path).as_posix().rstrip("/")
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if Path(str(out.get("path", ""))).as_posix().rstrip("/") == want and out.get("md5"):
                return str(out["md5"])
    return None


def dataset_sha256(ev: dict[str, Any], train_summary: dict[str, Any], options: dict[str, Any]) -> str | None:
    """Content hash of the prepared data G was trained on, or None when nothing records it.

    Args:
        ev: the evaluation; ``train_summary``: the run's ``train.json``; ``options``: its ``training_options.json``.

    Returns:
        The first ``dataset_sha256`` found in ``ev``, ``train_summary``, ``options``, else in the ``summary.json``
        of ``options["prepared_dir"]`` (relative to the working directory).
    """
    for src in (ev, train_summary, options):
        if src.get("dataset_sha256"):
            return str(src["dataset_sha256"])
    if not options.get("prepared_dir"):
        return None
    summary = Path(str(options["prepared_dir"])) / "summary.json"
    sha = read_json(summary).get("dataset_sha256") if summary.is_file() else None
    return str(sha) if sha else None


__all__ = ["dataset_sha256", "dvc_out_md5", "git_commit"]
