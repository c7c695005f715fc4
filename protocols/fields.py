"""Typed wire fields for the message records.

Every field of every message is made by one of these helpers, so the codec knows how to
check a value that arrived from a peer (exact type, range, length) and the reference can
say what each field is. Values are checked on construction too: a record that exists is
valid.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

MAX_STR = 256
MAX_BLOB = 4096
MAX_ITEMS = 512


class FieldError(ValueError):
    """A value does not fit its field; the codec turns it into EINVAL."""


def _check_int(lo: int, hi: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int or not lo <= value <= hi:
            raise FieldError(f"{attribute.name} must be an integer in [{lo}, {hi}], got {value!r}")

    return check


def _plain_int(value: Any) -> Any:
    """IntEnum members become plain ints, so records compare and encode alike."""
    return int(value) if isinstance(value, enum.IntEnum) else value


def _int(wire: str, lo: int, hi: int, doc: str, default: int) -> Any:
    return attrs.field(
        default=default,
        kw_only=True,
        converter=_plain_int,
        validator=_check_int(lo, hi),
        metadata={"wire": wire, "doc": doc},
    )


def u16(doc: str = "", default: int = 0) -> Any:
    return _int("u16", 0, 0xFFFF, doc, default)


def u32(doc: str = "", default: int = 0) -> Any:
    return _int("u32", 0, 0xFFFF_FFFF, doc, default)


def u64(doc: str = "", default: int = 0) -> Any:
    return _int("u64", 0, 0xFFFF_FFFF_FFFF_FFFF, doc, default)


def s32(doc: str = "", default: int = 0) -> Any:
    return _int("s32", -(1 << 31), (1 << 31) - 1, doc, default)


def s64(doc: str = "", default: int = 0) -> Any:
    return _int("s64", -(1 << 63), (1 << 63) - 1, doc, default)


def mbz(n: int, doc: str = "must be zero") -> Any:
    """A fixed array of u64 the kernel requires to be zero (pad[], reserved[])."""
    return array(n, "u64", doc)


def array(n: int, wire: str = "u64", doc: str = "") -> Any:
    hi = {"u16": 0xFFFF, "u32": 0xFFFF_FFFF, "u64": 0xFFFF_FFFF_FFFF_FFFF}[wire]

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (
            type(value) is not tuple
            or len(value) != n
            or any(type(v) is not int or not 0 <= v <= hi for v in value)
        ):
            raise FieldError(f"{attribute.name} must be {n} x {wire}, got {value!r}")

    return attrs.field(
        default=(0,) * n,
        kw_only=True,
        converter=_to_tuple,
        validator=check,
        metadata={"wire": f"{wire}[{n}]", "doc": doc, "array": n},
    )


def string(doc: str = "", default: str = "", max_len: int = MAX_STR) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not str or len(value) > max_len:
            raise FieldError(f"{attribute.name} must be a string of at most {max_len}")

    return attrs.field(
        default=default,
        kw_only=True,
        validator=check,
        metadata={"wire": "str", "doc": doc, "max_len": max_len},
    )


def blob(doc: str = "", max_len: int = MAX_BLOB) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not bytes or len(value) > max_len:
            raise FieldError(f"{attribute.name} must be at most {max_len} bytes")

    return attrs.field(
        default=b"",
        kw_only=True,
        validator=check,
        metadata={"wire": "bin", "doc": doc, "max_len": max_len},
    )


def records(cls: type, doc: str = "", max_items: int = MAX_ITEMS) -> Any:
    """A list of nested records; stands where the C struct has a pointer and a count."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not tuple or len(value) > max_items:
            raise FieldError(f"{attribute.name} must hold at most {max_items} items")
        for item in value:
            if type(item) is not cls:
                raise FieldError(f"{attribute.name} items must be {cls.__name__}")

    return attrs.field(
        default=(),
        kw_only=True,
        converter=_to_tuple,
        validator=check,
        metadata={"wire": f"{cls.__name__}[]", "doc": doc, "record": cls, "max_items": max_items},
    )


def record(cls: type, doc: str = "") -> Any:
    """One nested record, sent as a map."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not cls:
            raise FieldError(f"{attribute.name} must be a {cls.__name__}")

    return attrs.field(
        factory=cls,
        kw_only=True,
        validator=check,
        metadata={"wire": cls.__name__, "doc": doc, "nested": cls},
    )


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
