"""Who may read rowcast's HTTP endpoints (``/metrics`` of every process, the dashboard).

Loopback by default. Bound anywhere else (``ROWCAST_BIND_HOST``), an endpoint requires the
token ``ROWCAST_DASHBOARD_TOKEN`` as ``Authorization: Bearer <token>`` or ``?token=``, and refuses
to start without one, unless the operator opts out explicitly for ``/metrics`` with
``ROWCAST_METRICS_WITHOUT_TOKEN=true`` (say, a network only the scraper can reach).

>>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
(True, True, True, False)
>>> token_allows("s3cret", "Bearer s3cret", {}), token_allows("s3cret", "", {"token": ["no"]})
(True, False)
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_allows(token: str | None, authorization: str,
                 query: Mapping[str, Sequence[str]]) -> bool:
    """True when no token is required, or the request carries it (compared in constant time)."""
    if token is None:
        return True
    given = (query.get("token") or [""])[0]
    if authorization.startswith("Bearer "):
        given = authorization[len("Bearer "):]
    return hmac.compare_digest(given.encode(), token.encode())
