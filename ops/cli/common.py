"""What every command group shares: the typer apps, logging setup, the Postgres connection."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
import typer

from rowcast.core.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Score every new Postgres row the moment it lands.")
dev_app = typer.Typer(no_args_is_help=True, help="The local dev stack (Postgres + Kafka).")
app.add_typer(dev_app, name="dev")
model_app = typer.Typer(no_args_is_help=True, help="Model versions: list, pin, roll back.")
app.add_typer(model_app, name="model")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, replay them after a fix.")
app.add_typer(dlq_app, name="dlq")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every metadata refresh at INFO: keep operators' logs readable
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def connect(settings: Settings) -> psycopg.Connection:
    from rowcast.connectors.postgres import connect as pg_connect

    return pg_connect(settings)


def backfill(settings: Settings, name: str, missing_only: bool, except_keys: Sequence[str] = ()
             ) -> None:
    """Re-emit a deployment's rows and say how many (``deploy``, ``backfill``, ``reconcile``)."""
    from rowcast.connectors.kafka_clients import make_producer
    from rowcast.connectors.snapshot import backfill_deployment

    with connect(settings) as conn:
        producer = make_producer(settings)
        try:
            d, count = backfill_deployment(conn, producer, settings, name, missing_only,
                                           except_keys)
        finally:
            producer.close()
    which = "rows without a prediction" if missing_only else "rows"
    typer.echo(f"emitted {count} existing {which} of {d.qualified_table} for {d.name}")
