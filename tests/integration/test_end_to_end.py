"""The whole path on real services: INSERT → CDC → Kafka → faust scorer → Kafka → sink → Postgres."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid

import orjson
import pytest

from models.catalog import get_model
from rowcast.pipeline import Pipeline
from tests.kafka_reading import drain
from tests.waiting import wait_until

N_ROWS = 300


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


def deploy_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "rowcast", "deploy", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def reference_scores(rows: list[tuple]) -> dict[int, float]:
    """The same catalog pipeline, fed the same rows in the same order: predict, then learn."""
    model = get_model("linear_regression").build()
    out = {}
    for i, age, income, credit, amount in rows:
        x = {"age": float(age), "income": float(income)}
        if credit is not None:
            x["credit_score"] = float(credit)
        out[i] = model.predict_one(x)
        model.learn_one(x, amount)
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
        for row in rows[200:]:
            pg_conn.execute(insert, row)

        def scored() -> int:
            assert all(pipeline.alive().values()), {n: pipeline.log_tail(n) for n in pipeline.procs}
            return pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                                   "WHERE deployment = 'spend'").fetchone()[0]

        wait_until(lambda: scored() >= N_ROWS, timeout_s=120,
                   message=lambda: f"{scored()} of {N_ROWS} rows scored")
        on_topic = drain(settings, settings.predictions_topic("spend"), N_ROWS)

    stored = pg_conn.execute(
        "SELECT (pk->>'id')::bigint, score, model_version, source_table, "
        "written_at >= source_committed_at FROM rowcast.predictions WHERE deployment = 'spend'"
    ).fetchall()
    assert sorted(r[0] for r in stored) == [r[0] for r in rows]  # exactly one row per key
    assert all(r[3] == table and r[2] == 1 and r[4] for r in stored)

    topic_keys = [orjson.loads(m.key)["id"] for m in on_topic]
    assert sorted(topic_keys) == [r[0] for r in rows]  # exactly once on the topic

    expected = reference_scores(rows)
    from_topic = {orjson.loads(m.value)["key"]["id"]: orjson.loads(m.value)["score"]
                  for m in on_topic}
    for key, score, *_ in stored:
        assert score == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key
        assert from_topic[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key
    assert len({round(s, 6) for s in expected.values()}) > N_ROWS // 2  # the model really learned
