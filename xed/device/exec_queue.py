"""XeExecQueue: a queue of batches for one engine, its worker, and EXEC."""

from __future__ import annotations

import collections
from errno import E2BIG, EAGAIN, ECANCELED, EFAULT, EINVAL, ENOENT, EPERM
from typing import TYPE_CHECKING

import trio

from protocols import messages as m
from protocols.constants import (
    CHAIN_BODY_FAULT,
    CHAIN_LINK_FAULT,
    CHAIN_TOO_LONG,
    DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY,
    DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN,
    DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY,
    DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE,
    MAX_USER_EXTENSIONS,
    XE_EXEC_QUEUE_PRIORITY_HIGH,
    XE_EXEC_QUEUE_PRIORITY_NORMAL,
    XE_HW_ENGINE_TIMESLICE_MAX,
    XE_HW_ENGINE_TIMESLICE_MIN,
    EngineClass,
)
from protocols.ops import Event

from . import residency
from .bind_queue import BindQueue
from .cs import Turn, run_batch
from .errors import GpuFault, IoctlError, refuse_if
from .eudebug import debug_event
from .fence import Fence
from .limits import refuse_over, refuse_over_uid
from .process import CAP_SYS_NICE, caller_capable
from .sync import Syncs, parse_syncs, signal_gpu_fences
from .vm_faults import save_fault

if TYPE_CHECKING:
    from .bo import XeBo
    from .file import XeFile
    from .vm import XeVm

DRM_XE_EXEC_QUEUE_LOW_LATENCY_HINT = 1 << 0
MAX_PENDING_JOBS = 4096  # beyond this EXEC answers EAGAIN rather than queue forever
# and over all the queues of one file: each job costs the daemon about 460 bytes, and
# 16384 queues of 4096 would be 30 GB
MAX_PENDING_JOBS_PER_FILE = 65536
# the engine classes whose queues may be parallel (width above 1): xe's multi_lrc_mask,
# the video classes on every platform it has; IGT assumes the same where debugfs does
# not say (xe_engine_class_supports_multi_lrc)
MULTI_LRC_CLASSES = frozenset((EngineClass.VIDEO_DECODE, EngineClass.VIDEO_ENHANCE))


class XeExecQueue:
    """A queue costs a record while it has no work: its worker task is started by the
    first batch submitted and ends when the queue runs dry (10,000 idle queues are
    10,000 records, not 10,000 tasks)."""

    __slots__ = (
        "file", "device", "vm", "engine", "width", "id", "banned", "bind", "binds",
        "group", "_jobs", "_pending", "_running", "_fence", "_worker", "_stopped",
        "_in_batch", "_reset",
    )  # fmt: skip

    def __init__(
        self, xef: XeFile, vm: XeVm, eci: m.DrmXeEngineClassInstance, width: int = 1
    ) -> None:
        self.file = xef
        self.device = xef.device
        self.vm = vm.get()
        vm.exec_queues += 1
        self.engine = eci
        self.width = width  # batches a job runs, one a lane (parallel submission: above 1)
        self.id = 0
        self.banned = False
        # a bind queue (engine class VM_BIND): VM_BINDs name it, never an EXEC; its binds
        # that must wait are queued in `binds` (bind_queue.py), it has no batch worker
        self.bind = eci.engine_class == EngineClass.VM_BIND
        self.binds: BindQueue | None = None  # a bind queue's binds that wait (made at the first)
        # the engines it shares hardware with (hw_engine_group.py); a preempt-fence-mode
        # VM's queues are in none
        preempt_fence_mode = vm.lr_mode and not vm.fault_mode
        self.group = None if preempt_fence_mode else xef.device.engine_groups.of(eci)
        self._jobs: collections.deque[tuple[tuple[int, ...], Syncs, Fence]] | None = None
        self._pending = 0
        self._running = 0  # the batch the worker is on, for a crash's ban event
        self._fence: Fence | None = None  # the job the worker is on: its fence
        self._worker: trio.CancelScope | None = None  # while a worker task runs
        self._stopped = False  # halted or destroyed: nothing more runs
        self._in_batch = False  # a job's batch started and not done
        self._reset = False  # a GT reset met the job running: it ends at its next point
        self.device.counts["exec_queue"] += 1
        self.file.uid_account.objects += 1

    @property
    def full(self) -> bool:
        return (
            self._pending >= MAX_PENDING_JOBS
            or self.file.pending_jobs >= MAX_PENDING_JOBS_PER_FILE
        )

    def _drop_pending(self) -> None:
        """The queue stops: what it still counts against its file is given back."""
        self.file.pending_jobs -= self._pending
        self.file.uid_account.objects -= self._pending
        self._pending = 0

    @property
    def last_fence(self) -> Fence | None:
        """The fence of the latest job submitted, queued or running (jobs run in order: once
        it signals, every earlier one has); None when the queue is idle."""
        if self._jobs:
            return self._jobs[-1][2]
        return self._fence

    def submit(self, addresses: tuple[int, ...], syncs: Syncs) -> None:
        """Queue a job: a batch a lane (none: a sync-only job that just signals after
        earlier work). Its fence is in its SIGNAL syncobjs from now on, and signals when
        it is done."""
        if self._jobs is None:
            self._jobs = collections.deque()
        fence = Fence()
        syncs.submit(fence)
        self._pending += 1
        self.file.pending_jobs += 1
        self.file.uid_account.objects += 1
        self._jobs.append((addresses, syncs, fence))
        if self._worker is None and not self._stopped:
            self._worker = trio.CancelScope()
            self.device.start_soon(
                self._run, what="exec_queue", on_crash=self._crashed, log=self.file.log
            )

    def halt(self) -> None:
        """The device is unplugged (or the queue destroyed): the batch running stops
        where it is and nothing queued runs. Their user fences never come; their
        syncobj fences signal with an error, as xe's do when it kills a queue, so that
        no SYNCOBJ_WAIT waits for work that will never run (the error is nobody's to
        read: a syncobj wait reports none)."""
        self._stopped = True
        self._drop_pending()
        if self.binds is not None:
            self.binds.halt()
        if self._worker is not None:
            self._worker.cancel()
        if self._fence is not None:
            self._fence.signal()
        for _addresses, _syncs, fence in self._jobs or ():
            fence.signal()

    def destroy(self) -> None:
        self.halt()
        self.vm.exec_queues -= 1
        self.vm.put()
        self.device.counts["exec_queue"] -= 1
        self.file.uid_account.objects -= 1

    async def _run(self) -> None:
        assert self._worker is not None and self._jobs is not None
        turn = Turn()  # the work done since the others last ran, over the jobs
        try:
            with self._worker:
                while self._jobs and not self._stopped:
                    addresses, syncs, fence = self._jobs.popleft()
                    self._fence = fence
                    await self._execute(addresses, syncs, turn)
                    fence.signal()
                    self._fence = None
                    if self._pending:  # else halted meanwhile: given back already
                        self._pending -= 1
                        self.file.pending_jobs -= 1
                        self.file.uid_account.objects -= 1
                    if self._jobs:
                        # a backlog of short jobs lets the others run too, once a turn's
                        # worth is done (no cancel lands there: a halt meanwhile is seen
                        # by the loop's test, as it would be here without it)
                        await turn.between_jobs()
        finally:
            # no checkpoint between the last look at the jobs and this: a batch submitted
            # from now on starts a worker of its own
            self._worker = None
            if self._stopped:
                self._jobs = None

    async def _execute(self, addresses: tuple[int, ...], syncs: Syncs, turn: Turn) -> None:
        for wait in syncs.waits:  # the scheduler runs a job once its dependencies are done
            await wait.wait()
        if self.vm.lr_mode and (self.banned or self.vm.closed):
            return  # dropped: a long-running job's user fence is its ring's store, never run
        # a banned queue or closed VM drops the job, but its fences still signal (xe does)
        if addresses and not self.banned and not self.vm.closed:
            self._running = addresses[0]
            self.device.crash_point("exec_queue")
            strict = self.device.dma_buf_config.strict_sync
            group, faulting = self.group, self.vm.fault_mode
            if group is not None and faulting:  # suspended while dma-fence jobs run
                await group.lr_may_run()
            self.vm.touched = set() if strict else None
            self._in_batch, self._reset = True, False  # started: a GT reset bans it
            try:
                if group is not None and not faulting:
                    group.dma_fence_job_started()
                # a parallel job's lanes run one after the other: what they write is
                # what running side by side writes, unless one waits for another
                timeout = None if self.vm.lr_mode else self.device.config.job_timeout_ms / 1000
                for address in addresses:
                    self._running = address
                    await run_batch(self.vm, address, timeout, self._preemption_point, turn)
                self.device.stats["execs"] += 1
            except GpuFault as fault:
                self._ban(fault)
                if self.vm.lr_mode:
                    # a long-running job's user fence is the ring's store after its
                    # batch: a job that faults (or a GT reset stops) never writes it, and
                    # a waiter on the queue gets EIO (a dma-fence job's comes with its
                    # fence, error or not)
                    return
            finally:
                self._in_batch = False
                if group is not None and not faulting:
                    group.dma_fence_job_done()
                touched, self.vm.touched = self.vm.touched, None
                if touched:
                    self._check_cpu_windows(touched)
        await signal_gpu_fences(self.file, syncs.user_fences, self.vm)

    async def _preemption_point(self, pc: int) -> None:
        """Where the running batch may be stopped: by a GT reset (a GPU fault: the queue
        is banned), or held while its hw engine group runs dma-fence jobs (a faulting
        job of a page-fault-mode VM)."""
        if self.group is not None and self.vm.fault_mode:
            await self.group.lr_may_run()
        if self._reset:  # after a suspension too: a reset may come while it is held
            raise GpuFault(pc, "GT reset: the job was running")

    def gt_reset(self) -> bool:
        """Its GT is reset (xe_guc_submit's stop and start): a job under way, started and
        not done, ends at its next preemption point as a GPU fault and the queue is
        banned, as xe bans a queue whose job was running; jobs not started yet wait
        for the GT to come back, as they would. True if a job was running."""
        if not self._in_batch or self.banned or self._stopped:
            return False
        self._reset = True
        return True

    def _check_cpu_windows(self, touched: set[XeBo]) -> None:
        """Strict mode: the device used a buffer some process is writing with the CPU
        (between DMA_BUF_SYNC_START|WRITE and END): report it, as a race it is."""
        for bo in touched:
            dma_buf = bo.exported_as
            if dma_buf is not None and dma_buf.cpu_writers():
                self.device.stats["sync_violations"] += 1
                self.file.warn(
                    "dma_buf_sync_violation",
                    exec_queue_id=self.id,
                    dma_buf=dma_buf.ino,
                    cpu_writers=dma_buf.cpu_writers(),
                )

    def _crashed(self) -> None:
        """The worker died of a bug of ours (logged and counted by the device): this
        queue is banned as a GPU fault would have it, and nothing else is touched.
        Batches still queued are dropped with their fences; waiters on the queue wake
        to EIO, and later EXECs are ECANCELED."""
        self._stopped = True
        self._jobs = None
        self._drop_pending()
        if not self.banned:
            self._ban(GpuFault(self._running, "internal error"))

    def _ban(self, fault: GpuFault) -> None:
        self.banned = True
        # the VM lives on, in every mode, as xe's does: the GuC's reset and xe's LR
        # cleanup end the queue alone (xe_vm_kill comes from the rebind worker only)
        save_fault(self.vm, fault)
        self.device.stats["bans"] += 1
        self.file.warn(
            "exec_queue_banned", exec_queue_id=self.id, address=fault.address, reason=fault.reason
        )
        self.file.send_event(
            Event.EXEC_QUEUE_BANNED,
            m.ExecQueueBanned(exec_queue_id=self.id, address=fault.address, reason=fault.reason),
        )
        self.device.ufences.queue_reset(self)


def xe_exec_queue_create_ioctl(
    xef: XeFile, args: m.DrmXeExecQueueCreate
) -> m.DrmXeExecQueueCreateReply:
    """DRM_IOCTL_XE_EXEC_QUEUE_CREATE.

    Checks, in order:
    - flags other than LOW_LATENCY_HINT, or reserved non-zero: EINVAL
    - width x num_placements zero, above XE_HW_ENGINE_MAX_INSTANCE, or not the number
      of instances given: EINVAL
    - the first instance's gt_id names no GT: EINVAL
    - VM_BIND class (a bind queue): width or num_placements other than 1, or
      engine_instance other than 0: EINVAL
    - else (calc_validate_logical_mask; pad is not checked): an instance of another
      class or GT, or naming no engine of the device: EINVAL; width above 1 (parallel
      submission: instances[j * width + i] is lane i of placement j) whose lanes are
      not logically contiguous, each lane's instances the previous lane's plus one:
      EINVAL; width above 1 on a class without multi-LRC (MULTI_LRC_CLASSES): EINVAL
    - no such VM, or VM closed: ENOENT
    - the extension chain, link by link (_check_extensions): EINVAL, EPERM, EFAULT, E2BIG
    - the file holds limits.exec_queues queues already: ENOMEM
    """
    refuse_if(args.flags & ~DRM_XE_EXEC_QUEUE_LOW_LATENCY_HINT, EINVAL, "unknown flags")
    refuse_if(any(args.reserved), EINVAL, "reserved must be zero")
    count = args.width * args.num_placements
    refuse_if(
        not count or count > 9 or count != len(args.instances),
        EINVAL,
        "width x num_placements must match the instances",
    )
    first = args.instances[0]
    refuse_if(first.gt_id >= 1, EINVAL, f"no GT {first.gt_id}")
    if first.engine_class == EngineClass.VM_BIND:
        refuse_if(
            args.width != 1 or args.num_placements != 1 or first.engine_instance,
            EINVAL,
            "a bind queue has one placement, instance 0",
        )
    else:
        _check_placements(xef, args)
    vm = xef.vms.get(args.vm_id)
    refuse_if(vm is None or vm.closed, ENOENT, f"no VM {args.vm_id}")
    assert vm is not None
    _check_extensions(args)
    refuse_over(xef, "exec_queues", len(xef.exec_queues))
    queue = XeExecQueue(xef, vm, first, args.width)
    queue.id = xef.exec_queue_ids.alloc()
    xef.exec_queues[queue.id] = queue
    xef.log.debug("exec_queue_created", exec_queue_id=queue.id, vm_id=args.vm_id)
    debug_event(xef, "exec_queue_create", vm_id=args.vm_id, detail=f"queue {queue.id}")
    return m.DrmXeExecQueueCreateReply(exec_queue_id=queue.id)


def _check_extensions(args: m.DrmXeExecQueueCreate) -> None:
    """exec_queue_user_extensions(), on the chain the library read from the program.

    Link by link: a pad or a name other than SET_PROPERTY: EINVAL; a property that could
    not be read: EFAULT; the property (_check_property). Then a link that could not be
    read: EFAULT; a 17th: E2BIG. The properties change nothing here: the emulated engines
    schedule no queue before another, nor slice their time."""
    if not args.extensions:
        refuse_if(args.chain or args.chain_end, EINVAL, "a chain without `extensions`")
        return
    refuse_if(not args.chain and not args.chain_end, EINVAL, "`extensions` without its chain")
    refuse_if(args.chain_end > CHAIN_TOO_LONG, EINVAL, f"chain_end {args.chain_end}")
    last = len(args.chain) - 1
    for i, link in enumerate(args.chain):
        refuse_if(
            link.pad or link.name != DRM_XE_EXEC_QUEUE_EXTENSION_SET_PROPERTY,
            EINVAL,
            f"extension {i}: name {link.name}, pad {link.pad}",
        )
        refuse_if(
            i == last and args.chain_end == CHAIN_BODY_FAULT,
            EFAULT,
            f"extension {i} cannot be read",
        )
        _check_property(link)
    refuse_if(args.chain_end == CHAIN_LINK_FAULT, EFAULT, "an extension cannot be read")
    refuse_if(
        args.chain_end == CHAIN_TOO_LONG, E2BIG, f"more than {MAX_USER_EXTENSIONS} extensions"
    )


def _check_property(link: m.DrmXeExtSetProperty) -> None:
    """exec_queue_user_ext_set_property(): PRIORITY or TIMESLICE, pad zero (else EINVAL);
    a priority above HIGH: EINVAL, above NORMAL without CAP_SYS_NICE: EPERM; a timeslice
    outside 1 us to 10 s without CAP_SYS_NICE: EINVAL."""
    known = (DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY, DRM_XE_EXEC_QUEUE_SET_PROPERTY_TIMESLICE)
    refuse_if(
        link.property not in known or link.pad2,
        EINVAL,
        f"no exec queue property {link.property} (pad {link.pad2})",
    )
    if link.property == DRM_XE_EXEC_QUEUE_SET_PROPERTY_PRIORITY:
        refuse_if(link.value > XE_EXEC_QUEUE_PRIORITY_HIGH, EINVAL, f"priority {link.value}")
        refuse_if(
            link.value > XE_EXEC_QUEUE_PRIORITY_NORMAL and not caller_capable(CAP_SYS_NICE),
            EPERM,
            "a priority above normal takes CAP_SYS_NICE",
        )
        return
    refuse_if(
        not XE_HW_ENGINE_TIMESLICE_MIN <= link.value <= XE_HW_ENGINE_TIMESLICE_MAX
        and not caller_capable(CAP_SYS_NICE),
        EINVAL,
        f"timeslice {link.value} us out of range",
    )


def _check_placements(xef: XeFile, args: m.DrmXeExecQueueCreate) -> None:
    """calc_validate_logical_mask(): every instance an engine of the first one's class
    and GT; a parallel queue's lanes side by side (lane i's instances, one per
    placement, are lane i-1's moved up by one) on a class that can run them together."""
    first, width = args.instances[0], args.width
    previous = 0
    for lane in range(width):
        instances = 0
        for eci in args.instances[lane::width]:  # placement j's lane: [j * width + lane]
            refuse_if(
                eci.engine_class != first.engine_class
                or eci.gt_id != first.gt_id
                or not xef.device.has_engine(eci),
                EINVAL,
                f"no engine {eci.engine_class}:{eci.engine_instance} on GT {eci.gt_id}",
            )
            instances |= 1 << eci.engine_instance
        refuse_if(
            lane and instances != previous << 1,
            EINVAL,
            "parallel submission: each lane's engines must follow the previous lane's",
        )
        previous = instances
    refuse_if(
        width > 1 and first.engine_class not in MULTI_LRC_CLASSES,
        EINVAL,
        f"engine class {first.engine_class} has no parallel submission (multi-LRC)",
    )


def xe_exec_queue_destroy_ioctl(xef: XeFile, args: m.DrmXeExecQueueDestroy) -> m.Empty:
    """DRM_IOCTL_XE_EXEC_QUEUE_DESTROY.

    Checks: pad or reserved non-zero: EINVAL; no such queue: ENOENT.
    """
    refuse_if(args.pad or any(args.reserved), EINVAL, "pad and reserved must be zero")
    queue = xef.exec_queues.pop(args.exec_queue_id, None)
    if queue is None:
        raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
    xef.exec_queue_ids.release(args.exec_queue_id)
    queue.destroy()
    xef.log.debug("exec_queue_destroyed", exec_queue_id=args.exec_queue_id)
    debug_event(xef, "exec_queue_destroy", detail=f"queue {args.exec_queue_id}")
    return m.Empty()


def xe_exec_queue_get_property_ioctl(
    xef: XeFile, args: m.DrmXeExecQueueGetProperty
) -> m.DrmXeExecQueueGetPropertyReply:
    """DRM_IOCTL_XE_EXEC_QUEUE_GET_PROPERTY.

    Checks, in order: reserved non-zero: EINVAL; no such queue: ENOENT; a property
    other than BAN: EINVAL. BAN is 1 once the queue was banned (xe's reset status).
    """
    refuse_if(any(args.reserved), EINVAL, "reserved must be zero")
    queue = xef.exec_queues.get(args.exec_queue_id)
    if queue is None:
        raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
    refuse_if(
        args.property != DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN,
        EINVAL,
        f"no exec queue property {args.property}",
    )
    return m.DrmXeExecQueueGetPropertyReply(value=int(queue.banned))


def xe_exec_ioctl(xef: XeFile, args: m.DrmXeExec) -> m.Empty:
    """DRM_IOCTL_XE_EXEC: queue the batch at `address`; it runs after earlier ones.

    Checks, in order:
    - extensions, pad or reserved non-zero: EINVAL
    - no such exec queue: ENOENT
    - num_batch_buffer neither 0 nor the queue's width: EINVAL
    - a bind queue: EINVAL
    - the queue was banned: ECANCELED
    - more than MAX_PENDING_JOBS batches outstanding on the queue, or
      MAX_PENDING_JOBS_PER_FILE over all the file's queues: EAGAIN
    - the file's uid holds limits.objects_per_uid objects over all its connections (a
      job not done is one): ENOMEM
    - syncs (xe_sync_entry_parse): EINVAL / ENOENT / EOPNOTSUPP, see sync.py
    - a queue of width 1 given `addresses`: EINVAL
    - a parallel queue (width above 1) given other than `width` addresses: EFAULT,
      where xe's copy of the array `address` points at fails (the library sends none
      when it cannot read them). Not with num_batch_buffer 0, where xe copies the array
      all the same: the library cannot know the queue's width to read it
    - num_batch_buffer 0: nothing runs; the syncs signal after the queue's earlier work
    - the queue's VM was closed: ECANCELED
    - BOs bound in the VM were evicted (residency.py), and bringing them all back into
      VRAM, evicting other VMs' BOs, cannot make room: ENOMEM (xe_vm_validate_rebind)
    """
    refuse_if(args.extensions, EINVAL, "extensions must be zero")
    refuse_if(any(args.pad) or any(args.reserved), EINVAL, "pad and reserved must be zero")
    queue = xef.exec_queues.get(args.exec_queue_id)
    if queue is None:
        raise IoctlError(ENOENT, f"no exec queue {args.exec_queue_id}")
    width = queue.width
    refuse_if(args.num_batch_buffer not in (0, width), EINVAL, f"num_batch_buffer != width {width}")
    refuse_if(queue.bind, EINVAL, f"exec queue {queue.id} is a bind queue")
    refuse_if(queue.banned, ECANCELED, f"exec queue {queue.id} is banned")
    refuse_if(queue.full, EAGAIN, "too many batches queued, on this queue or over this file's")
    refuse_over_uid(xef, 1)
    syncs = parse_syncs(xef, args.syncs, user_addresses=False, lr_mode=queue.vm.lr_mode)
    refuse_if(width == 1 and args.addresses, EINVAL, "addresses are a parallel queue's")
    addresses: tuple[int, ...] = ()
    if args.num_batch_buffer:
        addresses = args.addresses if width > 1 else (args.address,)
        refuse_if(len(addresses) != width, EFAULT, f"a parallel EXEC needs {width} addresses")
        refuse_if(queue.vm.closed, ECANCELED, "the VM is closed")
        if queue.vm.evicted:
            residency.validate_vm(queue.vm)  # ENOMEM when its BOs alone outgrow VRAM
    queue.submit(addresses, syncs)
    debug_event(xef, "exec", vm_id=queue.vm.id, addr=args.address, detail=f"queue {queue.id}")
    return m.Empty()
