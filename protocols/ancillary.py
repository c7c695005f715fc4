"""SCM_RIGHTS ancillary data as plain data, so both sides share one packing.

No socket is touched here: these turn a list of descriptor numbers into the
`(level, type, data)` tuples `sendmsg` takes, and back from what `recvmsg` returned.
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Sequence

SOL_SOCKET = 1  # Linux values: protocols/ does not import socket
SCM_RIGHTS = 1


def pack_fds(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds).tobytes())]


def unpack_fds(ancdata: Iterable[tuple[int, int, bytes]]) -> tuple[list[int], bool]:
    """Return the descriptors received and whether anything else came with them.

    Every descriptor is returned, even beside junk, so the caller can close them all.
    """
    fds: list[int] = []
    junk = False
    for level, kind, data in ancdata:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(array.array("i", data[:usable]))
            junk |= usable != len(data)
        else:
            junk = True
    return fds, junk
