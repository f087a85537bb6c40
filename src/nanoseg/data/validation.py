"""The data validation gate: a Great Expectations suite over the manifest.

The ``prepare`` stage reads every image and mask once and records what it found
(shapes, mask values, foreground fraction, pixel size, checksums) in the
manifest; this module checks those facts with Great Expectations, offline
(analytics off), and writes the full JSON result plus a short human-readable
report. A failing expectation names the files and the checks that failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from nanoseg.atomic import write_json, write_text
from nanoseg.errors import NanosegError

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

MASK_VALUE_SETS = ["0,255", "0", "255"]  # subsets of {0, 255}; emptiness is caught by the fraction check


def _with_split_checks(manifest: pd.DataFrame, split: dict) -> pd.DataFrame:
    """Add ``split_consistent``: each stem in exactly one of train/test, train stems in exactly one fold."""
    df = manifest.copy()
    train, test = set(split["train"]), set(split["test"])
    val_count = {}
    for fold in split["folds"]:
        for s in fold["val"]:
            val_count[s] = val_count.get(s, 0) + 1
    ok = []
    for stem, where in zip(df["stem"], df["split"]):
        in_train, in_test = stem in train, stem in test
        if where == "train":
            ok.append(in_train and not in_test and val_count.get(stem, 0) == 1)
        else:
            ok.append(in_test and not in_train and val_count.get(stem, 0) == 0)
    df["split_consistent"] = ok
    return df


def build_suite(params: dict):
    """The expectation suite, from the ``validate`` settings."""
    import great_expectations as gx

    v = params["validate"]
    E = gx.expectations
    fg_lo, fg_hi = v["foreground_fraction"]
    px_lo, px_hi = v["pixel_size_nm"]
    suite = gx.ExpectationSuite(name="nanoseg_manifest")
    for exp in [
        E.ExpectTableRowCountToBeBetween(min_value=int(v["min_images"])),
        E.ExpectColumnValuesToBeUnique(column="stem"),
        E.ExpectColumnValuesToBeUnique(column="image_sha256"),
        E.ExpectColumnValuesToBeInSet(column="mask_present", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="mask_shape_ok", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="mask_values", value_set=MASK_VALUE_SETS),
        E.ExpectColumnValuesToBeBetween(column="foreground_fraction", min_value=fg_lo, max_value=fg_hi),
        E.ExpectColumnValuesToNotBeNull(column="pixel_size_nm"),
        E.ExpectColumnValuesToBeBetween(column="pixel_size_nm", min_value=px_lo, max_value=px_hi),
        E.ExpectColumnValuesToBeBetween(column="crop_rows", min_value=32),
        E.ExpectColumnValuesToBeInSet(column="class_mask_rows_ok", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test"]),
        E.ExpectColumnValuesToBeInSet(column="split_consistent", value_set=[True]),
    ]:
        suite.add_expectation(exp)
    return suite


WHAT = {
    "stem": "duplicate image names",
    "image_sha256": "duplicate images (identical files)",
    "mask_present": "image without a mask",
    "mask_shape_ok": "mask shape differs from the image",
    "mask_values": "mask values are not a subset of {0, 255}",
    "foreground_fraction": "foreground fraction outside the sane range (empty or full mask?)",
    "pixel_size_nm": "pixel size missing or implausible (set data.pixel_size_nm in params.yaml)",
    "crop_rows": "sample area above the data bar is smaller than 32 rows",
    "class_mask_rows_ok": "measurable-particle mask smaller than the crop",
    "split": "unknown split",
    "split_consistent": "train/test split or folds overlap",
}


def validate_manifest(manifest: pd.DataFrame, split: dict, params: dict) -> tuple[bool, dict, list[str]]:
    """Run the suite over the manifest.

    Returns
    -------
    success : bool
    result : dict
        The Great Expectations validation result as JSON-serializable dict.
    problems : list of str
        One line per failed check, naming the files.
    """
    import great_expectations as gx

    df = _with_split_checks(manifest, split)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("nanoseg").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
    suite = context.suites.add(build_suite(params))
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["stem"]}
    )
    problems = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        if column is None:
            problems.append(f"{cfg.type}: {r.result.get('observed_value')} rows (need >= {cfg.kwargs.get('min_value')})")
            continue
        bad = r.result.get("unexpected_index_list") or []
        files = ", ".join(
            f"{row.get('stem')} ({column}={row.get(column)})" for row in bad[:10]
        ) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        problems.append(f"{WHAT.get(column, column)}: {files}")
    return bool(result.success), result.to_json_dict(), problems


def run_gate(manifest: pd.DataFrame, split: dict, params: dict, out_dir: str | os.PathLike) -> dict:
    """Validate, write ``result.json`` and ``report.md`` to ``out_dir``; raise if anything failed."""
    success, result, problems = validate_manifest(manifest, split, params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "result.json", result, default=str)
    n = len(result["results"])
    n_ok = sum(r["success"] for r in result["results"])
    lines = [f"# Data validation: {'passed' if success else 'FAILED'}", "",
             f"{n_ok} of {n} expectations met over {len(manifest)} images.", ""]
    lines += [f"- {p}" for p in problems]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    if not success:
        raise NanosegError(
            "data validation failed (report: " + str(out / "report.md") + "):\n  - " + "\n  - ".join(problems)
            + "\nFix or remove these files in the dataset source, then run `make data` and `dvc repro` again."
        )
    return {"success": success, "expectations": n, "met": n_ok}
