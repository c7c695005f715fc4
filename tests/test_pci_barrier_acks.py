"""PCI_BARRIER_ACKS: the device tells when it read a file's barriers (xed's own op, as a
debugfs file would): what `xec load barrier` reports as the acknowledgement latency.

The times are CLOCK_MONOTONIC in both processes, so each test checks an order that
causality fixes (stored, then counted, then seen to read 0xdeadbeef again), never a
duration."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import (
    PCI_BARRIER_ACKS_KEPT,
    PCI_BARRIER_IDLE,
    PCI_BARRIER_SEQ_MASK,
)

TIMEOUT = 10.0


@pytest.fixture
def dev2(daemon: DaemonProcess) -> Iterator[Device]:
    """A second drm file on the shared daemon, its page let go of as `dev`'s is."""
    device = Device.open(daemon.socket_path)
    yield device
    device.pci_barrier_unmap()
    device.close()


def acks_errno(dev: Device, args: m.XedPciBarrierAcks) -> int:
    with pytest.raises(XeError) as e:
        dev.ioctl(Op.PCI_BARRIER_ACKS, args)
    return e.value.errno


def barrier_seen(dev: Device) -> tuple[int, int, int]:
    """One barrier: (time before its store, its running number, time after the page
    was seen reading 0xdeadbeef again), all CLOCK_MONOTONIC ns."""
    page = dev.pci_barrier_mapping()
    stored = time.monotonic_ns()
    dev.pci_barrier()
    seq = dev.barriers_written & PCI_BARRIER_SEQ_MASK
    deadline = time.monotonic() + TIMEOUT
    while page.read_u32(0) != PCI_BARRIER_IDLE:
        assert time.monotonic() < deadline, "the barrier was never acknowledged"
        time.sleep(0.0001)
    return stored, seq, time.monotonic_ns()


def test_without_a_barrier_page_enoent(dev: Device) -> None:
    """Nothing to tell before the page is mapped: ENOENT, as for any missing object."""
    assert acks_errno(dev, m.XedPciBarrierAcks()) == errno.ENOENT


@pytest.mark.parametrize("flags", [1 << 1, 1 << 31])
def test_unknown_flags_einval(dev: Device, flags: int) -> None:
    dev.pci_barrier_mapping()
    assert acks_errno(dev, m.XedPciBarrierAcks(flags=flags | 1)) == errno.EINVAL


def test_pad_not_zero_einval(dev: Device) -> None:
    dev.pci_barrier_mapping()
    assert acks_errno(dev, m.XedPciBarrierAcks(flags=1, pad=1)) == errno.EINVAL


def test_each_barrier_counted_between_its_store_and_its_acknowledgement(dev: Device) -> None:
    """With recording on, each barrier stored and waited for is one entry: its running
    number, read after the store and before the page read 0xdeadbeef again."""
    dev.pci_barrier_mapping()
    first = dev.pci_barrier_acks()
    assert (first.seqs, first.counted_ns, first.dropped) == ((), (), 0)
    for _ in range(20):
        stored, seq, seen = barrier_seen(dev)
        reply = dev.pci_barrier_acks()
        assert reply.seqs == (seq,)
        (counted,) = reply.counted_ns
        assert stored < counted < seen
        assert reply.dropped == 0


def test_a_burst_ends_at_the_last_number_written(dev: Device) -> None:
    """Many barriers between two looks are one entry: the numbers recorded rise, and the
    last is the last barrier written (a drain repeats it, which counts nothing more)."""
    dev.pci_barrier_mapping()
    dev.pci_barrier_acks()
    for _ in range(5000):
        dev.pci_barrier()
    dev.pci_barrier_drain()
    reply = dev.pci_barrier_acks()
    assert 1 <= len(reply.seqs) <= 5000
    assert list(reply.seqs) == sorted(set(reply.seqs))
    assert reply.seqs[-1] == dev.barriers_written & PCI_BARRIER_SEQ_MASK
    assert list(reply.counted_ns) == sorted(reply.counted_ns)


def test_nothing_recorded_unless_asked(dev: Device) -> None:
    """Recording starts with the first call that asks for it and stops with one that does
    not (which still answers what was recorded until then)."""
    dev.pci_barrier_mapping()
    barrier_seen(dev)  # before any call: not recorded
    assert dev.pci_barrier_acks().seqs == ()
    _stored, seq, _seen = barrier_seen(dev)
    assert dev.pci_barrier_acks(record=False).seqs == (seq,)
    barrier_seen(dev)
    assert dev.pci_barrier_acks(record=False).seqs == ()


def test_past_what_one_reply_holds_the_rest_is_counted_as_dropped(dev: Device) -> None:
    """One entry per counting look, at most PCI_BARRIER_ACKS_KEPT between two calls; the
    looks past them are dropped and counted, and the next call starts afresh."""
    dev.pci_barrier_mapping()
    dev.pci_barrier_acks()
    extra = 6
    seqs = [barrier_seen(dev)[1] for _ in range(PCI_BARRIER_ACKS_KEPT + extra)]
    reply = dev.pci_barrier_acks()
    assert reply.seqs == tuple(seqs[:PCI_BARRIER_ACKS_KEPT])
    assert reply.dropped == extra
    _stored, seq, _seen = barrier_seen(dev)
    again = dev.pci_barrier_acks()
    assert (again.seqs, again.dropped) == ((seq,), 0)


def test_another_files_barriers_are_not_told(dev: Device, dev2: Device) -> None:
    """Each file hears of its own page only."""
    dev.pci_barrier_mapping()
    dev.pci_barrier_acks()
    dev2.pci_barrier_mapping()
    dev2.pci_barrier_acks()
    for _ in range(3):
        barrier_seen(dev2)
    assert dev.pci_barrier_acks().seqs == ()
    assert len(dev2.pci_barrier_acks().seqs) == 3
