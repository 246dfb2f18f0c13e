"""The learner asks each poll for about ``learner_batch_size`` label *events*, whatever a record
holds: a scorer's batch record carries hundreds, a single-event record one. Passing the setting
as ``max_records`` took up to 2,000 batch records (a million events, ~1 GB of Python objects) in
one poll of a backlog; on a 1M-row load the learner's peak RSS went 214 -> 189 MB once bounded."""

from rowcast.streams.learner import PollSize


def test_the_first_poll_takes_one_record_then_about_the_events_asked_for():
    size = PollSize(2000)
    assert size.records() == 1  # nothing known yet: one record may hold a thousand events
    size.saw(records=1, events=500)
    assert size.records() == 4
    for _ in range(20):
        size.saw(records=4, events=2000)
    assert size.records() == 4


def test_single_event_records_are_polled_by_the_thousand():
    size = PollSize(2000)
    for _ in range(30):
        size.saw(records=size.records(), events=size.records())
    assert size.records() == 2000


def test_an_empty_poll_teaches_nothing_and_never_asks_for_zero():
    size = PollSize(2000)
    size.saw(records=0, events=0)
    assert size.records() == 1
    size.saw(records=1, events=100_000)  # a record larger than the whole batch
    assert size.records() == 1
