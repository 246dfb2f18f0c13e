"""Run a scoring worker that follows the deployments in Postgres without a restart by hand.

``rowcast worker`` is a small supervisor around a faust worker in a child process. The child
re-reads ``rowcast.deployments`` every ``deployment_refresh_s``: new models, new versions and
removals on tables it already consumes are applied in place (unchanged models keep what they
learned). A deployment on a *new* table needs a new topic subscription, which faust cannot add
to a running consumer (its driver notes pattern subscriptions do not work), so the child shuts
down gracefully (offsets committed) with :data:`RELOAD_EXIT` and the supervisor starts a new one
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rowcast.core.settings import Settings

if TYPE_CHECKING:
    from rowcast.models.deployment import Deployment

# The supervisor imports only what it runs (the standard library and the settings): faust,
# river (numpy, scipy), the Kafka clients and psycopg are the child's, imported in the
# functions that use them: the supervisor went from ~143 to ~54 MB of RSS (issue 15).

log = logging.getLogger(__name__)

SUPERVISOR_ENV = "ROWCAST_WORKER_SUPERVISOR_PID"  # how the child knows who its parent must be
# the child asks the supervisor to start it again (EX_TEMPFAIL): the scorer's RETRY_EXIT,
# spelled here so the supervisor need not import the scorer (a test keeps them equal)
RELOAD_EXIT = 75
# glibc malloc arenas in the child: by default each thread that allocates may get its own (up
# to 8 per core), and the child has many (faust's consumer, the publisher, the model feed,
# librdkafka's); with 2, a 300k-row COPY peaked ~5 MB lower at the same CPU per row
MALLOC_ARENAS = "2"


def child_environment(parent_env: Mapping[str, str], supervisor_pid: int) -> dict[str, str]:
    """The child's environment: the supervisor's, plus who its supervisor is and a cap on
    malloc arenas (an operator's own ``MALLOC_ARENA_MAX`` is kept)."""
    env = {**parent_env, SUPERVISOR_ENV: str(supervisor_pid)}
    env.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
    return env


def wait_for_deployments(settings: Settings, stop: threading.Event,
                         poll_s: float = 1.0) -> tuple[list[Deployment], int]:
    """Block until there is something to score: a worker may well start before ``rowcast
    init`` made rowcast's tables, or before the first deployment. Says once what it waits for."""
    import psycopg

    from rowcast.core import liveness
    from rowcast.streams.following import DeploymentFollower

    said = None
    while True:
        liveness.beat()  # waiting for `rowcast init` or a deployment is not a stall
        try:
            deployments, as_of_us = DeploymentFollower.read(settings)
            waiting = "no deployments yet; waiting for `rowcast deploy` (or rowcast.deploy())"
        except psycopg.errors.UndefinedTable:
            deployments, as_of_us = [], 0
            waiting = ("rowcast's tables do not exist yet; waiting for `rowcast init` "
                       "(or a `rowcast deploy`)")
        if deployments or stop.is_set():
            return deployments, as_of_us
        if waiting != said:
            log.info(waiting)
            said = waiting
        stop.wait(poll_s)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """The supervisor: run the child, restart it when it asks, pass signals through."""
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while True:
        child = subprocess.Popen([sys.executable, "-m", "rowcast", "worker", "--child",
                                  "--log-level", loglevel],
                                 env=child_environment(os.environ, os.getpid()))
        code = child.wait()
        if code != RELOAD_EXIT or stopping.is_set():
            raise SystemExit(0 if stopping.is_set() else code)
        log.info("restarting the scoring worker (new tables, or a batch to retry)")
        stopping.wait(0.5)  # a broker that refuses every batch is not hammered


def _die_with_parent() -> None:
    """The child must not outlive its supervisor (killed -9, it cannot forward a signal):
    Linux sends the child SIGTERM when the parent dies; elsewhere the refresh timer checks."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_child(settings: Settings, loglevel: str = "info") -> None:
    """One faust worker over the tables deployed when it started."""
    import faust

    from rowcast.connectors.fast_kafka import make_fast_producer
    from rowcast.connectors.kafka_clients import ensure_deployment_topics, ensure_topics
    from rowcast.core import liveness, metrics
    from rowcast.core.liveness import Watchdog
    from rowcast.models.catalog import allow_custom_modules
    from rowcast.models.serving import ServingSet
    from rowcast.models.snapshot import signing_key
    from rowcast.streams.app import create_app
    from rowcast.streams.following import DeploymentFollower
    from rowcast.streams.model_feed import ModelFeed
    from rowcast.streams.publishing import BatchPublisher
    from rowcast.streams.scorer import RETRY_EXIT, attach_scorer

    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above took effect
        raise SystemExit(1)
    allow_custom_modules(settings.allowed_model_modules())
    metrics.serve(settings.worker_metrics_port, settings, "worker")
    # faust's event loop runs the refresh timer below every deployment_refresh_s, and it beats:
    # a blocked loop, or a refresh that never returns, exits. Startup is watched too, each step
    # beating: it makes blocking kafka-python calls (topics, the model feed's catch-up), whose
    # waits have no deadline in 3.0.12 (its issue 3121), and a child once sat silent there for
    # over 90 s, its supervisor waiting (the other processes watch their startup already)
    Watchdog("worker", settings.stall_exit_s).start()
    deployments, as_of_us = wait_for_deployments(settings, threading.Event())
    liveness.beat()
    ensure_deployment_topics(settings, [d.name for d in deployments])
    liveness.beat()
    feed = ModelFeed(settings, signing_key(settings))
    feed.catch_up()  # serve the learner's latest versions from the first row on
    liveness.beat()
    serving = ServingSet.fresh(deployments, feed.lookup)
    feed.serve(serving)
    follower = DeploymentFollower(settings, serving, as_of_us)
    follower.report()  # deployments whose model cannot be built: logs, metric, rowcast status
    ensure_topics(settings, [settings.source_topic(s, t) for s, t in serving.tables()])
    liveness.beat()  # the first timer tick comes once faust has joined its group
    app = create_app(settings)
    reload_requested = threading.Event()

    async def refresh() -> None:
        try:
            new_tables = await app.loop.run_in_executor(None, follower.refresh)
        except Exception as exc:
            # Postgres is away (or Kafka refused a new deployment's topics): the batch waiting
            # for this refresh is not scored and nothing is committed; a fresh child (or, while
            # the database stays down, the service manager restarting the worker) resumes from
            # the committed offsets. A crashed faust agent or timer, by contrast, was seen to
            # leave the process up without consuming again.
            log.error("cannot bring the deployments up to date (%s: %s); restarting the worker",
                      type(exc).__name__, exc)
            os._exit(RETRY_EXIT)
        if new_tables and not reload_requested.is_set():
            log.info("deployments on new tables %s: restarting to subscribe", sorted(new_tables))
            reload_requested.set()
            signal.raise_signal(signal.SIGTERM)  # faust's graceful shutdown commits offsets

    publisher = BatchPublisher(settings, make_fast_producer(settings))
    attach_scorer(app, settings, serving, publisher, before_batch=lambda events: (
        refresh() if follower.needs_refresh(events) else None))

    @app.timer(interval=settings.deployment_refresh_s)
    async def refresh_deployments() -> None:
        liveness.beat()
        if os.getppid() != parent:
            log.error("the supervising rowcast worker is gone; stopping")
            signal.raise_signal(signal.SIGTERM)
            return
        await refresh()

    @app.on_partitions_assigned.connect
    async def serve_newest_versions(*_args: object, **_kwargs: object) -> None:
        try:
            synced = await asyncio.wait_for(app.loop.run_in_executor(None, feed.sync), 12.0)
        except TimeoutError:
            synced = False
        if not synced:  # scoring goes on with the versions it has; the feed keeps reading
            log.warning("model feed did not catch up within 10 s of the assignment")

    feed_stop = threading.Event()
    threading.Thread(target=feed.run, args=(feed_stop,), name="model-feed", daemon=True).start()
    log.info("scoring %d deployment(s): %s", len(deployments), [d.name for d in deployments])
    try:
        faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
    except SystemExit:
        if reload_requested.is_set():
            raise SystemExit(RELOAD_EXIT) from None
        raise
