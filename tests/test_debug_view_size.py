"""DEBUG_ATTACH's view of a target at its widest: VIEW_BINDINGS bindings, limits.bos handles.

Each binding names its BO's first handle in the target's file (0 once the target closed
every handle of it). The handles are looked through once per file, not once per binding:
768 bindings of a BO without a handle, in a file holding 65000 handles of another BO,
were 50 million steps, over a second with every other client waiting (measured; this
test pins what the answer says, and that it comes, never how fast).
"""

from __future__ import annotations

import os

from conftest import baseline
from test_vm_export import settle_to

from clients import Device
from clients.daemon import DaemonProcess
from protocols.constants import PAGE_SIZE
from xed.device.eudebug import VIEW_BINDINGS, VIEW_BINDINGS_PER_VM

OPENED = 65000  # handles of one BO, by GEM_OPEN of its name: no descriptor each
TIMEOUT = 60.0  # s: a bound on the whole call, not an expectation
VA = 0x1_0000_0000


def test_view_with_most_bindings_and_handles_names_each_first_handle(
    fresh_daemon: DaemonProcess,
) -> None:
    """A target with VIEW_BINDINGS bindings and 65000 handles: the view lists them all,
    a binding of a BO it closed with handle 0, one of a BO with two handles, opened
    after all the others, with the first of those two."""
    before = baseline(fresh_daemon)
    with Device.open(fresh_daemon.socket_path) as target:
        target.transport.sock.settimeout(TIMEOUT)
        closed = target.gem_create(PAGE_SIZE)
        vms = [target.vm_create() for _ in range(VIEW_BINDINGS // VIEW_BINDINGS_PER_VM)]
        for vm in vms:
            for i in range(VIEW_BINDINGS_PER_VM):
                target.vm_bind(vm, closed, VA + (i + 1) * PAGE_SIZE)
        target.gem_close(closed)  # its bindings keep it alive, with no handle
        name = target.gem_flink(target.gem_create(PAGE_SIZE))
        for _ in range(OPENED):
            target.gem_open(name)
        last = target.gem_create(PAGE_SIZE)
        target.gem_open(target.gem_flink(last))  # a second handle: the first is named
        target.vm_unbind(vms[-1], VA + VIEW_BINDINGS_PER_VM * PAGE_SIZE, PAGE_SIZE)
        target.vm_bind(vms[-1], last, VA)
        with Device.open(fresh_daemon.socket_path, role="debugger") as dbg:
            dbg.transport.sock.settimeout(TIMEOUT)
            view = dbg.debug_attach(os.getpid())
        shown = [b for vm in view.vms for b in vm.bindings]
        assert len(shown) == VIEW_BINDINGS
        assert [b.handle for b in shown if b.va == VA] == [last]
        assert {b.handle for b in shown if b.va != VA} == {0}
    assert settle_to(fresh_daemon, before) == before
