"""A model deployed on a partitioned table (declarative partitioning, the usual shape of event
data) scores the rows of every partition, including partitions created after the deploy, and
learns their labels; undeploying takes the table out of the publication."""

from __future__ import annotations

import uuid

import pytest

from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import published_tables
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.waiting import wait_until


def scored(conn, deployment: str) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT (pk->>'Id')::int FROM rowcast.predictions WHERE deployment = %s", (deployment,))}


def learned(conn, deployment: str) -> int:
    row = conn.execute("SELECT max(samples) FROM rowcast.model_metrics WHERE deployment = %s",
                       (deployment,)).fetchone()
    return row[0] or 0


@pytest.mark.timeout(300)
def test_rows_of_every_partition_are_scored_and_learned(settings, pg_conn, tmp_path):
    name = f"part_{uuid.uuid4().hex[:6]}"
    schema = f"Events_{uuid.uuid4().hex[:6]}"
    root = f'"{schema}"."Clicks"'
    pg_conn.execute(f'CREATE SCHEMA "{schema}"')
    pg_conn.execute(f'CREATE TABLE {root} ("Id" bigint, "At" date, "Dwell" float8, '
                    '"Bought" float8, PRIMARY KEY ("Id", "At")) PARTITION BY RANGE ("At")')
    pg_conn.execute(f'CREATE TABLE "{schema}"."Clicks_2025" PARTITION OF {root} '
                    "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
    pg_conn.execute(f"INSERT INTO {root} VALUES (1, '2025-03-01', 1.5, 0)")  # before the deploy
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    done = deploy_cli(settings, name, "--table", root, "--target", "Bought", "--features", "Dwell")
    assert done.returncode == 0, done.stderr
    assert "emitted 1 existing rows" in done.stdout  # read through the partitioned table
    # the publication names the table the deployment names, not its partitions
    assert (schema, "Clicks") in published_tables(pg_conn, settings.publication_name)

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        pg_conn.execute(f"INSERT INTO {root} VALUES (2, '2025-06-01', 2.5, 1)")
        # a partition made after the deploy, and a default one
        pg_conn.execute(f'CREATE TABLE "{schema}"."Clicks_2026" PARTITION OF {root} '
                        "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        pg_conn.execute(f'CREATE TABLE "{schema}"."Clicks_rest" PARTITION OF {root} DEFAULT')
        pg_conn.execute(f"INSERT INTO {root} VALUES (3, '2026-02-01', 3.5, NULL), "
                        "(4, '1999-01-01', 0.5, 0)")
        pg_conn.execute(f'UPDATE {root} SET "Bought" = 1 WHERE "Id" = 3')
        wait_until(lambda: scored(pg_conn, name) == {1, 2, 3, 4}, timeout_s=90,
                   message=lambda: f"{scored(pg_conn, name)}\n{pipeline.log_tail('worker')}")
        # labels of rows 2, 3 (by an update) and 4 (a snapshot read is scored, not learned)
        wait_until(lambda: learned(pg_conn, name) == 3, timeout_s=90,
                   message=lambda: f"{learned(pg_conn, name)}\n{pipeline.log_tail('learner')}")
        # a TRUNCATE of the table empties every partition: their predictions go
        pg_conn.execute(f"TRUNCATE {root}")
        pg_conn.execute(f"INSERT INTO {root} VALUES (5, '2026-05-01', 1, NULL)")
        wait_until(lambda: scored(pg_conn, name) == {5}, timeout_s=90,
                   message=lambda: f"{scored(pg_conn, name)}\n{pipeline.log_tail('source')}")

    pg_conn.execute("SELECT rowcast.undeploy(%s)", (name,))
    assert (schema, "Clicks") not in published_tables(pg_conn, settings.publication_name)
