"""The layering drawn in docs/architecture.md, checked against the code: every import of a nanoseg module
(top-level, inside a function, or by name through ``importlib.import_module``) goes to a lower layer or stays
inside its own unit, so there are no upward imports and no import cycles between units."""

from pathlib import Path

import nanoseg
from nanoseg.codehash import imports

ROOT = Path(nanoseg.__file__).resolve().parent

# unit -> layer, as drawn in docs/architecture.md (a unit is a subpackage or a top-level module)
LAYERS = {
    "errors": 0, "atomic": 0, "codehash": 0, "machine": 0,
    "config": 1, "storage": 1, "processes": 1,
    "model_store": 2, "io": 2, "measure": 2,
    "data": 3, "model": 3, "postprocess": 3,
    "inference": 4,
    "evaluation": 5,
    "report": 6,
    "serving": 7,
    "tracking": 8,
    "pipeline": 9, "app": 9, "served_model": 9, "pyfunc": 9,
    "cli": 10,
    "__main__": 11, "__init__": 11,
}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def edges():
    """(importer, imported) for every import between two units."""
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("nanoseg",) + path.relative_to(ROOT).with_suffix("").parts)
        for target in imports(path, by_name=True):
            if unit(target) != unit(module):
                yield module, target


def test_every_unit_has_a_layer():
    units = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert units == set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS (and docs/architecture.md); " \
                                 f"drop {sorted(set(LAYERS) - units)}"


def test_no_upward_imports():
    upward = [f"{a} -> {b}" for a, b in edges() if unit(a) != unit(b) and LAYERS[unit(b)] >= LAYERS[unit(a)]
              and unit(b) != "__init__"]
    assert not upward, "imports that do not go to a lower layer:\n" + "\n".join(sorted(upward))
