"""SCM_RIGHTS packing (protocols/ancillary.py): descriptors out and in, and what a
control message holds beside them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import pack_fds, unpack_fds
from protocols.ancillary import SCM_RIGHTS, SOL_SOCKET


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 31) - 1), max_size=8))
def test_pack_unpack_fds_round_trip(fds: list[int]) -> None:
    """Descriptors packed for sendmsg unpack to the same list with no junk."""
    assert unpack_fds(pack_fds(fds)) == (fds, False)


def test_pack_no_fds_sends_no_ancillary_data() -> None:
    """No descriptors means no control message at all."""
    assert pack_fds([]) == []


def test_unpack_odd_length_data_is_junk() -> None:
    """SCM_RIGHTS data that is not whole ints is junk; the whole ones are still returned."""
    data = pack_fds([3, 4])[0][2] + b"\x05\x00"
    assert unpack_fds([(SOL_SOCKET, SCM_RIGHTS, data)]) == ([3, 4], True)


def test_unpack_other_control_message_is_junk() -> None:
    """A control message other than SCM_RIGHTS is junk; descriptors beside it are returned."""
    credentials = (SOL_SOCKET, 2, b"\x00" * 12)  # SCM_CREDENTIALS
    assert unpack_fds([credentials, *pack_fds([7])]) == ([7], True)
