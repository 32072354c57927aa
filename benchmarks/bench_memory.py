"""Peak memory of ``ganops prepare`` and of 100 training steps at two dataset sizes 10x apart.

Generates two folders of RGB PNGs (10 class folders; default 1,000 and 10,000 images of 64x64), then for each size
runs, each in a fresh subprocess pinned to the caller's CPUs: ``ganops prepare`` (source=folder, resolution 64,
3 channels) and ``ganops train`` for 100 steps of batch 64 with ``resident_data_mb=0`` (the split streamed from
disk; DCGAN widths 8, so the run measures the data path rather than the networks); at the small size also the
resident default, for contrast. Tracking goes to a sqlite file in the work folder.

Memory per phase: the child's peak RSS (``ru_maxrss`` from ``wait4``, which counts file pages mapped into the
process too), and the peaks of its anonymous RSS (``RssAnon``) and of ``VmData`` sampled from
``/proc/<pid>/status`` every 20 ms. Prints JSON (and writes it with ``--out``):

    .venv/bin/python benchmarks/bench_memory.py --sizes 1000,10000 --out benchmarks/memory_results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from argtypes import int_list  # noqa: E402
from machine_info import machine  # noqa: E402

RESOLUTION, CHANNELS, CLASSES, BATCH, STEPS = 64, 3, 10, 64, 100


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` RGB PNGs of RESOLUTION px in CLASSES class folders: smooth noise (8x8 upsampled) plus pixel noise."""
    rng = np.random.default_rng(seed)
    for k in range(CLASSES):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(low).resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR))
        im = np.clip(im.astype(np.int16) + rng.integers(-8, 9, im.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(root / f"c{i % CLASSES}" / f"{i:06d}.png", compress_level=1)
    return root


def write_params(work: Path, folder: Path, resident_data_mb: float) -> Path:
    params = {
        "prepare": {"source": "folder", "folder": str(folder), "resolution": RESOLUTION,
                    "channels": CHANNELS, "out_dir": str(work / "prepared")},
        "train": {"z_dim": 32, "ngf": 8, "ndf": 8, "batch_size": BATCH, "total_kimg": STEPS * BATCH / 1000,
                  "sample_every_kimg": 1000, "checkpoint_every_kimg": 1000, "log_every_steps": 50, "device": "cpu", "num_threads": 1,
                  "resident_data_mb": resident_data_mb, "run_dir": str(work / f"run-{resident_data_mb:g}")},
    }
    path = work / f"params-{resident_data_mb:g}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _status_mb(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmData"):
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return out


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS (MB, ru_maxrss) and sampled peaks of RssAnon / VmData (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"RssAnon": 0.0, "RssFile": 0.0, "VmData": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status_mb(proc.pid).items():
                peaks[k] = max(peaks[k], v)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_anon_mb": round(peaks["RssAnon"], 1), "peak_rss_file_mb": round(peaks["RssFile"], 1),
            "peak_vm_data_mb": round(peaks["VmData"], 1)}


def run_size(n: int, root: Path, with_resident: bool) -> dict:
    work = root / f"n{n}"
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    folder = make_folder(work / "images", n)
    print(f"[{n}] generated {n} PNGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "GANOPS_PROGRESS_INTERVAL_S": "60"}
    ganops = [sys.executable, "-m", "ganops.cli"]
    streamed = write_params(work, folder, 0)
    out = {"images": n, "decoded_mb": round(n * CHANNELS * RESOLUTION**2 / 1e6, 1)}
    out["prepare"] = measure([*ganops, "prepare", "--params", str(streamed)], work, env)
    print(f"[{n}] prepare {out['prepare']}", file=sys.stderr, flush=True)
    out["train_streamed"] = measure([*ganops, "train", "--params", str(streamed)], work, env)
    print(f"[{n}] train (streamed) {out['train_streamed']}", file=sys.stderr, flush=True)
    if with_resident:
        resident = write_params(work, folder, 1024)
        out["train_resident"] = measure([*ganops, "train", "--params", str(resident)], work, env)
        print(f"[{n}] train (resident) {out['train_resident']}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int_list(1), default=[1000, 10000], help="two image counts, small first")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--workdir", type=Path, help="keep the folders here (default: a temporary folder)")
    args = ap.parse_args()
    small, large = args.sizes
    with tempfile.TemporaryDirectory(prefix="bench_memory-", dir=args.workdir) as tmp:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        results = {"small": run_size(small, Path(tmp), True), "large": run_size(large, Path(tmp), False)}
    ratio = {phase: round(results["large"][phase]["peak_rss_mb"] / results["small"][phase]["peak_rss_mb"], 3)
             for phase in ("prepare", "train_streamed")}
    report = {"date": started, "machine": machine(), "resolution": RESOLUTION, "channels": CHANNELS,
              "batch_size": BATCH, "steps": STEPS, **results, "peak_rss_ratio_large_over_small": ratio}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
