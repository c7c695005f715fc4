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
from typing import Any

from protocols import to_wire
from protocols.cli import EX_USAGE, exit_status

from .device import Device
from .errors import XeError
from .progress import results_as_json


def _parse(option: str, spec: str) -> tuple[int, int, int, int | bytes]:
    """CLIENT:VM:ADDR:LEN (--dump) or CLIENT:VM:ADDR:HEX (--patch); ValueError says
    what is wrong with it."""
    last = "LEN" if option == "--dump" else "HEX"
    try:
        client, vm_id, addr, tail = spec.split(":")
        value = int(tail, 0) if option == "--dump" else bytes.fromhex(tail)
        return int(client, 0), int(vm_id, 0), int(addr, 0), value
    except ValueError:
        raise ValueError(f"{option} takes CLIENT:VM:ADDR:{last} (numbers), not {spec!r}") from None


def _hexdump(addr: int, data: bytes) -> None:
    for row in range(0, len(data), 16):
        chunk = data[row : row + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"  {addr + row:#018x}  {chunk.hex(' '):<47}  {text}")


def attach(
    socket_path: Path,
    pid: int,
    dumps: list[str],
    patches: list[str],
    follow: float,
    as_json: bool = False,
) -> int:
    """List, patch, dump, follow; with `as_json`, everything as one JSON document
    ({"pid", "vms", "patched", "dumps", "events"}) once done. Exit status 0, or 1 if
    the daemon refused the attach or an access (the message says why)."""
    result: dict[str, Any] = {"pid": pid, "vms": [], "patched": [], "dumps": [], "events": []}
    try:
        writes = [_parse("--patch", spec) for spec in patches]
        reads = [_parse("--dump", spec) for spec in dumps]
    except ValueError as exc:
        print(f"xec debug attach: {exc}", file=sys.stderr)
        return EX_USAGE
    dbg = Device.open(socket_path, role="debugger")
    try:
        reply = dbg.debug_attach(pid)
    except XeError as exc:
        dbg.close()
        print(f"xec debug attach: {exc}", file=sys.stderr)
        return exit_status(exc.errno)
    with dbg, results_as_json(as_json) as emit:
        print(f"attached to pid {pid}")
        for vm in reply.vms:
            result["vms"].append(to_wire(vm))
            print(f"  connection {vm.client_id}, VM {vm.vm_id}:")
            for b in vm.bindings:
                what = f"handle {b.handle}" if b.kind == "bo" else f"user {b.userptr:#x}"
                what = "" if b.kind == "null" else what
                print(f"    {b.va:#018x} +{b.range:#x}  {b.kind:<8} {what}")
        try:
            for client, vm_id, addr, data in writes:
                assert isinstance(data, bytes)
                written = dbg.debug_vm_write(client, vm_id, addr, data)
                result["patched"].append(
                    {"client_id": client, "vm_id": vm_id, "addr": addr, "hex": data[:written].hex()}
                )
                short = f" of {len(data)} (the rest is out of reach)" if written < len(data) else ""
                print(f"patched {written} bytes{short} at {addr:#x}")
            for client, vm_id, addr, length in reads:
                assert isinstance(length, int)
                data = dbg.debug_vm_read(client, vm_id, addr, length)
                result["dumps"].append(
                    {"client_id": client, "vm_id": vm_id, "addr": addr, "hex": data.hex()}
                )
                _hexdump(addr, data)
        except XeError as exc:
            print(f"xec debug attach: {exc}", file=sys.stderr)
            return exit_status(exc.errno)
        deadline = time.monotonic() + follow
        while follow and time.monotonic() < deadline:
            try:
                event = dbg.wait_event(max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            e = event.data
            result["events"].append(to_wire(e))
            print(
                f"event {e.kind:<18} pid {e.pid} conn {e.client_id} vm {e.vm_id} "
                f"addr {e.addr:#x} range {e.range:#x} {e.detail}",
                flush=True,
            )
            if e.kind == "detach":
                break
        emit(result)
    return 0
