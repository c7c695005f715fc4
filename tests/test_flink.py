"""GEM_FLINK and GEM_OPEN (drm_gem.c), and the render node that refuses them.

A name is global to the device and belongs to the object: the same for every FLINK of
it, gone with the object's last handle. GEM_OPEN gives a new handle each time. Both are
DRM_AUTH, not DRM_RENDER_ALLOW: a render node refuses them with EACCES before looking
at their arguments. xed's departure: a name opens only for the uids that flinked it
(and root), as the kernel's DRM authentication would keep strangers out.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable
from typing import Any

import pytest
from conftest import baseline
from helpers import NobodyChild, errno_of, needs_root, open_to_nobody

from clients import Device, XeError
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import DRM_XE_GEM_CPU_CACHING_WC, PAGE_SIZE, XE_PLACEMENT_VRAM0

WAIT = 10.0


def poll_until(check: Callable[[], bool]) -> None:
    """Bounded polling for what the daemon does on its own schedule."""
    for _ in range(1000):
        if check():
            return
        select.select([], [], [], 0.01)
    raise AssertionError("never happened")


# --- GEM_FLINK ---------------------------------------------------------------------------------


def test_flink_twice_gives_the_same_name(dev: Device) -> None:
    """FLINK of an object already named answers its name again."""
    bo = dev.gem_create(PAGE_SIZE)
    name = dev.gem_flink(bo)
    assert name > 0
    assert dev.gem_flink(bo) == name


def test_flink_from_another_file_gives_the_objects_name(daemon: DaemonProcess, dev: Device) -> None:
    """A name is the object's: another file holding the object (by GEM_OPEN or by a
    dma-buf import) flinks the same name."""
    bo = dev.gem_create(PAGE_SIZE)
    name = dev.gem_flink(bo)
    with Device.open(daemon.socket_path) as other:
        opened, _size = other.gem_open(name)
        assert other.gem_flink(opened) == name
        fd = dev.prime_handle_to_fd(bo)
        try:
            with Device.open(daemon.socket_path) as third:
                assert third.gem_flink(third.prime_fd_to_handle(fd)) == name
        finally:
            os.close(fd)


def test_distinct_objects_get_distinct_names(dev: Device) -> None:
    """Two objects: two names."""
    assert dev.gem_flink(dev.gem_create(PAGE_SIZE)) != dev.gem_flink(dev.gem_create(PAGE_SIZE))


def test_flink_unknown_handle_is_enoent(dev: Device) -> None:
    """FLINK of a handle this file does not have (0, never given, closed): ENOENT."""
    assert errno_of(dev.gem_flink, 0) == errno.ENOENT
    assert errno_of(dev.gem_flink, 0xDEADBEEF) == errno.ENOENT
    bo = dev.gem_create(PAGE_SIZE)
    dev.gem_close(bo)
    assert errno_of(dev.gem_flink, bo) == errno.ENOENT


def test_flink_other_files_handle_is_enoent(daemon: DaemonProcess, dev: Device) -> None:
    """Handles are per file: FLINK of another file's handle number is ENOENT."""
    with Device.open(daemon.socket_path) as other:
        theirs = max(other.gem_create(PAGE_SIZE) for _ in range(40))
        assert errno_of(dev.gem_flink, theirs) == errno.ENOENT


# --- GEM_OPEN ----------------------------------------------------------------------------------


def test_open_maps_the_same_memory(daemon: DaemonProcess, dev: Device) -> None:
    """GEM_OPEN in another file gives a handle to the same object: same size, same pages."""
    bo = dev.gem_create(2 * PAGE_SIZE)
    with Device.open(daemon.socket_path) as other:
        handle, size = other.gem_open(dev.gem_flink(bo))
        assert size == 2 * PAGE_SIZE
        with dev.mmap_bo(bo) as mine, other.mmap_bo(handle) as theirs:
            mine[PAGE_SIZE : PAGE_SIZE + 6] = b"named!"
            assert theirs[PAGE_SIZE : PAGE_SIZE + 6] == b"named!"


def test_open_gives_a_new_handle_every_time(daemon: DaemonProcess, dev: Device) -> None:
    """Each GEM_OPEN of a name makes a new handle, in the flinking file too."""
    bo = dev.gem_create(PAGE_SIZE)
    name = dev.gem_flink(bo)
    first, _ = dev.gem_open(name)
    second, _ = dev.gem_open(name)
    assert len({bo, first, second}) == 3
    with Device.open(daemon.socket_path) as other:
        a, _ = other.gem_open(name)
        b, _ = other.gem_open(name)
        assert a != b


def test_open_unknown_name_is_enoent(dev: Device) -> None:
    """A name never given (0 included): ENOENT."""
    assert errno_of(dev.gem_open, 0) == errno.ENOENT
    assert errno_of(dev.gem_open, 0xFFFF_FFFF) == errno.ENOENT


def test_name_goes_with_the_last_handle(fresh_daemon: DaemonProcess) -> None:
    """The name lives while any file has a handle to the object, and goes with the last
    one, even though a dma-buf of the object still holds its memory."""
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path) as other,
    ):
        bo = dev.gem_create(PAGE_SIZE)
        name = dev.gem_flink(bo)
        opened, _ = other.gem_open(name)
        dmabuf = dev.prime_handle_to_fd(bo)
        try:
            dev.gem_close(bo)  # the other file's handle keeps the name
            again, _ = dev.gem_open(name)
            dev.gem_close(again)
            other.gem_close(opened)  # the last handle
            assert errno_of(dev.gem_open, name) == errno.ENOENT
            assert dev.dmabuf_size(dmabuf) == PAGE_SIZE  # the memory lives on
        finally:
            os.close(dmabuf)


def test_name_goes_with_the_file_release(fresh_daemon: DaemonProcess) -> None:
    """Closing the only file holding the object frees its name; nothing leaks."""
    before = baseline(fresh_daemon)
    dev = Device.open(fresh_daemon.socket_path)
    name = dev.gem_flink(dev.gem_create(PAGE_SIZE))
    dev.close()
    poll_until(lambda: baseline(fresh_daemon) == before)
    with Device.open(fresh_daemon.socket_path) as other:
        assert errno_of(other.gem_open, name) == errno.ENOENT


def test_freed_names_are_given_again_lowest_first(fresh_daemon: DaemonProcess) -> None:
    """Names are idr ids: the lowest free one, from 1."""
    with Device.open(fresh_daemon.socket_path) as dev:
        bos = [dev.gem_create(PAGE_SIZE) for _ in range(3)]
        assert [dev.gem_flink(bo) for bo in bos] == [1, 2, 3]
        dev.gem_close(bos[1])
        assert dev.gem_flink(dev.gem_create(PAGE_SIZE)) == 2


def test_open_past_the_handle_limit_is_enomem(make_daemon: Any) -> None:
    """GEM_OPEN while the file holds limits.bos handles: ENOMEM, no handle made."""
    daemon = make_daemon("[limits]\nbos = 2\n")
    with Device.open(daemon.socket_path) as dev:
        name = dev.gem_flink(dev.gem_create(PAGE_SIZE))
        dev.gem_open(name)
        assert errno_of(dev.gem_open, name) == errno.ENOMEM


def test_open_handle_and_the_objects_dma_buf(fresh_daemon: DaemonProcess) -> None:
    """As drm_prime: importing the object's dma-buf in a file that has a GEM_OPEN handle
    gives a new handle, unless that handle exported it there (xe_prime_self_import's
    "one BO, two files": then the import answers the opened handle)."""
    with (
        Device.open(fresh_daemon.socket_path) as dev,
        Device.open(fresh_daemon.socket_path) as other,
    ):
        bo = dev.gem_create(PAGE_SIZE)
        fd1 = dev.prime_handle_to_fd(bo)
        opened, _ = other.gem_open(dev.gem_flink(bo))
        imported = other.prime_fd_to_handle(fd1)
        assert imported != opened
        fd2 = other.prime_handle_to_fd(opened)
        assert other.prime_fd_to_handle(fd2) == opened
        os.close(fd1)
        os.close(fd2)


# --- the render node ---------------------------------------------------------------------------


@pytest.fixture
def render(daemon: DaemonProcess) -> Any:
    with Device.open(daemon.socket_path, node="render") as device:
        yield device


def test_render_node_refuses_flink(render: Device) -> None:
    """GEM_FLINK on a render node: EACCES, for a valid handle as for none."""
    bo = render.gem_create(PAGE_SIZE)
    assert errno_of(render.gem_flink, bo) == errno.EACCES
    assert errno_of(render.gem_flink, 0xDEAD) == errno.EACCES


def test_render_node_refuses_open(dev: Device, render: Device) -> None:
    """GEM_OPEN on a render node: EACCES, for a live name as for none."""
    name = dev.gem_flink(dev.gem_create(PAGE_SIZE))
    assert errno_of(render.gem_open, name) == errno.EACCES
    assert errno_of(render.gem_open, 0) == errno.EACCES


def test_render_node_allows_everything_else(render: Device) -> None:
    """Every other op of a drm file works on a render node (they are DRM_RENDER_ALLOW)."""
    assert render.version().name == "xe"
    bo = render.gem_create(PAGE_SIZE)
    with render.mmap_bo(bo) as cpu:
        cpu[0:4] = b"rndr"
    fd = render.prime_handle_to_fd(bo)
    try:
        assert render.prime_fd_to_handle(fd) == bo
    finally:
        os.close(fd)
    render.vm_destroy(render.vm_create())
    render.gem_close(bo)


def test_render_node_shows_in_the_admin_view(render: Device, admin: Device) -> None:
    """ADMIN_CLIENTS names the node a drm file was opened on."""
    (info,) = [c for c in admin.admin_clients() if c.client_id == render.client_id]
    assert info.node == "render"


def test_unknown_node_is_einval(daemon: DaemonProcess) -> None:
    """HELLO with a node neither primary nor render: EINVAL."""
    assert errno_of(Device.open, daemon.socket_path, node="control") == errno.EINVAL
    assert errno_of(Device.open, daemon.socket_path, node="") == errno.EINVAL


def test_flink_refusal_on_render_node_keeps_the_connection(render: Device) -> None:
    """EACCES for a render-node op is a refusal like any other: the connection goes on."""
    for _ in range(20):  # more than the strikes that end a connection sending garbage
        with pytest.raises(XeError):
            render.ioctl(Op.GEM_FLINK, m.DrmGemFlink(handle=1))
    assert render.version().name == "xe"


# --- names and uids (xed) ----------------------------------------------------------------------


def test_other_uids_names_do_not_open(fresh_daemon: DaemonProcess) -> None:
    """uid 65534 cannot open a name only root's files flinked (ENOENT, as if there were
    none); root opens a name uid 65534 flinked; uid 65534 opens its own in a new file."""
    needs_root()
    path = open_to_nobody(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as dev:
        root_name = dev.gem_flink(
            dev.gem_create(
                PAGE_SIZE, placement=XE_PLACEMENT_VRAM0, cpu_caching=DRM_XE_GEM_CPU_CACHING_WC
            )
        )

        def work(report: Callable[[Any], None], wait_go: Callable[[], None]) -> None:
            with Device.open(path) as mine, Device.open(path) as second:
                own = mine.gem_flink(mine.gem_create(PAGE_SIZE))
                try:
                    second.gem_open(root_name)
                    got = 0
                except XeError as exc:
                    got = exc.errno or -1
                handle, _ = second.gem_open(own)
                report({"root_name": got, "own": own, "handle": handle})
                wait_go()

        child = NobodyChild(fresh_daemon.socket_path, work)
        try:
            state = child.report()
            assert state["root_name"] == errno.ENOENT
            assert state["handle"] > 0
            handle, size = dev.gem_open(state["own"])
            assert size == PAGE_SIZE
        finally:
            assert child.join() == 0
