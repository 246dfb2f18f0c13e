"""Model operations: challengers in shadow, promotion, drift settings, model events, compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import typer

from rowcast.core.errors import ConfigError
from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, connect, model_app

challenger_app = typer.Typer(no_args_is_help=True,
                             help="Challengers: models learning in shadow beside a deployment.")
app.add_typer(challenger_app, name="challenger")


def _sql(call: Callable[[psycopg.Connection], Any]) -> Any:
    """Run one of rowcast's SQL functions; its refusals are one-line errors."""
    try:
        with connect(Settings()) as conn:
            return call(conn)
    except (psycopg.errors.NoDataFound, psycopg.errors.InvalidParameterValue,
            psycopg.errors.CheckViolation, psycopg.errors.UndefinedFunction) as exc:
        raise ConfigError(exc.diag.message_primary or str(exc).splitlines()[0]) from None


@challenger_app.command("add")
def challenger_add(
    name: str,
    challenger: str,
    model: Annotated[str, typer.Option(help="Catalog model name (same task as the champion).")],
    auto_promote: Annotated[bool, typer.Option(
        help="Promote it when it beats the champion on the recent window (paired z-test, "
             "margin, minimum labels).")] = False,
    shadow_predictions: Annotated[bool, typer.Option(
        help="Keep its prediction of each labelled row in rowcast.shadow_predictions.")] = False,
) -> None:
    """Attach CHALLENGER to NAME: it learns the champion's labels in the same order, shadow only."""
    _sql(lambda conn: conn.execute("SELECT rowcast.add_challenger(%s, %s, %s, %s, %s)",
                                   (name, challenger, model, auto_promote, shadow_predictions)))
    typer.echo(f"{name}: challenger {challenger} ({model}) learns from the next label on; "
               f"compare with `rowcast model compare {name}`")


@challenger_app.command("remove")
def challenger_remove(name: str, challenger: str) -> None:
    """Detach a challenger (its events stay in rowcast.model_events)."""
    gone = _sql(lambda conn: conn.execute("SELECT rowcast.remove_challenger(%s, %s)",
                                          (name, challenger)).fetchone()[0])
    if not gone:
        raise ConfigError(f"{name!r} has no challenger named {challenger!r}")
    typer.echo(f"{name}: challenger {challenger} removed")


@model_app.command("promote")
def model_promote(name: str, challenger: str) -> None:
    """Make CHALLENGER the champion at the learner's next version (the champion stays as a
    challenger named ``champion-v<version>``: promoting it back is a rollback)."""
    _sql(lambda conn: conn.execute("SELECT rowcast.promote(%s, %s)", (name, challenger)))
    typer.echo(f"{name}: {challenger} becomes the champion at the learner's next checkpoint; "
               f"every scorer switches at that version")


@model_app.command("drift")
def model_drift(
    name: str,
    detector: Annotated[str, typer.Option(help="adwin, page_hinkley, kswin or none.")] = "adwin",
    on_drift: Annotated[str, typer.Option(
        help="none, or retrain: a fresh model learns from the drift point in shadow and "
             "replaces the champion once it is better.")] = "none",
) -> None:
    """Choose NAME's drift detector and its reaction."""
    _sql(lambda conn: conn.execute("SELECT rowcast.set_drift(%s, %s, %s)",
                                   (name, detector, on_drift)))
    typer.echo(f"{name}: drift detector {detector}, on drift: {on_drift}")


@model_app.command("events")
def model_events(name: str, limit: Annotated[int, typer.Option()] = 20) -> None:
    """Drift detections, challengers added and removed, promotions: newest first."""
    from rowcast.connectors import operations

    rows = _sql(lambda conn: operations.recent_events(conn, name, limit))
    if not rows:
        typer.echo(f"{name}: no model events yet")
        return
    for _d, version, kind, challenger, at_label, detail, created in rows:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in detail.items() if not isinstance(v, dict | list))
        typer.echo(f"{created:%Y-%m-%d %H:%M:%S%z}  v{version}  {kind:<18} "
                   f"{challenger or '':<16} label {at_label}  {shown}")


@model_app.command("compare")
def model_compare(name: str) -> None:
    """Champion and challengers side by side: over the whole stream and the recent window."""
    from rowcast.connectors import versions

    rows = _sql(lambda conn: versions.history(conn, name, 1))
    if not rows:
        raise ConfigError(f"{name!r} has no model versions yet")
    latest = rows[0]
    challengers = latest.metrics.get("challengers") or {}
    champion = latest.metrics.get("progressive", {})
    names = list(champion)
    typer.echo(f"{name} at version {latest.version} ({latest.samples} labels)")
    typer.echo(f"{'model':<24} {'labels':>8}  " + "  ".join(f"{n:>10}" for n in names)
               + f"  {'recent loss':>11}  {'z':>6}  verdict")
    typer.echo(f"{'champion (' + latest.model + ')':<24} {latest.samples:>8}  "
               + "  ".join(f"{champion[n]:>10.4g}" for n in names))
    for cname, c in sorted(challengers.items()):
        recent = c.get("recent", {})
        verdict = ("beats the champion" if recent.get("wins") else
                   f"needs {max(0, 500 - recent.get('n', 0))} more rows" if recent.get("n", 0) < 500
                   else "not better")
        typer.echo(f"{cname + ' (' + c['model'] + ')':<24} {c['labels']:>8}  "
                   + "  ".join(f"{c['progressive'].get(n, float('nan')):>10.4g}" for n in names)
                   + f"  {recent.get('challenger_loss', float('nan')):>11.4g}  "
                   f"{recent.get('z', 0.0):>6.2f}  {verdict}")
    if not challengers:
        typer.echo(f"no challengers: `rowcast challenger add {name} NAME --model MODEL`")
