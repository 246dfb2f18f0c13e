"""Online learning on the real services: one learner per model, labels from three places,
progressive metrics equal to river's, versioned checkpoints that survive kill -9."""

from __future__ import annotations

import uuid

import orjson
import pytest
from psycopg import sql
from river import datasets, evaluate
from river import metrics as river_metrics

from rowcast.models.catalog import get_model
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import counters, fast, latest_version, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


@pytest.mark.timeout(300)
def test_progressive_metrics_equal_river_on_bundled_datasets(settings, pg_conn, tmp_path):
    """Bananas (binary) and ChickWeights (regression) loaded through real INSERTs."""
    settings = fast(settings)
    suffix = uuid.uuid4().hex[:6]
    bananas, chicks = f"bananas_{suffix}", f"chicks_{suffix}"
    pg_conn.execute(f'CREATE TABLE {bananas} (id int PRIMARY KEY, "1" float8, "2" float8, y bool)')
    pg_conn.execute(f"CREATE TABLE {chicks} (id int PRIMARY KEY, time int, chick int, diet int, "
                    "weight float8)")
    runs = {"bananas": (bananas, "y", "logistic_regression", list(datasets.Bananas()),
                        {"Accuracy": river_metrics.Accuracy, "LogLoss": river_metrics.LogLoss,
                         "ROCAUC": river_metrics.ROCAUC}),
            "chicks": (chicks, "weight", "linear_regression", list(datasets.ChickWeights()),
                       {"MAE": river_metrics.MAE, "RMSE": river_metrics.RMSE,
                        "R2": river_metrics.R2})}
    for name, (table, target, model, *_rest) in runs.items():
        done = deploy_cli(settings, name, "--table", table, "--target", target, "--model", model)
        assert done.returncode == 0, done.stderr
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        for table, target, _, rows, _ in runs.values():
            columns = ["id", *rows[0][0], target]
            insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)))
            with pg_conn.transaction():
                pg_conn.cursor().executemany(
                    insert, [(i, *x.values(), y) for i, (x, y) in enumerate(rows)])
        for name, (_, _, _, rows, _) in runs.items():
            n = len(rows)
            wait_until(lambda name=name, n=n: learned(pg_conn, name) >= n, timeout_s=120,
                       message=lambda name=name: f"{name}: {latest_version(pg_conn, name)}\n"
                       f"{pipeline.log_tail('learner')}")

    report = {}
    for name, (_, _, model, rows, wanted) in runs.items():
        _, samples, stored = latest_version(pg_conn, name)
        assert samples == len(rows) and stored["labels"] == len(rows)
        # learned in the table's commit order (one transaction: the order of the INSERTs),
        # whatever order the partitions' label events reached the learner in
        stream = rows
        for metric, make in wanted.items():
            river_value = evaluate.progressive_val_score(stream, get_model(model).build(),
                                                         make()).get()
            report[(name, metric)] = (stored["progressive"][metric], river_value)
            assert stored["progressive"][metric] == river_value, (name, metric)
    print("\nrowcast vs river progressive_val_score:",
          {f"{n}.{m}": v for (n, m), v in report.items()})


@pytest.mark.timeout(240)
def test_labels_from_a_later_update_and_from_a_labels_table(settings, pg_conn, tmp_path):
    settings = fast(settings)
    suffix = uuid.uuid4().hex[:6]
    loans, outcomes = f"loans_{suffix}", f"outcomes_{suffix}"
    pg_conn.execute(f"CREATE TABLE {loans} (id int PRIMARY KEY, amount float8, region text, "
                    "repaid float8)")
    pg_conn.execute(f"CREATE TABLE {outcomes} (oid serial PRIMARY KEY, loan_id int, "
                    "repaid float8)")
    assert deploy_cli(settings, "by_update", "--table", loans, "--target", "repaid")\
        .returncode == 0
    refused = deploy_cli(settings, "by_table", "--table", loans, "--target", "repaid",
                         "--labels-table", outcomes, "--labels-key", "oops")
    assert refused.returncode != 0 and "labels key column 'oops'" in refused.stderr
    done = deploy_cli(settings, "by_table", "--table", loans, "--target", "repaid",
                      "--labels-table", outcomes, "--labels-key", "loan_id")
    assert done.returncode == 0, done.stderr

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(
                f"INSERT INTO {loans} (id, amount, region) VALUES (%s, %s, %s)",
                [(i, 100.0 * i, ["north", "south"][i % 2]) for i in range(1, 41)])
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.pending_labels WHERE deployment = 'by_update'"
        ).fetchone()[0] == 40, timeout_s=90, message=lambda: pipeline.log_tail("learner"))
        assert learned(pg_conn, "by_update") == 0  # nothing labelled yet: features wait

        # labels arrive later: 30 rows by UPDATE, 25 by rows of the labels table
        for i in range(1, 31):
            pg_conn.execute(f"UPDATE {loans} SET repaid = %s WHERE id = %s", (i * 0.5, i))
        pg_conn.execute(f"UPDATE {loans} SET region = 'east' WHERE id = 1")  # not a label
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {outcomes} (loan_id, repaid) VALUES (%s, %s)",
                                         [(i, i * 0.25) for i in range(11, 36)])
        pg_conn.execute(f"INSERT INTO {outcomes} (loan_id, repaid) VALUES (999, 1)")  # unknown
        wait_until(lambda: learned(pg_conn, "by_update") >= 30 and learned(pg_conn, "by_table") >= 25,
                   timeout_s=90, message=lambda: f"{latest_version(pg_conn, 'by_update')} "
                   f"{latest_version(pg_conn, 'by_table')}\n{pipeline.log_tail('learner')}")
        wait_until(lambda: counters(pg_conn, "by_table")["unmatched"] >= 1, timeout_s=30)

    assert learned(pg_conn, "by_update") == 30
    by_update = counters(pg_conn, "by_update")
    assert by_update["joined"] == 30 and by_update["pending_added"] == 40
    by_table = counters(pg_conn, "by_table")
    assert by_table["joined"] == 25 and by_table["unmatched"] == 1
    assert learned(pg_conn, "by_table") == 25
    pending = dict(pg_conn.execute(
        "SELECT deployment, count(*) FROM rowcast.pending_labels WHERE deployment IN "
        "('by_update', 'by_table') GROUP BY deployment").fetchall())
    assert pending == {"by_update": 10, "by_table": 15}


@pytest.mark.timeout(300)
def test_a_labels_table_deployment_needs_no_target_column_in_the_scored_table(
        settings, pg_conn, tmp_path):
    """Outcomes often live only in their own table (a ``"Fraud Reports"`` table beside
    ``"Payments"``): the target names the labels table's column, and its kind comes from
    there. ``rowcast.deploy`` refused it ("target column ... is not in" the scored table)
    although every other part already read labels from the labels table alone."""
    settings = fast(settings)
    suffix = uuid.uuid4().hex[:6]
    payments, reports = f"Pay ments_{suffix}", f"Fraud Reports_{suffix}"
    pg_conn.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY, "Amount" float8, '
                            '"Shop" text)').format(sql.Identifier(payments)))
    pg_conn.execute(sql.SQL('CREATE TABLE {} (rid serial PRIMARY KEY, "Payment" int, '
                            '"Is Fraud" bool)').format(sql.Identifier(reports)))
    quoted = sql.Identifier(payments).as_string(pg_conn)
    labels = sql.Identifier(reports).as_string(pg_conn)
    # without a labels table the target must still be a column of the scored table
    missing = deploy_cli(settings, "fraud", "--table", quoted, "--target", "Is Fraud")
    assert missing.returncode != 0 and "is not in" in missing.stderr \
        and "--labels-table" in missing.stderr
    # a labels column the task cannot learn is refused, naming the labels table's column
    wrong = deploy_cli(settings, "fraud", "--table", quoted, "--target", "Is Fraud",
                       "--model", "linear_regression", "--labels-table", labels,
                       "--labels-key", "Payment")
    assert wrong.returncode != 0 and "boolean" in wrong.stderr
    pg_conn.execute("SELECT rowcast.deploy('fraud', %s, 'Is Fraud', ARRAY['Amount', 'Shop'], "
                    "'logistic_regression', %s, 'Payment')", (quoted, labels))
    kind = pg_conn.execute("SELECT target_kind FROM rowcast.deployments WHERE name = 'fraud'"
                           ).fetchone()[0]
    assert kind == "boolean"
    # a scored table's own column of that name is not what such a deployment learns from:
    # the kind is the labels column's (a text "Is Fraud" here was refused for a binary model)
    other = f"Pay other_{suffix}"
    pg_conn.execute(sql.SQL('CREATE TABLE {} ("Id" int PRIMARY KEY, "Amount" float8, '
                            '"Is Fraud" text)').format(sql.Identifier(other)))
    pg_conn.execute("SELECT rowcast.deploy('fraud_other', %s, 'Is Fraud', ARRAY['Amount'], "
                    "'logistic_regression', %s, 'Payment')",
                    (sql.Identifier(other).as_string(pg_conn), labels))
    assert pg_conn.execute("SELECT target_kind FROM rowcast.deployments WHERE name = "
                           "'fraud_other'").fetchone()[0] == "boolean"
    pg_conn.execute("SELECT rowcast.undeploy('fraud_other')")

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(
                sql.SQL('INSERT INTO {} VALUES (%s, %s, %s)').format(sql.Identifier(payments)),
                [(i, 10.0 * i, ["a", "b"][i % 2]) for i in range(1, 21)])
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.fraud_scored WHERE rowcast_prediction IS NOT NULL"
        ).fetchone()[0] == 20, timeout_s=90, message=lambda: pipeline.log_tail("worker"))
        with pg_conn.transaction():
            pg_conn.cursor().executemany(
                sql.SQL('INSERT INTO {} ("Payment", "Is Fraud") VALUES (%s, %s)').format(
                    sql.Identifier(reports)), [(i, i % 3 == 0) for i in range(1, 21)])
        wait_until(lambda: learned(pg_conn, "fraud") >= 20, timeout_s=90,
                   message=lambda: f"{latest_version(pg_conn, 'fraud')}\n"
                   f"{pipeline.log_tail('learner')}")
    assert learned(pg_conn, "fraud") == 20 and counters(pg_conn, "fraud")["joined"] == 20
    assert drain(settings, settings.dlq_topic, 0, timeout_s=2) == []


@pytest.mark.timeout(300)
def test_learner_killed_at_any_moment_learns_each_label_exactly_once(settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "killed", "kills")
    total = 0
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        for round_ in range(4):
            with pg_conn.transaction():
                pg_conn.cursor().executemany(
                    f"INSERT INTO {table} VALUES (%s, %s, %s)",
                    [(total + i, float(i), 2.0 * i + 1) for i in range(300)])
            total += 300
            if round_ < 3:
                # kill -9 once the learner is midway through this round
                wait_until(lambda t=total: learned(pg_conn, "killed") > t - 300, timeout_s=60,
                           message=lambda: pipeline.log_tail("learner"))
                pipeline.kill("learner")
                pipeline.start_one("learner")
        wait_until(lambda: learned(pg_conn, "killed") >= total, timeout_s=120,
                   message=lambda: f"{latest_version(pg_conn, 'killed')}\n"
                   f"{pipeline.log_tail('learner')}")
        versions = [r[0] for r in pg_conn.execute(
            "SELECT version FROM rowcast.model_versions WHERE deployment = 'killed' "
            "ORDER BY created_at")]
    version, samples, metrics = latest_version(pg_conn, "killed")
    assert samples == total and metrics["labels"] == total  # none twice, none lost
    assert counters(pg_conn, "killed")["learned"] == total
    assert versions == sorted(versions)
    assert "restored version" in pipeline.log_tail("learner", 400)


@pytest.mark.timeout(240)
def test_model_versions_pin_and_rollback(settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "pinned", "pins")

    def insert(start: int, n: int) -> None:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                                         [(i, float(i % 10), 3.0 * (i % 10)) for i in
                                          range(start, start + n)])

    def served(since_id: int) -> set[int]:
        return {r[0] for r in pg_conn.execute(
            "SELECT model_version FROM rowcast.predictions WHERE deployment = 'pinned' "
            "AND (pk->>'id')::int >= %s", (since_id,))}

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert(0, 100)
        wait_until(lambda: learned(pg_conn, "pinned") >= 100, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        first = latest_version(pg_conn, "pinned")[0]
        listing = rowcast_cli(settings, "model", "versions", "pinned")
        assert listing.returncode == 0 and "MAE" in listing.stdout, listing.stderr

        pin = rowcast_cli(settings, "model", "pin", "pinned", str(first))
        assert pin.returncode == 0, pin.stderr
        insert(1000, 100)  # scored by the pinned version while the learner goes on
        wait_until(lambda: learned(pg_conn, "pinned") >= 200, timeout_s=90)
        wait_until(lambda: len(served(1000)) > 0 and pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'pinned'"
        ).fetchone()[0] >= 200, timeout_s=60)
        assert served(1000) == {first}
        assert latest_version(pg_conn, "pinned")[0] > first

        assert rowcast_cli(settings, "model", "unpin", "pinned").returncode == 0
        rollback = rowcast_cli(settings, "model", "rollback", "pinned", str(first))
        assert rollback.returncode == 0, rollback.stderr
        wait_until(lambda: pg_conn.execute(
            "SELECT note FROM rowcast.model_versions WHERE deployment = 'pinned' "
            "ORDER BY version DESC LIMIT 1").fetchone()[0] == f"rolled back to version {first}",
            timeout_s=30, message=lambda: pipeline.log_tail("learner"))
        rolled = latest_version(pg_conn, "pinned")
        assert rolled[1] == 100  # the samples of the version rolled back to

        # a tampered snapshot is refused, never unpickled
        pg_conn.execute("UPDATE rowcast.model_versions SET snapshot = snapshot || 'x'::bytea "
                        "WHERE deployment = 'pinned' AND version = %s", (first,))
        bad = rowcast_cli(settings, "model", "pin", "pinned", str(first))
        assert bad.returncode != 0 and "failed verification" in bad.stderr
        missing = rowcast_cli(settings, "model", "pin", "pinned", "9999")
        assert missing.returncode != 0 and "no model version 9999" in missing.stderr


@pytest.mark.timeout(240)
def test_unlabelled_rows_expire_after_the_retention_and_are_counted(settings, pg_conn, tmp_path):
    settings = fast(settings).model_copy(update={"label_retention_s": 2.0})
    table = deployed_xy_table(settings, pg_conn, "expiring", "expiring")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {table} (id, x) VALUES (%s, %s)",
                                         [(i, float(i)) for i in range(20)])
        wait_until(lambda: latest_version(pg_conn, "expiring") is not None
                   and counters(pg_conn, "expiring")["expired"] == 20, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        assert pg_conn.execute("SELECT count(*) FROM rowcast.pending_labels "
                               "WHERE deployment = 'expiring'").fetchone()[0] == 0
        # a label for an expired row is counted, not learned
        pg_conn.execute(f"UPDATE {table} SET y = 1 WHERE id = 3")
        wait_until(lambda: counters(pg_conn, "expiring")["unmatched"] == 1, timeout_s=60)
    assert learned(pg_conn, "expiring") == 0


@pytest.mark.timeout(300)
def test_workers_scale_out_and_die_and_versions_only_move_forward(settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "scaled", "scaled")
    total = 0
    with Pipeline(settings, tmp_path / "logs",
                  ("source", "worker", "worker#2", "learner", "sink")) as pipeline:
        for batch in range(8):  # batches, each learned (a new version) before the next lands
            if batch == 3:  # scale out mid-stream: the group rebalances over three workers
                pipeline.start_one("worker#3")
            insert_xy(pg_conn, table, range(total, total + 60), lambda i: 3.0 * i)
            total += 60
            if batch == 5:  # one dies while this batch is in flight: its partitions move
                pipeline.kill("worker#2")
            wait_until(lambda t=total: learned(pg_conn, "scaled") >= t, timeout_s=90,
                       message=lambda: pipeline.log_tail("learner"))
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'scaled'"
        ).fetchone()[0] == total, timeout_s=90, message=lambda: pipeline.log_tail("worker"))
        records = drain(settings, settings.predictions_topic("scaled"), total)
        members = rowcast_cli(settings, "lag")
    # at least once on the topic (a batch in flight when worker#2 joined is scored again by the
    # partition's new owner); exactly one row per key in Postgres (counted above)
    assert {orjson.loads(r.key)["id"] for r in records} == set(range(total))
    by_partition: dict[int, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(r.partition, []).append(orjson.loads(r.value)["model_version"])
    assert len(by_partition) == settings.topic_partitions
    for partition, seen in by_partition.items():
        assert seen == sorted(seen), (partition, seen)  # only forward
    assert max(max(v) for v in by_partition.values()) >= 3  # hot swaps happened
    assert members.returncode == 0 and "scorer" in members.stdout
