"""Session fixtures: one real PostgreSQL and one real Apache Kafka per test run, started lazily.

Both run as local processes on free ports in a private folder under /tmp (pytest's own tmp
folders are mode 0700, which the ``postgres`` user cannot traverse when the suite runs as root).
Every test gets its own topic prefix, slot and publication, so tests never see each other's data.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rowcast.connectors.slot import drop_slot_and_publication
from rowcast.core.settings import Settings
from rowcast.ops.devstack.kafka import KafkaServer
from rowcast.ops.devstack.postgres import PostgresServer
from rowcast.ops.devstack.process import free_port
from tests.helpers.services import SASL_PASSWORD

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rowcast-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(services_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(services_dir / "postgres" / "data", free_port(), fast=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_server(services_dir: Path) -> Iterator[KafkaServer]:
    server = KafkaServer(services_dir / "kafka", free_port(), free_port(),
                         cache_dir=Settings().cache_dir, sasl_port=free_port(),
                         sasl_users={"rowcast": SASL_PASSWORD}, ssl_port=free_port(),
                         mtls_port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(pg_server: PostgresServer, kafka_server: KafkaServer, services_dir: Path) -> Iterator[Settings]:
    """Settings for one test: the session's services, names of its own."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    s = Settings(postgres_dsn=pg_server.dsn, kafka_bootstrap=kafka_server.bootstrap,
                 topic_prefix=name, slot_name=name, publication_name=name,
                 state_dir=services_dir / "state" / name, worker_web_port=free_port(),
                 source_metrics_port=free_port(), worker_metrics_port=free_port(),
                 sink_metrics_port=free_port(), learner_metrics_port=free_port(),
                 dashboard_port=free_port(), snapshot_key_file=services_dir / "snapshot.key",
                 custom_model_modules="tests", _env_file=None)
    yield s
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        drop_slot_and_publication(conn, s.slot_name, s.publication_name)
        # deployments live in the one shared database: the next test starts without them
        # (their models were signed with this test's snapshot key)
        if conn.execute("SELECT to_regclass('rowcast.deployments')").fetchone()[0]:
            conn.execute("TRUNCATE rowcast.deployments, rowcast.model_versions, "
                         "rowcast.model_control, rowcast.pending_labels")


@pytest.fixture
def pg_conn(pg_server: PostgresServer) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        yield conn
