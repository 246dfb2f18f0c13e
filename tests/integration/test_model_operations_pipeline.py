"""Model operations on the real pipeline (issue 17): drift found near a known drift point,
a challenger promoted on evidence with the scorers switching at one version, and rollback
across the switch."""

from __future__ import annotations

import random
import re
import urllib.request
import uuid

import orjson
import pytest
from psycopg import sql
from river.datasets import synth

from rowcast.connectors.schema import init_database
from rowcast.models.catalog import get_model
from rowcast.models.operations import ModelOperations, Z
from rowcast.models.snapshot import load_snapshot, signing_key
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import fast, latest_version, learned
from tests.helpers.river_reference import progressive
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

DRIFT_AT, DRIFT_ROWS = 1500, 3000  # Agrawal function 0 -> 4, switching around row 1500
TOLERANCE = 200  # labels after the drift point within which the detection must come


def agrawal_drift() -> list[tuple[dict, int]]:
    stream = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=42),
        drift_stream=synth.Agrawal(classification_function=4, seed=42),
        position=DRIFT_AT, width=20, seed=42)
    return list(stream.take(DRIFT_ROWS))


def expected_detections(rows: list[tuple[dict, int]], model: str) -> list[int]:
    """Where the same detector on the same model, fed the rows in commit order, fires."""
    estimator, ops, found = get_model(model).build(), ModelOperations("multiclass"), []
    for x, y in rows:
        p = estimator.predict_one(x)
        event = ops.observe(None if p is None else float(p != y))
        if event is not None:
            found.append(event.at_label)
        estimator.learn_one(x, y)
    return found


def insert_rows(conn, table: str, columns: list[str], rows: list[tuple], per_txn: int) -> None:
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)))
    for start in range(0, len(rows), per_txn):
        with conn.transaction():
            conn.cursor().executemany(insert, rows[start:start + per_txn])


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def events(conn, deployment: str, kind: str) -> list[tuple]:
    return conn.execute("SELECT version, at_label, challenger, detail FROM rowcast.model_events "
                        "WHERE deployment = %s AND kind = %s ORDER BY id",
                        (deployment, kind)).fetchall()


def challengers(conn, deployment: str) -> dict[str, tuple[str, bool]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT name, model, auto_promote FROM rowcast.challengers WHERE deployment = %s",
        (deployment,))}


def version_models(conn, deployment: str) -> dict[int, str]:
    return dict(conn.execute("SELECT version, model FROM rowcast.model_versions "
                             "WHERE deployment = %s", (deployment,)).fetchall())


@pytest.mark.timeout(360)
def test_a_known_concept_drift_is_detected_near_its_point_and_shown(settings, pg_conn, tmp_path):
    settings = fast(settings)
    init_database(pg_conn, settings)
    name = f"agrawal_{uuid.uuid4().hex[:4]}"
    table = f"loans_{uuid.uuid4().hex[:6]}"
    rows = agrawal_drift()
    features = list(rows[0][0])
    pg_conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {}, grp int)").format(
        sql.Identifier(table), sql.SQL(", ").join(
            sql.SQL("{} float8").format(sql.Identifier(f)) for f in features)))
    done = deploy_cli(settings, name, "--table", table, "--target", "grp", "--features",
                      ",".join(features), "--model", "hoeffding_tree_classifier",
                      "--drift-detector", "adwin", "--on-drift", "none")
    assert done.returncode == 0, done.stderr
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_rows(pg_conn, table, ["id", *features, "grp"],
                    [(i, *(float(x[f]) for f in features), y) for i, (x, y) in enumerate(rows)],
                    per_txn=100)
        wait_until(lambda: learned(pg_conn, name) >= len(rows), timeout_s=200,
                   message=lambda: f"{latest_version(pg_conn, name)}\n"
                   f"{pipeline.log_tail('learner')}")
        drift_metric = metric_value(metrics_text(settings.learner_metrics_port),
                                    "rowcast_drift_total", deployment=name, detector="adwin")
    found = events(pg_conn, name, "drift")
    assert found, f"no drift event; expected near label {DRIFT_AT}"
    at = [f[1] for f in found]
    assert all(a > DRIFT_AT for a in at), f"drift reported before the drift point: {at}"
    assert at[0] <= DRIFT_AT + TOLERANCE, at
    # learned in commit order, the detector fires exactly where it does on the same stream
    assert at == expected_detections(rows, "hoeffding_tree_classifier")
    version, _, _, detail = found[0]
    assert detail["detector"] == "adwin" and detail["loss_after"] > detail["loss_before"]
    assert drift_metric == len(found)

    shown = rowcast_cli(settings, "model", "events", name)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"v{version}\s+drift\s+label {at[0]}\b", shown.stdout), shown.stdout
    status = rowcast_cli(settings, "status")
    assert f"DRIFT {name}: {len(found)} detection(s), the last at label {at[-1]}" \
        in status.stdout, status.stdout
    versions_out = rowcast_cli(settings, "model", "versions", name, "--limit", "1000")
    assert re.search(rf"^\s*{version}\s.*drift detected", versions_out.stdout, re.M), \
        versions_out.stdout


CURVE_ROWS, AFTER_ROWS = 1500, 300


def curve(i: int) -> tuple[float, float]:
    """y = x^2 on x in [-3, 3]: a straight line cannot follow it, a tree with linear leaves can."""
    x = random.Random(i).uniform(-3.0, 3.0)
    return x, x * x


def insert_curve(conn, table: str, ids: range) -> None:
    for start in range(ids.start, ids.stop, 50):
        with conn.transaction():
            conn.cursor().executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(sql.Identifier(table)),
                [(i, *curve(i)) for i in range(start, min(start + 50, ids.stop))])


def predictions(conn, deployment: str) -> dict[int, tuple[int, float]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT (pk->>'id')::int, model_version, score FROM rowcast.predictions "
        "WHERE deployment = %s", (deployment,))}


def served_version(settings, deployment: str) -> float:
    return metric_value(metrics_text(settings.worker_metrics_port),
                        "rowcast_model_version_served", deployment=deployment) or 0


def promoted_at(conn, deployment: str, after: int = 0) -> tuple | None:
    return next((e for e in events(conn, deployment, "promoted") if e[0] > after), None)


@pytest.mark.timeout(420)
def test_a_winning_challenger_is_promoted_at_one_version_and_rollback_crosses_the_switch(
        settings, pg_conn, tmp_path):
    settings = fast(settings)
    init_database(pg_conn, settings)
    name = f"curved_{uuid.uuid4().hex[:4]}"
    table = deployed_xy_table(settings, pg_conn, name, "curve")
    added = rowcast_cli(settings, "challenger", "add", name, "tree", "--model",
                        "hoeffding_tree_regressor", "--auto-promote")
    assert added.returncode == 0, added.stderr
    key = signing_key(settings)
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        # fewer rows than a promotion needs: linear serves a first version
        insert_curve(pg_conn, table, range(300))
        wait_until(lambda: learned(pg_conn, name) >= 300, timeout_s=120,
                   message=lambda: pipeline.log_tail("learner"))
        insert_curve(pg_conn, table, range(300, CURVE_ROWS))
        event = wait_until(lambda: promoted_at(pg_conn, name), timeout_s=200,
                           message=lambda: f"{latest_version(pg_conn, name)}\n"
                           f"{pipeline.log_tail('learner')}")
        v, at_label, challenger, detail = event
        evidence = detail["evidence"]
        assert challenger == "tree" and detail["how"] == "auto"
        assert evidence["wins"] and evidence["n"] >= 500 and evidence["z"] > Z
        assert evidence["challenger_loss"] < evidence["champion_loss"]
        models = version_models(pg_conn, name)
        assert models[v] == "hoeffding_tree_regressor"
        assert {m for ver, m in models.items() if ver < v} == {"linear_regression"}
        # once every scorer serves V, every row inserted is scored by V or later
        wait_until(lambda: served_version(settings, name) >= v, timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        insert_curve(pg_conn, table, range(CURVE_ROWS, CURVE_ROWS + AFTER_ROWS))
        total = CURVE_ROWS + AFTER_ROWS
        wait_until(lambda: len(predictions(pg_conn, name)) >= total
                   and learned(pg_conn, name) >= total, timeout_s=120,
                   message=lambda: f"{len(predictions(pg_conn, name))} scored, "
                   f"{latest_version(pg_conn, name)}")
        on_topic = drain(settings, settings.predictions_topic(name), total)

        scored = predictions(pg_conn, name)
        assert sorted(scored) == list(range(total))  # none skipped
        topic_keys = sorted(orjson.loads(r.key)["id"] for r in on_topic)
        assert topic_keys == list(range(total))  # none scored twice
        assert all(scored[i][0] >= v for i in range(CURVE_ROWS, total))
        models = version_models(pg_conn, name) | {0: "linear_regression"}  # 0: fresh model
        # each score is the answer of the version it names: linear before V, the tree from V
        by_version: dict[int, list[int]] = {}
        for i, (ver, _) in scored.items():
            by_version.setdefault(ver, []).append(i)
        assert {models[ver] for ver in by_version if ver < v} <= {"linear_regression"}
        assert {models[ver] for ver in by_version if ver >= v} == {"hoeffding_tree_regressor"}
        for ver, ids in by_version.items():
            blob = pg_conn.execute("SELECT snapshot FROM rowcast.model_versions WHERE "
                                   "deployment = %s AND version = %s", (name, ver)).fetchone()
            if blob is None or blob[0] is None:  # the fresh model, or thinned away
                continue
            blob = blob[0]
            estimator = load_snapshot(bytes(blob), key)["estimator"]
            assert type(estimator[-1]).__name__ == (
                "HoeffdingAdaptiveTreeRegressor" if ver >= v else "LinearRegression")
            for i in ids[:20]:
                assert scored[i][1] == pytest.approx(
                    estimator.predict_one({"x": curve(i)[0]}), rel=1e-9, abs=1e-9)

        compared = rowcast_cli(settings, "model", "compare", name)
        assert compared.returncode == 0, compared.stderr
        previous = detail["previous"]
        assert "champion (hoeffding_tree_regressor)" in compared.stdout, compared.stdout
        assert f"{previous} (linear_regression)" in compared.stdout, compared.stdout

        # promoting the old champion back: linear serves again from a later version
        back = rowcast_cli(settings, "model", "promote", name, previous)
        assert back.returncode == 0, back.stderr
        manual = wait_until(lambda: promoted_at(pg_conn, name, after=v), timeout_s=60,
                            message=lambda: f"{latest_version(pg_conn, name)}\n"
                            f"{pipeline.log_tail('learner')}")
        w = manual[0]
        assert manual[2] == previous and manual[3]["how"] == "manual" and w > v
        assert version_models(pg_conn, name)[w] == "linear_regression"

        # rollback across the switch: to the version before V, linear again at a new version
        latest = latest_version(pg_conn, name)[0]
        rolled = rowcast_cli(settings, "model", "rollback", name, str(v - 1))
        assert rolled.returncode == 0, rolled.stderr

        def rolled_back() -> tuple | None:
            return pg_conn.execute(
                "SELECT version, model FROM rowcast.model_versions WHERE deployment = %s AND "
                "version > %s AND note LIKE %s ORDER BY version LIMIT 1",
                (name, latest, f"rolled back to version {v - 1}%")).fetchone()

        r, model = wait_until(rolled_back, timeout_s=60,
                              message=lambda: pipeline.log_tail("learner"))
        assert model == "linear_regression"
        # the roles of that version come back with it: the tree is a challenger again, and it
        # does not promote itself straight back (the rollback was an operator's decision)
        assert challengers(pg_conn, name) == {"tree": ("hoeffding_tree_regressor", False)}
        # and to V: the tree again
        rolled = rowcast_cli(settings, "model", "rollback", name, str(v))
        assert rolled.returncode == 0, rolled.stderr
        r2 = wait_until(lambda: pg_conn.execute(
            "SELECT version, model FROM rowcast.model_versions WHERE deployment = %s AND "
            "version > %s ORDER BY version LIMIT 1", (name, r)).fetchone(), timeout_s=60,
            message=lambda: pipeline.log_tail("learner"))
        assert r2[1] == "hoeffding_tree_regressor"
        assert challengers(pg_conn, name) == {previous: ("linear_regression", False)}
        compared = rowcast_cli(settings, "model", "compare", name)
        assert f"{previous} (linear_regression)" in compared.stdout, compared.stdout


@pytest.mark.timeout(360)
def test_challengers_resume_from_the_checkpoint_after_the_learner_is_killed(
        settings, pg_conn, tmp_path):
    """kill -9 of the learner: the challenger goes on from its checkpointed state (its label
    count continues, it is not added again), so its metrics are river's over all the rows."""
    settings = fast(settings)
    init_database(pg_conn, settings)
    name = f"resumed_{uuid.uuid4().hex[:4]}"
    table = deployed_xy_table(settings, pg_conn, name, "resume")
    added = rowcast_cli(settings, "challenger", "add", name, "tree", "--model",
                        "hoeffding_tree_regressor")
    assert added.returncode == 0, added.stderr

    def tree_labels() -> int:
        v = latest_version(pg_conn, name)
        return 0 if v is None else v[2].get("challengers", {}).get("tree", {}).get("labels", 0)

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_curve(pg_conn, table, range(400))
        wait_until(lambda: tree_labels() >= 400, timeout_s=120,
                   message=lambda: f"{latest_version(pg_conn, name)}\n"
                   f"{pipeline.log_tail('learner')}")
        pipeline.kill("learner")
        insert_curve(pg_conn, table, range(400, 700))
        wait_until(lambda: len(predictions(pg_conn, name)) >= 700, timeout_s=120,
                   message=lambda: pipeline.log_tail("worker"))
        pipeline.start_one("learner")
        wait_until(lambda: learned(pg_conn, name) >= 700, timeout_s=120,
                   message=lambda: f"{latest_version(pg_conn, name)}\n"
                   f"{pipeline.log_tail('learner')}")
    _, samples, stored = latest_version(pg_conn, name)
    tree = stored["challengers"]["tree"]
    assert samples == 700 and tree["labels"] == 700  # not restarted at 0 (nor 300)
    added_events = events(pg_conn, name, "challenger_added")
    assert [e[2] for e in added_events] == ["tree"]  # added once, resumed after the kill
    rows = [({"x": x}, y) for x, y in map(curve, range(700))]
    expected = progressive(rows, "hoeffding_tree_regressor", list(tree["progressive"]))
    assert tree["progressive"] == pytest.approx(expected, rel=1e-9)
