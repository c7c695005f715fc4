"""HELLO join against a file that is going or gone (xed/channels.py).

A join racing the file's release either is refused (ENOENT: the token went first) or
becomes a channel the release then closes: nothing of the released file is reachable
either way. A file opened before an unplug may still be joined after the replug (its
connection lives, as an inherited descriptor would), and every ioctl on it is ENODEV.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest
from conftest import baseline
from test_vm_export import settle_to

from clients import DaemonGone, Device
from clients.daemon import DaemonProcess
from protocols.constants import PAGE_SIZE

WAIT = 10.0  # s: an upper bound, never an expectation
JOINS = 200


def _join_all(path: Any, token: str, started: threading.Event, out: dict[str, list[Any]]) -> None:
    """Join the file JOINS times in a row, whatever each answer."""
    for i in range(JOINS):
        if i == JOINS // 4:  # the owner closes while the rest are sent
            started.set()
        try:
            channel = Device.open(path, join=token)
        except OSError as exc:
            out["refused"].append(exc.errno)
            continue
        channel.transport.sock.settimeout(WAIT)
        out["joined"].append(channel)


def test_joins_racing_the_files_release_are_enoent_or_closed(
    fresh_daemon: DaemonProcess,
) -> None:
    """Joins sent while the file's connection closes: each is ENOENT or a channel that
    the daemon closes (EOF); nothing leaks."""
    before = baseline(fresh_daemon)
    path = fresh_daemon.socket_path
    for _ in range(10):
        owner = Device.open(path)
        owner.gem_create(PAGE_SIZE)
        out: dict[str, list[Any]] = {"joined": [], "refused": []}
        started = threading.Event()
        joiner = threading.Thread(target=_join_all, args=(path, owner.token, started, out))
        joiner.start()
        assert started.wait(WAIT)
        owner.close()
        joiner.join(WAIT)
        assert not joiner.is_alive()
        assert set(out["refused"]) <= {errno.ENOENT}
        for channel in out["joined"]:
            # a join answered before the token went is a channel the release closes
            with pytest.raises(DaemonGone):
                channel.wait_event(timeout=WAIT)
            channel.close()
    assert settle_to(fresh_daemon, before) == before


def test_join_of_a_file_from_before_the_replug_answers_enodev(
    fresh_daemon: DaemonProcess,
) -> None:
    """A file opened before an unplug, joined after the replug: the join is answered
    (the file lives on), every ioctl on the channel is ENODEV, its BO unreachable."""
    path = fresh_daemon.socket_path
    with Device.open(path) as old:
        bo = old.gem_create(PAGE_SIZE)
        with Device.open(path, role="admin") as adm:
            adm.admin_unplug()
            adm.admin_replug()
        with Device.open(path, join=old.token) as channel:
            for call in (
                lambda: channel.gem_mmap_offset(bo),
                lambda: channel.gem_create(PAGE_SIZE),
                lambda: channel.vm_create(),
            ):
                with pytest.raises(OSError) as e:
                    call()
                assert e.value.errno == errno.ENODEV
        with Device.open(path) as new:  # a file of the new device works
            assert new.gem_create(PAGE_SIZE)
