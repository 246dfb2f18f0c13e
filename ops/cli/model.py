"""Model versions: list, pin, unpin, roll back."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.errors import ConfigError
from rowcast.core.settings import Settings
from rowcast.ops.cli.common import connect, model_app


@model_app.command("versions")
def model_versions(
    name: str,
    limit: Annotated[int, typer.Option(help="Newest versions to show.")] = 20,
) -> None:
    """A deployment's model versions, newest first, with samples and online metrics."""
    from rowcast.connectors import operations, registry, versions

    with connect(Settings()) as conn:
        rows = versions.history(conn, name, limit)
        pin = versions.pinned(conn, name)
        happened: dict[int, list[str]] = {}
        for _d, version, kind, challenger, *_rest in operations.recent_events(conn, name, 200):
            if version is not None and kind in ("drift", "promoted"):
                happened.setdefault(version, []).append(
                    "drift detected" if kind == "drift" else f"promoted {challenger}")
        known = bool(rows) or registry.deployment_exists(conn, name)
    if not known:
        raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")
    if not rows:
        raise ConfigError(f"{name!r} has no model versions yet (is `rowcast learner` running "
                          "and have labels arrived?)")
    typer.echo(f"{'version':>7}  {'samples':>9}  {'created':<26} metrics")
    for ck in rows:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in ck.metrics.get("progressive", {}).items())
        flags = [f for f, on in (("pinned", ck.version == pin), (ck.note or "", bool(ck.note)))
                 if on] + happened.get(ck.version, [])
        typer.echo(f"{ck.version:>7}  {ck.samples:>9}  {ck.created_at:%Y-%m-%d %H:%M:%S%z}  "
                   f"{shown}{'  [' + '; '.join(flags) + ']' if flags else ''}")


@model_app.command("pin")
def model_pin(name: str, version: int) -> None:
    """Score with VERSION on every worker while the learner keeps learning."""
    from rowcast.connectors import versions
    from rowcast.connectors.model_topic import publish_pin
    from rowcast.core.model_record import ModelRecord
    from rowcast.models.snapshot import load_snapshot, signing_key

    settings = Settings()
    key = signing_key(settings)
    with connect(settings) as conn, conn.transaction():
        ck = versions.set_pin(conn, name, version)
        load_snapshot(ck.snapshot, key)  # a tampered row is refused here, not on every worker
        record = ModelRecord(name, ck.generation, ck.version, ck.samples, ck.snapshot, pin=True)
        publish_pin(settings, name, record, key)  # before the commit: a failed publish leaves no pin
    typer.echo(f"{name} pinned to version {version}; `rowcast model unpin {name}` follows the "
               "learner again")


@model_app.command("unpin")
def model_unpin(name: str) -> None:
    """Serve the learner's newest version again."""
    from rowcast.connectors import versions
    from rowcast.connectors.model_topic import publish_pin

    settings = Settings()
    with connect(settings) as conn, conn.transaction():
        versions.set_pin(conn, name, None)
        publish_pin(settings, name, None, b"")
    typer.echo(f"{name} follows the learner's newest version")


@model_app.command("rollback")
def model_rollback(name: str, version: int) -> None:
    """Continue learning from VERSION's model and metrics (as a new version); 0 is the fresh
    model, before any label."""
    from rowcast.connectors import registry, versions

    with connect(Settings()) as conn:
        if not registry.deployment_exists(conn, name):
            raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")
        ck = versions.request_rollback(conn, name, version)
    if ck is None:
        typer.echo(f"{name}: the learner starts again from a fresh model (version 0, no label "
                   "learned yet) at its next checkpoint, as a new version")
    else:
        typer.echo(f"{name}: the learner continues from version {version} ({ck.samples} "
                   "samples) at its next checkpoint, as a new version")
