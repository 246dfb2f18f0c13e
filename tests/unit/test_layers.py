"""Layers point one way: a module imports only its own layer and the layers below it.

The rule is read from the code, not kept as a hand list of modules: every module of the
installed ``rowcast`` package is found by walking the package, its imports (those inside
functions too) are parsed, and each one that lands in a higher layer fails the test, naming
both ends. The layers, bottom up, are documented in ``rowcast/__init__.py``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from tests.helpers.modules import BARE_FOLDER_NAMES, LAYERS, all_modules, layer_of


def imports_in(module: str, source: str, is_pkg: bool = False) -> list[tuple[int, str]]:
    """Every module ``source`` imports, as (line, dotted name), relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, target))
            if target == "rowcast":  # from rowcast import core: the layer is the name imported
                found += [(node.lineno, f"rowcast.{a.name}") for a in node.names]
    return found


def imports_of(module: str) -> list[tuple[int, str]]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    return imports_in(module, Path(spec.origin).read_text(),
                      spec.submodule_search_locations is not None)


def upward(module: str, imports: list[tuple[int, str]]) -> list[str]:
    own = layer_of(module)
    found = []
    for line, target in imports:
        theirs = layer_of(target)
        if theirs is not None and own is not None and theirs > own:
            found.append(f"{module}:{line} imports {target} "
                         f"({LAYERS[own - 1] if own else 'rowcast'} is below {LAYERS[theirs - 1]})")
    return found


def test_every_module_is_found():
    modules = all_modules()
    for expected in ("rowcast.core.settings", "rowcast.models.learning",
                     "rowcast.connectors.cdc_source", "rowcast.streams.worker", "rowcast.ops.cli"):
        assert expected in modules


def test_no_module_imports_a_layer_above_its_own():
    found = [u for module in all_modules() for u in upward(module, imports_of(module))]
    assert not found, "imports that run up a layer:\n" + "\n".join(found)


def test_nothing_is_imported_under_a_bare_folder_name():
    """``models``, ``connectors``... are folders, not import names: a user's own ``models.py``
    must never shadow or be shadowed by rowcast."""
    bare = [f"{m}:{line} imports {t}" for m in all_modules() for line, t in imports_of(m)
            if t.split(".")[0] in BARE_FOLDER_NAMES]
    assert not bare, "\n".join(bare)
    assert not any(name in sys.modules for name in BARE_FOLDER_NAMES)


def test_the_checker_sees_an_upward_import():
    """The check itself can fail: upward imports written any way are caught, downward ones not."""
    source = ("from rowcast.core.settings import Settings\n"
              "from rowcast import ops\n"
              "def f():\n    from ..streams import worker\n"
              "import rowcast.connectors.slot\n")
    found = upward("rowcast.models.features", imports_in("rowcast.models.features", source))
    assert sorted(f.split(" imports ")[1].split(" ")[0] for f in found) == [
        "rowcast.connectors.slot", "rowcast.ops", "rowcast.streams"]
