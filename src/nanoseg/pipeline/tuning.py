"""Hyper-parameter search with Optuna: learning rate and batch size (``nanoseg tune``).

The objective of a trial is the metric the publish gate ranks models by: the mean validation
instance F1 at IoU 0.5 on the ``clean`` subset, each fold's threshold and post-processing tuned on its
own validation images as in :mod:`nanoseg.pipeline.crossval`, over a subset of the CV folds (``tune.folds``). While a
fold trains, its per-epoch validation Dice is reported to the trial
(step = fold position x epochs + epoch), so the pruner (``tune.pruner``) can stop
hopeless trials early; a pruned trial raises :class:`optuna.TrialPruned` from
the ``log`` callback of :func:`nanoseg.model.training.fit`, which ends the fit.

Storage: ``tune.storage`` is a sqlite file under the store root (like
``mlruns/``; default ``tune/optuna.db``) or any SQLAlchemy URL, e.g.
``postgresql+psycopg2://user@host/db``, so that several machines can work on one
study (sqlite serves one worker). Running again continues the study until it
holds ``tune.n_trials`` finished (complete or pruned) trials.

MLflow: one run per study (``tune-<study>``) with each trial as a nested run
(parameters, per-epoch metrics, ``mean_val_f1_50_clean``, tag ``optuna_state``
COMPLETE / PRUNED / FAIL; pruned runs end KILLED, failed ones FAILED) and the
study's plots as PNG artifacts. The best setting goes to
``tune/best_params.yaml``; ``params.yaml`` is never rewritten.
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import yaml

from nanoseg.atomic import atomic_path, write_text
from nanoseg.config import PrunerSettings, TuneSettings, check, resolve, store_root
from nanoseg.errors import NanosegError

BEST_FILE = "tune/best_params.yaml"
PLOTS_DIR = "tune/plots"
FINISHED = ("COMPLETE", "PRUNED")


# ----------------------------------------------------------------------------- study


def storage_url(value: str | None) -> str:
    """A storage setting as an SQLAlchemy URL: URLs pass, a path is a sqlite file under the store root."""
    value = str(value or TuneSettings().storage)
    if "://" in value:
        return value
    path = Path(value)
    path = path if path.is_absolute() else store_root() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def make_pruner(spec: dict | None):
    """An Optuna pruner from ``{"name": median|percentile|hyperband|successive_halving|threshold|none, **kwargs}``
    (``tune.pruner``, checked by :class:`nanoseg.config.PrunerSettings`; None: the median pruner, Optuna's defaults)."""
    import optuna

    spec = check(PrunerSettings, spec, "tune.pruner")
    name = spec.pop("name")
    kinds = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "hyperband": optuna.pruners.HyperbandPruner,
             "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    accepted = {k: set(inspect.signature(c).parameters) for k, c in kinds.items()}
    # settings of other pruners (e.g. inherited from the base section through a profile) do not apply
    return kinds[name](**{k: v for k, v in spec.items() if k in accepted[name]})


def open_study(storage: str, study_name: str, pruner=None, seed: int | None = 0):
    """Create or load (resume) a maximising study in ``storage``.

    The sampler (TPE) is seeded with ``seed`` plus the number of trials already
    in the study, so a resumed study does not repeat its first suggestions.
    """
    import optuna

    kwargs = {"heartbeat_interval": 30, "grace_period": 120}
    if storage.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
            rdb = optuna.storages.RDBStorage(storage, **kwargs)
        study = optuna.create_study(storage=rdb, study_name=study_name, direction="maximize",
                                    load_if_exists=True, pruner=pruner)
    except ImportError as exc:
        raise NanosegError(f"{_safe(storage)}: the database driver is not installed ({exc}); install it, "
                           "e.g. pip install psycopg2-binary for PostgreSQL.") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
        raise NanosegError(f"{_safe(storage)}: cannot open the Optuna storage ({str(exc).splitlines()[0][:300]}); "
                           "check the URL, that the server runs and that you may write there.") from None
    if seed is not None:
        study.sampler = optuna.samplers.TPESampler(seed=int(seed) + len(study.trials))
    return study


def _safe(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def check_space(study, space: dict) -> None:
    """Record the search space in a new study; refuse to continue a study with another one."""
    old = study.user_attrs.get("space")
    if old is None:
        study.set_user_attr("space", space)
    elif old != space:
        raise NanosegError(
            f"study {study.study_name!r} was run with the search space {old}, not {space}; restore the tune: "
            "settings in params.yaml or start a new study (nanoseg tune --study NEW_NAME).")


def count_finished(study) -> int:
    return sum(t.state.name in FINISHED for t in study.trials)


def optimize(study, objective, n_trials: int, timeout_minutes: float | None = None,
             catch: tuple = (NanosegError, MemoryError)) -> int:
    """Run trials until the study holds ``n_trials`` finished trials (shared by all workers).

    Returns the number of trials this call ran. Keras sessions are cleared and
    garbage collected after every trial.
    """
    import optuna

    remaining = int(n_trials) - count_finished(study)
    if remaining <= 0:
        return 0
    ran = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=remaining, timeout=timeout_minutes * 60 if timeout_minutes else None,
                       catch=catch, gc_after_trial=True, callbacks=[
                           lambda study, trial: ran.append(trial.number),
                           optuna.study.MaxTrialsCallback(int(n_trials), states=(
                               optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])
    return len(ran)


# ----------------------------------------------------------------------------- objective


def suggest(trial, space: dict) -> dict:
    """Learning rate (log-uniform in ``space["lr"]``) and batch size (one of ``space["batch"]``)."""
    lo, hi = (float(v) for v in space["lr"])
    return {"lr": trial.suggest_float("lr", lo, hi, log=True),
            "batch": int(trial.suggest_categorical("batch", [int(b) for b in space["batch"]]))}


def trial_params(params: dict, hp: dict, overrides: dict | None = None) -> dict:
    """The settings of one trial: ``train`` with the trial's overrides and suggested values."""
    p = copy.deepcopy(params)
    p["train"].update(copy.deepcopy(overrides or {}))
    p["train"].update(hp)
    return p


def fold_subset(split: dict, folds) -> list[int]:
    """Fold indices from ``tune.folds``: an int (the first N folds), a list, or null (all)."""
    n = len(split["folds"])
    if folds is None:
        return list(range(n))
    chosen = list(range(min(int(folds), n))) if isinstance(folds, int) else [int(k) for k in folds]
    if not chosen or any(not 0 <= k < n for k in chosen):
        raise NanosegError(f"tune.folds = {folds!r}: the split has folds 0..{n - 1}; fix params.yaml.")
    return chosen


def val_dice_key(logs: dict) -> str | None:
    """The per-epoch validation Dice in a Keras log (``val_dice_coefficient``), if present."""
    keys = [k for k in logs if k.startswith("val_") and "dice" in k]
    return keys[0] if keys else None


OBJECTIVE = "mean_val_f1_50_clean"


def fold_score(va_mask, probs, params: dict, pixel_size_nm=None) -> dict:
    """A trained fold's validation scores as the gate ranks models: threshold and post-processing chosen
    on these images (:func:`nanoseg.pipeline.crossval.choose_postprocess`); ``f1_50_clean`` and pixel ``dice``."""
    from nanoseg.pipeline.crossval import choose_postprocess
    from nanoseg.evaluation.metrics import choose_threshold, pixel_metrics
    from nanoseg.postprocess.decode import foreground_probability

    fg = [foreground_probability(q) for q in probs]
    threshold = float(choose_threshold(va_mask, fg))
    post = choose_postprocess(va_mask, probs, threshold, params, pixel_size_nm)
    return {"f1_50_clean": post["val_f1_50_clean"], "dice": float(pixel_metrics(va_mask, fg, threshold)["dice"]),
            "threshold": threshold}


def cv_objective(params: dict, data: dict, tune: dict, tracker=None, pixel_size_nm=None):
    """The Optuna objective: mean validation clean F1@0.5 (:func:`fold_score`) over the chosen folds.

    Parameters
    ----------
    params : dict
        Settings (``train``, ``model``, ``predict``).
    data : dict
        ``{fold: (train_images, train_masks, val_images, val_masks)}``.
    tune : dict
        The ``tune`` settings (``lr``, ``batch``, ``train`` overrides).
    tracker : module, optional
        :mod:`nanoseg.tracking` to log each trial as a nested MLflow run.
    """

    def objective(trial):
        import optuna

        from nanoseg.pipeline.crossval import predict_images
        from nanoseg.model.training import fit

        hp = suggest(trial, tune)
        p = trial_params(params, hp, tune.get("train"))
        epochs = int(p["train"]["epochs"])
        folds = list(data)
        run = (tracker.start_run(f"trial-{trial.number}", nested=True,
                                 tags={"stage": "tune", "optuna_study": trial.study.study_name,
                                       "optuna_trial": str(trial.number), "profile": params["profile"]},
                                 params={**hp, "trial": trial.number, "folds": folds, "train": p["train"]})
               if tracker else _null())
        with run:
            try:
                dices = []
                for pos, k in enumerate(folds):
                    def log(logs, epoch, k=k, pos=pos):
                        if tracker:
                            tracker.log_metrics({f"fold{k}_{n}": v for n, v in logs.items()}, step=epoch)
                        key = val_dice_key(logs)
                        if key is None:
                            return
                        trial.report(float(logs[key]), pos * epochs + epoch)
                        if trial.should_prune():
                            raise optuna.TrialPruned(f"fold {k} epoch {epoch + 1}: {key} {logs[key]:.4f}")

                    tr_img, tr_mask, va_img, va_mask = data[k]
                    try:
                        model, _, info = fit(tr_img, tr_mask, va_img, va_mask, p, log=log,
                                             label=f"trial {trial.number} fold {k}")
                        sc = fold_score(va_mask, predict_images(model, va_img, p), p, pixel_size_nm)
                    finally:
                        model = None
                        free_memory()
                    dices.append(sc["f1_50_clean"])
                    if tracker:
                        tracker.log_metrics({f"fold{k}_val_f1_50_clean": sc["f1_50_clean"],
                                             f"fold{k}_val_dice": sc["dice"], f"fold{k}_best_epoch": info["best_epoch"]})
                value = sum(dices) / len(dices)
                if tracker:
                    tracker.log_metrics({OBJECTIVE: value})
                    tracker.set_tags({"optuna_state": "COMPLETE"})
                return value
            except optuna.TrialPruned as exc:
                if tracker:
                    tracker.set_tags({"optuna_state": "PRUNED", "optuna_pruned_at": str(exc)})
                    tracker.end_run("KILLED")
                raise
            except Exception as exc:
                if tracker:
                    tracker.set_tags({"optuna_state": "FAIL", "optuna_error": str(exc)[:4000]})
                    tracker.end_run("FAILED")
                raise

    return objective


def free_memory() -> None:
    """Drop Keras' global state (graphs, layer names) and collect garbage, so long studies do not grow."""
    if "keras" in sys.modules:  # nothing to clear when Keras was never imported
        sys.modules["keras"].backend.clear_session()
    gc.collect()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- results


def best_setting(study) -> dict:
    """The best trial's setting and the ``dvc exp run`` command that reproduces it."""
    best = study.best_trial
    train = {"lr": float(best.params["lr"]), "batch": int(best.params["batch"])}
    command = "dvc exp run " + " ".join(f"-S train.{k}={v!r}" for k, v in train.items())
    return {"study": study.study_name, "trial": best.number, "metric": OBJECTIVE,
            "value": float(best.value), "train": train, "command": command}


def write_best(best: dict, path: str | os.PathLike, storage: str) -> Path:
    """Write ``best_params.yaml`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# Best trial of Optuna study {best['study']!r} ({_safe(storage)}):\n"
            f"# mean validation clean F1@0.5 {best['value']:.4f}. Written by `nanoseg tune`; params.yaml is unchanged.\n"
            f"# Train with it:  {best['command']}\n")
    return write_text(path, head + yaml.safe_dump(best, sort_keys=False))


def save_plots(study, folder: str | os.PathLike) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; plots the study cannot make yet (too few trials) are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {"optimization_history": vis.plot_optimization_history,
             "intermediate_values": vis.plot_intermediate_values,
             "param_importances": vis.plot_param_importances, "slice": vis.plot_slice,
             "contour": vis.plot_contour}
    out = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 5))
            with atomic_path(folder / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight")
            out.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError, optuna.exceptions.OptunaError) as exc:
            print(f"tune: plot {name} skipped ({str(exc).splitlines()[0][:120] or type(exc).__name__})")
        finally:
            plt.close("all")
    return out


# ----------------------------------------------------------------------------- command


def load_fold_data(params: dict, manifest, split: dict, folds: list[int]) -> dict:
    """Images and masks of the chosen folds, each image read once."""
    from nanoseg.data.manifest import load_rows

    stems = sorted({s for k in folds for part in ("train", "val") for s in split["folds"][k][part]})
    images, masks = load_rows(manifest, stems, params["_root"])
    by = dict(zip(stems, zip(images, masks)))

    def pick(names):
        return [by[s][0] for s in names], [by[s][1] for s in names]

    return {k: (*pick(split["folds"][k]["train"]), *pick(split["folds"][k]["val"])) for k in folds}


def tune(params: dict, n_trials: int | None = None, storage: str | None = None, study_name: str | None = None,
         timeout_minutes: float | None = None) -> dict:
    """Run (or continue) the study; write ``tune/best_params.yaml`` and the plots; return the best setting."""
    from nanoseg import tracking
    from nanoseg.data.manifest import read_prepared
    from nanoseg.data.manifest import median_pixel_size

    t = params["tune"]
    n_trials = int(n_trials or t["n_trials"])
    manifest, split = read_prepared(resolve(params, "prepared"))
    folds = fold_subset(split, t["folds"])
    url = storage_url(storage or os.environ.get("NANOSEG_OPTUNA_STORAGE") or t["storage"])
    name = study_name or f"{t['study']}-{params['profile']}"
    study = open_study(url, name, make_pruner(t["pruner"]), t["seed"])
    check_space(study, {"lr": [float(v) for v in t["lr"]], "batch": [int(b) for b in t["batch"]], "folds": folds})
    done = count_finished(study)
    print(f"tune: study {name!r} in {_safe(url)}: {done} of {n_trials} trials finished; folds {folds}")
    if done < n_trials:
        data = load_fold_data(params, manifest, split, folds)
        tracking.setup(params=params)
        parent = study.user_attrs.get("mlflow_run_id")
        if tracking.run_status(parent) is None:
            parent = None
        space = {k: t[k] for k in ("lr", "batch", "folds", "pruner", "train") if k in t}
        with tracking.start_run(f"tune-{name}", run_id=parent,
                                tags={"stage": "tune", "optuna_study": name, "profile": params["profile"]},
                                params=None if parent else {"tune": space, "n_trials": n_trials,
                                                            "profile": params["profile"]}) as run:
            if not parent:
                study.set_user_attr("mlflow_run_id", run.info.run_id)
            objective = cv_objective(params, data, t, tracker=tracking, pixel_size_nm=median_pixel_size(manifest))
            ran = optimize(study, objective, n_trials, timeout_minutes)
            _report(study, params, url, tracking, ran)
    elif any(t_.state.name == "COMPLETE" for t_ in study.trials):
        _report(study, params, url, None, 0)
    return _best_or_none(study)


def _best_or_none(study):
    try:
        return best_setting(study)
    except ValueError:  # no complete trial
        return None


def _report(study, params: dict, url: str, tracking, ran: int) -> None:
    states = {}
    for tr in study.trials:
        states[tr.state.name] = states.get(tr.state.name, 0) + 1
    print(f"tune: ran {ran} trials here; study trials by state: {json.dumps(states)}")
    best = _best_or_none(study)
    if best is None:
        raise NanosegError(f"study {study.study_name!r}: no trial completed (states {states}); see the failed "
                           "trials' MLflow runs (tag optuna_error), fix the cause and run `nanoseg tune` again.")
    path = write_best(best, resolve(params, BEST_FILE), url)
    plots = save_plots(study, resolve(params, PLOTS_DIR))
    if tracking:
        tracking.log_metrics({f"best_{OBJECTIVE}": best["value"], "best_trial": best["trial"]})
        tracking.set_tags({"best_params": json.dumps(best["train"])})
        for png in plots:
            tracking.log_artifact(png, "plots")
        tracking.log_artifact(path)
    print(f"tune: best trial {best['trial']}: mean validation clean F1@0.5 {best['value']:.4f} with "
          f"lr {best['train']['lr']:.3g}, batch {best['train']['batch']} -> {BEST_FILE}")
    print(f"tune: reproduce it with:  {best['command']}")


