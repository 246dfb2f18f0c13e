"""Deployments: create, list, backfill and remove them."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, connect
from rowcast.ops.cli.common import backfill as emit_rows


@app.command()
def init() -> None:
    """Create rowcast's schema, publication and replication slot (idempotent)."""
    from rowcast.connectors.schema import init_database

    settings = Settings()
    with connect(settings) as conn:
        init_database(conn, settings, replace_modules=True)
    typer.echo("rowcast schema, publication and slot are ready")


@app.command()
def deploy(
    name: str,
    table: Annotated[str, typer.Option(help="Table to score: name or schema.name.")],
    target: Annotated[str, typer.Option(help="Column holding the label to learn.")],
    features: Annotated[str | None, typer.Option(help="Comma-separated feature columns "
                                                 "(default: every usable column).")] = None,
    model: Annotated[str, typer.Option(help="Catalog model name, or module:factory returning "
                                       "a river estimator.")] = "linear_regression",
    labels_table: Annotated[str | None, typer.Option(
        help="Labels arrive later as rows of this table...")] = None,
    labels_key: Annotated[str | None, typer.Option(
        help="...whose column holds the scored row's primary key.")] = None,
    labels_column: Annotated[str | None, typer.Option(
        help="Column of the labels table with the label (default: the target's name).")] = None,
    backfill: Annotated[bool, typer.Option(help="Also score the rows already in the table.")] = True,
    drift_detector: Annotated[str, typer.Option(
        help="Drift detector over the model's per-row loss: adwin, page_hinkley, kswin, none."
    )] = "adwin",
    on_drift: Annotated[str, typer.Option(
        help="none, or retrain: a fresh model learns from the drift point in shadow and "
             "replaces the champion once it is better.")] = "none",
) -> None:
    """Deploy a model on a table: existing rows are scored, then every new row as it lands.

    Labels are learned from the inserted row (score first, then learn), from a later UPDATE
    that sets the target, or from a separate labels table joined by key.
    """
    from rowcast.connectors.kafka_clients import (
        check_kafka,
        cluster_defaults,
        ensure_deployment_topics,
        ensure_topics,
        make_admin,
        thin_durability,
    )
    from rowcast.connectors.registry import create_deployment
    from rowcast.connectors.schema import init_database
    from rowcast.models.catalog import allow_custom_modules, get_model, is_custom
    from rowcast.models.operations import ModelOperations

    ModelOperations("regression", drift_detector, on_drift)  # a wrong choice fails here, first
    settings = Settings()
    if is_custom(model):
        allow_custom_modules(settings.allowed_model_modules())
        get_model(model)  # import it here: a typo (or a module not allowed) fails now
    check_kafka(settings)  # before anything is written: no half-made deployment
    feature_list = [f.strip() for f in features.split(",") if f.strip()] if features else None
    with connect(settings) as conn:
        init_database(conn, settings)
        d = create_deployment(conn, name, table, target, feature_list, model,
                              labels_table, labels_key, labels_column)
        conn.execute("SELECT rowcast.set_drift(%s, %s, %s)", (d.name, drift_detector, on_drift))
    sources = [settings.source_topic(d.schema, d.table)]
    if d.labels is not None:
        sources.append(settings.source_topic(d.labels.schema, d.labels.table))
    created = ensure_topics(settings, sources) + ensure_deployment_topics(settings, [d.name])
    if created:  # a write held by one broker only, on a cluster that could do better: say so
        admin = make_admin(settings)
        try:
            warning = thin_durability(created, cluster_defaults(admin).brokers)
        finally:
            admin.close()
        if warning:
            typer.echo(warning, err=True)
    typer.echo(f"deployed {d.name}: {d.model} on {d.qualified_table}, target {d.target}, "
               f"features {', '.join(f.name for f in d.features)}; "
               f"query it with SELECT * FROM rowcast.{d.name}_scored")
    if backfill:
        emit_rows(settings, d.name, missing_only=True)


@app.command(name="backfill")
def backfill_command(
    name: str,
    all_rows: Annotated[bool, typer.Option("--all", help="Re-emit every row, not only those "
                                           "without a prediction.")] = False,
    version: Annotated[int | None, typer.Option(
        help="Replay: score every row with this model version into "
             "rowcast.replay_predictions, tagged with a replay id; nothing is served or "
             "learned.")] = None,
) -> None:
    """Re-emit a deployment's table rows (op r) so they are scored; by default only unscored ones.

    With ``--version V``, an auditable replay instead: every row scored with version V."""
    if version is None:
        emit_rows(Settings(), name, missing_only=not all_rows)
        return
    from rowcast.connectors.replay import replay_version

    settings = Settings()
    with connect(settings) as conn:
        done = replay_version(conn, settings, name, version)
    typer.echo(f"replayed {done.rows} rows of {name} with version {done.version} "
               f"(replay {done.replay_id}; {done.failed} could not be scored): SELECT * FROM "
               f"rowcast.replay_predictions WHERE replay_id = '{done.replay_id}'")


@app.command()
def undeploy(name: str) -> None:
    """Remove a deployment; its table stops being captured once no deployment uses it."""
    from rowcast.connectors.model_topic import forget
    from rowcast.connectors.registry import remove_deployment
    from rowcast.connectors.schema import init_database

    settings = Settings()
    with connect(settings) as conn:
        init_database(conn, settings)
        remove_deployment(conn, name)
    forget(settings, name)
    typer.echo(f"removed {name}; its predictions stay in rowcast.predictions")


@app.command()
def drop(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove the replication slot and publication, so the server keeps no WAL for rowcast.

    Deployments, predictions and topics stay; a later `rowcast init` (or any rowcast process)
    creates a fresh slot that starts at the current WAL position.
    """
    from rowcast.connectors.slot import drop_slot_and_publication

    settings = Settings()
    if not yes:
        typer.confirm(f"Drop slot {settings.slot_name!r} and publication "
                      f"{settings.publication_name!r}? Changes until a new slot exists are "
                      "not captured", abort=True)
    with connect(settings) as conn:
        drop_slot_and_publication(conn, settings.slot_name, settings.publication_name)
    typer.echo(f"dropped slot {settings.slot_name!r} and publication {settings.publication_name!r}")


@app.command()
def deployments() -> None:
    """List deployments."""
    from rowcast.connectors.registry import list_deployments

    with connect(Settings()) as conn:
        rows = list_deployments(conn)
    if not rows:
        typer.echo("no deployments")
    with connect(Settings()) as conn:
        present = {(r[0], r[1]) for r in conn.execute(
            "SELECT schemaname, tablename FROM pg_tables")}
    for d in rows:
        gone = "" if (d.schema, d.table) in present else "\tTABLE DROPPED: rowcast undeploy " + d.name
        typer.echo(f"{d.name}\t{d.qualified_table}\t{d.model}\ttarget={d.target}\t"
                   f"features={','.join(f.name for f in d.features)}\tv{d.version}{gone}")
