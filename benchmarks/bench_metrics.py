"""Metric speed/accuracy benchmarks; prints one JSON object (ratios measured side by side in one run).

    .venv/bin/python benchmarks/bench_metrics.py --features 16 --sqrt --memory          # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_metrics.py --fmnist 2000 --protocols legacy_tensorflow,clean  # ~1 h on 2 cores

Sections:
- features: img/s of the TorchScript file run as is (fp32, the naive baseline) vs the eager fast path (folded BN,
  channels_last) in fp32 and bf16 autocast, interleaved on the same random uint8 images; max |feature diff|.
- sqrt: tr sqrt(S1 S2) for d=2048 covariances, scipy.linalg.sqrtm vs ganops' eigh route: seconds, relative diff.
- memory: peak RSS (MiB) of the evaluate data path (quantize, resize to 299, streaming statistics, KID rows capped
  at 10k) over N generated 28x28 images at two N (subprocesses); the Inception forward is replaced by a cheap
  fixed projection (the network's activations are per batch, not per N).
- fmnist: FID of Fashion-MNIST train[:N] vs test[:N] per protocol with the fast path (fp32, and bf16 with --bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def bench_features(n: int, batch_size: int) -> dict:
    from ganops.metrics.inception import load_feature_extractor
    from ganops.metrics.preprocess import to_inception_input

    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = to_inception_input(images)
    paths = {"scripted_fp32": load_feature_extractor(backend="torchscript"),
             "eager_fp32": load_feature_extractor(), "eager_bf16": load_feature_extractor(precision="bf16")}
    out: dict = {"num_images": n, "batch_size": batch_size, "threads": torch.get_num_threads()}
    feats, seconds = {}, {k: 0.0 for k in paths}
    for name, ex in paths.items():  # warm-up: oneDNN primitives; TorchScript's profiling executor optimises the
        for _ in range(3):           # graph only after its first runs, which would otherwise count against it
            ex._forward(x[:batch_size])
    for start in range(0, n, batch_size):  # interleave so background load hits every path alike
        for name, ex in paths.items():
            t = time.perf_counter()
            f = ex._forward(x[start:start + batch_size])
            seconds[name] += time.perf_counter() - t
            feats.setdefault(name, []).append(f.double())
    for name in paths:
        out[f"{name}_img_per_s"] = round(n / seconds[name], 3)
    ref = torch.cat(feats["scripted_fp32"])
    for name in ("eager_fp32", "eager_bf16"):
        out[f"{name}_speedup_vs_scripted"] = round(seconds["scripted_fp32"] / seconds[name], 3)
        out[f"{name}_max_abs_diff"] = float((torch.cat(feats[name]) - ref).abs().max())
    out["feature_max_abs"] = float(ref.abs().max())
    out.update(_flop_ceiling(paths["eager_fp32"], x[:1], out))
    return out


def _flop_ceiling(extractor, x1: torch.Tensor, out: dict) -> dict:
    """Achieved fp32 GFLOP/s of each path against this CPU's nominal fp32 peak (what a speedup can reach at most).

    Peak = cores x clock (``cpu MHz`` of /proc/cpuinfo, no boost) x 32 FLOP/cycle (two 256-bit FMA units, AVX2:
    2 x 8 lanes x 2 FLOP). Reported only where torch's CPU capability is AVX2: AVX-512 and AMX CPUs peak higher.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        extractor._forward(x1)
    gflop = counter.get_total_flops() / 1e9
    res: dict = {"gflop_per_image": round(gflop, 3)}
    for name in ("scripted_fp32", "eager_fp32"):
        res[f"{name}_gflop_per_s"] = round(gflop * out[f"{name}_img_per_s"], 1)
    try:
        mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return res
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        peak = (os.cpu_count() or 1) * mhz / 1000 * 32
        res["nominal_fp32_peak_gflop_per_s"] = round(peak, 1)
        res["eager_fp32_fraction_of_peak"] = round(res["eager_fp32_gflop_per_s"] / peak, 3)
        res["max_speedup_vs_scripted_at_peak"] = round(peak / res["scripted_fp32_gflop_per_s"], 2)
    return res


def bench_sqrt(d: int) -> dict:
    import scipy.linalg

    from ganops.metrics.fid import trace_sqrt_product

    rs = np.random.RandomState(0)
    a, b = rs.randn(d + 500, d), rs.randn(d + 500, d) @ (np.eye(d) + 0.1 * rs.randn(d, d) / np.sqrt(d))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    t = time.perf_counter()
    ref = float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    t_scipy = time.perf_counter() - t
    t = time.perf_counter()
    ours = trace_sqrt_product(s1, s2)
    t_ours = time.perf_counter() - t
    return {"d": d, "scipy_sqrtm_s": round(t_scipy, 3), "eigh_s": round(t_ours, 3),
            "speedup": round(t_scipy / t_ours, 2), "rel_diff": abs(ours - ref) / abs(ref)}


def _memory_child(n: int) -> None:
    from ganops.metrics import defaults
    from ganops.metrics.fid import FeatureStats
    from ganops.metrics.preprocess import quantize_to_uint8, to_inception_input

    proj = torch.randn(3, 2048, generator=torch.Generator().manual_seed(0))
    stats = FeatureStats(2048, max_kept=defaults.MAX_KEPT_FEATURES)  # as evaluate: KID rows capped
    g = torch.Generator().manual_seed(1)
    for start in range(0, n, 250):
        fake = torch.rand(min(250, n - start), 1, 28, 28, generator=g) * 2 - 1  # stands in for G's output
        x = to_inception_input(quantize_to_uint8(fake))
        stats.append((x.mean(dim=(2, 3)) @ proj).relu().double().numpy())
    _ = stats.cov
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_memory(ns: list[int]) -> dict:
    out = {}
    for n in ns:
        res = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                             check=True)
        out[f"peak_rss_mib_n{n}"] = round(float(res.stdout.strip().splitlines()[-1]), 1)
    return out


def bench_fmnist(n: int, protocols: list[str], bf16: bool, prepared: str | None) -> dict:
    from ganops.metrics.fid import fid_from_features
    from ganops.metrics.inception import load_feature_extractor

    if prepared:
        from ganops.data.dataset import load_split
        train, test = load_split(prepared, "train")[0][:n], load_split(prepared, "test")[0][:n]
    else:
        from ganops.data.source_fashion_mnist import read_idx_gz
        root = "/usr/share/datasets/fashion-mnist"
        train = read_idx_gz(f"{root}/train-images-idx3-ubyte.gz")[:n, None]
        test = read_idx_gz(f"{root}/t10k-images-idx3-ubyte.gz")[:n, None]
    out: dict = {"num_images": n}
    for precision in ["fp32"] + (["bf16"] if bf16 else []):
        ex = load_feature_extractor(precision=precision)
        for protocol in protocols:
            t = time.perf_counter()
            fa, fb = ex.features(train, protocol), ex.features(test, protocol)
            out[f"fid_{protocol}_{precision}"] = fid_from_features(fa, fb)
            out[f"seconds_{protocol}_{precision}"] = round(time.perf_counter() - t, 1)
    for protocol in protocols:
        if bf16:
            out[f"fid_delta_bf16_{protocol}"] = out[f"fid_{protocol}_bf16"] - out[f"fid_{protocol}_fp32"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, default=0, help="images for the feature-throughput comparison")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sqrt", action="store_true")
    p.add_argument("--sqrt-dim", type=int, default=2048)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--memory-ns", default="12000,50000", help="two N above the 10k KID cap")
    p.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fmnist", type=int, default=0, help="FID of Fashion-MNIST train[:N] vs test[:N]")
    p.add_argument("--protocols", default="legacy_tensorflow,clean")
    p.add_argument("--bf16", action="store_true", help="also run --fmnist with bf16 autocast")
    p.add_argument("--prepared", default=None, help="prepared dir (default: read the IDX files directly)")
    args = p.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    result: dict = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    sections = [("sqrt", args.sqrt, lambda: bench_sqrt(args.sqrt_dim)),
                ("features", args.features, lambda: bench_features(args.features, args.batch_size)),
                ("memory", args.memory, lambda: bench_memory([int(v) for v in args.memory_ns.split(",")])),
                ("fmnist", args.fmnist, lambda: bench_fmnist(args.fmnist, args.protocols.split(","), args.bf16,
                                                             args.prepared))]
    for name, wanted, run in sections:
        if wanted:
            result[name] = run()
            print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)  # progress for long runs
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
