"""Scorers follow the learners: read the compacted models topic and hot-swap snapshots.

Every worker reads the whole ``<prefix>.models`` topic (no consumer group: each needs every
record). Records keyed ``<deployment>`` are the learner's newest version; records keyed
``<deployment>#pin`` are pins set by ``rowcast model pin`` (a tombstone unpins). A pin wins
over the learner's versions until it is removed; otherwise a version is installed only when
it is not older than the one served, so, per deployment and generation, the versions in the
predictions only move forward.

Every record's signature (:meth:`rowcast.core.model_record.ModelRecord.verify`: deployment,
generation, version, pin flag and snapshot) is checked as it arrives; the snapshot itself is
verified and unpickled (:func:`rowcast.models.snapshot.load_snapshot`) only when a deployment this
worker serves needs it, so a worker holds the models it serves, not every model on the topic.
A record that fails either check is logged, counted (``rowcast_snapshots_refused_total``) and
sent to the dead-letter topic, and the previous version keeps serving. A tombstone under a
deployment's key (``rowcast undeploy``) drops what the feed kept for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.connectors.kafka_clients import make_consumer, make_producer
from rowcast.connectors.postgres import connect
from rowcast.connectors.registry import clear_snapshot_refusal, record_snapshot_refusal
from rowcast.core import metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import SnapshotError
from rowcast.core.model_record import ModelRecord, parse_key
from rowcast.core.settings import Settings
from rowcast.models.deployment import Deployment
from rowcast.models.serving import ServingSet
from rowcast.models.snapshot import load_snapshot

log = logging.getLogger(__name__)


Entry = tuple[str, int, Any]  # generation, version, estimator


class ModelFeed:
    """What each deployment should serve, kept current from the models topic."""

    def __init__(self, settings: Settings, key: bytes) -> None:
        self.settings = settings
        self.key = key
        self.latest: dict[str, ModelRecord] = {}  # verified records, not yet unpickled
        self.pins: dict[str, ModelRecord] = {}
        self._loaded: dict[tuple[str, bool], Entry] = {}  # unpickled, for served deployments
        self._refused: set[str] = set()  # served deployments whose records we could not verify
        self.serving: ServingSet | None = None
        self.consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
        tp = TopicPartition(settings.models_topic, 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self._tp = tp
        self._lock = threading.RLock()  # the feed's state
        self._client_lock = threading.Lock()  # kafka-python consumers are not thread-safe
        self._advanced = threading.Condition()
        self._position = 0

    def lookup(self, deployment: Deployment) -> tuple[int, Any] | None:
        """The (version, estimator) to serve for this deployment, if any was published; the
        snapshot is unpickled here, on first use, and kept while it is the one to serve."""
        with self._lock:
            for pin, records in ((True, self.pins), (False, self.latest)):
                record = records.get(deployment.name)
                if record is None or record.generation != deployment.generation:
                    continue
                loaded = self._loaded.get((deployment.name, pin))
                if loaded is None or loaded[:2] != (record.generation, record.version):
                    try:
                        payload = load_snapshot(record.snapshot, self.key)
                    except SnapshotError as exc:
                        del records[deployment.name]
                        self._refuse(deployment.name, "snapshot", str(exc), record.kafka_key(),
                                     record.encode(self.key), -1)
                        continue
                    estimator = payload["estimator"] if isinstance(payload, dict) else payload
                    loaded = (record.generation, record.version, estimator)
                    self._loaded[(deployment.name, pin)] = loaded
                return loaded[1], loaded[2]
            return None

    def serve(self, serving: ServingSet) -> None:
        self.serving = serving

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read up to the end of the topic as it is now (call before scoring starts)."""
        deadline = time.monotonic() + timeout_s
        try:
            end = self.consumer.end_offsets([self._tp], timeout_ms=int(timeout_s * 1000))[self._tp]
        except KafkaError as exc:  # start scoring with fresh models; the feed catches up later
            log.warning("model feed could not read the models topic's end: %s", exc)
            return
        while self._position < end and time.monotonic() < deadline:
            self.poll(timeout_ms=500)

    def sync(self, timeout_s: float = 10.0) -> bool:
        """While :meth:`run` is going: wait until every snapshot published before this call is
        applied. A worker calls it when partitions are assigned, so a partition that moves
        from another worker never goes back to an older version than that worker served."""
        deadline = time.monotonic() + timeout_s
        # bounded everywhere: this runs inside faust's partition assignment, which must not hang
        if not self._client_lock.acquire(timeout=timeout_s):
            return False
        try:
            end = self.consumer.end_offsets([self._tp], timeout_ms=int(timeout_s * 1000))[self._tp]
        except KafkaError as exc:
            log.warning("model feed could not read the models topic's end: %s", exc)
            return False
        finally:
            self._client_lock.release()
        with self._advanced:
            return self._advanced.wait_for(lambda: self._position >= end,
                                           timeout=max(deadline - time.monotonic(), 0.0))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll(timeout_ms=200)
            except Exception:  # keep serving the current versions; retry
                log.exception("model feed poll failed")
                stop.wait(1.0)

    def poll(self, timeout_ms: int) -> int:
        with self._client_lock:
            batch = self.consumer.poll(timeout_ms=timeout_ms)
            try:  # bounded: a broker coming back must not park the feed (and a sync) forever
                position = self.consumer.position(self._tp, timeout_ms=max(timeout_ms, 1000))
            except KafkaError:
                position = self._position
        n = 0
        for records in batch.values():
            for record in records:
                self.apply(record.key, record.value, record.offset)
                n += 1
        with self._advanced:
            self._position = position if position is not None else self._position
            self._advanced.notify_all()
        return n

    def apply(self, key: bytes | None, value: bytes | None, offset: int = -1) -> None:
        name, pin = parse_key(key)
        with self._lock:
            if value is None:
                self._loaded.pop((name, pin), None)
                if pin and self.pins.pop(name, None) is not None:
                    log.info("%s unpinned", name)
                    self._install(name)
                elif not pin:
                    self.latest.pop(name, None)  # undeployed: keep nothing of it
                return
            try:
                record = ModelRecord.decode(key, value)
                record.verify(self.key)
            except SnapshotError as exc:
                self._refuse(name, "signature", str(exc), key, value, offset)
                return
            if pin:
                self.pins[name] = record
                log.info("%s pinned to version %d", name, record.version)
            else:
                current = self.latest.get(name)
                if (current is not None and current.generation == record.generation
                        and record.version < current.version):
                    return  # an older version than the one served: versions only move forward
                self.latest[name] = record
            self._install(name)
            if name in self._refused:
                self._tell_status(name, None)

    def _tell_status(self, name: str, why: str | None) -> None:
        """Record (or, ``why`` None, clear) that this worker cannot verify the model records of
        a deployment it serves, for ``rowcast status`` and the dashboard (other processes)."""
        served = {m.deployment.name: m.deployment for m in self.serving.models()} \
            if self.serving is not None else {}
        if name not in served or (why is None and name not in self._refused):
            return
        try:
            with connect(self.settings) as conn:
                if why is None:
                    clear_snapshot_refusal(conn, name)
                    self._refused.discard(name)
                else:
                    record_snapshot_refusal(
                        conn, name, served[name].generation,
                        f"workers cannot verify its model snapshots ({why}); they keep serving "
                        "an older version: give every rowcast process the same "
                        "ROWCAST_SNAPSHOT_KEY (or ROWCAST_SNAPSHOT_KEY_FILE)")
                    self._refused.add(name)
        except Exception as exc:  # noqa: BLE001 - the log line and the metric still say it
            log.warning("cannot record the refusal for rowcast status: %s", exc)

    def _install(self, name: str) -> None:
        if self.serving is None:
            return
        for model in self.serving.models():
            d = model.deployment
            if d.name == name:
                chosen = self.lookup(d)
                if chosen is not None and (chosen[0], chosen[1]) != (model.version, model.estimator):
                    self.serving.install(name, d.generation, chosen[0], chosen[1])
                    metrics.MODEL_VERSION_SERVED.labels(name).set(chosen[0])

    def _refuse(self, name: str, reason: str, why: str, key: bytes | None, value: bytes,
                offset: int) -> None:
        log.error("refusing model snapshot for %s: %s (still serving the previous version)",
                  name, why)
        metrics.SNAPSHOTS_REFUSED.labels(name, reason).inc()
        self._tell_status(name, why)
        letter = DeadLetter("model_feed", "bad_snapshot", why, self.settings.models_topic, 0, offset,
                            key, value[:4096])
        producer = make_producer(self.settings)
        try:
            DeadLetterWriter(producer, self.settings.dlq_topic).send(letter)
            producer.flush(timeout=10)
        finally:
            producer.close()
