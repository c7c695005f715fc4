"""The worker: one process of a scenario, running its steps in order.

The runner starts it as `python -m clients.scenario worker FILE PROCESS INDEX ...`; it
opens its own connection, keeps what its steps make in tables by name, and reports each
step as a JSON line on stdout (and waits for "go" on stdin at each sync point). The
steps themselves are in steps_memory.py, steps_peers.py and steps_aux.py, one function
each, registered by name with `@step`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from protocols import errno_name

from ..device import Device
from ..host_memory import HostMemory
from ..ib import IbContext, MemoryRegion, QueuePair
from ..mapping import Mapping as CpuMapping
from .checks import errno_number, load
from .model import ProcessSpec, Scenario, Step, fill
from .vocabulary import SUCCESS

StepRunner = Callable[["Worker", dict[str, Any]], None]
STEP_RUNNERS: dict[str, StepRunner] = {}


def step(name: str) -> Callable[[StepRunner], StepRunner]:
    """Register the function that runs step `name` (its fields filled, defaults set)."""

    def register(runner: StepRunner) -> StepRunner:
        STEP_RUNNERS[name] = runner
        return runner

    return register


class Mismatch(Exception):
    """A step ran but did not give what the file expected."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class Worker:
    """The objects one process holds, by the names the file gives them."""

    def __init__(
        self,
        scenario: Scenario,
        spec: ProcessSpec,
        index: int,
        socket_path: str,
        verbs: dict[str, str],
        peers: dict[str, socket.socket],
        control_in: TextIO,
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        self.scenario = scenario
        self.spec = spec
        self.context = spec.context(index)
        self.index = index
        self.socket_path = socket_path
        self.verbs = verbs
        self.peers = peers
        self.control_in = control_in
        self.report = report
        role = spec.role if spec.role in ("admin", "debugger") else "drm"
        self.dev = Device.open(socket_path, role=role)
        self._admin: Device | None = None
        # its own pid and client id, to `send` to a debugger (names a file may reuse)
        self.values: dict[str, int] = {"pid": os.getpid(), "client_id": self.dev.client_id}
        self.pids: dict[str, int] = {}  # a debugger's: every process's, from the runner
        self.hosts: dict[str, HostMemory] = {}
        self.bos: dict[str, int] = {}
        self.vms: dict[str, int] = {}
        self.fds: dict[str, int] = {}
        self.maps: dict[str, CpuMapping] = {}
        self.bo_maps: dict[int, CpuMapping] = {}
        self.sizes: dict[int, int] = {}  # of the BOs this file created or imported
        self.regions: dict[str, Any] = {}
        self.bindings: dict[int, list[tuple[int, int, int, int]]] = {}
        self.queues: dict[int, int] = {}
        self.fence_seq = 0
        self.last_fence: tuple[CpuMapping, int, int] | None = None
        self.ib: IbContext | None = None
        self.mrs: dict[str, MemoryRegion] = {}
        self.qps: dict[str, QueuePair] = {}

    # --- running ----------------------------------------------------------------------------
    def run(self) -> None:
        if self.spec.role == "debugger":  # the runner's first line: who has which pid
            self.pids = json.loads(self.control_in.readline() or "{}").get("pids", {})
        for step in self.spec.steps:
            self.report(self.run_step(step))
        self.report({"event": "done"})

    def run_step(self, step: Step) -> dict[str, Any]:
        args = {k: self._fill(v) for k, v in step.args.items()}
        result = {"event": "step", "index": step.index, "do": step.do, "expected": step.expect}
        try:
            STEP_RUNNERS[step.do](self, args)
        except Mismatch as exc:
            return {**result, "ok": False, "expected": exc.expected, "got": exc.got}
        except OSError as exc:
            got = errno_name(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"
            ok = exc.errno is not None and exc.errno == errno_number(step.expect)
            return {**result, "ok": ok, "got": got, "detail": str(exc)}
        except (KeyError, ValueError, TimeoutError) as exc:
            return {**result, "ok": False, "got": f"{type(exc).__name__}: {exc}"}
        return {**result, "ok": step.expect == SUCCESS, "got": SUCCESS}

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return fill(value, self.context)
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        return value

    # --- names ------------------------------------------------------------------------------
    @staticmethod
    def number(value: Any) -> int:
        return value if isinstance(value, int) else int(value, 0)

    def ref(self, value: int | str, *spaces: dict[str, int]) -> int:
        """An integer, or a name looked up in `spaces` and then in the plain values."""
        if isinstance(value, int):
            return value
        for space in (*spaces, self.values):
            if value in space:
                return space[value]
        try:
            return int(value, 0)
        except ValueError:
            raise KeyError(f"this process holds nothing named {value!r}") from None

    def named(self, space: dict[str, Any], name: str, what: str) -> Any:
        if name not in space:
            raise KeyError(f"this process holds no {what} named {name!r}")
        return space[name]

    def counters(self) -> Any:
        if self._admin is None:
            self._admin = Device.open(self.socket_path, role="admin")
        for client in self._admin.admin_clients():
            if client.client_id == self.dev.client_id:
                return client
        raise KeyError("the daemon does not list this process")

    def cpu_at(self, vm: int, gpu: int) -> tuple[CpuMapping, int]:
        """The CPU mapping and offset of GPU address `gpu` in `vm` (mapped on demand)."""
        for addr, length, handle, obj_offset in self.bindings.get(vm, []):
            if addr <= gpu < addr + length:
                if handle not in self.bo_maps:
                    self.bo_maps[handle] = self.dev.mmap_bo(handle, self.sizes.get(handle))
                return self.bo_maps[handle], obj_offset + gpu - addr
        raise KeyError(f"nothing this process bound covers GPU address {gpu:#x}")

    def data(self, a: dict[str, Any]) -> tuple[bytes, str]:
        if a["data"] is not None:
            return a["data"].encode(), repr(a["data"])
        if a["hex"] is not None:
            return bytes.fromhex(a["hex"]), a["hex"]
        if a["u32"] is not None:
            value = self.number(a["u32"])
            return value.to_bytes(4, "little"), f"{value:#x}"
        value = self.number(a["u64"])
        return value.to_bytes(8, "little"), f"{value:#x}"

    @staticmethod
    def shown(a: dict[str, Any], got: bytes) -> str:
        """Bytes that came, shown the way the file gave the expected ones."""
        if a["data"] is not None:
            return repr(got.decode(errors="replace"))
        if a["hex"] is not None:
            return got.hex()
        return f"{int.from_bytes(got, 'little'):#x}"

    def peer(self, ref: str) -> socket.socket:
        label = self.scenario.peer(self.spec, self.index, ref)
        return self.peers[label]

    def ib_context(self) -> IbContext:
        if self.ib is None:
            raise KeyError("no ib_open step has succeeded in this process")
        return self.ib

    def target_pid(self, ref: str) -> int:
        label = self.scenario.peer(self.spec, self.index, ref, verb="attach to")
        pid: int = self.named(self.pids, label, "pid (from the runner) of a process")
        return pid


def worker_main(argv: list[str]) -> int:
    """`python -m clients.scenario worker FILE PROCESS INDEX --socket S [--peer L=FD]...`"""
    parser = argparse.ArgumentParser(prog="clients.scenario worker")
    parser.add_argument("file", type=Path)
    parser.add_argument("process")
    parser.add_argument("index", type=int)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--verbs", action="append", default=[], help="IB_NAME=PATH")
    parser.add_argument("--peer", action="append", default=[], help="LABEL=FD")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the runner stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scenario = load(args.file)
    spec = next(p for p in scenario.processes if p.name == args.process)
    verbs = dict(item.split("=", 1) for item in args.verbs)
    peers = {}
    for item in args.peer:
        label, fd = item.rsplit("=", 1)
        peers[label] = socket.socket(fileno=int(fd))

    def report(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    worker = Worker(scenario, spec, args.index, args.socket, verbs, peers, sys.stdin, report)
    worker.run()
    return 0


# the steps register themselves with @step: importing them here gives every Worker all of them
from . import steps_aux, steps_memory, steps_peers  # noqa: E402, F401
