"""Steps beside the DRM file: VM export and the IB-like aux driver, host memory and
userptr, and the debugger."""

from __future__ import annotations

import time
from typing import Any

from protocols import Event

from ..host_memory import HostMemory
from ..ib import IbContext, MemoryRegion, QueuePair
from .vocabulary import MR_ACCESS, WC_STATUS
from .worker import Mismatch, Worker, step


# --- VM export and the IB-like driver -----------------------------------------------------
@step("vm_export")
def do_vm_export(w: Worker, a: dict[str, Any]) -> None:
    w.fds[a["fd"]] = w.dev.vm_export(w.ref(a["vm"], w.vms))


@step("ib_open")
def do_ib_open(w: Worker, a: dict[str, Any]) -> None:
    verbs = w.verbs[a["ib"] or w.scenario.ib_names[0]]
    context = IbContext.open(verbs, w.named(w.fds, a["fd"], "descriptor"))
    if w.ib is not None:
        w.ib.close()
    w.ib = context


@step("reg_mr")
def do_reg_mr(w: Worker, a: dict[str, Any]) -> None:
    access = sum(MR_ACCESS[flag] for flag in set(a["access"]))
    mr = w.ib_context().reg_mr(w.number(a["addr"]), w.number(a["length"]), access)
    w.mrs[a["mr"]] = mr
    w.values[f"{a['mr']}.rkey"], w.values[f"{a['mr']}.lkey"] = mr.rkey, mr.lkey


@step("qp")
def do_qp(w: Worker, a: dict[str, Any]) -> None:
    w.qps[a["qp"]] = qp = w.ib_context().create_qp()
    w.values[f"{a['qp']}.num"] = qp.num


@step("connect")
def do_connect(w: Worker, a: dict[str, Any]) -> None:
    w.named(w.qps, a["qp"], "queue pair").connect(w.ref(a["remote"]))


def _rdma(w: Worker, a: dict[str, Any], read: bool) -> None:
    qp: QueuePair = w.named(w.qps, a["qp"], "queue pair")
    mr: MemoryRegion = w.named(w.mrs, a["mr"], "memory region")
    post = qp.rdma_read if read else qp.rdma_write
    post(
        mr,
        w.number(a["remote_addr"]),
        w.ref(a["rkey"]),
        w.number(a["length"]),
        local_addr=mr.addr + w.number(a["local_offset"]),
    )
    wc = qp.wait_cq()
    if wc.status != WC_STATUS[a["status"]]:
        names = {v: k for k, v in WC_STATUS.items()}
        raise Mismatch(f"completion {a['status']}", names.get(wc.status, str(wc.status)))


@step("rdma_write")
def do_rdma_write(w: Worker, a: dict[str, Any]) -> None:
    _rdma(w, a, read=False)


@step("rdma_read")
def do_rdma_read(w: Worker, a: dict[str, Any]) -> None:
    _rdma(w, a, read=True)


# --- host memory and userptr ---------------------------------------------------------------
@step("host_memory")
def do_host_memory(w: Worker, a: dict[str, Any]) -> None:
    host = w.dev.host_memory(w.number(a["size"]))
    w.hosts[a["host"]] = host
    w.maps[a["host"]] = host.mapping  # `write` and `read` work on it by its name
    w.values[f"{a['host']}.addr"] = host.base


@step("bind_userptr")
def do_bind_userptr(w: Worker, a: dict[str, Any]) -> None:
    host: HostMemory = w.named(w.hosts, a["host"], "host memory")
    offset = w.number(a["offset"])
    length = host.size - offset if a["length"] is None else w.number(a["length"])
    w.dev.vm_bind_userptr(w.ref(a["vm"], w.vms), host, offset, w.number(a["addr"]), length)


@step("host_replace")
def do_host_replace(w: Worker, a: dict[str, Any]) -> None:
    host: HostMemory = w.named(w.hosts, a["host"], "host memory")
    host.replace(w.number(a["offset"]), w.data(a)[0])


@step("host_free")
def do_host_free(w: Worker, a: dict[str, Any]) -> None:
    host: HostMemory = w.named(w.hosts, a["host"], "host memory")
    host.free(w.number(a["offset"]), w.number(a["length"]))


# --- the debugger -------------------------------------------------------------------------
@step("attach")
def do_attach(w: Worker, a: dict[str, Any]) -> None:
    w.dev.debug_attach(w.target_pid(a["target"]))


@step("detach")
def do_detach(w: Worker, a: dict[str, Any]) -> None:
    w.dev.debug_detach(w.target_pid(a["target"]))


@step("debug_read")
def do_debug_read(w: Worker, a: dict[str, Any]) -> None:
    client_id, vm, addr = w.ref(a["client_id"]), w.ref(a["vm"]), w.number(a["addr"])
    if a["length"] is not None:
        w.dev.debug_vm_read(client_id, vm, addr, w.number(a["length"]))
        return
    data, shown = w.data(a)
    got = w.dev.debug_vm_read(client_id, vm, addr, len(data))
    if got != data:
        raise Mismatch(shown, w.shown(a, got))


@step("debug_write")
def do_debug_write(w: Worker, a: dict[str, Any]) -> None:
    client_id, vm, addr = w.ref(a["client_id"]), w.ref(a["vm"]), w.number(a["addr"])
    data = w.data(a)[0]
    written = w.dev.debug_vm_write(client_id, vm, addr, data)
    if written != len(data):  # a short write: a binding past the first was out of reach
        raise Mismatch(f"{len(data)} bytes written", str(written))


@step("events")
def do_events(w: Worker, a: dict[str, Any]) -> None:
    """DEBUG_EVENTs of these kinds, in this order; others in between are passed over."""
    wanted: list[str] = list(a["kinds"])
    seen: list[str] = []
    deadline = time.monotonic() + float(a["timeout"])
    while wanted:
        try:
            message = w.dev.wait_event(max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            got = ", ".join(seen[-8:]) or "no event"
            raise Mismatch(
                f"events {', '.join(a['kinds'])}", f"{got} in {a['timeout']:g} s"
            ) from None
        if message.event != Event.DEBUG_EVENT:
            continue
        kind = message.data.kind
        seen.append(kind)
        if kind == wanted[0]:
            wanted.pop(0)
