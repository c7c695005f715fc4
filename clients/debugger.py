"""`xec debug attach PID`: a small debugger for a process using xed.

It attaches (same uid or root; one debugger per process), lists the target's VMs and
their bindings, dumps or patches memory at GPU addresses (BO-backed or userptr), and
follows what the target does, event by event, until it exits or time runs out.

    xec debug attach 4242                               # list VMs and bindings
    xec debug attach 4242 --dump 1:1:0x100000000:64     # client:vm:address:length
    xec debug attach 4242 --patch 1:1:0x100000000:c0ffee
    xec debug attach 4242 --follow 30                   # events for 30 s (or to exit)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .device import Device
from .errors import XeError


def _parse(spec: str, parts: int) -> list[str]:
    fields = spec.split(":")
    if len(fields) != parts:
        raise SystemExit(f"xec debug: expected {parts} fields separated by ':', got {spec!r}")
    return fields


def _hexdump(addr: int, data: bytes) -> None:
    for row in range(0, len(data), 16):
        chunk = data[row : row + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"  {addr + row:#018x}  {chunk.hex(' '):<47}  {text}")


def attach(socket_path: Path, pid: int, dumps: list[str], patches: list[str], follow: float) -> int:
    try:
        dbg = Device.open(socket_path, role="debugger")
        reply = dbg.debug_attach(pid)
    except (OSError, XeError) as exc:
        print(f"xec debug: {exc}", file=sys.stderr)
        return 1
    with dbg:
        print(f"attached to pid {pid}")
        for vm in reply.vms:
            print(f"  connection {vm.client_id}, VM {vm.vm_id}:")
            for b in vm.bindings:
                what = f"handle {b.handle}" if b.kind == "bo" else f"user {b.userptr:#x}"
                what = "" if b.kind == "null" else what
                print(f"    {b.va:#018x} +{b.range:#x}  {b.kind:<8} {what}")
        try:
            for spec in patches:
                client, vm_id, addr, text = _parse(spec, 4)
                dbg.debug_vm_write(int(client), int(vm_id), int(addr, 0), bytes.fromhex(text))
                print(f"patched {len(text) // 2} bytes at {int(addr, 0):#x}")
            for spec in dumps:
                client, vm_id, addr, length = _parse(spec, 4)
                data = dbg.debug_vm_read(int(client), int(vm_id), int(addr, 0), int(length, 0))
                _hexdump(int(addr, 0), data)
        except XeError as exc:
            print(f"xec debug: {exc}", file=sys.stderr)
            return 1
        deadline = time.monotonic() + follow
        while follow and time.monotonic() < deadline:
            try:
                event = dbg.wait_event(max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            e = event.data
            print(
                f"event {e.kind:<18} pid {e.pid} conn {e.client_id} vm {e.vm_id} "
                f"addr {e.addr:#x} range {e.range:#x} {e.detail}",
                flush=True,
            )
            if e.kind == "detach":
                break
    return 0
