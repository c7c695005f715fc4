"""The records' generated constructors: each field's check runs on construction, so a
record that exists is valid, whether user code built it or the codec decoded it."""

from __future__ import annotations

import enum
import linecache
import traceback
from typing import Any

import attrs
import pytest

from protocols import SPECS, from_wire, to_wire
from protocols import messages as m
from protocols.fields import _INT_RANGES, FieldError, records, string, u64


class Engine(enum.IntEnum):
    COPY = 1


def test_int_enum_becomes_a_plain_int() -> None:
    """IntEnum members are stored as ints, so records compare and encode alike."""
    record = m.DrmXeGemCreate(size=4096, placement=Engine.COPY)
    assert type(record.placement) is int
    assert record == m.DrmXeGemCreate(size=4096, placement=1)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        pytest.param("size", True, "size must be an integer", id="bool"),
        pytest.param("size", 1.0, "size must be an integer", id="float"),
        pytest.param("size", -1, "[0, 18446744073709551615]", id="negative-u64"),
        pytest.param("cpu_caching", 1 << 16, "[0, 65535]", id="u16-range"),
        pytest.param("pad", (0, 0), "pad must be 3 x u16", id="short-array"),
        pytest.param("pad", (0, 0, 1 << 16), "pad must be 3 x u16", id="array-item-range"),
        pytest.param("pad", (0, 0, False), "pad must be 3 x u16", id="array-bool-item"),
        pytest.param("reserved", 0, "reserved must be 2 x u64", id="int-for-array"),
    ],
)
def test_a_bad_value_names_its_field(field: str, value: Any, words: str) -> None:
    with pytest.raises(FieldError, match=words.replace("[", r"\[")):
        m.DrmXeGemCreate(**{field: value})


def test_lists_become_tuples() -> None:
    """Arrays and record lists are immutable once in a record, like the record itself."""
    record = m.DrmXeExec(pad=[0, 0, 0], syncs=[m.DrmXeSync(type=1)])
    assert record.pad == (0, 0, 0) and type(record.pad) is tuple
    assert type(record.syncs) is tuple


def test_record_lists_check_their_items_and_length() -> None:
    with pytest.raises(FieldError, match="syncs items must be DrmXeSync"):
        m.DrmXeExec(syncs=(m.DrmXeGemCreate(),))
    with pytest.raises(FieldError, match="at most 64 items"):
        m.DrmXeExec(syncs=(m.DrmXeSync(),) * 65)


def test_strings_and_nested_records_are_checked() -> None:
    with pytest.raises(FieldError, match="role must be a string of at most 16"):
        m.Hello(role="x" * 17)
    with pytest.raises(FieldError, match="role must be a string"):
        m.Hello(role=b"drm")
    with pytest.raises(FieldError, match="device must be a DeviceIdentity"):
        m.HelloReply(device=m.DrmVersion())


def test_defaults_are_zero_and_nested_defaults_are_records() -> None:
    reply = m.HelloReply()
    assert reply.client_id == 0 and reply.version == (0, 0)
    assert type(reply.device) is m.DeviceIdentity


def test_fields_are_keyword_only_and_unknown_names_are_refused() -> None:
    with pytest.raises(TypeError):
        m.DrmXeGemCreate(4096)  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.DrmXeGemCreate(szie=4096)  # type: ignore[call-arg]


def test_records_stay_frozen_and_evolve_rechecks() -> None:
    record = m.DrmXeGemCreate(size=4096)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.size = 1  # type: ignore[misc]
    assert attrs.evolve(record, size=8192).size == 8192
    with pytest.raises(FieldError):
        attrs.evolve(record, size=-1)


def _fresh_record(decorate: Any = m.frozen) -> Any:
    """A record class of its own, never built before (its methods are not compiled yet)."""

    @decorate
    class Fresh:
        size: int = u64("bytes")
        name: str = string(max_len=4)
        syncs: tuple[m.DrmXeSync, ...] = records(m.DrmXeSync, max_items=2)

    return Fresh


def test_a_record_never_built_checks_its_fields_on_first_use() -> None:
    """A record's checking __init__ is compiled at its first construction, not when the
    module is imported, and that first construction checks every field all the same."""
    fresh = _fresh_record()
    assert f"<xed generated {fresh.__qualname__}.__init__>" not in linecache.cache
    with pytest.raises(FieldError, match=r"size must be an integer in \[0, 18446744073709551615\]"):
        fresh(size=-1)
    assert fresh.__init__.__code__.co_filename == f"<xed generated {fresh.__qualname__}.__init__>"
    with pytest.raises(FieldError, match="name must be a string of at most 4"):
        _fresh_record()(name="12345")
    with pytest.raises(FieldError, match="syncs items must be DrmXeSync"):
        _fresh_record()(syncs=(m.DrmVersion(),))
    with pytest.raises(TypeError):
        _fresh_record()(1)
    with pytest.raises(TypeError):
        _fresh_record()(szie=1)
    assert _fresh_record()(size=1, name="ab", syncs=[m.DrmXeSync()]).syncs == (m.DrmXeSync(),)


def test_a_traceback_through_a_first_construction_shows_the_generated_line() -> None:
    """The generated source is in linecache, so a failed check shows the line that
    raised, the first time the record is built as any other."""
    for _ in range(2):  # the first construction compiles, the second finds it compiled
        fresh = _fresh_record()
        with pytest.raises(FieldError) as caught:
            fresh(name=b"bytes")
        text = "".join(traceback.format_exception(caught.value))
        assert f'File "<xed generated {fresh.__qualname__}.__init__>", line' in text
        assert "raise _FieldError('name must be a string of at most 4')" in text


def test_generated_repr_eq_and_hash_behave_as_attrs_own() -> None:
    """__repr__, __eq__ and __hash__, written at their first call, do what attrs would
    have written for the same record."""
    ours, theirs = _fresh_record(), _fresh_record(attrs.frozen(kw_only=True))
    values = {"size": 1, "name": "ab", "syncs": (m.DrmXeSync(type=2),)}
    assert repr(ours(**values)) == repr(theirs(**values))
    assert repr(ours()) == repr(theirs())
    for cls in (ours, theirs):
        same, other = cls(**values), cls(**values)
        assert (same == other, same != other) == (True, False)
        assert (same == cls(), same != cls()) == (False, True)
        assert cls().__eq__(m.DrmVersion()) is NotImplemented
        assert hash(cls(**values)) == hash(cls(**values))
        assert len({cls(**values), cls(**values), cls()}) == 2


# --- a peer's full map, read key by key (fields.full_map_lines) ---------------------------
def _scalar_records() -> list[type]:
    """Every wire record made of ints, strings and blobs only, two fields or more (most
    arguments and replies): what the edges below are walked for."""
    found = {
        cls
        for spec in SPECS.values()
        for cls in (spec.request, spec.reply)
        if len(attrs.fields(cls)) > 1
        and all(f.metadata["kind"] in ("int", "str", "bin") for f in attrs.fields(cls))
    }
    return sorted(found, key=lambda cls: cls.__name__)


def _edges(field: attrs.Attribute[Any]) -> tuple[list[Any], list[Any]]:
    """(values the field takes, values it refuses), at and just past its limits."""
    meta = field.metadata
    if meta["kind"] == "int":
        lo, hi = _INT_RANGES[meta["wire"]]
        return [lo, hi, (lo + hi) // 2], [lo - 1, hi + 1, True, 1.0, "1", None, 1 << 70]
    text = "x" * meta["max_len"]
    if meta["kind"] == "str":
        return ["", text], [text + "x", 0, b"x"]
    return [b"", text.encode()], [text.encode() + b"x", 0, "x"]


@pytest.mark.parametrize("cls", _scalar_records(), ids=lambda cls: cls.__name__)
def test_a_full_map_of_scalars_is_checked_as_the_constructor_checks(cls: type) -> None:
    """For every scalar-only record, field by field, at and past each limit: a full map
    from a peer decodes to what the constructor stores, or is refused with the
    constructor's own message; the same map in another key order decodes the same."""
    assert _scalar_records(), "no record of scalars left to check"
    base = to_wire(cls())
    for field in attrs.fields(cls):
        taken, refused = _edges(field)
        for value in taken:
            wire = base | {field.name: value}
            assert from_wire(cls, dict(wire)) == cls(**wire)
            backwards = dict(reversed(list(wire.items())))
            assert from_wire(cls, backwards) == cls(**wire)
        for value in refused:
            wire = base | {field.name: value}
            with pytest.raises(FieldError) as constructed:
                cls(**wire)
            with pytest.raises(FieldError) as decoded:
                from_wire(cls, dict(wire))
            assert str(decoded.value) == str(constructed.value)
    ints = [f.name for f in attrs.fields(cls) if f.metadata["kind"] == "int"]
    decoded = from_wire(cls, base | dict.fromkeys(ints, Engine.COPY))
    values = [getattr(decoded, name) for name in ints]
    assert all(type(value) is int and value == 1 for value in values)
