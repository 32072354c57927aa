"""``validate`` stage: a Great Expectations (GX Core 1.x) suite over the prepared metadata table.

The image arrays are not read: their per-image statistics and hashes are in ``metadata.parquet`` (computed by
prepare), and of the arrays only the ``.npy`` headers are checked (dtype, shape, row count = summary counts), so the
images' size does not change validation's memory. Four batches of ``metadata.parquet`` are validated in an
ephemeral GX context (pandas data source):

- ``metadata`` (all rows): required columns present; row count = summary counts; no nulls; ``split`` in
  {train, test}; ``label`` in the class set (``expected_classes`` or 0..K-1 from the summary); (split, index)
  unique; pixel ``mean``/``min``/``max`` in 0..255, ``std`` in 0..127.5; ``max >= min``.
- ``train`` / ``test`` rows: row counts >= ``min_train_rows`` / ``min_test_rows``.
- ``test`` rows also: no test image byte-identical (same content sha256) to a train image; severity ``warning``
  when ``duplicates=warn`` (reported, does not fail), ``critical`` when ``duplicates=fail``.
- ``class_balance`` (one row per expected class: train count and share): each share within
  ``[1/K * (1 - tol), 1/K * (1 + tol)]``.

Writes ``report_dir/result.json`` (overall success, each expectation with its outcome and example offending
rows, the duplicate report, files skipped by prepare) and GX's own Data Docs site under ``report_dir/data_docs``
(``index.html``). GX is imported inside :func:`validate` because importing it takes seconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ganops.config import ValidateConfig
from ganops.data.dataset import SPLITS, load_metadata, load_split, load_summary
from ganops.data.errors import DataError, DataValidationError
from ganops.io import write_json

REQUIRED_COLUMNS = ("index", "split", "label", "mean", "std", "min", "max", "sha256")
EXAMPLES = 10  # offending rows kept per failed expectation
_ROW_ID = ["split", "index"]


def class_balance_table(metadata: pd.DataFrame, classes: list[int]) -> pd.DataFrame:
    """One row per expected class: ``label``, ``count`` of train rows, ``share`` of all train rows in the class
    set (0 when there are none). Labels outside ``classes`` are not counted here (the label expectation flags them)."""
    train = metadata.loc[metadata["split"] == "train", "label"]
    train = train[train.isin(classes)]
    counts = train.value_counts().reindex(classes, fill_value=0)
    total = int(counts.sum())
    return pd.DataFrame(
        {
            "label": np.asarray(classes, dtype=np.int64),
            "count": counts.to_numpy(np.int64),
            "share": counts.to_numpy(np.float64) / total if total else np.zeros(len(classes)),
        }
    )


def duplicate_report(metadata: pd.DataFrame, max_examples: int = EXAMPLES) -> dict[str, Any]:
    """Test images whose content sha256 equals a train image's.

    Returns:
        ``{"count": number of test rows with a train twin, "examples": [{"sha256", "test_index", "train_indices"}]}``
        (indices are positions within each split's arrays).
    """
    train = metadata[metadata["split"] == "train"]
    test = metadata[metadata["split"] == "test"]
    dup = test[test["sha256"].isin(train["sha256"])]
    twins = train[train["sha256"].isin(dup["sha256"])]  # group only the few duplicated hashes (groupby is slow)
    train_by_hash = twins.groupby("sha256")["index"].apply(list)
    examples = [
        {"sha256": h, "test_index": int(i), "train_indices": [int(t) for t in train_by_hash[h][:5]]}
        for h, i in zip(dup["sha256"][:max_examples], dup["index"][:max_examples])
    ]
    return {"count": int(len(dup)), "examples": examples}


def _expectations(gx, cfg: ValidateConfig, summary: dict, classes: list[int]) -> dict[str, list]:
    E = gx.expectations
    total = int(sum(summary["counts"].values()))
    per = 1.0 / max(len(classes), 1)
    lo, hi = per * (1 - cfg.class_balance_tolerance), per * (1 + cfg.class_balance_tolerance)
    dup_severity = "warning" if cfg.duplicates == "warn" else "critical"
    metadata = [
        ("columns_present", E.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False)),
        ("row_count_matches_summary", E.ExpectTableRowCountToEqual(value=total)),
        *[(f"no_nulls_{c}", E.ExpectColumnValuesToNotBeNull(column=c)) for c in REQUIRED_COLUMNS],
        ("split_in_train_test", E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test"])),
        ("label_in_class_set", E.ExpectColumnValuesToBeInSet(column="label", value_set=classes)),
        ("unique_index_per_split", E.ExpectCompoundColumnsToBeUnique(column_list=_ROW_ID)),
        *[
            (f"pixel_{c}_in_0_255", E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=255))
            for c in ("mean", "min", "max")
        ],
        ("pixel_std_in_0_127.5", E.ExpectColumnValuesToBeBetween(column="std", min_value=0, max_value=127.5)),
        ("pixel_max_ge_min", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="max", column_B="min", or_equal=True)),
    ]
    return {
        "metadata": metadata,
        "train": [("min_train_rows", E.ExpectTableRowCountToBeBetween(min_value=cfg.min_train_rows))],
        "test": [
            ("min_test_rows", E.ExpectTableRowCountToBeBetween(min_value=cfg.min_test_rows)),
            (
                "test_not_duplicate_of_train",
                E.ExpectColumnValuesToBeBetween(column="train_copies", max_value=0, severity=dup_severity),
            ),
        ],
        "class_balance": [
            ("class_balance", E.ExpectColumnValuesToBeBetween(column="share", min_value=lo, max_value=hi)),
        ],
    }


def _batches(metadata: pd.DataFrame, classes: list[int]) -> dict[str, pd.DataFrame]:
    train_hashes = metadata.loc[metadata["split"] == "train", "sha256"].value_counts()
    test = metadata[metadata["split"] == "test"].copy()
    test["train_copies"] = test["sha256"].map(train_hashes).fillna(0).astype(np.int64)
    return {
        "metadata": metadata,
        "train": metadata[metadata["split"] == "train"],
        "test": test,
        "class_balance": class_balance_table(metadata, classes),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _outcome(name: str, batch: str, r) -> dict[str, Any]:
    res = dict(r.result)
    cfg = r.expectation_config
    examples = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    return _jsonable(
        {
            "name": name,
            "batch": batch,
            "expectation": cfg.type,
            "kwargs": kwargs,
            "severity": str(getattr(cfg.severity, "value", cfg.severity)),
            "success": bool(r.success),
            "observed_value": res.get("observed_value"),
            "unexpected_count": res.get("unexpected_count"),
            "examples": examples[:EXAMPLES],
            "exception": (r.exception_info or {}).get("exception_message") if not r.success else None,
        }
    )


def _run_suite(batches: dict, suites: dict, docs_dir: Path) -> list[dict]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
    }
    shutil.rmtree(docs_dir, ignore_errors=True)  # keep only this run's pages (GX names them by timestamp)
    ctx.add_data_docs_site("ganops", site)
    source = ctx.data_sources.add_pandas("prepared")
    outcomes = []
    for batch_name, expectations in suites.items():
        batch_def = source.add_dataframe_asset(batch_name).add_batch_definition_whole_dataframe(batch_name)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"prepared_{batch_name}"))
        for name, exp in expectations:
            exp.meta = {"name": name}
            suite.add_expectation(exp)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=batch_name, data=batch_def, suite=suite))
        id_cols = [c for c in _ROW_ID if c in batches[batch_name].columns] or ["label"]
        result = vd.run(
            batch_parameters={"dataframe": batches[batch_name]},
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES,
                "unexpected_index_column_names": id_cols,
            },
        )
        outcomes += [_outcome(r.expectation_config.meta["name"], batch_name, r) for r in result.results]
    ctx.build_data_docs(site_names=["ganops"])
    return outcomes


def validate(cfg: ValidateConfig, *, prepared_dir: str | Path) -> dict:
    """Run the suite (see the module docstring) over ``prepared_dir`` and write the report.

    Returns:
        The ``result.json`` content: ``success``, ``statistics`` (counts of evaluated / successful / failed
        expectations), ``expectations`` (list of outcomes), ``failed`` (names),
        ``warnings`` (names of failed warning-severity expectations), ``duplicates``, ``skipped_files``,
        ``data_docs`` (path of the Data Docs ``index.html``).

    Raises:
        DataError: the prepared directory is incomplete (prepare not run).
        DataValidationError: a critical expectation failed; the message names each one with example offending
            values/rows, and ``result.json`` is written first.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # no usage statistics leave this machine
    prepared_dir = Path(prepared_dir)
    summary, metadata = load_summary(prepared_dir), load_metadata(prepared_dir)
    _check_arrays(prepared_dir, summary)
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.columns]
    if missing:
        raise DataError(f"{prepared_dir}/metadata.parquet lacks columns {missing}; re-run prepare")
    classes = list(cfg.expected_classes) if cfg.expected_classes is not None else list(range(summary["num_classes"]))
    report_dir = Path(cfg.report_dir)
    docs_dir = report_dir / "data_docs"
    outcomes = _run_suite(_batches(metadata, classes), _expectations(_gx(), cfg, summary, classes), docs_dir)
    failed = [o for o in outcomes if not o["success"] and o["severity"] == "critical"]
    warned = [o for o in outcomes if not o["success"] and o["severity"] != "critical"]
    report = {
        "success": not failed,
        "prepared_dir": str(prepared_dir),
        "dataset_sha256": summary.get("dataset_sha256"),
        "num_rows": int(len(metadata)),
        "classes": classes,
        "statistics": {
            "evaluated_expectations": len(outcomes),
            "successful_expectations": sum(o["success"] for o in outcomes),
            "failed_critical": len(failed),
            "failed_warning": len(warned),
        },
        "failed": [o["name"] for o in failed],
        "warnings": [o["name"] for o in warned],
        "expectations": outcomes,
        "duplicates": {"policy": cfg.duplicates, **duplicate_report(metadata)},
        "skipped_files": summary.get("skipped", []),
        "data_docs": str(docs_dir / "index.html"),
    }
    result_path = report_dir / "result.json"
    write_json(result_path, report)
    if failed:
        raise DataValidationError(_failure_message(failed, report, result_path), failed, str(result_path))
    return report


def _check_arrays(prepared_dir: Path, summary: dict) -> None:
    """The split files open with the contract's dtypes/shapes (headers only) and hold the summary's counts."""
    for split in SPLITS:
        images, _ = load_split(prepared_dir, split)
        expected = summary.get("counts", {}).get(split)
        if expected is not None and images.shape[0] != expected:
            raise DataError(f"{prepared_dir}: the {split} split holds {images.shape[0]} images but summary.json says "
                            f"{expected}; the directory is inconsistent, re-run prepare")


def _gx():
    import great_expectations as gx

    return gx


def _failure_message(failed: list[dict], report: dict, result_path: Path) -> str:
    lines = [f"data validation failed for {report['prepared_dir']}: {len(failed)} expectation(s) failed"]
    for o in failed:
        detail = []
        if o["observed_value"] is not None:
            detail.append(f"observed {o['observed_value']}")
        if o["unexpected_count"]:
            detail.append(f"{o['unexpected_count']} offending rows, e.g. {o['examples'][:5]}")
        if o["exception"]:
            detail.append(f"error: {o['exception']}")
        bounds = {k: v for k, v in o["kwargs"].items() if k in ("min_value", "max_value", "value", "value_set")}
        lines.append(f"  - {o['name']} ({o['expectation']} {bounds}): {'; '.join(detail) or 'failed'}")
    if "test_not_duplicate_of_train" in report["failed"]:
        lines.append(f"  duplicates: {report['duplicates']['examples'][:3]}")
    lines.append(f"Full report: {result_path}; Data Docs: {report['data_docs']}")
    return "\n".join(lines)
