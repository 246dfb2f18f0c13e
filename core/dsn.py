"""Connection strings never leave the process, not even in pieces.

libpq quotes the part of a connection string it could not parse (``missing "=" after "pw2"``,
``invalid integer value "s3cret" for connection option "port"``), and a malformed string can put
any part of a password there. :func:`redact` replaces every quoted fragment that is not a libpq
option name, and any piece of the password that can be found, before a message is printed,
logged or served (``/api/state``).

>>> redact('missing "=" after "s3cr3t" in connection info string', "host=db password=x s3cr3t")
'missing "=" after "…" in connection info string'
>>> redact('invalid integer value "zz" for connection option "port"', "postgresql://u:pw@db:zz/x")
'invalid integer value "…" for connection option "port"'
>>> redact('connection to "10.0.0.9" failed: hunter22?', "postgresql://app:hunter22@db/app")
'connection to "10.0.0.9" failed: …?'
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# libpq's option names (quoting them is harmless and helps the reader)
OPTIONS = frozenset((
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
    "target_session_attrs", "load_balance_hosts",
))
_QUOTED = re.compile(r'"([^"]*)"')


def _passwords(dsn: str) -> list[str]:
    found = []
    try:
        parts = urlsplit(dsn)
        if parts.scheme.startswith("postgres") and parts.password:
            found.append(unquote(parts.password))
    except ValueError:
        pass
    for m in re.finditer(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)", dsn):
        found.append(m.group(1).strip("'"))
    return [p for p in found if p]


def redact(message: str, dsn: str) -> str:
    """``message`` with quoted connection-string fragments and the password removed."""
    def quoted(m: re.Match[str]) -> str:
        inner = m.group(1)
        if inner in OPTIONS or not re.search(r"\w", inner) or inner not in dsn:
            return m.group(0)  # an option name, punctuation, or not from the connection string
        return '"…"'

    out = _QUOTED.sub(quoted, message)
    for secret in _passwords(dsn):
        for piece in {secret, *secret.split()}:
            if len(piece) >= 3:
                out = out.replace(piece, "…")
    return out
