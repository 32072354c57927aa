"""``stats.jsonl`` of a run directory exported for people and DVC plots: ``loss.csv``, ``fid.csv``, the FID plot.

DVC plots read CSV/JSON/YAML but not JSON Lines, so the train stage writes these files next to ``stats.jsonl``
when it ends (they are ``plots:`` files of ``dvc.yaml``). Entries are read through :meth:`RunDir.iter_stats`
(blank, torn and non-object lines are skipped).
"""

from __future__ import annotations

from pathlib import Path

from ganops.rundir import RunDir

LOSS_CSV = RunDir.LOSS_CSV
LOSS_COLUMNS = ("step", "kimg", "loss_G", "loss_D")
FID_CSV = RunDir.FID_CSV
FID_COLUMNS = ("step", "kimg", "fid", "kid_mean", "kid_std", "num_generated")
FID_PLOT = "fid_over_training.png"


def _export_stats_csv(run_dir: str | Path, name: str, columns: tuple[str, ...], marker: str,
                      rename: dict[str, str] | None = None) -> Path | None:
    """Write ``<run_dir>/<name>`` (CSV, header ``columns``) from the ``stats.jsonl`` entries holding ``marker``.

    ``rename`` maps a CSV column to its key in ``stats.jsonl`` when they differ. Returns None when ``stats.jsonl``
    is absent; otherwise the file is written (atomically), with only the header when no entry matches.
    """
    import csv
    import io

    from ganops.io import atomic_write

    rd = RunDir(run_dir)
    if not rd.stats.is_file():
        return None
    keys = [(rename or {}).get(c, c) for c in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for entry in rd.iter_stats(marker):
        writer.writerow([entry.get(k, "") for k in keys])
    out = rd.path / name
    with atomic_write(out, "w") as f:
        f.write(buf.getvalue())
    return out


def export_loss_csv(run_dir: str | Path) -> Path | None:
    """Write ``<run_dir>/loss.csv`` (columns step, kimg, loss_G, loss_D) from the loss lines of ``stats.jsonl``.

    DVC plots read CSV/JSON/YAML but not JSON Lines; this is a ``plots:`` file of ``dvc.yaml``. Lines without
    ``loss_G`` (sample-interval and evaluation entries) are skipped. Returns None when ``stats.jsonl`` is absent.
    """
    return _export_stats_csv(run_dir, LOSS_CSV, LOSS_COLUMNS, "loss_G")


def export_fid_csv(run_dir: str | Path) -> Path | None:
    """Write ``<run_dir>/fid.csv`` (columns step, kimg, fid, kid_mean, kid_std, num_generated): one row per
    in-training evaluation (``metric/*`` lines of ``stats.jsonl``), the FID-curve file of ``dvc.yaml``'s plots.

    Only the header when in-training evaluation is off (``train.eval_every_kimg: 0``). Returns None when
    ``stats.jsonl`` is absent.
    """
    return _export_stats_csv(run_dir, FID_CSV, FID_COLUMNS, "metric/fid",
                             {c: f"metric/{c}" for c in FID_COLUMNS[2:]})


def plot_fid_over_training(run_dir: str | Path, out: str | Path) -> Path | None:
    """Plot in-training FID (``metric/fid`` lines of ``<run_dir>/stats.jsonl``) against kimg into the PNG ``out``.

    Returns None (and writes nothing) when ``stats.jsonl`` is absent or holds no FID (``train.eval_every_kimg`` 0).
    """
    points = [(e["kimg"], e["metric/fid"]) for e in RunDir(run_dir).iter_stats("metric/fid")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([k for k, _ in points], [f for _, f in points], marker="o")
    ax.set(xlabel="kimg (thousands of real images shown to D)", ylabel="FID (lower is better)",
           title="FID over training (G_ema)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


__all__ = ["FID_COLUMNS", "FID_CSV", "FID_PLOT", "LOSS_COLUMNS", "LOSS_CSV", "export_fid_csv", "export_loss_csv",
           "plot_fid_over_training"]
