"""`rowcast reconcile` finds what is missing and `--repair` brings it back; a model snapshot that
fails verification on the models topic is refused by every worker, which keep serving."""

from __future__ import annotations

import uuid

import orjson
import pytest

from rowcast.connectors.kafka_clients import make_producer
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.model_record import ModelRecord
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import fast, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


def versions_served(conn) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT model_version FROM rowcast.predictions WHERE deployment = 'mended'")}


@pytest.mark.timeout(240)
def test_reconcile_repairs_lost_predictions_and_bad_snapshots_are_refused(settings, pg_conn,
                                                                         tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "mended", "mended")

    def predicted() -> int:
        return pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                               "WHERE deployment = 'mended'").fetchone()[0]

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(50))
        wait_until(lambda: predicted() == 50 and learned(pg_conn, "mended") == 50,
                   timeout_s=90, message=lambda: pipeline.log_tail("worker"))
        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=60,
                   interval_s=0.5)

        # someone deletes predictions: reconcile names them, --repair scores them again
        pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'mended' "
                        "AND (pk->>'id')::int IN (3, 17, 42)")
        broken = rowcast_cli(settings, "reconcile", "--json")
        report = orjson.loads(broken.stdout)[0]
        assert broken.returncode == 1 and report["missing"] == 3
        assert sorted(k["id"] for k in report["missing_sample"]) == [3, 17, 42]
        repaired = rowcast_cli(settings, "reconcile", "--repair")
        assert "emitted 3 existing rows without a prediction" in repaired.stdout
        wait_until(lambda: predicted() == 50, timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=60,
                   interval_s=0.5, message=lambda: rowcast_cli(settings, "reconcile").stdout)
        assert learned(pg_conn, "mended") == 50  # re-scored rows are not learned twice

        # a forged snapshot on the models topic (signed with the wrong key): refused
        generation, version = pg_conn.execute(
            "SELECT generation, max(version) FROM rowcast.model_versions "
            "WHERE deployment = 'mended' GROUP BY generation").fetchone()
        forged = ModelRecord("mended", generation, version + 1000, 0,
                             b"RCSNAP1\n" + orjson.dumps({"river": "x", "hmac": "0"}) + b"\n-"
                             ).encode(b"not the installation's key")
        producer = make_producer(settings)
        producer.send(settings.models_topic, key=b"mended", value=forged, partition=0).get(30)
        producer.close()
        letters = drain(settings, settings.dlq_topic, 1)
        assert any(b"bad_snapshot" in r.value and b"model_feed" in r.value for r in letters)
        pg_conn.execute(f"INSERT INTO {table} VALUES (1000, 1, 2)")
        wait_until(lambda: predicted() == 51, timeout_s=60)
        assert max(versions_served(pg_conn)) < version + 1000  # never served
        assert all(pipeline.alive().values())


@pytest.mark.timeout(240)
def test_a_tampered_checkpoint_is_not_loaded_and_rollback_recovers(settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "tamper", "tamper")

    def insert(ids: range) -> None:
        insert_xy(pg_conn, table, ids)

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert(range(0, 30))
        wait_until(lambda: learned(pg_conn, "tamper") == 30, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        insert(range(30, 40))
        wait_until(lambda: learned(pg_conn, "tamper") == 40, timeout_s=90)
        good, latest = pg_conn.execute(
            "SELECT min(version) FILTER (WHERE samples = 30), max(version) "
            "FROM rowcast.model_versions WHERE deployment = 'tamper'").fetchone()
        pipeline.kill("learner")
        # someone with write access to the database edits the newest snapshot
        pg_conn.execute("UPDATE rowcast.model_versions SET snapshot = snapshot || 'evil'::bytea "
                        "WHERE deployment = 'tamper' AND version = %s", (latest,))
        pipeline.start_one("learner")
        wait_until(lambda: "failed verification" in pipeline.log_tail("learner", 200),
                   timeout_s=60, message=lambda: pipeline.log_tail("learner"))
        insert(range(40, 45))  # the deployment is paused, not lost: nothing is learned yet
        assert learned(pg_conn, "tamper") == 40 and pipeline.alive()["learner"]

        done = rowcast_cli(settings, "model", "rollback", "tamper", str(good))
        assert done.returncode == 0, done.stderr
        # resumes from the good version's model with the newest checkpoint's position
        wait_until(lambda: learned(pg_conn, "tamper") == 35, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        note = pg_conn.execute("SELECT note FROM rowcast.model_versions WHERE deployment = "
                               "'tamper' AND note IS NOT NULL ORDER BY version DESC LIMIT 1"
                               ).fetchone()
        assert note == (f"rolled back to version {good}",)


@pytest.mark.timeout(240)
def test_dead_lettered_rows_are_accounted_for_not_missing(settings, pg_conn, tmp_path):
    """A row set aside on the dead-letter topic (a NaN or infinite feature refused by the
    scorer, a row too large for Kafka refused by the source) has no prediction, and never
    will until someone fixes and replays it: reconcile counts it ``dead_lettered`` (pointing
    at ``rowcast dlq list``), not ``missing``, and ``--repair`` does not send it round again."""
    settings = fast(settings)
    table = f"aside_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8, "
                    "note text)")
    done = deploy_cli(settings, "aside", "--table", table, "--target", "y", "--features", "x")
    assert done.returncode == 0, done.stderr

    def predicted() -> int:
        return pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                               "WHERE deployment = 'aside'").fetchone()[0]

    def letters_for_table() -> list[DeadLetter]:
        out = []
        for r in drain(settings, settings.dlq_topic, 0, timeout_s=2):
            letter = DeadLetter.decode(r.value)
            if letter.context.get("table") == table or table in (letter.topic or ""):
                out.append(letter)
        return out

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            for i in range(1, 21):
                pg_conn.execute(f"INSERT INTO public.{table} VALUES (%s, %s, %s, 'ok')",
                                (i, float(i), 2.0 * i))
            pg_conn.execute(f"INSERT INTO public.{table} VALUES (21, 'NaN', 1, 'ok')")
            pg_conn.execute(f"INSERT INTO public.{table} VALUES (22, '-Infinity', 1, 'ok')")
            pg_conn.execute(f"INSERT INTO public.{table} SELECT 23, 1, 1, string_agg(md5(g::text), "
                            "'') FROM generate_series(1, 70000) g")  # 2.2 MB: over the broker's limit
        wait_until(lambda: predicted() == 20 and len(letters_for_table()) == 3, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=60,
                   interval_s=0.5, message=lambda: rowcast_cli(settings, "reconcile").stdout)
        done = rowcast_cli(settings, "reconcile", "--json")
        report = orjson.loads(done.stdout)[0]
        assert (report["missing"], report["dead_lettered"], report["ok"]) == (0, 3, True)
        text = rowcast_cli(settings, "reconcile").stdout
        assert "rows set aside on the dead-letter topic: 3" in text and "rowcast dlq list" in text

        # a prediction lost for good reasons to repair: only that row is sent round again
        pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'aside' "
                        "AND (pk->>'id')::int = 5")
        broken = rowcast_cli(settings, "reconcile", "--json", "--repair")
        report = orjson.loads(broken.stdout.splitlines()[0])[0]
        assert broken.returncode == 1
        assert (report["missing"], report["dead_lettered"], report["missing_sample"]) == \
            (1, 3, [{"id": 5}])
        assert "emitted 1 existing rows without a prediction" in broken.stdout
        wait_until(lambda: predicted() == 20 and rowcast_cli(settings, "reconcile").returncode == 0,
                   timeout_s=60, interval_s=0.5)
        assert len(letters_for_table()) == 3  # the dead-lettered rows were not re-emitted
        assert all(pipeline.alive().values())
