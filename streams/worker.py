"""Run a scoring worker: load the deployments, build their models, start faust.

The worker waits until at least one deployment exists (so ``docker compose up`` before the first
``rowcast deploy`` is fine). Deployments created later need a worker restart for now; picking
them up live is tracked with the model registry work.
"""

from __future__ import annotations

import logging
import threading

import faust
import psycopg

from connectors.kafka_clients import ensure_topics
from models.registry import list_deployments
from models.scoring import OnlineModel
from models.serving import ServingSet
from rowcast.settings import Settings
from streams.app import create_app
from streams.scorer import attach_scorer

log = logging.getLogger(__name__)


def wait_for_deployments(settings: Settings, stop: threading.Event, poll_s: float = 1.0) -> list:
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
        while True:
            deployments = list_deployments(conn)
            if deployments or stop.is_set():
                return deployments
            log.info("no deployments yet; waiting for `rowcast deploy`")
            stop.wait(poll_s)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    deployments = wait_for_deployments(settings, threading.Event())
    serving = ServingSet(OnlineModel.fresh(d) for d in deployments)
    ensure_topics(settings, [settings.source_topic(s, t) for s, t in serving.tables()]
                  + [settings.predictions_topic(d.name) for d in deployments]
                  + [settings.dlq_topic])
    app = create_app(settings)
    attach_scorer(app, settings, serving)
    log.info("scoring %d deployment(s): %s", len(deployments), [d.name for d in deployments])
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
