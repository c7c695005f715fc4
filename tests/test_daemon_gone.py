"""However the daemon goes away, a caller of the library sees one error: DaemonGone."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import termios
import threading
from typing import Any

import pytest

from clients import DaemonGone, Device
from clients.daemon import DaemonProcess
from tests.helpers import WAIT, Gpu


def _kill(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)


def _in_thread(call: Any) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the test inspects whatever it was
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def test_call_after_the_daemon_died_raises_daemon_gone(make_daemon: Any) -> None:
    """A call on a connection whose daemon was killed meanwhile (EPIPE) is DaemonGone."""
    daemon = make_daemon()
    dev = Device.open(daemon.socket_path)
    _kill(daemon)
    with pytest.raises(DaemonGone, match="gone|closed"):
        dev.version()
    dev.close()


def test_daemon_dying_with_our_request_unread_raises_daemon_gone(make_daemon: Any) -> None:
    """A daemon killed before it read our request resets the connection: DaemonGone."""
    daemon = make_daemon()
    dev = Device.open(daemon.socket_path)
    os.kill(daemon.pid, signal.SIGSTOP)  # it will never read what we send now
    thread, raised = _in_thread(dev.version)
    try:
        # the request is in the daemon's queue once the socket has nothing left to send
        while not _request_queued(dev):
            thread.join(0.01)
    finally:
        _kill(daemon)
    thread.join(10)
    assert not thread.is_alive()
    assert [type(exc) for exc in raised] == [DaemonGone], raised
    dev.close()


def _request_queued(dev: Device) -> bool:
    """Our request sits unread on the daemon's side (SIOCOUTQ counts it until read)."""
    raw = fcntl.ioctl(dev.transport.sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return bool(struct.unpack("i", raw)[0])


def test_daemon_dying_during_a_blocking_call_raises_daemon_gone(make_daemon: Any) -> None:
    """A daemon killed while our WAIT_USER_FENCE waits closes the connection: DaemonGone."""
    daemon = make_daemon()
    dev = Device.open(daemon.socket_path)
    gpu = Gpu(dev)
    address = gpu.cpu.user_address(0)
    os.kill(daemon.pid, signal.SIGSTOP)
    thread, raised = _in_thread(lambda: dev.wait_user_fence(address, 1, timeout=20 * WAIT))
    while not _request_queued(dev):  # sent...
        thread.join(0.01)
    os.kill(daemon.pid, signal.SIGCONT)
    while _request_queued(dev):  # ...and taken: the daemon waits on the fence now
        thread.join(0.01)
    _kill(daemon)
    thread.join(10)
    assert not thread.is_alive()
    assert [type(exc) for exc in raised] == [DaemonGone], raised
    dev.close()

