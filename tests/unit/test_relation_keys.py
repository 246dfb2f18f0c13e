"""Which columns key a relation's rows: what the WAL's Relation message says at that point
(:func:`rowcast.connectors.cdc_source.relation_key`), the catalog only where the WAL cannot say."""

from __future__ import annotations

import pytest

from rowcast.connectors import pgoutput, pgtypes
from rowcast.connectors.cdc_source import RelationInfo, UnkeyedRow, relation_key


def rel(identity: str, columns: dict[str, bool], table: str = "t") -> pgoutput.Relation:
    return pgoutput.Relation(7, "public", table, identity,
                             tuple(pgoutput.Column(n, 23, -1, k) for n, k in columns.items()))


def catalog(*names: str):
    asked: list[int] = []

    def primary_key() -> tuple[str, ...] | None:
        asked.append(1)
        return names or None
    primary_key.asked = asked  # type: ignore[attr-defined]
    return primary_key


def test_default_identity_keys_by_the_flagged_columns_not_the_current_catalog():
    """The source behind a rename of the key column: the WAL still names it ``id``."""
    key = relation_key(rel("d", {"id": True, "x": False}), catalog("order_id"))
    assert (key.names, key.checked, key.missing) == (("id",), False, None)


def test_default_identity_keeps_the_primary_key_order_when_the_catalog_agrees():
    key = relation_key(rel("d", {"a": True, "b": True, "x": False}), catalog("b", "a"))
    assert key.names == ("b", "a") and not key.checked


def test_default_identity_without_a_catalog_key_still_keys_by_the_flags():
    key = relation_key(rel("d", {"a": True, "b": True}), catalog())
    assert key.names == ("a", "b") and key.missing is None


def test_no_flagged_column_under_the_default_identity_is_no_key_naming_the_table():
    """Written while the table had no primary key: the catalog's key of now does not apply."""
    primary_key = catalog("id")
    key = relation_key(rel("d", {"id": False, "x": False}, table="orders"), primary_key)
    assert key.names == () and key.checked
    assert key.missing is not None and "public.orders" in key.missing
    assert "\n" not in key.missing
    assert primary_key.asked == []  # type: ignore[attr-defined]


def test_full_identity_keys_by_the_catalog_key_when_the_row_has_its_columns():
    key = relation_key(rel("f", {"id": True, "x": True}), catalog("id"))
    assert (key.names, key.checked, key.missing) == (("id",), True, None)


@pytest.mark.parametrize("primary_key", [catalog("order_id"), catalog()])
def test_full_identity_without_the_catalog_key_columns_is_no_key(primary_key):
    key = relation_key(rel("f", {"id": True, "x": True}, table="orders"), primary_key)
    assert key.names == () and key.missing is not None and "public.orders" in key.missing


def test_index_identity_prefers_the_primary_key_then_the_flagged_index():
    assert relation_key(rel("i", {"id": False, "code": True}), catalog("id")).names == ("id",)
    assert relation_key(rel("i", {"id": False, "code": True}), catalog()).names == ("code",)


def info_for(identity: str, columns: dict[str, bool], primary_key) -> RelationInfo:
    relation = rel(identity, columns)
    key = relation_key(relation, primary_key)
    return RelationInfo(relation, "p.public.t", tuple(columns),
                        tuple(pgtypes.decoder_for(23) for _ in columns), key.names,
                        key=key)


def test_a_row_without_a_key_is_refused_with_the_reason():
    info = info_for("d", {"id": False, "x": False}, catalog())
    with pytest.raises(UnkeyedRow) as caught:
        info.check_key({"id": 1, "x": 2})
    assert "public.t" in str(caught.value)


def test_a_null_key_value_from_the_catalog_key_is_refused():
    """REPLICA IDENTITY FULL keyed by a primary key added later: older rows may lack it."""
    info = info_for("f", {"id": True, "code": True}, catalog("code"))
    info.check_key({"id": 1, "code": 5})
    with pytest.raises(UnkeyedRow) as caught:
        info.check_key({"id": 1, "code": None})
    assert "'code'" in str(caught.value) and "public.t" in str(caught.value)


def test_a_key_named_by_the_wal_needs_no_check_per_row():
    assert not info_for("d", {"id": True, "x": False}, catalog("id")).key.checked
