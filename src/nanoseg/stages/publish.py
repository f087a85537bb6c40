"""Stage ``publish``: register the final model as ``nanoseg`` in the MLflow model registry.

The model folder (``models/final``) is logged as a pyfunc model (the code of
``nanoseg predict``, request format in :mod:`nanoseg.serving`) with its
signature and an input example, in run ``publish-<variant>-<profile>`` that
carries the test metrics; the new version gets tags (git commit, data md5,
settings, ``test_<metric>`` from ``metrics/test.json`` and ``val_<metric>``, the
cross-validation means from ``metrics/cv.json``). The alias ``champion`` moves to
it only when :func:`promotion` says so (``publish.rank_by``, default
``val_f1_50``: the validation-fold instance F1@0.5 at least the current
champion's); otherwise the version stays registered and the reason is printed.
Writes ``reports/publish.json``.
"""

from __future__ import annotations

import json
import math

from nanoseg.config import load_params, resolve
from nanoseg.errors import NanosegError, report_errors

MODEL = "models/final"
TEST = "metrics/test.json"
CV = "metrics/cv.json"
DEFAULT_RANK_BY = "val_f1_50"
OUT = "reports/publish.json"


def _score(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def promotion(new: dict, champion: dict | None, rank_by: str = DEFAULT_RANK_BY) -> tuple[bool, str]:
    """Whether a new version becomes champion, and why.

    Parameters
    ----------
    new, champion : dict
        Scores of the new version and of the current champion (None: no champion yet): test
        metrics by name, cross-validation means as ``val_<name>``.
    rank_by : str
        The metric that ranks versions (higher is better): ``val_<m>`` a cross-validation mean
        (``val_f1_50``, the default), ``<m>`` a test metric (``dice``, ``f1_50``).

    Returns
    -------
    (bool, str)
        True when there is no champion, the champion has no score, or the new
        score is at least the champion's.
    """
    score = _score(new.get(rank_by))
    what = f"validation {rank_by[len('val_'):]}" if rank_by.startswith("val_") else f"test {rank_by}"
    if champion is None:
        return True, "no champion yet"
    best = _score(champion.get(rank_by))
    if best is None:
        return True, f"the champion has no {what}"
    if score is None:
        return False, f"the new version has no {what} (the champion has {best:.4f})"
    if score >= best:
        return True, f"{what} {score:.4f} >= champion's {best:.4f}"
    return False, f"{what} {score:.4f} < champion's {best:.4f}"


def version_metrics(version) -> dict:
    """A registered version's scores from its tags: ``test_<m>`` as ``<m>``, ``val_<m>`` as ``val_<m>``."""
    tags = version.tags or {}
    out = {k[len("test_"):]: _score(v) for k, v in tags.items() if k.startswith("test_")}
    out.update({k: _score(v) for k, v in tags.items() if k.startswith("val_")})
    return out


def cv_scores(path) -> dict:
    """The cross-validation means of ``metrics/cv.json`` as ``{"val_<metric>": value}`` (empty without the file)."""
    if not path.is_file():
        return {}
    cv = json.loads(path.read_text())
    return {f"val_{k[:-len('_mean')]}": v for k, v in cv.items()
            if k.endswith("_mean") and isinstance(v, (int, float))}


def model_metadata(folder) -> dict:
    """The model folder's ``nanoseg.json``, checked before anything is registered (the model itself
    is loaded, and run on the input example, when MLflow logs it)."""
    from nanoseg.model import METADATA_FILE, MODEL_FILE

    for name in (MODEL_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            raise NanosegError(f"{folder}: model folder not found or incomplete ({name} is missing); "
                               "run `dvc repro train` first.")
    try:
        return json.loads((folder / METADATA_FILE).read_text())
    except ValueError as exc:
        raise NanosegError(f"{folder / METADATA_FILE}: unreadable model settings ({exc}); train the model again.") from None


def publish(params: dict) -> dict:
    """Register ``models/final`` and apply the promotion rule; return the record written to ``reports/publish.json``."""
    from nanoseg import tracking
    from nanoseg.serving import input_example

    folder, test_file = resolve(params, MODEL), resolve(params, TEST)
    if not test_file.is_file():
        raise NanosegError(f"{test_file}: no test metrics; run `dvc repro evaluate` first.")
    meta = model_metadata(folder)
    test = {k: v for k, v in json.loads(test_file.read_text())["model"].items() if isinstance(v, (int, float))}
    val = cv_scores(resolve(params, CV))
    scores = {**test, **val}  # what publish.rank_by may name
    pub = params.get("publish") or {}
    rank_by = pub.get("rank_by", DEFAULT_RANK_BY)
    if rank_by not in scores:
        where = (f"a cross-validation mean of {resolve(params, CV)} (run `dvc repro cv` first)"
                 if rank_by.startswith("val_") else f"a test metric of {test_file}")
        raise NanosegError(f"publish.rank_by = {rank_by!r} is not {where}; use one of "
                           f"{sorted(test) + sorted(val)} in params.yaml.")
    name = pub.get("name", tracking.REGISTERED_MODEL)
    alias = pub.get("alias", tracking.CHAMPION)
    tracking.setup(params=params)
    variant = meta.get("variant", params["model"]["variant"])
    settings = {k: params.get(k) for k in ("model", "train", "predict", "postprocess")}
    settings["model_postprocess"] = meta.get("postprocess")
    tags = {**tracking.run_tags(), "variant": variant, "profile": params["profile"],
            "train_run_id": str(meta.get("mlflow_run_id", "")), "threshold": meta.get("threshold"),
            "params": json.dumps(settings, default=str)[:5000],
            **{f"test_{k}": v for k, v in test.items()}, **val}
    with tracking.start_run(f"publish-{variant}-{params['profile']}",
                            tags={"stage": "publish", "variant": variant, "profile": params["profile"]}) as run:
        tracking.log_metrics({**{f"test_{k}": v for k, v in test.items()}, **val})
        info = tracking.log_pyfunc(folder, input_example(), tags=tags, registered_name=name,
                                   metadata={"nanoseg": {k: meta.get(k) for k in ("variant", "threshold", "tile",
                                                                                 "overlap", "postprocess")}})
        version = str(info.registered_model_version)
        tracking.set_version_tags(version, tags, name)
        current = tracking.alias_version(alias, name)
        champion = version_metrics(current) if current is not None else None
        promote, reason = promotion(scores, champion, rank_by)
        if promote:
            tracking.set_alias(version, alias, name)
        tracking.set_tags({"registered_version": version, "promoted": str(promote), "promotion_reason": reason})
    record = {"name": name, "version": version, "alias": alias, "promoted": promote, "reason": reason,
              "rank_by": rank_by, "score": scores.get(rank_by),
              "champion_version": version if promote else (str(current.version) if current else None),
              "model_uri": f"models:/{name}/{version}", "run_id": run.info.run_id}
    out = resolve(params, OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    return record


def command(args=None) -> int:
    params = load_params()
    r = publish(params)
    if r["promoted"]:
        print(f"publish: {r['name']} version {r['version']} is now @{r['alias']} ({r['reason']}) -> "
              f"models:/{r['name']}@{r['alias']}")
    else:
        print(f"publish: {r['name']} version {r['version']} registered but NOT promoted: {r['reason']}; "
              f"@{r['alias']} stays on version {r['champion_version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
