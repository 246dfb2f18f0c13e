"""Each label is learned once, on the real services: a redeploy at low traffic goes on being
learned without a restart; rows re-emitted by backfill or reconcile --repair are not taught twice
by a later UPDATE; a dead letter replayed after a fix is learned (once); a label that comes
before its row's features waits for them, and reconcile reports the ones that never joined."""

from __future__ import annotations

import uuid

import orjson
import pytest

from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import counters, fast, latest_version, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


def generation_of(conn, deployment: str) -> str:
    return conn.execute("SELECT (extract(epoch FROM created_at) * 1000000)::bigint || '.' || "
                        "version FROM rowcast.deployments WHERE name = %s",
                        (deployment,)).fetchone()[0]


def learned_in(conn, deployment: str, generation: str) -> int:
    row = conn.execute("SELECT samples FROM rowcast.model_versions WHERE deployment = %s "
                       "AND generation = %s ORDER BY version DESC LIMIT 1",
                       (deployment, generation)).fetchone()
    return 0 if row is None else row[0]


@pytest.mark.timeout(300)
def test_a_redeploy_at_low_traffic_is_learned_without_restarting_the_learner(settings, pg_conn,
                                                                             tmp_path):
    # a long checkpoint interval: the row inserted just before the redeploy is applied by the
    # old generation's learner, whose checkpoint comes after the redeploy and is refused
    settings = fast(settings).model_copy(update={"learner_checkpoint_s": 4.0})
    table = deployed_xy_table(settings, pg_conn, "redeployed", "redeployed")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(3))
        wait_until(lambda: learned(pg_conn, "redeployed") == 3, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        insert_xy(pg_conn, table, [3])
        done = deploy_cli(settings, "redeployed", "--table", table, "--target", "y", "--model",
                          "hoeffding_tree_regressor", "--no-backfill")
        assert done.returncode == 0, done.stderr
        generation = generation_of(pg_conn, "redeployed")
        for i in range(10, 14):  # a few more labelled rows, slowly
            insert_xy(pg_conn, table, [i])
            wait_until(lambda i=i: learned_in(pg_conn, "redeployed", generation) == i - 9,
                       timeout_s=30, message=lambda: f"{latest_version(pg_conn, 'redeployed')}"
                       f"\n{pipeline.log_tail('learner', 40)}")
        assert all(pipeline.alive().values())
    model = pg_conn.execute("SELECT model FROM rowcast.model_versions WHERE deployment = "
                            "'redeployed' ORDER BY version DESC LIMIT 1").fetchone()[0]
    assert model == "hoeffding_tree_regressor"


@pytest.mark.timeout(300)
def test_rows_re_emitted_by_backfill_or_repair_are_not_taught_twice_by_a_later_update(
        settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "once", "once")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(10))
        wait_until(lambda: learned(pg_conn, "once") == 10, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))

        # backfill --all re-emits every row (scored again, not learned), then UPDATEs
        backfilled_at = pg_conn.execute("SELECT clock_timestamp()").fetchone()[0]
        done = rowcast_cli(settings, "backfill", "once", "--all")
        assert done.returncode == 0, done.stderr
        # the backfill's predictions written too (the learner may be ahead of the sink): one
        # written after the DELETE below would put back a prediction reconcile must miss
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'once' "
            "AND written_at >= %s", (backfilled_at,)).fetchone()[0] == 10, timeout_s=60)
        wait_until(lambda: counters(pg_conn, "once")["duplicates"] >= 10, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'once')}\n{pipeline.log_tail('learner')}")
        pg_conn.execute(f"UPDATE {table} SET x = x + 1 WHERE id < 5")   # same label
        pg_conn.execute(f"UPDATE {table} SET y = y + 1 WHERE id >= 5")  # a correction
        wait_until(lambda: counters(pg_conn, "once")["corrections"] >= 5, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'once')}\n{pipeline.log_tail('learner')}")

        # reconcile --repair re-emits rows whose prediction is gone, then an UPDATE
        pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'once' "
                        "AND (pk->>'id')::int IN (2, 7)")
        repaired = rowcast_cli(settings, "reconcile", "--repair")
        assert "emitted 2 existing rows" in repaired.stdout, repaired.stdout + repaired.stderr
        wait_until(lambda: counters(pg_conn, "once")["duplicates"] >= 17, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'once')}\n{pipeline.log_tail('learner')}")
        pg_conn.execute(f"UPDATE {table} SET y = y + 10 WHERE id IN (2, 7)")
        wait_until(lambda: counters(pg_conn, "once")["corrections"] >= 7, timeout_s=60)
        # a new row is still learned
        insert_xy(pg_conn, table, [100])
        wait_until(lambda: learned(pg_conn, "once") >= 11, timeout_s=60)
    assert learned(pg_conn, "once") == 11
    assert counters(pg_conn, "once")["learned"] == 11
    assert pg_conn.execute("SELECT count(*) FROM rowcast.pending_labels WHERE deployment = 'once'"
                           ).fetchone()[0] == 0


@pytest.mark.timeout(300)
def test_a_dead_letter_replayed_after_a_fix_is_learned_once(settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = f"replayed_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, z float8, "
                    "y float8)")
    done = deploy_cli(settings, "replayed", "--table", table, "--target", "y")
    assert done.returncode == 0, done.stderr
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        rows = [(i, float(i), float("nan") if i == 3 else 1.0, 2.0 * i) for i in range(6)]
        with pg_conn.transaction():
            pg_conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s)", rows)
        drain(settings, settings.dlq_topic, 1)  # row 3: NaN is refused as a feature
        wait_until(lambda: learned(pg_conn, "replayed") == 5, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        # the fix: the deployment stops using z; newer rows are learned under it first
        done = deploy_cli(settings, "replayed", "--table", table, "--target", "y", "--features",
                          "x", "--no-backfill")
        assert done.returncode == 0, done.stderr
        generation = generation_of(pg_conn, "replayed")
        pg_conn.execute(f"INSERT INTO {table} VALUES (10, 10, 1, 20)")
        wait_until(lambda: learned_in(pg_conn, "replayed", generation) == 1, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        replayed = rowcast_cli(settings, "dlq", "replay", "--reason", "bad_feature", "--yes")
        assert replayed.returncode == 0, replayed.stderr
        wait_until(lambda: learned_in(pg_conn, "replayed", generation) == 2, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'replayed')}\n"
                   f"{pipeline.log_tail('learner')}")
        duplicates = counters(pg_conn, "replayed")["duplicates"]
        again = rowcast_cli(settings, "dlq", "replay", "--reason", "bad_feature", "--yes")
        assert again.returncode == 0, again.stderr
        wait_until(lambda: counters(pg_conn, "replayed")["duplicates"] > duplicates,
                   timeout_s=60, message=lambda: pipeline.log_tail("learner"))
    assert learned_in(pg_conn, "replayed", generation) == 2


@pytest.mark.timeout(300)
def test_a_label_before_its_row_waits_for_it_and_reconcile_names_the_unjoined(settings, pg_conn,
                                                                              tmp_path):
    settings = fast(settings)
    suffix = uuid.uuid4().hex[:6]
    loans, outcomes = f"eloans_{suffix}", f"eoutcomes_{suffix}"
    pg_conn.execute(f"CREATE TABLE {loans} (id int PRIMARY KEY, amount float8, repaid float8)")
    pg_conn.execute(f"CREATE TABLE {outcomes} (oid serial PRIMARY KEY, loan_id int, "
                    "repaid float8)")
    done = deploy_cli(settings, "early", "--table", loans, "--target", "repaid",
                      "--labels-table", outcomes, "--labels-key", "loan_id")
    assert done.returncode == 0, done.stderr
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        # label first, in its own transaction, and seen by the learner before the row exists
        pg_conn.execute(f"INSERT INTO {outcomes} (loan_id, repaid) VALUES (1, 0.5)")
        wait_until(lambda: latest_version(pg_conn, "early") is not None
                   and counters(pg_conn, "early")["unmatched"] == 1, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        pg_conn.execute(f"INSERT INTO {loans} (id, amount) VALUES (1, 100)")
        # label and row in one transaction, the label written first
        with pg_conn.transaction():
            pg_conn.execute(f"INSERT INTO {outcomes} (loan_id, repaid) VALUES (2, 1.5)")
            pg_conn.execute(f"INSERT INTO {loans} (id, amount) VALUES (2, 200)")
        wait_until(lambda: learned(pg_conn, "early") == 2, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'early')}\n{pipeline.log_tail('learner')}")
        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=60,
                   interval_s=0.5, message=lambda: rowcast_cli(settings, "reconcile").stdout)

        # a label whose row never comes: reconcile says so
        pg_conn.execute(f"INSERT INTO {outcomes} (loan_id, repaid) VALUES (999, 1)")
        # unmatched was 2 already (label 2 is held for a moment before its row, in the same
        # transaction): wait for the third, then for the checkpoint that holds it
        wait_until(lambda: counters(pg_conn, "early")["unmatched"] >= 3, timeout_s=60)

        def report() -> tuple[int, dict]:
            done = rowcast_cli(settings, "reconcile", "--json")
            return done.returncode, next(r for r in orjson.loads(done.stdout)
                                         if r["deployment"] == "early")

        wait_until(lambda: report()[1]["unjoined"] == 1, timeout_s=60, interval_s=0.5,
                   message=lambda: str(report()))
        code, found = report()
        assert code == 1 and found["unjoined"] == 1, found
        assert "never joined" in rowcast_cli(settings, "reconcile").stdout
    assert counters(pg_conn, "early")["late_joined"] >= 1
    assert learned(pg_conn, "early") == 2


@pytest.mark.timeout(300)
def test_a_primary_key_change_of_a_learned_row_is_not_learned_again(settings, pg_conn, tmp_path):
    """UPDATE of the key columns is a delete + create downstream (as Debezium does it); the
    create carries the old key (header ``__debezium.oldkey``), so the learner knows the row."""
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "rekeyed", "rekeyed")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(1, 4))
        wait_until(lambda: learned(pg_conn, "rekeyed") == 3, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        pg_conn.execute(f"UPDATE public.{table} SET id = id + 100 WHERE id = 2")
        insert_xy(pg_conn, table, [4])  # a new row after it: once it is learned, so is the above
        wait_until(lambda: learned(pg_conn, "rekeyed") >= 4 and pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'rekeyed' "
            "AND pk = '{\"id\": 102}'").fetchone()[0] == 1, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        wait_until(lambda: counters(pg_conn, "rekeyed").get("duplicates", 0) >= 1, timeout_s=30,
                   message=lambda: f"{counters(pg_conn, 'rekeyed')}")
        assert learned(pg_conn, "rekeyed") == 4
