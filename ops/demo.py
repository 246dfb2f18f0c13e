"""The demo: a sample app inserting customers, a model learning their spend, live on screen.

Starts the dev stack, creates ``public.customers`` (age, income, credit score, purchase amount),
deploys ``customer_spend`` (standardised linear regression, target ``purchase_amount``), runs the
three rowcast processes, inserts rows at a steady rate and prints, every second, how many rows
were scored, the latest predictions next to the real amounts, the latency from commit to
prediction row, and each stage's lag.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from rowcast.connectors.kafka_clients import ensure_deployment_topics, ensure_topics, make_admin
from rowcast.connectors.lag import consumer_lag, slot_lag
from rowcast.connectors.postgres import connect
from rowcast.connectors.registry import create_deployment
from rowcast.connectors.schema import init_database
from rowcast.core.settings import Settings
from rowcast.ops.devstack.stack import DevStack
from rowcast.ops.pipeline import Pipeline

DEPLOYMENT = "customer_spend"

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS public.customers (
    id               bigserial PRIMARY KEY,
    age              integer NOT NULL,
    income           numeric(12, 2) NOT NULL,
    credit_score     integer,
    purchase_amount  double precision,
    created_at       timestamptz NOT NULL DEFAULT now()
)
"""


def sample_customer(rng: random.Random) -> tuple[int, float, int | None, float]:
    """A customer whose spend depends on income and credit score, plus noise."""
    age = rng.randint(18, 80)
    income = round(rng.lognormvariate(10.5, 0.4), 2)
    credit = rng.randint(300, 850) if rng.random() > 0.05 else None
    amount = 20 + 0.002 * income + 0.1 * (credit or 600) - 0.3 * age + rng.gauss(0, 10)
    return age, income, credit, round(max(amount, 0.0), 2)


def prepare(settings: Settings) -> None:
    with connect(settings) as conn:
        init_database(conn, settings, replace_modules=True)
        conn.execute(TABLE_DDL)
        create_deployment(conn, DEPLOYMENT, "public.customers", "purchase_amount",
                          ["age", "income", "credit_score"], "linear_regression")
    ensure_topics(settings, [settings.source_topic("public", "customers")])
    ensure_deployment_topics(settings, [DEPLOYMENT])


SCREEN_SQL = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM written_at - source_committed_at))
         FILTER (WHERE written_at > clock_timestamp() - interval '10 seconds'),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM written_at - source_committed_at))
         FILTER (WHERE written_at > clock_timestamp() - interval '10 seconds')
FROM rowcast.predictions WHERE deployment = %s
"""
LATEST_SQL = """
SELECT c.id, p.score, c.purchase_amount FROM rowcast.predictions p
JOIN public.customers c ON p.pk = jsonb_build_object('id', c.id)
WHERE p.deployment = %s ORDER BY p.source_lsn DESC LIMIT 5
"""


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _total_lag(admin, group: str, topic: str) -> str:
    """A stage's lag, or ``?`` while the broker cannot tell yet (e.g. its coordinator loads)."""
    try:
        return str(sum(p.lag for p in consumer_lag(admin, group, [topic])))
    except KafkaError:
        return "?"


def render(conn: psycopg.Connection, settings: Settings, inserted: int, admin) -> str:
    scored, p50, p99 = conn.execute(SCREEN_SQL, (DEPLOYMENT,)).fetchone()
    latest = conn.execute(LATEST_SQL, (DEPLOYMENT,)).fetchall()
    slot = slot_lag(conn, settings.slot_name)
    scorer = _total_lag(admin, settings.scorer_group, settings.source_topic("public", "customers"))
    sink = _total_lag(admin, settings.sink_group, settings.predictions_topic(DEPLOYMENT))
    slot_text = f"{slot.behind_bytes} B / {slot.behind_seconds:.1f} s" if slot else "-"
    model = conn.execute("SELECT version, samples, metrics->'progressive'->>'MAE' "
                         "FROM rowcast.model_metrics WHERE deployment = %s", (DEPLOYMENT,)).fetchone()
    model_text = (f"model v{model[0]}: learned {model[1]} labels, online MAE {float(model[2]):.2f}"
                  if model else "model: untrained (the learner has not checkpointed yet)")
    lines = [
        f"rows inserted {inserted:>7}   scored {scored:>7}   "
        f"commit→prediction p50 {_ms(p50)}  p99 {_ms(p99)} (last 10 s)",
        f"lag: slot {slot_text}   scorer {scorer} events   sink {sink} predictions",
        model_text,
        "latest:  id   predicted   actual",
    ]
    lines += [f"     {i:>7}   {s:>9.2f}   {a:>6.2f}" for i, s, a in latest]
    return "\n".join(lines)


@contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, a service manager, a closed terminal) stop the demo as
    Ctrl-C does, through its cleanup: otherwise Python dies at once and leaves the four rowcast
    processes, Postgres and Kafka running. Signal handlers belong to the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for s in _STOP_SIGNALS:
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While cleaning up, a second signal must not cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (*_STOP_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def run_demo(settings: Settings, rows_per_second: float, duration_s: float | None,
             keep_stack: bool) -> None:
    """Run the demo until ``duration_s`` passes, Ctrl-C, SIGTERM or SIGHUP; then stop the
    pipeline and (unless ``keep_stack``) the dev stack, whatever phase it was in."""
    stack = DevStack(settings)
    pipeline, admin = None, None
    with _signals_stop():
        try:
            print("starting the dev stack (Postgres + Kafka)...", flush=True)
            stack.up()
            prepare(settings)
            pipeline = Pipeline(settings, settings.state_dir / "logs").start()
            print(f"deployed {DEPLOYMENT}; inserting {rows_per_second:g} rows/s "
                  f"(logs in {settings.state_dir / 'logs'}); Ctrl-C to stop", flush=True)
            admin = make_admin(settings)
            _insert_and_watch(settings, pipeline, admin, rows_per_second, duration_s)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            with _signals_ignored():
                if admin is not None:
                    admin.close()
                if pipeline is not None:
                    pipeline.stop()
                if not keep_stack:
                    stack.down()


def _insert_and_watch(settings: Settings, pipeline: Pipeline, admin: KafkaAdminClient,
                      rows_per_second: float, duration_s: float | None) -> None:
    rng = random.Random(7)
    inserted, started = 0, time.monotonic()
    next_screen = started + 1.0
    with connect(settings) as conn:
        while duration_s is None or time.monotonic() - started < duration_s:
            due = int((time.monotonic() - started) * rows_per_second) - inserted
            for _ in range(max(due, 0)):
                conn.execute("INSERT INTO public.customers (age, income, credit_score, "
                             "purchase_amount) VALUES (%s, %s, %s, %s)", sample_customer(rng))
                inserted += 1
            if time.monotonic() >= next_screen:
                print("\n" + render(conn, settings, inserted, admin), flush=True)
                next_screen += 1.0
            dead = [n for n, up in pipeline.alive().items() if not up]
            if dead:
                raise SystemExit(f"rowcast {dead[0]} stopped:\n{pipeline.log_tail(dead[0])}")
            time.sleep(min(0.02, 1.0 / max(rows_per_second, 1.0)))
