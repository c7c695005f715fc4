"""Typed wire fields for the message records, and the checks that make a record valid.

Every field of every message is made by one of these helpers, so the codec knows how to
check a value that arrived from a peer (exact type, range, length) and the reference can
say what each field is. Values are checked on construction too: a record that exists is
valid.

The checks are not attrs validators: `generate_methods` writes one `__init__` per record
with every field's check inline, the way attrs writes its own. A round trip builds a record
per message on each side, and a validator call per field cost more than the rest of the
codec together.
"""

from __future__ import annotations

import enum
import linecache
import typing
from collections.abc import Callable
from typing import Any

import attrs

MAX_STR = 256
MAX_BLOB = 4096
MAX_ITEMS = 512

_INT_RANGES = {
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFF_FFFF),
    "u64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "s32": (-(1 << 31), (1 << 31) - 1),
    "s64": (-(1 << 63), (1 << 63) - 1),
}


class FieldError(ValueError):
    """A value does not fit its field; the codec turns it into EINVAL."""


# --- the field helpers: what each field is, in its metadata ----------------------------
def _field(default: Any, meta: dict[str, Any]) -> Any:
    return attrs.field(default=default, kw_only=True, metadata=meta)


def _int(wire: str, doc: str, default: int) -> Any:
    return _field(default, {"wire": wire, "doc": doc, "kind": "int"})


def u16(doc: str = "", default: int = 0) -> Any:
    return _int("u16", doc, default)


def u32(doc: str = "", default: int = 0) -> Any:
    return _int("u32", doc, default)


def u64(doc: str = "", default: int = 0) -> Any:
    return _int("u64", doc, default)


def s32(doc: str = "", default: int = 0) -> Any:
    return _int("s32", doc, default)


def s64(doc: str = "", default: int = 0) -> Any:
    return _int("s64", doc, default)


def mbz(n: int, doc: str = "must be zero") -> Any:
    """A fixed array of u64 the kernel requires to be zero (pad[], reserved[])."""
    return array(n, "u64", doc)


def array(n: int, wire: str = "u64", doc: str = "") -> Any:
    meta = {"wire": f"{wire}[{n}]", "doc": doc, "kind": "array", "array": n, "item": wire}
    return _field((0,) * n, meta)


def upto(n: int, wire: str = "u64", doc: str = "") -> Any:
    """An array of at most `n` integers: where the C struct points at a count of them
    that another field decides (a parallel EXEC's batch addresses)."""
    meta = {"wire": f"{wire}[<={n}]", "doc": doc, "kind": "upto", "array": n, "item": wire}
    return _field((), meta)


def string(doc: str = "", default: str = "", max_len: int = MAX_STR) -> Any:
    return _field(default, {"wire": "str", "doc": doc, "kind": "str", "max_len": max_len})


def blob(doc: str = "", max_len: int = MAX_BLOB) -> Any:
    return _field(b"", {"wire": "bin", "doc": doc, "kind": "bin", "max_len": max_len})


def records(cls: type, doc: str = "", max_items: int = MAX_ITEMS) -> Any:
    """A list of nested records; stands where the C struct has a pointer and a count."""
    meta = {
        "wire": f"{cls.__name__}[]",
        "doc": doc,
        "kind": "records",
        "record": cls,
        "max_items": max_items,
    }
    return _field((), meta)


def record(cls: type, doc: str = "") -> Any:
    """One nested record, sent as a map."""
    meta = {"wire": cls.__name__, "doc": doc, "kind": "nested", "nested": cls}
    return attrs.field(factory=cls, kw_only=True, metadata=meta)


# --- the generated methods -------------------------------------------------------------
def _uints(value: Any, n: int, hi: int, exactly: bool = True) -> bool:
    """A tuple of exactly n ints in [0, hi] (at most n, not `exactly`; bools and floats
    are not ints here)."""
    if type(value) is not tuple or len(value) > n or (exactly and len(value) != n):
        return False
    for item in value:  # noqa: SIM110 - a loop costs half what all() over a generator does
        if type(item) is not int or not 0 <= item <= hi:
            return False
    return True


_NOTHING = object()  # "not passed": the field's factory makes the default


def _check_lines(field: attrs.Attribute[Any], g: dict[str, Any], keep: str = "") -> list[str]:
    """The statements that convert and check parameter `name` (already bound); `keep`
    follows each conversion (full_map_lines puts the converted value back in its map)."""
    name, meta = field.name, field.metadata
    kind = meta["kind"]
    if kind == "int":
        lo, hi = _INT_RANGES[meta["wire"]]
        message = f"f'{name} must be an integer in [{lo}, {hi}], got {{{name}!r}}'"
        # IntEnum members become plain ints, so records compare and encode alike
        return [
            f"if _type({name}) is not _int:",
            f"    if _isinstance({name}, _IntEnum): {name} = _int({name}){keep}",
            f"    else: raise _FieldError({message})",
            f"if not {lo} <= {name} <= {hi}: raise _FieldError({message})",
        ]
    if kind in ("array", "upto"):
        n, hi = meta["array"], _INT_RANGES[meta["item"]][1]
        exactly, count = (True, f"{n}") if kind == "array" else (False, f"at most {n}")
        return [
            f"if _type({name}) is _list: {name} = _tuple({name}){keep}",
            f"if not _uints({name}, {n}, {hi}, {exactly}):",
            f"    raise _FieldError(f'{name} must be {count} x {meta['item']}, got {{{name}!r}}')",
        ]
    if kind in ("str", "bin"):
        pytype, what = ("_str", "a string of at most") if kind == "str" else ("_bytes", "at most")
        unit = "" if kind == "str" else " bytes"
        max_len = meta["max_len"]
        return [
            f"if _type({name}) is not {pytype} or _len({name}) > {max_len}:",
            f"    raise _FieldError('{name} must be {what} {max_len}{unit}')",
        ]
    if kind == "records":
        cls_name = f"_cls_{name}"
        g[cls_name] = meta["record"]
        max_items = meta["max_items"]
        return [
            f"if _type({name}) is _list: {name} = _tuple({name}){keep}",
            f"if _type({name}) is not _tuple or _len({name}) > {max_items}:",
            f"    raise _FieldError('{name} must hold at most {max_items} items')",
            f"for _item in {name}:",
            f"    if _type(_item) is not {cls_name}:",
            f"        raise _FieldError('{name} items must be {meta['record'].__name__}')",
        ]
    if kind == "nested":
        cls_name = f"_cls_{name}"
        g[cls_name] = meta["nested"]
        return [
            f"if {name} is _NOTHING: {name} = {cls_name}(){keep}",
            f"elif _type({name}) is not {cls_name}:",
            f"    raise _FieldError('{name} must be a {meta['nested'].__name__}')",
        ]
    raise AssertionError(f"unknown field kind {kind!r}")


def _globals() -> dict[str, Any]:
    """What the generated checks refer to."""
    return {
        "_type": type,
        "_int": int,
        "_list": list,
        "_tuple": tuple,
        "_str": str,
        "_bytes": bytes,
        "_len": len,
        "_isinstance": isinstance,
        "_IntEnum": enum.IntEnum,
        "_FieldError": FieldError,
        "_uints": _uints,
        "_NOTHING": _NOTHING,
    }


def _make_init(cls: type) -> Any:
    """The record's `__init__`, with every field's check inline."""
    g = _globals()
    params, body = [], []
    for field in attrs.fields(cls):
        name = field.name
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            params.append(f"{name}=_NOTHING")
        else:
            g[f"_default_{name}"] = field.default
            params.append(f"{name}=_default_{name}")
        body += _check_lines(field, g)
    body.append(f"_set_dict(self, {_dict_of(cls)})")
    g["_set_dict"] = _dict_setter(cls)
    signature = f"self, *, {', '.join(params)}" if params else "self"
    return generate(f"{cls.__qualname__}.__init__", f"__init__({signature})", body, g)


def full_map_lines(cls: type, g: dict[str, Any]) -> list[str]:
    """Statements building `cls` as `_self` from a peer's map `_map` (nested records
    already built) with the same checks as `__init__`, but without a keyword call: a
    map that holds every field and nothing else (what `to_wire` sends) is read key by
    key, and any other map goes to `_fallback(_map)` (the keyword call, which fills the
    defaults and names a stray key), as does a missing key. Replies are built this way
    on every round trip, and the keyword call was a third of it. The map becomes the
    record's own `__dict__` (any value converted put back first): a peer's map is
    decoded for this alone, and a new dict was a tenth of the decoding. A record
    without fields is one shared instance: it has one value, and a new one was most
    of the cost of an empty reply. Adds to `g` what the lines refer to, less
    `_fallback`. (Locals are the fields' names: a field may be called `obj` or `self`,
    never `_map`.)"""
    g.update(_globals(), _new=object.__new__, _record=cls)
    fields = attrs.fields(cls)
    lines = [f"if _len(_map) != {len(fields)}: return _fallback(_map)"]
    if not fields:  # one value, as () is one tuple: the replies of most ops, VERSION's args
        g["_one"] = cls()
        return [*lines, "_self = _one"]
    lines += ["_self = _new(_record)", "try:"]
    for field in fields:
        name = field.name
        lines.append(f"    {name} = _map['{name}']")
        keep = f"; _map['{name}'] = {name}"
        lines += [f"    {line}" for line in _check_lines(field, g, keep)]
    lines += ["except KeyError:", "    return _fallback(_map)", "_set_dict(_self, _map)"]
    g["_set_dict"] = _dict_setter(cls)
    return lines


def _dict_of(cls: type) -> str:
    return "{" + ", ".join(f"'{f.name}': {f.name}" for f in attrs.fields(cls)) + "}"


def _dict_setter(cls: type) -> Any:
    for klass in cls.__mro__:
        if "__dict__" in klass.__dict__:
            return klass.__dict__["__dict__"].__set__
    raise AssertionError(f"{cls.__name__} has no __dict__")


# What attrs would write for a frozen record (its _make_repr_script, _make_eq_script and
# _make_hash_script), less the repr's guard against cycles: a record holds only values
# and records built before it, so it can never reach itself.
def _make_repr(cls: type) -> Any:
    values = ", ".join(f"{field.name}={{self.{field.name}!r}}" for field in attrs.fields(cls))
    body = [f"return f'{{self.__class__.__qualname__.rsplit(\">.\", 1)[-1]}}({values})'"]
    return generate(f"{cls.__qualname__}.__repr__", "__repr__(self)", body, {})


def _make_eq(cls: type) -> Any:
    same = " and ".join(f"self.{f.name} == other.{f.name}" for f in attrs.fields(cls))
    body = [
        "if other.__class__ is not self.__class__:",
        "    return NotImplemented",
        f"return {same or 'True'}",
    ]
    return generate(f"{cls.__qualname__}.__eq__", "__eq__(self, other)", body, {})


def _make_hash(cls: type) -> Any:
    values = "".join(f", self.{field.name}" for field in attrs.fields(cls))
    body = [f"return hash(({hash(cls.__qualname__)}{values}))"]
    return generate(f"{cls.__qualname__}.__hash__", "__hash__(self)", body, {})


_METHODS: dict[str, Callable[[type], Any]] = {
    "__init__": _make_init,
    "__repr__": _make_repr,
    "__eq__": _make_eq,
    "__hash__": _make_hash,
}


def generate_methods(cls: type) -> None:
    """Give an attrs record (made with repr=False, eq=False: these replace attrs' own)
    an `__init__` that checks every field inline, and `__repr__`, `__eq__`, `__hash__`.

    Each is written and compiled at its first call, by a stand-in that then puts it in
    its place: a hundred records' methods compiled up front were a sixth of the daemon's
    start to READY=1, and most records never travel in a given process (nor are printed
    or compared).
    """
    for field in attrs.fields(cls):
        if field.name.startswith("_"):
            raise AssertionError(f"{cls.__name__}.{field.name}: wire fields are public names")
    for name, make in _METHODS.items():
        type.__setattr__(cls, name, _compiled_on_first_call(cls, name, make))


def _compiled_on_first_call(cls: type, name: str, make: Callable[[type], Any]) -> Any:
    def first_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        method = cls.__dict__[name]
        if method is first_call:  # else another thread has just put it in place
            method = make(cls)
            type.__setattr__(cls, name, method)
        return method(self, *args, **kwargs)

    first_call.__qualname__ = f"{cls.__qualname__}.{name}"
    return first_call


def generate(qualname: str, head: str, body: list[str], g: dict[str, Any]) -> Any:
    """Compile `def head: body` with globals `g` and return the function. The source is
    kept in linecache, so a traceback through generated code shows the line that raised.
    Used for the records' methods here and for the codec's per-class map functions."""
    source = f"def {head}:\n" + "".join(f"    {line}\n" for line in body or ["pass"])
    filename = f"<xed generated {qualname}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), g)  # noqa: S102 - source built from metadata
    function = g[head.partition("(")[0]]
    function.__qualname__ = qualname
    return function


_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def frozen(cls: type[_T]) -> type[_T]:
    """attrs.frozen(kw_only=True), spelled so that type checkers see each record's __init__;
    its methods are ours (written at their first call)."""
    record_cls = attrs.frozen(kw_only=True, repr=False, eq=False, slots=False)(cls)
    generate_methods(record_cls)
    return record_cls
