"""What ``pip install .`` puts into site-packages: one top-level package, ``rowcast``, with every
layer and its package data, so nothing rowcast installs can shadow a user's ``models.py``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    # build from a copy of what git would hand a user: setuptools writes build/ into the tree
    for name in ("pyproject.toml", "README.md", "rowcast", "core", "models", "connectors",
                 "streams", "ops"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("rowcast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_installs_only_the_rowcast_package(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"rowcast"}


def test_every_layer_and_the_sql_files_are_in_the_wheel(wheel_names):
    for path in ("rowcast/core/settings.py", "rowcast/models/learning.py",
                 "rowcast/connectors/cdc_source.py", "rowcast/connectors/sql/deploy.sql",
                 "rowcast/streams/worker.py", "rowcast/ops/cli/__init__.py",
                 "rowcast/ops/devstack/kafka.py", "rowcast/__main__.py"):
        assert path in wheel_names, path
    sources = {p.relative_to(ROOT).as_posix() for folder in ("core", "models", "connectors",
                                                            "streams", "ops")
               for p in (ROOT / folder).rglob("*.py")}
    assert len([n for n in wheel_names if n.endswith(".py")]) >= len(sources)
