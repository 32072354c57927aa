"""The ``ganops`` command line: one subcommand per pipeline stage, plus ``generate`` and ``fid``.

Each stage command only translates inputs: it loads ``params.yaml`` into typed config (the only place that does),
opens the stage's tracking logger and calls one library function. ``dvc.yaml`` runs these commands; the Prefect flow
runs the DVC stages; tests call the library functions directly.

Heavy libraries (torch, mlflow, great_expectations) are imported inside the commands so ``ganops --help`` and
``--dry-run`` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ganops.config import ConfigError, Params, load_params

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train GANs on images and turn them into reviewed, versioned models.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="parameter file (one section per stage)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the resolved config of this stage and exit")]


def _fail(stage: str, err: BaseException) -> None:
    typer.echo(f"ganops {stage}: error: {err}", err=True)
    raise typer.Exit(code=1)


def _is_user_error(err: BaseException) -> bool:
    """Errors raised on purpose by ganops (bad params, bad data, divergence) are shown without a traceback."""
    if isinstance(err, (ConfigError, OSError)):  # missing files, permissions, disk full, bad output paths
        return True
    return type(err).__module__.startswith("ganops.")


def _run_stage(stage: str, params_path: Path, dry_run: bool, section: str | None,
               body: Callable[[Params, Any], Any]) -> None:
    try:
        params = load_params(params_path)
    except ConfigError as err:
        _fail(stage, err)
    if dry_run:
        cfg = params.model_dump(by_alias=True, mode="json")
        out = {"seed": cfg["seed"], section: cfg[section]} if section else cfg
        if section in ("train", "evaluate"):  # what ``device: auto`` picks on this machine (imports torch, ~1-3 s)
            from ganops.training.device import resolve_device, resolve_precision

            # The device checks the run makes before it starts: the stage's device; for train also its precision
            # (fp16 needs CUDA) and, with in-training FID on, evaluate.device (where that Inception runs).
            keys = [f"{section}.device"]
            if section == "train" and params.train.eval_every_kimg > 0:
                keys.append("evaluate.device")
            try:
                resolved = {key: resolve_device(cfg[key.split(".")[0]]["device"], key) for key in keys}
                if section == "train":
                    resolve_precision(params.train.precision, resolved["train.device"])
            except ConfigError as err:
                _fail(stage, err)
            out["resolved"] = {key: str(device) for key, device in resolved.items()}
        typer.echo(json.dumps(out, indent=2))
        return
    from ganops.tracking import NullLogger, stage_logger

    # Under torchrun (``torchrun ... -m ganops.cli train``) every rank runs the stage; rank 0 alone tracks and prints.
    is_main = int(os.environ.get("RANK", "0") or 0) == 0
    try:
        with stage_logger(params, stage) if is_main else contextlib.nullcontext(NullLogger()) as logger:
            result = body(params, logger)
    except Exception as err:  # noqa: BLE001 - re-raised below unless it is an expected, user-facing error
        if _is_user_error(err):
            _fail(stage, err)
        raise
    if result is not None and is_main:
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), dry_run: DryRunOpt = False) -> None:
    """Read the source images and write versioned uint8 arrays + a metadata table (params section: prepare)."""

    def body(p: Params, logger: Any) -> Any:
        from ganops.data.prepare import prepare as run

        summary = run(p.prepare, seed=p.seed)
        logger.log_params({"dataset_sha256": summary.get("dataset_sha256")})
        return summary

    _run_stage("prepare", params, dry_run, "prepare", body)


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), dry_run: DryRunOpt = False) -> None:
    """Run the Great Expectations suite over the prepared metadata (params section: validate)."""

    def body(p: Params, logger: Any) -> Any:
        from ganops.data.validate import validate as run

        result = run(p.validate_, prepared_dir=p.prepare.out_dir)
        keys = ("success", "statistics", "warnings", "duplicates", "data_docs")
        return {k: result[k] for k in keys if k in result} or result

    _run_stage("validate", params, dry_run, "validate", body)


@app.command()
def train(params: ParamsOpt = Path("params.yaml"), dry_run: DryRunOpt = False) -> None:
    """Train G and D; resumes from the run directory's training state when present (params section: train).

    Data-parallel on N processes: ``torchrun --standalone --nproc_per_node=N -m ganops.cli train``.
    """

    def body(p: Params, logger: Any) -> Any:
        from ganops.training import distributed as ddp
        from ganops.training.loop import training_loop

        metric_fn = None
        if p.train.eval_every_kimg > 0:
            # In-training FID/KID: the evaluate section's protocol and weights on a smaller sample; its reference
            # statistics live inside the run directory (a train output), not in evaluate's cache.
            from ganops.metrics.api import make_metric_fn

            eval_cfg = p.evaluate.model_copy(update={
                "num_samples": p.train.eval_num_samples,
                "ref_stats_dir": str(Path(p.train.run_dir) / "ref_stats"),
            })
            metric_fn = make_metric_fn(eval_cfg, prepared_dir=p.prepare.out_dir, seed=p.seed)
        try:
            return training_loop(p.train, prepared_dir=p.prepare.out_dir, seed=p.seed, logger=logger,
                                 metric_fn=metric_fn)
        finally:
            ddp.teardown()  # torchrun: leave the process group (no-op in a single process)

    _run_stage("train", params, dry_run, "train", body)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), dry_run: DryRunOpt = False) -> None:
    """FID/KID of G_ema samples against the prepared test split (params section: evaluate)."""

    def body(p: Params, logger: Any) -> Any:
        from ganops.evaluate import evaluate as run

        return run(p.evaluate, run_dir=p.train.run_dir, prepared_dir=p.prepare.out_dir, seed=p.seed, logger=logger)

    _run_stage("evaluate", params, dry_run, "evaluate", body)


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), dry_run: DryRunOpt = False) -> None:
    """Register G_ema in the MLflow model registry; alias champion/challenger by FID (params section: register)."""

    def body(p: Params, logger: Any) -> Any:
        from ganops.registry import register as run

        return run(p.register_, run_dir=p.train.run_dir, eval_json=p.evaluate.out)

    _run_stage("register", params, dry_run, "register", body)


@app.command()
def generate(
    model_uri: Annotated[Optional[str], typer.Option("--model-uri", help="MLflow model URI, e.g. models:/NAME@champion")] = None,
    snapshot: Annotated[Optional[Path], typer.Option("--snapshot", help="local network-snapshot.pt instead of a model URI")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="number of images")] = 64,
    class_label: Annotated[Optional[int], typer.Option("--class", help="class of every image (conditional models)")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    out: Annotated[Path, typer.Option("--out", help="grid image (.png/.jpg) or a folder for one PNG per image")] = Path("grid.png"),
) -> None:
    """Draw N images from a registered model or a snapshot and save them as a grid or a folder."""
    if (model_uri is None) == (snapshot is None):
        _fail("generate", ValueError("give exactly one of --model-uri models:/NAME@ALIAS or --snapshot PATH"))
    from ganops.generate import generate as draw, save_images

    try:
        images = draw(model_uri or str(snapshot), num_images=n, seed=seed, class_label=class_label)
        paths = save_images(images, out)
    except (ValueError, FileNotFoundError) as err:
        _fail("generate", err)
    typer.echo(f"wrote {images.shape[0]} images of {images.shape[1]}x{images.shape[2]}x{images.shape[3]} to "
               f"{out if len(paths) == 1 else out / '*.png'}")


@app.command()
def fid(
    a: Annotated[str, typer.Argument(help="image folder, .npz of uint8 images or of statistics (mu, sigma), or models:/NAME@ALIAS")],
    b: Annotated[str, typer.Argument(help="the other side, same kinds as A")],
    protocol: Annotated[str, typer.Option("--protocol", help="legacy_tensorflow (NVIDIA/torch-fidelity) or clean (clean-fid)")] = None,
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", min=2, help="first N images per side (required for models:/)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 feature extraction")] = None,
    inception_path: Annotated[Optional[Path], typer.Option("--inception-path", help="NVIDIA inception-2015-12-05.pt")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """FID and KID between two image sources, with the standard TF-Inception (2015-12-05) pool3 features."""
    models = [s for s in (a, b) if s.startswith("models:/")]
    if models and num_samples is None:  # before loading any network
        _fail("fid", ValueError(f"{models[0]} is a registered model: give --num-samples N (how many images to "
                                "sample from it)"))
    from ganops.metrics import defaults
    from ganops.metrics.api import compare

    try:
        result = compare(
            a, b,
            protocol=protocol or defaults.PROTOCOL,
            num_samples=num_samples,
            batch_size=batch_size or defaults.BATCH_SIZE,
            precision=precision or defaults.PRECISION,
            inception_path=inception_path,
            seed=defaults.SEED if seed is None else seed,
        )
    except Exception as err:  # noqa: BLE001
        if _is_user_error(err) or isinstance(err, ValueError):
            _fail("fid", err)
        raise
    if as_json:
        typer.echo(json.dumps(result))
        return
    kid = "n/a (a side is statistics only)" if result["kid_mean"] is None else \
        f"{result['kid_mean']:.6f} +- {result['kid_std']:.6f}"
    typer.echo(f"FID {result['fid']:.4f}  KID {kid}  (n_a={result['n_a']}, n_b={result['n_b']}, "
               f"protocol {result['protocol']}, weights sha256 {result['weights_sha256'][:12]})")


@app.command()
def summary(params: ParamsOpt = Path("params.yaml")) -> None:
    """Print the last pipeline result: FID, KID, registered model version and alias, how to open the MLflow UI."""
    try:
        p = load_params(params)
    except ConfigError as err:
        _fail("summary", err)
    missing = [f for f in (p.evaluate.out, p.register_.out) if not Path(f).is_file()]
    if missing:
        _fail("summary", FileNotFoundError(f"no pipeline result yet ({', '.join(missing)} missing): run `dvc repro` first"))
    ev = json.loads(Path(p.evaluate.out).read_text())
    reg = json.loads(Path(p.register_.out).read_text())
    from ganops.tracking import mlflow_command, redact_uri, tracking_uri

    uri = tracking_uri()
    ui = (f"{mlflow_command()} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   (then open http://127.0.0.1:5000)"
          if uri.startswith("sqlite:") else f"open {redact_uri(uri)}")
    lines = [
        "ganops pipeline summary",
        f"  FID   {ev['fid']:.3f}   ({ev['num_generated']} generated vs {ev['num_real']} real test images, "
        f"protocol {ev['protocol']}, Inception weights sha256 {str(ev.get('weights_sha256', ''))[:12]})",
        f"  KID   {ev['kid_mean']:.5f} +- {ev['kid_std']:.5f}",
        f"  model {reg['model_name']} version {reg['version']}  alias @{reg['alias']}",
        f"  load  mlflow.pyfunc.load_model('models:/{reg['model_name']}@{reg['alias']}')",
        f"  UI    {ui}",
    ]
    typer.echo("\n".join(lines))


@app.command()
def sync(params: ParamsOpt = Path("params.yaml"),
         run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="run directory (default: train.run_dir)")] = None
         ) -> None:
    """Send metrics, params, tags and artifacts that a stage could not deliver to the tracking server.

    They wait in ``<run_dir>/mlflow_pending.jsonl`` (written when the MLflow server was unreachable mid-run). Exit 1
    when the server still does not answer or some entries remain (run it again later); nothing is lost either way.
    """
    from ganops.tracking import TrackingUnavailableError, upload_pending

    try:
        target = run_dir if run_dir is not None else Path(load_params(params).train.run_dir)
        counts = upload_pending(target)
    except (ConfigError, TrackingUnavailableError, OSError) as err:
        _fail("sync", err)
    typer.echo(f"sent {counts['sent']}, still pending {counts['remaining']}, rejected {counts['rejected']} "
               f"(rejected entries are kept in {target}/mlflow_pending.rejected.jsonl)")
    if counts["remaining"]:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
