"""Which nanoseg source files a piece of code runs, and a hash of them.

The closure follows every ``import nanoseg...`` / ``from nanoseg... import ...`` in
the package's source, including imports inside functions (nanoseg imports heavy
modules lazily), and the ``__init__.py`` of every package on the way (importing
``nanoseg.io.micrograph`` runs ``nanoseg/io/__init__.py`` first), so it is what
the code can run, not what one call happens to touch. Used for resume keys (a
fold trained by other training code is trained again) and by the test that checks
``dvc.yaml`` deps against the import graph. :func:`imports` also serves the
layering test.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "nanoseg"
ROOT = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``nanoseg.x.y``), or None when it is not a nanoseg module."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(path: Path, by_name: bool = False) -> set[str]:
    """nanoseg modules that ``path`` imports in ``import`` / ``from ... import`` statements (anywhere, also
    inside functions); with ``by_name`` also those named in ``importlib.import_module("nanoseg...")`` calls.

    :func:`closure` leaves the by-name imports out: they load on demand (the command table of
    :mod:`nanoseg.cli`, the compatibility name of :mod:`nanoseg.tracking` for pickled model versions), not on
    the path a stage runs. The layering test (tests/test_layers.py) counts them too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
        elif by_name and isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return {m for m in found if m.split(".")[0] == PACKAGE and m != PACKAGE}


def closure(modules) -> list[Path]:
    """Source files of ``modules`` and of every nanoseg module they import, transitively (sorted)."""
    todo, seen = list(modules), {}
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        todo.extend(imports(path))
        todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))  # packages run first
    return sorted(set(seen.values()))


def code_hash(modules) -> str:
    """A short sha256 of the source files in :func:`closure` (path and content)."""
    h = hashlib.sha256()
    for path in closure(modules):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
