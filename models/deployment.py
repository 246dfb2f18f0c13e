"""What a deployment is: a model watching one table, learning one target from some columns.

Feature kinds are fixed when the deployment is created (from the column's Postgres type), because
the change events carry Debezium's JSON encoding, where a numeric column and a text column can both
arrive as strings; the kind tells the feature builder which one it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from rowcast.core.errors import ConfigError

FeatureKind = Literal["number", "category", "boolean", "timestamp"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Feature:
    """One input column and how its value becomes a model feature."""

    name: str
    kind: FeatureKind


@dataclass(frozen=True)
class LabelSource:
    """A separate table whose rows carry labels: ``column`` holds the label of the scored row
    whose primary key equals ``key`` (``--labels-table T --labels-key K``). A deployment with
    one learns from it alone: the scored row's own target column is then not read."""

    schema: str
    table: str
    key: str
    column: str


@dataclass(frozen=True)
class Deployment:
    """A model deployed on ``schema.table``, predicting ``target`` from ``features``.

    >>> d = Deployment("spend", "public", "customers", "amount", (Feature("age", "number"),),
    ...                "linear_regression", ("id",))
    >>> d.qualified_table
    'public.customers'
    """

    name: str
    schema: str
    table: str
    target: str
    features: tuple[Feature, ...]
    model: str
    key_columns: tuple[str, ...]
    target_kind: FeatureKind = "number"
    version: int = field(default=1, compare=False)
    labels: LabelSource | None = None
    created_us: int = field(default=0, compare=False)
    # when this definition (this version) was made, µs since epoch on the server's clock; None
    # when unknown (a definition built in code): see :meth:`rows_have_columns_at`
    defined_us: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"deployment name {self.name!r} must be lower-case letters, digits and _, "
                "starting with a letter (it names topics and views)"
            )
        if not self.features:
            raise ConfigError(f"deployment {self.name!r} needs at least one feature column")
        names = [f.name for f in self.features]
        if self.target in names:
            raise ConfigError(
                f"target {self.target!r} is also listed as a feature of {self.name!r}: "
                "a model that sees its answer learns nothing"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"deployment {self.name!r} lists a feature twice: {names}")
        if not self.key_columns:
            raise ConfigError(f"table {self.qualified_table} has no primary key")

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def rows_have_columns_at(self, commit_us: int | None) -> bool:
        """Whether a row committed at ``commit_us`` must have every column this definition
        names. ``rowcast.deploy`` checked they existed when it was made, so a row committed
        since that lacks one (absent, not NULL) comes from a table whose column was renamed or
        dropped, and scoring it without the column would be a silent error. An older row may
        lack a column added since (it reads as NULL); so may any row when the time is unknown.

        >>> d = Deployment("spend", "public", "c", "y", (Feature("x", "number"),),
        ...                "linear_regression", ("id",), defined_us=1_000)
        >>> d.rows_have_columns_at(1_000), d.rows_have_columns_at(999), d.rows_have_columns_at(None)
        (True, False, False)
        """
        return self.defined_us is not None and commit_us is not None \
            and commit_us >= self.defined_us

    @cached_property  # read for every scored row (a frozen dataclass keeps it in __dict__)
    def generation(self) -> str:
        """Which incarnation of the name this is: a redeploy (new version) or an undeploy and
        deploy again (new creation time) starts a new model, and old label events are ignored."""
        return f"{self.created_us}.{self.version}"
