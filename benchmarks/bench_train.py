"""Training throughput of the default DCGAN (28x28x1, z_dim=100, ngf=ndf=64, batch 64) on this machine.

Runs the real ``training_loop`` for a few hundred images per variant (fp32, bf16 autocast, channels_last,
bf16 + channels_last) on a synthetic prepared directory, in one process so the ratios are side by side, and
prints JSON: sec/step and images/s per variant (median and min over logged windows, first window dropped as
warm-up; min is the least-contended estimate on a shared machine),
speed ratios vs fp32, and the ``total_kimg`` that fits a wall-clock budget at the fp32 rate.

    .venv/bin/python benchmarks/bench_train.py --steps 30 --bf16-steps 3 --budget-min 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from ganops.config import TrainConfig
from ganops.training.loop import training_loop

VARIANTS = {
    "fp32": dict(precision="fp32", channels_last=False),
    "bf16_autocast": dict(precision="bf16", channels_last=False),
    "channels_last": dict(precision="fp32", channels_last=True),
    "bf16_channels_last": dict(precision="bf16", channels_last=True),
}


def _prepared(root: Path) -> Path:
    rng = np.random.default_rng(0)
    out = root / "prepared"
    out.mkdir()
    images = rng.integers(0, 256, (2048, 1, 28, 28), dtype=np.uint8)
    labels = (np.arange(2048) % 10).astype(np.int64)
    np.savez(out / "train.npz", images=images, labels=labels)
    np.savez(out / "test.npz", images=images[:256], labels=labels[:256])
    (out / "summary.json").write_text(json.dumps({"num_classes": 10, "dataset_sha256": "bench"}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per fp32 variant")
    ap.add_argument("--log-every", type=int, default=5, help="steps per timing window (fp32 variants)")
    ap.add_argument("--bf16-steps", type=int, default=3,
                    help="steps per bf16 variant (one window each; bf16 is emulated and slow without AVX512-BF16/AMX)")
    ap.add_argument("--budget-min", type=float, default=8.0, help="wall-clock budget for the total_kimg suggestion")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the fp32 variants")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    windows: dict[str, list[float]] = {name: [] for name in VARIANTS}
    steps_run: dict[str, int] = dict.fromkeys(VARIANTS, 0)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(Path(tmp))
        # Variants are interleaved (fp32, channels_last, fp32, ...) so that load from other processes hits each alike.
        for rep in range(args.repeats):
            for name, overrides in VARIANTS.items():
                bf16 = overrides["precision"] == "bf16"
                if bf16 and rep:
                    continue
                steps, log_every = (args.bf16_steps, 1) if bf16 else (args.steps, args.log_every)
                run = Path(tmp) / f"{name}-{rep}"
                cfg = TrainConfig(batch_size=64, total_kimg=steps * 64 / 1000, log_every_steps=log_every,
                                  sample_every_kimg=1000, checkpoint_every_kimg=1000, device="cpu", run_dir=str(run),
                                  **overrides)
                training_loop(cfg, prepared_dir=prepared, seed=0, progress=False)
                lines = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines() if "sec_per_step" in x]
                windows[name] += [w["sec_per_step"] for w in (lines[1:] or lines)]  # first window = warm-up
                steps_run[name] += steps
    results = {
        name: {"sec_per_step_median": statistics.median(w), "sec_per_step_min": min(w),
               "images_per_s_median": 64 / statistics.median(w), "steps": steps_run[name]}
        for name, w in windows.items()
    }
    base = results["fp32"]["sec_per_step_median"]
    for r in results.values():
        r["speedup_vs_fp32_median"] = base / r["sec_per_step_median"]
        r["speedup_vs_fp32_min"] = results["fp32"]["sec_per_step_min"] / r["sec_per_step_min"]
    print(json.dumps({
        "model": "dcgan 28x28x1 z_dim=100 ngf=ndf=64 batch=64 (one D + one G step per step)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1min": round(__import__("os").getloadavg()[0], 2),
        "variants": results,
        "suggested_total_kimg": {"budget_min": args.budget_min,
                                 "fp32_median": round(args.budget_min * 60 / base * 64 / 1000, 1),
                                 "fp32_uncontended": round(
                                     args.budget_min * 60 / results["fp32"]["sec_per_step_min"] * 64 / 1000, 1)},
    }, indent=2))


if __name__ == "__main__":
    main()
