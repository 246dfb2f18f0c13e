"""A primary key PostgreSQL can hold in the source table but not in rowcast's own keyed tables
(2,656 characters of md5 digests: ``index row size ... exceeds btree version 4 maximum 2704``):
that row goes to the dead-letter topic, and every other row of the deployment -- and of every
other deployment -- is still scored, stored and learned. The sink used to exit on it, and again
at every restart, so no deployment got predictions any more."""

from __future__ import annotations

import orjson
import pytest

from rowcast.core.dead_letter import DeadLetter
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import fast, learned
from tests.helpers.waiting import wait_until


@pytest.mark.timeout(300)
def test_a_key_too_large_for_rowcasts_tables_is_dead_lettered_and_the_rest_flows(
        settings, pg_conn, tmp_path):
    settings = fast(settings)
    pg_conn.execute("CREATE TABLE public.longkey (k text PRIMARY KEY, x float8, y float8)")
    assert deploy_cli(settings, "longkey", "--table", "longkey", "--target", "y").returncode == 0
    # 83 md5 digests: 2,656 characters, what a user's table held (its own index takes them)
    huge = pg_conn.execute("SELECT string_agg(md5(i::text), '') FROM generate_series(1, 83) i"
                           ).fetchone()[0]
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        with pg_conn.transaction():
            for i in range(20):
                pg_conn.execute("INSERT INTO public.longkey VALUES (%s, %s, %s)",
                                (f"k{i}", float(i), 2.0 * i))
                if i == 10:
                    pg_conn.execute("INSERT INTO public.longkey VALUES (%s, 1, 2)", (huge,))

        def stored() -> int:
            return pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                                   "WHERE deployment = 'longkey'").fetchone()[0]

        # its label is learned (rowcast.pending_labels holds the key); its prediction is not stored
        wait_until(lambda: stored() == 20 and learned(pg_conn, "longkey") == 21, timeout_s=120,
                   message=lambda: f"{stored()} stored, {learned(pg_conn, 'longkey')} learned\n"
                   f"sink: {pipeline.log_tail('sink')}\nlearner: {pipeline.log_tail('learner')}")
        pg_conn.execute("INSERT INTO public.longkey VALUES ('after', 3, 6)")
        wait_until(lambda: stored() == 21 and learned(pg_conn, "longkey") == 22, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        assert all(pipeline.alive().values())
    letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
    assert [(d.stage, d.reason) for d in letters] == [("sink", "unstorable_prediction")]
    assert orjson.loads(letters[0].key) == {"k": huge}
