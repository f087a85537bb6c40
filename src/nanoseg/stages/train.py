"""Stage ``train``: the final model on all training images, epochs from the CV result.

Writes ``models/final/`` (model.keras + nanoseg.json with the CV-chosen threshold
and post-processing settings; a DVC-cached output, not in git) and logs it to
MLflow as run ``train-<label>-<profile>`` (label ``paper`` or ``instance-<head>``). The instance variant's model also
records its ``instance`` settings (head, loss) and the decoder chosen in CV.
"""

import gc
import json

from nanoseg.config import load_params, resolve
from nanoseg.dataset import load_rows, read_prepared
from nanoseg.errors import NanosegError, report_errors

OUT = "models/final"


def command(args=None) -> int:
    from nanoseg import tracking
    from nanoseg.crossval import run_label, variant_params, variant_tags
    from nanoseg.model import save_model
    from nanoseg.plots import learning_curves
    from nanoseg.targets import instance_settings
    from nanoseg.training import fit

    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    cv_file = resolve(params, "metrics/cv.json")
    if not cv_file.is_file():
        raise NanosegError(f"{cv_file}: no cross-validation result; run `dvc repro cv` first.")
    cv = json.loads(cv_file.read_text())
    epochs = max(1, int(cv["best_epoch_median"]))
    variant = params["model"]["variant"]
    decoder = (cv.get("postprocess") or {}).get("decoder")
    wanted = instance_settings(params)["head"] if variant == "instance" else None
    if decoder != wanted:
        raise NanosegError(f"{cv_file}: the cross-validation result is for another model variant/head "
                           f"(decoder {decoder!r}, settings ask for {wanted!r}); run `dvc repro cv` again.")
    images, masks = load_rows(manifest, split["train"], params["_root"])
    tracking.setup(params=params)
    tags = {"stage": "train", **variant_tags(params), "profile": params["profile"]}
    with tracking.start_run(f"train-{run_label(params)}-{params['profile']}", tags=tags,
                            params={"variant": variant, "epochs_from_cv": epochs, "n_train": len(images),
                                    **variant_params(params)}) as run:
        model, history, info = fit(images, masks, None, None, params, log=tracking.log_metrics, epochs=epochs,
                                   max_minutes=params["train"].get("final_max_minutes"), label="final model")
        meta = {"variant": variant, "profile": params["profile"], "threshold": cv["threshold"],
                "postprocess": cv["postprocess"], "tile": params["predict"]["tile"],
                "overlap": params["predict"]["overlap"], "crop": params["train"]["crop"],
                "epochs": info["epochs_run"], "cv_dice_mean": cv["dice_mean"], "mlflow_run_id": run.info.run_id}
        if variant == "instance":
            meta["instance"] = instance_settings(params)
            meta["cv_f1_50_mean"] = cv.get("f1_50_mean")
        folder = save_model(model, resolve(params, OUT), meta)
        curve = learning_curves(history, resolve(params, "plots/train/learning_curves.png"), title="final model")
        tracking.log_artifact(curve, "plots")
        tracking.log_artifact(folder, "model")
        tracking.log_metrics({"epochs_run": info["epochs_run"], "train_seconds": info["seconds"]})
    del model
    gc.collect()
    print(f"final model: {info['epochs_run']} epochs in {info['seconds']:.0f} s -> {OUT}/ (MLflow run {run.info.run_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
