"""XeDevice: one emulated GPU. Owns memory regions, offsets, engines and the files."""

from __future__ import annotations

import collections
import functools
import os
import resource
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from protocols import messages as m
from protocols.constants import (
    DRM_XE_MEM_REGION_CLASS_SYSMEM,
    DRM_XE_MEM_REGION_CLASS_VRAM,
    EngineClass,
)

from .. import log as xlog
from ..config import Config, DeviceConfig
from ..stats import IoctlStats
from .eudebug import Attachment
from .export import ExportedObject
from .file import XeFile
from .hw_engine_group import HwEngineGroups
from .ids import IdAllocator
from .limits import DescriptorReserve, UidAccount
from .memory import MemRegion, reported_bytes
from .mmio import Bar0
from .process import Instance
from .ufence import UfenceWaiters
from .unplug import UnplugNotice, drm_dev_unplug
from .views import ViewCache, views_limit
from .vma_manager import VmaOffsetManager
from .watcher import PageWatcher

if TYPE_CHECKING:
    from .bo import XeBo

_log = structlog.get_logger("xed")
RESPAWN_DELAY = 1.0  # seconds before a device-wide task that crashed is started again
TEST_CRASH_ENV = "XED_TEST_CRASH"


def _test_crash_points() -> set[str]:
    """TEST ONLY: XED_TEST_CRASH=NAME[,NAME...] makes the first device task of that kind
    (its `what`: exec_queue, dma_buf, vm_export, page_watcher, sd_watchdog...) or the
    first request of that op (XE_VM_CREATE...) raise RuntimeError, once each, so tests
    can see the safety nets hold. Never set it in a real deployment."""
    value = os.environ.get(TEST_CRASH_ENV, "")
    return {name.strip() for name in value.split(",") if name.strip()}


class XeDevice:
    def __init__(self, full_config: Config) -> None:
        config = full_config.device
        self.config = config
        # the host page size the rules follow (config: 4 KiB, or an emulated 64 KiB)
        self.page_size = config.page_size
        self.dma_buf_config = full_config.dma_buf
        self.aux_config = full_config.aux
        self.admin_config = full_config.admin
        self.debugger_config = full_config.debugger
        self.limits = full_config.limits
        self.descriptors = DescriptorReserve(full_config.limits)
        # target process instance -> its debugger's attachment
        self.debuggers: dict[Instance, Attachment] = {}
        self.identity = self._identity(config)
        self.regions = self._regions(config)
        self.mem_region_mask = sum(1 << i for i in self.regions)
        self._placements: dict[int, tuple[MemRegion, ...]] = {}
        self.engines = tuple(self._engines(config))
        self.vma = VmaOffsetManager(config.page_size)
        self.files: set[XeFile] = set()
        self.tokens: dict[str, XeFile] = {}  # HELLO.join: live drm files by their secret
        # GEM_FLINK's global names (dev->object_name_idr): the lowest free one, from 1
        self.names: dict[int, XeBo] = {}
        self.name_ids = IdAllocator()
        self.exported: dict[int, ExportedObject] = {}  # by inode of the handed-out end
        # exported objects let go of, that one task is releasing in turns (export.py)
        self.releasing: collections.deque[ExportedObject] | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.uid_accounts: dict[int, UidAccount] = {}  # limits.objects_per_uid
        self.stats: collections.Counter[str] = collections.Counter()
        self.ioctl_stats = IoctlStats()
        self.ufences = UfenceWaiters(self)
        self.engine_groups = HwEngineGroups()  # which jobs may run on shared hardware
        self.bar0 = Bar0(config)
        self.notice = UnplugNotice()
        self.watcher = PageWatcher(self)
        nofile, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.views = ViewCache(views_limit(nofile))
        # one more at every unplug: files of an earlier one belong to a device that went
        self.generation = 0
        # the generation served now; None while unplugged: one comparison tells whether
        # a file is still served (is_gone), on every request
        self.live_generation: int | None = 0
        self._nursery: trio.Nursery | None = None
        self.test_crashes = _test_crash_points()
        if self.test_crashes:
            _log.warning("test_crash_armed", names=sorted(self.test_crashes))

    @staticmethod
    def _identity(config: DeviceConfig) -> m.DeviceIdentity:
        return m.DeviceIdentity(
            name=config.name,
            device_id=config.device_id,
            revision=config.revision,
            instance=secrets.token_hex(8),  # a new one for each replugged device
        )

    @staticmethod
    def _regions(config: DeviceConfig) -> dict[int, MemRegion]:
        regions = {
            0: MemRegion(
                DRM_XE_MEM_REGION_CLASS_SYSMEM, 0, config.system_memory, config.system_memory
            )
        }
        if config.vram_size:
            regions[1] = MemRegion(
                DRM_XE_MEM_REGION_CLASS_VRAM, 1, config.vram_size, config.visible_vram_size
            )
        return regions

    @staticmethod
    def _engines(config: DeviceConfig) -> list[m.DrmXeEngineClassInstance]:
        per_class = {
            EngineClass.RENDER: config.engines.render,
            EngineClass.COPY: config.engines.copy,
            EngineClass.VIDEO_DECODE: config.engines.video_decode,
            EngineClass.VIDEO_ENHANCE: config.engines.video_enhance,
            EngineClass.COMPUTE: config.engines.compute,
        }
        return [
            m.DrmXeEngineClassInstance(engine_class=cls, engine_instance=i, gt_id=0)
            for cls, count in per_class.items()
            for i in range(count)
        ]

    def has_engine(self, eci: m.DrmXeEngineClassInstance) -> bool:
        return any(
            e.engine_class == eci.engine_class
            and e.engine_instance == eci.engine_instance
            and e.gt_id == eci.gt_id
            for e in self.engines
        )

    def regions_for(self, placement: int) -> tuple[MemRegion, ...]:
        """Regions named by a placement mask, VRAM first (TTM's preference order): one
        tuple per mask, which every BO of that placement shares."""
        found = self._placements.get(placement)
        if found is None:  # replug() empties the cache with the regions it replaces
            chosen = [r for i, r in self.regions.items() if placement & (1 << i)]
            chosen.sort(key=lambda r: r.mem_class != DRM_XE_MEM_REGION_CLASS_VRAM)
            found = self._placements[placement] = tuple(chosen)
        return found

    # --- the device side runs as tasks in the daemon's nursery ------------------------
    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.start_forever(self.watcher.run, what="page_watcher")
        self.start_forever(self.bar0.run_timestamp, what="bar0_timestamp")
        self.start_forever(self.ufences.run, what="ufence_looks")
        self.start_forever(self._count_log_drops, what="log_drops")

    async def _count_log_drops(self) -> None:
        """Events the log drops (its stream not keeping up) count as log_dropped, for as
        long as the device serves."""
        with xlog.drops_counted_in(self.stats):
            await trio.sleep_forever()

    # --- unplug (drm_dev_unplug) and the emulator's replug ------------------------------
    def unplug(self) -> None:
        """drm_dev_unplug (unplug.py): the files open now are dead for good, the device
        stops, its memory is emptied under every mapping, and clients are told."""
        self.generation += 1
        self.live_generation = None
        drm_dev_unplug(self)

    def replug(self) -> None:
        """A new device: its own identity, memory accounting, BAR0 and notice page. The
        old device's objects stay with the files that hold them, and go with them."""
        self.identity = self._identity(self.config)
        self.regions = self._regions(self.config)
        self._placements.clear()
        self.bar0 = Bar0(self.config)
        self.notice = UnplugNotice()
        self.watcher.replug(self.notice)
        self.start_forever(self.bar0.run_timestamp, what="bar0_timestamp")
        self.live_generation = self.generation

    @property
    def unplugged(self) -> bool:
        return self.live_generation is None

    def is_gone(self, generation: int) -> bool:
        """Whether an object made at `generation` belongs to a device since unplugged."""
        return generation != self.live_generation

    def start_soon(
        self,
        fn: Callable[[], Awaitable[Any]],
        *,
        what: str,
        on_crash: Callable[[], None] | None = None,
        log: Any = None,
    ) -> None:
        """Start a device task (a queue's worker, an exported object's server...).

        Contained: an unexpected exception in it is a bug of ours, never a reason for
        every other client to lose the device. It is logged with its traceback at error
        level (`task_crashed`, with the client's fields when `log` is bound to one),
        counted (`xed ctl status`: task_crashes), and `on_crash` ends only what the task
        served: the queue is banned, the object closed. The daemon goes on.
        """
        if self._nursery is None:
            raise RuntimeError("device not attached to a nursery")
        self._nursery.start_soon(self._contained, fn, what, on_crash, log or _log)

    def start_forever(self, fn: Callable[[], Awaitable[Any]], *, what: str) -> None:
        """Start a task that serves every client (the page watcher, the timestamp, the
        service manager's pings): contained like any device task, and should it crash
        all the same, started again after RESPAWN_DELAY, so that one bug costs everyone
        a moment rather than the feature for good (and a task that keeps crashing logs
        once a delay, never in a tight loop)."""

        def respawn() -> None:
            later = functools.partial(_after, RESPAWN_DELAY, fn)
            self.start_soon(later, what=what, on_crash=respawn)

        self.start_soon(fn, what=what, on_crash=respawn)

    def crash_point(self, name: str) -> None:
        """TEST ONLY (XED_TEST_CRASH): raise the first time `name` gets here."""
        if name in self.test_crashes:
            self.test_crashes.discard(name)
            raise RuntimeError(f"{TEST_CRASH_ENV}={name}: crashing on purpose")

    async def _contained(
        self,
        fn: Callable[[], Awaitable[Any]],
        what: str,
        on_crash: Callable[[], None] | None,
        log: Any,
    ) -> None:
        try:
            await fn()
        except Exception:  # trio.Cancelled is a BaseException: cancellation passes
            self.stats["task_crashes"] += 1
            log.exception("task_crashed", task=what)
            if on_crash is not None:
                try:
                    on_crash()
                except Exception:
                    log.exception("task_cleanup_crashed", task=what)

    def clients(self) -> list[XeFile]:
        return sorted(self.files, key=lambda f: f.client_id)

    def gt_reset(self, gt_id: int) -> int:
        """xe_gt_reset: every exec queue on the GT with a job under way is banned at its
        next preemption point (exec_queue.py); the others go on. How many were."""
        return sum(
            queue.gt_reset()
            for xef in self.files
            for queue in xef.exec_queues.values()
            if queue.engine.gt_id == gt_id and not queue.bind
        )

    def object_counts(self) -> m.XedObjectCounts:
        return m.XedObjectCounts(
            files=len(self.files),
            bos=self.counts["bo"],
            vms=self.counts["vm"],
            exec_queues=self.counts["exec_queue"],
            mmap_offsets=len(self.vma),
            bo_bytes=reported_bytes(self.counts["bo_bytes"]),
            dma_bufs=self.counts["dma_buf"],
            vm_exports=self.counts["vm_export"],
            aux_registrations=sum(len(f.aux_vms) for f in self.files),
            syncobjs=self.counts["syncobj"],
            sync_files=self.counts["sync_file"],
            syncobj_fds=self.counts["syncobj_fd"],
            sw_sync_timelines=self.counts["sw_sync"],
            uid_objects=sum(account.objects for account in self.uid_accounts.values()),
        )

    def status(self) -> m.XedAdminStatusReply:
        return m.XedAdminStatusReply(
            pid=os.getpid(),
            objects=self.object_counts(),
            execs=self.stats["execs"],
            bans=self.stats["bans"],
            refused=self.stats["refused"],
            sync_violations=self.stats["sync_violations"],
            unplugged=int(self.unplugged),
            barriers=self.stats["barriers"],
            task_crashes=self.stats["task_crashes"],
            ioctl_crashes=self.stats["crashed"],
            limits_hit=self.stats["limits_hit"],
            log_dropped=self.stats["log_dropped"],
        )


async def _after(delay: float, fn: Callable[[], Awaitable[Any]]) -> None:
    await trio.sleep(delay)
    await fn()
