"""Keep a worker's deployments in step with ``rowcast.deployments``, in commit order.

The promise: a row committed after a deployment was committed is scored by that deployment.
A deployment the worker cannot serve (its model does not build) is logged, counted in
``rowcast_deployment_failed`` and written to ``rowcast.deployment_failures``, which ``rowcast
status`` and the dashboard read: they run in other processes, and only a worker knows whether
its environment can import a custom model.
The follower remembers the database clock (``now()``) at its last read of the registry; before
a batch holding any event committed at or after that moment is scored, the registry is read
again. A periodic refresh also runs when no rows flow, to notice new tables and removals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import psycopg

from rowcast.connectors.kafka_clients import ensure_deployment_topics
from rowcast.connectors.registry import list_deployments, record_failures
from rowcast.core import metrics
from rowcast.core.envelope import ChangeEvent
from rowcast.core.settings import Settings
from rowcast.models.deployment import Deployment
from rowcast.models.serving import MODEL_UNAVAILABLE, ServingSet

log = logging.getLogger(__name__)


class DeploymentFollower:
    """Reads the registry into a :class:`ServingSet`; reports tables that need a subscription."""

    def __init__(self, settings: Settings, serving: ServingSet, known_until_us: int) -> None:
        self.settings = settings
        self.serving = serving
        self.known_until_us = known_until_us
        self.new_tables: set[tuple[str, str]] = set()
        self.topics_made: set[str] = {m.deployment.name for m in serving.models()}
        self._lock = threading.Lock()  # the timer and the agent may refresh at the same time
        self._conn: psycopg.Connection | None = None
        self._fingerprint: str | None = None
        self._reported: dict[str, str] = {}  # failed deployment -> the error last reported

    @staticmethod
    def read(settings: Settings) -> tuple[list[Deployment], int]:
        """The deployments and the database clock they are current as of (µs since epoch)."""
        dsn = settings.postgres_dsn.get_secret_value()
        with psycopg.connect(dsn, autocommit=True) as conn:
            return _read(conn)

    def needs_refresh(self, events: Iterable[ChangeEvent]) -> bool:
        return any(e.source.commit_us >= self.known_until_us for e in events)

    def refresh(self) -> set[tuple[str, str]]:
        """Apply the registry now; returns (and accumulates) tables not yet subscribed.

        Called before most batches under load, so it costs one small query on a kept
        connection; the deployments are re-read only when their fingerprint changed. A new
        deployment's topics are created here, before anything is scored for it (a deployment
        made with the SQL function has none yet).
        """
        with self._lock:
            try:
                now_us, fingerprint = self._connection().execute(_FINGERPRINT).fetchone()
            except psycopg.OperationalError:  # e.g. the server restarted since the last read
                self._conn = None
                now_us, fingerprint = self._connection().execute(_FINGERPRINT).fetchone()
            conn = self._connection()
            if fingerprint != self._fingerprint:
                deployments, now_us = _read(conn)
                names = {d.name for d in deployments}
                if names - self.topics_made:
                    ensure_deployment_topics(self.settings, names - self.topics_made)
                    self.topics_made |= names
                self.new_tables |= self.serving.update(deployments)
                self._fingerprint = fingerprint
                self._report(conn)
            self.known_until_us = now_us
            return set(self.new_tables)

    def report(self) -> None:
        """Tell the operator which deployments this worker cannot serve (call after start)."""
        with self._lock:
            self._report(self._connection(), force=True)

    def _report(self, conn: psycopg.Connection, force: bool = False) -> None:
        failed = {name: u.error for name, u in self.serving.failed.items()}
        if failed == self._reported and not force:
            return
        for name, error in failed.items():
            if self._reported.get(name) != error:
                log.error("deployment %s cannot be served, its rows go to the dead-letter topic "
                          "as %s: %s. Fix it and deploy again", name, MODEL_UNAVAILABLE, error)
            metrics.DEPLOYMENT_FAILED.labels(name, MODEL_UNAVAILABLE).set(1)
        for name in set(self._reported) - set(failed):
            log.info("deployment %s is served again", name)
            metrics.DEPLOYMENT_FAILED.labels(name, MODEL_UNAVAILABLE).set(0)
        self._reported = failed
        try:
            record_failures(conn, {n: (u.deployment.generation, MODEL_UNAVAILABLE, u.error)
                                   for n, u in self.serving.failed.items()},
                            {m.deployment.name: m.deployment.generation
                             for m in self.serving.models()})
        except psycopg.Error as exc:  # logs and the metric still say it; status cannot
            log.warning("cannot record deployment failures for rowcast status (%s); "
                        "run `rowcast init` to create rowcast.deployment_failures",
                        str(exc).strip())

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.settings.postgres_dsn.get_secret_value(),
                                         autocommit=True)
        return self._conn


# the clock and a digest of every (name, version): changes whenever a deployment is added,
# changed (rowcast.deploy bumps the version) or removed
_FINGERPRINT = """
SELECT (extract(epoch FROM now()) * 1000000)::bigint,
       md5(coalesce(string_agg(name || ':' || version || ':' || created_at, ',' ORDER BY name),
                    ''))
FROM rowcast.deployments
"""


def _read(conn: psycopg.Connection) -> tuple[list[Deployment], int]:
    with conn.transaction():
        now_us = conn.execute("SELECT (extract(epoch FROM now()) * 1000000)::bigint").fetchone()[0]
        return list_deployments(conn), now_us
