"""Steps between processes and on BAR0: descriptors and values to a peer, barriers and
their counts, MMIO regions and doorbells, the admin's unplug, sync points."""

from __future__ import annotations

import json
import time
from typing import Any

from .. import fdpass
from ..device import Device
from .worker import Mismatch, Worker, step

ACK_TIMEOUT = 5.0  # seconds for the device to acknowledge a doorbell or a barrier drain


@step("send")
def do_send(w: Worker, a: dict[str, Any]) -> None:
    fd_names = list(a["fd"])
    fds = [w.named(w.fds, name, "descriptor") for name in fd_names]
    values = {name: w.ref(name, w.bos, w.vms) for name in a["value"]}
    message = json.dumps({"fds": fd_names, "values": values}).encode()
    fdpass.send_fds(w.peer(a["to"]), message, fds)


@step("recv")
def do_recv(w: Worker, a: dict[str, Any]) -> None:
    peer = w.peer(a["from"])
    peer.settimeout(float(a["timeout"]))
    try:
        data, fds = fdpass.recv_fds(peer)
    finally:
        peer.settimeout(None)
    if not data:
        raise Mismatch("a message", f"end of file: {a['from']} has gone")
    message = json.loads(data)
    names, values = message["fds"], message["values"]
    if a["fd"] is not None:
        if len(fds) != 1:
            raise Mismatch("one descriptor", f"{len(fds)}")
        names = [a["fd"]]
    if a["value"] is not None:
        if len(values) != 1:
            raise Mismatch("one value", f"{len(values)}")
        values = {a["value"]: next(iter(values.values()))}
    prefix = a["prefix"] if a["fd"] is None else ""
    for name, fd in zip(names, fds, strict=True):
        w.fds[prefix + name] = fd
    prefix = a["prefix"] if a["value"] is None else ""
    w.values.update({prefix + name: value for name, value in values.items()})


# --- BAR0: barriers, MMIO regions ---------------------------------------------------------
@step("barrier")
def do_barrier(w: Worker, a: dict[str, Any]) -> None:
    count = w.number(a["count"])
    before = w.counters().barriers if a["check"] else 0
    for _ in range(count):
        w.dev.pci_barrier()
    if a["check"]:  # an unplugged device never acknowledges: no drain then
        w.dev.pci_barrier_drain()
        counted = w.counters().barriers - before
        if counted != count:
            raise Mismatch(f"{count} counted", f"{counted} counted")


@step("counters")
def do_counters(w: Worker, a: dict[str, Any]) -> None:
    client = w.counters()
    for key in ("barriers", "doorbell_rings"):
        if a[key] is not None and getattr(client, key) != w.number(a[key]):
            raise Mismatch(f"{key} = {w.number(a[key])}", f"{getattr(client, key)}")


@step("mmio_open")
def do_mmio_open(w: Worker, a: dict[str, Any]) -> None:
    name = a["as"] or a["region"]
    w.regions[name] = region = w.dev.mmio_open(a["region"])
    w.values[f"{name}.offset"] = region.offset


@step("map_mmio")
def do_map_mmio(w: Worker, a: dict[str, Any]) -> None:
    region = w.named(w.regions, a["region"], "MMIO region")
    mapping = w.dev.mmap_mmio(region, writable=a["writable"])
    w.maps[a["map"] or a["region"]] = mapping


@step("ring")
def do_ring(w: Worker, a: dict[str, Any]) -> None:
    mapping = w.named(w.maps, a["map"], "mapping")
    mapping.write_u32(0, w.number(a["value"]))
    deadline = time.monotonic() + ACK_TIMEOUT
    while a["ack"] and mapping.read_u32(0) != 0:  # the device clears what it acted on
        if time.monotonic() > deadline:
            raise Mismatch("the device to clear the doorbell", "no acknowledgement")
        time.sleep(0.0005)


@step("version")
def do_version(w: Worker, a: dict[str, Any]) -> None:
    w.dev.version()


# --- admin and coordination -----------------------------------------------------------------
@step("unplug")
def do_unplug(w: Worker, a: dict[str, Any]) -> None:
    w.dev.admin_unplug()


@step("replug")
def do_replug(w: Worker, a: dict[str, Any]) -> None:
    w.dev.admin_replug()


@step("unplugged")
def do_unplugged(w: Worker, a: dict[str, Any]) -> None:
    """Wait until the device is unplugged and every mapping of this process reads from
    its own zero pages (clients/unplug.py)."""
    if not w.dev.wait_unplugged(a["timeout"]):
        raise Mismatch("the device unplugged", "still plugged in")


@step("reopen")
def do_reopen(w: Worker, a: dict[str, Any]) -> None:
    """close(2) of the DRM file and a new open(2): everything the file held goes
    (handles, VMs, queues, regions: their names are forgotten); mappings and received
    descriptors stay. After an unplug and REPLUG, the new device."""
    w.dev.close()
    w.dev = Device.open(w.socket_path)
    w.values["client_id"] = w.dev.client_id
    for space in (w.bos, w.vms, w.regions):
        for name in space:
            w.values.pop(name, None)
            w.values.pop(f"{name}.offset", None)
        space.clear()
    for held in (w.bo_maps, w.sizes, w.bindings, w.queues, w.hosts):
        held.clear()
    w.last_fence = None


@step("sync_point")
def do_sync_point(w: Worker, a: dict[str, Any]) -> None:
    w.report({"event": "sync", "name": a["name"]})
    if w.control_in.readline().strip() != "go":
        raise Mismatch("the runner's go-ahead", "end of file")
