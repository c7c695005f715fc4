"""The page watcher: a thread that looks at every watched page (pages.py) for the device.

A thread rather than a trio task: trio sleeps in epoll, whose timeouts are whole
milliseconds, and a barrier should be acknowledged (its page reading 0xdeadbeef again)
well within one. A thread sleeps as finely as the kernel lets it and holds the
interpreter only while it looks.

How often it looks:
- hot: while writes keep coming, and HOT_HOLD after the last one, every FAST_LOOK (or
  LOOK_RATIO times the CPU a look takes, on average, if more: the cost stays bounded,
  whatever the thread's priority; look_cost() says why an average). Such a look
  reads word 0 of each barrier page (where the library's barriers land) and each
  doorbell; the rest of each barrier page (a raw store anywhere is one barrier) is
  compared every FULL_LOOK.
- asleep: otherwise it sleeps on futexes (futex_waitv): the u32 NOTICE_WATCHER_ASLEEP
  of the device's notice page (read-only for clients), which reads 1 meanwhile, and
  word 0 of each barrier page (the first 127), which reads 0xdeadbeef. The client
  library (and the C preload library) wakes it after a barrier store that finds the
  asleep word set; a store that raced with the watcher falling asleep has changed its
  page's word 0, so the wait ends at once. It also wakes by itself every SLOW_LOOK and
  looks at everything: a plain store that wakes nobody (a program's own, without the
  preload library) is counted then, and so, where only the asleep word can be slept on
  (no futex_waitv), is one that raced with the watcher falling asleep.
Whoever wakes it, it looks at most once per FAST_LOOK: a client waking it in a loop
costs the daemon no more than one writing its barrier page in a loop.

While it watches, the thread asks the kernel to run it the moment it wakes (real-time
priority where permitted, else a short slice: promptness.py); busy writers on every CPU
would otherwise make each look wait for a slice of theirs to end (1.5 ms and more). How
it runs is logged (page_watcher_started, scheduling=) and shown by `xec load barrier`;
how it sleeps too (sleeps_on=futex_waitv, or futex where that is missing or filtered).

The trio side adds and removes pages under `lock`, which the thread holds while it
looks: a page removed is never looked at again, so it may be closed at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from typing import TYPE_CHECKING

import structlog
import trio

from protocols import futex
from protocols.constants import PAGE_SIZE, PCI_BARRIER_IDLE

from .memory import punch_hole
from .pages import BarrierPage, WatchedPage
from .promptness import hasten_thread

if TYPE_CHECKING:
    from .device import XeDevice
    from .unplug import UnplugNotice

_log = structlog.get_logger("xed")
FAST_LOOK = 0.0002  # seconds between looks while writes keep coming, at the least
LOOK_RATIO = 14  # ... and at least this many times the CPU a look takes, on average:
# many busy pages make each look dearer, and looking more than ~1/LOOK_RATIO of a core buys
# little (12 left the daemon at 10% of a core under 8 writers, the ceiling)
COST_WEIGHT = 1 / 8  # what one look's CPU counts for in the running average of them
COST_CLAMP = 2  # ... where it counts as no more than this many times the average
HOT_HOLD = 0.02  # how long it keeps looking that often after the last write
FULL_LOOK = 0.01  # seconds between looks at whole barrier pages while hot
SLOW_LOOK = 0.05  # the most a page waits to be looked at when nobody wakes the watcher
ORPHAN_SWEEP = 1.0  # seconds between asking whether closed files' pages are still mapped


def look_cost(mean: float, spent: float) -> float:
    """The running average of the CPU a look takes (from one sleep to the next), with
    `spent` taken in: weighed COST_WEIGHT, and counted as no more than COST_CLAMP times
    the average. A rare stall in this thread (the cyclic GC collecting here, an
    interrupt) is not what looking costs; paid back LOOK_RATIO times over, as the last
    look's own CPU once was, a 1.5 ms collection made the next look wait 21 ms, and such
    waits were the p99 of the acknowledgement latency under 64 writers. Looks that do
    grow dearer (more pages) raise the average within a few looks."""
    if not mean:
        return spent
    return mean + (min(spent, mean * COST_CLAMP) - mean) * COST_WEIGHT


class PageWatcher:
    """Looks at every watched page. It serves every client, so a failure while looking
    at one page (a bug of ours) ends that page only: logged with its traceback, counted
    as a task crash, and the page is not looked at again."""

    def __init__(self, device: XeDevice) -> None:
        self.device = device
        self.pages: set[WatchedPage] = set()
        self.lock = threading.Lock()
        self.looks = 0
        self.tally = [0]  # barriers the pages counted since the last look ended
        self._asleep_at: int | None = device.notice.watcher_word()
        self._spare = ctypes.c_uint32(0)  # slept on while the device has no notice page
        self._sleeping_on: int | None = None
        self._changed = 0  # how often `pages` changed: the sleeper is made again then
        self._sleeper = futex.Sleeper(((ctypes.addressof(self._spare), 1),))
        self._sleeper_for: tuple[int, int] | None = None  # (asleep word, _changed)
        self._sleeps_on_all = False  # on every barrier page's word 0 (else looks first)
        self._next_sweep = 0.0
        self._stopping = False
        self._limiter = trio.CapacityLimiter(1)
        self._token: trio.lowlevel.TrioToken | None = None
        self.scheduling = "normal"  # how the kernel runs the thread (promptness.py)

    # --- the trio side ------------------------------------------------------------------
    def add(self, page: WatchedPage) -> None:
        with self.lock:
            self.pages.add(page)
            self._changed += 1
            self._kick()

    def remove(self, page: WatchedPage) -> None:
        with self.lock:
            self._forget(page)

    def orphan(self, page: BarrierPage) -> None:
        """Its file closed: watched on while any process maps it (see pages.py)."""
        with self.lock:
            page.orphan()
            # a process that died has unmapped everything before its descriptors close:
            # its page goes at once; one still mapped waits for a sweep
            if page not in self.pages or not page.still_mapped():
                self._forget(page)
                page.close()

    def unplug(self) -> None:
        """drm_dev_unplug: every page is emptied (it reads zeros in every mapping) and
        never looked at again; closed files' pages go now (see unplug.py). The notice
        page is about to go: the watcher no longer touches it."""
        with self.lock:
            pages, self.pages = self.pages, set()
            self._changed += 1
            self._asleep_at = None
            for page in pages:
                punch_hole(page.memfd, PAGE_SIZE)
                if isinstance(page, BarrierPage) and page.orphaned:
                    page.close()

    def replug(self, notice: UnplugNotice) -> None:
        with self.lock:
            self._asleep_at = notice.watcher_word()

    def _kick(self) -> None:
        """Wake the thread if it sleeps (the lock held): a new page is looked at now."""
        if self._sleeping_on is not None:
            with contextlib.suppress(OSError):  # its notice page went meanwhile (unplug)
                futex.wake(self._sleeping_on, 1)

    async def run(self) -> None:
        """The device task: the thread, for as long as the device serves (a crash of the
        thread is the task's, contained and restarted by the device)."""
        self._token = trio.lowlevel.current_trio_token()
        self._stopping = False
        try:
            await trio.to_thread.run_sync(
                self._serve, abandon_on_cancel=True, limiter=self._limiter
            )
        finally:
            self._stopping = True
            with self.lock:
                self._kick()

    # --- the thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        how, undo = hasten_thread()
        self.scheduling = how
        if self._token is not None:
            sleeps_on = "futex_waitv" if futex.waitv_available() else "futex"
            self._token.run_sync_soon(self._started, how, sleeps_on)
        try:
            self._watch()
        finally:
            undo()

    def _started(self, how: str, sleeps_on: str) -> None:
        _log.info("page_watcher_started", scheduling=how, sleeps_on=sleeps_on)

    def _watch(self) -> None:
        hot_until = next_full = cost = 0.0
        last = time.monotonic()
        slept = time.thread_time()
        while not self._stopping:
            now = time.monotonic()
            full = now >= next_full
            with self.lock:
                busy = self._look(now, last, full)
                if now >= self._next_sweep:
                    self._next_sweep = now + ORPHAN_SWEEP
                    self._sweep()
            last = now
            if full:
                next_full = now + FULL_LOOK
            if busy:
                hot_until = now + HOT_HOLD
            if now < hot_until:
                # the CPU the thread took since it last slept (waking, the look, its own
                # bookkeeping), not the look's wall time: a prompt thread must pay its way
                cpu = time.thread_time()
                cost = look_cost(cost, cpu - slept)
                time.sleep(max(FAST_LOOK, cost * LOOK_RATIO))
                slept = cpu
                continue
            if self._doze(last):
                next_full = 0.0  # slept its fill: a whole look at everything
            else:  # woken: at most one look per FAST_LOOK, whoever wakes it
                time.sleep(max(0.0, FAST_LOOK - (time.monotonic() - now)))
            slept = time.thread_time()

    def _look(self, now: float, since: float, full: bool) -> bool:
        busy = False
        crashed: list[tuple[WatchedPage, Exception]] = []
        device, tally = self.device, self.tally
        crash_points = device.test_crashes
        for page in self.pages:
            try:
                if crash_points:
                    device.crash_point("page_watcher")
                busy |= page.look(now, since, full)
            except Exception as exc:
                crashed.append((page, exc))
        if tally[0]:
            device.stats["barriers"] += tally[0]
            tally[0] = 0
        self.looks += 1
        for page, error in crashed:
            self._crashed(page, error)
        return busy

    def _doze(self, since: float) -> bool:
        """Sleep until a writer wakes the watcher or its time is up; True if it was up.
        Called right after a look that found nothing. The asleep word turns 1 first; a
        barrier whose writer found it still 0 then changes the word 0 its page is slept
        on with, and the sleep ends at once. Where the sleep cannot cover every barrier
        page (futex_waitv missing, more than 127 pages), one more look catches it."""
        timeout = SLOW_LOOK if self.pages else ORPHAN_SWEEP
        with self.lock:
            address = self._asleep_at or ctypes.addressof(self._spare)
            word = ctypes.c_uint32.from_address(address)
            word.value = 1
            self._sleeping_on = address
            if self._sleeper_for != (address, self._changed):
                self._sleeper_for = (address, self._changed)
                barrier = [
                    (page.word0_at, PCI_BARRIER_IDLE)
                    for page in self.pages
                    if isinstance(page, BarrierPage)
                ]
                self._sleeper = futex.Sleeper(((address, 1), *barrier[: futex.WAITV_MAX - 1]))
                self._sleeps_on_all = futex.waitv_available() and len(barrier) < futex.WAITV_MAX
            sleeper = self._sleeper
            busy = False if self._sleeps_on_all else self._look(time.monotonic(), since, False)
        start = time.monotonic()
        if not busy and not self._stopping:
            try:
                sleeper.sleep(timeout)
            except OSError:  # a page, or the notice page, that went meanwhile: woken
                self._sleeper_for = None
        with self.lock:
            self._sleeping_on = None
            if address in (self._asleep_at, ctypes.addressof(self._spare)):  # still mapped
                word.value = 0
        return not busy and time.monotonic() - start >= timeout

    def _forget(self, page: WatchedPage) -> None:
        """(The lock held.) The page is not looked at, or slept on, again."""
        self.pages.discard(page)
        self._changed += 1

    def _sweep(self) -> None:
        """Let go of closed files' pages nobody maps any more (the lock held)."""
        for page in [p for p in self.pages if isinstance(p, BarrierPage) and p.orphaned]:
            if not page.still_mapped():
                self._forget(page)
                page.file.log.debug("barrier_page_unmapped", **page.summary())
                page.close()

    def _crashed(self, page: WatchedPage, exc: Exception) -> None:
        """(The lock held.) The page is not looked at again; the crash is told on the
        trio side, where the device's counters are kept."""
        self._forget(page)
        if isinstance(page, BarrierPage) and page.orphaned:
            page.close()

        def report() -> None:
            self.device.stats["task_crashes"] += 1
            page.file.log.error("task_crashed", task="page_watcher", page=page.kind, exc_info=exc)

        if self._token is not None:
            self._token.run_sync_soon(report)
