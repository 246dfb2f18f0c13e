"""The whole path on real services: INSERT → CDC → Kafka → faust scorer → Kafka → sink → Postgres."""

from __future__ import annotations

import random
import re
import urllib.request
import uuid

import orjson
import pytest
from river import evaluate
from river import metrics as river_metrics

from rowcast.core.label_events import BATCH_HEADER, decode_batch
from rowcast.models.catalog import get_model
from rowcast.models.snapshot import load_snapshot, signing_key
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import latest_version
from tests.helpers.waiting import wait_until

N_ROWS = 300


def label_docs(records: list) -> list[dict]:
    """The label events of the labels topic's records, in order: a batch record (issue 15)
    holds many, a single-event record one."""
    docs: list[dict] = []
    for m in records:
        if any(name == BATCH_HEADER for name, _ in m.headers or ()):
            docs += [e.to_doc() for e in decode_batch(m.value)]
        else:
            docs.append(orjson.loads(m.value))
    return docs


def make_rows(n: int, seed: int = 3) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        age = rng.randint(18, 80)
        income = f"{rng.uniform(1000, 90000):.2f}"
        credit = rng.randint(300, 850) if rng.random() > 0.1 else None
        amount = round(10 + 0.001 * float(income) + 0.05 * (credit or 500) + rng.gauss(0, 3), 3)
        rows.append((i, age, income, credit, amount))
    return rows


def features_of(row: tuple) -> dict[str, float]:
    _, age, income, credit, _ = row
    x = {"age": float(age), "income": float(income)}
    if credit is not None:
        x["credit_score"] = float(credit)
    return x


def served_version(settings, deployment: str) -> float:
    """The model version the worker serves, from its /metrics (0 before any snapshot)."""
    try:
        with urllib.request.urlopen(f"http://{settings.bind_host}:"
                                    f"{settings.worker_metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0
    match = re.search(rf'rowcast_model_version_served\{{deployment="{deployment}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0


def served_estimators(conn, settings, deployment: str) -> dict[int, object]:
    """Every stored version's estimator (verified), plus the untrained version 0."""
    key = signing_key(settings)
    out = {0: get_model("linear_regression").build()}
    for version, blob in conn.execute("SELECT version, snapshot FROM rowcast.model_versions "
                                      "WHERE deployment = %s AND snapshot IS NOT NULL",
                                      (deployment,)):
        out[version] = load_snapshot(bytes(blob), key)["estimator"]
    return out


@pytest.mark.timeout(240)
def test_each_inserted_row_gets_exactly_one_prediction_equal_to_river(settings, pg_conn, tmp_path):
    settings = settings.model_copy(update={"topic_partitions": 1})
    table = f"customers_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(
        f"CREATE TABLE public.{table} (id bigint PRIMARY KEY, age integer NOT NULL, "
        "income numeric(12,2) NOT NULL, credit_score integer, purchase_amount double precision, "
        "created_at timestamptz NOT NULL DEFAULT now())")
    done = deploy_cli(settings, "spend", "--table", table, "--target", "purchase_amount",
                      "--features", "age,income,credit_score", "--model", "linear_regression")
    assert done.returncode == 0, done.stderr
    assert "deployed spend" in done.stdout
    assert settings.postgres_dsn.get_secret_value() not in done.stdout + done.stderr

    rows = make_rows(N_ROWS)
    insert = (f"INSERT INTO public.{table} (id, age, income, credit_score, purchase_amount) "
              "VALUES (%s, %s, %s, %s, %s)")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        # a mix of transaction shapes: one big transaction, then single-row autocommits
        with pg_conn.transaction():
            pg_conn.cursor().executemany(insert, rows[:200])
        # the learner checkpoints what it learned, the worker hot-swaps to it...
        wait_until(lambda: served_version(settings, "spend") > 0, timeout_s=90,
                   message=lambda: f"{latest_version(pg_conn, 'spend')}\n"
                   f"{pipeline.log_tail('learner')}\n{pipeline.log_tail('worker')}")
        # ...and scores the next rows with it
        for row in rows[200:]:
            pg_conn.execute(insert, row)

        def scored() -> int:
            assert all(pipeline.alive().values()), {n: pipeline.log_tail(n) for n in pipeline.procs}
            return pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                                   "WHERE deployment = 'spend'").fetchone()[0]

        wait_until(lambda: scored() >= N_ROWS, timeout_s=120,
                   message=lambda: f"{scored()} of {N_ROWS} rows scored")
        on_topic = drain(settings, settings.predictions_topic("spend"), N_ROWS)
        # the single learner learns every label once, and checkpoints it as a model version
        wait_until(lambda: (latest_version(pg_conn, "spend") or (0, 0))[1] >= N_ROWS,
                   timeout_s=60, message=lambda: f"learned: {latest_version(pg_conn, 'spend')}"
                   f"\n{pipeline.log_tail('learner')}")
        label_events = drain(settings, settings.labels_topic("spend"), N_ROWS,
                             count=lambda records: len(label_docs(records)))

    stored = pg_conn.execute(
        "SELECT (pk->>'id')::bigint, score, model_version, source_table, "
        "written_at >= source_committed_at FROM rowcast.predictions WHERE deployment = 'spend'"
    ).fetchall()
    assert sorted(r[0] for r in stored) == [r[0] for r in rows]  # exactly one row per key
    assert all(r[3] == table and r[4] for r in stored)

    topic_keys = [orjson.loads(m.key)["id"] for m in on_topic]
    assert sorted(topic_keys) == [r[0] for r in rows]  # exactly once on the topic

    # every prediction is what the model version it names says about the row
    by_id = {r[0]: r for r in rows}
    estimators = served_estimators(pg_conn, settings, "spend")
    versions_seen = [orjson.loads(m.value)["model_version"] for m in on_topic]
    assert versions_seen == sorted(versions_seen)  # one partition: versions only move forward
    for key, score, version, *_ in stored:
        expected = estimators[version].predict_one(features_of(by_id[key]))
        assert score == pytest.approx(expected, rel=1e-9, abs=1e-9), (key, version)
    assert max(versions_seen) > 0  # rows were scored by learned versions, hot-swapped in

    # progressive validation equals river's on the rows in the order the learner saw them
    version, samples, metrics = latest_version(pg_conn, "spend")
    assert samples == N_ROWS and metrics["labels"] == N_ROWS
    events = label_docs(label_events)
    order = [e["key"]["id"] for e in events if e["kind"] != "watermark"]  # issue 14
    assert sorted(order) == [r[0] for r in rows]
    dataset = [(features_of(by_id[i]), by_id[i][4]) for i in order]
    river_mae = evaluate.progressive_val_score(dataset, get_model("linear_regression").build(),
                                               river_metrics.MAE())
    assert metrics["progressive"]["MAE"] == river_mae.get()
