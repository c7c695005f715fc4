"""Events the daemon sends unasked, and the result of a refused request."""

from __future__ import annotations

from ..fields import frozen, string, u32, u64


@frozen
class ExecQueueBanned:
    """The command streamer stopped a queue: bad address, unknown opcode, runaway batch."""

    exec_queue_id: int = u32()
    address: int = u64("GPU address that faulted: the instruction's, or the data it reached")
    reason: str = string()


@frozen
class ProtocolErrorInfo:
    """Sent instead of a reply when the request's id could not be read."""

    errno: int = u32()
    message: str = string(max_len=1024)


@frozen
class DaemonStopping:
    """The daemon is stopping: finish up and disconnect within `seconds`."""

    seconds: int = u32("how long the daemon waits for clients to leave")
    reason: str = string(max_len=64)


@frozen
class ErrorInfo:
    """Result of a failed request: errno travels in the reply; this says why."""

    message: str = string(max_len=1024)
