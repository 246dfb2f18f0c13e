"""The learner learns each deployment's labels in the table's commit order, whatever the
partitions, workers and restarts: its progressive metrics equal river's
``progressive_val_score`` on the rows in the order they were committed (issue #14)."""

from __future__ import annotations

import random
import uuid

import pytest
from psycopg import sql
from river import datasets

from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.learning import fast, latest_version, learned
from tests.helpers.river_reference import progressive
from tests.helpers.waiting import wait_until

TWO_WORKERS = ("source", "worker", "worker#2", "learner", "sink")


def insert_in_commits(conn, table: str, columns: list[str], rows: list[tuple], per_txn: int):
    """Insert ``rows`` in this order, ``per_txn`` rows per transaction: the commit order."""
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)))
    for start in range(0, len(rows), per_txn):
        with conn.transaction():
            conn.cursor().executemany(insert, rows[start:start + per_txn])


def river_metrics_on(stream: list[tuple[dict, object]], model: str, wanted: dict) -> dict:
    return progressive(stream, model, list(wanted))


@pytest.mark.timeout(420)
def test_labels_in_the_row_are_learned_in_commit_order_with_two_workers(settings, pg_conn,
                                                                        tmp_path):
    """ChickWeights in its own order (a time series per chick), over 4 partitions and two
    workers: learning must see it in that order, not the interleaving."""
    settings = fast(settings)
    table = f"chicks_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, time int, chick int, diet int, "
                    "weight float8)")
    done = deploy_cli(settings, "chicks", "--table", table, "--target", "weight")
    assert done.returncode == 0, done.stderr
    rows = list(datasets.ChickWeights())
    with Pipeline(settings, tmp_path / "logs", names=TWO_WORKERS) as pipeline:
        insert_in_commits(pg_conn, table, ["id", "time", "chick", "diet", "weight"],
                          [(i, *x.values(), y) for i, (x, y) in enumerate(rows)], per_txn=7)
        wait_until(lambda: learned(pg_conn, "chicks") >= len(rows), timeout_s=180,
                   message=lambda: f"{latest_version(pg_conn, 'chicks')}\n"
                   f"{pipeline.log_tail('learner')}")
    _, samples, stored = latest_version(pg_conn, "chicks")
    assert samples == len(rows)
    wanted = dict.fromkeys(["MAE", "RMSE", "R2"])
    expected = river_metrics_on(rows, "linear_regression", wanted)
    assert {k: stored["progressive"][k] for k in wanted} == expected


@pytest.mark.timeout(420)
def test_labels_by_update_and_by_labels_table_are_learned_in_the_order_committed(
        settings, pg_conn, tmp_path):
    """Features land first (row order); labels come later in another order — by UPDATE for one
    deployment, as rows of a labels table for a multi-class tree on the other: each learns in
    the order its labels were committed, with the features the rows were scored with."""
    settings = fast(settings)
    suffix = uuid.uuid4().hex[:6]
    table, outcomes = f"segments_{suffix}", f"segment_labels_{suffix}"
    data = list(datasets.ImageSegments())[:600]
    names = list(data[0][0])
    cols = ", ".join(f'"{n}" float8' for n in names)
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, {cols}, label text)")
    pg_conn.execute(f"CREATE TABLE {outcomes} (oid serial PRIMARY KEY, segment_id int, "
                    "label text)")
    for name, extra in (("seg_update", ()),
                        ("seg_table", ("--labels-table", outcomes, "--labels-key", "segment_id"))):
        done = deploy_cli(settings, name, "--table", table, "--target", "label", "--features",
                          ",".join(names), "--model", "hoeffding_tree_classifier", *extra)
        assert done.returncode == 0, done.stderr
    order = list(range(len(data)))
    random.Random(7).shuffle(order)  # the order labels will be committed in
    by_update, by_table = order[: len(order) // 2], order[len(order) // 2:]
    with Pipeline(settings, tmp_path / "logs", names=TWO_WORKERS) as pipeline:
        insert_in_commits(pg_conn, table, ["id", *names],
                          [(i, *x.values()) for i, (x, _) in enumerate(data)], per_txn=25)
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'seg_update'"
        ).fetchone()[0] == len(data), timeout_s=180)
        for start in range(0, len(by_update), 5):
            with pg_conn.transaction():
                for i in by_update[start:start + 5]:
                    pg_conn.execute(sql.SQL("UPDATE {} SET label = %s WHERE id = %s").format(
                        sql.Identifier(table)), (data[i][1], i))
        insert_in_commits(pg_conn, outcomes, ["segment_id", "label"],
                          [(i, data[i][1]) for i in by_table], per_txn=5)
        wait_until(lambda: learned(pg_conn, "seg_update") >= len(by_update)
                   and learned(pg_conn, "seg_table") >= len(by_table), timeout_s=180,
                   message=lambda: pipeline.log_tail("learner"))
    wanted = dict.fromkeys(["Accuracy", "MacroF1", "CrossEntropy"])
    for name, labelled in (("seg_update", by_update), ("seg_table", by_table)):
        _, samples, stored = latest_version(pg_conn, name)
        assert samples == len(labelled)
        expected = river_metrics_on([data[i] for i in labelled], "hoeffding_tree_classifier",
                                    wanted)
        assert {k: stored["progressive"][k] for k in wanted} == expected, name


@pytest.mark.timeout(480)
def test_killing_the_learner_and_a_worker_mid_stream_keeps_commit_order(settings, pg_conn,
                                                                       tmp_path):
    """kill -9 of the learner (restored from its checkpoint: model, merge buffer, watermarks)
    and of one of two workers (its partitions move, their events are replayed) while rows are
    written: still exactly river's result on the commit order."""
    settings = fast(settings)
    table = f"chicks_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, time int, chick int, diet int, "
                    "weight float8)")
    done = deploy_cli(settings, "chicks_k", "--table", table, "--target", "weight")
    assert done.returncode == 0, done.stderr
    rows = list(datasets.ChickWeights())
    third = len(rows) // 3
    columns = ["id", "time", "chick", "diet", "weight"]
    values = [(i, *x.values(), y) for i, (x, y) in enumerate(rows)]
    with Pipeline(settings, tmp_path / "logs", names=TWO_WORKERS) as pipeline:
        insert_in_commits(pg_conn, table, columns, values[:third], per_txn=7)
        wait_until(lambda: learned(pg_conn, "chicks_k") >= third // 2, timeout_s=120,
                   message=lambda: pipeline.log_tail("learner"))
        pipeline.kill("learner")
        insert_in_commits(pg_conn, table, columns, values[third:2 * third], per_txn=7)
        pipeline.restart_dead()
        wait_until(lambda: learned(pg_conn, "chicks_k") >= third + third // 2, timeout_s=120,
                   message=lambda: pipeline.log_tail("learner"))
        pipeline.kill("worker#2")
        insert_in_commits(pg_conn, table, columns, values[2 * third:], per_txn=7)
        pipeline.restart_dead()
        wait_until(lambda: learned(pg_conn, "chicks_k") >= len(rows), timeout_s=180,
                   message=lambda: f"{latest_version(pg_conn, 'chicks_k')}\n"
                   f"{pipeline.log_tail('learner')}")
    _, samples, stored = latest_version(pg_conn, "chicks_k")
    assert samples == len(rows)
    wanted = ["MAE", "RMSE", "R2"]
    assert {k: stored["progressive"][k] for k in wanted} == progressive(
        rows, "linear_regression", wanted)
