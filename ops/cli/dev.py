"""The local dev stack and the demo."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, dev_app


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
def dev_up(
    brokers: Annotated[int, typer.Option(
        min=1, help="Kafka brokers: 1 (the quick start) or 3 (a KRaft cluster on loopback, "
        "replication factor 3, 2 in-sync replicas required).")] = 1,
) -> None:
    """Start the private Postgres and Kafka of the dev stack."""
    from rowcast.ops.devstack.stack import DevStack

    stack = DevStack(Settings(), brokers=brokers)
    stack.up()
    typer.echo("dev stack is up")
    if brokers > 1:
        typer.echo(f"use the cluster with: export ROWCAST_KAFKA_BOOTSTRAP={stack.kafka.bootstrap}")


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
