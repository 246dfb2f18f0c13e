"""The long-running processes, one command each (what a service manager runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, setup_logging


@app.command()
def source(log_level: str = "INFO") -> None:
    """Run the CDC source: Postgres changes → Kafka."""
    from rowcast.streams.processes import run_source

    setup_logging(log_level)
    run_source(Settings().for_role("source"))


@app.command()
def worker(
    log_level: str = "info",
    child: Annotated[bool, typer.Option("--child", hidden=True)] = False,
) -> None:
    """Run a scoring worker (faust): change events → predictions; follows new deployments."""
    from rowcast.streams.worker import run_child, run_worker

    setup_logging(log_level)
    (run_child if child else run_worker)(Settings().for_role("worker"), loglevel=log_level.lower())


@app.command()
def sink(log_level: str = "INFO") -> None:
    """Run the Postgres sink: predictions → rowcast.predictions."""
    from rowcast.streams.processes import run_sink

    setup_logging(log_level)
    run_sink(Settings().for_role("sink"))


@app.command()
def learner(log_level: str = "INFO") -> None:
    """Run a learner: label events → models, checkpointed as versions, published to scorers."""
    from rowcast.streams.processes import run_learner

    setup_logging(log_level)
    run_learner(Settings().for_role("learner"))
