"""What G_ema contributes at the end of a run: FID of the raw G and of G_ema from the same training state.

Both generators come from ``<run_dir>/training-state.pt`` (the state ``ganops train`` resumes from), are sampled
with the same latents (``--seed``), and are compared with the same cached real statistics (an ``.npz`` written by
``ganops evaluate`` under ``cache/ref_stats``: mu, sigma, n, protocol, weights_sha256). Prints one JSON object.

    .venv/bin/python benchmarks/bench_ema.py runs/lucic cache/ref_stats/test-10000-legacy_tensorflow-*.npz --n 2000
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ganops.metrics.fid import frechet_distance, stats_from_features
from ganops.metrics.inception import load_feature_extractor
from ganops.metrics.preprocess import quantize_to_uint8
from ganops.rundir import RunDir
from ganops.training.sampling import iter_samples
from ganops.training.snapshot import load_generator, load_torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("ref_stats", type=Path, help="cached real statistics (.npz from ganops evaluate)")
    ap.add_argument("--n", type=int, default=2000, help="generated samples per generator")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ref = np.load(args.ref_stats)
    if not {"mu", "sigma", "protocol", "weights_sha256"} <= set(ref.files):
        raise SystemExit(f"{args.ref_stats} is not a ganops reference-statistics file (needs mu, sigma, protocol, "
                         "weights_sha256); use one from cache/ref_stats")
    protocol = str(ref["protocol"])
    run = RunDir(args.run_dir)
    G_ema, meta = load_generator(run.snapshot_latest)
    state = load_torch(run.state)
    G = copy.deepcopy(G_ema)
    G.load_state_dict(state["G"])  # raw G of the same step; eval mode (BN running statistics), as G_ema is used
    G_ema.load_state_dict(state["G_ema"])
    extractor = load_feature_extractor()
    if extractor.weights_sha256 != str(ref["weights_sha256"]):
        raise SystemExit(f"{args.ref_stats} was computed with other Inception weights; recompute it")
    out: dict = {"run_dir": str(args.run_dir), "kimg": state["cur_nimg"] / 1000, "n_generated": args.n,
                 "n_real": int(ref["n"]), "protocol": protocol, "seed": args.seed}
    for name, net in (("G", G), ("G_ema", G_ema)):
        t = time.perf_counter()
        with torch.no_grad():
            x = torch.cat(list(iter_samples(net, args.n, seed=args.seed, batch_size=100)))
        mu, sigma = stats_from_features(extractor.features(quantize_to_uint8(x), protocol))
        out[f"fid_{name}"] = round(frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), 3)
        out[f"seconds_{name}"] = round(time.perf_counter() - t, 1)
    out["ema_gain"] = round(out["fid_G"] - out["fid_G_ema"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
