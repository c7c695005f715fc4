"""The codec's own error type: whose fault, which errno, and for which request."""

from __future__ import annotations

import errno as _errno


class ProtocolError(Exception):
    """The peer sent something we cannot accept.

    `errno` is what the reply carries; `request_id` is the id of the offending request
    when it could be read (0 when the frame was too broken to tell), so the answer still
    reaches the right caller.
    """

    def __init__(self, errno: int, message: str, request_id: int = 0) -> None:
        super().__init__(f"{errno_name(errno)}: {message}")
        self.errno = errno
        self.message = message
        self.request_id = request_id


class LocalProtocolError(Exception):
    """We were asked to send something invalid: a bug on our side, never the peer's."""


# What the kernel answers when a descriptor or memory cannot be had: a shortage to wait
# out or to report, never a peer's fault (the daemon, the aux driver and the library
# all tell it apart from the rest).
SHORTAGE = frozenset({_errno.EMFILE, _errno.ENFILE, _errno.ENOMEM, _errno.ENOBUFS})

# where two names share a number, the one the kernel's sources use
_KERNEL_NAMES = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN"}


def errno_name(number: int) -> str:
    return _KERNEL_NAMES.get(number) or _errno.errorcode.get(number, f"E{number}")
