"""The alternatives rowcast is measured against, on the same server in the same run.

- the application's single-row INSERT throughput with nothing attached;
- the same with a PL/Python ``BEFORE INSERT`` trigger scoring each row with an equivalent linear
  model stored as a pickle in a table, once cached in ``SD`` and once fetched per row (the classic
  tutorial approach);
- a naive poller that selects new rows by id every 100 ms, scores them and writes predictions.
"""

from __future__ import annotations

import multiprocessing
import pickle
import random
import time
from collections.abc import Callable

import psycopg
from river import linear_model, preprocessing

FEATURES = ("age", "income", "credit_score")

TABLE_DDL = """
CREATE TABLE {name} (
    id bigserial PRIMARY KEY, age integer NOT NULL, income numeric(12, 2) NOT NULL,
    credit_score integer, purchase_amount double precision, predicted double precision,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_score_{mode}() RETURNS trigger LANGUAGE plpython3u AS $$
import pickle
model = SD.get("model") if {cached} else None
if model is None:
    blob = plpy.execute("SELECT blob FROM bench_model WHERE id = 1")[0]["blob"]
    model = pickle.loads(blob)
    if {cached}:
        SD["model"] = model
row = TD["new"]
score = model["intercept"]
for name, weight in model["weights"].items():
    value = row[name]
    if value is not None:
        score += weight * (float(value) - model["mean"][name]) / model["std"][name]
row["predicted"] = score
return "MODIFY"
$$
"""


def sample_row(rng: random.Random) -> tuple:
    age = rng.randint(18, 80)
    income = round(rng.lognormvariate(10.5, 0.4), 2)
    credit = rng.randint(300, 850)
    return age, income, credit, round(20 + 0.002 * income + 0.1 * credit - 0.3 * age, 2)


def create_table(conn: psycopg.Connection, name: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
    conn.execute(TABLE_DDL.format(name=name))


def insert_throughput(dsn: str, table: str, n: int, seed: int = 1) -> float:
    """Single-row autocommit INSERTs from one connection, as an application writes: rows/s."""
    rng = random.Random(seed)
    rows = [sample_row(rng) for _ in range(n)]
    sql = (f"INSERT INTO {table} (age, income, credit_score, purchase_amount) "
           "VALUES (%s, %s, %s, %s)")
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        started = time.perf_counter()
        for row in rows:
            conn.execute(sql, row)
        return n / (time.perf_counter() - started)


def insert_runs(dsn: str, table: str, n: int, runs: int = 3,
                between: Callable[[], None] = lambda: None) -> list[float]:
    """:func:`insert_throughput` ``runs`` times (``between`` after each, e.g. until a pipeline
    has caught up, so every run starts from the same state): one sub-second run of a few
    thousand rows swings by tens of per cent on a shared 2-core box, so the figure is the
    median and the runs are printed beside it."""
    rates = []
    for i in range(runs):
        rates.append(insert_throughput(dsn, table, n, seed=1 + i))
        between()
    return rates


def export_linear_model(rows: int = 2000, seed: int = 2) -> dict:
    """A river StandardScaler | LinearRegression trained on sample rows, as plain numbers."""
    rng = random.Random(seed)
    scaler, linear = preprocessing.StandardScaler(), linear_model.LinearRegression()
    for _ in range(rows):
        age, income, credit, amount = sample_row(rng)
        x = {"age": float(age), "income": float(income), "credit_score": float(credit)}
        scaler.learn_one(x)
        linear.learn_one(scaler.transform_one(x), amount)
    return {
        "intercept": linear.intercept,
        "weights": {k: linear.weights.get(k, 0.0) for k in FEATURES},
        "mean": {k: scaler.means[k] for k in FEATURES},
        "std": {k: (scaler.vars[k] ** 0.5) or 1.0 for k in FEATURES},
    }


def install_trigger(conn: psycopg.Connection, table: str, cached: bool) -> None:
    mode = "cached" if cached else "per_row"
    conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    conn.execute("CREATE TABLE IF NOT EXISTS bench_model (id int PRIMARY KEY, blob bytea)")
    conn.execute("INSERT INTO bench_model VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                 "SET blob = EXCLUDED.blob", (pickle.dumps(export_linear_model()),))
    conn.execute(TRIGGER_FUNCTION.format(mode=mode, cached=cached))
    conn.execute(f"CREATE TRIGGER score BEFORE INSERT ON {table} FOR EACH ROW "
                 f"EXECUTE FUNCTION bench_score_{mode}()")


def plpython_available(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'plpython3u'"
                        ).fetchone() is not None


def _poll_loop(dsn: str, table: str, stop, interval_s: float) -> None:
    model = export_linear_model()
    last = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS poller_predictions (id bigint PRIMARY KEY, "
                     "score double precision, created_at timestamptz, "
                     "written_at timestamptz DEFAULT clock_timestamp())")
        while not stop.is_set():
            rows = conn.execute(f"SELECT id, age, income, credit_score, created_at FROM {table} "
                                "WHERE id > %s ORDER BY id LIMIT 10000", (last,)).fetchall()
            if rows:
                out = []
                for rid, age, income, credit, created in rows:
                    x = {"age": age, "income": income, "credit_score": credit}
                    score = model["intercept"] + sum(
                        w * (float(x[k]) - model["mean"][k]) / model["std"][k]
                        for k, w in model["weights"].items() if x[k] is not None)
                    out.append((rid, score, created))
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany("INSERT INTO poller_predictions (id, score, created_at) "
                                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", out)
                last = rows[-1][0]
            stop.wait(interval_s)  # naive: a fixed 100 ms between polls


class Poller:
    """The naive poller, in its own process (as it would be deployed)."""

    def __init__(self, dsn: str, table: str, interval_s: float = 0.1) -> None:
        self.stop = multiprocessing.Event()
        self.proc = multiprocessing.Process(target=_poll_loop, daemon=True,
                                            args=(dsn, table, self.stop, interval_s))

    def __enter__(self) -> Poller:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(timeout=10)
