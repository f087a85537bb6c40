"""Stage ``publish``: register the candidate as ``nanoseg`` in the MLflow registry; move ``@champion``
only when the candidate passes the gate on its own measured scores.

The candidate (``models/final``) is logged as a pyfunc model (the code of ``nanoseg predict``,
request format in :mod:`nanoseg.serving.payload`, logged as code) with its signature and an input example, in run
``publish-<variant>-<profile>``; every version is registered, with tags: provenance (git commit,
data md5, split fingerprint, CV key, profile, CPU), ``test_<metric>`` (the candidate's own scores on the
test images, ``metrics/test.json``), ``cv_<metric>_mean/_std`` (its cross-validation estimate), and
``validation`` = ``passed`` | ``failed`` with ``validation_reasons``.

The gate (:func:`gate`, settings ``publish:`` in params.yaml) passes when

1. the candidate's profile is one that may publish (``publish.profiles``: a smoke run never does);
2. the test scores were measured on exactly these model files and this split (fingerprints);
3. on every metric of ``publish.gate_metrics`` (pixel Dice, clean F1@0.5) the test score is no worse
   than the CV mean minus ``max(tolerance_std x fold std, tolerance_min)``;
4. it is at least as good as the current champion on ``publish.rank_by`` (clean F1@0.5), both scored
   on the same test images by ``evaluate``, and the champion was trained on the same data version
   and split (otherwise the comparison is not like with like: refused unless
   ``publish.replace_incomparable``).

A refused candidate is a normal outcome: it stays registered (tag ``validation=failed``), the alias
stays where it was, a paragraph says why, and the stage exits 0. ``reports/publish.json`` records the
decision, the rule and both models' scores.
"""

from __future__ import annotations

import json
import math
import sys

from nanoseg.atomic import write_json
from nanoseg.config import PublishSettings, check, load_params, resolve
from nanoseg.errors import NanosegError, report_errors

MODEL = "models/final"
TEST = "metrics/test.json"
CV = "metrics/cv.json"
OUT = "reports/publish.json"
#: The gate's default settings (``publish:`` of params.yaml, :class:`nanoseg.config.PublishSettings`).
RULE = PublishSettings().model_dump()


def _score(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def rule_from(params: dict) -> dict:
    """The gate's settings: ``publish:`` in params.yaml over :data:`RULE` (unknown keys refused)."""
    return check(PublishSettings, params.get("publish"), "publish")


def gate(candidate: dict, cv: dict, champion: dict | None, rule: dict) -> tuple[bool, list[dict]]:
    """Whether the candidate may become champion, with every check made.

    Parameters
    ----------
    candidate : dict
        ``scores`` (its test metrics), ``profile``, ``data_md5``, ``split`` (split fingerprint),
        ``fingerprint_ok`` (test scores measured on these model files and this split).
    cv : dict
        ``metrics/cv.json``: ``<metric>_mean`` and ``<metric>_std`` over the folds.
    champion : dict or None
        ``version``, ``scores`` (on the same test images), ``tags`` (its registry tags).
    rule : dict
        See :data:`RULE`.

    Returns
    -------
    (bool, list of dict)
        Passed, and the checks: ``check``, ``passed``, ``detail``.
    """
    checks = []

    def add(name, ok, detail):
        checks.append({"check": name, "passed": bool(ok), "detail": detail})

    profile = candidate.get("profile")
    add("profile", profile in rule["profiles"],
        f"profile {profile!r} {'may' if profile in rule['profiles'] else 'may not'} publish "
        f"(publish.profiles: {rule['profiles']})")
    add("provenance", candidate.get("fingerprint_ok", False),
        "test scores measured on exactly these model files and this split" if candidate.get("fingerprint_ok")
        else "metrics/test.json was not measured on these model files or this split: run `dvc repro evaluate`")
    scores = candidate.get("scores") or {}
    for m in rule["gate_metrics"]:
        test, mean, std = _score(scores.get(m)), _score(cv.get(f"{m}_mean")), _score(cv.get(f"{m}_std"))
        if test is None or mean is None:
            add(f"cv_{m}", False, f"{m}: no {'test score' if test is None else 'CV estimate'} to compare")
            continue
        tol = max(float(rule["tolerance_std"]) * (std or 0.0), float(rule["tolerance_min"]))
        add(f"cv_{m}", test >= mean - tol,
            f"{m}: test {test:.4f} {'>=' if test >= mean - tol else '<'} CV {mean:.4f} - {tol:.4f} "
            f"(max({rule['tolerance_std']} x std {std or 0:.4f}, {rule['tolerance_min']}))")
    rank = rule["rank_by"]
    if champion is None:
        add("champion", True, "no champion yet")
        return all(c["passed"] for c in checks), checks
    tags = champion.get("tags") or {}
    same_data = tags.get("data_md5") == candidate.get("data_md5") and tags.get("split") == candidate.get("split")
    if tags.get("profile") not in rule["profiles"]:
        add("champion", True, f"the champion (version {champion['version']}, profile {tags.get('profile')!r}) "
                              "comes from a profile that may not publish: replaced")
        return all(c["passed"] for c in checks), checks
    if not same_data and not rule["replace_incomparable"]:
        add("champion", False, f"the champion (version {champion['version']}) was trained on another data version "
                               f"or split (data {tags.get('data_md5')!r}, split {tags.get('split')!r}; now "
                               f"{candidate.get('data_md5')!r}, {candidate.get('split')!r}): not like with like. Set "
                               "publish.replace_incomparable: true to let a candidate that passes its own CV check "
                               "replace it")
        return False, checks
    new, best = _score(scores.get(rank)), _score((champion.get("scores") or {}).get(rank))
    margin = float(rule["champion_margin"])
    if best is None:
        add("champion", new is not None, f"the champion has no test {rank} on these images")
    elif new is None:
        add("champion", False, f"the candidate has no test {rank} (the champion has {best:.4f})")
    else:
        add("champion", new >= best + margin,
            f"test {rank} {new:.4f} {'>=' if new >= best + margin else '<'} champion version "
            f"{champion['version']}'s {best:.4f}{f' + {margin}' if margin else ''} on the same images"
            + ("" if same_data else " (champion from another data version/split, replace_incomparable)"))
    return all(c["passed"] for c in checks), checks


def model_metadata(folder) -> dict:
    """The model folder's ``nanoseg.json``, checked before anything is registered (the model itself
    is loaded, and run on the input example, when MLflow logs it)."""
    from nanoseg.model.network import METADATA_FILE, MODEL_FILE

    for name in (MODEL_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            raise NanosegError(f"{folder}: model folder not found or incomplete ({name} is missing); "
                               "run `dvc repro train` first.")
    try:
        return json.loads((folder / METADATA_FILE).read_text())
    except ValueError as exc:
        raise NanosegError(f"{folder / METADATA_FILE}: unreadable model settings ({exc}); train the model again.") from None


def _cv_tags(cv: dict) -> dict:
    return {f"cv_{k}": v for k, v in cv.items() if (k.endswith("_mean") or k.endswith("_std"))
            and isinstance(v, (int, float))}


def _paragraph(record: dict) -> str:
    failed = [c["detail"] for c in record["checks"] if not c["passed"]]
    where = (f"@{record['alias']} stays on version {record['champion_version']}" if record["champion_version"]
             else f"no version holds @{record['alias']} yet: `nanoseg predict/serve --model models:/"
                  f"{record['name']}@{record['alias']}` will say so; pass --model models:/{record['name']}/"
                  f"{record['version']} to use this version anyway")
    return (f"publish: {record['name']} version {record['version']} registered but NOT promoted (tag "
            f"validation=failed): " + "; ".join(failed) + f". {where}. Details: {OUT}.")


def publish(params: dict) -> dict:
    """Register ``models/final``, apply the gate; return the record written to ``reports/publish.json``."""
    from nanoseg import tracking
    from nanoseg.data.manifest import read_prepared
    from nanoseg.serving.payload import input_example
    from nanoseg.serving.pyfunc import log_pyfunc
    from nanoseg.data.heldout import load_test
    from nanoseg.evaluation.model_scores import model_fingerprint, score_champion, split_fingerprint
    from nanoseg.machine import cpu_model

    folder, test_file, cv_file = resolve(params, MODEL), resolve(params, TEST), resolve(params, CV)
    if not test_file.is_file():
        raise NanosegError(f"{test_file}: no test metrics; run `dvc repro evaluate` first.")
    if not cv_file.is_file():
        raise NanosegError(f"{cv_file}: no cross-validation result; run `dvc repro cv` first.")
    rule = rule_from(params)
    meta = model_metadata(folder)
    result = json.loads(test_file.read_text())
    cv = json.loads(cv_file.read_text())
    test = {k: v for k, v in (result.get("model") or {}).items() if isinstance(v, (int, float))}
    if rule["rank_by"] not in test:
        raise NanosegError(f"publish.rank_by = {rule['rank_by']!r} is not a test metric of {test_file}; use one of "
                           f"{sorted(test)} in params.yaml.")
    manifest, split = read_prepared(resolve(params, "prepared"))
    split_fp = split_fingerprint(split)
    data_md5 = tracking.run_tags().get("data_md5")
    fingerprint_ok = (result.get("model_fingerprint") == model_fingerprint(folder)
                      and result.get("split_fingerprint") == split_fp)
    name, alias = tracking.REGISTERED_MODEL, tracking.CHAMPION
    tracking.setup(params=params)
    current = tracking.alias_version(alias, name)
    champion = result.get("champion")
    if current is None:
        champion = None
    elif champion is None or str(champion.get("version")) != str(current.version):
        print(f"publish: @{alias} is version {current.version}, not the one evaluate scored; scoring it now")
        champion = score_champion(params, load_test(params, manifest, split),
                                  batch=int(params["predict"]["batch"]))
    else:
        champion = {**champion, "tags": dict(current.tags or {})}
    profile = meta.get("profile", params["profile"])
    candidate = {"scores": test, "profile": profile, "data_md5": data_md5, "split": split_fp,
                 "fingerprint_ok": fingerprint_ok}
    passed, checks = gate(candidate, cv, champion, rule)
    variant = meta.get("variant", params["model"]["variant"])
    settings = {k: params.get(k) for k in ("model", "train", "predict", "postprocess")}
    reasons = "; ".join(c["detail"] for c in checks if not c["passed"]) or "all checks passed"
    tags = {**tracking.run_tags(), "variant": variant, "profile": profile, "candidate": str(meta.get("candidate")),
            "split": split_fp, "cv_key": str(meta.get("cv_key")), "cpu": cpu_model(),
            "train_run_id": str(meta.get("mlflow_run_id", "")), "threshold": meta.get("threshold"),
            "params": json.dumps(settings, default=str)[:5000],
            "validation": "passed" if passed else "failed", "validation_reasons": reasons[:5000],
            **{f"test_{k}": v for k, v in test.items()}, **_cv_tags(cv)}
    warnings = list(cv.get("warnings") or []) + list(meta.get("warnings") or [])  # under-trained on a slow CPU
    if warnings:
        tags["warnings"] = " | ".join(warnings)[:5000]
    with tracking.start_run(f"publish-{variant}-{profile}",
                            tags={"stage": "publish", "variant": variant, "profile": profile}) as run:
        tracking.log_metrics({f"test_{k}": v for k, v in test.items()})
        info = log_pyfunc(folder, input_example(), tags=tags, registered_name=name,
                          metadata={"nanoseg": {k: meta.get(k) for k in ("variant", "candidate", "threshold",
                                                                        "tile", "overlap", "tta", "postprocess",
                                                                        "training_scale")}})
        version = str(info.registered_model_version)
        tracking.set_version_tags(version, tags, name)
        if passed:
            tracking.set_alias(version, alias, name)
        tracking.set_tags({"registered_version": version, "promoted": str(passed), "validation": tags["validation"],
                           "validation_reasons": reasons[:5000]})
    record = {"name": name, "version": version, "alias": alias, "promoted": passed,
              "decision": "promoted" if passed else "refused", "reason": reasons, "checks": checks, "rule": rule,
              "champion_version": version if passed else (str(current.version) if current else None),
              "previous_champion": champion and {k: champion.get(k) for k in ("version", "scores", "seconds_per_image")},
              "candidate": {"kind": meta.get("candidate"), "profile": profile, "test": test,
                            "cv": {k: v for k, v in cv.items() if k.endswith("_mean") or k.endswith("_std")},
                            "seconds_per_image": result.get("seconds_per_image")},
              "model_uri": f"models:/{name}/{version}", "run_id": run.info.run_id, "warnings": warnings}
    out = resolve(params, OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record, default=str)
    return record


def command(args=None) -> int:
    params = load_params()
    r = publish(params)
    if r["promoted"]:
        why = "; ".join(c["detail"] for c in r["checks"])
        print(f"publish: {r['name']} version {r['version']} is now @{r['alias']} ({why}) -> "
              f"models:/{r['name']}@{r['alias']}")
    else:
        print(_paragraph(r))
    for warning in r["warnings"]:
        print(f"WARNING publish: version {r['version']} (tag `warnings`): {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
