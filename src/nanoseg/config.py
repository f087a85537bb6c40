"""Settings from ``params.yaml``, typed and checked, with the selected profile applied.

``params.yaml`` is the single source of settings; the models below are the one
home of their defaults (``tests/test_config.py`` holds the two equal: an empty
params file gives exactly the shipped values). Every section is a pydantic model
that refuses unknown keys, so a misspelt setting is an error naming the key,
never silently ignored. The top-level ``profile`` key names one of
``profiles:``; that profile's values are merged over the base values (profile
wins), and every profile is checked the same way. Everything else reads settings
through :func:`load_params`, which returns plain dicts (``params["train"]["lr"]``).

Code that needs a default outside a params file (a model that carries no
setting of its own, a library call, a test) takes it from these models, e.g.
``PredictSettings().tile`` or :data:`CHOSEN`.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from nanoseg.errors import NanosegError

# Numbers keep the type written in the file (8 stays 8, 8.0 stays 8.0), so the settings logged to MLflow
# and hashed into the cross-validation key are what params.yaml says.
Number = int | float
Positive = Annotated[int, Field(gt=0)] | Annotated[float, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0)]
Fraction = Annotated[int, Field(ge=0, le=1)] | Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Range = Annotated[list[Number], Field(min_length=2, max_length=2)]


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Overrides(Section):
    """A section whose dump holds only the keys given and those with a default other than None."""

    @model_serializer(mode="wrap")
    def _given_only(self, handler):
        data = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if k in self.model_fields_set or fields[k].default is not None}


# ----------------------------------------------------------------------------------------------- sections


class DataSettings(Section):
    """``data:`` where the dataset is and how its files are named."""

    source: str = "../shared/datasets/bam-tio2"
    dir: str = "data"
    images: str = "Electron Microscopy Images/SEM"
    masks: str = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected"
    class_masks: str = "Electron Microscopy Image Masks/TiO2_Masks_Manual_4connected_2Classes"
    mask_suffix: str = "_m"
    class_mask_suffix: str = "_cm"
    databar_row: Literal["auto"] | NonNegativeInt = "auto"
    pixel_size_nm: Positive | None = None
    crop_multiple: PositiveInt = 32


class PrepareSettings(Section):
    """``prepare:`` the test split and the cross-validation folds."""

    seed: int = 42
    test_fraction: Annotated[int, Field(ge=0, lt=1)] | Annotated[float, Field(ge=0, lt=1)] = 0.15
    folds: Annotated[int, Field(ge=2)] = 5


class ValidateSettings(Section):
    """``validate:`` the data checks (great-expectations)."""

    foreground_fraction: Range = [0.01, 0.6]
    pixel_size_nm: Range = [0.05, 500.0]
    min_images: PositiveInt = 2


class ModelSettings(Section):
    """``model:`` the network."""

    variant: Literal["instance", "paper"] = "instance"
    weights: str | None = "../shared/weights/resnet50_imagenet_notop.weights.h5"
    decoder_filters: Annotated[list[PositiveInt], Field(min_length=5, max_length=5)] = [256, 128, 64, 32, 16]


class AugmentSettings(Section):
    """``train.augment:`` random crops' augmentation."""

    flips: bool = True
    rot90: bool = True
    brightness: NonNegative = 0.1
    contrast: NonNegative = 0.1
    scale: Annotated[list[Positive], Field(min_length=2, max_length=2)] | None = None
    scale_p: Fraction = 0.5
    invert: Fraction = 0.0
    lowres: Annotated[float, Field(ge=1)] | None = None
    lowres_p: Fraction = 0.5


class TrainSettings(Section):
    """``train:`` how a model trains and what ``train`` makes for publishing."""

    optimizer: Literal["adam"] = "adam"
    lr: Positive = 1.0e-3
    batch: PositiveInt = 4
    loss: Literal["dice"] = "dice"
    epochs: PositiveInt = 200
    patience: NonNegativeInt = 10
    crop: PositiveInt = 256
    steps_per_epoch: PositiveInt | None = 25
    val_every: PositiveInt = 1
    mixed_bf16: Literal["auto", True, False] = "auto"
    freeze_encoder: bool = True
    seed: int = 7
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    lr_final_factor: Annotated[float, Field(gt=0, le=0.1)] = 0.05
    max_minutes_per_fold: Positive | None = 8
    final_max_minutes: Positive | None = 12
    warn_below_steps: PositiveInt | None = 300
    candidate: Literal["ensemble", "best_fold", "final"] = "ensemble"
    final_val_fold: int = -1


class InstanceSettings(Section):
    """``instance:`` the instance variant's head, loss and decoder grids."""

    head: Literal["classes3", "fg_distance", "classes3_hv"] = "classes3"
    loss: Literal["wcce_dice", "border_wcce_dice"] = "wcce_dice"
    class_weights: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=3, max_length=3)] = [1.0, 1.0, 5.0]
    border_w0: NonNegative = 10.0
    border_sigma: Positive = 5.0
    distance_weight: NonNegative = 1.0
    hv_weight: NonNegative = 1.0
    marker_grid: Annotated[list[Fraction], Field(min_length=1)] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    min_marker_grid: Annotated[list[NonNegativeInt], Field(min_length=1)] = [0, 5, 15, 30]


class PredictSettings(Section):
    """``predict:`` overlap-tile inference (a trained model carries tile, overlap and threshold of its own)."""

    tile: PositiveInt = 512
    overlap: NonNegativeInt = 64
    batch: PositiveInt = 4
    threshold: Fraction = 0.5
    tta: bool = False


class PostprocessSettings(Section):
    """``postprocess:`` mask clean-up; the seed distance is chosen from ``min_distance_grid`` on the CV folds."""

    opening_radius: NonNegativeInt = 1
    min_area_nm2: NonNegative = 200.0
    min_distance_grid: Annotated[list[PositiveInt], Field(min_length=1)] = [3, 5, 7, 9, 12]


class PrunerSettings(Overrides):
    """``tune.pruner:`` an Optuna pruner and its arguments (those of other pruners are ignored).

    The fields are the union of the arguments of the pruners ``name`` picks from
    (``tests/test_config.py`` checks them against Optuna's signatures).
    """

    name: Literal["median", "percentile", "hyperband", "successive_halving", "threshold", "none"] = "median"
    n_startup_trials: NonNegativeInt | None = None
    n_warmup_steps: NonNegativeInt | None = None
    interval_steps: PositiveInt | None = None
    n_min_trials: PositiveInt | None = None
    percentile: Number | None = None
    min_resource: PositiveInt | Literal["auto"] | None = None
    max_resource: PositiveInt | Literal["auto"] | None = None
    reduction_factor: PositiveInt | None = None
    min_early_stopping_rate: NonNegativeInt | None = None
    bootstrap_count: NonNegativeInt | None = None
    lower: Number | None = None
    upper: Number | None = None


def _overrides_of(model: type[Section], name: str) -> type[Overrides]:
    """An :class:`Overrides` model with ``model``'s fields, each optional (given keys only)."""
    from pydantic import create_model

    fields = {k: (f.annotation | None, None) for k, f in model.model_fields.items()}
    return create_model(name, __base__=Overrides, __doc__=f"Overrides of {model.__name__}'s settings.", **fields)


TrainOverrides = _overrides_of(TrainSettings, "TrainOverrides")


class TuneSettings(Section):
    """``tune:`` the Optuna study of ``nanoseg tune`` (learning rate and batch size)."""

    study: str = "nanoseg-lr-batch"
    storage: str = "tune/optuna.db"
    n_trials: PositiveInt = 8
    folds: PositiveInt | list[NonNegativeInt] | None = 2
    lr: Annotated[list[Positive], Field(min_length=2, max_length=2)] = [1.0e-5, 1.0e-3]
    batch: Annotated[list[PositiveInt], Field(min_length=1)] = [2, 4, 8]
    seed: int = 0
    pruner: PrunerSettings = Field(
        default_factory=lambda: PrunerSettings(n_startup_trials=2, n_warmup_steps=3))
    train: TrainOverrides = Field(
        default_factory=lambda: TrainOverrides(epochs=15, patience=5, max_minutes_per_fold=3))


class PublishSettings(Section):
    """``publish:`` the gate that decides whether a candidate becomes ``@champion``."""

    rank_by: str = "f1_50_clean"
    gate_metrics: list[str] = ["dice", "f1_50_clean"]
    tolerance_std: NonNegative = 2.0
    tolerance_min: NonNegative = 0.03
    champion_margin: Number = 0.0
    profiles: list[str] = ["cpu", "paper"]
    replace_incomparable: bool = False


#: The shipped profiles (``profiles:`` of params.yaml): overrides merged over the base settings.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"train": {"lr": 1.0e-4, "epochs": 200, "patience": 20, "steps_per_epoch": None,
                        "max_minutes_per_fold": None, "final_max_minutes": None, "crop": 512,
                        "freeze_encoder": False}},
    "cpu": {},
    "smoke": {
        "model": {"weights": None, "decoder_filters": [16, 16, 8, 8, 8]},
        "prepare": {"folds": 2},
        "train": {"epochs": 2, "patience": 1, "crop": 64, "batch": 2, "steps_per_epoch": 2,
                  "max_minutes_per_fold": 2, "final_max_minutes": 2},
        "predict": {"tile": 256, "overlap": 32, "batch": 2},
        "postprocess": {"min_distance_grid": [5]},
        "instance": {"marker_grid": [0.5], "min_marker_grid": [0]},
        "tune": {"n_trials": 2, "folds": 1, "batch": [2], "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
                 "train": {"epochs": 2, "max_minutes_per_fold": 1}},
    },
}


class Params(Section):
    """All of params.yaml (``profiles`` are checked by :func:`load_params`, merged over the rest)."""

    profile: str = "cpu"
    data: DataSettings = Field(default_factory=DataSettings)
    prepare: PrepareSettings = Field(default_factory=PrepareSettings)
    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    instance: InstanceSettings = Field(default_factory=InstanceSettings)
    predict: PredictSettings = Field(default_factory=PredictSettings)
    postprocess: PostprocessSettings = Field(default_factory=PostprocessSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(PROFILES))

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              protected_namespaces=())


class Chosen(Section):
    """Post-processing chosen on the CV validation folds (not params.yaml settings): every trained model carries
    its own; these are what a model that carries none, or a library call given none, uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: bool = False
    min_distance_px: PositiveInt = 5
    marker_threshold: Fraction = 0.5
    min_marker_px: NonNegativeInt = 0


#: The defaults of the values a model carries from its cross-validation (see :class:`Chosen`).
CHOSEN = Chosen()

def defaults() -> Params:
    """The settings an empty params.yaml gives: the shipped values (``defaults().predict.tile``)."""
    return Params()


# ------------------------------------------------------------------------------------------------ errors

_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "text", "str": "text",
          "list": "a list", "dict": "a mapping (key: value)", "model": "a mapping (key: value)"}
_LIMITS = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
           "less_than_equal": "at most"}


def _where(loc, data) -> tuple[list, Any]:
    """The part of a pydantic error location that names settings (union member tags dropped) and the
    value found there (None for a key that is missing or unknown)."""
    path, value = [], data
    for part in loc:
        if isinstance(value, dict):
            path.append(part)
            if part not in value:
                return path, None
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            path.append(part)
            value = value[part]
        else:
            break
    return path, value


def _dotted(path) -> str:
    """``["train", "augment", "scale", 0]`` -> ``train.augment.scale[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: dict) -> str:
    """What a value must be, from one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        options = str(ctx.get("expected", "")).replace(" or ", ", ").replace("True", "true").replace("False", "false")
        return f"must be one of {options}" if ", " in options else f"must be {options}"
    if kind in _LIMITS:
        limit = next(iter(ctx.values()), "")
        return f"must be {_LIMITS[kind]} {limit:g}" if isinstance(limit, (int, float)) else \
            f"must be {_LIMITS[kind]} {limit}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "int_from_float":
        return "must be a whole number"
    base = kind.split("_")[0]
    if base in _KINDS and kind.endswith(("_type", "_parsing")):
        return f"must be {_KINDS[base]}"
    if kind == "none_required":
        return "must be null"
    return "is wrong: " + err["msg"][:1].lower() + err["msg"][1:]


def _unknown(path: list, schema: type[BaseModel], shown_prefix: list) -> str:
    """``path`` is not a setting, with the nearest known key when one is close."""
    model: Any = schema
    for part in path[:-1]:
        field = next((f for k, f in getattr(model, "model_fields", {}).items() if (f.alias or k) == part), None)
        model = field.annotation if field else None
        if model is not None and not isinstance(model, type):  # Optional[...] and the like
            model = next((a for a in getattr(model, "__args__", ()) if isinstance(a, type)
                          and issubclass(a, BaseModel)), None)
    known = [f.alias or k for k, f in model.model_fields.items()] \
        if isinstance(model, type) and issubclass(model, BaseModel) else []
    close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"is not a setting (did you mean {_dotted([*shown_prefix, *path[:-1], close[0]])}?)"
    section = _dotted([*shown_prefix, *path[:-1]])
    if known:
        return f"is not a setting{f' of {section}' if section else ''} (known: {', '.join(known)})"
    return "is not a setting"


def problems(exc: ValidationError, data: dict, schema: type[BaseModel], prefix=None) -> list[str]:
    """The problems of ``exc`` (raised validating ``data`` with ``schema``), one line per key, naming the
    dotted key, the value and what it must be (or what to do).

    ``prefix``: a list put before every key (the section checked), or a function ``path -> list`` (the
    profile a bad key comes from)."""
    owner = prefix if callable(prefix) else (lambda path: list(prefix or []))
    by_path: dict[tuple, dict] = {}
    for err in exc.errors():
        path, value = _where(err["loc"], data)
        shown_prefix = owner(path)
        if err["type"] == "extra_forbidden":
            text, action = _unknown(path, schema, shown_prefix), "fix or remove it"
        elif err["type"] == "missing":
            text, action = "is missing", "add it"
        else:
            text, action = _describe(err), None
        entry = by_path.setdefault(tuple(path), {"value": value, "texts": {}, "action": action,
                                                 "prefix": shown_prefix})
        member = str(err["loc"][len(path)]) if len(err["loc"]) > len(path) else ""  # union member, e.g. "int"
        entry["texts"].setdefault(text, member)
    lines = []
    for path, entry in by_path.items():
        texts = list(entry["texts"])
        if any("float" in m for m in entry["texts"].values()):  # a number: what the integer member says is moot
            texts = [t for t, m in entry["texts"].items() if "int" not in m] or texts
        what = " or ".join([texts[0]] + [t.removeprefix("must be ") for t in texts[1:]])
        key = _dotted([*entry["prefix"], *path]) or "the file"
        if entry["action"]:
            lines.append(f"{key} {what}; {entry['action']}.")
        else:
            value = entry["value"]
            shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() \
                if isinstance(value, (dict, list)) else repr(value)
            lines.append(f"{key} = {shown} {what}.")
    return lines


def check(schema: type[Section], values: dict | None, key: str, where: str = "params.yaml") -> dict:
    """``values`` of the section ``key`` (e.g. ``"instance"``; possibly partial) checked with ``schema`` and
    completed with its defaults, as a plain dict.

    Raises
    ------
    NanosegError
        One line per problem, naming ``where`` and the dotted key.
    """
    values = dict(values or {})
    try:
        return schema.model_validate(values).model_dump(by_alias=True)
    except ValidationError as exc:
        lines = problems(exc, values, schema, key.split("."))
        raise NanosegError("\n".join(f"{where}: {line}" for line in lines)) from None


# --------------------------------------------------------------------------------------------- loading


def project_root(start: str | os.PathLike | None = None) -> Path:
    """Return the project root: the nearest folder above ``start`` holding params.yaml.

    A ``dvc exp run --temp`` copy lives under ``<repo>/.dvc/tmp/exps/``; it has its
    own params.yaml, which is the right one for settings (use
    :func:`store_root` for where shared stores such as ``mlruns/`` live).
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def store_root(start: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds the shared stores (``mlruns/``, Optuna db).

    Runs inside a DVC temporary experiment copy (``.dvc/tmp/exps/...``) resolve to
    the original repository, so every run lands in the same MLflow store.
    ``NANOSEG_HOME`` overrides it.
    """
    if os.environ.get("NANOSEG_HOME"):
        return Path(os.environ["NANOSEG_HOME"]).resolve()
    root = project_root(start)
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def merge_params(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _shown(path: Path) -> str:
    """``path`` as the user would write it: relative to the working folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _has(data, path) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def validate(raw: dict, where: str = "params.yaml") -> dict[str, dict]:
    """Check a whole params file: its base settings and every profile merged over them.

    Returns
    -------
    dict
        Profile name -> the merged, checked settings (plain dicts, defaults filled in; no ``profiles``).

    Raises
    ------
    NanosegError
        One line per problem: ``<where>: <dotted.key> ...`` and what to do.
    """
    if not isinstance(raw, dict):
        raise NanosegError(f"{where}: expected settings (key: value mappings), got {type(raw).__name__}; "
                           "fix the file.")
    base = {k: v for k, v in raw.items() if k != "profiles"}
    profiles = copy.deepcopy(raw["profiles"] if "profiles" in raw else PROFILES)
    if profiles is None:
        profiles = {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) or v is None for v in profiles.values()):
        raise NanosegError(f"{where}: profiles must map each profile name to its overrides "
                           "(name: {section: {key: value}}); fix the file.")
    try:  # the base settings complete: a profile overrides them, defaults included
        base = Params.model_validate(base).model_dump(by_alias=True, exclude={"profiles"})
    except ValidationError as exc:
        raise NanosegError("\n".join(f"{where}: {line}" for line in problems(exc, base, Params))) from None
    lines, out = [], {}
    for name, over in profiles.items():
        over = over or {}
        for key in ("profile", "profiles"):
            if key in over:
                lines.append(f"profiles.{name}.{key} cannot be set in a profile; remove it.")
        merged = merge_params(base, over)
        try:
            out[name] = Params.model_validate(merged).model_dump(by_alias=True, exclude={"profiles"})
        except ValidationError as exc:
            lines += problems(exc, merged, Params,
                              lambda path, name=name, over=over: ["profiles", name] if _has(over, path) else [])
    if lines:
        raise NanosegError("\n".join(f"{where}: {line}" for line in dict.fromkeys(lines)))
    return out


def load_params(path: str | os.PathLike | None = None, profile: str | None = None) -> dict[str, Any]:
    """Read ``params.yaml``, check it and apply the selected profile.

    Parameters
    ----------
    path : path-like, optional
        The params file; default ``params.yaml`` in the project root.
    profile : str, optional
        Profile to apply; default the file's ``profile`` key (or ``NANOSEG_PROFILE``).

    Returns
    -------
    dict
        The merged settings, every section complete (defaults of :class:`Params` filled in), as plain
        dicts; ``params["profile"]`` names the applied profile, ``params["_root"]`` the file's folder.

    Raises
    ------
    NanosegError
        The file is missing or not YAML, a key is unknown (misspelt) or a value has the wrong type or
        range (one line per problem, each naming the dotted key), or the profile is not defined.
    """
    path = Path(path) if path else project_root() / "params.yaml"
    where = _shown(path)
    if not path.is_file():
        raise NanosegError(f"{where}: settings file not found; run nanoseg from the project folder.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NanosegError(f"{where}: not valid YAML ({exc}); fix the file.") from None
    raw = {} if raw is None else raw
    checked = validate(raw, where)
    name = profile or os.environ.get("NANOSEG_PROFILE") or raw.get("profile") or Params().profile
    if name not in checked:
        raise NanosegError(f"{where}: profile {name!r} is not defined; choose one of {sorted(checked)}.")
    params = checked[name]
    params["profile"] = name
    params["_root"] = str(path.resolve().parent)
    return params


def resolve(params: dict, relpath: str | os.PathLike) -> Path:
    """Resolve a path from the settings relative to the project root."""
    p = Path(relpath)
    return p if p.is_absolute() else Path(params.get("_root", ".")) / p
