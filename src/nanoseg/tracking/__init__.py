"""Experiment tracking (MLflow): runs (:mod:`nanoseg.tracking.runs`), the model registry
(:mod:`nanoseg.tracking.registry`) and the store's readers (:mod:`nanoseg.model_store`), all re-exported here (``from nanoseg import tracking``;
``python -m nanoseg.tracking --uri`` prints the tracking URI).

Reading models from the store by URI is :mod:`nanoseg.model_store`'s, below every user of a model
(inference, evaluation, serving); tracking builds on it and sits above them, so the one name it hands on
from :mod:`nanoseg.serving.pyfunc` (``NanosegPyfunc``, for versions pickled before models from code) is
no upward import.
"""

import importlib

from nanoseg.model_store import (  # noqa: F401
    CHAMPION, REGISTERED_MODEL, alias_version, check_model_uri, download_model, download_pyfunc, store_dir,
    tracking_uri,
)
from nanoseg.tracking.registry import set_alias, set_version_tags  # noqa: F401
from nanoseg.tracking.runs import (  # noqa: F401
    COMPARE_METRICS, COMPARE_PARAMS, EXPERIMENT, compare_metrics, compare_params, end_run,
    log_artifact, log_dict, log_metrics, log_params, log_to_run, main, run_status, run_tags,
    set_tags, setup, start_run,
)


def __getattr__(name):
    """``nanoseg.tracking.NanosegPyfunc``: the name that the pickle of every version registered before models
    from code holds. Looked up by name only when MLflow unpickles such a version (``nanoseg serve`` never
    does: :func:`nanoseg.serving.pyfunc.servable_model`); nanoseg's own code never takes this path."""
    if name == "NanosegPyfunc":
        return importlib.import_module("nanoseg.serving.pyfunc").NanosegPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
