"""Model snapshots that are safe to load: pickled, signed, and stamped with river's version.

Unpickling runs code, so a snapshot row someone edited in the database must never reach
``pickle.loads``. Each snapshot is ``MAGIC | header | pickle`` where the header carries the river
version and an HMAC-SHA256 over version and pickle, keyed with rowcast's snapshot key. Loading
checks the magic, the version and the HMAC (in constant time) *before* unpickling. Pickles do
not survive river upgrades, so a version mismatch is refused with the versions named.

>>> from river import linear_model
>>> blob = dump_snapshot(linear_model.LinearRegression(), key=b"k" * 32)
>>> type(load_snapshot(blob, key=b"k" * 32)).__name__
'LinearRegression'
>>> load_snapshot(blob[:-1] + b"x", key=b"k" * 32)
Traceback (most recent call last):
...
rowcast.core.errors.SnapshotError: model snapshot failed verification (HMAC mismatch): refusing to load it
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import orjson
import river

from rowcast.core.errors import SnapshotError
from rowcast.core.settings import Settings

MAGIC = b"RCSNAP1\n"


def _mac(key: bytes, version: bytes, body: bytes) -> str:
    return hmac.new(key, version + b"\0" + body, hashlib.sha256).hexdigest()


def dump_snapshot(model: Any, key: bytes) -> bytes:
    body = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    version = river.__version__.encode()
    header = orjson.dumps({"river": river.__version__, "hmac": _mac(key, version, body)})
    return MAGIC + header + b"\n" + body


def load_snapshot(blob: bytes, key: bytes) -> Any:
    if not blob.startswith(MAGIC):
        raise SnapshotError("not a rowcast model snapshot (bad magic): refusing to load it")
    header_end = blob.find(b"\n", len(MAGIC))
    if header_end < 0:
        raise SnapshotError("model snapshot header is truncated: refusing to load it")
    try:
        header = orjson.loads(blob[len(MAGIC):header_end])
        version, mac = str(header["river"]), str(header["hmac"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise SnapshotError("model snapshot header is unreadable: refusing to load it") from None
    body = blob[header_end + 1:]
    if not hmac.compare_digest(mac, _mac(key, version.encode(), body)):
        raise SnapshotError("model snapshot failed verification (HMAC mismatch): refusing to load it")
    if version != river.__version__:
        raise SnapshotError(f"model snapshot was made with river {version} but river "
                            f"{river.__version__} is installed; pickles do not survive river "
                            "upgrades: roll back river or retrain (rowcast model rollback)")
    try:
        return pickle.loads(body)  # verified above: written by rowcast with this key
    except Exception as exc:  # genuine, but the code it needs is gone (a custom model's
        # module renamed or not installed here): a clear refusal, not a crash of the caller
        raise SnapshotError(f"model snapshot is genuine but cannot be loaded here "
                            f"({type(exc).__name__}: {exc}); is the model's code installed on "
                            "this machine?") from None


def signing_key(settings: Settings) -> bytes:
    """The key every process of one installation signs and verifies snapshots with."""
    return snapshot_key(settings.snapshot_key.get_secret_value() if settings.snapshot_key else None,
                        settings.key_file())


def snapshot_key(secret: str | None, path: Path) -> bytes:
    """The HMAC key: ``ROWCAST_SNAPSHOT_KEY`` when set (production: the same on every rowcast
    process), else a random key kept in ``path`` (``ROWCAST_SNAPSHOT_KEY_FILE``, by default
    ``~/.config/rowcast/snapshot.key``: absolute, so processes started from different folders
    share it), mode 0600. Never stored in the database it protects.

    The file is written whole under a temporary name and linked into place, so a process that
    races another one's creation reads either nothing (and creates its own, which loses the
    race and is dropped) or the full key, never an empty file."""
    if secret:
        return secret.encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another process got there first
                os.link(tmp, path)  # atomic: the key appears whole or not at all
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()
