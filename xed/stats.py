"""What the admin role sees of the ioctls: counts, refusals by errno, latency."""

from __future__ import annotations

import array
import collections

from protocols import Op, errno_name
from protocols import messages as m

SAMPLES = 2048  # latest latencies kept per op for the percentiles (a power of two)
_RING = SAMPLES - 1


class _OpRecord:
    __slots__ = ("count", "errors", "latencies")

    def __init__(self) -> None:
        self.count = 0
        self.errors: collections.Counter[int] = collections.Counter()
        # seconds, by call number modulo SAMPLES: stored in place, not as float objects
        # a deque of them would let go of one cold object per call, the oldest
        self.latencies = array.array("d")


class IoctlStats:
    def __init__(self) -> None:
        # every op's record made up front: recording is then one plain dict lookup
        self._ops: dict[Op, _OpRecord] = {op: _OpRecord() for op in Op}

    def record(self, op: Op, err: int, seconds: float) -> None:
        entry = self._ops[op]
        calls = entry.count
        entry.count = calls + 1
        if err:
            entry.errors[err] += 1
        if calls < SAMPLES:
            entry.latencies.append(seconds)
        else:
            entry.latencies[calls & _RING] = seconds

    def report(self) -> tuple[m.XedOpStats, ...]:
        out = []
        for op in sorted(self._ops, key=int):
            entry = self._ops[op]
            if not entry.count:
                continue
            ordered = sorted(entry.latencies) or [0.0]
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
