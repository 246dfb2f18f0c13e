"""The ``rowcast`` command: one entry point for operators and application teams.

Commands live in one module per group (``deployments``, ``processes``, ``observe``, ``repair``,
``model``, ``dev``); their logic lives in the layers below, so a command only parses options,
calls one function and prints. Every command builds one
:class:`~rowcast.core.settings.Settings` from the environment and passes it down. Connection
strings are never printed; every error a user can cause is one line on stderr, exit status 2.
"""

from __future__ import annotations

import os
import sys

import psycopg
import typer
from pydantic import ValidationError

from rowcast.core.dsn import redact
from rowcast.core.errors import RowcastError
from rowcast.core.settings import Settings, invalid_settings_line
from rowcast.ops.cli import (  # noqa: F401
    deployments,
    dev,
    model,
    observe,
    operations,
    processes,
    repair,
)
from rowcast.ops.cli.common import app
from rowcast.streams.memory_policy import cap_malloc_arenas

__all__ = ["app", "main"]


# the processes that build and learn models: river's trees break ties by iterating sets of
# class labels, ordered by a string hash Python randomises per process, so without a fixed seed
# the same labels in the same order could grow different trees in two processes (a standby
# learner taking over, a restart) -- and differ from river's own run of the stream
DETERMINISTIC_COMMANDS = frozenset({"learner", "worker"})


def deterministic(argv: list[str]) -> None:
    """Re-execute this command with ``PYTHONHASHSEED=0`` when it learns or scores models."""
    if os.environ.get("PYTHONHASHSEED") == "0" or not DETERMINISTIC_COMMANDS & set(argv[1:2]):
        return
    os.execve(sys.executable, [sys.executable, "-m", "rowcast", *argv[1:]],
              {**os.environ, "PYTHONHASHSEED": "0"})


LONG_RUNNING = frozenset({"source", "worker", "learner", "sink"})


def yield_cores(argv: list[str]) -> None:
    """Lower this process's priority by ``ROWCAST_PROCESS_NICE`` when it is one of the
    long-running processes (the worker's child inherits it), and cap its malloc arenas
    (:func:`rowcast.streams.memory_policy.cap_malloc_arenas`)."""
    if LONG_RUNNING & set(argv[1:2]):
        cap_malloc_arenas()  # before any thread starts
    if LONG_RUNNING & set(argv[1:2]) and "--child" not in argv:
        nice = Settings().process_nice
        if nice:
            os.nice(nice)


def main() -> None:
    from kafka.errors import KafkaError

    deterministic(sys.argv)
    try:
        yield_cores(sys.argv)
        app()
    except ValidationError as exc:  # a malformed ROWCAST_* value: name it, no traceback
        typer.echo(f"rowcast: {invalid_settings_line(exc)}", err=True)
        raise SystemExit(2) from None
    except RowcastError as exc:
        typer.echo(f"rowcast: {exc}", err=True)
        raise SystemExit(2) from None
    except psycopg.OperationalError as exc:  # the database went away under a running process
        why = redact(str(exc).strip(), Settings().postgres_dsn.get_secret_value())
        # class 54 (program limit exceeded: an index row too large...) is an OperationalError
        # to psycopg, but the server refused a statement: the connection is fine
        what = "refused a statement" if isinstance(exc, psycopg.errors.ProgramLimitExceeded) \
            else "connection failed or was lost"
        typer.echo(f"rowcast: PostgreSQL {what} ({type(exc).__name__}: "
                   f"{why}). Long-running processes exit here for their service "
                   "manager to restart them; they resume from their last durable position.",
                   err=True)
        raise SystemExit(2) from None
    except KafkaError as exc:  # unreachable, refused TLS handshake, failed login: say so plainly
        typer.echo(f"rowcast: {kafka_failure_line(exc, Settings())}", err=True)
        raise SystemExit(2) from None


def kafka_failure_line(exc: Exception, settings: Settings) -> str:
    """The one line a Kafka failure ends a command with. A broker that answered with an
    error (an invalid or colliding topic name...) did let rowcast in: pointing at the
    bootstrap and security settings then sends the operator the wrong way.

    >>> from kafka.errors import InvalidTopicError, KafkaConnectionError
    >>> s = Settings(kafka_bootstrap="k:9092", _env_file=None)
    >>> line = kafka_failure_line(InvalidTopicError("collides with existing topic"), s)
    >>> line.startswith("Kafka at k:9092 refused a request: InvalidTopicError"), "BOOTSTRAP" in line
    (True, False)
    >>> "ROWCAST_KAFKA_BOOTSTRAP" in kafka_failure_line(KafkaConnectionError("refused"), s)
    True
    """
    from kafka.errors import AuthorizationError, BrokerResponseError, SaslAuthenticationFailedError

    where = f"Kafka at {settings.kafka_bootstrap}"
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AuthorizationError):
        return (f"{where} refused rowcast: {what}. Its principal lacks an ACL rowcast needs "
                "(README, \"Security: who can do what\").")
    if isinstance(exc, BrokerResponseError) and not isinstance(exc, SaslAuthenticationFailedError):
        return (f"{where} refused a request: {what} (it answered: the connection and "
                "credentials are fine).")
    return (f"{where} ({settings.kafka_security_protocol}) did not let rowcast in: {what}. "
            "Check ROWCAST_KAFKA_BOOTSTRAP and ROWCAST_KAFKA_SECURITY_PROTOCOL / _SASL_* / "
            "_SSL_* settings.")
