"""Label batch records as the learner reads them, and the publication cadence (issue 15)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rowcast.core.errors import DecodeError
from rowcast.core.label_events import BATCH_HEADER, LabelEvent, encode_batch
from rowcast.models.cadence import WORKER_LOAD_SHARE, LoadCost, publish_interval
from rowcast.streams.learner import read_label_record, refused_letter

HEADERS = [(BATCH_HEADER, b"1")]


def ev(i: int) -> LabelEvent:
    return LabelEvent("labelled", "d", "g", {"id": i}, "t:0", (i, i, 1), 0, {"x": 1.0}, 1.0)


def test_a_batch_record_reads_as_its_events_and_a_single_event_record_still_reads():
    assert read_label_record(HEADERS, encode_batch([ev(1), ev(2)])) == [ev(1), ev(2)]
    assert read_label_record([], ev(3).to_json()) == [ev(3)]
    assert read_label_record(None, ev(3).to_json()) == [ev(3)]


@pytest.mark.parametrize("value", [b"{", b'{"v": 9, "events": []}', b'{"v": 1, "events": [{}]}',
                                   ev(1).to_json(), None])
def test_a_batch_record_that_does_not_decode_is_refused_as_a_whole(value):
    with pytest.raises(DecodeError):
        read_label_record(HEADERS, value)


def test_an_event_refused_inside_a_batch_is_dead_lettered_alone_with_its_record_position():
    record = SimpleNamespace(topic="rowcast.labels.d", partition=0, offset=41, key=b"k",
                             value=b"batch", headers=HEADERS)
    single = SimpleNamespace(topic="rowcast.labels.d", partition=0, offset=40, key=b"s",
                             value=ev(0).to_json(), headers=[])
    events = [ev(0), ev(1), ev(2)]
    letter = refused_letter(events[2], "NaN", events, [(0, single), (1, record)])
    assert (letter.offset, letter.value, letter.context) == (41, ev(2).to_json(),
                                                             {"label_batch_index": 1})
    assert refused_letter(events[0], "NaN", events, [(0, single), (1, record)]).offset == 40


def test_publication_keeps_each_worker_under_its_load_budget_with_a_floor_for_cheap_models():
    assert publish_interval(0.0002, floor_s=1.0) == 1.0
    arf = publish_interval(1.28, floor_s=1.0)
    assert arf == pytest.approx(25.6) and 1.28 / arf <= WORKER_LOAD_SHARE + 1e-9
    cost = LoadCost()
    assert cost.needs_measuring(5_600_000) and cost.estimate(5_600_000) == 0.0
    cost.measured(5_600_000, 1.28)
    assert not cost.needs_measuring(6_000_000)
    assert cost.estimate(6_000_000) == pytest.approx(1.28 * 6 / 5.6)
    assert cost.needs_measuring(8_000_000)
