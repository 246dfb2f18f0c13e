"""Run the CDC source in the test's own process until the slot has passed a position."""

from __future__ import annotations

import psycopg

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.slot import confirmed_lsn
from tests.helpers.waiting import wait_until


def run_source_past(settings, conn: psycopg.Connection, past: int,
                    watch_conn: psycopg.Connection | None = None) -> None:
    """Poll a :class:`CdcSource` reading through ``conn`` until it has nothing left and the
    slot's confirmed position (read on ``watch_conn``, default ``conn``) is past ``past``."""
    producer = make_producer(settings)
    source = CdcSource(settings, conn, producer)
    wait_until(lambda: source.poll_once() == 0
               and confirmed_lsn(watch_conn or conn, settings.slot_name) > past, timeout_s=90,
               message="the slot's confirmed position to pass the last transaction")
    producer.close()
