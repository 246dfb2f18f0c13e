"""``rowcast dashboard``: the live page, its JSON, and ``/metrics``, from one small HTTP server.

A background thread samples every stage (:class:`rowcast.ops.monitor.Monitor`) once a second; the
page polls ``/api/state``. Loopback only by default; bound anywhere else it refuses to start
without ``ROWCAST_DASHBOARD_TOKEN``, and then every request must carry ``?token=`` or
``Authorization: Bearer``. Stdlib ``http.server``: a page and two JSON/text endpoints need no
framework.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rowcast.core.dsn import redact
from rowcast.core.endpoint import is_loopback, token_allows
from rowcast.core.errors import ConfigError
from rowcast.core.settings import Settings
from rowcast.ops.dashboard_page import PAGE
from rowcast.ops.monitor import Monitor

log = logging.getLogger(__name__)


class Dashboard:
    """Owns the sampler thread and the HTTP server; ``serve_forever`` until ``stop``."""

    def __init__(self, settings: Settings, sample_every_s: float = 1.0) -> None:
        token = settings.dashboard_token.get_secret_value() if settings.dashboard_token else None
        if not is_loopback(settings.bind_host) and not token:
            raise ConfigError(f"the dashboard would listen on {settings.bind_host}, beyond this "
                              "machine, without a token: set ROWCAST_DASHBOARD_TOKEN")
        self.settings, self.token, self.sample_every_s = settings, token, sample_every_s
        self.monitor = Monitor(settings)
        self.latest: dict[str, Any] | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer((settings.bind_host, settings.dashboard_port),
                                          self._handler())

    def sample_once(self) -> None:
        try:
            self.latest, self.error = self.monitor.sample(), None
        except Exception as exc:  # keep serving; the page shows the last good sample
            # no piece of the connection string reaches the page (or the log)
            self.error = redact(f"{type(exc).__name__}: {exc}",
                                self.settings.postgres_dsn.get_secret_value())
            log.warning("sampling failed: %s", self.error)

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.sample_every_s)

    def state(self) -> dict[str, Any]:
        return {"latest": self.latest, "error": self.error, "history": [
            {"at": h["at"], "predictions": h["predictions"], "latency_ms": h["latency_ms"],
             "stages": [{"stage": s["stage"], "lag": s["lag"]} for s in h["stages"]],
             "deployments": [{"name": d["name"], "metrics": d["metrics"]}
                             for d in h["deployments"]]}
            for h in self.monitor.history]}

    def serve_forever(self) -> None:
        sampler = threading.Thread(target=self._sample_loop, daemon=True)
        sampler.start()
        host, port = self.server.server_address[:2]
        log.info("dashboard on http://%s:%d/", host, port)
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self._stop.set()
            self.monitor.close()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet; tokens stay out of logs
                pass

            def _allowed(self, query: dict[str, list[str]]) -> bool:
                return token_allows(dashboard.token, self.headers.get("Authorization", ""), query)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                if not self._allowed(parse_qs(url.query)):
                    self._send(401, b"token required\n", "text/plain")
                elif url.path == "/":
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif url.path == "/api/state":
                    self._send(200, orjson.dumps(dashboard.state()), "application/json")
                elif url.path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

        return Handler
