"""Run the benchmark suite with quick settings (<= 30 minutes on 2 cores) and write the results.

Writes, next to this file:
    results.json   every section's JSON + date, machine (CPU model, cores, torch), settings, and a ``targets``
                   table (each ratio / time against its target)
    results.md     the same as Markdown tables
    scaling.png    training images/s vs batch size (ganops vs reference, 1 and 2 threads) and FID wall time vs N

Each benchmark runs in its own interpreter (bench_train.py, bench_metrics.py, bench_orchestration.py); a section
that fails is recorded with its error and the others still run.

    .venv/bin/python benchmarks/run_all.py            # or: make bench
    .venv/bin/python benchmarks/run_all.py --only train_reference,metrics
    python benchmarks/run_all.py --gpu                # on a CUDA machine: gpu_results.json (~5 min on an H200)

results.md also lists the figures of the last GPU run on record (gpu_results.json), with its date and device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
PY = sys.executable
FID_NS = (1000, 5000, 10000)
QUALITY_RESULTS = HERE / "quality_results.json"
GPU_RESULTS = HERE / "gpu_results.json"  # written by --gpu on a machine with a CUDA GPU
GPU_SUITE: dict[str, tuple[list[str], int]] = {
    "train_cuda": ([str(HERE / "bench_train.py"), "--cuda", "--repeats", "3"], 900),
    "pipeline": ([str(HERE / "gpu_check.py"), "--graph-check", "200"], 900),
}

# name -> (argv, timeout seconds). Quick settings: see each script's --help for the full ones.
SUITE: dict[str, tuple[list[str], int]] = {
    "train_reference": ([str(HERE / "bench_train.py"), "--threads", "2", "--variants", "--steps", "10",
                         "--log-every", "5", "--bf16-steps", "2", "--repeats", "3", "--reference",
                         "--reference-steps", "60"], 900),
    "train_scaling": ([str(HERE / "bench_train.py"), "--scaling", "--scaling-steps", "12"], 900),
    "train_quality": ([str(HERE / "bench_train.py"), "--threads", "2", "--quality", "--quality-steps", "300",
                       "--quality-samples", "300", "--quality-seeds", "0,1,2"], 1500),
    "metrics": ([str(HERE / "bench_metrics.py"), "--features", "64", "--batch-size", "32", "--sqrt", "--memory",
                 "--memory-ns", "12000,50000"], 900),
    "orchestration": ([str(HERE / "bench_orchestration.py"), "--pipeline"], 1200),
}


def run_section(argv: list[str], timeout_s: int) -> dict:
    t = time.perf_counter()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    # Own session, so that a timeout kills the benchmark's own children too (they would hold the pipes open).
    child = subprocess.Popen([PY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"timed out after {timeout_s} s", "wall_s": round(time.perf_counter() - t, 1)}
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if proc.returncode:
        return {"error": f"exit code {proc.returncode}", "stderr_tail": proc.stderr[-3000:],
                "wall_s": round(time.perf_counter() - t, 1)}
    return {**json.loads(proc.stdout), "wall_s": round(time.perf_counter() - t, 1)}


def fid_time_estimate(metrics: dict) -> dict:
    """FID wall time for N in FID_NS, extrapolated from the measured eager Inception throughput (img/s) and the
    measured d=2048 trace-sqrt time: N generated images (+ N real ones when the reference stats are not cached)."""
    ips, sqrt_s = metrics["features"]["eager_fp32_img_per_s"], metrics["sqrt"]["eigh_s"]
    return {"basis": f"extrapolated: {ips} img/s eager fp32 Inception (measured on "
                     f"{metrics['features']['num_images']} images) + {sqrt_s} s tr-sqrt",
            **{f"n{n}": {"cached_ref_s": round(n / ips + sqrt_s, 1), "uncached_ref_s": round(2 * n / ips + sqrt_s, 1)}
               for n in FID_NS}}


def measured_evaluate_walls(path: Path | None = None) -> list[dict]:
    """Measured ``ganops evaluate`` wall times (whole stage: sampling, Inception, FID/KID/PR) from the quality
    benchmark's runs (``QUALITY_RESULTS``), as points to set beside the extrapolation; [] when it has not been run.

    Raises:
        SystemExit: the file is not a JSON object of bench_quality.py results (named, with what to do).
    """
    path = QUALITY_RESULTS if path is None else path
    if not path.is_file():
        return []
    try:
        rows = [{"name": name, "n": r["num_generated"], "evaluate_wall_s": r["evaluate_wall_s"],
                 "started": r["started"], "load_avg_at_start": r["machine"]["load_avg_at_start"][0]}
                for name, r in json.loads(path.read_text()).items() if "evaluate_wall_s" in r]
    except (json.JSONDecodeError, AttributeError, TypeError, KeyError, IndexError) as err:
        raise SystemExit(f"{path} is not a JSON object of bench_quality.py results ({type(err).__name__}: {err}); "
                         "restore it (git checkout) or move it away") from None
    return sorted(rows, key=lambda r: (r["n"], r["started"]))


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a run killed while writing leaves the previous file, never half of one."""
    from ganops.io import atomic_write

    with atomic_write(path, "w") as f:
        f.write(text)


def _get(d: dict, *keys: str):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets(res: dict) -> list[dict]:
    """Each measured figure against its target (None where the section failed)."""
    ref = _get(res, "train_reference", "reference") or {}
    q = _get(res, "train_quality", "quality") or {}
    pipe = _get(res, "orchestration", "pipeline") or {}
    feat = _get(res, "metrics", "features") or {}
    sqrt = _get(res, "metrics", "sqrt") or {}
    mem = _get(res, "metrics", "memory") or {}
    mem_ns = sorted(int(k.rsplit("_n", 1)[1]) for k in mem if k.startswith("peak_rss_mib_n"))
    mem_big = mem.get(f"peak_rss_mib_n{mem_ns[-1]}") if mem_ns else None
    mem_flat = round(mem_big / mem[f"peak_rss_mib_n{mem_ns[0]}"], 3) if len(mem_ns) > 1 else None
    rows = [
        {"what": "training speedup vs pytorch/examples-style loop (median step, batch 64, 2 threads)",
         "value": ref.get("speedup_median"), "target": ">= 1.5", "ok": _ge(ref.get("speedup_median"), 1.5)},
        {"what": "same, least-contended step (min)", "value": ref.get("speedup_min"), "target": ">= 1.5",
         "ok": _ge(ref.get("speedup_min"), 1.5)},
        {"what": f"FID at equal steps: ganops - reference, mean over seeds {q.get('seeds')} ({q.get('steps')} steps, "
                 f"{q.get('num_samples')} samples)", "value": q.get("fid_delta"),
         "target": f"<= the seed-to-seed spread ({q.get('fid_seed_spread')})", "ok": q.get("no_fid_loss")},
        {"what": "Prefect flow overhead s (flow wall - sum of stage dvc repro walls)",
         "value": pipe.get("flow_overhead_s"), "target": "<= 30", "ok": _le(pipe.get("flow_overhead_s"), 30)},
        {"what": "Prefect flow with every stage up to date, wall s", "value": pipe.get("flow_noop_wall_s"),
         "target": "<= 30", "ok": _le(pipe.get("flow_noop_wall_s"), 30)},
        {"what": "no-op dvc repro wall s", "value": pipe.get("dvc_repro_noop_wall_s"), "target": "<= 10",
         "ok": _le(pipe.get("dvc_repro_noop_wall_s"), 10)},
        {"what": "Inception feature throughput: eager fp32 / TorchScript file as is (fp32)",
         "value": feat.get("eager_fp32_speedup_vs_scripted"), "target": ">= 3",
         "ok": _ge(feat.get("eager_fp32_speedup_vs_scripted"), 3)},
        {"what": "same: max |feature difference| (features up to ~10)", "value": feat.get("eager_fp32_max_abs_diff"),
         "target": "<= 1e-3 (FID within 0.05)", "ok": _le(feat.get("eager_fp32_max_abs_diff"), 1e-3)},
        {"what": "tr sqrt(S1 S2), d=2048: scipy.linalg.sqrtm s / ganops s", "value": sqrt.get("speedup"),
         "target": ">= 5", "ok": _ge(sqrt.get("speedup"), 5)},
        {"what": "same: relative difference", "value": sqrt.get("rel_diff"), "target": "<= 1e-6",
         "ok": _le(sqrt.get("rel_diff"), 1e-6)},
        {"what": f"evaluate data path peak RSS MiB at N={mem_ns[-1] if mem_ns else '?'}", "value": mem_big,
         "target": "<= 2048", "ok": _le(mem_big, 2048)},
        {"what": f"same, peak RSS ratio N={mem_ns[-1] if mem_ns else '?'} / N={mem_ns[0] if mem_ns else '?'}",
         "value": mem_flat, "target": "<= 1.1 (flat in N)", "ok": _le(mem_flat, 1.1)},
    ]
    return rows + gpu_targets()


def gpu_targets(path: Path | None = None) -> list[dict]:
    """The GPU figures of ``GPU_RESULTS`` against their targets ([] when no GPU run is on record)."""
    path = GPU_RESULTS if path is None else path
    if not path.is_file():
        return []
    g = json.loads(path.read_text())
    where = f"{g.get('device', 'GPU')}, {g.get('date')}"
    rows64 = [r for r in _get(g, "train_cuda", "rows") or [] if r["batch_size"] == 64]
    r64 = rows64[0] if rows64 else {}
    agree = _get(g, "pipeline", "fid_agreement") or {}
    return [
        {"what": f"CUDA training speedup vs the pytorch/examples-style loop, batch 64, fp32 ({where})",
         "value": r64.get("speedup_ganops_fp32"), "target": ">= 1.5", "ok": _ge(r64.get("speedup_ganops_fp32"), 1.5)},
        {"what": "same, AMP (bf16 autocast)", "value": r64.get("speedup_ganops_amp_bf16"), "target": ">= 1.5",
         "ok": _ge(r64.get("speedup_ganops_amp_bf16"), 1.5)},
        {"what": f"FID evaluated on the GPU - on the CPU, same snapshot ({agree.get('num_samples')} samples)",
         "value": agree.get("abs_diff"), "target": "<= 0.01", "ok": _le(agree.get("abs_diff"), 0.01)},
    ]


def run_gpu_suite() -> None:
    """``--gpu``: the CUDA benchmarks (bench_train --cuda, gpu_check.py) into ``GPU_RESULTS``."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "device": torch.cuda.get_device_name(), "machine": machine()}
    for name, (argv, timeout_s) in GPU_SUITE.items():
        print(f"[run_all --gpu] {name} ...", file=sys.stderr, flush=True)
        out = run_section(argv, timeout_s)
        res[name] = out.get("cuda", out) if name == "train_cuda" else out
    failed = [name for name in GPU_SUITE if "error" in res[name]]
    if failed:  # the GPU record on file stays: a failed run must not replace it
        partial = GPU_RESULTS.with_name(GPU_RESULTS.stem + ".failed.json")
        _write(partial, json.dumps(res, indent=2) + "\n")
        sys.exit(f"--gpu: section(s) {failed} failed (errors in {partial}); {GPU_RESULTS.name} left as it was")
    _write(GPU_RESULTS, json.dumps(res, indent=2) + "\n")
    print(json.dumps(gpu_targets(), indent=2))


def _ge(v, t):
    return None if v is None else v >= t


def _le(v, t):
    return None if v is None else v <= t


def markdown(res: dict) -> str:
    lines = [f"# ganops benchmarks ({res['date']})", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']} "
             f"({res['machine']['cpu_capability']}), load average at start {res['machine']['load_avg_at_start']}.",
             "", f"Suite wall time: {res.get('total_wall_s')} s (sum of the sections' own walls).",
             "", "| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['value']} | {r['target']} | {r['ok']} |" for r in res["targets"]]
    rows = _get(res, "train_scaling", "scaling", "rows")
    if rows:
        lines += ["", "## Training throughput (images/s, median step)", "",
                  "| batch | threads | ganops | reference | speedup |", "|---|---|---|---|---|"]
        lines += [f"| {r['batch_size']} | {r['threads']} | {r['ganops_images_per_s']} | {r['reference_images_per_s']}"
                  f" | {r['speedup']} |" for r in rows]
        wr = _get(res, "train_scaling", "scaling", "reference_workers") or []
        lines += ["", "| reference DataLoader workers (batch 64) | threads | images/s |", "|---|---|---|"]
        lines += [f"| {r['workers']} | {r['threads']} | {r['reference_images_per_s']} |" for r in wr]
    var = _get(res, "train_reference", "variants", "variants")
    if var:
        lines += ["", "## ganops loop variants (batch 64)", "", "| variant | images/s | speedup vs fp32 |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v['images_per_s_median']} | {v['speedup_vs_fp32_median']} |" for k, v in var.items()]
    fid = res.get("fid_time")
    if fid and "basis" in fid:
        lines += ["", f"## FID wall time ({fid['basis']})", "", "| N | cached ref stats (s) | uncached (s) |",
                  "|---|---|---|"]
        lines += [f"| {n} | {fid[f'n{n}']['cached_ref_s']} | {fid[f'n{n}']['uncached_ref_s']} |" for n in FID_NS]
    if fid and fid.get("measured"):
        lines += ["", "Measured `ganops evaluate` walls (bench_quality.py runs; load average at their start):", "",
                  "| run | N | evaluate s | load |", "|---|---|---|---|"]
        lines += [f"| {m['name']} | {m['n']} | {m['evaluate_wall_s']} | {m['load_avg_at_start']} |"
                  for m in fid["measured"]]
    gpu = json.loads(GPU_RESULTS.read_text()) if GPU_RESULTS.is_file() else {}
    gpu_rows = _get(gpu, "train_cuda", "rows")
    if gpu_rows:
        names = [k for k in gpu_rows[0] if k.startswith(("ganops", "reference"))]
        lines += ["", f"## CUDA training, images/s (median step; {gpu.get('device')}, {gpu.get('date')}, "
                      f"{GPU_RESULTS.name})", "", "| batch | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {r['batch_size']} | " + " | ".join(str(r[k]) for k in names) + " |" for r in gpu_rows]
    imports = _get(res, "orchestration", "imports")
    if imports:
        lines += ["", "## Import / start-up seconds (-X importtime cumulative; interpreter wall)", "",
                  "| module | import s | wall s |", "|---|---|---|"]
        lines += [f"| {k} | {v.get('import_s', '')} | {v.get('interpreter_wall_s', v.get('wall_s'))} |"
                  for k, v in imports.items()]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = _get(res, "train_scaling", "scaling", "rows") or []
    for threads in sorted({r["threads"] for r in rows}):
        sel = [r for r in rows if r["threads"] == threads]
        bs = [r["batch_size"] for r in sel]
        ax1.plot(bs, [r["ganops_images_per_s"] for r in sel], "o-", label=f"ganops, {threads} thr")
        ax1.plot(bs, [r["reference_images_per_s"] for r in sel], "s--", label=f"reference, {threads} thr")
    ax1.set_xscale("log", base=2)
    ax1.minorticks_off()
    ax1.set(xlabel="batch size", ylabel="training images/s (median step)",
            title="DCGAN 28x28 training throughput")
    ax1.set_xticks([32, 64, 128, 256, 512], labels=["32", "64", "128", "256", "512"])
    if rows:
        ax1.legend(fontsize=8)
    fid = res.get("fid_time") or {}
    if "basis" in fid:
        ax2.plot(FID_NS, [fid[f"n{n}"]["cached_ref_s"] / 60 for n in FID_NS], "o-", label="extrapolated, ref cached")
        ax2.plot(FID_NS, [fid[f"n{n}"]["uncached_ref_s"] / 60 for n in FID_NS], "s--", label="extrapolated, uncached")
    quiet = [m for m in fid.get("measured", []) if m["load_avg_at_start"] < 3]
    if quiet:
        ax2.plot([m["n"] for m in quiet], [m["evaluate_wall_s"] / 60 for m in quiet], "k^", linestyle="none",
                 label="measured evaluate stage (load < 3)")
    if "basis" in fid or quiet:
        ax2.set(xlabel="generated samples N", ylabel="minutes", title="FID wall time")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma list of sections (default all): {', '.join(SUITE)}")
    ap.add_argument("--out-dir", default=str(HERE))
    ap.add_argument("--gpu", action="store_true", help=f"run the CUDA benchmarks instead, into {GPU_RESULTS.name}")
    args = ap.parse_args()
    if args.gpu:
        run_gpu_suite()
        return
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.only and not wanted:  # `--only ,` used to run the whole ~30-minute suite
        ap.error(f"--only {args.only!r} names no section; valid: {', '.join(SUITE)}")
    wanted = wanted or list(SUITE)
    unknown = sorted(set(wanted) - set(SUITE))
    if unknown:
        sys.exit(f"unknown section(s) {unknown}; valid: {', '.join(SUITE)}")
    out = Path(args.out_dir)
    try:  # before any section runs, not when the first one (minutes later) writes its result
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        sys.exit(f"--out-dir {out}: cannot create it ({err}); pass a writable directory")
    measured_evaluate_walls()  # a broken quality_results.json is reported now, not after the whole suite
    # --only re-runs some sections and keeps the others' last results.
    res: dict = {}
    if args.only and (out / "results.json").is_file():
        try:
            res = json.loads((out / "results.json").read_text())
        except json.JSONDecodeError as err:
            sys.exit(f"{out / 'results.json'} is not valid JSON ({err}): --only would merge into it; restore it "
                     "(git checkout) or run the whole suite without --only")
        if not isinstance(res, dict):
            sys.exit(f"{out / 'results.json'} must hold a JSON object; restore it or run without --only")
    res.update({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    res.setdefault("settings", {}).update({name: " ".join(Path(a).name if a.startswith("/") else a
                                                          for a in SUITE[name][0]) for name in wanted})
    t0 = time.perf_counter()
    for name in wanted:
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        res[name] = run_section(*SUITE[name])
        print(f"[run_all] {name}: {res[name].get('error', 'ok')} ({res[name]['wall_s']} s)", file=sys.stderr,
              flush=True)
        _write(out / "results.json", json.dumps(res, indent=2) + "\n")  # keep finished sections if killed
    if "error" not in res.get("metrics", {"error": 1}):
        res["fid_time"] = fid_time_estimate(res["metrics"])
    res.setdefault("fid_time", {})["measured"] = measured_evaluate_walls()
    res["targets"] = targets(res)
    res["invocation_wall_s"] = round(time.perf_counter() - t0, 1)  # this call only (--only runs part of the suite)
    # The whole suite's time: every section's own wall, whether run now or kept from an earlier call.
    res["total_wall_s"] = round(sum(res[name].get("wall_s", 0.0) for name in SUITE if name in res), 1)
    _write(out / "results.json", json.dumps(res, indent=2) + "\n")
    _write(out / "results.md", markdown(res))
    plot(res, out / "scaling.png")
    print(json.dumps(res["targets"], indent=2))


if __name__ == "__main__":
    main()
