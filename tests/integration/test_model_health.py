"""A model that breaks is never published: a real overflowing row on the real services pauses
the deployment with the last good version serving, status and /metrics say why, and
`rowcast model rollback` recovers it, refusing that row.

The overflowing row is x = 1e50 for a model that raises x to the fourth power (``QUARTIC``):
the scorer refuses features beyond 1e50 (a catalog model's scaler overflowed on a feature of
1e200, the last test), so the catalog's models no longer break on a value."""

from __future__ import annotations

import math
import urllib.request

import orjson
import pytest

from rowcast.core.dead_letter import DeadLetter
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import counters, fast, latest_version, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until

QUARTIC = "tests.helpers.fragile_models:quartic"  # x, ..., x⁴ | scaler | linear regression
HUGE = 1e50  # the largest feature the scorer takes; at the fourth power, too large to square


def _status(settings) -> dict:
    done = rowcast_cli(settings, "status", "--json", "--samples", "1")
    assert done.returncode == 0, done.stderr
    return next(d for d in orjson.loads(done.stdout)["deployments"] if d["name"] == "overflow")


def _predictions(conn, ids: range) -> list[tuple[int, float]]:
    return conn.execute("SELECT model_version, score FROM "
                        "rowcast.predictions WHERE deployment = 'overflow' "
                        "AND (pk->>'id')::int BETWEEN %s AND %s",
                        (ids.start, ids.stop - 1)).fetchall()


def _learner_metrics(settings) -> str:
    url = f"http://127.0.0.1:{settings.learner_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.mark.timeout(300)
def test_an_overflowing_row_pauses_the_model_and_rollback_recovers_it(settings, pg_conn,
                                                                       tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "overflow", "overflow", QUARTIC)
    paused_metric = 'rowcast_model_paused{deployment="overflow",reason="non_finite"}'
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(50))
        wait_until(lambda: learned(pg_conn, "overflow") >= 50, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        good = latest_version(pg_conn, "overflow")[0]

        pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, %s, 5.0)", (HUGE,))
        wait_until(lambda: (_status(settings).get("paused") or {}).get("reason") == "non_finite",
                   timeout_s=90, message=lambda: pipeline.log_tail("learner"))
        status = _status(settings)
        assert "non-finite" in status["paused"]["error"] or "Overflow" in status["paused"]["error"]
        assert status["model_version"] == good and status["paused"]["since"]
        assert f"{paused_metric} 1.0" in _learner_metrics(settings)
        screen = rowcast_cli(settings, "status", "--samples", "1")
        assert "PAUSED (non_finite)" in screen.stdout and "model rollback" in screen.stdout

        # the last good version keeps serving; nothing newer was checkpointed or published
        insert_xy(pg_conn, table, range(2000, 2010))
        wait_until(lambda: len(_predictions(pg_conn, range(2000, 2010))) == 10, timeout_s=60)
        assert {v for v, _ in _predictions(pg_conn, range(2000, 2010))} == {good}
        assert all(math.isfinite(p) for _, p in _predictions(pg_conn, range(2000, 2010)))
        assert latest_version(pg_conn, "overflow")[0] == good

        rollback = rowcast_cli(settings, "model", "rollback", "overflow", str(good))
        assert rollback.returncode == 0, rollback.stderr
        wait_until(lambda: learned(pg_conn, "overflow") >= 60, timeout_s=90,
                   message=lambda: f"{latest_version(pg_conn, 'overflow')}\n"
                   f"{pipeline.log_tail('learner')}")
        # the 50 rows and the 10 that came while paused; row 1000 is refused, not learned
        assert learned(pg_conn, "overflow") == 60
        assert counters(pg_conn, "overflow")["non_finite"] == 1
        wait_until(lambda: _status(settings).get("paused") is None, timeout_s=30)
        assert f"{paused_metric} 0.0" in _learner_metrics(settings)
        refused = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
        assert [(d.stage, d.reason, orjson.loads(d.key)) for d in refused] == [
            ("learner", "non_finite_model", {"id": 1000})]

        insert_xy(pg_conn, table, range(3000, 3010))
        wait_until(lambda: len(_predictions(pg_conn, range(3000, 3010))) == 10
                   and min(v for v, _ in _predictions(pg_conn, range(3000, 3010))) > good,
                   timeout_s=60)
        assert all(math.isfinite(p) for _, p in _predictions(pg_conn, range(3000, 3010)))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("huge_row", ["last", "first"])
def test_a_model_broken_before_its_first_version_rolls_back_to_the_fresh_model(settings, pg_conn,
                                                                               tmp_path, huge_row):
    """The overflowing row comes before any version: there is no good version to go back to,
    so the pause names version 0 -- the model as deployed -- and rolling back to it works
    (it answered "has no model version 0" and the deployment never learned again).

    ``first``: x = 1e300 as the very first label left a finite model (the scaler's mean at
    1e300; here 1e200, 1e50 to the fourth power) that was checkpointed, and then refused every
    ordinary row, for good; a state number whose square overflows now counts as broken, so the
    row that put it there is the one refused."""
    # one transaction, learned well within a checkpoint interval: no version precedes the row
    # (3 s was too short for a custom model, whose first batch came later: a version of
    # positions alone was written first)
    settings = fast(settings).model_copy(update={"learner_checkpoint_s": 10.0})
    table = deployed_xy_table(settings, pg_conn, "overflow0", "overflow0", QUARTIC)
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            if huge_row == "first":
                pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, %s, 5.0)", (HUGE,))
            insert_xy(pg_conn, table, range(20))
            if huge_row == "last":
                pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, %s, 5.0)", (HUGE,))

        def paused() -> dict | None:
            done = rowcast_cli(settings, "status", "--json", "--samples", "1")
            return next(d for d in orjson.loads(done.stdout)["deployments"]
                        if d["name"] == "overflow0").get("paused")

        wait_until(lambda: (paused() or {}).get("reason") == "non_finite", timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        assert latest_version(pg_conn, "overflow0") is None
        assert "rowcast model rollback overflow0 0" in pipeline.log_tail("learner")
        screen = rowcast_cli(settings, "status", "--samples", "1").stdout  # said "rollback -"
        assert "the fresh model keeps serving — `rowcast model rollback overflow0 0`" in screen

        rollback = rowcast_cli(settings, "model", "rollback", "overflow0", "0")
        assert rollback.returncode == 0, rollback.stderr
        assert "fresh model" in rollback.stdout
        wait_until(lambda: learned(pg_conn, "overflow0") >= 20, timeout_s=90,
                   message=lambda: f"{latest_version(pg_conn, 'overflow0')}\n"
                   f"{pipeline.log_tail('learner')}")
        assert learned(pg_conn, "overflow0") == 20  # row 1000 refused, the 20 others learned
        assert counters(pg_conn, "overflow0")["non_finite"] == 1
        assert latest_version(pg_conn, "overflow0")[2]["progressive"]  # metrics of the 20 rows
        wait_until(lambda: paused() is None, timeout_s=30)
        note = pg_conn.execute("SELECT note FROM rowcast.model_versions WHERE deployment = "
                               "'overflow0' ORDER BY version LIMIT 1").fetchone()[0]
        assert note == "rolled back to version 0"

        # and a version that never existed is still a one-line error
        missing = rowcast_cli(settings, "model", "rollback", "overflow0", "999")
        assert missing.returncode != 0 and "999" in missing.stderr


@pytest.mark.timeout(300)
def test_a_label_too_large_to_learn_is_a_dead_letter_and_learning_goes_on(settings, pg_conn,
                                                                          tmp_path):
    """A label of 1e300 (a valid double) is refused by the scorer as ``bad_label``: river's
    squared error of it overflows, which paused learning of the deployment until a rollback
    (found by hand). The row is still scored and the labels after it are learned."""
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "hugelabel", "hugelabel")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(20))
        pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, 1.0, 1e300)")
        insert_xy(pg_conn, table, range(20, 40))
        wait_until(lambda: learned(pg_conn, "hugelabel") >= 40, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
        assert [(d.stage, d.reason, orjson.loads(d.key)) for d in letters] == [
            ("score", "bad_label", {"id": 1000})]
        assert "cannot be learned" in letters[0].error
        scored = pg_conn.execute("SELECT score FROM rowcast.predictions WHERE deployment = "
                                 "'hugelabel' AND pk = '{\"id\": 1000}'").fetchone()
        assert scored is not None and math.isfinite(scored[0])
        assert counters(pg_conn, "hugelabel")["non_finite"] == 0
        done = rowcast_cli(settings, "status", "--json", "--samples", "1")
        status = next(d for d in orjson.loads(done.stdout)["deployments"]
                      if d["name"] == "hugelabel")
        assert status.get("paused") is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("huge", ["1e200", "-1.7976931348623157e308"])
def test_a_feature_too_large_to_learn_from_is_a_dead_letter_and_learning_goes_on(
        settings, pg_conn, tmp_path, huge) -> None:
    """A feature of 1e200 (a valid double: a sentinel, an error) overflowed the catalog
    model's scaler, and learning of the whole deployment paused until an operator rolled back
    (found by hand, on a `numeric` column). The scorer refuses the row as ``bad_feature``,
    naming the limit; the rows around it are scored and learned, and nothing pauses."""
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "hugefeature", "hugefeature")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(20))
        pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, %s::float8, 5.0)", (huge,))
        insert_xy(pg_conn, table, range(20, 40))
        wait_until(lambda: learned(pg_conn, "hugefeature") >= 40, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
        assert [(d.stage, d.reason, orjson.loads(d.key)) for d in letters] == [
            ("score", "bad_feature", {"id": 1000})]
        assert "column 'x'" in letters[0].error and "beyond ±1e+50" in letters[0].error
        assert counters(pg_conn, "hugefeature")["non_finite"] == 0
        done = rowcast_cli(settings, "status", "--json", "--samples", "1")
        status = next(d for d in orjson.loads(done.stdout)["deployments"]
                      if d["name"] == "hugefeature")
        assert status.get("paused") is None
        insert_xy(pg_conn, table, range(40, 50))
        wait_until(lambda: learned(pg_conn, "hugefeature") >= 50, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
