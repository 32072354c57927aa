"""Training throughput of the default DCGAN (28x28x1, z_dim=100, ngf=ndf=64) on this machine; prints one JSON object.

Every section runs its contenders in one process, interleaved, so that load from other processes hits each alike
and the ratios are side by side. Step times come from the loops' own per-step clocks (data loading included), the
first step(s) of each run dropped as warm-up; "median" is the typical step, "min" the least-contended one.

Sections:
- variants: the real ``training_loop`` in fp32, bf16 autocast, channels_last, bf16 + channels_last (batch 64),
  plus the ``total_kimg`` that fits a wall-clock budget at the fp32 rate.
- reference: ganops ``training_loop`` (defaults: channels_last, G's first layer as a matmul, the D head reading
  channels_last maps as they lie, fused Adam, D frozen in the G step, one G forward per step, batches drawn from one
  uint8 tensor) vs ``reference_dcgan.reference_train`` (pytorch/examples dcgan style: the example's Generator /
  Discriminator classes of stock layers, Dataset with per-image ToTensor/Normalize, DataLoader, BCE on sigmoid,
  Adam(2e-4, 0.5)); same architecture and initial weights, batch, threads.
- scaling: images/s of both loops for several batch sizes x torch threads, and of the reference for several
  DataLoader worker counts.
- cuda (needs a CUDA GPU): ganops fp32 and AMP (bf16 autocast), with and without the CUDA-graph step, vs the
  reference at several batch sizes and DataLoader worker counts.
- quality: both loops train ``--quality-steps`` steps on Fashion-MNIST for each of ``--quality-seeds``; FID
  (legacy_tensorflow Inception protocol) of ``--quality-samples`` samples of each against as many test images; the
  mean difference is judged against the seed-to-seed spread.

    .venv/bin/python benchmarks/bench_train.py --variants --reference --threads 2          # a few minutes
    .venv/bin/python benchmarks/bench_train.py --scaling --scaling-batches 32,64,128,256,512
    .venv/bin/python benchmarks/bench_train.py --quality --quality-steps 300 --quality-samples 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from argtypes import int_at_least, int_list  # noqa: E402
from machine_info import machine  # noqa: E402
from reference_dcgan import reference_train  # noqa: E402

from ganops.config import TrainConfig  # noqa: E402
from ganops.data.dataset import save_split  # noqa: E402
from ganops.rundir import RunDir  # noqa: E402
from ganops.training.loop import training_loop  # noqa: E402

VARIANTS = {
    "fp32": dict(precision="fp32", channels_last=False),
    "bf16_autocast": dict(precision="bf16", channels_last=False),
    "channels_last": dict(precision="fp32", channels_last=True),
    "bf16_channels_last": dict(precision="bf16", channels_last=True),
}


# ----------------------------------------------------------------------------------------------------------------
# Data and the two loops, each returning per-step seconds


def fashion_mnist(split: str, n: int) -> np.ndarray:
    """uint8 (n, 1, 28, 28) Fashion-MNIST images (``split`` = train | t10k), read straight from the IDX files
    (in /usr/share/datasets/fashion-mnist, else data/raw/fashion-mnist, as ``ganops prepare`` looks)."""
    from ganops.data.source_fashion_mnist import find_fashion_mnist_dir, read_idx_gz

    return read_idx_gz(find_fashion_mnist_dir() / f"{split}-images-idx3-ubyte.gz")[:n, None]


def make_prepared(root: Path, images: np.ndarray) -> Path:
    """A minimal prepared directory (train and test splits + summary.json) holding ``images`` as the train split."""
    out = root / "prepared"
    labels = (np.arange(len(images)) % 10).astype(np.int64)
    save_split(out, "train", images, labels)
    save_split(out, "test", images[:256], labels[:256])
    (out / "summary.json").write_text(json.dumps({"num_classes": 10, "dataset_sha256": "bench"}))
    return out


def run_ganops(prepared: Path, run_dir: Path, steps: int, batch_size: int, threads: int, seed: int = 0,
               log_every: int = 1, device: str = "cpu", **overrides) -> list[float]:
    """Seconds per step of ``training_loop`` (one window per ``log_every`` steps) for ``steps`` steps."""
    cfg = TrainConfig(batch_size=batch_size, total_kimg=steps * batch_size / 1000, log_every_steps=log_every,
                      sample_every_kimg=1e6, checkpoint_every_kimg=1e6, device=device, run_dir=str(run_dir),
                      num_threads=threads, **overrides)
    training_loop(cfg, prepared_dir=prepared, seed=seed, progress=False)
    return [w["sec_per_step"] for w in RunDir(run_dir).iter_stats("sec_per_step")]


def run_reference(images: np.ndarray, steps: int, batch_size: int, threads: int, workers: int = 0,
                  seed: int = 0, device: str = "cpu") -> list[float]:
    torch.set_num_threads(threads)
    return reference_train(images, steps=steps, batch_size=batch_size, num_workers=workers, seed=seed,
                           device=device)[1]["sec_per_step"]


def summarize(sec_per_step: list[float], batch_size: int, warmup: int = 1) -> dict:
    timed = sec_per_step[warmup:] or sec_per_step
    med = statistics.median(timed)
    # 6 decimals: a GPU step is under a millisecond, and the speedups are ratios of these.
    return {"sec_per_step_median": round(med, 6), "sec_per_step_min": round(min(timed), 6),
            "images_per_s_median": round(batch_size / med, 2), "images_per_s_max": round(batch_size / min(timed), 2),
            "timed_steps": len(timed)}


# ----------------------------------------------------------------------------------------------------------------
# Sections


def bench_variants(tmp: Path, steps: int, log_every: int, bf16_steps: int, repeats: int, threads: int,
                   budget_min: float) -> dict:
    prepared = make_prepared(tmp, np.random.default_rng(0).integers(0, 256, (2048, 1, 28, 28), dtype=np.uint8))
    windows: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(repeats):
        for name, overrides in VARIANTS.items():
            bf16 = overrides["precision"] == "bf16"
            if bf16 and rep:
                continue
            n, every = (bf16_steps, 1) if bf16 else (steps, log_every)
            w = run_ganops(prepared, tmp / f"var-{name}-{rep}", n, 64, threads, log_every=every, **overrides)
            windows[name] += w[1:] or w  # first window = warm-up
    results = {name: summarize(w, 64, warmup=0) for name, w in windows.items()}
    base = results["fp32"]
    for r in results.values():
        r["speedup_vs_fp32_median"] = round(base["sec_per_step_median"] / r["sec_per_step_median"], 3)
        r["speedup_vs_fp32_min"] = round(base["sec_per_step_min"] / r["sec_per_step_min"], 3)
    default = results["channels_last"]  # params.yaml default: fp32 + channels_last
    return {"batch_size": 64, "variants": results, "suggested_total_kimg": {
        "budget_min": budget_min,
        "default_median": round(budget_min * 60 / default["sec_per_step_median"] * 64 / 1000, 1),
        "default_uncontended": round(budget_min * 60 / default["sec_per_step_min"] * 64 / 1000, 1)}}


def bench_reference(tmp: Path, steps: int, repeats: int, threads: int, workers: int, batch_size: int = 64) -> dict:
    images = fashion_mnist("train", 8192)
    prepared = make_prepared(tmp, images)
    times: dict[str, list[float]] = {"ganops": [], "reference": []}
    for rep in range(repeats):  # interleaved: ganops, reference, ganops, reference, ...
        times["ganops"] += run_ganops(prepared, tmp / f"ref-g-{rep}", steps, batch_size, threads)[2:]
        times["reference"] += run_reference(images, steps, batch_size, threads, workers)[2:]
    out = {k: summarize(v, batch_size, warmup=0) for k, v in times.items()}
    return {"batch_size": batch_size, "threads": threads, "reference_workers": workers, **out,
            "speedup_median": round(out["reference"]["sec_per_step_median"] / out["ganops"]["sec_per_step_median"], 3),
            "speedup_min": round(out["reference"]["sec_per_step_min"] / out["ganops"]["sec_per_step_min"], 3),
            "target": 1.5}


def bench_cuda(tmp: Path, batches: list[int], steps: int, repeats: int, workers_list: list[int],
               device: str = "cuda") -> dict:
    """The reference comparison on a CUDA GPU: ganops in fp32 and with AMP (bf16 autocast, ``precision=auto``),
    each channels_last (the default) and NCHW, with the step replayed as a CUDA graph (the default) and without,
    against the pytorch/examples-style loop (fp32, as the example) with each DataLoader worker count, per batch
    size, interleaved. Both loops read their losses on the host every step, so a step's clock holds its GPU time;
    the first 2 steps of each run are dropped (cuDNN autotuning), the median step is robust to the graph capture
    (step 4). ``device="cpu"`` runs the same code without a GPU (tests; "AMP" is then fp32, no graph)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train --cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    images = fashion_mnist("train", 8192)
    prepared = make_prepared(tmp, images)
    rows = []
    for b in batches:
        contenders = {}
        for name, precision, cl, graph in (
                ("ganops_fp32", "fp32", True, True), ("ganops_amp_bf16", "auto", True, True),
                ("ganops_fp32_nchw", "fp32", False, True), ("ganops_amp_bf16_nchw", "auto", False, True),
                ("ganops_fp32_no_graph", "fp32", True, False), ("ganops_fp32_nchw_no_graph", "fp32", False, False)):
            contenders[name] = (lambda rep, name=name, precision=precision, cl=cl, graph=graph: run_ganops(
                prepared, tmp / f"cu-{name}-{b}-{rep}", steps, b, 0, device=device, precision=precision,
                channels_last=cl, cuda_graph=graph))
        for w in workers_list:
            contenders[f"reference_workers{w}"] = (
                lambda rep, w=w: run_reference(images, steps, b, torch.get_num_threads(), w, device=device))
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for rep in range(repeats):
            for name, run in contenders.items():
                times[name] += run(rep)[2:]
        res = {k: summarize(v, b, warmup=0) for k, v in times.items()}
        best_ref = min((k for k in res if k.startswith("reference")), key=lambda k: res[k]["sec_per_step_median"])
        row = {"batch_size": b, **{k: v["images_per_s_median"] for k, v in res.items()}, "best_reference": best_ref}
        for k in (k for k in res if k.startswith("ganops")):
            row[f"speedup_{k}"] = round(res[best_ref]["sec_per_step_median"] / res[k]["sec_per_step_median"], 3)
        rows.append(row)
        print(json.dumps({"cuda_row": row}), file=sys.stderr, flush=True)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else device, "steps_per_run": steps,
            "repeats": repeats, "rows": rows,
            "note": "images/s = batch / median step time; speedups against the fastest reference worker count",
            "target": 1.5}


def bench_scaling(tmp: Path, batches: list[int], threads_list: list[int], workers_list: list[int],
                  steps: int) -> dict:
    images = fashion_mnist("train", 8192)
    prepared = make_prepared(tmp, images)
    rows = []
    for threads in threads_list:
        for b in batches:
            g = summarize(run_ganops(prepared, tmp / f"sc-{threads}-{b}", steps, b, threads), b)
            r = summarize(run_reference(images, steps, b, threads, 0), b)
            rows.append({"batch_size": b, "threads": threads, "ganops_images_per_s": g["images_per_s_median"],
                         "reference_images_per_s": r["images_per_s_median"],
                         "speedup": round(r["sec_per_step_median"] / g["sec_per_step_median"], 3)})
            print(json.dumps({"scaling_row": rows[-1]}), file=sys.stderr, flush=True)
    workers_rows = []
    for workers in workers_list:
        r = summarize(run_reference(images, steps, 64, max(threads_list), workers), 64)
        workers_rows.append({"batch_size": 64, "threads": max(threads_list), "workers": workers,
                             "reference_images_per_s": r["images_per_s_median"]})
    return {"steps_per_point": steps, "rows": rows, "reference_workers": workers_rows}


def bench_quality(tmp: Path, steps: int, samples: int, threads: int, seeds: list[int]) -> dict:
    """FID of both loops' generators after ``steps`` equal steps, for several training seeds.

    Per seed, each loop trains from the same initial weights (the reference copies ganops' init) but draws its own
    data order and latents, so the two runs differ by training noise. Each G gives ``samples`` images (latents of
    seed 1000) against as many test images. With the default params G_ema is a copy of G (ema_halflife_kimg = 0).
    "No loss of FID" = ganops' mean FID over the seeds is no worse than the reference's mean by more than the
    seed-to-seed spread (the larger of the two loops' sample standard deviations).
    """
    from ganops.metrics.fid import fid_from_features
    from ganops.metrics.inception import load_feature_extractor
    from ganops.metrics.preprocess import quantize_to_uint8
    from ganops.training.sampling import iter_samples
    from ganops.training.snapshot import load_generator

    images = fashion_mnist("train", 60000)
    prepared = make_prepared(tmp, images)
    extractor = load_feature_extractor()
    t = time.perf_counter()
    real = extractor.features(fashion_mnist("t10k", samples), "legacy_tensorflow")

    def fid(G: torch.nn.Module) -> float:
        with torch.no_grad():
            x = torch.cat(list(iter_samples(G.eval(), samples, seed=1000, batch_size=100)))
        return round(fid_from_features(extractor.features(quantize_to_uint8(x), "legacy_tensorflow"), real), 2)

    runs, train_s = [], {"ganops": 0.0, "reference": 0.0}
    for seed in seeds:
        t0 = time.perf_counter()
        run_ganops(prepared, tmp / f"q-ganops-{seed}", steps, 64, threads, seed=seed, log_every=50)
        t1 = time.perf_counter()
        torch.set_num_threads(threads)
        G_ref = reference_train(images, steps=steps, batch_size=64, seed=seed)[0]
        train_s["ganops"] += t1 - t0
        train_s["reference"] += time.perf_counter() - t1
        runs.append({"seed": seed, "fid_ganops": fid(load_generator(RunDir(tmp / f"q-ganops-{seed}").snapshot)[0]),
                     "fid_reference": fid(G_ref)})
        print(json.dumps({"quality_run": runs[-1]}), file=sys.stderr, flush=True)
    g, r = [x["fid_ganops"] for x in runs], [x["fid_reference"] for x in runs]
    spread = max(statistics.stdev(g), statistics.stdev(r)) if len(runs) > 1 else None
    delta = statistics.fmean(g) - statistics.fmean(r)
    return {"steps": steps, "batch_size": 64, "threads": threads, "num_samples": samples, "seeds": seeds,
            "metric": f"FID legacy_tensorflow, {samples} generated vs {samples} Fashion-MNIST test images",
            "runs": runs, "fid_ganops_mean": round(statistics.fmean(g), 2),
            "fid_reference_mean": round(statistics.fmean(r), 2), "fid_delta": round(delta, 2),
            "fid_seed_spread": None if spread is None else round(spread, 2),
            "no_fid_loss": None if spread is None else delta <= spread,
            "train_wall_s_ganops": round(train_s["ganops"], 1),
            "train_wall_s_reference": round(train_s["reference"], 1),
            "total_wall_s": round(time.perf_counter() - t, 1)}


def build_parser() -> argparse.ArgumentParser:
    """The command line; every number and list is checked here, before any section spends minutes running."""
    pos, nonneg = int_at_least(1), int_at_least(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=pos, default=2, help="torch threads for variants/reference/quality")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--steps", type=pos, default=30, help="variants: training steps per fp32 variant")
    ap.add_argument("--log-every", type=pos, default=5, help="variants: steps per timing window")
    ap.add_argument("--bf16-steps", type=pos, default=3, help="variants: steps per bf16 variant (slow w/o AMX)")
    ap.add_argument("--repeats", type=pos, default=2, help="interleaved repeats (variants, reference)")
    ap.add_argument("--budget-min", type=float, default=8.0, help="variants: budget for the total_kimg suggestion")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--reference-steps", type=int_at_least(3), default=20,
                    help="the first 2 steps of each run are warm-up, so at least 3")
    ap.add_argument("--reference-workers", type=nonneg, default=0, help="DataLoader workers of the reference")
    ap.add_argument("--scaling", action="store_true")
    ap.add_argument("--scaling-batches", type=int_list(1), default=[32, 64, 128, 256, 512])
    ap.add_argument("--scaling-threads", type=int_list(1), default=[1, 2])
    ap.add_argument("--scaling-workers", type=int_list(0), default=[0, 1, 2])
    ap.add_argument("--scaling-steps", type=pos, default=4)
    ap.add_argument("--cuda", action="store_true", help="ganops fp32 / AMP vs the reference on a CUDA GPU")
    ap.add_argument("--cuda-batches", type=int_list(1), default=[64, 256, 1024])
    ap.add_argument("--cuda-steps", type=int_at_least(3), default=60)
    ap.add_argument("--cuda-workers", type=int_list(0), default=[0, 2],
                    help="reference DataLoader workers (the example's default is 2)")
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--quality-steps", type=pos, default=300)
    ap.add_argument("--quality-samples", type=int_at_least(2), default=500, help="images per side of the FID")
    ap.add_argument("--quality-seeds", type=int_list(0), default=[0, 1, 2],
                    help="training seeds (>= 2 give the spread the FID difference is judged by)")
    return ap


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()
    if not args.budget_min > 0:
        ap.error(f"--budget-min must be > 0 minutes, got {args.budget_min}")
    if not (args.variants or args.reference or args.scaling or args.quality or args.cuda):
        ap.error("choose at least one section: --variants, --reference, --scaling, --quality, --cuda")
    if args.cuda and not torch.cuda.is_available():  # before the other sections: their figures would be lost
        raise SystemExit("bench_train --cuda: no CUDA device is available (torch.cuda.is_available() is False)")

    result: dict = {"model": "dcgan 28x28x1 z_dim=100 ngf=ndf=64 (one D + one G step per step)", **machine()}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        sections = [
            ("variants", args.variants, lambda: bench_variants(tmp, args.steps, args.log_every, args.bf16_steps,
                                                                args.repeats, args.threads, args.budget_min)),
            ("reference", args.reference, lambda: bench_reference(tmp, args.reference_steps, args.repeats,
                                                                  args.threads, args.reference_workers)),
            ("scaling", args.scaling, lambda: bench_scaling(tmp, args.scaling_batches, args.scaling_threads,
                                                            args.scaling_workers, args.scaling_steps)),
            ("cuda", args.cuda, lambda: bench_cuda(tmp, args.cuda_batches, args.cuda_steps, args.repeats,
                                                   args.cuda_workers)),
            ("quality", args.quality, lambda: bench_quality(tmp, args.quality_steps, args.quality_samples,
                                                            args.threads, args.quality_seeds)),
        ]
        for name, wanted, run in sections:
            if wanted:
                t = time.perf_counter()
                result[name] = {**run(), "section_wall_s": round(time.perf_counter() - t, 1)}
                print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)  # progress for long runs
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
