"""The model card of a registered generator: its Markdown description and its MLflow signature."""

from __future__ import annotations

from typing import Any


def model_signature(meta: dict[str, Any]) -> tuple[Any, Any]:
    """The pyfunc's MLflow signature and input example for a generator described by snapshot ``meta``.

    Args:
        meta: the snapshot's metadata (``resolution``, ``channels`` in pixels / image channels, ``num_classes``).

    Returns:
        ``(signature, example)``: inputs ``num_images`` and ``seed`` (long) plus an optional ``class_label`` for a
        class-conditional generator; output a uint8 tensor ``(-1, H, W, C)``; the example a one-row DataFrame.

    Raises:
        KeyError: ``meta`` lacks ``resolution`` or ``channels``.
    """
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    conditional = int(meta.get("num_classes", 0) or 0) > 0
    cols = [ColSpec("long", "num_images"), ColSpec("long", "seed")]
    example = {"num_images": [2], "seed": [0]}
    if conditional:
        # "any", not long: pandas stores an integer column with an empty cell ([2, None]) as float64 with NaN, which
        # MLflow's schema check refuses to cast to long (and it refuses int64 -> double); the model itself checks
        # that each label is empty or an integer in 0..K-1.
        cols.append(ColSpec(AnyType(), "class_label", required=False))
        example["class_label"] = [0]
    shape = (-1, int(meta["resolution"]), int(meta["resolution"]), int(meta["channels"]))
    sig = ModelSignature(inputs=Schema(cols), outputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]))
    return sig, pd.DataFrame({k: np.asarray(v, dtype=np.int64) for k, v in example.items()})


def _short(value: str, n: int = 12) -> str:
    return f"{value[:n]}…" if len(value) > n else value


def model_card(model_name: str, version: str, meta: dict[str, Any], ev: dict[str, Any], tags: dict[str, str],
               run: Any, grid_artifact: str | None) -> str:
    """The version's description: Markdown (the MLflow UI renders it on the model version page).

    What the model is, its FID/KID with the measurement protocol and sample counts, where it came from (dataset
    content hash, DVC data version, git commit, training run and time), its sample grid (a run artifact, shown
    inline and linked) and how to load it and draw images. MLflow caps a description at 5000 characters.

    Args:
        model_name, version: the registered model and its version.
        meta: the snapshot's metadata (``resolution``, ``channels``, ``num_classes``).
        ev: the evaluation (``fid``, ``kid_std``, ``num_real``, ``weights_sha256``).
        tags: the version's tags (``arch``, ``loss``, ``kimg``, ``kid``, ``protocol``, ``num_samples``,
            ``dataset_sha256``, ``dvc_data_md5``, ``git_commit``, ``train_wall_time_s``, ``snapshot_sha256``).
        run: the training run (an MLflow ``Run``).
        grid_artifact: the sample grid's run artifact path, or None when there is none.

    Raises:
        KeyError: a tag or metadata field listed above is missing.
    """
    from urllib.parse import quote

    k = int(meta.get("num_classes", 0) or 0)
    res, ch = int(meta["resolution"]), int(meta["channels"])
    kind = f"class-conditional ({k} classes)" if k else "unconditional"
    kid_std = ev.get("kid_std")
    kid = f"{float(tags['kid']):.5f}" + (f" ± {float(kid_std):.5f}" if isinstance(kid_std, (int, float)) else "")
    num_real = ev.get("num_real", "?")
    weights = str(ev.get("weights_sha256") or "unknown")
    run_id, exp_id = run.info.run_id, run.info.experiment_id
    lines = [
        # Plain first line: the registered model's versions table previews the description's start as raw text.
        f"{model_name} v{version}: {tags['arch']} GAN generator (G_ema), {kind}, {res}×{res}×{ch} uint8 images, "
        f"FID {float(ev['fid']):.3f}.",
        "",
        f"Trained {tags['kimg']} kimg (thousands of real images shown to D) with the `{tags['loss']}` loss in "
        f"{tags['train_wall_time_s']} s.",
        "",
        "| quality | value |",
        "|---|---|",
        f"| FID (lower is better) | **{float(ev['fid']):.3f}** |",
        f"| KID | {kid} |",
        f"| protocol | `{tags['protocol']}`: {tags['num_samples']} generated vs {num_real} real images of the prepared "
        f"test split, TF-Inception 2015-12-05 pool3 (weights sha256 `{_short(weights)}`) |",
        "",
        "| provenance | value |",
        "|---|---|",
        f"| dataset content sha256 | `{_short(tags['dataset_sha256'], 16)}` |",
        f"| DVC data version (md5 of the prepared data in dvc.lock) | `{tags['dvc_data_md5']}` |",
        f"| git commit | `{tags['git_commit']}` |",
        f"| training run | [{run.info.run_name or run_id}](#/experiments/{exp_id}/runs/{run_id}) (`{run_id}`) |",
        f"| training wall time | {tags['train_wall_time_s']} s |",
        f"| snapshot sha256 | `{_short(tags['snapshot_sha256'], 16)}` (full hashes: version tags) |",
        "",
    ]
    if grid_artifact:
        src = f"get-artifact?path={quote(grid_artifact, safe='')}&run_uuid={run_id}"
        lines += [f"**Samples** (run artifact [`{grid_artifact}`](#/experiments/{exp_id}/runs/{run_id}/artifactPath/"
                  f"{grid_artifact})):", "", f"![sample grid of {model_name} v{version}]({src})", ""]
    else:
        lines += ["**Samples**: no sample grid was found in the training run directory.", ""]
    example = ', "class_label": [0]' if k else ""
    lines += [
        "**Use it** (needs only MLflow and the pinned requirements logged with the model):",
        "",
        "```python",
        "import mlflow, pandas as pd",
        f'model = mlflow.pyfunc.load_model("models:/{model_name}/{version}")  # or models:/{model_name}@champion',
        f'images = model.predict(pd.DataFrame({{"num_images": [16], "seed": [0]{example}}}))',
        f"# numpy uint8, shape (16, {res}, {res}, {ch}), values 0..255",
        "```",
        "",
        "Input: a DataFrame, one request per row: `num_images` (int ≥ 1), `seed` (int ≥ 0; same seed, same images)"
        + (f", `class_label` (int 0..{k - 1}; empty cycles through the classes)" if k else "")
        + ". Output: uint8 (N, H, W, C), the rows' images concatenated in order.",
        "",
        f"CLI: `ganops generate --model-uri models:/{model_name}/{version} --n 64 --out grid.png`",
    ]
    return "\n".join(lines)


__all__ = ["model_card", "model_signature"]
