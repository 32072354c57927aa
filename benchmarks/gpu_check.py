"""The pipeline on a CUDA GPU, timed: prepare -> train (AMP) -> evaluate (FID on the GPU); prints one JSON object.

Runs the stages' library functions with ``params.yaml`` as ``make run`` does, overriding only the device, the
training precision and the output paths (under ``--work``). Left out: ``validate`` (Great Expectations) and
``register`` / tracking (MLflow), CPU bookkeeping that a GPU does not change (their times are in the orchestration
benchmark). Also measured:

- in-training FID on the GPU (``train.eval_every_kimg``: G_ema samples on the training device);
- FID of one snapshot evaluated on the GPU and on the CPU (each computing its own reference statistics), so the
  GPU path (fp32 convolutions with TF32 off) is checked against the CPU numbers, which match the reference
  implementations;
- evaluate's wall time for each of ``--fid-samples`` (generated samples; real side: as many test images, at most
  10k).

``--work`` (default runs/gpu_check) is deleted and rewritten on every run.

    python benchmarks/gpu_check.py --out gpu.json            # ~2 min on an H200 once the data is prepared

Exits with an error when no CUDA device is available.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from argtypes import int_at_least, int_list  # noqa: E402
from machine_info import machine  # noqa: E402

from ganops.config import ConfigError, load_params  # noqa: E402
from ganops.rundir import RunDir  # noqa: E402


def _positive_kimg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0 and finite (thousands of images), got {text}")
    return value


WORK_MARKER = ".gpu_check"  # --work is deleted on every run only when this script made it


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--work", default="runs/gpu_check", help="run dir, eval outputs and statistics caches go here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="training precision (auto = AMP: bf16 autocast where supported)")
    ap.add_argument("--total-kimg", type=_positive_kimg, default=None, help="default: params.yaml's train.total_kimg")
    ap.add_argument("--fid-samples", type=int_list(2), default=[2000, 10000])
    ap.add_argument("--agreement-samples", type=int_at_least(2), default=500,
                    help="FID on GPU vs CPU with this many samples")
    ap.add_argument("--train-only", action="store_true", help="no FID (no Inception weights needed)")
    ap.add_argument("--graph-check", type=int_at_least(0), default=0, metavar="STEPS",
                    help="also train STEPS steps with and without the CUDA-graph step and compare the results")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is available (torch.cuda.is_available() is False)")

    from ganops.data.prepare import prepare
    from ganops.evaluate import evaluate
    from ganops.metrics.api import make_metric_fn
    from ganops.training.loop import training_loop

    try:
        p = load_params(args.params)
    except ConfigError as err:
        raise SystemExit(f"gpu_check: {err}") from None
    work = Path(args.work)
    if work.exists():  # a fresh run each time: an old run dir would be resumed, not timed
        if any(work.iterdir()) and not (work / WORK_MARKER).is_file():
            raise SystemExit(f"gpu_check: --work {work.resolve()} is not empty and was not written by gpu_check; "
                             "it would be deleted: pass another --work directory")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("made by benchmarks/gpu_check.py; deleted and rewritten on every run\n")
    result: dict = {"params": args.params, **machine(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "stages_s": {}}
    t = time.perf_counter()
    summary_path = Path(p.prepare.out_dir) / "summary.json"
    if summary_path.is_file():
        result["prepare"] = "reused " + str(summary_path)
    else:
        prepare(p.prepare, seed=p.seed)
    result["stages_s"]["prepare"] = round(time.perf_counter() - t, 2)

    total_kimg = args.total_kimg if args.total_kimg is not None else p.train.total_kimg
    train_cfg = p.train.model_copy(update=dict(
        device=args.device, precision=args.precision, total_kimg=total_kimg, run_dir=str(work / "train"),
        eval_every_kimg=0 if args.train_only else total_kimg / 2, eval_num_samples=500))
    eval_in_train = p.evaluate.model_copy(update=dict(device=args.device, num_samples=500,
                                                      ref_stats_dir=str(work / "train" / "ref_stats")))
    metric_fn = None if args.train_only else make_metric_fn(eval_in_train, prepared_dir=p.prepare.out_dir,
                                                            seed=p.seed)
    t = time.perf_counter()
    summary = training_loop(train_cfg, prepared_dir=p.prepare.out_dir, seed=p.seed, progress=False,
                            metric_fn=metric_fn)
    result["stages_s"]["train"] = round(time.perf_counter() - t, 2)
    stats, rate = _stats_and_rate(work / "train")
    result["train"] = {"total_kimg": total_kimg, "steps": summary["step"], "precision": args.precision,
                       "cuda_graph": summary["cuda_graph"],
                       "batch_size": train_cfg.batch_size, "images_per_s_median": rate,
                       "in_training_fid": [s["metric/fid"] for s in stats if "metric/fid" in s],
                       "loss_G": summary["loss_G"], "loss_D": summary["loss_D"]}

    if args.graph_check:
        result["graph_check"] = graph_check(train_cfg, p, work, args.graph_check)
    if args.train_only:
        return _emit(result, args.out)

    def run_eval(device: str, n: int, tag: str) -> dict:
        cfg = p.evaluate.model_copy(update=dict(device=device, num_samples=n, out=str(work / f"eval-{tag}.json"),
                                                ref_stats_dir=str(work / f"ref_stats-{device}")))
        t0 = time.perf_counter()
        out = evaluate(cfg, run_dir=work / "train", prepared_dir=p.prepare.out_dir, seed=p.seed)
        return {"device": out["device"], "num_samples": n, "num_real": out["num_real"], "fid": out["fid"],
                "kid_mean": out["kid_mean"], "wall_s": round(time.perf_counter() - t0, 2)}

    result["evaluate"] = []
    for n in args.fid_samples:
        result["evaluate"].append(run_eval(args.device, n, f"{args.device}-{n}"))
        print(json.dumps({"evaluate": result["evaluate"][-1]}), file=sys.stderr, flush=True)
    result["stages_s"]["evaluate"] = result["evaluate"][0]["wall_s"]
    n = args.agreement_samples
    if args.device == "cpu":  # a dry run: there is no second device to agree with
        return _emit(result, args.out)
    a, b = run_eval(args.device, n, f"agree-{args.device}"), run_eval("cpu", n, "agree-cpu")
    result["fid_agreement"] = {"num_samples": n, args.device: a["fid"], "cpu": b["fid"],
                               "abs_diff": abs(a["fid"] - b["fid"]), "wall_s": {args.device: a["wall_s"],
                                                                                "cpu": b["wall_s"]},
                               "uint8_pixels_differing": _pixels_differing(work / "train", n, args.device, p.seed)}
    return _emit(result, args.out)


def _stats_and_rate(run_dir: Path) -> tuple[list[dict], float]:
    """A run's stats.jsonl lines and the median images/s of its timing windows, the first (warm-up: cuDNN
    autotuning, graph capture) left out when there are others."""
    stats = RunDir(run_dir).read_stats()
    rates = [s["images_per_s"] for s in stats if "images_per_s" in s]
    return stats, round(statistics.median(rates[1:] or rates), 1)


def graph_check(train_cfg, p, work: Path, steps: int) -> dict:
    """Train ``steps`` steps from the same seed with the CUDA-graph step and eagerly; compare losses and G_ema."""
    from ganops.training.loop import training_loop
    from ganops.training.snapshot import load_torch

    out: dict = {"steps": steps}
    runs = {}
    for graph in (True, False):
        run_dir = work / f"graph-{graph}"
        cfg = train_cfg.model_copy(update=dict(cuda_graph=graph, run_dir=str(run_dir), eval_every_kimg=0,
                                               total_kimg=steps * train_cfg.batch_size / 1000))
        t = time.perf_counter()
        summary = training_loop(cfg, prepared_dir=p.prepare.out_dir, seed=p.seed, progress=False)
        stats, rate = _stats_and_rate(run_dir)
        runs[graph] = {"stats": [s for s in stats if "loss_G" in s],
                       "G_ema": load_torch(RunDir(run_dir).snapshot)["G_ema"]}
        out[f"graph_{graph}"] = {"cuda_graph_used": summary["cuda_graph"], "wall_s": round(time.perf_counter() - t, 2),
                                 "images_per_s_median": rate}
    a, b = runs[True], runs[False]
    out["max_abs_loss_diff"] = max(abs(x[k] - y[k]) for x, y in zip(a["stats"], b["stats"], strict=True)
                                   for k in ("loss_G", "loss_D"))
    out["max_abs_G_ema_diff"] = max(float((a["G_ema"][k].float() - b["G_ema"][k].float()).abs().max())
                                    for k in a["G_ema"] if a["G_ema"][k].is_floating_point())
    out["final_losses"] = {"graph": {k: a["stats"][-1][k] for k in ("loss_G", "loss_D")},
                           "eager": {k: b["stats"][-1][k] for k in ("loss_G", "loss_D")}}
    for name, update in (("conditional", dict(conditional=True)), ("spectral_norm_hinge",
                                                                   dict(spectral_norm=True, loss="hinge"))):
        cfg = train_cfg.model_copy(update=dict(run_dir=str(work / f"graph-{name}"), eval_every_kimg=0,
                                               total_kimg=steps * train_cfg.batch_size / 1000, **update))
        summary = training_loop(cfg, prepared_dir=p.prepare.out_dir, seed=p.seed, progress=False)
        out[name] = {"cuda_graph_used": summary["cuda_graph"], "loss_G": summary["loss_G"]}
    return out


def _pixels_differing(run_dir: Path, n: int, device: str, seed: int) -> dict:
    """How many uint8 pixels of ``n`` evaluation samples differ between G on ``device`` and on the CPU (as
    ``evaluate`` makes them: same latents, quantized the NVIDIA way)."""
    from ganops.metrics.inception import exact_fp32
    from ganops.metrics.preprocess import quantize_to_uint8
    from ganops.training.sampling import iter_samples
    from ganops.training.snapshot import load_generator

    images = {}
    for dev in (device, "cpu"):
        G = load_generator(RunDir(run_dir).snapshot)[0].to(dev)
        with torch.no_grad(), exact_fp32(dev):
            images[dev] = np.concatenate([quantize_to_uint8(x).cpu().numpy()
                                           for x in iter_samples(G, n, seed=seed, device=dev)])
    diff = images[device] != images["cpu"]
    return {"count": int(diff.sum()), "of": int(diff.size), "max_levels": int(np.abs(
        images[device].astype(np.int16) - images["cpu"].astype(np.int16)).max())}


def _emit(result: dict, out: str | None) -> dict:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
