"""The ``rowcast`` command: one entry point for operators and application teams.

Every command builds one :class:`~rowcast.core.settings.Settings` from the environment and passes it
down. Connection strings are never printed.
"""

from __future__ import annotations

import logging
from typing import Annotated

import psycopg
import typer

from rowcast.core.errors import ConfigError, RetryableError, RowcastError
from rowcast.core.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Score every new Postgres row the moment it lands.")
dev_app = typer.Typer(no_args_is_help=True, help="The local dev stack (Postgres + Kafka).")
app.add_typer(dev_app, name="dev")
model_app = typer.Typer(no_args_is_help=True, help="Model versions: list, pin, roll back.")
app.add_typer(model_app, name="model")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, replay them after a fix.")
app.add_typer(dlq_app, name="dlq")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every metadata refresh at INFO: keep operators' logs readable
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def _connect(settings: Settings) -> psycopg.Connection:
    try:
        return psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True)
    except psycopg.OperationalError as exc:  # psycopg's message names host and port, never
        # the password; the DSN itself is not echoed
        raise RetryableError(f"cannot connect to PostgreSQL (ROWCAST_POSTGRES_DSN): "
                             f"{str(exc).strip()}") from None


@app.command()
def init() -> None:
    """Create rowcast's schema, publication and replication slot (idempotent)."""
    from rowcast.connectors.schema import init_database

    settings = Settings()
    with _connect(settings) as conn:
        init_database(conn, settings)
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
) -> None:
    """Deploy a model on a table: existing rows are scored, then every new row as it lands.

    Labels are learned from the inserted row (score first, then learn), from a later UPDATE
    that sets the target, or from a separate labels table joined by key.
    """
    from rowcast.connectors.kafka_clients import check_kafka, ensure_deployment_topics, ensure_topics
    from rowcast.connectors.registry import create_deployment
    from rowcast.connectors.schema import init_database
    from rowcast.models.catalog import get_model, is_custom

    settings = Settings()
    if is_custom(model):
        get_model(model)  # import it here: a typo fails now, not in every worker
    check_kafka(settings)  # before anything is written: no half-made deployment
    feature_list = [f.strip() for f in features.split(",") if f.strip()] if features else None
    with _connect(settings) as conn:
        init_database(conn, settings)
        d = create_deployment(conn, name, table, target, feature_list, model,
                              labels_table, labels_key, labels_column)
    sources = [settings.source_topic(d.schema, d.table)]
    if d.labels is not None:
        sources.append(settings.source_topic(d.labels.schema, d.labels.table))
    ensure_topics(settings, sources)
    ensure_deployment_topics(settings, [d.name])
    typer.echo(f"deployed {d.name}: {d.model} on {d.qualified_table}, target {d.target}, "
               f"features {', '.join(f.name for f in d.features)}; "
               f"query it with SELECT * FROM rowcast.{d.name}_scored")
    if backfill:
        _backfill(settings, d.name, missing_only=True)


def _backfill(settings: Settings, name: str, missing_only: bool) -> None:
    from rowcast.connectors.kafka_clients import make_producer
    from rowcast.connectors.registry import list_deployments
    from rowcast.connectors.snapshot import emit_snapshot

    with _connect(settings) as conn:
        found = [d for d in list_deployments(conn) if d.name == name]
        if not found:
            raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")
        d = found[0]
        producer = make_producer(settings)
        try:
            count = emit_snapshot(conn, producer, settings, d.schema, d.table,
                                  for_deployment=d.name, missing_only=missing_only)
        finally:
            producer.close()
    which = "rows without a prediction" if missing_only else "rows"
    typer.echo(f"emitted {count} existing {which} of {d.qualified_table} for {d.name}")


@app.command(name="backfill")
def backfill_command(
    name: str,
    all_rows: Annotated[bool, typer.Option("--all", help="Re-emit every row, not only those "
                                           "without a prediction.")] = False,
) -> None:
    """Re-emit a deployment's table rows (op r) so they are scored; by default only unscored ones."""
    _backfill(Settings(), name, missing_only=not all_rows)


@app.command()
def undeploy(name: str) -> None:
    """Remove a deployment; its table stops being captured once no deployment uses it."""
    from rowcast.connectors.registry import remove_deployment
    from rowcast.connectors.schema import init_database

    settings = Settings()
    with _connect(settings) as conn:
        init_database(conn, settings)
        remove_deployment(conn, name)
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
    with _connect(settings) as conn:
        drop_slot_and_publication(conn, settings.slot_name, settings.publication_name)
    typer.echo(f"dropped slot {settings.slot_name!r} and publication {settings.publication_name!r}")


@app.command()
def deployments() -> None:
    """List deployments."""
    from rowcast.connectors.registry import list_deployments

    with _connect(Settings()) as conn:
        rows = list_deployments(conn)
    if not rows:
        typer.echo("no deployments")
    with _connect(Settings()) as conn:
        present = {(r[0], r[1]) for r in conn.execute(
            "SELECT schemaname, tablename FROM pg_tables")}
    for d in rows:
        gone = "" if (d.schema, d.table) in present else "\tTABLE DROPPED: rowcast undeploy " + d.name
        typer.echo(f"{d.name}\t{d.qualified_table}\t{d.model}\ttarget={d.target}\t"
                   f"features={','.join(f.name for f in d.features)}\tv{d.version}{gone}")


@app.command()
def dashboard(log_level: str = "INFO") -> None:
    """Serve the live dashboard, its JSON (/api/state) and /metrics (127.0.0.1 by default)."""
    from rowcast.ops.dashboard import Dashboard

    _setup_logging(log_level)
    settings = Settings()
    board = Dashboard(settings)
    typer.echo(f"dashboard on http://{settings.bind_host}:{settings.dashboard_port}/")
    board.serve_forever()


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, for scripts.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    samples: Annotated[int, typer.Option(help="Samples, a second apart, before the verdict.")] = 3,
) -> None:
    """One screen: deployments, throughput, latency, each stage's lag and verdict."""
    import time

    import orjson

    from rowcast.ops.monitor import Monitor
    from rowcast.ops.status_screen import render

    monitor = Monitor(Settings())
    try:
        for i in range(max(samples, 1)):
            if i:
                time.sleep(1.0)
            snapshot = monitor.sample()
        while True:
            if as_json:
                typer.echo(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
            else:
                typer.echo(("\x1b[H\x1b[2J" if watch else "") + render(snapshot))
            if not watch:
                return
            time.sleep(1.0)
            snapshot = monitor.sample()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()


@app.command()
def lag() -> None:
    """Per-partition lag of the scorer, the learner and the sink, like kafka-consumer-groups
    --describe, and the replication slot's lag in bytes and seconds."""
    from rowcast.connectors import heartbeat
    from rowcast.connectors.kafka_clients import make_admin
    from rowcast.connectors.lag import consumer_lag, slot_lag
    from rowcast.connectors.registry import list_deployments
    from rowcast.streams.app import app_id
    from rowcast.streams.processes import sink_group

    settings = Settings()
    with _connect(settings) as conn:
        deployments = list_deployments(conn)
        heartbeat.beat(conn, settings.slot_name)  # the age keeps growing even if the source is down
        slot = slot_lag(conn, settings.slot_name)
    if slot is None:
        typer.echo(f"slot {settings.slot_name}: missing (rowcast init creates it)")
    else:
        typer.echo(f"slot {slot.slot}: behind {slot.behind_bytes} B / {slot.behind_seconds:.1f} s, "
                   f"retains {slot.retained_bytes} B of WAL, {'active' if slot.active else 'idle'}")
    groups = {
        app_id(settings): sorted({settings.source_topic(d.schema, d.table) for d in deployments}
                                 | {settings.source_topic(d.labels.schema, d.labels.table)
                                    for d in deployments if d.labels is not None}),
        settings.learner_group: sorted(settings.labels_topic(d.name) for d in deployments),
        sink_group(settings): sorted(settings.predictions_topic(d.name) for d in deployments),
    }
    typer.echo(f"{'GROUP':<28} {'TOPIC':<44} {'PARTITION':>9} {'COMMITTED':>10} "
               f"{'LOG-END':>10} {'LAG':>8}")
    admin = make_admin(settings)
    try:
        for group, topics in groups.items():
            for p in consumer_lag(admin, group, topics):
                committed = "-" if p.committed is None else str(p.committed)
                typer.echo(f"{group:<28} {p.topic:<44} {p.partition:>9} {committed:>10} "
                           f"{p.log_end:>10} {p.lag:>8}")
    finally:
        admin.close()


@app.command()
def source(log_level: str = "INFO") -> None:
    """Run the CDC source: Postgres changes → Kafka."""
    from rowcast.streams.processes import run_source

    _setup_logging(log_level)
    run_source(Settings())


@app.command()
def worker(
    log_level: str = "info",
    child: Annotated[bool, typer.Option("--child", hidden=True)] = False,
) -> None:
    """Run a scoring worker (faust): change events → predictions; follows new deployments."""
    from rowcast.streams.worker import run_child, run_worker

    _setup_logging(log_level)
    (run_child if child else run_worker)(Settings(), loglevel=log_level.lower())


@app.command()
def sink(log_level: str = "INFO") -> None:
    """Run the Postgres sink: predictions → rowcast.predictions."""
    from rowcast.streams.processes import run_sink

    _setup_logging(log_level)
    run_sink(Settings())


@app.command(name="reconcile")
def reconcile_command(
    repair: Annotated[bool, typer.Option(help="Re-emit rows that have no prediction.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check every row has one prediction and every label was learned; exit 1 if not."""
    import orjson

    from rowcast.connectors.kafka_clients import make_admin
    from rowcast.ops.reconcile import reconcile, render

    settings = Settings()
    admin = make_admin(settings)
    try:
        with _connect(settings) as conn:
            reports = reconcile(conn, admin, settings)
    finally:
        admin.close()
    if as_json:
        typer.echo(orjson.dumps([r.to_dict() for r in reports]).decode())
    else:
        typer.echo(render(reports) if reports else "no deployments")
    if repair:
        for r in reports:
            if r.missing:
                _backfill(settings, r.deployment, missing_only=True)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage (score, sink, ...).")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Full records as JSON lines.")] = False,
) -> None:
    """The dead letters on <prefix>.dlq, oldest first: stage, reason, origin, error."""
    import orjson

    from rowcast.ops.dlq import read_letters, render, select

    letters = select(read_letters(Settings()), stage, reason)
    if as_json:
        for le in letters:
            typer.echo(orjson.dumps({"offset": le.offset, **le.record}).decode())
    else:
        typer.echo(render(letters) if letters else "no dead letters")


@dlq_app.command("replay")
def dlq_replay(
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    offset: Annotated[list[int] | None, typer.Option(help="Only these dead-letter offsets.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Send dead letters' original records back to their topics, to be processed again."""
    from rowcast.connectors.kafka_clients import make_producer
    from rowcast.ops.dlq import read_letters, replay, select

    settings = Settings()
    letters = select(read_letters(settings), stage, reason, offset or ())
    if not letters:
        typer.echo("no matching dead letters")
        return
    if not yes:
        typer.confirm(f"Replay {len(letters)} dead letter(s) to their original topics?", abort=True)
    producer = make_producer(settings)
    try:
        replayed, skipped = replay(producer, letters)
    finally:
        producer.close()
    typer.echo(f"replayed {replayed} record(s); skipped {skipped} without an original record to "
               "send (e.g. a refused model snapshot)")


@app.command()
def learner(log_level: str = "INFO") -> None:
    """Run a learner: label events → models, checkpointed as versions, published to scorers."""
    from rowcast.streams.processes import run_learner

    _setup_logging(log_level)
    run_learner(Settings())


@model_app.command("versions")
def model_versions(
    name: str,
    limit: Annotated[int, typer.Option(help="Newest versions to show.")] = 20,
) -> None:
    """A deployment's model versions, newest first, with samples and online metrics."""
    from rowcast.connectors import versions

    with _connect(Settings()) as conn:
        rows = versions.history(conn, name, limit)
        pin = versions.pinned(conn, name)
    if not rows:
        raise ConfigError(f"{name!r} has no model versions yet (is `rowcast learner` running "
                          "and have labels arrived?)")
    typer.echo(f"{'version':>7}  {'samples':>9}  {'created':<26} metrics")
    for ck in rows:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in ck.metrics.get("progressive", {}).items())
        flags = [f for f, on in (("pinned", ck.version == pin), (ck.note or "", bool(ck.note)))
                 if on]
        typer.echo(f"{ck.version:>7}  {ck.samples:>9}  {ck.created_at:%Y-%m-%d %H:%M:%S%z}  "
                   f"{shown}{'  [' + '; '.join(flags) + ']' if flags else ''}")


def _publish_pin(settings: Settings, name: str, ck: object | None) -> None:
    from rowcast.connectors.kafka_clients import ensure_topics, make_producer
    from rowcast.models.snapshot import encode_record
    from rowcast.streams.model_feed import PIN_SUFFIX

    ensure_topics(settings, [settings.models_topic], compacted=True, partitions=1)
    producer = make_producer(settings)
    try:
        value = None if ck is None else encode_record(
            {"deployment": name, "generation": ck.generation, "version": ck.version,
             "samples": ck.samples}, ck.snapshot)
        producer.send(settings.models_topic, key=(name + PIN_SUFFIX).encode(), value=value,
                      partition=0).get(timeout=30)
    finally:
        producer.close()


@model_app.command("pin")
def model_pin(name: str, version: int) -> None:
    """Score with VERSION on every worker while the learner keeps learning."""
    from rowcast.connectors import versions
    from rowcast.models.snapshot import load_snapshot, snapshot_key

    settings = Settings()
    key = snapshot_key(settings.snapshot_key.get_secret_value() if settings.snapshot_key else None,
                       settings.state_dir)
    with _connect(settings) as conn, conn.transaction():
        ck = versions.set_pin(conn, name, version)
        load_snapshot(ck.snapshot, key)  # a tampered row is refused here, not on every worker
        _publish_pin(settings, name, ck)  # before the commit: a failed publish leaves no pin
    typer.echo(f"{name} pinned to version {version}; `rowcast model unpin {name}` follows the "
               "learner again")


@model_app.command("unpin")
def model_unpin(name: str) -> None:
    """Serve the learner's newest version again."""
    from rowcast.connectors import versions

    settings = Settings()
    with _connect(settings) as conn, conn.transaction():
        versions.set_pin(conn, name, None)
        _publish_pin(settings, name, None)
    typer.echo(f"{name} follows the learner's newest version")


@model_app.command("rollback")
def model_rollback(name: str, version: int) -> None:
    """Continue learning from VERSION's model and metrics (as a new version)."""
    from rowcast.connectors import versions

    with _connect(Settings()) as conn:
        ck = versions.request_rollback(conn, name, version)
    typer.echo(f"{name}: the learner continues from version {version} ({ck.samples} samples) "
               "at its next checkpoint, as a new version")


@app.command()
def demo(
    rows_per_second: Annotated[float, typer.Option(help="Insert rate of the sample app.")] = 20.0,
    duration_s: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    keep_stack: Annotated[bool, typer.Option(help="Leave Postgres and Kafka running.")] = False,
) -> None:
    """Start the dev stack, deploy a model on a sample table, and watch rows get scored."""
    from rowcast.ops.demo import run_demo

    run_demo(Settings(), rows_per_second, duration_s, keep_stack)


@dev_app.command("up")
def dev_up() -> None:
    """Start the private Postgres and Kafka of the dev stack."""
    from rowcast.ops.devstack.stack import DevStack

    DevStack(Settings()).up()
    typer.echo("dev stack is up")


@dev_app.command("fetch")
def dev_fetch() -> None:
    """Download Apache Kafka's jars into the cache (done once; `make` runs it)."""
    from rowcast.ops.devstack.kafka import fetch_kafka

    settings = Settings()
    libs = fetch_kafka(settings.kafka_version, settings.cache_dir)
    typer.echo(f"Apache Kafka {settings.kafka_version} jars in {libs}")


@dev_app.command("down")
def dev_down() -> None:
    """Stop the dev stack."""
    from rowcast.ops.devstack.stack import DevStack

    DevStack(Settings()).down()
    typer.echo("dev stack is down")


@dev_app.command("status")
def dev_status() -> None:
    """Show whether the dev stack's services run."""
    from rowcast.ops.devstack.stack import DevStack

    for service, state in DevStack(Settings()).status().items():
        typer.echo(f"{service}: {state}")


def main() -> None:
    from kafka.errors import KafkaError

    try:
        app()
    except RowcastError as exc:
        typer.echo(f"rowcast: {exc}", err=True)
        raise SystemExit(2) from None
    except psycopg.OperationalError as exc:  # the database went away under a running process
        typer.echo(f"rowcast: PostgreSQL connection failed or was lost ({type(exc).__name__}: "
                   f"{str(exc).strip()}). Long-running processes exit here for their service "
                   "manager to restart them; they resume from their last durable position.",
                   err=True)
        raise SystemExit(2) from None
    except KafkaError as exc:  # unreachable, refused TLS handshake, failed login: say so plainly
        settings = Settings()
        typer.echo(f"rowcast: Kafka at {settings.kafka_bootstrap} "
                   f"({settings.kafka_security_protocol}) did not let rowcast in: "
                   f"{type(exc).__name__}: {exc}. Check ROWCAST_KAFKA_BOOTSTRAP and "
                   "ROWCAST_KAFKA_SECURITY_PROTOCOL / _SASL_* / _SSL_* settings.", err=True)
        raise SystemExit(2) from None
