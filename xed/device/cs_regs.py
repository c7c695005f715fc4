"""The command streamer's registers: the general-purpose ones (CS_GPR0-15, 64 bits each),
the context and queue timestamps, and the MI instructions that move values between
them and memory (MI_LOAD_REGISTER_IMM, _REG, MI_STORE_REGISTER_MEM) or compute on them
(MI_MATH), as IGT's spinners use them to spin for a time or record when they ran.

A batch's registers live as long as the batch: an LRC would keep them across the
queue's jobs, which nothing here needs. Offsets are the engine's (MI_*_CS_MMIO: relative
to its base); anything else is a bad instruction. The timestamps count the reference
clock's ticks (query.REFERENCE_CLOCK_HZ) since the batch began.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable

from .query import REFERENCE_CLOCK_HZ

CTX_TIMESTAMP = 0x3A8
QUEUE_TIMESTAMP = 0x4C0
GPR_BASE, GPR_COUNT = 0x600, 16  # CS_GPR(n) = 0x600 + 8n: low dword, high at +4
_MASK64 = (1 << 64) - 1


class Registers:
    """One batch's registers. read/write take an engine-relative offset; None from
    read (False from write) for one that is not emulated."""

    def __init__(self) -> None:
        self.gpr = [0] * GPR_COUNT
        self.started = time.monotonic()
        # MI_MATH's operands and result
        self.src_a = self.src_b = self.accu = 0

    def _ticks(self) -> int:
        return int((time.monotonic() - self.started) * REFERENCE_CLOCK_HZ) & 0xFFFF_FFFF

    def read(self, offset: int) -> int | None:
        if offset in (CTX_TIMESTAMP, QUEUE_TIMESTAMP):
            return self._ticks()
        n, high = divmod(offset - GPR_BASE, 8)
        if not 0 <= n < GPR_COUNT or high not in (0, 4):
            return None
        return (self.gpr[n] >> (8 * high)) & 0xFFFF_FFFF

    def write(self, offset: int, value: int) -> bool:
        n, high = divmod(offset - GPR_BASE, 8)
        if not 0 <= n < GPR_COUNT or high not in (0, 4):
            return False
        shift = 8 * high
        self.gpr[n] = (self.gpr[n] & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
        return True


# MI_MATH's ALU operands (the low ten bits of a field)
_R0, _SRCA, _SRCB, _ACCU, _ZF, _CF = 0x00, 0x20, 0x21, 0x31, 0x32, 0x33
# its operations on SRCA and SRCB, into ACCU (made once: alu runs for every ALU word)
_ALU_OPS: dict[int, Callable[[int, int], int]] = {
    0x100: operator.add,  # ADD
    0x101: operator.sub,  # SUB
    0x102: operator.and_,  # AND
    0x103: operator.or_,  # OR
    0x104: operator.xor,  # XOR
}


def alu(regs: Registers, word: int) -> bool:
    """One MI_MATH ALU instruction (opcode in bits 31-20, operands in 19-10 and 9-0);
    False for one not emulated."""
    opcode, op1, op2 = word >> 20, (word >> 10) & 0x3FF, word & 0x3FF
    if opcode == 0x000:  # NOOP
        return True
    if opcode in (0x080, 0x480):  # LOAD, LOADINV: a register into SRCA or SRCB
        value = _get(regs, op2)
        if value is None or op1 not in (_SRCA, _SRCB):
            return False
        value = value if opcode == 0x080 else ~value & _MASK64
        if op1 == _SRCA:
            regs.src_a = value
        else:
            regs.src_b = value
        return True
    if opcode in (0x081, 0x481):  # LOAD0, LOAD1
        if op1 not in (_SRCA, _SRCB):
            return False
        value = 0 if opcode == 0x081 else _MASK64
        if op1 == _SRCA:
            regs.src_a = value
        else:
            regs.src_b = value
        return True
    operation = _ALU_OPS.get(opcode)
    if operation is not None:
        regs.accu = operation(regs.src_a, regs.src_b) & _MASK64
        return True
    if opcode in (0x180, 0x580):  # STORE, STOREINV: ACCU (or a flag) into a GPR
        if op2 == _ACCU:
            value = regs.accu
        elif op2 == _ZF:
            value = _MASK64 if regs.accu == 0 else 0
        elif op2 == _CF:
            value = _MASK64 if regs.src_a < regs.src_b else 0
        else:
            return False
        if not _R0 <= op1 < GPR_COUNT:
            return False
        regs.gpr[op1] = value if opcode == 0x180 else ~value & _MASK64
        return True
    return False


def _get(regs: Registers, operand: int) -> int | None:
    if _R0 <= operand < GPR_COUNT:
        return regs.gpr[operand]
    if operand == _ACCU:
        return regs.accu
    if operand == _SRCA:
        return regs.src_a
    if operand == _SRCB:
        return regs.src_b
    return None
