"""Watching the pipeline: status, lag, the dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, connect, setup_logging


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

    settings = Settings()
    with connect(settings) as conn:
        deployments = list_deployments(conn)
        heartbeat.beat(conn, settings.slot_name)  # the age keeps growing even if the source is down
        slot = slot_lag(conn, settings.slot_name)
    if slot is None:
        typer.echo(f"slot {settings.slot_name}: missing (rowcast init creates it)")
    else:
        typer.echo(f"slot {slot.slot}: behind {slot.behind_bytes} B / {slot.behind_seconds:.1f} s, "
                   f"retains {slot.retained_bytes} B of WAL, {'active' if slot.active else 'idle'}")
    groups = {st.group: list(st.topics) for st in settings.stages(deployments)}
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
def dashboard(log_level: str = "INFO") -> None:
    """Serve the live dashboard, its JSON (/api/state) and /metrics (127.0.0.1 by default)."""
    from rowcast.ops.dashboard import Dashboard

    setup_logging(log_level)
    settings = Settings()
    board = Dashboard(settings)
    typer.echo(f"dashboard on http://{settings.bind_host}:{settings.dashboard_port}/")
    board.serve_forever()
