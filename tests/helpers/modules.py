"""rowcast's modules and layers, found by walking the installed package (for the layer and
doctest checks)."""

from __future__ import annotations

import importlib
import pkgutil

import rowcast

LAYERS = ("rowcast.core", "rowcast.models", "rowcast.connectors", "rowcast.streams", "rowcast.ops")
BARE_FOLDER_NAMES = ("connectors", "models", "streams", "core", "ops")  # the folders' bare names


def layer_of(module: str) -> int | None:
    """0 for the root package (the name and version only), 1.. for the layers, None outside."""
    if module == "rowcast":
        return 0
    for rank, prefix in enumerate(LAYERS, start=1):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def all_modules() -> list[str]:
    names = ["rowcast"]
    for info in pkgutil.walk_packages(rowcast.__path__, "rowcast."):
        names.append(info.name)
    for layer in LAYERS:  # the layers live in folders of their own (package-dir mapping)
        pkg = importlib.import_module(layer)
        names.append(layer)
        names += [i.name for i in pkgutil.walk_packages(pkg.__path__, layer + ".")]
    return sorted(n for n in set(names) if not n.endswith(".__main__"))


HEAVY = ("faust", "river", "scipy", "numpy", "aiokafka", "kafka", "confluent_kafka", "psycopg2")


def heavy_modules_after(imports: str) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter has loaded after ``import <imports>``
    (each costs a process tens of MB of RSS: issue 15)."""
    import subprocess
    import sys

    code = f"import sys\nimport {imports}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]
