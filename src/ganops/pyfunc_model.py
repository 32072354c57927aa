"""The generator as an MLflow ``pyfunc`` model.

:class:`GeneratorPyfunc` is logged with MLflow's *models from code* (``ganops/_mlflow_model_code.py`` calls
``mlflow.models.set_model``), so no class of ours is cloudpickled; the ``ganops`` package travels in the model's
``code/`` folder and the weights travel as the ``snapshot`` artifact (``network-snapshot.pt``, read with
``torch.load(weights_only=True)`` by :func:`ganops.training.snapshot.load_generator`).

Input: a pandas DataFrame, one request per row, columns

- ``num_images`` (int >= 1): how many images to draw for this row;
- ``seed`` (int >= 0): latent seed; the same (seed, num_images, class_label) always gives the same images;
- ``class_label`` (int in 0..K-1, optional, conditional models only): class of every image of the row; missing or
  null (NaN) cycles 0..K-1. The logged signature types it ``any`` so that a column with empty cells (pandas
  float64 with NaN) passes MLflow's schema check; a non-integer value is an error.

Output: ``numpy.ndarray`` uint8 (sum(num_images), H, W, C), 0..255, rows concatenated in input order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

MAX_IMAGES_PER_REQUEST = 65_536  # keeps one request from exhausting memory (28x28x1 uint8 = 51 MB at this cap)


class GeneratorPyfunc(PythonModel):
    """MLflow ``PythonModel`` wrapping G_ema; loads the snapshot in :meth:`load_context`."""

    def load_context(self, context: Any) -> None:
        from ganops.training.snapshot import load_generator

        self.G, self.meta = load_generator(context.artifacts["snapshot"], device="cpu")

    # No type hints on predict: MLflow would read them as an input schema; the logged signature is explicit.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """DataFrame ``num_images, seed[, class_label]`` -> uint8 (N, H, W, C); see :func:`generate_images`."""
        return generate_images(self.G, self.meta, model_input)


def _class_index(value: Any, row: int) -> int | None:
    """``class_label`` cell -> int, or None when empty (None/NaN). Raises ValueError for a non-integer value."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        as_float = float("nan")
    if not as_float.is_integer():
        raise ValueError(f"row {row}: class_label={value!r} is not an integer class index")
    return int(as_float)


def _requests(model_input: Any, num_classes: int) -> list[tuple[int, int, int | None]]:
    import pandas as pd

    if not isinstance(model_input, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame with columns num_images, seed[, class_label], "
                        f"got {type(model_input).__name__}")
    missing = {"num_images", "seed"} - set(model_input.columns)
    if missing:
        raise ValueError(f"input is missing column(s) {sorted(missing)}; expected num_images, seed[, class_label]")
    out: list[tuple[int, int, int | None]] = []
    for i, row in enumerate(model_input.to_dict("records")):
        n, seed = int(row["num_images"]), int(row["seed"])
        label = _class_index(row.get("class_label"), i)
        if n < 1 or seed < 0:
            raise ValueError(f"row {i}: num_images must be >= 1 and seed >= 0, got num_images={n}, seed={seed}")
        if label is not None and num_classes == 0:
            raise ValueError(f"row {i}: class_label={label} given but the generator is unconditional")
        if label is not None and not 0 <= label < num_classes:
            raise ValueError(f"row {i}: class_label={label} outside 0..{num_classes - 1}")
        out.append((n, seed, label))
    total = sum(n for n, _, _ in out)
    if total > MAX_IMAGES_PER_REQUEST:
        raise ValueError(f"{total} images requested; at most {MAX_IMAGES_PER_REQUEST} per call, split the request")
    return out


def generate_images(G: Any, meta: dict[str, Any], model_input: Any) -> np.ndarray:
    """Draw images for each DataFrame row (see module docstring) -> uint8 (N, H, W, C), 0..255.

    Quantization is NVIDIA's ``(x * 127.5 + 128).clamp(0, 255)`` truncated, as in evaluation.

    Raises:
        TypeError: ``model_input`` is not a DataFrame.
        ValueError: missing columns, num_images < 1, seed < 0, a class_label for an unconditional generator,
            not an integer or outside 0..K-1, or more than ``MAX_IMAGES_PER_REQUEST`` images in total.
    """
    from ganops.training.sampling import iter_samples, to_uint8

    num_classes = int(meta.get("num_classes", 0) or 0)
    chunks = [
        to_uint8(x).transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        for n, seed, label in _requests(model_input, num_classes)
        for x in iter_samples(G, n, seed=seed, class_labels=label)
    ]
    return np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.uint8)
