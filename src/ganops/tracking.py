"""Experiment tracking behind a small protocol, so the training loop knows nothing about MLflow.

``Logger`` is what library code (the training loop, evaluate) receives. ``NullLogger`` does nothing (tests, dry
runs). The MLflow implementation lives here too and is the only place that imports ``mlflow`` for logging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    """What the training loop and the stages may report. Step is the training step (G updates)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullLogger:
    """A Logger that drops everything."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass
