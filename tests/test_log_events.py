"""The daemon's structured events: connect and disconnect with the peer's credentials,
every object created and destroyed, every refused ioctl with its op and errno, each
naming the client it happened for. Read back from the daemon's own JSON log."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from conftest import run_client

from clients.daemon import DaemonProcess

LIFE = """
import os
bo = dev.gem_create(0x10000)
vm = dev.vm_create()
dev.vm_bind(vm, bo, 0x1_0000_0000)
queue = dev.exec_queue_create(vm)
try:
    dev.gem_close(0xDEAD)
except XeError:
    pass
dev.exec_queue_destroy(queue)
dev.vm_destroy(vm)
dev.gem_close(bo)
result = {"pid": os.getpid(), "client_id": dev.client_id}
"""


def _events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]


def test_a_clients_life_is_logged_with_its_id(fresh_daemon: DaemonProcess) -> None:
    me = run_client(fresh_daemon.socket_path, LIFE)
    for _ in range(500):  # the disconnect is logged once the daemon has seen the EOF
        events = [e for e in _events(fresh_daemon) if e.get("client_id") == me["client_id"]]
        if any(e["event"] == "client_disconnected" for e in events):
            break
        time.sleep(0.01)
    names = [e["event"] for e in events]
    for name in (
        "client_connected",
        "client_hello",
        "bo_created",
        "vm_created",
        "exec_queue_created",
        "ioctl_refused",
        "exec_queue_destroyed",
        "vm_destroyed",
        "bo_freed",
        "client_disconnected",
    ):
        assert name in names, (name, names)
    (connected,) = [e for e in events if e["event"] == "client_connected"]
    assert connected["pid"] == me["pid"] and connected["uid"] == os.getuid()
    (refused,) = [e for e in events if e["event"] == "ioctl_refused"]
    # drm_gem_handle_delete(): an unknown handle is EINVAL, not ENOENT
    assert (refused["op"], refused["errno"]) == ("GEM_CLOSE", "EINVAL")
    assert all(e["pid"] == me["pid"] for e in events)
    assert names.index("client_connected") < names.index("bo_created")
    assert names.index("bo_freed") < names.index("client_disconnected")
