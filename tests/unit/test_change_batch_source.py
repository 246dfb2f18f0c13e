"""The CDC source's per-row shortcuts give exactly what the general code gives (issue 15)."""

from __future__ import annotations

import os
import random

import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2

from rowcast.connectors import pgoutput, pgtypes
from rowcast.connectors.cdc_source import RelationInfo
from rowcast.connectors.partitioning import murmur2, partition_of
from rowcast.core.errors import UndecodableValue


def test_murmur2_is_kafkas_for_every_length():
    rng = random.Random(7)
    for length in range(0, 300):
        for _ in range(20):
            data = os.urandom(length) if rng.random() < 0.5 else \
                f'{{"id":{rng.randint(-10**12, 10**12)}}}'.encode()[:length]
            assert murmur2(data) == kafka_murmur2(data), data


def test_partition_is_kafka_pythons_default_partitioner():
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4}

        available_partitions_for_topic = partitions_for_topic

    for i in range(2000):
        key = f'{{"id":{i}}}'.encode()
        assert partition_of(key, 5) == DefaultPartitioner().partition(
            "t", None, key, None, None, Cluster())


def test_timestamptz_in_utc_is_sliced_to_the_same_text_as_the_general_parse():
    rng = random.Random(3)
    for _ in range(20000):
        frac = rng.choice(["", "." + str(rng.randint(0, 999999)).rjust(6, "0")[:rng.randint(1, 6)]])
        text = (f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
                f"{frac}")
        # '+00:00' is not the UTC session's form: it takes the general path
        assert pgtypes._timestamptz(f"{text}+00".encode()) == \
            pgtypes._timestamptz(f"{text}+00:00".encode()), text
    assert pgtypes._timestamptz(b"12345-06-07 08:09:10.5+00") == "+12345-06-07T08:09:10.500000Z"
    assert pgtypes._timestamptz(b"0044-03-15 12:00:00+00 BC") == "-0043-03-15T12:00:00.000000Z"


OIDS = {"i": 23, "b": 20, "f": 701, "t": 25, "ok": 16, "d": 1082, "tz": 1184, "n": 1700,
        "a": 1007, "iv": 1186}


def _info() -> RelationInfo:
    columns = tuple(pgoutput.Column(name, oid, -1, name == "i") for name, oid in OIDS.items())
    rel = pgoutput.Relation(1, "public", "t", "d", columns)
    return RelationInfo(rel, "p.public.t", tuple(OIDS), tuple(pgtypes.decoder_for(o)
                                                             for o in OIDS.values()), ("i",))


@pytest.mark.parametrize("values", [
    (b"1", b"-9223372036854775808", b"NaN", "héllo".encode(), b"t", b"2024-02-29",
     b"2024-01-02 03:04:05.5+00", b"1.50", b"{1,NULL,3}", b"1 day 02:00:00"),
    (b"2", None, b"-1.5e-10", b"", b"f", b"infinity", b"infinity", None, b"{}", b"00:00:00"),
    (b"3", pgoutput.UNCHANGED_TOAST, b"Infinity", pgoutput.UNCHANGED_TOAST, None, None, None,
     b"NaN", None, None),
])
def test_the_compiled_row_decoder_equals_the_generic_loop(values):
    info = _info()
    assert info.decode(values) == info.row(values)
    assert list(info.decode(values)) == list(OIDS)  # column order kept


def test_a_value_the_compiled_decoder_cannot_read_names_its_column():
    info = _info()
    values = (b"1", b"x", b"1", b"t", b"t", b"2024-01-01", None, None, None, None)
    with pytest.raises(UndecodableValue) as caught:
        info.decode(values)
    assert caught.value.column == "b"
