"""Log sequence numbers: PostgreSQL's WAL positions, as integers inside rowcast and as
``'16/B374D848'`` text wherever Postgres reads or prints them.

>>> format_lsn(0x16B374D848)
'16/B374D848'
>>> parse_lsn("16/B374D848") == 0x16B374D848
True
"""

from __future__ import annotations

from rowcast.core.errors import DecodeError


def format_lsn(lsn: int) -> str:
    """``0x16B374D848`` → ``'16/B374D848'``, as Postgres prints it."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise DecodeError(f"not an LSN: {text!r}") from None
