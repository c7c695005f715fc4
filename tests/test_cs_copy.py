"""MEM_COPY moves at most a turn's worth of bytes (TURN_BYTES) between two turns of the
daemon's scheduler: a batch of large copies never holds other clients off, and the
copies still have memmove's result, overlapping ranges and host memory (userptr) that
is invalidated mid-copy included."""

from __future__ import annotations

import array
import time
from collections.abc import Iterator

import pytest
from helpers import FENCE, LONG_WAIT, WAIT, Gpu

from clients import Batch, Device
from clients.daemon import DaemonProcess
from clients.mapping import Mapping
from protocols import Op
from protocols import messages as m
from protocols.constants import MEM_COPY_MATRIX, MEM_COPY_PAGE_MODE
from xed.device.cs import TURN_BYTES

MiB = 1 << 20
SRC_VA = 0x2_0000_0000
DST_VA = 0x4_0000_0000
USERPTR_VA = 0x6_0000_0000
START, END_REPLACED = 1, 2


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ from one 8-byte word to the next, so a shifted copy shows."""
    return array.array("Q", range(seed, seed + size // 8)).tobytes() + bytes(size % 8)


def memmove(data: bytes, dst: int, src: int, length: int) -> bytes:
    out = bytearray(data)
    out[dst : dst + length] = data[src : src + length]
    return bytes(out)


class Copier(Gpu):
    """A Gpu with two more BOs bound: `src` at SRC_VA and `dst` at DST_VA, mapped."""

    def __init__(self, dev: Device, size: int) -> None:
        super().__init__(dev)
        self.size = size
        self.src_bo, self.src = self._bo(SRC_VA, size)
        self.dst_bo, self.dst = self._bo(DST_VA, size)

    def _bo(self, va: int, size: int) -> tuple[int, Mapping]:
        bo = self.dev.gem_create(size)
        self.dev.vm_bind(self.vm, bo, va)
        return bo, self.dev.mmap_bo(bo)

    def close(self) -> None:
        self.src.close()
        self.dst.close()
        super().close()


@pytest.fixture
def copier(fresh_daemon: DaemonProcess) -> Iterator[Copier]:
    with Device.open(fresh_daemon.socket_path) as dev:
        rig = Copier(dev, 32 * MiB)
        yield rig
        rig.close()


def runs_beside_a_bystander(copier: Copier, daemon: DaemonProcess, batch: Batch) -> None:
    """Run `batch` while another client makes 20 calls: all are answered before its
    fence signals (the batch lets the others have their turns)."""
    with Device.open(daemon.socket_path) as bystander:
        bystander.version()
        seq = copier.submit(batch.end())
        for _ in range(20):
            bystander.version()
        assert copier.cpu.read_u64(FENCE) != seq, "the batch held the bystander off"
    copier.wait(seq, timeout=LONG_WAIT)  # ~2 s alone, and more beside the suite's load


def test_a_batch_of_large_copies_lets_a_bystander_through(
    copier: Copier, fresh_daemon: DaemonProcess
) -> None:
    """While one batch copies 24 x 32 MiB, another client's 20 calls are all answered
    before that batch's fence signals; and every copy lands whole."""
    data = pattern(copier.size)
    copier.src[0 : copier.size] = data
    batch = Batch()
    for _ in range(24):
        batch.mem_copy(DST_VA, SRC_VA, copier.size)
    runs_beside_a_bystander(copier, fresh_daemon, batch)
    assert copier.dst[0 : copier.size] == data


@pytest.mark.parametrize(
    ("dst", "src", "length"),
    [
        (MiB + 8, 0, 3 * MiB + 12),  # destination above the source: copied from the end
        (0, MiB + 8, 3 * MiB + 12),  # below: from the start
        (5, 3, 2 * MiB + 1),  # overlapping by all but two bytes, unaligned
        (4 * MiB, 0, 4 * MiB),  # side by side, chunk multiples
    ],
    ids=["up", "down", "by-two-bytes", "adjacent"],
)
def test_mem_copy_within_one_bo_is_memmove(dev: Device, dst: int, src: int, length: int) -> None:
    """Copies over ranges that overlap, in chunks, give memmove's result."""
    gpu = Copier(dev, 8 * MiB)
    try:
        data = pattern(gpu.size, seed=7)
        gpu.src[0 : gpu.size] = data
        gpu.run(Batch().mem_copy(SRC_VA + dst, SRC_VA + src, length).end())
        assert gpu.src[0 : gpu.size] == memmove(data, dst, src, length)
    finally:
        gpu.close()


def _invalidate(dev: Device, addr: int, length: int, event: int) -> None:
    args = m.XedHostMemoryInvalidate(addr=addr, length=length, event=event)
    dev.ioctl(Op.HOST_MEMORY_INVALIDATE, args)


def test_a_copy_stalled_by_an_invalidation_resumes_at_the_chunk_it_met(dev: Device) -> None:
    """An overlapping copy in host memory meets a page being invalidated in its third
    chunk: it waits there, with its first two chunks done, and after END it runs that
    chunk and the rest, not the copy again from the start (whose source it has since
    overwritten): the result is memmove's."""
    size = 5 * MiB
    gpu = Gpu(dev)
    hm = dev.host_memory(size)
    try:
        dev.vm_bind_userptr(gpu.vm, hm, 0, USERPTR_VA, size)
        data = pattern(size, seed=3)
        hm[0:size] = data
        # from the end down: chunk 1 is [2, 3) MiB -> +1 MiB + 8, chunk 2 [1, 2) MiB (it
        # overwrites chunk 1's source), chunk 3 [0, 1) MiB, which holds the busy page
        dst, src, length = MiB + 8, 0, 3 * TURN_BYTES
        busy = TURN_BYTES // 2
        _invalidate(dev, hm.base + busy, 4096, START)
        seq = gpu.submit(Batch().mem_copy(USERPTR_VA + dst, USERPTR_VA, length).end())
        expected = memmove(data, dst, src, length)
        two_chunks = expected[dst + TURN_BYTES : dst + length]
        deadline = time.monotonic() + WAIT / 1e9
        while hm[dst + TURN_BYTES : dst + length] != two_chunks:
            assert time.monotonic() < deadline, "the first two chunks never landed"
            time.sleep(0.005)
        assert gpu.cpu.read_u64(FENCE) != seq  # stalled at the third
        _invalidate(dev, hm.base + busy, 4096, END_REPLACED)
        gpu.wait(seq)
        assert hm[0:size] == expected
    finally:
        gpu.close()


def test_mem_copy_in_the_hardwares_modes(dev: Device) -> None:
    """MEM_COPY as xe_migrate and IGT emit it: a matrix copy moves its rows at their
    pitches (the bytes between rows stay), page mode counts 256-byte pages."""
    gpu = Copier(dev, MiB)
    try:
        data = pattern(gpu.size, seed=11)
        gpu.src[0 : gpu.size] = data
        rows, width, src_pitch, dst_pitch = 3, 40, 64, 100
        gpu.run(
            Batch()
            .mem_copy_raw(DST_VA, SRC_VA, width, rows, src_pitch, dst_pitch, MEM_COPY_MATRIX)
            .mem_copy_raw(DST_VA + 4096, SRC_VA + 512, 2, mode=MEM_COPY_PAGE_MODE)
            .end()
        )
        expected = bytearray(gpu.size)
        for row in range(rows):
            at = row * src_pitch
            expected[row * dst_pitch : row * dst_pitch + width] = data[at : at + width]
        expected[4096 : 4096 + 512] = data[512:1024]
        assert gpu.dst[0 : 8192] == bytes(expected[:8192])
    finally:
        gpu.close()


def test_a_mem_copy_of_another_length_is_a_bad_instruction(gpu: Gpu) -> None:
    """Only the 10-dword MEM_COPY is one: another length field bans the queue."""
    short = Batch().mem_copy_raw(SRC_VA, SRC_VA, 8)
    short.dwords[-10] -= 1  # the header's length field: 7, not 8
    gpu.expect_ban(short.end(), gpu.queue)


def test_a_matrix_copy_of_tiny_rows_lets_a_bystander_through(
    copier: Copier, fresh_daemon: DaemonProcess
) -> None:
    """A matrix MEM_COPY of 2^18 one-byte rows moves little, but each row counts as an
    instruction of its turn: another client's calls are answered meanwhile."""
    rows = 1 << 18
    batch = Batch().mem_copy_raw(DST_VA, SRC_VA, 1, rows, 1, 1, MEM_COPY_MATRIX)
    runs_beside_a_bystander(copier, fresh_daemon, batch)
