"""Hypothesis strategies for the wire protocol, derived from the records themselves.

Every strategy is built from a record's attrs fields and their metadata (`wire`, `array`,
`record`, `nested`), so a new op, record or field is covered without touching this file.
String and list limits are not taken from the metadata; they are read off the record's
own constructor (the longest value it accepts), so they follow the checks it really runs.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from hypothesis import strategies as st

from protocols import EVENTS, SPECS, Event, Op
from protocols.fields import MAX_BLOB, MAX_ITEMS, FieldError

INT_RANGES: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFF_FFFF),
    "u64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "s32": (-(1 << 31), (1 << 31) - 1),
    "s64": (-(1 << 63), (1 << 63) - 1),
}

MAX_LIST_SIZE = 3  # items drawn for a Record[] field: enough to matter, small to shrink


def ints(wire: str) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[wire]
    return st.integers(lo, hi)


@functools.cache
def records_of(cls: type) -> st.SearchStrategy[Any]:
    """Any valid instance of the message record `cls`."""
    return st.builds(cls, **{f.name: for_field(cls, f) for f in attrs.fields(cls)})


def for_field(cls: type, field: attrs.Attribute[Any]) -> st.SearchStrategy[Any]:
    """Any value the field accepts, from its metadata."""
    meta = field.metadata
    wire: str = meta["wire"]
    if "record" in meta:
        size = min(
            MAX_LIST_SIZE, _longest(cls, field, lambda n: (meta["record"](),) * n, MAX_ITEMS)
        )
        return st.lists(records_of(meta["record"]), max_size=size).map(tuple)
    if "nested" in meta:
        return records_of(meta["nested"])
    if "array" in meta:
        base = wire.partition("[")[0]
        return st.tuples(*[ints(base)] * meta["array"])
    if wire in INT_RANGES:
        return ints(wire)
    if wire == "str":
        return st.text(max_size=_longest(cls, field, lambda n: "x" * n, 1 << 16))
    if wire == "bin":
        return st.binary(max_size=_longest(cls, field, lambda n: b"x" * n, MAX_BLOB))
    raise AssertionError(f"no strategy for wire type {wire!r} of {field.name}")


def _longest(cls: type, field: attrs.Attribute[Any], make: Any, upper: int) -> int:
    """The largest n (up to `upper`) for which `cls` accepts make(n) in this field."""

    def accepts(n: int) -> bool:
        try:
            cls(**{field.name: make(n)})
        except FieldError:
            return False
        return True

    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accepts(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def requests() -> st.SearchStrategy[tuple[Op, Any]]:
    """(op, request record) for any op in SPECS."""
    return st.sampled_from(sorted(SPECS)).flatmap(
        lambda op: st.tuples(st.just(op), records_of(SPECS[op].request))
    )


def replies() -> st.SearchStrategy[tuple[Op, Any]]:
    """(op, reply record) for any op in SPECS."""
    return st.sampled_from(sorted(SPECS)).flatmap(
        lambda op: st.tuples(st.just(op), records_of(SPECS[op].reply))
    )


def events() -> st.SearchStrategy[tuple[Event, Any]]:
    """(event, data record) for any event in EVENTS."""
    return st.sampled_from(sorted(EVENTS)).flatmap(
        lambda event: st.tuples(st.just(event), records_of(EVENTS[event]))
    )


request_ids = st.integers(1, 0xFFFF_FFFF)


def field_names() -> list[str]:
    """Every field name of every record, so fuzzed maps sometimes hit real fields."""
    names: set[str] = set()
    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for f in attrs.fields(cls):
            names.add(f.name)
            nested = f.metadata.get("record") or f.metadata.get("nested")
            if nested is not None:
                walk(nested)

    for spec in SPECS.values():
        walk(spec.request)
        walk(spec.reply)
    for cls in EVENTS.values():
        walk(cls)
    return sorted(names)


def msgpack_values() -> st.SearchStrategy[Any]:
    """Anything msgpack can encode: scalars of every kind, nested lists and maps."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=20)
    )
    keys = st.sampled_from(field_names()) | st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=20,
    )


def frame_ints() -> st.SearchStrategy[int]:
    """Ids, op numbers and errnos: often meaningful, sometimes out of any range."""
    return st.sampled_from(
        [0, 1, 2, 3] + [int(op) for op in Op] + [int(e) for e in Event]
    ) | st.integers(-(1 << 63), (1 << 64) - 1)
