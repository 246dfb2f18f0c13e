"""Snapshots load only when intact, signed with our key, and made with this river."""

from __future__ import annotations

import pickle

import orjson
import pytest
import river
from hypothesis import given
from hypothesis import strategies as st

from rowcast.core.errors import SnapshotError
from rowcast.models.catalog import get_model
from rowcast.models.snapshot import MAGIC, _mac, dump_snapshot, load_snapshot

KEY = b"0123456789abcdef0123456789abcdef"


def trained():
    model = get_model("linear_regression").build()
    for i in range(50):
        model.learn_one({"x": float(i), "c": "a" if i % 2 else "b"}, 2.0 * i)
    return model


def test_round_trip_keeps_the_learned_state() -> None:
    model = trained()
    restored = load_snapshot(dump_snapshot(model, KEY), KEY)
    x = {"x": 7.0, "c": "a"}
    assert restored.predict_one(x) == model.predict_one(x)


def test_another_key_is_refused() -> None:
    with pytest.raises(SnapshotError, match="HMAC"):
        load_snapshot(dump_snapshot(trained(), KEY), b"another key of thirty-two bytes!")


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused_before_unpickling(position: int, flip: int) -> None:
    blob = bytearray(dump_snapshot({"a": 1}, KEY))
    blob[position % len(blob)] ^= flip
    with pytest.raises(SnapshotError):
        load_snapshot(bytes(blob), KEY)


def test_a_malicious_pickle_is_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    body = pickle.dumps(Evil())
    forged = MAGIC + orjson.dumps({"river": river.__version__, "hmac": "0" * 64}) + b"\n" + body
    with pytest.raises(SnapshotError, match="HMAC"):
        load_snapshot(forged, KEY)
    assert not marker.exists()


def test_other_river_version_is_refused_with_both_versions() -> None:
    body = pickle.dumps({"a": 1})
    header = orjson.dumps({"river": "0.1.0", "hmac": _mac(KEY, b"0.1.0", body)})
    with pytest.raises(SnapshotError, match=r"river 0\.1\.0 .* river " + river.__version__):
        load_snapshot(MAGIC + header + b"\n" + body, KEY)


def test_a_genuine_snapshot_whose_code_is_gone_is_refused_plainly(tmp_path, monkeypatch) -> None:
    """A custom model's module renamed or not installed on this machine: SnapshotError naming
    the missing code, which the model feed and the learner already handle (dead letter, pause)."""
    import importlib
    import sys

    (tmp_path / "vanishing_model.py").write_text("class Model:\n    weights = [1.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("vanishing_model")
    blob = dump_snapshot(module.Model(), key=KEY)
    (tmp_path / "vanishing_model.py").unlink()
    del sys.modules["vanishing_model"]
    importlib.invalidate_caches()
    with pytest.raises(SnapshotError, match="cannot be loaded here.*vanishing_model"):
        load_snapshot(blob, key=KEY)


def test_the_default_key_file_is_absolute_and_shared_whatever_the_working_directory(
        tmp_path, monkeypatch):
    """Processes started from different folders must sign with one key."""
    from rowcast.core.settings import Settings
    from rowcast.models.snapshot import signing_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = signing_key(Settings())
    monkeypatch.chdir(tmp_path / "b")
    assert signing_key(Settings()) == first
    assert Settings().key_file().is_absolute()
    assert (tmp_path / "config" / "rowcast" / "snapshot.key").exists()


def test_the_key_file_is_never_seen_empty(tmp_path):
    """Created atomically: many processes racing to create it all read the same full key."""
    import concurrent.futures

    from rowcast.models.snapshot import snapshot_key

    path = tmp_path / "keys" / "snapshot.key"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: snapshot_key(None, path), range(64)))
    assert len(keys) == 1
    assert len(keys.pop()) == 64
    assert oct(path.stat().st_mode & 0o777) == "0o600"
