"""The sans-I/O codec: round trips, hostile input, exact errnos, the one-pass paths, encoding."""

from __future__ import annotations

import enum
import errno
import linecache
import traceback
from errno import EINVAL, EMSGSIZE, ENOTTY, EPROTO
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    events,
    frame_ints,
    msgpack_values,
    replies,
    request_ids,
    requests,
)

from protocols import (
    MAX_DATAGRAM,
    REPLY_ENCODERS,
    REPLY_READERS,
    REQUEST_ENCODERS,
    SPECS,
    Event,
    EventMessage,
    LocalProtocolError,
    Op,
    ProtocolError,
    Reply,
    Request,
    decode_incoming,
    decode_request,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
    from_wire,
    messages,
    plain_ops,
    plain_request,
    reply_record,
    to_wire,
)
from protocols.ops import ANY_FDS

FUZZ = settings(max_examples=200, deadline=None)
PEER_ERRNOS = {EINVAL, ENOTTY, EMSGSIZE, EPROTO}
ALL_OPS_BY_ID = {i: op for i, op in enumerate(sorted(SPECS), start=1)}


def pack(frame: Any) -> bytes:
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


def fds_for(count: int) -> tuple[int, ...]:
    """Stand-in descriptor numbers: `count` of them (some for ops taking any number)."""
    return tuple(range(100, 100 + (2 if count == ANY_FDS else count)))


def refused(data: bytes, fds: tuple[int, ...] = ()) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(data, fds)
    return info.value


# --- round trips -----------------------------------------------------------------------
@FUZZ
@given(request_ids, requests())
def test_request_round_trip(request_id: int, op_and_args: tuple[Op, Any]) -> None:
    """Every valid request record decodes to an equal Request, with its descriptors."""
    op, args = op_and_args
    fds = fds_for(SPECS[op].fds_in)
    assert decode_request(encode_request(request_id, op, args), fds) == Request(
        request_id, op, args, fds
    )


@FUZZ
@given(request_ids, replies())
def test_reply_round_trip(request_id: int, op_and_result: tuple[Op, Any]) -> None:
    """Every valid reply record decodes to an equal Reply, with the op's descriptors."""
    op, result = op_and_result
    fds = fds_for(SPECS[op].fds_out)
    data = encode_reply(request_id, op, 0, result)
    assert decode_incoming(data, fds, {request_id: op}) == Reply(request_id, 0, result, fds)


@FUZZ
@given(events())
def test_event_round_trip(event_and_data: tuple[Any, Any]) -> None:
    """Every valid event decodes to an equal EventMessage, whatever requests are pending."""
    event, data = event_and_data
    assert decode_incoming(encode_event(event, data), (), {1: Op.VERSION}) == EventMessage(
        event, data
    )


@FUZZ
@given(
    request_ids,
    st.sampled_from(sorted(SPECS)),
    st.sampled_from(sorted(errno.errorcode)),
    st.text(max_size=1024),
)
def test_error_reply_round_trip(request_id: int, op: Op, number: int, message: str) -> None:
    """An error reply decodes to its errno and ErrorInfo, for any op it answers."""
    data = encode_error(request_id, number, message)
    assert decode_incoming(data, (), {request_id: op}) == Reply(
        request_id, number, messages.ErrorInfo(message=message)
    )


# --- hostile input ------------------------------------------------------------------------
def assert_only_protocol_errors(data: bytes, fds: tuple[int, ...]) -> None:
    for decode in (
        lambda: decode_request(data, fds),
        lambda: decode_incoming(data, fds, ALL_OPS_BY_ID),
    ):
        try:
            decode()
        except ProtocolError as exc:
            assert exc.errno in PEER_ERRNOS, exc


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 2).map(fds_for))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, fds: tuple[int, ...]) -> None:
    """Random bytes never raise anything but ProtocolError with a peer-fault errno."""
    assert_only_protocol_errors(data, fds)


@FUZZ
@given(msgpack_values(), st.integers(0, 2).map(fds_for))
def test_arbitrary_msgpack_raises_only_protocol_errors(obj: Any, fds: tuple[int, ...]) -> None:
    """Any msgpack value as a frame never raises anything but a peer-fault ProtocolError."""
    assert_only_protocol_errors(pack(obj), fds)


@FUZZ
@given(frame_ints(), frame_ints(), msgpack_values(), st.integers(0, 2).map(fds_for))
def test_arbitrary_frames_raise_only_protocol_errors(
    ident: int, code: int, body: Any, fds: tuple[int, ...]
) -> None:
    """3-element frames with any ints and any body raise only peer-fault ProtocolErrors."""
    assert_only_protocol_errors(pack([ident, code, body]), fds)


# --- exact errnos -------------------------------------------------------------------------
def test_unknown_op_is_enotty_with_request_id() -> None:
    """An op number no SPECS entry has is ENOTTY, and the error keeps the request id."""
    error = refused(pack([77, 0x7777, {}]))
    assert (error.errno, error.request_id) == (ENOTTY, 77)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("size", True, id="bool-for-int"),
        pytest.param("size", "4096", id="str-for-int"),
        pytest.param("size", 1.0, id="float-for-int"),
        pytest.param("size", -1, id="negative-u64"),
        pytest.param("placement", 1 << 32, id="u32-out-of-range"),
        pytest.param("cpu_caching", 1 << 16, id="u16-out-of-range"),
        pytest.param("reserved", [0], id="array-too-short"),
        pytest.param("reserved", [0, -1], id="array-item-out-of-range"),
        pytest.param("reserved", 0, id="int-for-array"),
    ],
)
def test_wrong_field_type_is_einval(field: str, value: Any) -> None:
    """A field value of the wrong type or out of its range is EINVAL, with the request id."""
    error = refused(pack([5, Op.XE_GEM_CREATE, {field: value}]))
    assert (error.errno, error.request_id) == (EINVAL, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("size", "4096", id="str-for-int"),
        pytest.param("size", True, id="bool-for-int"),
        pytest.param("size", -1, id="negative-u64"),
        pytest.param("placement", 1 << 32, id="u32-out-of-range"),
        pytest.param("reserved", [0, -1], id="array-item-out-of-range"),
    ],
)
def test_full_map_is_checked_like_a_partial_one(field: str, value: Any) -> None:
    """A map with every field (what peers send, read key by key) is refused with the
    same errno and message as one with only the bad field (the keyword call)."""
    full = to_wire(messages.DrmXeGemCreate()) | {field: value}
    assert len(full) == len(attrs.fields(messages.DrmXeGemCreate))
    whole, alone = refused(pack([5, Op.XE_GEM_CREATE, full])), refused(
        pack([5, Op.XE_GEM_CREATE, {field: value}])
    )
    assert (whole.errno, whole.request_id, whole.message) == (EINVAL, 5, alone.message)


def test_a_record_without_fields_decodes_to_its_one_value() -> None:
    """An empty map of a record without fields is that record's one shared instance
    (equal to a constructed one, and immutable); a key in it is still EINVAL."""
    first = decode_request(pack([1, int(Op.VERSION), {}])).args
    assert first is decode_request(pack([2, int(Op.VERSION), {}])).args
    assert first == messages.DrmVersion() and hash(first) == hash(messages.DrmVersion())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.extra = 1  # type: ignore[attr-defined]
    error = refused(pack([3, int(Op.VERSION), {"stray": 1}]))
    assert (error.errno, error.request_id) == (EINVAL, 3) and "stray" in error.message


def test_per_op_tables_are_plain_dicts_whose_entries_compile_once() -> None:
    """Each op's encoder and reader sits in a plain dict (the hot path's lookup): a
    stand-in until its first call, which puts the compiled function in its place and
    answers as that function does."""
    op, args, result = Op.GEM_CLOSE, messages.DrmGemClose(handle=7), messages.Empty()
    for table in (REQUEST_ENCODERS, REPLY_ENCODERS, REPLY_READERS):
        assert type(table) is dict and set(table) == set(SPECS)
    request = REQUEST_ENCODERS[op](5, args)
    reply = REPLY_ENCODERS[op](5, result)
    assert REPLY_READERS[op](reply, (), 5) == result
    compiled = (REQUEST_ENCODERS[op], REPLY_ENCODERS[op], REPLY_READERS[op])
    assert [f.__name__ for f in compiled] == ["encode", "encode", "read"]
    assert request == encode_request(5, op, args) and decode_request(request).args == args
    assert (REQUEST_ENCODERS[op], REPLY_ENCODERS[op], REPLY_READERS[op]) == compiled


def test_each_generated_function_of_an_op_keeps_its_own_source() -> None:
    """An op's reply encoder and reply reader are two functions: each has its own source
    in linecache, so a traceback through either shows its own line. (They once shared a
    name, and the second compiled replaced the first's source.)"""
    op = Op.VERSION
    reply = REPLY_ENCODERS[op](5, messages.DrmVersionReply(name="xe"))
    REPLY_READERS[op](reply, (), 5)
    REQUEST_ENCODERS[op](5, messages.DrmVersion())
    compiled = (REQUEST_ENCODERS[op], REPLY_ENCODERS[op], REPLY_READERS[op])
    names = [f.__code__.co_filename for f in compiled]
    assert len(set(names)) == 3
    for function, name in zip(compiled, names, strict=True):
        source = "".join(linecache.getlines(name))
        assert source.startswith(f"def {function.__name__}(")
    bad = msgpack.packb([5, 0, {**to_wire(messages.DrmVersionReply()), "name": 7}])
    with pytest.raises(ProtocolError) as caught:
        REPLY_READERS[op](bad, (), 5)
    text = "".join(traceback.format_exception(caught.value))
    assert f'File "{names[2]}", line' in text
    assert "raise _FieldError('name must be a string of at most 256')" in text


class _Placement(enum.IntEnum):
    SYSTEM = 1


def test_a_full_map_decodes_to_the_values_a_constructor_stores() -> None:
    """A map holding every field becomes the record's own storage: what it held as a
    list is a tuple there too (the record stays hashable and immutable), an IntEnum a
    plain int, nested records records; and the record packs back to the same map."""
    built = messages.DrmXeExec(pad=(1, 2, 3), syncs=(messages.DrmXeSync(type=1),))
    full = to_wire(built)
    wire = msgpack.unpackb(pack([5, Op.XE_EXEC, full]))[2]  # arrays arrive as lists
    assert type(wire["pad"]) is list and type(wire["syncs"]) is list
    record = decode_request(pack([5, Op.XE_EXEC, wire])).args
    assert type(record.pad) is tuple and type(record.syncs) is tuple
    assert type(record.syncs[0]) is messages.DrmXeSync
    assert record == built and hash(record) == hash(built)
    gem = to_wire(messages.DrmXeGemCreate()) | {"placement": _Placement.SYSTEM}
    decoded = from_wire(messages.DrmXeGemCreate, gem)
    assert type(decoded.placement) is int and decoded == messages.DrmXeGemCreate(placement=1)
    create = messages.DrmXeGemCreate(size=4096, placement=2)
    frame = msgpack.unpackb(encode_request(7, Op.XE_GEM_CREATE, create))
    assert frame == [7, int(Op.XE_GEM_CREATE), msgpack.unpackb(pack(to_wire(create)))]


def test_full_map_with_a_stray_key_is_einval() -> None:
    """As many keys as the record has fields, one of them no field (a field missing in
    its place): EINVAL naming the stray key, not a zero for the missing field."""
    full = to_wire(messages.DrmXeGemCreate())
    del full["size"]
    error = refused(pack([5, Op.XE_GEM_CREATE, full | {"szie": 4096}]))
    assert (error.errno, error.request_id) == (EINVAL, 5)
    assert "szie" in error.message


@pytest.mark.parametrize(
    "syncs",
    [
        pytest.param({"type": 2}, id="map-for-list"),
        pytest.param([{"type": -1}], id="bad-item-field"),
        pytest.param([{"bogus": 1}], id="unknown-item-field"),
        pytest.param([{}] * 65, id="too-many-items"),
    ],
)
def test_bad_nested_records_are_einval(syncs: Any) -> None:
    """A malformed list of nested records is EINVAL like a malformed scalar field."""
    assert refused(pack([5, Op.XE_EXEC, {"syncs": syncs}])).errno == EINVAL


def test_unknown_field_is_einval() -> None:
    """A field the record does not have is EINVAL, never silently dropped."""
    assert refused(pack([5, Op.XE_GEM_CREATE, {"size": 4096, "szie": 1}])).errno == EINVAL


def test_request_id_zero_is_einval() -> None:
    """Request id 0 is reserved for events and refused."""
    assert refused(pack([0, Op.VERSION, {}])).errno == EINVAL


@pytest.mark.parametrize("ident", [-1, 1 << 32, True, "1"])
def test_request_id_not_u32_is_einval(ident: Any) -> None:
    """A request id that is not a u32 integer is EINVAL."""
    assert refused(pack([ident, Op.VERSION, {}])).errno == EINVAL


def test_oversized_datagram_is_emsgsize() -> None:
    """A datagram longer than MAX_DATAGRAM is EMSGSIZE before any parsing."""
    assert refused(b"\x90" * (MAX_DATAGRAM + 1)).errno == EMSGSIZE


def test_truncated_datagram_is_emsgsize_with_request_id() -> None:
    """A datagram the transport cut at the limit is EMSGSIZE, under its request id."""
    data = encode_request(42, Op.VERSION, messages.DrmVersion())
    error = refused_truncated(data)
    assert (error.errno, error.request_id) == (EMSGSIZE, 42)


def refused_truncated(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(data, (), truncated=True)
    return info.value


def test_descriptors_on_an_op_that_takes_none_are_einval() -> None:
    """Descriptors attached to a request whose op takes none are EINVAL."""
    data = encode_request(9, Op.VERSION, messages.DrmVersion())
    error = refused(data, fds_for(1))
    assert (error.errno, error.request_id) == (EINVAL, 9)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"id": 1}, id="map"),
        pytest.param(1, id="int"),
        pytest.param("hello", id="str"),
        pytest.param([1, 0], id="two-elements"),
        pytest.param([1, 0, {}, 0], id="four-elements"),
    ],
)
def test_non_list_frame_is_einval(frame: Any) -> None:
    """A frame that is not a 3-element array is EINVAL."""
    assert refused(pack(frame)).errno == EINVAL


def test_truncated_msgpack_is_einval() -> None:
    """Bytes that are not one complete msgpack value are EINVAL."""
    data = encode_request(1, Op.VERSION, messages.DrmVersion())
    assert refused(data[:-1]).errno == EINVAL
    assert refused(data + b"\x00").errno == EINVAL


def test_missing_fields_decode_as_zero() -> None:
    """Fields a request leaves out are zero, as in a memset struct."""
    args = decode_request(pack([1, Op.XE_GEM_CREATE, {"size": 4096}])).args
    assert args == messages.DrmXeGemCreate(size=4096)
    for field in attrs.fields(messages.DrmXeGemCreate):
        value = getattr(args, field.name)
        if field.name != "size":
            assert value == 0 or value == (0,) * len(value), field.name


@pytest.mark.parametrize("op", sorted(SPECS), ids=lambda op: op.name)
def test_empty_args_decode_to_the_record_defaults(op: Op) -> None:
    """An empty args map decodes, for every op, to the record built with no arguments."""
    assert decode_request(pack([1, op, {}]), fds_for(SPECS[op].fds_in)).args == SPECS[op].request()


def test_reply_to_unknown_request_is_eproto() -> None:
    """A reply whose id no pending request has is EPROTO on the client side."""
    data = encode_reply(3, Op.VERSION, 0, messages.DrmVersionReply())
    with pytest.raises(ProtocolError) as info:
        decode_incoming(data, (), {4: Op.VERSION})
    assert info.value.errno == EPROTO


def test_reply_with_wrong_descriptor_count_is_eproto() -> None:
    """A successful reply must carry exactly the op's fds_out descriptors."""
    data = encode_reply(3, Op.MMAP, 0, messages.XedMmapReply())
    with pytest.raises(ProtocolError) as info:
        decode_incoming(data, (), {3: Op.MMAP})
    assert info.value.errno == EPROTO


# --- the one-pass reply ------------------------------------------------------------------
def agrees(data: bytes, fds: tuple[int, ...], request_id: int, op: Op) -> Any:
    """reply_record's answer, checked against decode_incoming's for the same datagram:
    the same record, or None (decode_incoming says what it is), or the same refusal."""
    try:
        full: Any = decode_incoming(data, fds, {request_id: op})
    except ProtocolError as exc:
        full = exc
    try:
        fast = reply_record(data, fds, request_id, op)
    except ProtocolError as exc:
        assert type(full) is ProtocolError, full
        assert exc.errno == full.errno == EPROTO
        return None
    if fast is not None:
        assert full == Reply(request_id, 0, fast, fds)
    return fast


@FUZZ
@given(request_ids, replies())
def test_reply_record_is_the_reply_decoded(request_id: int, op_and_result: tuple[Op, Any]) -> None:
    """The success reply a client waits for is read in one pass to decode_incoming's
    record (a reply with any number of descriptors is left to decode_incoming)."""
    op, result = op_and_result
    fds = fds_for(SPECS[op].fds_out)
    fast = agrees(encode_reply(request_id, op, 0, result), fds, request_id, op)
    assert (fast is None) == (SPECS[op].fds_out == ANY_FDS)


@FUZZ
@given(
    frame_ints(),
    frame_ints(),
    st.one_of(msgpack_values(), replies().map(lambda r: to_wire(r[1]))),
    st.integers(0, 2).map(fds_for),
    st.sampled_from(sorted(SPECS)),
)
def test_reply_record_agrees_with_decode_incoming_on_any_frame(
    ident: int, code: int, body: Any, fds: tuple[int, ...], op: Op
) -> None:
    """Whatever a frame holds, reply_record gives decode_incoming's record or leaves it
    to decode_incoming; it refuses (EPROTO) only what decode_incoming refuses."""
    request_id = ident if 0 < ident <= 0xFFFF_FFFF else 1
    agrees(pack([ident, code, body]), fds, request_id, op)


def test_reply_record_leaves_every_other_message_to_decode_incoming() -> None:
    """An event, a refusal, a reply to another request, an id that is a bool, a count
    of descriptors the op does not answer with, or nothing at all: None."""
    version = to_wire(messages.DrmVersionReply())
    assert agrees(encode_reply(1, Op.VERSION, 0, messages.DrmVersionReply()), (), 1, Op.VERSION)
    event = messages.ProtocolErrorInfo(errno=EINVAL, message="x")
    for data, fds, request_id in (
        (encode_event(Event.PROTOCOL_ERROR, event), (), 1),
        (encode_error(1, EINVAL, "no"), (), 1),
        (encode_reply(2, Op.VERSION, 0, messages.DrmVersionReply()), (), 1),
        (pack([True, 0, version]), (), 1),
        (pack([1, False, version]), (), 1),
        (encode_reply(1, Op.VERSION, 0, messages.DrmVersionReply()), (100,), 1),
        (b"", (), 1),
    ):
        assert reply_record(data, fds, request_id, Op.VERSION) is None, data


def test_reply_record_with_a_bad_field_is_eproto() -> None:
    """A success reply whose record does not check is the daemon's protocol error."""
    agrees(encode_reply(1, Op.VERSION, 0, messages.DrmVersionReply()), (), 1, Op.VERSION)
    data = pack([1, 0, {**to_wire(messages.DrmVersionReply()), "version_major": -1}])
    with pytest.raises(ProtocolError) as info:
        reply_record(data, (), 1, Op.VERSION)
    assert info.value.errno == EPROTO


# --- the one-pass request ----------------------------------------------------------------
ALL_OPS = frozenset(SPECS)


def plain_agrees(data: bytes, allowed: frozenset[Op] = ALL_OPS) -> Any:
    """plain_request's answer, checked against decode_request's for the same datagram
    (whole, no descriptors): the same id, op and record, or None where decode_request
    refuses it, the op takes descriptors or is not allowed."""
    try:
        full: Any = decode_request(data, ())
    except ProtocolError as exc:
        full = exc
    fast = plain_request(data, plain_ops(allowed))
    if fast is not None:
        assert type(full) is Request and full == Request(*fast)
        assert fast[1] in allowed and not SPECS[fast[1]].fds_in
    else:
        assert (
            type(full) is ProtocolError or full.op not in allowed or SPECS[full.op].fds_in
        ), full
    return fast


@FUZZ
@given(request_ids, requests())
def test_plain_request_is_the_request_decoded(
    request_id: int, op_and_args: tuple[Op, Any]
) -> None:
    """Every valid request of an op that takes no descriptors is read in one pass to
    decode_request's record; one that takes descriptors is left to decode_request."""
    op, args = op_and_args
    fast = plain_agrees(encode_request(request_id, op, args))
    assert (fast is None) == bool(SPECS[op].fds_in)


@FUZZ
@given(request_ids, requests())
def test_plain_request_leaves_ops_not_allowed_to_the_long_way(
    request_id: int, op_and_args: tuple[Op, Any]
) -> None:
    """An op outside the connection's allowed set is None: the handshake's table says
    which errno (EPROTO before HELLO, EACCES for another role or node)."""
    op, args = op_and_args
    data = encode_request(request_id, op, args)
    assert plain_agrees(data, ALL_OPS - {op}) is None
    assert plain_agrees(data, frozenset()) is None


@FUZZ
@given(
    frame_ints(),
    st.one_of(frame_ints(), msgpack_values()),
    st.one_of(msgpack_values(), requests().map(lambda r: to_wire(r[1]))),
)
def test_plain_request_agrees_with_decode_request_on_any_frame(
    ident: int, number: Any, body: Any
) -> None:
    """Whatever a frame holds, plain_request gives decode_request's request or None; it
    never raises and never passes what decode_request refuses."""
    plain_agrees(pack([ident, number, body]))


def test_plain_request_leaves_every_defect_to_decode_request() -> None:
    """Ids 0, past u32 or a bool; an op that is a bool, a float, a list or unknown; a
    bad field; a frame that is not three elements; garbage; too long: all None."""
    version = int(Op.VERSION)
    assert plain_agrees(pack([1, version, {}])) == (1, Op.VERSION, messages.DrmVersion())
    for frame in (
        [0, version, {}],
        [1 << 32, version, {}],
        [True, version, {}],
        [1, True, {}],
        [1, float(version), {}],
        [1, [version], {}],
        [1, 0x7FFF, {}],
        [1, int(Op.XE_GEM_CREATE), {"size": -1}],
        [1, version, {"stray": 1}],
        [1, version],
        {"id": 1},
    ):
        assert plain_agrees(pack(frame)) is None, frame
    assert plain_agrees(b"\xc1") is None
    assert plain_agrees(pack([1, version, {}]) + b"\0" * MAX_DATAGRAM) is None


# --- encode side ------------------------------------------------------------------------
def test_encoding_wrong_record_for_op_is_local_error() -> None:
    """Encoding a request or reply record that is not the op's is our bug, not the peer's."""
    with pytest.raises(LocalProtocolError):
        encode_request(1, Op.XE_GEM_CREATE, messages.DrmXeVmCreate())
    with pytest.raises(LocalProtocolError):
        encode_reply(1, Op.XE_GEM_CREATE, 0, messages.DrmXeVmCreateReply())
    with pytest.raises(LocalProtocolError):
        encode_reply(1, Op.XE_GEM_CREATE, EINVAL, messages.DrmXeGemCreateReply())


@pytest.mark.parametrize("request_id", [0, 1 << 32])
def test_encoding_bad_request_id_is_local_error(request_id: int) -> None:
    """Request ids outside 1..0xffffffff are refused before sending."""
    with pytest.raises(LocalProtocolError):
        encode_request(request_id, Op.VERSION, messages.DrmVersion())


def test_encoding_oversized_message_is_local_error() -> None:
    """A valid record whose encoding exceeds MAX_DATAGRAM is refused before sending."""
    big = messages.DrmXeVmBindOp(obj_offset=(1 << 64) - 1, range=(1 << 64) - 1, addr=1 << 63)
    bind = messages.DrmXeVmBind(binds=(big,) * 512)
    with pytest.raises(LocalProtocolError):
        encode_request(1, Op.XE_VM_BIND, bind)
