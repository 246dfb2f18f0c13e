"""Opening a connection to the watched database: the one place a DSN is handed to libpq, so a
refused or malformed connection string is reported without any piece of it
(:func:`rowcast.core.dsn.redact`)."""

from __future__ import annotations

from typing import Any

import psycopg

from rowcast.core.dsn import redact
from rowcast.core.errors import ConfigError, RetryableError
from rowcast.core.settings import Settings


def connect(settings: Settings, **kwargs: Any) -> psycopg.Connection:
    """An autocommit connection; :class:`RetryableError` when the server cannot be reached,
    :class:`ConfigError` when the connection string cannot be parsed, both redacted."""
    dsn = settings.postgres_dsn.get_secret_value()
    try:
        return psycopg.connect(dsn, autocommit=True, **kwargs)
    except psycopg.ProgrammingError as exc:  # libpq could not parse the string
        raise ConfigError(f"ROWCAST_POSTGRES_DSN is not a valid connection string: "
                          f"{redact(str(exc).strip(), dsn)}") from None
    except psycopg.OperationalError as exc:  # psycopg's message names host and port
        raise RetryableError(f"cannot connect to PostgreSQL (ROWCAST_POSTGRES_DSN): "
                             f"{redact(str(exc).strip(), dsn)}") from None
