"""The command streamer: executes a batch buffer through a VM's bindings.

It understands the instructions xed emulates (see protocols.constants): MI_NOOP,
MI_BATCH_BUFFER_END, MI_STORE_DATA_IMM (dword and qword), MI_ATOMIC (INC, ADD, INC8B),
MI_MEM_FENCE, MI_FLUSH_DW, MI_COPY_MEM_MEM and the blitter's MEM_COPY (linear or matrix,
bytes or pages, in the layout xe_migrate and IGT emit). Every store lands in
the BO pages the clients map, so a CPU reader sees it as soon as it happens; the fences
are therefore ordering points with nothing left to flush.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from protocols.constants import (
    MEM_COPY,
    MEM_COPY_DWORDS,
    MEM_COPY_FIELD,
    MEM_COPY_MATRIX,
    MEM_COPY_PAGE,
    MEM_COPY_PAGE_MODE,
    MI_ATOMIC_INLINE_DATA,
    MI_ATOMIC_OP_MASK,
    MI_ATOMIC_OP_SHIFT,
    MI_BBS_SECOND_LEVEL,
    MI_COND_MODE_SHIFT,
    MI_DO_COMPARE,
    MI_FLUSH_DW_OP_STOREDW,
    MI_SDI_LEN_DW_MASK,
    MI_SDI_NUM_QW_BIT,
    XE_MAX_BATCH_DWORDS,
)

from . import cs_regs
from .cs_regs import Registers
from .errors import GpuFault
from .userptr import UserptrBusy

if TYPE_CHECKING:
    from .vm import XeVm

# The most the streamer does between two turns of the scheduler, so that other clients
# keep their latency and the watchdog its pings whatever a batch holds: instructions
# (a long batch can be cancelled), and bytes moved (one MEM_COPY moves up to _MAX_COPY).
TURN_INSTRUCTIONS = 1024
LOOP_NAP = 0.0001  # s: a backward jump's nap (a spinner polls its end 10,000 times a second)
MAX_BATCH_LEVELS = 2  # a batch and one second-level batch, as the engines have
MI_CS_MMIO = 1 << 19  # a register offset relative to the engine's base
TURN_BYTES = 1 << 20
# what a job's bookkeeping (its waits, fences, user fences) counts toward its worker's
# turn, as instructions: a backlog of jobs of a NOOP each lets the others run too
JOB_INSTRUCTIONS = 16
_MAX_COPY = 256 << 20


class BadInstruction(GpuFault):
    def __init__(self, address: int, header: int) -> None:
        super().__init__(address, f"unknown instruction {header:#010x}")


class Turn:
    """The work a queue's worker did since it last let the others run, over all its
    jobs: a backlog of short batches (each under a turn, so none yields on its own)
    must not hold the others off any longer than one long batch does. A batch's work
    not followed by a turn of its own is added here when it ends; between two jobs the
    worker lets the others run once this makes a turn (between_jobs)."""

    __slots__ = ("bytes", "instructions")

    def __init__(self) -> None:
        self.instructions = 0
        self.bytes = 0

    async def between_jobs(self, instructions: int = JOB_INSTRUCTIONS) -> None:
        """A job done (its bookkeeping counted as `instructions`): past either bound, let
        every other task run. No cancel lands here: the worker is stopped where it was
        before (in a batch, or a wait), and looks at whether it was halted next."""
        self.instructions += instructions
        if self.instructions >= TURN_INSTRUCTIONS or self.bytes >= TURN_BYTES:
            self.instructions = self.bytes = 0
            await trio.lowlevel.cancel_shielded_checkpoint()


class _Turn:
    """The work one batch did since the streamer last let the others run (and, through
    `worker`, its queue's worker: see Turn)."""

    __slots__ = ("bytes", "instructions", "worker")

    def __init__(self, worker: Turn | None = None) -> None:
        self.instructions = 0
        self.bytes = 0
        self.worker = worker

    def charge(self, instructions: int = 0, moved: int = 0) -> None:
        """Count work done within one instruction (an MI_MATH's ALU words, the dwords an
        MI_STORE_DATA_IMM stores); the turn comes, if due, before the next one."""
        self.instructions += instructions
        self.bytes += moved

    async def spend(self, instructions: int = 0, moved: int = 0) -> None:
        """Count work; past either bound, let every other task run (and a cancel in)."""
        self.instructions += instructions
        self.bytes += moved
        if self.instructions >= TURN_INSTRUCTIONS or self.bytes >= TURN_BYTES:
            self.instructions = self.bytes = 0
            if self.worker is not None:  # its earlier jobs' work is behind a turn too
                self.worker.instructions = self.worker.bytes = 0
            await trio.lowlevel.checkpoint()

    def hand_over(self) -> None:
        """The batch ended: what it did since its last turn is its worker's to count."""
        if self.worker is not None:
            self.worker.instructions += self.instructions
            self.worker.bytes += self.bytes

    @property
    def bytes_left(self) -> int:
        return TURN_BYTES - self.bytes


def _u32s(vm: XeVm, addr: int, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}I", vm.read(addr, 4 * count))


def _addr(vm: XeVm, lo: int, hi: int) -> int:
    """A GPU address an instruction carries: the VM's va_bits of it. The bits above are
    the sign extension of the top one (the canonical form xe and IGT write: 0xffff8...
    for 0x8000_0000_0000 in a 48-bit VM), which the engine does not look at."""
    return (lo | (hi << 32)) & (vm.size - 1)


async def run_batch(
    vm: XeVm,
    address: int,
    timeout: float | None = None,
    preempt: Callable[[int], Awaitable[None]] | None = None,
    worker: Turn | None = None,
) -> int:
    """Run from `address` to MI_BATCH_BUFFER_END; return instructions executed.

    Raises GpuFault (bad address, read-only target) or BadInstruction; the caller bans
    the queue. More than XE_MAX_BATCH_DWORDS run straight on, with no jump, is a runaway
    and faults too. MI_BATCH_BUFFER_START jumps (a second-level one returns at its end);
    a jump back, as a spinner loops, naps LOOP_NAP first (an emulated engine has no
    speed to keep, and a spinner must not take a CPU), and past `timeout` seconds since
    the batch began (xe's job timeout: None for an LR-mode VM) the job is a hang. Those
    naps are the batch's preemption points: `preempt(pc)` is awaited at each (its
    queue's: a suspension of its hw engine group, a GT reset).

    Every TURN_INSTRUCTIONS instructions (an MI_MATH counts one more per ALU word, an
    MI_LOAD_REGISTER_IMM one more per dword: their work grows with their length) or
    TURN_BYTES moved (by MEM_COPY, or stored by MI_STORE_DATA_IMM), it lets the others
    run; what it did since its last such turn counts toward `worker`'s (its queue's
    worker: Turn) when it ends.
    """
    turn = _Turn(worker)
    try:
        return await _stream(vm, address, timeout, preempt, turn)
    finally:
        turn.hand_over()


async def _stream(
    vm: XeVm,
    address: int,
    timeout: float | None,
    preempt: Callable[[int], Awaitable[None]] | None,
    turn: _Turn,
) -> int:
    pc = address
    executed = straight = 0
    returns: list[int] = []
    regs = Registers()
    started = trio.current_time()
    while True:
        if straight >= XE_MAX_BATCH_DWORDS:
            raise GpuFault(pc, "batch too long (no MI_BATCH_BUFFER_END)")
        executed += 1
        await turn.spend(instructions=1)
        try:
            step = _step(vm, pc, regs, turn)
        except UserptrBusy as busy:
            # host memory under a userptr is being invalidated: stall, as a GPU page
            # fault would, until the notifier is done; then run the instruction again
            # (each instruction writes last, so running it again is safe)
            vm.device.stats["userptr_retries"] += 1
            await busy.arena.wait_idle()
            continue
        if isinstance(step, MemCopy):
            await _mem_copy(vm, step, turn)
            step = MEM_COPY_DWORDS
        if isinstance(step, Jump):
            if step.call:
                if len(returns) >= MAX_BATCH_LEVELS - 1:
                    raise GpuFault(pc, "batch buffers nested too deep")
                returns.append(pc + 4 * step.length)
            backwards = step.target <= pc
            pc, straight = step.target, 0
            if backwards:
                await _nap(pc, started, timeout, preempt)
            continue
        if step == WAIT:  # MI_SEMAPHORE_WAIT, not satisfied yet: poll it again
            await _nap(pc, started, timeout, preempt)
            continue
        if step == 0:
            if not returns:
                return executed
            pc, straight = returns.pop(), 0
            continue
        pc += 4 * step
        straight += step


async def _nap(
    pc: int, started: float, timeout: float | None, preempt: Callable[[int], Awaitable[None]] | None
) -> None:
    """A batch that waits on itself (a loop, a semaphore) polls no faster than LOOP_NAP,
    and past `timeout` seconds since it `started` it is a hang. It is a preemption
    point too (`preempt`)."""
    if timeout is not None and trio.current_time() - started > timeout:
        raise GpuFault(pc, f"job timeout ({timeout:g} s): the batch hangs")
    await trio.sleep(LOOP_NAP)
    if preempt is not None:
        await preempt(pc)


@attrs.frozen
class Jump:
    """MI_BATCH_BUFFER_START decoded: where to, and whether it returns."""

    target: int
    call: bool
    length: int


@attrs.frozen
class MemCopy:
    """A MEM_COPY decoded: `rows` runs of `length` bytes, each at its pitch past the
    last (one run: a linear copy); the streamer moves a turn's worth at a time."""

    dst: int
    src: int
    length: int
    rows: int = 1
    dst_pitch: int = 0
    src_pitch: int = 0


async def _mem_copy(vm: XeVm, copy: MemCopy, turn: _Turn) -> None:
    """Each row in turn (a matrix copy's rows are independent runs), each counted as an
    instruction too: a copy of many tiny rows still lets the others have their turn."""
    for row in range(copy.rows):
        await turn.spend(instructions=1)
        await _move(vm, copy.dst + row * copy.dst_pitch, copy.src + row * copy.src_pitch,
                    copy.length, turn)  # fmt: skip


async def _move(vm: XeVm, dst: int, src: int, length: int, turn: _Turn) -> None:
    """memmove() through the VM, in chunks of at most what is left of the turn.

    Overlap is judged in GPU addresses: a destination above an overlapping source is
    copied from the end down, so every chunk is read before anything overwrites it. Each
    chunk reads, then writes (all of it or nothing, vm.write), so a chunk that meets host
    memory being invalidated waits and runs again alone: the chunks done stay done. A
    cancel (the queue destroyed) lands between chunks; a fault in a later chunk leaves
    the earlier ones written, as a GPU's would.
    """
    backwards = src < dst < src + length
    done = 0
    while done < length:
        n = min(length - done, max(turn.bytes_left, 1))
        offset = length - done - n if backwards else done
        try:
            vm.write(dst + offset, vm.read(src + offset, n))
        except UserptrBusy as busy:
            vm.device.stats["userptr_retries"] += 1
            await busy.arena.wait_idle()
            continue
        done += n
        await turn.spend(moved=n)


def _step(vm: XeVm, pc: int, regs: Registers, turn: _Turn) -> int | MemCopy | Jump:
    """Execute the instruction at pc; return its length in dwords (0: batch end).
    A MEM_COPY or a jump is only decoded, for run_batch to carry out."""
    (header,) = _u32s(vm, pc, 1)
    client = header >> 29
    if client == 0:
        opcode = (header >> 23) & 0x3F
        if opcode == 0x0A:  # MI_BATCH_BUFFER_END
            return 0
        if opcode == 0x31:  # MI_BATCH_BUFFER_START
            # without MI_BBS_PPGTT too: a batch of a user's queue has its VM for its only
            # address space (xe_exec_store's basic-cond-batch jumps so, and passes on xe)
            if header & 0xFF != 1:
                raise BadInstruction(pc, header)
            lo, hi = _u32s(vm, pc + 4, 2)
            return Jump(_addr(vm, lo & ~0x3, hi), bool(header & MI_BBS_SECOND_LEVEL), 3)
        return _mi(vm, pc, header, opcode, regs, turn)
    if header & ~(MEM_COPY_MATRIX | MEM_COPY_PAGE_MODE) == MEM_COPY:
        return _decode_mem_copy(vm, pc, header)
    raise BadInstruction(pc, header)


def _decode_mem_copy(vm: XeVm, pc: int, header: int) -> MemCopy:
    """MEM_COPY: a linear run of width + 1 bytes (or 256-byte pages, PAGE_MODE); MATRIX,
    height + 1 such rows at their pitches. Each field is 18 bits; the MOCS dword is a
    cache setting, nothing to an emulated engine. More than _MAX_COPY bytes in all is a
    GPU fault (xed's bound on one instruction)."""
    width, height, src_pitch, dst_pitch, src_lo, src_hi, dst_lo, dst_hi = _u32s(vm, pc + 4, 8)
    field = MEM_COPY_FIELD - 1
    unit = MEM_COPY_PAGE if header & MEM_COPY_PAGE_MODE else 1
    length = ((width & field) + 1) * unit
    rows = (height & field) + 1 if header & MEM_COPY_MATRIX else 1
    if length * rows > _MAX_COPY:
        raise GpuFault(pc, f"MEM_COPY of {length * rows} bytes exceeds {_MAX_COPY}")
    return MemCopy(
        _addr(vm, dst_lo, dst_hi), _addr(vm, src_lo, src_hi), length, rows,
        (dst_pitch & field) + 1, (src_pitch & field) + 1,
    )  # fmt: skip


def _mi(vm: XeVm, pc: int, header: int, opcode: int, regs: Registers, turn: _Turn) -> int:
    """Execute one MI instruction; return its length in dwords (WAIT: not yet). One
    whose work grows with its length (_BY_THE_DWORD) charges `turn` for its dwords."""
    if opcode in (0x00, 0x09, 0x05):  # MI_NOOP, MI_MEM_FENCE, MI_ARB_CHECK
        return 1  # stores are visible already; nothing preempts a batch here
    if opcode == 0x36:  # MI_CONDITIONAL_BATCH_BUFFER_END
        total = (header & 0xFF) + 2
        if total != 4:
            raise BadInstruction(pc, header)
        operand, lo, hi = _u32s(vm, pc + 4, 3)
        (value,) = _u32s(vm, _addr(vm, lo & ~0x3, hi), 1)
        mode = (header >> MI_COND_MODE_SHIFT) & 0x7 if header & MI_DO_COMPARE else 0
        go_on = _CONDITIONS.get(mode)
        if go_on is None:
            raise BadInstruction(pc, header)
        return total if go_on(value, operand) else 0
    if opcode in _REGISTER_OPS:
        length = _REGISTER_OPS[opcode](vm, pc, header, regs)
        if opcode in _BY_THE_DWORD:
            turn.charge(length - 1)
        return length
    if opcode == 0x26:  # MI_FLUSH_DW: a fence, with an optional immediate post-sync write
        total = (header & 0x3F) + 2
        if header & MI_FLUSH_DW_OP_STOREDW:
            if total not in (4, 5):
                raise BadInstruction(pc, header)
            lo, hi, *data = _u32s(vm, pc + 4, total - 1)
            vm.write(_addr(vm, lo & ~0x7, hi), struct.pack(f"<{len(data)}I", *data))
        return total
    if opcode == 0x20:  # MI_STORE_DATA_IMM
        total = (header & MI_SDI_LEN_DW_MASK) + 2
        if total < 4:
            raise BadInstruction(pc, header)
        lo, hi, *data = _u32s(vm, pc + 4, total - 1)
        if header & MI_SDI_NUM_QW_BIT and len(data) % 2:
            raise BadInstruction(pc, header)
        vm.write(_addr(vm, lo, hi), struct.pack(f"<{len(data)}I", *data))
        turn.charge(moved=4 * len(data))  # up to 4 KiB: bytes moved, as a copy's
        return total
    if opcode == 0x2E:  # MI_COPY_MEM_MEM: one dword
        dst_lo, dst_hi, src_lo, src_hi = _u32s(vm, pc + 4, 4)
        vm.write(_addr(vm, dst_lo, dst_hi), vm.read(_addr(vm, src_lo, src_hi), 4))
        return 5
    if opcode == 0x2F:  # MI_ATOMIC
        total = (header & 0xFF) + 2
        lo, hi, *inline = _u32s(vm, pc + 4, total - 1)
        _atomic(vm, pc, header, _addr(vm, lo, hi), inline)
        return total
    raise BadInstruction(pc, header)


def _load_register_imm(vm: XeVm, pc: int, header: int, regs: Registers) -> int:
    """MI_LOAD_REGISTER_IMM: (offset, value) pairs, engine-relative (MI_LRI_CS_MMIO)."""
    total = (header & 0xFF) + 2
    if not header & MI_CS_MMIO or total % 2 == 0:
        raise BadInstruction(pc, header)
    words = _u32s(vm, pc + 4, total - 1)
    for offset, value in zip(words[::2], words[1::2], strict=True):
        if not regs.write(offset & 0x7FFFFC, value):
            raise BadInstruction(pc, header)
    return total


def _load_register_reg(vm: XeVm, pc: int, header: int, regs: Registers) -> int:
    """MI_LOAD_REGISTER_REG: one register into another, both engine-relative."""
    if header & 0xFF != 1 or header & _LRR_BOTH != _LRR_BOTH:
        raise BadInstruction(pc, header)
    src, dst = _u32s(vm, pc + 4, 2)
    value = regs.read(src & 0x7FFFFC)
    if value is None or not regs.write(dst & 0x7FFFFC, value):
        raise BadInstruction(pc, header)
    return 3


def _store_register_mem(vm: XeVm, pc: int, header: int, regs: Registers) -> int:
    """MI_STORE_REGISTER_MEM: an engine-relative register's dword to a GPU address."""
    if header & 0xFF != 2 or not header & MI_CS_MMIO:
        raise BadInstruction(pc, header)
    offset, lo, hi = _u32s(vm, pc + 4, 3)
    value = regs.read(offset & 0x7FFFFC)
    if value is None:
        raise BadInstruction(pc, header)
    vm.write(_addr(vm, lo & ~0x3, hi), struct.pack("<I", value))
    return 4


def _math(vm: XeVm, pc: int, header: int, regs: Registers) -> int:
    """MI_MATH: ALU instructions on the GPRs (cs_regs.alu)."""
    total = (header & 0xFF) + 2
    alu = cs_regs.alu
    for word in _u32s(vm, pc + 4, total - 1):
        if not alu(regs, word):
            raise BadInstruction(pc, header)
    return total


def _semaphore_wait(vm: XeVm, pc: int, header: int, regs: Registers) -> int:
    """MI_SEMAPHORE_WAIT: go on once the dword at the address compares to the inline
    one as the mode says (SAD_*_SDD, the order MI_CONDITIONAL_BATCH_BUFFER_END's modes
    have); until then WAIT, and the streamer polls it again."""
    total = (header & 0xFF) + 2
    if total not in (4, 5):
        raise BadInstruction(pc, header)
    operand, lo, hi = _u32s(vm, pc + 4, 3)
    holds = _CONDITIONS.get((header >> MI_COND_MODE_SHIFT) & 0x7)
    if holds is None:
        raise BadInstruction(pc, header)
    (value,) = _u32s(vm, _addr(vm, lo & ~0x3, hi), 1)
    return total if holds(value, operand) else WAIT


_REGISTER_OPS: dict[int, Callable[[XeVm, int, int, Registers], int]] = {
    0x22: _load_register_imm,
    0x2A: _load_register_reg,
    0x24: _store_register_mem,
    0x1A: _math,
    0x1C: _semaphore_wait,
}
# MI_MATH (an ALU instruction a dword) and MI_LOAD_REGISTER_IMM (a register written a
# pair): each dword past the header counts as one more instruction toward the turn
_BY_THE_DWORD = frozenset((0x1A, 0x22))
_LRR_BOTH = MI_CS_MMIO | (1 << 18)  # MI_LOAD_REGISTER_REG's destination and source
WAIT = -1  # _step's answer for an instruction to be run again later


def _atomic(vm: XeVm, pc: int, header: int, target: int, inline: list[int]) -> None:
    """MI_ATOMIC: the operation (the opcode's low five bits) on the dword or qword at
    `target` (bits 5-6: 0 a dword, 1 a qword) and, but for INC and DEC, an operand of the
    same size given inline (one from the GPRs is not emulated: a bad instruction)."""
    op = (header & MI_ATOMIC_OP_MASK) >> MI_ATOMIC_OP_SHIFT
    size = {0x00: 4, 0x20: 8}.get(op & 0x60)
    operation = _ATOMIC_OPS.get(op & 0x1F)
    if size is None or operation is None:
        raise BadInstruction(pc, header)
    operand = 0
    if op & 0x1F not in _NO_OPERAND:
        words = size // 4
        if not header & MI_ATOMIC_INLINE_DATA or len(inline) < words:
            raise BadInstruction(pc, header)
        operand = inline[0] | (inline[1] << 32 if words == 2 else 0)
    fmt, mask = ("<I", 0xFFFF_FFFF) if size == 4 else ("<Q", 0xFFFF_FFFF_FFFF_FFFF)
    (old,) = struct.unpack(fmt, vm.read(target, size))
    vm.write(target, struct.pack(fmt, operation(old, operand, size * 8) & mask))


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


# MI_CONDITIONAL_BATCH_BUFFER_END's compare modes (MAD_*_IDD): the batch goes on while
# (the dword in memory, the inline dword) holds
_CONDITIONS: dict[int, Callable[[int, int], bool]] = {
    0: lambda mem, data: mem > data,
    1: lambda mem, data: mem >= data,
    2: lambda mem, data: mem < data,
    3: lambda mem, data: mem <= data,
    4: lambda mem, data: mem == data,
    5: lambda mem, data: mem != data,
}

# MI_ATOMIC's operations: (old value, operand, bits) -> new value
_ATOMIC_OPS: dict[int, Callable[[int, int, int], int]] = {
    0x01: lambda old, x, bits: old & x,  # AND
    0x02: lambda old, x, bits: old | x,  # OR
    0x03: lambda old, x, bits: old ^ x,  # XOR
    0x04: lambda old, x, bits: x,  # MOVE
    0x05: lambda old, x, bits: old + 1,  # INC
    0x06: lambda old, x, bits: old - 1,  # DEC
    0x07: lambda old, x, bits: old + x,  # ADD
    0x08: lambda old, x, bits: old - x,  # SUB
    0x09: lambda old, x, bits: x - old,  # RSUB
    0x0A: lambda old, x, bits: max(_signed(old, bits), _signed(x, bits)),  # IMAX
    0x0B: lambda old, x, bits: min(_signed(old, bits), _signed(x, bits)),  # IMIN
    0x0C: lambda old, x, bits: max(old, x),  # UMAX
    0x0D: lambda old, x, bits: min(old, x),  # UMIN
}
_NO_OPERAND = frozenset((0x05, 0x06))  # INC, DEC
