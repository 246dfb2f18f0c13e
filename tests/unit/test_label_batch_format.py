"""Label batches, version 2 (column-wise): every event round-trips exactly, version 1 batches
from older scorers still decode, and a malformed batch is refused whole with a DecodeError
(the learner dead-letters it) instead of being learned in part."""

import orjson
import pytest

from rowcast.core.errors import DecodeError
from rowcast.core.label_events import LabelEvent, Served, decode_batch, encode_batch


def events() -> list[LabelEvent]:
    return [
        LabelEvent("labelled", "spend", "g1", {"id": 1}, "t:0", (10, 9, 1), 5,
                   {"x": 1.5, "city": "Zürich"}, 2.5, Served(3, 2.4)),
        LabelEvent("scored", "spend", "g1", {"id": 2, "region": "eu"}, "t:1", (11, 10, 0), 6,
                   {"x": -0.0}, None, Served(3, True, ((False, 0.25), (True, 0.75)))),
        LabelEvent("label", "spend", "g2", {"id": 2, "region": "eu"}, "t:1", (12, 11, 2), 7,
                   None, "class \"b\""),
        LabelEvent("labelled", "spend", "g2", {"id": 9}, "t:1", (13, 12, 0), 8, {"x": 1e308},
                   0, None, {"id": 3}),
        LabelEvent("watermark", "spend", "g2", {}, "t:0", (14, 0, 0), 9),
        LabelEvent("deleted", "spend", "g2", {"id": 1}, "t:0", (15, 14, 0), 2 ** 53 + 1),
    ]


def test_every_event_round_trips_column_wise():
    batch = events()
    data = encode_batch(batch)
    assert orjson.loads(data)["v"] == 2
    assert decode_batch(data) == batch
    assert decode_batch(encode_batch([])) == []


def test_shared_fields_are_written_once_and_the_record_is_smaller():
    same = [LabelEvent("labelled", "spend", "g1", {"id": i}, "t:0", (i, i, 0), i, {"x": 1.0}, 1.0,
                       Served(1, 0.5)) for i in range(100)]
    doc = orjson.loads(encode_batch(same))
    assert (doc["deployment"], doc["generation"], doc["stream"]) == ("spend", "g1", "t:0")
    assert "was" not in doc
    assert len(encode_batch(same)) < 0.7 * len(encode_batch(same, version=1))


def test_version_1_batches_still_decode():
    batch = events()
    assert decode_batch(encode_batch(batch, version=1)) == batch


def good() -> dict:
    return orjson.loads(encode_batch(events()))


@pytest.mark.parametrize("name, change", [
    ("unknown version", lambda d: d.update(v=3)),
    ("count not an int", lambda d: d.update(n="6")),
    ("a column too short", lambda d: d["key"].pop()),
    ("a column missing", lambda d: d.pop("order")),
    ("unknown kind", lambda d: d["kind"].__setitem__(0, "learned")),
    ("order of two parts", lambda d: d["order"].__setitem__(1, [1, 2])),
    ("order not integers", lambda d: d["order"].__setitem__(1, [1, "2", 3])),
    ("key not an object", lambda d: d["key"].__setitem__(0, [1])),
    ("features not an object", lambda d: d["x"].__setitem__(0, [1.0])),
    ("at_us not an integer", lambda d: d["at_us"].__setitem__(0, 1.5)),
    ("served of two parts", lambda d: d["served"].__setitem__(0, [3, 2.4])),
    ("served version a string", lambda d: d["served"].__setitem__(0, ["3", 2.4, None])),
    ("proba not a number", lambda d: d["served"].__setitem__(1, [3, True, [[False, "x"]]])),
    ("stream a number", lambda d: d.update(stream=7)),
    ("was of the wrong length", lambda d: d.update(was=[None])),
])
def test_a_malformed_batch_is_refused_whole(name, change):
    doc = good()
    change(doc)
    with pytest.raises(DecodeError, match="not a label batch"):
        decode_batch(orjson.dumps(doc))


def test_not_json_or_not_an_object_is_refused():
    for data in (b"{", b"[1, 2]", b"null"):
        with pytest.raises(DecodeError):
            decode_batch(data)
