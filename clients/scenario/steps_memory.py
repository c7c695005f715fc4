"""Steps on memory: BOs and their mappings, VMs and execution, dma-bufs."""

from __future__ import annotations

from typing import Any

from protocols.constants import DRM_CLOEXEC, DRM_RDWR, PROT_READ, PROT_WRITE

from ..batch import Batch
from ..device import user_fence
from .vocabulary import BATCH_OPS, PLACEMENTS, PROTS, SYNC_ACCESS, SYNC_OPS
from .worker import Mismatch, Worker, step


# --- buffer objects and mappings --------------------------------------------------------
@step("create")
def do_create(w: Worker, a: dict[str, Any]) -> None:
    size = w.number(a["size"])
    handle = w.dev.gem_create(size, PLACEMENTS[a["placement"]])
    w.bos[a["bo"]] = w.values[a["bo"]] = handle
    w.sizes[handle] = size


@step("close")
def do_close(w: Worker, a: dict[str, Any]) -> None:
    w.dev.gem_close(w.ref(a["bo"], w.bos))


@step("map")
def do_map(w: Worker, a: dict[str, Any]) -> None:
    handle = w.ref(a["bo"], w.bos)
    # a handle this file does not know (someone else's number): one page, the daemon judges
    length = w.sizes.get(handle, 4096) if a["length"] is None else w.number(a["length"])
    mapping = w.dev.mmap_bo(handle, length)
    name = a["map"] or str(a["bo"])
    w.maps[name] = w.bo_maps[handle] = mapping
    w.values[f"{name}.offset"] = mapping.fake_offset


@step("mmap_offset")
def do_mmap_offset(w: Worker, a: dict[str, Any]) -> None:
    offset = w.dev.gem_mmap_offset(w.ref(a["bo"], w.bos))
    w.values[a["value"] or f"{a['bo']}.offset"] = offset


@step("mmap")
def do_mmap(w: Worker, a: dict[str, Any]) -> None:
    offset = w.ref(a["offset"])
    w.maps[a["map"]] = w.dev.mmap(offset, w.number(a["size"]), PROTS[a["prot"]])


@step("write")
def do_write(w: Worker, a: dict[str, Any]) -> None:
    mapping = w.named(w.maps, a["map"], "mapping")
    data, _ = w.data(a)
    offset = w.number(a["offset"])
    if len(data) in (4, 8) and a["data"] is None and a["hex"] is None:
        store = mapping.write_u32 if len(data) == 4 else mapping.write_u64
        store(offset, int.from_bytes(data, "little"))  # one aligned store
    else:
        mapping[offset : offset + len(data)] = data


@step("read")
def do_read(w: Worker, a: dict[str, Any]) -> None:
    mapping = w.named(w.maps, a["map"], "mapping")
    data, shown = w.data(a)
    offset = w.number(a["offset"])
    got = mapping[offset : offset + len(data)]
    if got != data:
        raise Mismatch(shown, w.shown(a, got))


# --- VMs and execution --------------------------------------------------------------------
@step("vm")
def do_vm(w: Worker, a: dict[str, Any]) -> None:
    w.vms[a["vm"]] = w.values[a["vm"]] = w.dev.vm_create()


@step("bind")
def do_bind(w: Worker, a: dict[str, Any]) -> None:
    vm, handle = w.ref(a["vm"], w.vms), w.ref(a["bo"], w.bos)
    addr, obj_offset = w.number(a["addr"]), w.number(a["obj_offset"])
    if a["range"] is None:
        length = w.sizes.get(handle, 4096) - obj_offset
    else:
        length = w.number(a["range"])
    w.dev.vm_bind(vm, handle, addr, length, obj_offset)
    w.bindings.setdefault(vm, []).append((addr, length, handle, obj_offset))


@step("unbind")
def do_unbind(w: Worker, a: dict[str, Any]) -> None:
    vm, addr, length = w.ref(a["vm"], w.vms), w.number(a["addr"]), w.number(a["range"])
    w.dev.vm_unbind(vm, addr, length)
    w.bindings[vm] = [b for b in w.bindings.get(vm, []) if b[0] != addr]


@step("exec")
def do_exec(w: Worker, a: dict[str, Any]) -> None:
    vm = w.ref(a["vm"], w.vms)
    batch = Batch()
    for op in a["ops"]:
        args = [w.number(op[key]) for key in BATCH_OPS[op["op"]]]
        getattr(batch, op["op"])(*args)
    batch.end()
    address = w.number(a["batch"])
    mapping, offset = w.cpu_at(vm, address)
    mapping[offset : offset + len(batch)] = batch.tobytes()
    syncs = []
    if a["fence"] is not None:
        fence = w.number(a["fence"])
        fence_map, fence_offset = w.cpu_at(vm, fence)
        w.fence_seq += 1
        syncs.append(user_fence(fence, w.fence_seq))
        w.last_fence = (fence_map, fence_offset, w.fence_seq)
    if vm not in w.queues:
        w.queues[vm] = w.dev.exec_queue_create(vm)
    w.dev.exec(w.queues[vm], address, syncs=syncs)


@step("wait")
def do_wait(w: Worker, a: dict[str, Any]) -> None:
    if w.last_fence is None:
        raise KeyError("no exec with a fence to wait for")
    mapping, offset, value = w.last_fence
    timeout = w.number(a["timeout_ms"]) * 1_000_000
    w.dev.wait_user_fence(mapping.user_address(offset), value, timeout=timeout)


# --- dma-bufs and peers -----------------------------------------------------------------
@step("export")
def do_export(w: Worker, a: dict[str, Any]) -> None:
    flags = DRM_CLOEXEC if a["readonly"] else DRM_CLOEXEC | DRM_RDWR
    w.fds[a["fd"]] = w.dev.prime_handle_to_fd(w.ref(a["bo"], w.bos), flags)


@step("import")
def do_import(w: Worker, a: dict[str, Any]) -> None:
    fd = w.named(w.fds, a["fd"], "descriptor")
    handle = w.dev.prime_fd_to_handle(fd)
    w.bos[a["bo"]] = w.values[a["bo"]] = handle
    w.sizes[handle] = w.dev.dmabuf_size(fd)


@step("dmabuf_map")
def do_dmabuf_map(w: Worker, a: dict[str, Any]) -> None:
    fd = w.named(w.fds, a["fd"], "descriptor")
    prot = PROT_READ if a["readonly"] else PROT_READ | PROT_WRITE
    w.maps[a["map"] or a["fd"]] = w.dev.dmabuf_mmap(fd, prot=prot)


@step("sync")
def do_sync(w: Worker, a: dict[str, Any]) -> None:
    fd = w.named(w.fds, a["fd"], "descriptor")
    flags = a["flags"]
    if flags is None:
        flags = SYNC_OPS[a["op"]] | SYNC_ACCESS[a["access"]]
    w.dev.dmabuf_sync(fd, w.number(flags))
