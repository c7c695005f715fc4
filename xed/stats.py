"""What the admin role sees of the ioctls: counts, refusals by errno, latency."""

from __future__ import annotations

import array
import collections

from protocols import Op, errno_name
from protocols import messages as m

SAMPLES = 2048  # latest latencies kept per op for the percentiles (a power of two)
RING = SAMPLES - 1  # a call number & RING: its place in the ring of latencies


class _OpRecord:
    __slots__ = ("count", "errors", "latencies")

    def __init__(self) -> None:
        self.count = 0
        self.errors: collections.Counter[int] = collections.Counter()
        # seconds, by call number modulo SAMPLES: stored in place, not as float objects
        # a deque of them would let go of one cold object per call, the oldest; made
        # whole up front, so that recording is one store (the first `count` are used)
        self.latencies = array.array("d", bytes(8 * SAMPLES))


class IoctlStats:
    def __init__(self) -> None:
        # every op's record made up front: recording is then one plain dict lookup (the
        # daemon's reader records a plain op's success itself, inline)
        self.by_op: dict[Op, _OpRecord] = {op: _OpRecord() for op in Op}

    def record(self, op: Op, err: int, seconds: float) -> None:
        entry = self.by_op[op]
        calls = entry.count
        entry.latencies[calls & RING] = seconds
        entry.count = calls + 1
        if err:
            entry.errors[err] += 1

    def report(self) -> tuple[m.XedOpStats, ...]:
        out = []
        for op in sorted(self.by_op, key=int):
            entry = self.by_op[op]
            if not entry.count:
                continue
            ordered = sorted(entry.latencies[: min(entry.count, SAMPLES)])
            out.append(
                m.XedOpStats(
                    op=op.name,
                    count=entry.count,
                    errors=tuple(
                        m.XedErrnoCount(errno=errno_name(err), count=n)
                        for err, n in sorted(entry.errors.items())
                    ),
                    p50_us=int(ordered[len(ordered) // 2] * 1e6),
                    p99_us=int(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6),
                )
            )
        return tuple(out)
