"""The typed settings (nanoseg.config): params.yaml and the code's defaults agree, bad keys and values are refused
with one line per problem naming the key."""

from __future__ import annotations

import inspect
import typing

import pytest
import yaml

from nanoseg import config
from nanoseg.config import PROFILES, Params, PrunerSettings, load_params, merge_params
from nanoseg.errors import NanosegError
from tests.conftest import REPO, run_cli

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name the file as the user would: params.yaml


def _write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _error(tmp_path, text: str, profile: str | None = None) -> str:
    with pytest.raises(NanosegError) as exc:
        load_params(_write(tmp_path, text), profile=profile)
    return str(exc.value)


@pytest.mark.parametrize("profile", sorted(SHIPPED["profiles"]))
def test_the_shipped_file_and_every_profile_validate_to_exactly_their_values(profile):
    params = load_params(REPO / "params.yaml", profile=profile)
    base = {k: v for k, v in SHIPPED.items() if k != "profiles"}
    expected = {**merge_params(base, SHIPPED["profiles"][profile]), "profile": profile}
    assert params.pop("_root") == str(REPO)
    assert params == expected
    # nothing added, nothing converted (8 stays 8, 1.0e-3 stays a float): the settings logged to MLflow and
    # hashed into the CV key are the file's
    for section, values in expected.items():
        assert repr(params[section]) == repr(values), section


def test_defaults_are_the_shipped_values(tmp_path):
    """The code's defaults and params.yaml cannot disagree: an empty file gives the shipped settings."""
    empty = _write(tmp_path, "")
    for profile in SHIPPED["profiles"]:
        got, shipped = load_params(empty, profile=profile), load_params(REPO / "params.yaml", profile=profile)
        got.pop("_root"), shipped.pop("_root")
        assert got == shipped, profile
    assert PROFILES == SHIPPED["profiles"]
    assert config.defaults().model_dump(by_alias=True) == SHIPPED
    assert Params.model_validate(SHIPPED) == Params()
    assert load_params(_write(tmp_path, "train: {lr: 0.01}\n"))["train"] == {**SHIPPED["train"], "lr": 0.01}


def test_a_misspelt_key_is_an_error_naming_it(tmp_path):
    assert _error(tmp_path, "train: {lrr: 0.001}\n") == (
        "params.yaml: train.lrr is not a setting (did you mean train.lr?); fix or remove it.")
    assert _error(tmp_path, "trian: {lr: 0.001}\n") == (
        "params.yaml: trian is not a setting (did you mean train?); fix or remove it.")
    assert _error(tmp_path, "train: {augment: {scael: [0.8, 1.25]}}\n") == (
        "params.yaml: train.augment.scael is not a setting (did you mean train.augment.scale?); fix or remove it.")
    assert _error(tmp_path, "tune: {train: {epochz: 3}}\n") == (
        "params.yaml: tune.train.epochz is not a setting (did you mean tune.train.epochs?); fix or remove it.")
    message = _error(tmp_path, "validate: {colour: red}\n")
    assert message.startswith("params.yaml: validate.colour is not a setting of validate (known: foreground_fraction,")


def test_a_misspelt_key_in_a_profile_is_an_error_naming_the_profile(tmp_path):
    raw = {**SHIPPED, "profiles": {**SHIPPED["profiles"], "paper": {"train": {"epoch": 300}}}}
    text = yaml.safe_dump(raw)
    expected = ("params.yaml: profiles.paper.train.epoch is not a setting (did you mean "
                "profiles.paper.train.epochs?); fix or remove it.")
    assert _error(tmp_path, text) == expected  # every profile is checked, not only the one in use
    assert _error(tmp_path, text, profile="smoke") == expected
    assert _error(tmp_path, "profiles: {cpu: {}, fast: {tarin: {lr: 0.1}}}\n") == (
        "params.yaml: profiles.fast.tarin is not a setting (did you mean profiles.fast.train?); fix or remove it.")
    assert _error(tmp_path, "profiles: {cpu: {predict: {tile: -512}}}\n") == (
        "params.yaml: profiles.cpu.predict.tile = -512 must be greater than 0.")
    assert _error(tmp_path, "profiles: {cpu: {profile: paper}}\n") == (
        "params.yaml: profiles.cpu.profile cannot be set in a profile; remove it.")


def test_a_wrong_type_names_the_key_and_the_value(tmp_path):
    assert _error(tmp_path, "train: {batch: four}\n") == "params.yaml: train.batch = 'four' must be an integer."
    assert _error(tmp_path, "train: {mixed_bf16: maybe}\n") == (
        "params.yaml: train.mixed_bf16 = 'maybe' must be one of 'auto', true, false.")
    assert _error(tmp_path, "train: {loss: focal}\n") == "params.yaml: train.loss = 'focal' must be 'dice'."
    assert _error(tmp_path, "model: {variant: papr}\n") == (
        "params.yaml: model.variant = 'papr' must be one of 'instance', 'paper'.")
    assert _error(tmp_path, "data: {databar_row: bottom}\n") == (
        "params.yaml: data.databar_row = 'bottom' must be 'auto' or an integer.")
    assert _error(tmp_path, "train: {max_minutes_per_fold: soon}\n") == (
        "params.yaml: train.max_minutes_per_fold = 'soon' must be a number.")
    assert _error(tmp_path, "train: {augment: {scale: [0.8, big]}}\n") == (
        "params.yaml: train.augment.scale[1] = 'big' must be a number.")
    assert _error(tmp_path, "instance: {class_weights: [1, 5]}\n") == (
        "params.yaml: instance.class_weights = [1, 5] must have at least 3 item(s).")
    assert _error(tmp_path, "train: 3\n") == "params.yaml: train = 3 must be a mapping (key: value)."
    # several problems: one line each
    lines = _error(tmp_path, "train: {lrr: 1, batch: x}\npredict: {tile: 0}\n").splitlines()
    assert len(lines) == 3 and all(line.startswith("params.yaml: ") for line in lines)
    assert {line.split()[1] for line in lines} == {"train.lrr", "train.batch", "predict.tile"}
    # numbers keep their type; YAML text that is a number (PyYAML reads 1e-3 as text) is read as one
    train = load_params(_write(tmp_path, "train: {lr: 1e-3, max_minutes_per_fold: 8}\n"))["train"]
    assert train["lr"] == 0.001 and train["max_minutes_per_fold"] == 8 and type(train["max_minutes_per_fold"]) is int


def test_file_level_errors(tmp_path):
    assert "profile 'fast' is not defined; choose one of ['cpu', 'paper', 'smoke']" in _error(tmp_path,
                                                                                              "profile: fast\n")
    assert "expected settings" in _error(tmp_path, "- a\n- b\n")
    assert "not valid YAML" in _error(tmp_path, "train: {lr: [\n")
    with pytest.raises(NanosegError, match="settings file not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_command_with_a_bad_params_file_prints_the_problem_without_a_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**SHIPPED, "train": {**SHIPPED["train"], "lrr": 1}}))
    proc = run_cli("data", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("nanoseg: error: params.yaml: train.lrr is not a setting (did you mean "
                                   "train.lr?); fix or remove it.")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_sections_checked_alone_get_the_defaults():
    from nanoseg.model.targets import instance_settings
    from nanoseg.pipeline.stages.publish import RULE, rule_from

    assert instance_settings({"model": {"variant": "instance"}}) == SHIPPED["instance"]
    assert instance_settings({"instance": {"head": "fg_distance"}})["head"] == "fg_distance"
    with pytest.raises(NanosegError, match=r"^params.yaml: instance.head = 'unet3' must be one of"):
        instance_settings({"instance": {"head": "unet3"}})
    assert RULE == SHIPPED["publish"] and rule_from({}) == RULE


def test_a_model_without_settings_of_its_own_gets_the_params_defaults():
    from nanoseg.inference.loading import resolve_settings
    from nanoseg.postprocess.decode import DEFAULT_POST

    settings = resolve_settings({})
    predict, post = SHIPPED["predict"], SHIPPED["postprocess"]
    assert {k: settings[k] for k in predict} == predict
    assert settings["postprocess"] == DEFAULT_POST
    assert {k: DEFAULT_POST[k] for k in ("opening_radius", "min_area_nm2")} == {
        k: post[k] for k in ("opening_radius", "min_area_nm2")}
    carried = resolve_settings({"tile": 256, "threshold": 0.4, "postprocess": {"split": True}})
    assert carried["tile"] == 256 and carried["threshold"] == 0.4 and carried["postprocess"]["split"] is True
    assert carried["tta"] is False
    # a model tuned on TTA maps (predict.tta) runs with TTA unless the user says --no-tta
    assert resolve_settings({"tta": True})["tta"] is True
    assert resolve_settings({"tta": True}, {"tta": False})["tta"] is False
    assert resolve_settings({"tta": True}, {"tta": None})["tta"] is True


def test_the_pruner_settings_are_optunas():
    import optuna

    from nanoseg.pipeline import tuning

    kinds = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "hyperband": optuna.pruners.HyperbandPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    assert set(typing.get_args(PrunerSettings.model_fields["name"].annotation)) == set(kinds)
    arguments = set().union(*(inspect.signature(c).parameters for c in kinds.values()))
    assert set(PrunerSettings.model_fields) - {"name"} == arguments
    assert isinstance(tuning.make_pruner(None), optuna.pruners.MedianPruner)
