"""Time to quality: recipes trained against a wall-clock budget, side by side, each pinned to one CPU core.

Every contender trains for ``--budget-min`` minutes of training wall-clock and keeps a G snapshot at each of
``--points-min``; afterwards each snapshot gets FID under the Lucic et al. 2018 protocol (generated samples vs the
10,000 Fashion-MNIST test images, TF-Inception pool3, ``legacy_tensorflow`` resize; the test statistics are computed
once and cached) and, at each contender's last point, improved precision / recall (Kynkäänniemi et al. 2019) and
density / coverage (Naeem et al. 2020) on the same features, so a recipe that drops modes shows it.

Contenders (``CONTENDERS``): ganops recipes, run through ``ganops.training.loop.training_loop`` with params.yaml's
train section plus the recipe's overrides; and ``reference``, the pytorch/examples-style DCGAN loop of
``benchmarks/reference_dcgan.py`` (raw G, as that example has no EMA). Training wall-clock counts everything the loop
does (data loading, steps, grids, checkpoints) except the benchmark's own snapshot writes.

    .venv/bin/python benchmarks/bench_time_to_quality.py run --contenders default,reference --budget-min 15 \
        --points-min 3.75,7.5,15 --num-samples 10000        # trains both at once (cores 0 and 1), then evaluates
    .venv/bin/python benchmarks/bench_time_to_quality.py evaluate --num-samples 10000   # re-evaluate kept snapshots
    taskset -c 1 .venv/bin/python benchmarks/bench_time_to_quality.py features --contenders default \
        --eval-points-min 15 --range 5000:10000   # one shard of one snapshot's generated features, on core 1
    .venv/bin/python benchmarks/bench_time_to_quality.py report   # re-render table, plot, curves from the JSON

Outputs: under ``--out`` (default ``benchmarks/ttq``, not versioned) the ``<contender>/t<seconds>.pt`` snapshots and
``<contender>/train.json``, so an evaluation can be redone without retraining; the results go to
``benchmarks/ttq_results.json`` and stdout, the table to ``benchmarks/ttq_results.md`` and the plot (FID against
training minutes) to ``benchmarks/ttq.png``, and one curve per contender (columns train_min, kimg, fid)
to ``benchmarks/ttq_curves/<contender>.csv``, the files of the ``time_to_quality`` plot in ``dvc.yaml``
(``dvc plots show``). ``--tag T`` keeps a results set apart (another protocol, or another run of a contender already
in the main set): ``ttq_results_T.json``, ``ttq_results_T.md``, ``ttq_T.png``, ``ttq_curves_T/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine_info import machine  # noqa: E402

# name -> (description, train.* overrides on params.yaml); "reference" is the pytorch/examples loop.
_LR1E3 = dict(lr_g=1e-3, lr_d=1e-3)  # lr1e3's overrides, which its screens below start from
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("params.yaml's train section as it is", {}),
    # params.yaml's recipe with the learning rate of the 2026-12-05/06 runs in benchmarks/README.md; the screens below
    # change one thing of it each (two for b32lr2e3).
    "lr1e3": ("params.yaml's recipe with G's and D's lr 1e-3", _LR1E3),
    "dcgan64": ("the DCGAN of the Lucic preset: widths 64, NS loss, BN, Adam(2e-4, 0.5, 0.999), G_ema 10 kimg",
                dict(arch="dcgan", ngf=64, ndf=64, z_dim=100, loss="non_saturating", lr_g=2e-4, lr_d=2e-4,
                     betas_g=(0.5, 0.999), betas_d=(0.5, 0.999), batch_size=64, ema_halflife_kimg=10.0,
                     ema_rampup=None, r1_gamma=0.0, r2_gamma=0.0, schedule_kimg=0.0, spectral_norm=False)),
    "r3gan": ("R3GAN-style pair (width 16) with RpGAN + R1/R2 (gamma 0.1, lazy 4), Adam(2e-4, 0, 0.99)",
              dict(arch="r3gan", ngf=16, ndf=16, z_dim=64, loss="rpgan", r1_gamma=0.1, r2_gamma=0.1, r1_interval=4,
                   lr_g=2e-4, lr_d=2e-4, betas_g=(0.0, 0.99), betas_d=(0.0, 0.99), batch_size=64,
                   ema_halflife_kimg=10.0, ema_rampup=0.05, spectral_norm=False)),
    # lr1e3 with R3GAN-style cosine schedules (Huang et al. 2024) over 1230 kimg: what lr1e3 trains in 38 minutes on
    # one core of the Zen-1 EPYC (benchmarks/README.md), so the decay ends with the budget.
    "lrcos": ("lr1e3 + cosine lr 1e-3 -> 1e-4 over 1230 kimg",
              dict(_LR1E3, schedule_kimg=1230.0, lr_g_end=1e-4, lr_d_end=1e-4)),
    "lrcos_ema": ("lr1e3 + cosine lr 1e-3 -> 1e-4 and G_ema half-life 10 -> 30 kimg over 1230 kimg",
                  dict(_LR1E3, schedule_kimg=1230.0, lr_g_end=1e-4, lr_d_end=1e-4,
                       ema_halflife_kimg_end=30.0)),
    # Equal-wall-clock screens of lr1e3 with one change each (benchmarks/README.md, "Tried, not kept").
    "b128": ("lr1e3 with batch 128", dict(_LR1E3, batch_size=128)),
    "ttur": ("lr1e3 with D's lr doubled (2e-3; TTUR, Heusel et al. 2017)", dict(_LR1E3, lr_d=2e-3)),
    "d48": ("lr1e3 with D widths 48 (G stays 32)", dict(_LR1E3, ndf=48)),
    "g48": ("lr1e3 with G widths 48 (D stays 32)", dict(_LR1E3, ngf=48)),
    "hinge": ("lr1e3 with the hinge loss (Lim & Ye 2017)", dict(_LR1E3, loss="hinge")),
    "b32": ("lr1e3 with batch 32", dict(_LR1E3, batch_size=32)),
    "lr2e3": ("lr1e3 with G's and D's lr 2e-3", dict(lr_g=2e-3, lr_d=2e-3)),
    "lr3e3": ("lr1e3 with G's and D's lr 3e-3", dict(lr_g=3e-3, lr_d=3e-3)),
    "b32lr2e3": ("lr1e3 with batch 32 and G's and D's lr 2e-3",
                 dict(batch_size=32, lr_g=2e-3, lr_d=2e-3)),
    "reference": ("pytorch/examples DCGAN loop (widths 64, BCE, Adam(2e-4, 0.5, 0.999), batch 64, DataLoader)", {}),
}
LUCIC_BEST_FID = 21.5  # Lucic et al. 2018, Fashion-MNIST, WGAN after their search


def _points(text: str) -> list[float]:
    try:
        pts = sorted(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise SystemExit(f"--points-min must be a comma list of minutes, got {text!r}") from None
    if not pts or pts[0] <= 0:
        raise SystemExit(f"--points-min needs positive minutes, got {text!r}")
    return pts


class _Clock:
    """Training wall-clock minus the benchmark's own snapshot time; saves a snapshot at each point."""

    def __init__(self, out: Path, points_min: list[float], save):
        self.t0, self.excluded, self.out, self.save = time.perf_counter(), 0.0, out, save
        self.pending = [p * 60 for p in points_min]
        self.kept: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded

    def tick(self, step: int, nimg: int, G: torch.nn.Module) -> bool:
        t = self.elapsed()
        while self.pending and t >= self.pending[0]:
            t_s = self.pending.pop(0)
            t_save = time.perf_counter()
            path = self.out / f"t{int(round(t_s)):05d}.pt"
            self.save(path, G, step, nimg)
            self.kept.append({"point_s": t_s, "train_s": round(t, 2), "step": step, "kimg": nimg / 1000,
                              "snapshot": path.name})
            self.excluded += time.perf_counter() - t_save
        return not self.pending


def _prepared_dir() -> Path:
    from ganops.config import load_params

    return ROOT / load_params(ROOT / "params.yaml").prepare.out_dir


# TrainConfig keys that say how the benchmark runs a recipe, not what the recipe is: left out of train.json's config.
_RUN_ONLY_KEYS = {"total_kimg", "num_threads", "device", "run_dir", "eval_every_kimg", "on_config_change",
                  "checkpoint_every_kimg", "sample_every_kimg", "eval_num_samples", "grid_size", "log_every_steps",
                  "mode_collapse_num_images", "mode_collapse_threshold", "resident_data_mb"}


def train_ganops(name: str, out: Path, points_min: list[float], seed: int, threads: int = 1) -> dict:
    from ganops.config import TrainConfig, load_params
    from ganops.rundir import RunDir
    from ganops.training.loop import training_loop
    from ganops.training.snapshot import save_snapshot

    base = load_params(ROOT / "params.yaml").train.model_dump()
    overrides = CONTENDERS[name][1]
    cfg = TrainConfig(**{**base, **overrides, "total_kimg": 1e6, "num_threads": threads, "device": "cpu",
                         "run_dir": str(out / "run"), "eval_every_kimg": 0.0, "on_config_change": "restart",
                         "checkpoint_every_kimg": 100.0, "sample_every_kimg": 100.0})

    def save(path: Path, G_ema, step: int, nimg: int) -> None:
        # How to rebuild G: the loop recorded it in training_options.json before the first step.
        G_kwargs = RunDir(cfg.run_dir).read_json(RunDir.OPTIONS)["G_kwargs"]
        save_snapshot(path, G_ema, dict(arch=cfg.arch, G_kwargs=G_kwargs, **G_kwargs, kimg=nimg / 1000, step=step,
                                        contender=name))

    clock = _Clock(out, points_min, save)
    summary = training_loop(cfg, prepared_dir=_prepared_dir(), seed=seed, progress=False, on_step=clock.tick)
    return {"contender": name, "threads": threads, "points": clock.kept,
            "images_per_s": summary["kimg"] * 1000 / clock.elapsed(),
            "config": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RUN_ONLY_KEYS}}


def train_reference(out: Path, points_min: list[float], seed: int) -> dict:
    from reference_dcgan import reference_train

    from ganops.data.dataset import load_split
    from ganops.models import build_G
    from ganops.training.snapshot import save_snapshot

    def save(path: Path, G_ref, step: int, nimg: int) -> None:
        G = build_G("dcgan", z_dim=100, ngf=64, resolution=28, channels=1, num_classes=0)
        G.net.load_state_dict(G_ref.main.state_dict())  # the same layers (reference_dcgan.example_networks)
        G_kwargs = dict(z_dim=100, ngf=64, resolution=28, channels=1, num_classes=0)
        save_snapshot(path, G, dict(arch="dcgan", G_kwargs=G_kwargs, **G_kwargs, kimg=nimg / 1000, step=step,
                                    contender="reference"))

    clock = _Clock(out, points_min, lambda path, G, step, nimg: save(path, G, step, nimg))
    images, _ = load_split(_prepared_dir(), "train")
    torch.set_num_threads(1)
    _, stats = reference_train(images, steps=10**9, seed=seed, stop_fn=lambda step, G: clock.tick(step, step * 64, G))
    n_steps = len(stats["sec_per_step"])
    return {"contender": "reference", "points": clock.kept, "images_per_s": n_steps * 64 / clock.elapsed()}


def _result_key(name: str, info: dict) -> str:
    """A contender trained with more than one thread (``train --threads``) or with a training seed other than 0
    (``train --seed``) gets its own curve: ``<name>[-<N>threads][-seed<S>]``."""
    threads, seed = info.get("threads", 1), info.get("seed", 0)
    return name + (f"-{threads}threads" if threads != 1 else "") + (f"-seed{seed}" if seed else "")


def _shard_dir(cdir: Path, snapshot: str, num_samples: int, seed: int) -> Path:
    return cdir / "features" / f"{Path(snapshot).stem}-n{num_samples}-seed{seed}"


def features(out: Path, name: str, point_min: float, num_samples: int, seed: int, lo: int, hi: int) -> Path:
    """Inception features (float32 (hi - lo, 2048)) of samples lo..hi-1 of the ``num_samples`` samples that
    :func:`evaluate` draws from the snapshot at ``point_min`` (``iter_samples`` with the same seed and batch size, so
    the same latents, labels and batches; G makes all hi of them, Inception sees only lo..hi-1), written to one
    .npy under ``<contender>/features/``. Shards computed on different cores stand in for the whole set in
    ``evaluate``, so one FID-10k can use both cores, and an interrupted evaluation keeps its finished shards.

    Raises:
        SystemExit: no such point, or a range outside 0..num_samples.
    """
    from ganops.config import EvaluateConfig
    from ganops.io import atomic_write
    from ganops.metrics.api import stage_extractor
    from ganops.metrics.preprocess import quantize_to_uint8
    from ganops.training.sampling import iter_samples
    from ganops.training.snapshot import load_generator
    from tqdm.auto import tqdm

    if not 0 <= lo < hi <= num_samples:
        raise SystemExit(f"--range must satisfy 0 <= LO < HI <= --num-samples ({num_samples}), got {lo}:{hi}")
    cdir = out / name
    kept = json.loads((cdir / "train.json").read_text())["points"]
    points = [p for p in kept if abs(p["point_s"] - point_min * 60) < 1]
    if not points:
        raise SystemExit(f"{cdir}: no snapshot kept at {point_min} training minutes")
    cfg = EvaluateConfig(num_samples=num_samples, protocol="legacy_tensorflow", device="cpu")
    extractor = stage_extractor(cfg)
    G, _ = load_generator(cdir / points[0]["snapshot"])
    images = quantize_to_uint8(torch.cat(list(iter_samples(G, hi, seed=seed, batch_size=cfg.batch_size)))[lo:])
    bs = cfg.batch_size
    feats = [extractor.features(images[i:i + bs], cfg.protocol, bs)
             for i in tqdm(range(0, hi - lo, bs), desc=f"features {name} {lo}:{hi}", unit="batch")]
    path = _shard_dir(cdir, points[0]["snapshot"], num_samples, seed) / f"{lo:06d}-{hi:06d}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.save(f, np.concatenate(feats).astype(np.float32))
    return path


def _shard_stats(cdir: Path, snapshot: str, num_samples: int, seed: int):
    """FeatureStats from shard files that cover 0..num_samples exactly, else None."""
    from ganops.metrics.fid import FeatureStats

    d = _shard_dir(cdir, snapshot, num_samples, seed)
    files = sorted(d.glob("*.npy")) if d.is_dir() else []
    ranges = [tuple(int(x) for x in f.stem.split("-")) for f in files]
    if not files or ranges[0][0] != 0 or ranges[-1][1] != num_samples or any(
            a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
        return None
    stats = FeatureStats(max_kept=num_samples)
    for f in files:
        stats.append(np.load(f))
    return stats


def evaluate(out: Path, num_samples: int, seed: int, contenders: list[str] | None,
             num_real: int = 10_000, only_min: list[float] | None = None) -> dict[str, list[dict]]:
    """FID (num_samples generated vs the first num_real test images, 10k = all) of every kept snapshot; P/R and
    D/C at the last one."""
    from ganops.config import EvaluateConfig
    from ganops.metrics.api import generated_stats, real_reference, stage_extractor
    from ganops.metrics.fid import frechet_distance
    from ganops.metrics.prdc import density_coverage, precision_recall
    from ganops.training.snapshot import load_generator
    from tqdm.auto import tqdm

    cfg = EvaluateConfig(num_samples=num_samples, protocol="legacy_tensorflow", device="cpu",
                         ref_stats_dir=str(ROOT / "cache" / "ref_stats"))
    extractor = stage_extractor(cfg)
    real = real_reference(extractor, cfg, _prepared_dir(), num_images=num_real)
    results: dict[str, list[dict]] = {}
    for cdir in sorted(p for p in out.iterdir() if (p / "train.json").is_file()):
        if contenders and cdir.name not in contenders:
            continue
        info = json.loads((cdir / "train.json").read_text())
        points = [p for p in info["points"] if not only_min or any(abs(p["point_s"] - m * 60) < 1 for m in only_min)]
        rows = []
        for i, point in enumerate(tqdm(points, desc=f"FID {cdir.name}", unit="snapshot")):
            t = time.time()
            fake = _shard_stats(cdir, point["snapshot"], num_samples, seed)
            sharded = fake is not None  # features from the `features` command's shards (their time is not here)
            if not sharded:
                G, _ = load_generator(cdir / point["snapshot"])
                fake = generated_stats(G, extractor, cfg, seed)
            row = {**point, "fid": frechet_distance(fake.mean, fake.cov, real.mu, real.sigma),
                   "num_generated": fake.n, "num_real": real.n, "eval_s": round(time.time() - t, 1),
                   "features_from_shards": sharded, "date": str(dt.date.today())}
            if i == len(points) - 1:
                n = min(len(fake.kept_features), len(real.features))
                row.update(precision_recall(real.features[:n], fake.kept_features[:n]),
                           **density_coverage(real.features[:n], fake.kept_features[:n]), prdc_n=n)
            rows.append(row)
            print(json.dumps({"contender": _result_key(cdir.name, info), **row}), flush=True)
        results[_result_key(cdir.name, info)] = rows
    return results


def _plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results.items():
        ax.plot([r["train_s"] / 60 for r in rows], [r["fid"] for r in rows], marker="o", label=name)
    ax.axhline(LUCIC_BEST_FID, color="grey", ls="--", lw=0.8, label="Lucic et al. 2018 best (21.5)")
    top_x = max((r["train_s"] / 60 for rows in results.values() for r in rows), default=1.0)
    top_y = max([LUCIC_BEST_FID] + [r["fid"] for rows in results.values() for r in rows])
    ax.set(xlim=(0, top_x * 1.1), ylim=(0, top_y * 1.1), xlabel="training wall-clock (min)", ylabel="FID",
           title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _table(results: dict[str, list[dict]], header: str, date: str) -> str:
    """The markdown table; a row without its own ``date`` (results files before rows carried one) gets ``date``."""
    lines = [header, "", "| contender | train min | kimg | FID | N gen / real | precision | recall | density | "
             "coverage | FID evaluated |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            pr = [f"{r[k]:.3f}" if k in r else "" for k in ("precision", "recall", "density", "coverage")]
            lines.append(f"| {name} | {r['train_s'] / 60:.2f} | {r['kimg']:.1f} | {r['fid']:.2f} | "
                         f"{r['num_generated']} / {r['num_real']} | {' | '.join(pr)} | {r.get('date', date)} |")
    return "\n".join(lines) + "\n"


def _curves(results: dict[str, list[dict]], out_dir: Path) -> None:
    """One CSV per contender (train_min, kimg, fid): the files of dvc.yaml's time_to_quality plot."""
    out_dir.mkdir(exist_ok=True)
    for name, rows in results.items():
        lines = ["train_min,kimg,fid"] + [f"{r['train_s'] / 60:.4f},{r['kimg']:.3f},{r['fid']:.4f}" for r in rows]
        (out_dir / f"{name}.csv").write_text("\n".join(lines) + "\n")


def _output_paths(tag: str) -> dict[str, Path]:
    """Where one results set lives: ``ttq_results.json`` etc., or ``ttq_results_<tag>.json`` etc. for ``--tag``."""
    sfx = f"_{tag}" if tag else ""
    return {"json": HERE / f"ttq_results{sfx}.json", "md": HERE / f"ttq_results{sfx}.md",
            "png": HERE / f"ttq{sfx}.png", "curves": HERE / f"ttq_curves{sfx}"}


def _write_outputs(out: dict[str, Any], tag: str = "") -> None:
    """The results JSON, the markdown table, the PNG plot and the DVC plot curves of one results object."""
    info, results = out["machine"], out["results"]
    header = (f"Measured on {info['cpu']} ({info['cpu_capability']}), one core per contender (a "
              "`-Nthreads` contender: N threads; `-seedS`: training seed S, else 0), "
              f"FID of {out['num_samples']} G samples vs {out['num_real']} Fashion-MNIST test images (the Lucic "
              "protocol itself uses 10,000 vs 10,000); the last column is the day each row's FID was computed.")
    paths = _output_paths(tag)
    paths["json"].write_text(json.dumps(out, indent=1))
    paths["md"].write_text(_table(results, header, out["date"]))
    _plot(results, paths["png"], f"time to quality, {info['cpu']}")
    _curves(results, paths["curves"])


def _not_a_results_file(path: Path, err: Exception, remedy: str) -> SystemExit:
    """The one message for a results file that does not parse or lacks this benchmark's keys."""
    return SystemExit(f"{path} is not a results file of this benchmark ({err!r}); restore it (git checkout) or "
                      f"{remedy}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "train", "features", "evaluate", "report"])
    ap.add_argument("--contenders", default="default,reference",
                    help=f"comma list of {', '.join(CONTENDERS)} (run: at most 2, one per core)")
    ap.add_argument("--budget-min", type=float, default=15.0)
    ap.add_argument("--points-min", default=None, help="snapshot points in training minutes (default: budget/4, "
                    "budget/2, budget)")
    ap.add_argument("--num-samples", type=int, default=10_000, help="generated samples per FID")
    ap.add_argument("--num-real", type=int, default=10_000, help="test images per FID (10k = Lucic protocol)")
    ap.add_argument("--eval-points-min", default=None, help="evaluate only these of the kept points (minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, choices=range(1, 65), metavar="N",
                    help="train: CPU threads of a ganops contender (run always uses 1 per core)")
    ap.add_argument("--range", default=None, help="features: LO:HI, the samples of this shard (default: all)")
    ap.add_argument("--out", type=Path, default=HERE / "ttq")
    ap.add_argument("--tag", default=None, help="run/evaluate/report: keep this results set apart, in "
                    "ttq_results_TAG.json/.md, ttq_TAG.png and ttq_curves_TAG/ (default: ttq_results.json ...); "
                    "ASCII letters, digits, '-', '_', at most 64")
    a = ap.parse_args(argv)
    if a.tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", a.tag):
        raise SystemExit(f"--tag must be 1 to 64 ASCII letters, digits, '-' or '_' (it becomes part of file names), "
                         f"got {a.tag!r}")
    if a.tag is not None and a.command in ("train", "features"):
        raise SystemExit(f"--tag names a results set, which {a.command} does not write: "
                         "give it to run, evaluate or report")
    a.tag = a.tag or ""
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    bad = [n for n in names if n not in CONTENDERS]
    if bad:
        raise SystemExit(f"unknown contender(s) {bad}; valid: {', '.join(CONTENDERS)}")
    points = _points(a.points_min or f"{a.budget_min / 4},{a.budget_min / 2},{a.budget_min}")
    if points[-1] > a.budget_min:
        raise SystemExit(f"--points-min {points} go past --budget-min {a.budget_min}")
    if a.command == "report":
        results_file = _output_paths(a.tag)["json"]
        if not results_file.is_file():
            raise SystemExit(f"{results_file} not found: run the benchmark (run or evaluate) first")
        try:
            _write_outputs(json.loads(results_file.read_text()), a.tag)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise _not_a_results_file(results_file, err, "re-run the benchmark") from None
        return
    a.out.mkdir(parents=True, exist_ok=True)

    if a.command == "train":  # one contender, in this process (run pins it to a core)
        (name,) = names
        cdir = a.out / name
        cdir.mkdir(exist_ok=True)
        info = (train_reference(cdir, points, a.seed) if name == "reference"
                else train_ganops(name, cdir, points, a.seed, a.threads))
        info.update(seed=a.seed, date=str(dt.date.today()))  # the training seed and day (the result key uses seed)
        (cdir / "train.json").write_text(json.dumps(info, indent=1))
        print(json.dumps(info), flush=True)
        return
    if a.command == "features":  # one shard of one snapshot's generated features (pin it with taskset)
        (name,) = names
        (point,) = _points(a.eval_points_min or "")
        try:
            lo, hi = (int(x) for x in (a.range or f"0:{a.num_samples}").split(":"))
        except ValueError:
            raise SystemExit(f"--range must be LO:HI (two integers), got {a.range!r}") from None
        print(features(a.out, name, point, a.num_samples, a.seed, lo, hi))
        return
    if a.command == "run":
        if len(names) > 2:
            raise SystemExit("run trains at most 2 contenders at once (one per core); use train for more")
        t0 = time.time()
        procs = [subprocess.Popen(["taskset", "-c", str(i), sys.executable, __file__, "train", "--contenders", n,
                                   "--budget-min", str(a.budget_min), "--points-min", ",".join(map(str, points)),
                                   "--seed", str(a.seed), "--out", str(a.out)],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for i, n in enumerate(names)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"training failed (exit codes {codes})")
        print(f"trained {names} in {time.time() - t0:.0f} s", file=sys.stderr)
    previous, old = _output_paths(a.tag)["json"], {}
    if a.command == "evaluate" and previous.is_file():  # add to the other contenders' rows of the same protocol
        try:  # checked before the (long) evaluation, so a refusal costs nothing
            old = json.loads(previous.read_text())
            old_protocol = (old["num_samples"], old["num_real"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise _not_a_results_file(previous, err, "move it aside") from None
        if old_protocol != (a.num_samples, a.num_real):
            raise SystemExit(f"{previous} holds FIDs of {old_protocol[0]} vs {old_protocol[1]} images, "
                             f"not {a.num_samples} vs {a.num_real}: keep the new results apart with --tag NAME "
                             "or evaluate with its --num-samples/--num-real")
    only = _points(a.eval_points_min) if a.eval_points_min else None
    results = evaluate(a.out, a.num_samples, a.seed, names, a.num_real, only)
    if old:
        for rows in old["results"].values():  # rows kept from the old file keep the old file's date
            for r in rows:
                r.setdefault("date", old["date"])
        results = {**old["results"], **results}
    train = dict(old.get("train", {}))
    for n in names:  # each contender's training record, under its result key
        if (a.out / n / "train.json").is_file():
            info = json.loads((a.out / n / "train.json").read_text())
            train[_result_key(n, info)] = info
    out = {"date": str(dt.date.today()), "machine": machine(), "num_samples": a.num_samples, "num_real": a.num_real,
           "contenders": {k: CONTENDERS[k.split("-")[0]][0] for k in results}, "results": results,
           "train": {k: v for k, v in train.items() if k in results}}
    _write_outputs(out, a.tag)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
