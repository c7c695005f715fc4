"""SYNCOBJ_EVENTFD_REGISTER and _WAIT, what the C library's SYNCOBJ_EVENTFD makes on a
channel of its file (tests/preload/eventfd.c runs the ioctl itself): the wait is
answered once the point is signalled (WAIT_AVAILABLE: submitted); ENOENT once the
syncobj is freed, as the kernel frees a registration with its syncobj, but not while a
descriptor still holds it, nor for a destroy that comes right after the registration;
no limits.fence_waits slot taken; each errno; and nothing left behind."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator
from errno import EBUSY, EINVAL, ENOENT, ETIME
from typing import Any

import pytest
from helpers import errno_of
from test_lifecycle import baseline, wait_for_baseline

from clients import Device, XeError, syncobj
from clients.daemon import DaemonProcess
from protocols import Op, Reply, decode_incoming, encode_request
from protocols import messages as m
from protocols.constants import DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE as AVAILABLE

ANSWERED = 10.0  # s: an upper bound for an answer due now, never an expectation
STILL = 0.3  # s: how long a wait that must go on is watched


@pytest.fixture
def dev(fresh_daemon: DaemonProcess) -> Iterator[Device]:
    with Device.open(fresh_daemon.socket_path) as device:
        yield device


def wait_args(
    handle: int, point: int = 0, flags: int = 0, pad: int = 0
) -> m.SyncobjEventfdRegister:
    return m.SyncobjEventfdRegister(handle=handle, point=point, flags=flags, pad=pad)


class Registration:
    """A registration on a channel of `dev`'s file, made before this returns, and its
    wait in a thread, as the library makes them."""

    def __init__(self, dev: Device, socket_path: Any, args: m.SyncobjEventfdRegister) -> None:
        self.channel = Device.open(socket_path, join=dev.token)
        self.channel.ioctl(Op.SYNCOBJ_EVENTFD_REGISTER, args)
        self.outcome: int | None = None  # 0, or the errno
        self._thread = threading.Thread(target=self._wait)
        self._thread.start()

    def _wait(self) -> None:
        try:
            self.channel.ioctl(Op.SYNCOBJ_EVENTFD_WAIT, m.Empty())
            self.outcome = 0
        except XeError as exc:
            self.outcome = exc.errno

    def answered(self, within: float = ANSWERED) -> int | None:
        self._thread.join(within)
        return None if self._thread.is_alive() else self.outcome

    def close(self) -> None:
        self.channel.close()
        self._thread.join(ANSWERED)
        assert not self._thread.is_alive()


@pytest.fixture
def register(dev: Device, fresh_daemon: DaemonProcess) -> Iterator[Callable[..., Registration]]:
    made: list[Registration] = []

    def start(handle: int, point: int = 0, flags: int = 0) -> Registration:
        made.append(Registration(dev, fresh_daemon.socket_path, wait_args(handle, point, flags)))
        return made[-1]

    yield start
    for registration in made:
        registration.close()


def test_answered_once_the_point_is_signalled(dev: Device, register: Any) -> None:
    tl = syncobj.create(dev)
    waiting = register(tl, point=2)
    syncobj.timeline_signal(dev, [tl], [1])
    assert waiting.answered(STILL) is None
    syncobj.timeline_signal(dev, [tl], [2])
    assert waiting.answered() == 0
    binary = syncobj.create(dev, signaled=True)  # point 0: the fence it holds
    assert register(binary).answered() == 0


def test_wait_available_is_answered_at_submission(dev: Device, register: Any) -> None:
    tl = syncobj.create(dev)
    timeline = syncobj.sw_sync_timeline(dev)
    pending = syncobj.sw_sync_fence(dev, timeline, 1)
    waiting, available = register(tl, point=1), register(tl, point=1, flags=AVAILABLE)
    assert available.answered(STILL) is None
    syncobj.import_sync_file(dev, tl, pending, point=1)  # submitted, not signalled
    assert available.answered() == 0
    assert waiting.answered(STILL) is None
    syncobj.sw_sync_inc(dev, timeline)
    assert waiting.answered() == 0
    for fd in (pending, timeline):
        os.close(fd)


def test_freeing_the_syncobj_ends_it_enoent_until_the_point_is_submitted(
    dev: Device, register: Any
) -> None:
    """A point not submitted yet: the syncobj destroyed (nothing else holding it) ends
    the registration, ENOENT. A point submitted: the registration holds its fence, as the
    kernel's does, and is answered when that fence signals, whatever became of the
    syncobj (destroyed, reset, given another fence)."""
    timeline = syncobj.sw_sync_timeline(dev)
    pending = syncobj.sw_sync_fence(dev, timeline, 1)
    submitted, empty = syncobj.create(dev), syncobj.create(dev)
    reset, replaced = syncobj.create(dev), syncobj.create(dev)
    syncobj.import_sync_file(dev, submitted, pending, point=1)
    for binary in (reset, replaced):
        syncobj.import_sync_file(dev, binary, pending)
    on_fence, for_submit = register(submitted, point=1), register(empty, point=1)
    after_reset, after_replace = register(reset), register(replaced)
    syncobj.destroy(dev, submitted)
    syncobj.destroy(dev, empty)
    syncobj.reset(dev, [reset])
    later = syncobj.sw_sync_fence(dev, timeline, 2)
    syncobj.import_sync_file(dev, replaced, later)
    assert for_submit.answered() == ENOENT
    assert all(r.answered(STILL) is None for r in (on_fence, after_reset, after_replace))
    syncobj.sw_sync_inc(dev, timeline)  # the fences they registered on signal; not `later`
    assert [r.answered() for r in (on_fence, after_reset, after_replace)] == [0, 0, 0]
    for fd in (pending, later, timeline):
        os.close(fd)


def test_a_descriptor_keeps_the_syncobj_and_its_registration(dev: Device, register: Any) -> None:
    """The handle destroyed, its exported descriptor still holds the syncobj: the wait
    goes on, and a point added through a handle imported from it answers it."""
    tl = syncobj.create(dev)
    fd = syncobj.handle_to_fd(dev, tl)
    waiting = register(tl, point=1)
    syncobj.destroy(dev, tl)
    assert waiting.answered(STILL) is None
    again = syncobj.fd_to_handle(dev, fd)
    os.close(fd)
    syncobj.timeline_signal(dev, [again], [1])
    assert waiting.answered() == 0


def test_it_takes_no_fence_waits_slot(make_daemon: Any) -> None:
    """With fence_waits = 1, three registrations wait at once and the file's own wait
    still sleeps (ENOMEM would say a slot was taken)."""
    daemon = make_daemon("[limits]\nfence_waits = 1\n")
    with Device.open(daemon.socket_path) as dev:
        tl = syncobj.create(dev)
        made = [Registration(dev, daemon.socket_path, wait_args(tl, 1)) for _ in range(3)]
        try:
            assert made[0].answered(STILL) is None
            assert not any(r.answered(0) is not None for r in made)
            soon = syncobj.deadline_in(0.2)
            own = errno_of(syncobj.timeline_wait, dev, [tl], [1], soon, for_submit=True)
            assert own == ETIME  # it slept: ENOMEM would say its slot was taken
            syncobj.timeline_signal(dev, [tl], [1])
            assert [r.answered() for r in made] == [0, 0, 0]
        finally:
            for registration in made:
                registration.close()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (dict(flags=1), EINVAL),  # WAIT_ALL is no registration's
        (dict(pad=1), EINVAL),
        (dict(handle=99), ENOENT),
    ],
)
def test_register_errnos(dev: Device, args: dict[str, int], expected: int) -> None:
    tl = syncobj.create(dev, signaled=True)
    request = wait_args(**{"handle": tl, **args})
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_REGISTER, request) == expected
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_WAIT, m.Empty()) == EINVAL  # none made


def test_one_registration_a_connection_until_waited_on(dev: Device) -> None:
    """A second REGISTER before the WAIT: EBUSY; a WAIT takes the registration (a
    second WAIT finds none: EINVAL), and the connection may register again."""
    tl = syncobj.create(dev, signaled=True)
    dev.ioctl(Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl))
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl)) == EBUSY
    dev.ioctl(Op.SYNCOBJ_EVENTFD_WAIT, m.Empty())  # signalled: answered at once
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_WAIT, m.Empty()) == EINVAL
    dev.ioctl(Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl))
    dev.ioctl(Op.SYNCOBJ_EVENTFD_WAIT, m.Empty())


def test_no_second_registration_while_the_wait_is_pending(dev: Device) -> None:
    """While a connection's WAIT is under way, REGISTER there is EBUSY and another WAIT
    EINVAL: a client leaves one pending wait a connection (they take no fence_waits
    slot, so nothing else would bound them); once answered, it registers again."""
    tl = syncobj.create(dev)
    dev.ioctl(Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl, 1))
    sock = dev.transport.sock
    sock.send(encode_request(901, Op.SYNCOBJ_EVENTFD_WAIT, m.Empty()))
    dev.version()  # answered after the WAIT's task ran up to its sleep: it is parked
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl, 1)) == EBUSY
    assert errno_of(dev.ioctl, Op.SYNCOBJ_EVENTFD_WAIT, m.Empty()) == EINVAL
    syncobj.timeline_signal(dev, [tl], [1])
    ready, _, _ = select.select([sock], [], [], ANSWERED)
    assert ready
    data, fds = dev.transport.recv()
    reply = decode_incoming(data, tuple(fds), {901: Op.SYNCOBJ_EVENTFD_WAIT})
    assert isinstance(reply, Reply) and reply.id == 901 and not reply.errno
    dev.ioctl(Op.SYNCOBJ_EVENTFD_REGISTER, wait_args(tl, 1))
    dev.ioctl(Op.SYNCOBJ_EVENTFD_WAIT, m.Empty())


def test_a_destroy_right_after_the_registration_comes_after_it(dev: Device, register: Any) -> None:
    """The registration is made before REGISTER is answered: a destroy of the handle
    sent next (a descriptor keeping the syncobj) cannot overtake it."""
    for _ in range(20):
        tl = syncobj.create(dev)
        fd = syncobj.handle_to_fd(dev, tl)
        waiting = register(tl, point=1)
        syncobj.destroy(dev, tl)
        again = syncobj.fd_to_handle(dev, fd)
        os.close(fd)
        syncobj.timeline_signal(dev, [again], [1])
        assert waiting.answered() == 0
        syncobj.destroy(dev, again)


def test_nothing_is_left_behind(fresh_daemon: DaemonProcess, dev: Device) -> None:
    before = baseline(fresh_daemon)
    for _ in range(3):
        tl = syncobj.create(dev)
        registration = Registration(dev, fresh_daemon.socket_path, wait_args(tl, 1))
        assert registration.answered(0.05) is None
        syncobj.destroy(dev, tl)
        assert registration.answered() == ENOENT
        registration.close()
        kept = syncobj.create(dev)  # one whose registrations were answered: none kept
        done = Registration(dev, fresh_daemon.socket_path, wait_args(kept, 0, AVAILABLE))
        syncobj.signal(dev, [kept])
        assert done.answered() == 0
        done.close()
        syncobj.destroy(dev, kept)
    assert wait_for_baseline(fresh_daemon, before) == before
