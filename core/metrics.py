"""Prometheus metrics of every rowcast process, named once here (prometheus-client).

Each process serves ``/metrics`` on its own port (``ROWCAST_SOURCE_METRICS_PORT`` 9464,
``ROWCAST_WORKER_METRICS_PORT`` 9465, ``ROWCAST_SINK_METRICS_PORT`` 9466,
``ROWCAST_LEARNER_METRICS_PORT`` 9467, the dashboard on its own port), bound to
``ROWCAST_BIND_HOST`` (127.0.0.1 by default). Names follow Prometheus conventions: a
``rowcast_`` prefix, base units in the name, ``_total`` on counters.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from rowcast.core.endpoint import is_loopback, token_allows
from rowcast.core.errors import ConfigError
from rowcast.core.settings import Settings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# source
SOURCE_EVENTS = Counter("rowcast_source_events_total",
                        "Change events the CDC source published and Kafka acknowledged.")
SOURCE_CHECKPOINTS = Counter("rowcast_source_checkpoints_total",
                             "Times the source advanced the replication slot.")
SLOT_BEHIND_BYTES = Gauge("rowcast_slot_behind_bytes",
                          "WAL bytes between the server's position and the slot's confirmed one.")
SLOT_BEHIND_SECONDS = Gauge("rowcast_slot_behind_seconds",
                            "Age of the oldest heartbeat the slot has not confirmed.")
SLOT_RETAINED_BYTES = Gauge("rowcast_slot_retained_bytes", "WAL the slot keeps on the server.")

# source, sink and learner
POSITION_HISTORY_CHANGES = Counter(
    "rowcast_position_history_changes_total",
    "Times a process found positions stored under another database history (another cluster's "
    "system identifier, or ahead of the server's WAL: a restore) and started a new one.",
    ["process"])

# worker
SCORED = Counter("rowcast_scored_total", "Rows scored.", ["deployment"])
DEAD_LETTERS = Counter("rowcast_dead_letters_total", "Records set aside on the dead-letter topic.",
                       ["stage", "reason"])
SCORE_BATCH_SECONDS = Histogram("rowcast_score_batch_seconds",
                                "Time to score and publish one batch.", buckets=LATENCY_BUCKETS)

DEPLOYMENT_FAILED = Gauge(
    "rowcast_deployment_failed",
    "1 while a deployment cannot be served (its rows go to the dead-letter topic with this "
    "reason; rowcast status shows the error), 0 once it can.", ["deployment", "reason"])

SNAPSHOTS_REFUSED = Counter(
    "rowcast_snapshots_refused_total",
    "Models-topic records a worker refused: failed signature (forged, replayed under another "
    "name, another snapshot key) or a snapshot that cannot be loaded here.",
    ["deployment", "reason"])
MODEL_VERSION_SERVED = Gauge("rowcast_model_version_served",
                             "Model version the scorers of this worker serve.", ["deployment"])

# learner
LEARNED = Counter("rowcast_learned_total", "Labels learned (each exactly once).", ["deployment"])
LABEL_EVENTS = Gauge("rowcast_learner_label_events",
                     "Label events of the current model generation by outcome (learned, joined, "
                     "pending_added, unmatched, duplicates, stale, expired).",
                     ["deployment", "outcome"])
MODEL_VERSION = Gauge("rowcast_model_version", "Latest checkpointed model version.",
                      ["deployment"])
MODEL_METRIC = Gauge("rowcast_model_metric",
                     "Progressive validation metric of the learning model (river's definition).",
                     ["deployment", "metric"])
LEARNING_DELAY_SECONDS = Histogram(
    "rowcast_learning_delay_seconds",
    "From the commit of the change that carried a label to its learning (the commit-order "
    "merge waits for every partition's watermark).", buckets=LATENCY_BUCKETS)
CHECKPOINT_SECONDS = Histogram("rowcast_learner_checkpoint_seconds",
                               "Time to checkpoint a model (Postgres transaction and publish).",
                               buckets=LATENCY_BUCKETS)
MODEL_PAUSED = Gauge(
    "rowcast_model_paused",
    "1 while a deployment's learning is paused with this reason (non_finite: its model became "
    "NaN/inf and was not published; bad_snapshot: its checkpoint failed verification); the last "
    "good version keeps serving until `rowcast model rollback`. 0 once it learns again.",
    ["deployment", "reason"])
DRIFT = Counter("rowcast_drift_total",
                "Concept drifts the deployment's detector found in its champion's per-row loss "
                "(each also a row of rowcast.model_events).", ["deployment", "detector"])
PROMOTIONS = Counter("rowcast_promotions_total",
                     "Challengers promoted to champion (by hand or on evidence).",
                     ["deployment", "how"])
CHALLENGER_METRIC = Gauge("rowcast_challenger_metric",
                          "Progressive validation metric of a challenger in shadow, on exactly "
                          "the champion's labels in the same order.",
                          ["deployment", "challenger", "metric"])
RECENT_LOSS = Gauge("rowcast_recent_loss",
                    "Mean per-row loss over a challenger's recent window (1,000 rows): the "
                    "challenger's, and the champion's on the same rows (role).",
                    ["deployment", "challenger", "role"])
RESTORE_SECONDS = Gauge("rowcast_learner_restore_seconds",
                        "Time the last restore from a checkpoint took.", ["deployment"])

# sink
WRITTEN = Counter("rowcast_predictions_written_total", "Predictions upserted into Postgres.",
                  ["deployment"])
PREDICTIONS_DELETED = Counter("rowcast_predictions_deleted_total",
                              "Predictions deleted because their source row was deleted.",
                              ["deployment"])
END_TO_END_SECONDS = Histogram(
    "rowcast_end_to_end_latency_seconds",
    "From the source transaction's commit to the prediction's write in Postgres.",
    buckets=LATENCY_BUCKETS)

# lag monitor (dashboard process)
CONSUMER_LAG = Gauge("rowcast_consumer_lag_records", "Log end offset minus committed offset.",
                     ["group", "topic", "partition"])
CONSUMER_OLDEST_SECONDS = Gauge(
    "rowcast_consumer_oldest_unconsumed_seconds",
    "Age of the oldest event a consumer group has not committed yet.", ["group"])
CONSUMER_VERDICT = Gauge("rowcast_consumer_verdict",
                         "Burrow-style verdict: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 ERROR.", ["group"])


def observe_counts(histogram: Histogram, counts: Mapping[float, int]) -> None:
    """``observe(value)`` ``count`` times for each (value, count), as one bucket increment per
    distinct value: the rows of one transaction share their commit time, so the sink's and the
    learner's latencies have few distinct values per batch, and ``observe`` costs ~1 µs (a lock
    and a bucket search) per call -- per row, a visible share of either process. Falls back to
    ``observe`` if prometheus_client's histogram no longer has the internals used here.

    >>> h = Histogram("doctest_seconds", "", buckets=(0.1, 1.0), registry=None)
    >>> observe_counts(h, {0.05: 3, 0.5: 1})
    >>> [(s.labels.get("le"), s.value) for s in h.collect()[0].samples if s.name.endswith("_bucket")]
    [('0.1', 3.0), ('1.0', 4.0), ('+Inf', 4.0)]
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    for value, count in counts.items():
        if bounds is None or buckets is None or total is None:
            for _ in range(count):
                histogram.observe(value)
            continue
        total.inc(value * count)
        buckets[bisect.bisect_left(bounds, value)].inc(count)


def serve(port: int, settings: Settings, process: str) -> ThreadingHTTPServer | None:
    """Start ``/metrics`` for this process (a daemon thread); port 0 turns it off.

    Beyond loopback it requires the token (see :mod:`rowcast.core.endpoint`) and refuses to
    start without one (:class:`ConfigError`: the process exits with one line), unless
    ``ROWCAST_METRICS_WITHOUT_TOKEN`` opts out explicitly."""
    if not port:
        return None
    token = settings.dashboard_token.get_secret_value() if settings.dashboard_token else None
    if not is_loopback(settings.bind_host) and not token and not settings.metrics_without_token:
        raise ConfigError(f"{process}: /metrics would listen on {settings.bind_host}, beyond this "
                          "machine, without a token: set ROWCAST_DASHBOARD_TOKEN (scrapers send "
                          "it as a bearer token) or ROWCAST_METRICS_WITHOUT_TOKEN=true")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet; tokens stay out of logs
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if not token_allows(token, self.headers.get("Authorization", ""), parse_qs(url.query)):
                status, body, kind = 401, b"token required\n", "text/plain"
            elif url.path == "/metrics":
                status, body, kind = 200, generate_latest(), CONTENT_TYPE_LATEST
            else:
                status, body, kind = 404, b"not found\n", "text/plain"
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the scraper gave up (e.g. this process was frozen): nothing to tell it

    try:
        server = ThreadingHTTPServer((settings.bind_host, port), Handler)
    except OSError as exc:  # the data path matters more than its metrics: say so and go on
        log.error("%s: cannot serve /metrics on %s:%d (%s); set ROWCAST_%s_METRICS_PORT",
                  process, settings.bind_host, port, exc, process.upper())
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{process}-metrics", daemon=True).start()
    log.info("%s metrics on http://%s:%d/metrics", process, settings.bind_host, port)
    return server
