"""ADMIN_STATS' per-op figures: every call counted, percentiles of the latest SAMPLES."""

import errno

from protocols import Op
from xed.stats import SAMPLES, IoctlStats


def test_percentiles_follow_the_latest_samples_and_every_call_is_counted() -> None:
    stats = IoctlStats()
    for _ in range(SAMPLES):
        stats.record(Op.VERSION, 0, 1.0)  # one second each: pushed out by what follows
    for n in range(SAMPLES + 3):
        stats.record(Op.VERSION, errno.EINVAL if n < 2 else 0, 0.002)
    (version,) = stats.report()
    assert version.op == "VERSION"
    assert version.count == 2 * SAMPLES + 3
    assert [(e.errno, e.count) for e in version.errors] == [("EINVAL", 2)]
    assert (version.p50_us, version.p99_us) == (2000, 2000)


def test_percentiles_before_the_ring_is_full() -> None:
    stats = IoctlStats()
    for n in range(100):
        stats.record(Op.GEM_CLOSE, 0, (n + 1) / 1e6)  # 1 us .. 100 us
    (close,) = stats.report()
    assert (close.count, close.p50_us, close.p99_us) == (100, 51, 100)
