"""The run directory of the train stage: its file names and the one reader of ``stats.jsonl``.

Every stage, flow and benchmark that reads or writes a run directory names its files through :class:`RunDir`, so a
file name is defined once. The files (written by ``ganops.training.loop``; see its module docstring for contents):

    training_options.json       resolved train config + derived values
    stats.jsonl                 one JSON object per logged step, sample interval or in-training evaluation
    fakes{kimg:06d}.png         G_ema sample grids; fakes-latest.png the newest one
    training-state.pt           everything for an exact resume
    network-snapshot.pt         G_ema (best by in-training FID when that runs, else latest)
    network-snapshot-latest.pt  G_ema at the latest checkpoint
    train.json                  the training summary
    loss.csv, fid.csv           stats.jsonl exported for DVC plots (``ganops.rundir.export``)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunDir:
    """A train-stage run directory (it need not exist yet).

    Args:
        path: the directory (``train.run_dir`` of params.yaml), relative or absolute.
    """

    path: Path

    OPTIONS = "training_options.json"
    STATS = "stats.jsonl"
    STATE = "training-state.pt"
    SNAPSHOT = "network-snapshot.pt"
    SNAPSHOT_LATEST = "network-snapshot-latest.pt"
    SUMMARY = "train.json"
    FAKES_LATEST = "fakes-latest.png"
    LOSS_CSV = "loss.csv"
    FID_CSV = "fid.csv"
    # What the training loop writes; ``discard_training_outputs`` deletes these (tracker files stay).
    TRAINING_OUTPUTS = (STATE, STATS, SUMMARY, "network-snapshot*.pt", "fakes*.png")

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def options(self) -> Path:
        return self.path / self.OPTIONS

    @property
    def stats(self) -> Path:
        return self.path / self.STATS

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def snapshot(self) -> Path:
        return self.path / self.SNAPSHOT

    @property
    def snapshot_latest(self) -> Path:
        return self.path / self.SNAPSHOT_LATEST

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def fakes_latest(self) -> Path:
        return self.path / self.FAKES_LATEST

    def fakes(self, kimg: int) -> Path:
        """The sample grid written at ``kimg`` (thousands of images shown to D, an int >= 0)."""
        return self.path / f"fakes{kimg:06d}.png"

    def read_json(self, name: str) -> dict[str, Any]:
        """``<path>/<name>`` parsed as a JSON object; ``{}`` when the file is absent.

        Raises:
            ValueError: the file is not a JSON object (names the file; re-run the train stage to rewrite it).
        """
        p = self.path / name
        if not p.is_file():
            return {}
        try:
            obj = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON ({err}); re-run the train stage to rewrite it") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p} must hold a JSON object; re-run the train stage to rewrite it")
        return obj

    def iter_stats(self, key: str | None = None) -> Iterator[dict[str, Any]]:
        """The entries of ``stats.jsonl`` in file order, as dicts; only those holding ``key`` when given.

        Lines that are blank, torn by a kill, or not a JSON object are skipped (training drops them on resume).
        Yields nothing when the file is absent.
        """
        if not self.stats.is_file():
            return
        with open(self.stats) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and (key is None or key in entry):
                    yield entry

    def read_stats(self, key: str | None = None) -> list[dict[str, Any]]:
        """:meth:`iter_stats` as a list."""
        return list(self.iter_stats(key))

    def discard_training_outputs(self) -> None:
        """Delete what the training loop writes (``TRAINING_OUTPUTS``); other files (e.g. a tracker's) stay."""
        for pattern in self.TRAINING_OUTPUTS:
            for p in self.path.glob(pattern):
                p.unlink()


__all__ = ["RunDir"]
