"""The dev stack: the private Postgres and Kafka that the demo, the tests and ``rowcast dev`` use.

Everything lives under ``settings.state_dir`` (``postgres/``, ``kafka/``); pid files let
``rowcast dev down`` stop what another process started. ``rowcast dev up --brokers 3`` runs a
3-node KRaft cluster instead (``kafka-cluster/node-<id>``, broker ports ``19092``, ``19094``,
``19096``, controllers one above each), to try rowcast where a broker can be lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from rowcast.core.errors import DevStackError
from rowcast.core.settings import DEV_POSTGRES_PORT, Settings
from rowcast.ops.devstack.kafka import KafkaCluster, KafkaServer, PortTaken
from rowcast.ops.devstack.postgres import PostgresServer


def postgres_home(state: Path) -> Path:
    """``<state>/postgres``, unless the server user could not reach it (root running rowcast in a
    folder like /root): then a folder of its own under /tmp, named after the state folder."""
    home = state / "postgres"
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o001 for p in state.parents if p.exists()):
        return home
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:10]
    fallback = Path(tempfile.gettempdir()) / f"rowcast-postgres-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    return fallback


class DevStack:
    """Start and stop both services for one settings object (ports come from its DSN/bootstrap)."""

    def __init__(self, settings: Settings, brokers: int | None = None) -> None:
        """``brokers`` > 1: a cluster; None: whichever form was last started here (one broker
        when none was)."""
        self.settings = settings
        state = settings.state_dir.resolve()
        pg_port = urlparse(settings.postgres_dsn.get_secret_value()).port or DEV_POSTGRES_PORT
        kafka_port = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
        controller = settings.kafka_controller_port or kafka_port + 1
        if controller > 65535 or controller == kafka_port:
            raise DevStackError(f"the dev Kafka's controller port {controller} cannot be used "
                                f"beside broker port {kafka_port}: set "
                                "ROWCAST_KAFKA_CONTROLLER_PORT to another")
        self.postgres = PostgresServer(postgres_home(state) / "data", pg_port)
        cluster_dir = state / "kafka-cluster"
        if brokers is None:
            brokers = len(list(cluster_dir.glob("node-*"))) or 1
        self.single = KafkaServer(state / "kafka", kafka_port, controller,
                                  version=settings.kafka_version, cache_dir=settings.cache_dir)
        self.cluster = KafkaCluster(
            cluster_dir, [kafka_port + 2 * i for i in range(max(brokers, 3))],
            [kafka_port + 2 * i + 1 for i in range(max(brokers, 3))],
            version=settings.kafka_version, cache_dir=settings.cache_dir)
        self.kafka: KafkaServer | KafkaCluster = self.cluster if brokers > 1 else self.single

    def up(self) -> None:
        other = self.single if self.kafka is self.cluster else self.cluster
        if other.is_running():  # they share the first broker port
            raise DevStackError("the dev stack's Kafka already runs in its other form; "
                                "`rowcast dev down` first")
        self.postgres.start()
        try:
            self.kafka.start()
        except PortTaken as taken:
            if self.kafka is self.cluster:
                hint = (f"a cluster of {len(self.cluster.ports)} listens on "
                         f"{2 * len(self.cluster.ports)} ports from ROWCAST_KAFKA_BOOTSTRAP's "
                         "first; choose another there")
            elif taken.role == "controller":
                hint = "choose another with ROWCAST_KAFKA_CONTROLLER_PORT"
            else:
                hint = "choose another with ROWCAST_KAFKA_BOOTSTRAP"
            raise DevStackError(f"{taken}; {hint}") from None

    def down(self) -> None:
        self.cluster.stop()
        self.single.stop()
        self.postgres.stop()

    def status(self) -> dict[str, str]:
        return {
            "postgres": f"running on {self.postgres.dsn}" if self.postgres.is_running() else "stopped",
            "kafka": f"running on {self.kafka.bootstrap}" if self.kafka.is_running() else "stopped",
        }

    def reset(self) -> None:
        self.down()
        shutil.rmtree(self.postgres.data_dir.parent, ignore_errors=True)
        shutil.rmtree(self.settings.state_dir / "kafka", ignore_errors=True)
        shutil.rmtree(self.settings.state_dir / "kafka-cluster", ignore_errors=True)
