"""Checking and repairing: reconcile, dead letters."""

from __future__ import annotations

from typing import Annotated

import typer

from rowcast.core.settings import Settings
from rowcast.ops.cli.common import app, backfill, connect, dlq_app


@app.command(name="reconcile")
def reconcile_command(
    repair: Annotated[bool, typer.Option(help="Re-emit rows that have no prediction.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check every row has one prediction and every label was learned; exit 1 if not."""
    import orjson

    from rowcast.connectors.kafka_clients import make_admin
    from rowcast.ops.dlq import read_letters
    from rowcast.ops.reconcile import reconcile, render

    settings = Settings()
    admin = make_admin(settings)
    try:
        letters = [le.letter for le in read_letters(settings)]
        with connect(settings) as conn:
            reports = reconcile(conn, admin, settings, letters)
    finally:
        admin.close()
    if as_json:
        typer.echo(orjson.dumps([r.to_dict() for r in reports]).decode())
    else:
        typer.echo(render(reports) if reports else "no deployments")
    if repair:
        for r in reports:
            if r.missing:
                backfill(settings, r.deployment, missing_only=True, except_keys=r.set_aside)
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
            typer.echo(orjson.dumps({"offset": le.offset, **orjson.loads(le.letter.encode())}).decode())
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
