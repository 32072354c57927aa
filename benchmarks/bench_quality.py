"""Quality benchmark (issue 4): train a preset on Fashion-MNIST and report FID under the protocol of Lucic et al. 2018.

Protocol ("Are GANs Created Equal?", Lucic et al., NeurIPS 2018): 10,000 generated samples vs the 10,000 test
images, TF Inception 2015-12-05 pool3 features, images resized to 299 x 299 with TF1 bilinear resize (our
``legacy_tensorflow`` protocol), grayscale replicated to 3 channels. Their best Fashion-MNIST FIDs after large
hyper-parameter searches are in ``LUCIC_2018``.

Each configuration is a full params file (default: ``benchmarks/presets/lucic_fmnist.yaml``) plus ``-S key=value``
overrides; it runs ``ganops prepare``, ``ganops train`` and ``ganops evaluate`` in their own interpreters (the same
commands as the pipeline), times each stage and prints one JSON object, which is also merged into
``benchmarks/quality_results.json`` under ``--name``. Training resumes when its run dir holds a training state, so a
killed benchmark can be restarted; ``train_wall_s`` then covers only the last invocation and ``train_wall_s_total``
(from ``train.json``) the whole run.

    .venv/bin/python benchmarks/bench_quality.py                                  # the recommended preset
    .venv/bin/python benchmarks/bench_quality.py --name hinge_sn -S train.loss=hinge -S train.spectral_norm=true \
        -S train.total_kimg=200 -S evaluate.num_samples=2000                       # one more configuration
    .venv/bin/python benchmarks/bench_quality.py --ablation --ablation-kimg 60 --ablation-samples 1000  # ~50 min

``--ablation`` trains every configuration in ``ABLATION`` (the preset with one technique switched) for the same
short length from the same seed and evaluates each on the same N vs N test images. One seed and a short run: the
table shows the direction and rough size of each technique's effect at that length, not its converged value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ganops.io import atomic_write
from ganops.rundir import RunDir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine_info import machine  # noqa: E402

GANOPS = str(Path(sys.executable).with_name("ganops"))
DEFAULT_PRESET = HERE / "presets" / "lucic_fmnist.yaml"
RESULTS = HERE / "quality_results.json"
# Lucic et al. 2018, Fashion-MNIST, best FID per loss after their hyper-parameter search (Table/Figure of the paper).
LUCIC_2018 = {"WGAN": 21.5, "BEGAN": 22.9, "WGAN-GP": 24.5, "NS GAN": 26.5, "MM GAN": 29.6, "LSGAN": 30.7}
TARGET_FID, STRETCH_FID = 21.5, 15.0
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# name -> (what changes against the preset, -S overrides). The preset: DCGAN, non-saturating loss, BN in G and D,
# G_ema half-life 10 kimg, Adam(2e-4, 0.5, 0.999), batch 64, no augmentation, no penalty.
ABLATION: dict[str, tuple[str, list[str]]] = {
    "abl_preset": ("preset (NS loss, BN, G_ema 10 kimg)", []),
    "abl_no_ema": ("no G_ema (raw G)", ["train.ema_halflife_kimg=0"]),
    "abl_minimax": ("minimax loss", ["train.loss=minimax"]),
    "abl_lsgan": ("least-squares loss", ["train.loss=lsgan"]),
    "abl_hinge_sn": ("hinge loss + spectral norm in D (no D BN)", ["train.loss=hinge", "train.spectral_norm=true"]),
    "abl_wgan_gp": ("WGAN-GP (lambda 10, Adam betas (0, 0.9); DCGAN D keeps its BN)",
                    ["train.loss=wgan_gp", "train.betas_g=[0.0, 0.9]", "train.betas_d=[0.0, 0.9]"]),
    "abl_r1": ("R1 penalty gamma 1 (lazy, every 16 steps)", ["train.r1_gamma=1.0"]),
    "abl_diffaugment": ("DiffAugment translation,cutout", ["train.diffaugment=translation,cutout"]),
}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise SystemExit(f"-S {key}: {p!r} is not a params section")
        node = node[p]
    node[leaf] = value


def _read_preset(preset: Path) -> dict[str, Any]:
    """The preset as a mapping with ``train`` and ``evaluate`` sections; SystemExit naming the problem otherwise."""
    if not preset.is_file():
        raise SystemExit(f"--preset {preset}: file not found (default: benchmarks/presets/{DEFAULT_PRESET.name})")
    try:
        params = yaml.safe_load(preset.read_text())
    except yaml.YAMLError as err:
        raise SystemExit(f"--preset {preset} is not valid YAML: {err}") from None
    sections = params if isinstance(params, dict) else {}
    missing = [s for s in ("train", "evaluate") if not isinstance(sections.get(s), dict)]
    if missing:
        raise SystemExit(f"--preset {preset}: needs a params.yaml-style mapping with the sections {missing} "
                         f"(copy benchmarks/presets/{DEFAULT_PRESET.name} and edit it)")
    return params


def _check_names(params: dict[str, Any], source: str) -> None:
    """Validate ``params`` like ``ganops`` will (types, ranges, unknown keys, arch/loss names) before any work."""
    from ganops.config import ConfigError, parse_params

    try:
        cfg = parse_params(params, source)
    except ConfigError as err:
        msg = str(err).replace("Fix these keys in params.yaml", "Fix these keys in the preset or the -S overrides")
        raise SystemExit(msg) from None
    from ganops.losses import LOSSES
    from ganops.models import ARCHS

    for key, value, valid in (("arch", cfg.train.arch, ARCHS), ("loss", cfg.train.loss, LOSSES)):
        if value not in valid:
            raise SystemExit(f"{source}: unknown train.{key} {value!r}; valid: {', '.join(sorted(valid))}")


def build_params(preset: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """The preset with ``overrides`` applied and this configuration's own run dir / eval file (``runs/quality/NAME``),
    validated; nothing is written.

    Raises:
        SystemExit: missing/malformed preset, an override that is not ``KEY=VALUE`` with a YAML value, a result
            that ``ganops`` would refuse (the message names the key), or a run dir trained with other options.
    """
    if not NAME_RE.fullmatch(name):
        raise SystemExit(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it becomes runs/quality/NAME)")
    params = _read_preset(preset)
    if name != "preset":
        params["train"]["run_dir"] = f"runs/quality/{name}/train"
        params["evaluate"]["out"] = f"runs/quality/{name}/eval.json"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"-S {item!r}: expected KEY=VALUE, e.g. -S train.loss=hinge")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise SystemExit(f"-S {item!r}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                             "write lists as [0.0, 0.9] and quote strings with ':' or ','") from None
        _set_dotted(params, key.strip(), parsed)
    _check_names(params, f"{preset} with -S {overrides}" if overrides else str(preset))
    check_run_dir(params, name)
    return params


def make_params(preset: Path, name: str, overrides: list[str]) -> Path:
    """``build_params`` written to ``runs/quality/NAME/params.yaml`` (its path). Raises SystemExit as build_params."""
    params = build_params(preset, name, overrides)
    out = ROOT / "runs" / "quality" / name / "params.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def check_run_dir(params: dict[str, Any], name: str) -> None:
    """Refuse a run dir trained with other hyper-parameters than ``params`` asks for.

    The presets use ``on_config_change: refuse``, under which ``ganops train`` resumes a run dir whose learning rate,
    loss weights, augmentation... differ (with a log warning) and, once it is past ``total_kimg``, returns the old
    model as is: the result would then be filed under the new configuration. Options that may change on resume
    (length, intervals, threads...: ``RESUMABLE_OPTIONS``) are ignored.

    Raises:
        SystemExit: naming the options that differ and the run dir to delete (or another --name to use).
    """
    saved_path = RunDir(ROOT / params["train"]["run_dir"]).options
    if not saved_path.is_file():
        return
    from ganops.config import TrainConfig
    from ganops.training.state import RESUMABLE_OPTIONS
    from ganops.training.snapshot import changed_options, describe_changes

    saved = json.loads(saved_path.read_text())
    current = TrainConfig.model_validate(params["train"]).model_dump(mode="json")
    current["seed"] = params.get("seed", 0)
    diffs = describe_changes({k: v for k, v in changed_options(saved, current).items()
                              if k not in RESUMABLE_OPTIONS and k in saved and k in current})
    if diffs:
        raise SystemExit(f"{params['train']['run_dir']} was trained with other options ({'; '.join(diffs)}); its "
                         f"result would be filed under the new ones. Delete that directory to retrain, or choose "
                         f"another --name (now {name!r}).")


def read_results() -> dict[str, Any]:
    """``quality_results.json`` (``{}`` when absent). SystemExit when it is not a JSON object, so that a corrupt
    file stops the benchmark before training rather than after it."""
    if not RESULTS.exists():
        return {}
    try:
        results = json.loads(RESULTS.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{RESULTS} is not valid JSON ({err}); restore it (git checkout) or move it away") from None
    if not isinstance(results, dict):
        raise SystemExit(f"{RESULTS} must hold a JSON object of results by name; restore it or move it away")
    return results


def run_stage(stage: str, params_file: Path) -> float:
    """``ganops <stage> -p params_file`` -> wall seconds. Raises SystemExit with the stage's output tail on failure."""
    t = time.perf_counter()
    proc = subprocess.run([GANOPS, stage, "-p", str(params_file)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ganops {stage} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return round(time.perf_counter() - t, 1)


def run_config(preset: Path, name: str, overrides: list[str], skip_train: bool = False) -> dict:
    """prepare -> train -> evaluate one configuration; its result dict (also merged into quality_results.json)."""
    read_results()
    params = build_params(preset, name, overrides)
    if skip_train and not RunDir(ROOT / params["train"]["run_dir"]).summary.is_file():
        raise SystemExit(f"--skip-train: {params['train']['run_dir']} holds no finished training (no train.json); "
                         "run without --skip-train to train (or resume) it first")
    params_file = make_params(preset, name, overrides)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    walls = {"prepare_wall_s": run_stage("prepare", params_file)}
    if not skip_train:
        walls["train_wall_s"] = run_stage("train", params_file)
    walls["evaluate_wall_s"] = run_stage("evaluate", params_file)

    train = json.loads(RunDir(ROOT / params["train"]["run_dir"]).summary.read_text())
    ev = json.loads((ROOT / params["evaluate"]["out"]).read_text())
    t = params["train"]
    result = {
        "name": name, "started": started, "machine": machine(),
        "config": {k: t[k] for k in ("arch", "loss", "ngf", "ndf", "batch_size", "total_kimg", "lr_g", "lr_d",
                                     "betas_g", "betas_d", "ema_halflife_kimg", "spectral_norm", "r1_gamma",
                                     "diffaugment", "eval_every_kimg", "eval_num_samples") if k in t},
        "overrides": overrides,
        **walls,
        "train_wall_s_total": round(float(train.get("wall_time_s", 0.0)), 1),
        "kimg": train.get("kimg"), "images_shown_to_D": int(round(float(train.get("kimg", 0)) * 1000)),
        "best_in_training_fid": train.get("best_fid"),
        "fid": round(ev["fid"], 3), "kid_mean": ev["kid_mean"], "kid_std": ev["kid_std"],
        "num_generated": ev["num_generated"], "num_real": ev["num_real"], "protocol": ev["protocol"],
        "weights_sha256": ev["weights_sha256"], "snapshot_kimg": ev.get("kimg"),
        "lucic_2018_best": LUCIC_2018,
        "target": {"fid_le": TARGET_FID, "met": ev["fid"] <= TARGET_FID and ev["num_generated"] >= 10000,
                   "stretch_le": STRETCH_FID, "stretch_met": ev["fid"] <= STRETCH_FID and ev["num_generated"] >= 10000,
                   "train_within_60_min": float(train.get("wall_time_s", 1e9)) <= 3600},
    }
    if name in ABLATION:
        result["ablation"] = ABLATION[name][0]
    results = read_results()
    results[name] = result
    with atomic_write(RESULTS, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET)
    ap.add_argument("--name", default="preset", help="configuration name (key in quality_results.json)")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the run dir's current snapshot only")
    ap.add_argument("--ablation", action="store_true", help="run every ABLATION configuration (short runs)")
    ap.add_argument("--ablation-kimg", type=float, default=None, help="training length of each ablation run (60)")
    ap.add_argument("--ablation-samples", type=int, default=None, help="generated (and test) images per FID (1000)")
    ap.add_argument("--only", default=None, help="--ablation: comma list of configuration names")
    args = ap.parse_args()
    if not args.ablation:
        ablation_only = [f for f, v in (("--only", args.only), ("--ablation-kimg", args.ablation_kimg),
                                        ("--ablation-samples", args.ablation_samples)) if v is not None]
        if ablation_only:
            ap.error(f"{', '.join(ablation_only)} only apply with --ablation (without it the whole preset is trained)")
        print(json.dumps(run_config(args.preset, args.name, args.set_param, args.skip_train), indent=2))
        return
    if args.name != "preset" or args.skip_train:
        ap.error("--name and --skip-train apply to one configuration, not to --ablation (names: ABLATION)")
    args.ablation_kimg = 60.0 if args.ablation_kimg is None else args.ablation_kimg
    args.ablation_samples = 1000 if args.ablation_samples is None else args.ablation_samples
    names = [n.strip() for n in (args.only or "").split(",") if n.strip()]
    if args.only is not None and not names:
        ap.error(f"--only {args.only!r} names no configuration; valid: {', '.join(ABLATION)}")
    names = names or list(ABLATION)
    unknown = sorted(set(names) - set(ABLATION))
    if unknown:
        raise SystemExit(f"--only: unknown configuration(s) {unknown}; valid: {', '.join(ABLATION)}")
    common = [f"train.total_kimg={args.ablation_kimg}", "train.eval_every_kimg=0", "train.sample_every_kimg=20",
              "train.checkpoint_every_kimg=20", f"evaluate.num_samples={args.ablation_samples}",
              f"evaluate.kid_subset_size={min(1000, args.ablation_samples)}", *args.set_param]
    for name in names:  # every configuration is checked before the first one trains
        build_params(args.preset, name, [*common, *ABLATION[name][1]])
    rows = []
    for name in names:
        r = run_config(args.preset, name, [*common, *ABLATION[name][1]])
        rows.append({"name": name, "what": ABLATION[name][0], "fid": r["fid"], "kid_mean": r["kid_mean"],
                     "train_wall_s": r["train_wall_s_total"], "kimg": r["kimg"], "n": r["num_generated"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
