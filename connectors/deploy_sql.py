"""``rowcast.deploy(...)`` and ``rowcast.undeploy(...)``: deployments as one SQL call.

The PL/pgSQL lives in ``sql/*.sql`` beside this module (package data), where it reads and diffs
as SQL; this module loads it. The CLI calls the same function, so a deployment made with
``SELECT rowcast.deploy(...)`` and one made with ``rowcast deploy`` are checked by the same code
(see ``sql/deploy.sql`` for what it checks; refusals use SQLSTATE ``RC001``).

>>> "CREATE OR REPLACE FUNCTION rowcast.deploy(" in sql_file("deploy.sql")
True
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def sql_file(name: str) -> str:
    """The text of ``sql/<name>``, shipped inside the package."""
    return files("rowcast.connectors").joinpath("sql", name).read_text(encoding="utf-8")
