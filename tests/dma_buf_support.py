"""What the dma-buf tests (test_dma_buf.py, _errors, _foreign, _lifetime) share: where
they bind, the buffer size, a fresh exported BO, and polling the daemon's counts, which
learn asynchronously that the last descriptor of a dma-buf was closed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import baseline

from clients import Device
from clients.daemon import DaemonProcess
from protocols.constants import DRM_CLOEXEC, DRM_RDWR, PAGE_SIZE, PROT_READ, PROT_WRITE

BASE = 0x1_0000_0000  # where a test binds the shared BO
BATCH = 0x2_0000_0000  # where it binds its batch BO
RW = PROT_READ | PROT_WRITE
SIZE = 4 * PAGE_SIZE


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno `fn` fails with (it must fail)."""
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno is not None, f"no errno: {e.value!r}"
    return e.value.errno


def exported(
    dev: Device, fill: bytes = b"", size: int = SIZE, flags: int = DRM_CLOEXEC | DRM_RDWR
) -> tuple[int, int]:
    """(handle, dma-buf fd) of a fresh BO whose first bytes are `fill`."""
    handle = dev.gem_create(size)
    if fill:
        with dev.mmap_bo(handle) as mp:
            mp[0 : len(fill)] = fill
    return handle, dev.prime_handle_to_fd(handle, flags)


def ino(fd: int) -> int:
    return os.fstat(fd).st_ino


def wait_for(daemon: DaemonProcess, predicate: Callable[[tuple[int, Any]], bool]) -> Any:
    """Poll baseline() (up to ~10 s) until `predicate` holds; return the last reading."""
    current = baseline(daemon)
    for _ in range(500):
        if predicate(current):
            break
        time.sleep(0.02)
        current = baseline(daemon)
    return current
