"""Scenarios: many client processes, described in a TOML file, run against one daemon.

A scenario names processes by role (`app`, `load`, `admin`, `ib`, `debugger`), how many
of each, and the steps each runs with the outcome it expects (success by default, or an
errno name).
`xec scenario run FILE` starts a daemon (unless given one) and the IB-like aux driver when
a process has role `ib`, spawns every other process as `python -m clients.scenario worker`,
wires a socket pair between every two processes that send to or receive from each other
(descriptors travel over them with SCM_RIGHTS), releases `sync_point` steps once every
running process has reached them (a line on the worker's stdout, "go" back on its stdin:
no sleeps), tells each `debugger` process the pid of every other one (its first stdin
line: `attach` names its target by process), and prints a table: per process, steps
passed and failed and the first failure.

The file format is in the README ("Scenarios"); `STEPS` below is the vocabulary.
"""

from __future__ import annotations

import argparse
import errno as errno_module
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from protocols import Event, errno_name
from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
    DRM_CLOEXEC,
    DRM_RDWR,
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    PROT_READ,
    PROT_WRITE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
)

from . import fdpass
from .batch import Batch
from .daemon import AuxDriverProcess, DaemonProcess
from .device import Device, user_fence
from .host_memory import HostMemory
from .ib import IbContext, MemoryRegion, QueuePair
from .mapping import Mapping as CpuMapping
from .transport import SeqpacketTransport

SHIPPED = Path(__file__).resolve().parent.parent / "scenarios"
SUCCESS = "success"
DEFAULT_TIMEOUT = 60.0  # seconds for a whole run, unless the file says otherwise
ACK_TIMEOUT = 5.0  # seconds for the device to acknowledge a doorbell or a barrier drain

# --- the vocabulary -------------------------------------------------------------------------
# Field kinds: "name" (a string, with {i}-style placeholders), "int" (an integer, or a
# string that is one once placeholders are filled), "ref" (an integer, or the name of a
# value this process holds: a handle, an id, an offset, an rkey, received or its own),
# "str", "bool", "float", "names" (one name or a list), "ops" (batch instructions).
REQUIRED = object()
Fields = dict[str, tuple[str, Any]]

_DATA: Fields = {
    "map": ("name", REQUIRED),
    "offset": ("int", 0),
    "data": ("name", None),
    "hex": ("str", None),
    "u32": ("int", None),
    "u64": ("int", None),
}
_DEVICE_STEPS: dict[str, Fields] = {
    "create": {"bo": ("name", REQUIRED), "size": ("int", 4096), "placement": ("str", "system")},
    "close": {"bo": ("ref", REQUIRED)},
    "map": {"bo": ("ref", REQUIRED), "map": ("name", None), "length": ("int", None)},
    "mmap_offset": {"bo": ("ref", REQUIRED), "value": ("name", None)},
    "mmap": {
        "offset": ("ref", REQUIRED),
        "size": ("int", 4096),
        "prot": ("str", "rw"),
        "map": ("name", "mmap"),
    },
    "write": _DATA,
    "read": _DATA,
    "vm": {"vm": ("name", REQUIRED)},
    "bind": {
        "vm": ("ref", REQUIRED),
        "bo": ("ref", REQUIRED),
        "addr": ("int", REQUIRED),
        "range": ("int", None),
        "obj_offset": ("int", 0),
    },
    "unbind": {"vm": ("ref", REQUIRED), "addr": ("int", REQUIRED), "range": ("int", REQUIRED)},
    "exec": {
        "vm": ("ref", REQUIRED),
        "batch": ("int", REQUIRED),
        "ops": ("ops", REQUIRED),
        "fence": ("int", None),
    },
    "wait": {"timeout_ms": ("int", 5000)},
    "export": {"bo": ("ref", REQUIRED), "fd": ("name", REQUIRED), "readonly": ("bool", False)},
    "import": {"fd": ("name", REQUIRED), "bo": ("name", REQUIRED)},
    "dmabuf_map": {"fd": ("name", REQUIRED), "map": ("name", None), "readonly": ("bool", False)},
    "sync": {
        "fd": ("name", REQUIRED),
        "op": ("str", "start"),
        "access": ("str", "rw"),
        "flags": ("int", None),
    },
    "send": {
        "to": ("name", REQUIRED),
        "fd": ("names", []),
        "value": ("names", []),
    },
    "recv": {
        "from": ("name", REQUIRED),
        "fd": ("name", None),
        "value": ("name", None),
        "prefix": ("name", ""),
        "timeout": ("float", 30.0),
    },
    "barrier": {"count": ("int", REQUIRED), "check": ("bool", True)},
    "counters": {"barriers": ("int", None), "doorbell_rings": ("int", None)},
    "mmio_open": {"region": ("str", REQUIRED), "as": ("name", None)},
    "map_mmio": {"region": ("name", REQUIRED), "map": ("name", None), "writable": ("bool", False)},
    "ring": {"map": ("name", REQUIRED), "value": ("int", 1), "ack": ("bool", True)},
    "version": {},
    "unplugged": {"timeout": ("float", 10.0)},
    "reopen": {},
    "vm_export": {"vm": ("ref", REQUIRED), "fd": ("name", REQUIRED)},
    "ib_open": {"fd": ("name", REQUIRED), "ib": ("name", None)},
    "reg_mr": {
        "mr": ("name", REQUIRED),
        "addr": ("int", REQUIRED),
        "length": ("int", REQUIRED),
        "access": ("names", []),  # none: local only, as ibv_reg_mr's access 0
    },
    "qp": {"qp": ("name", REQUIRED)},
    "connect": {"qp": ("name", REQUIRED), "remote": ("ref", REQUIRED)},
    "rdma_write": {
        "qp": ("name", REQUIRED),
        "mr": ("name", REQUIRED),
        "local_offset": ("int", 0),
        "remote_addr": ("int", REQUIRED),
        "rkey": ("ref", REQUIRED),
        "length": ("int", REQUIRED),
        "status": ("str", "SUCCESS"),
    },
}
_DEVICE_STEPS["rdma_read"] = _DEVICE_STEPS["rdma_write"]
_DATA_ONLY: Fields = {k: v for k, v in _DATA.items() if k not in ("map", "offset")}
_DEVICE_STEPS |= {
    "host_memory": {"host": ("name", REQUIRED), "size": ("int", 65536)},
    "bind_userptr": {
        "vm": ("ref", REQUIRED),
        "host": ("name", REQUIRED),
        "offset": ("int", 0),
        "addr": ("int", REQUIRED),
        "length": ("int", None),
    },
    "host_replace": {"host": ("name", REQUIRED), "offset": ("int", 0), **_DATA_ONLY},
    "host_free": {
        "host": ("name", REQUIRED),
        "offset": ("int", REQUIRED),
        "length": ("int", REQUIRED),
    },
}
_VM_ACCESS: Fields = {
    "client_id": ("ref", REQUIRED),
    "vm": ("ref", REQUIRED),
    "addr": ("int", REQUIRED),
    **_DATA_ONLY,
}
_DEBUGGER_STEPS: dict[str, Fields] = {
    "attach": {"target": ("name", REQUIRED)},
    "detach": {"target": ("name", REQUIRED)},
    "debug_read": {**_VM_ACCESS, "length": ("int", None)},
    "debug_write": _VM_ACCESS,
    "events": {"kinds": ("names", REQUIRED), "timeout": ("float", 10.0)},
}
_ADMIN_STEPS: dict[str, Fields] = {"unplug": {}, "replug": {}}
_ANY_STEPS: dict[str, Fields] = {"sync_point": {"name": ("name", REQUIRED)}}
STEPS: dict[str, Fields] = {**_DEVICE_STEPS, **_DEBUGGER_STEPS, **_ADMIN_STEPS, **_ANY_STEPS}

ROLES = {
    "app": set(_DEVICE_STEPS) | set(_ANY_STEPS),
    "load": set(_DEVICE_STEPS) | set(_ANY_STEPS),
    "admin": set(_ADMIN_STEPS) | set(_ANY_STEPS),
    "ib": set(),
    "debugger": set(_DEBUGGER_STEPS) | {"send", "recv"} | set(_ANY_STEPS),
}
# the steps that compare or store bytes given as one of data, hex, u32, u64
_DATA_STEPS = ("read", "write", "host_replace", "debug_read", "debug_write")
DEBUG_EVENT_KINDS = (
    "open",
    "close",
    "vm_create",
    "vm_destroy",
    "bind",
    "unbind",
    "exec_queue_create",
    "exec_queue_destroy",
    "exec",
    "detach",
)
BATCH_OPS: dict[str, tuple[str, ...]] = {
    "store_dword": ("addr", "value"),
    "store_qword": ("addr", "value"),
    "atomic_inc": ("addr",),
    "atomic_inc64": ("addr",),
    "atomic_add": ("addr", "value"),
    "mem_fence": (),
    "copy_dword": ("dst", "src"),
    "mem_copy": ("dst", "src", "length"),
}
MR_ACCESS = {
    "local_write": IBV_ACCESS_LOCAL_WRITE,
    "remote_write": IBV_ACCESS_REMOTE_WRITE,
    "remote_read": IBV_ACCESS_REMOTE_READ,
}
WC_STATUS = {
    "SUCCESS": 0,
    "LOC_LEN_ERR": 1,
    "LOC_PROT_ERR": 4,
    "REM_ACCESS_ERR": 10,
    "RETRY_EXC_ERR": 12,
}
PLACEMENTS = {"system": XE_PLACEMENT_SYSMEM, "vram": XE_PLACEMENT_VRAM0}
PROTS = {"r": PROT_READ, "w": PROT_WRITE, "rw": PROT_READ | PROT_WRITE}
SYNC_ACCESS = {"read": DMA_BUF_SYNC_READ, "write": DMA_BUF_SYNC_WRITE, "rw": DMA_BUF_SYNC_RW}
SYNC_OPS = {"start": DMA_BUF_SYNC_START, "end": DMA_BUF_SYNC_END}
_CHOICES = {
    ("create", "placement"): PLACEMENTS,
    ("mmap", "prot"): PROTS,
    ("sync", "op"): SYNC_OPS,
    ("sync", "access"): SYNC_ACCESS,
    ("reg_mr", "access"): MR_ACCESS,
    ("rdma_write", "status"): WC_STATUS,
    ("rdma_read", "status"): WC_STATUS,
    ("events", "kinds"): DEBUG_EVENT_KINDS,
}


# --- the parsed file ------------------------------------------------------------------------
class ScenarioError(Exception):
    """A scenario file that cannot run; `problems` says where and why, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.problems = problems


@attrs.frozen
class Step:
    index: int  # 1-based, within its process
    do: str
    args: Mapping[str, Any]
    expect: str  # SUCCESS or an errno name

    def describe(self) -> str:
        return f"step {self.index} ({self.do})"


@attrs.frozen
class ProcessSpec:
    name: str
    role: str
    count: int
    steps: tuple[Step, ...]

    def label(self, i: int) -> str:
        return self.name if self.count == 1 else f"{self.name}.{i}"

    def context(self, i: int) -> dict[str, Any]:
        """What placeholders in its strings stand for, in instance i."""
        n = self.count
        return {
            "i": i,
            "n": n,
            "next": (i + 1) % n,
            "prev": (i - 1) % n,
            "name": self.name,
            "self": self.label(i),
        }


@attrs.frozen
class Scenario:
    path: Path
    name: str
    description: str
    timeout: float
    processes: tuple[ProcessSpec, ...]

    def instances(self) -> Iterator[tuple[ProcessSpec, int]]:
        """Every process the runner spawns (the aux driver is not one of them)."""
        for spec in self.processes:
            if spec.role != "ib":
                for i in range(spec.count):
                    yield spec, i

    def find(self, label: str) -> tuple[ProcessSpec, int] | None:
        for spec, i in self.instances():
            if spec.label(i) == label:
                return spec, i
        return None

    def peer(
        self, spec: ProcessSpec, i: int, ref: str, verb: str = "send to or receive from"
    ) -> str:
        """The label a `to`/`from`/`target` names: next/prev in a ring, NAME or NAME.K."""
        if ref in ("next", "prev"):
            if spec.count < 2:
                raise ValueError(f"{ref!r} needs count >= 2 (process {spec.name!r} has 1)")
            return spec.label((i + (1 if ref == "next" else -1)) % spec.count)
        found = self.find(ref)
        if found is None:
            raise ValueError(f"no process instance named {ref!r}")
        if found == (spec, i):
            raise ValueError(f"a process cannot {verb} itself")
        return ref

    def pairs(self) -> set[tuple[str, str]]:
        """The socket pairs to wire: every two processes that talk, (a, b) with a < b."""
        wanted = set()
        for spec, i in self.instances():
            for step in spec.steps:
                if step.do in ("send", "recv"):
                    ref = fill(step.args["to" if step.do == "send" else "from"], spec.context(i))
                    a, b = sorted((spec.label(i), self.peer(spec, i, ref)))
                    wanted.add((a, b))
        return wanted

    @property
    def ib_names(self) -> list[str]:
        return [p.name for p in self.processes if p.role == "ib"]


def fill(template: str, context: Mapping[str, Any]) -> str:
    """Fill {i}, {n}, {next}, {prev}, {name}, {self} in a string from the file."""
    return template.format_map(context)


def resolve_scenario_path(name: str | Path) -> Path:
    """A file, or the name of a shipped scenario (with or without .toml)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (SHIPPED / f"{name}.toml", SHIPPED / str(name)):
        if candidate.exists():
            return candidate
    return path


def load(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError lists every problem with its place."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(path, [f"cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, [f"invalid TOML: {exc}"]) from None
    problems: list[str] = []
    for key in sorted(set(raw) - {"name", "description", "timeout", "process"}):
        problems.append(f"unknown top-level key {key!r}")
    entries = raw.get("process", [])
    if not isinstance(entries, list) or not entries:
        problems.append("no [[process]] tables")
        entries = []
    processes = []
    for n, entry in enumerate(entries, 1):
        spec = _process(n, entry, problems)
        if spec is not None:
            processes.append(spec)
    names = [p.name for p in processes]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        problems.append(f"two processes are named {dup!r}")
    scenario = Scenario(
        path=path,
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        timeout=float(raw.get("timeout", DEFAULT_TIMEOUT)),
        processes=tuple(processes),
    )
    if not problems:
        _cross_check(scenario, problems)
    if problems:
        raise ScenarioError(path, problems)
    return scenario


def _process(n: int, entry: Any, problems: list[str]) -> ProcessSpec | None:
    where = f"process #{n}"
    if not isinstance(entry, dict):
        problems.append(f"{where}: not a table")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not name or "." in name or name in ("next", "prev"):
        problems.append(f"{where}: 'name' must be a string without dots (not next/prev)")
        return None
    where = f"process {name!r}"
    role = entry.get("role", "app")
    if role not in ROLES:
        problems.append(f"{where}: unknown role {role!r} (one of {', '.join(ROLES)})")
        return None
    for key in sorted(set(entry) - {"name", "role", "count", "steps", "barriers"}):
        problems.append(f"{where}: unknown key {key!r}")
    count = entry.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 256:
        problems.append(f"{where}: 'count' must be an integer from 1 to 256")
        count = 1
    if role == "ib" and (count != 1 or entry.get("steps")):
        problems.append(f"{where}: an 'ib' process is the aux driver: count 1, no steps")
    raw_steps = list(entry.get("steps", []))
    if "barriers" in entry:
        if role != "load":
            problems.append(f"{where}: 'barriers' is the shorthand of role 'load' only")
        raw_steps.insert(0, {"do": "barrier", "count": entry["barriers"]})
    steps = []
    for index, raw in enumerate(raw_steps, 1):
        step = _step(where, index, raw, ROLES[role], role, problems)
        if step is not None:
            steps.append(step)
    return ProcessSpec(name=name, role=role, count=count, steps=tuple(steps))


def _step(
    where: str, index: int, raw: Any, allowed: set[str], role: str, problems: list[str]
) -> Step | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}, step {index}: not a table")
        return None
    do = raw.get("do")
    if do not in STEPS:
        known = ", ".join(sorted(STEPS))
        problems.append(f"{where}, step {index}: unknown step {do!r} (known: {known})")
        return None
    place = f"{where}, step {index} ({do})"
    if do not in allowed:
        problems.append(f"{place}: not a step a process of role {role!r} can run")
    fields = STEPS[do]
    args: dict[str, Any] = {}
    for key in sorted(set(raw) - set(fields) - {"do", "expect"}):
        problems.append(f"{place}: unknown field {key!r} (fields: {', '.join(fields) or 'none'})")
    for key, (kind, default) in fields.items():
        if key not in raw:
            if default is REQUIRED:
                problems.append(f"{place}: missing field {key!r}")
            args[key] = default
            continue
        problem = _check_field(do, key, kind, raw[key])
        if problem:
            problems.append(f"{place}: field {key!r} {problem}")
        args[key] = [raw[key]] if kind == "names" and isinstance(raw[key], str) else raw[key]
    if do in _DATA_STEPS:
        kinds = ("data", "hex", "u32", "u64") + (("length",) if do == "debug_read" else ())
        given = [k for k in kinds if k in raw]
        if len(given) != 1:
            problems.append(f"{place}: give exactly one of {', '.join(kinds)}")
    if do == "events" and not raw.get("kinds"):
        problems.append(f"{place}: field 'kinds' names no event")
    expect = raw.get("expect", SUCCESS)
    if not isinstance(expect, str) or not (expect == SUCCESS or _errno_number(expect)):
        problems.append(f"{place}: expect must be 'success' or an errno name, not {expect!r}")
    return Step(index=index, do=do, args=args, expect=expect)


def _check_field(do: str, key: str, kind: str, value: Any) -> str:
    """What is wrong with one field's value, or ''."""
    sample = ProcessSpec("p", "app", 2, ()).context(0)
    try:
        if kind in ("name", "str"):
            if not isinstance(value, str):
                return "must be a string"
            if kind == "name":
                fill(value, sample)
        elif kind == "int":
            if isinstance(value, str):
                int(fill(value, sample), 0)
            elif not isinstance(value, int) or isinstance(value, bool):
                return "must be an integer"
        elif kind == "ref":
            if not isinstance(value, int | str) or isinstance(value, bool):
                return "must be an integer or a name"
        elif kind == "bool" and not isinstance(value, bool):
            return "must be true or false"
        elif kind == "float" and (not isinstance(value, int | float) or isinstance(value, bool)):
            return "must be a number"
        elif kind == "names":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "must be a name or a list of names"
        elif kind == "ops":
            return _check_ops(value)
    except KeyError as exc:
        return f"uses an unknown placeholder {{{exc.args[0]}}} (known: {', '.join(sample)})"
    except (ValueError, IndexError) as exc:
        return f"has a bad placeholder or number: {exc}"
    choices = _CHOICES.get((do, key))
    if choices is not None and any(v not in choices for v in _listed(value)):
        return f"must be one of {', '.join(choices)}"
    return ""


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_ops(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of {op = ..., ...} tables"
    for n, op in enumerate(value, 1):
        if not isinstance(op, dict) or op.get("op") not in BATCH_OPS:
            return f"instruction {n}: 'op' must be one of {', '.join(BATCH_OPS)}"
        wanted = set(BATCH_OPS[op["op"]])
        if set(op) - {"op"} != wanted:
            return f"instruction {n} ({op['op']}): needs exactly {', '.join(sorted(wanted))}"
        for key in wanted:
            if not isinstance(op[key], int | str) or isinstance(op[key], bool):
                return f"instruction {n} ({op['op']}): {key} must be an integer"
    return ""


def _cross_check(scenario: Scenario, problems: list[str]) -> None:
    """What needs the whole file: peers, the aux driver, sync points in every process."""
    ib_names = scenario.ib_names
    for spec, i in scenario.instances():
        for step in spec.steps:
            place = f"process {spec.label(i)!r}, {step.describe()}"
            if step.do in ("send", "recv"):
                ref = step.args["to" if step.do == "send" else "from"]
                try:
                    scenario.peer(spec, i, fill(ref, spec.context(i)))
                except (ValueError, KeyError) as exc:
                    problems.append(f"{place}: {exc}")
            if step.do in ("attach", "detach"):
                try:
                    target = fill(step.args["target"], spec.context(i))
                    scenario.peer(spec, i, target, verb="attach to")
                except (ValueError, KeyError) as exc:
                    problems.append(f"{place}: {exc}")
            if step.do == "ib_open":
                wanted = step.args["ib"]
                if not ib_names:
                    problems.append(f"{place}: no process has role 'ib' (the aux driver)")
                elif wanted is None and len(ib_names) > 1:
                    problems.append(f"{place}: say which aux driver ('ib' field)")
                elif wanted is not None and wanted not in ib_names:
                    problems.append(f"{place}: no 'ib' process named {wanted!r}")


def _errno_number(name: str) -> int:
    number = getattr(errno_module, name, None)
    return number if isinstance(number, int) and name.startswith("E") else 0


# --- the worker: one process runs its steps -------------------------------------------------
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
            getattr(self, f"do_{step.do}")(args)
        except Mismatch as exc:
            return {**result, "ok": False, "expected": exc.expected, "got": exc.got}
        except OSError as exc:
            got = errno_name(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"
            ok = exc.errno is not None and exc.errno == _errno_number(step.expect)
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
    def _int(value: Any) -> int:
        return value if isinstance(value, int) else int(value, 0)

    def _ref(self, value: int | str, *spaces: dict[str, int]) -> int:
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

    def _named(self, space: dict[str, Any], name: str, what: str) -> Any:
        if name not in space:
            raise KeyError(f"this process holds no {what} named {name!r}")
        return space[name]

    def _counters(self) -> Any:
        if self._admin is None:
            self._admin = Device.open(self.socket_path, role="admin")
        for client in self._admin.admin_clients():
            if client.client_id == self.dev.client_id:
                return client
        raise KeyError("the daemon does not list this process")

    def _cpu_at(self, vm: int, gpu: int) -> tuple[CpuMapping, int]:
        """The CPU mapping and offset of GPU address `gpu` in `vm` (mapped on demand)."""
        for addr, length, handle, obj_offset in self.bindings.get(vm, []):
            if addr <= gpu < addr + length:
                if handle not in self.bo_maps:
                    self.bo_maps[handle] = self.dev.mmap_bo(handle, self.sizes.get(handle))
                return self.bo_maps[handle], obj_offset + gpu - addr
        raise KeyError(f"nothing this process bound covers GPU address {gpu:#x}")

    # --- buffer objects and mappings --------------------------------------------------------
    def do_create(self, a: dict[str, Any]) -> None:
        size = self._int(a["size"])
        handle = self.dev.gem_create(size, PLACEMENTS[a["placement"]])
        self.bos[a["bo"]] = self.values[a["bo"]] = handle
        self.sizes[handle] = size

    def do_close(self, a: dict[str, Any]) -> None:
        self.dev.gem_close(self._ref(a["bo"], self.bos))

    def do_map(self, a: dict[str, Any]) -> None:
        handle = self._ref(a["bo"], self.bos)
        # a handle this file does not know (someone else's number): one page, the daemon judges
        length = self.sizes.get(handle, 4096) if a["length"] is None else self._int(a["length"])
        mapping = self.dev.mmap_bo(handle, length)
        name = a["map"] or str(a["bo"])
        self.maps[name] = self.bo_maps[handle] = mapping
        self.values[f"{name}.offset"] = mapping.fake_offset

    def do_mmap_offset(self, a: dict[str, Any]) -> None:
        offset = self.dev.gem_mmap_offset(self._ref(a["bo"], self.bos))
        self.values[a["value"] or f"{a['bo']}.offset"] = offset

    def do_mmap(self, a: dict[str, Any]) -> None:
        offset = self._ref(a["offset"])
        self.maps[a["map"]] = self.dev.mmap(offset, self._int(a["size"]), PROTS[a["prot"]])

    def _data(self, a: dict[str, Any]) -> tuple[bytes, str]:
        if a["data"] is not None:
            return a["data"].encode(), repr(a["data"])
        if a["hex"] is not None:
            return bytes.fromhex(a["hex"]), a["hex"]
        if a["u32"] is not None:
            value = self._int(a["u32"])
            return value.to_bytes(4, "little"), f"{value:#x}"
        value = self._int(a["u64"])
        return value.to_bytes(8, "little"), f"{value:#x}"

    def do_write(self, a: dict[str, Any]) -> None:
        mapping = self._named(self.maps, a["map"], "mapping")
        data, _ = self._data(a)
        offset = self._int(a["offset"])
        if len(data) in (4, 8) and a["data"] is None and a["hex"] is None:
            store = mapping.write_u32 if len(data) == 4 else mapping.write_u64
            store(offset, int.from_bytes(data, "little"))  # one aligned store
        else:
            mapping[offset : offset + len(data)] = data

    def do_read(self, a: dict[str, Any]) -> None:
        mapping = self._named(self.maps, a["map"], "mapping")
        data, shown = self._data(a)
        offset = self._int(a["offset"])
        got = mapping.mm[offset : offset + len(data)]
        if got != data:
            raise Mismatch(shown, self._shown(a, got))

    @staticmethod
    def _shown(a: dict[str, Any], got: bytes) -> str:
        """Bytes that came, shown the way the file gave the expected ones."""
        if a["data"] is not None:
            return repr(got.decode(errors="replace"))
        if a["hex"] is not None:
            return got.hex()
        return f"{int.from_bytes(got, 'little'):#x}"

    # --- VMs and execution --------------------------------------------------------------------
    def do_vm(self, a: dict[str, Any]) -> None:
        self.vms[a["vm"]] = self.values[a["vm"]] = self.dev.vm_create()

    def do_bind(self, a: dict[str, Any]) -> None:
        vm, handle = self._ref(a["vm"], self.vms), self._ref(a["bo"], self.bos)
        addr, obj_offset = self._int(a["addr"]), self._int(a["obj_offset"])
        if a["range"] is None:
            length = self.sizes.get(handle, 4096) - obj_offset
        else:
            length = self._int(a["range"])
        self.dev.vm_bind(vm, handle, addr, length, obj_offset)
        self.bindings.setdefault(vm, []).append((addr, length, handle, obj_offset))

    def do_unbind(self, a: dict[str, Any]) -> None:
        vm, addr, length = self._ref(a["vm"], self.vms), self._int(a["addr"]), self._int(a["range"])
        self.dev.vm_unbind(vm, addr, length)
        self.bindings[vm] = [b for b in self.bindings.get(vm, []) if b[0] != addr]

    def do_exec(self, a: dict[str, Any]) -> None:
        vm = self._ref(a["vm"], self.vms)
        batch = Batch()
        for op in a["ops"]:
            args = [self._int(op[key]) for key in BATCH_OPS[op["op"]]]
            getattr(batch, op["op"])(*args)
        batch.end()
        address = self._int(a["batch"])
        mapping, offset = self._cpu_at(vm, address)
        mapping[offset : offset + len(batch)] = batch.tobytes()
        syncs = []
        if a["fence"] is not None:
            fence = self._int(a["fence"])
            fence_map, fence_offset = self._cpu_at(vm, fence)
            self.fence_seq += 1
            syncs.append(user_fence(fence, self.fence_seq))
            self.last_fence = (fence_map, fence_offset, self.fence_seq)
        if vm not in self.queues:
            self.queues[vm] = self.dev.exec_queue_create(vm)
        self.dev.exec(self.queues[vm], address, syncs=syncs)

    def do_wait(self, a: dict[str, Any]) -> None:
        if self.last_fence is None:
            raise KeyError("no exec with a fence to wait for")
        mapping, offset, value = self.last_fence
        timeout = self._int(a["timeout_ms"]) * 1_000_000
        self.dev.wait_user_fence(mapping.user_address(offset), value, timeout=timeout)

    # --- dma-bufs and peers -----------------------------------------------------------------
    def do_export(self, a: dict[str, Any]) -> None:
        flags = DRM_CLOEXEC if a["readonly"] else DRM_CLOEXEC | DRM_RDWR
        self.fds[a["fd"]] = self.dev.prime_handle_to_fd(self._ref(a["bo"], self.bos), flags)

    def do_import(self, a: dict[str, Any]) -> None:
        fd = self._named(self.fds, a["fd"], "descriptor")
        handle = self.dev.prime_fd_to_handle(fd)
        self.bos[a["bo"]] = self.values[a["bo"]] = handle
        self.sizes[handle] = self.dev.dmabuf_size(fd)

    def do_dmabuf_map(self, a: dict[str, Any]) -> None:
        fd = self._named(self.fds, a["fd"], "descriptor")
        prot = PROT_READ if a["readonly"] else PROT_READ | PROT_WRITE
        self.maps[a["map"] or a["fd"]] = self.dev.dmabuf_mmap(fd, prot=prot)

    def do_sync(self, a: dict[str, Any]) -> None:
        fd = self._named(self.fds, a["fd"], "descriptor")
        flags = a["flags"]
        if flags is None:
            flags = SYNC_OPS[a["op"]] | SYNC_ACCESS[a["access"]]
        self.dev.dmabuf_sync(fd, self._int(flags))

    def _peer(self, ref: str) -> socket.socket:
        label = self.scenario.peer(self.spec, self.index, ref)
        return self.peers[label]

    def do_send(self, a: dict[str, Any]) -> None:
        fd_names = list(a["fd"])
        fds = [self._named(self.fds, name, "descriptor") for name in fd_names]
        values = {name: self._ref(name, self.bos, self.vms) for name in a["value"]}
        message = json.dumps({"fds": fd_names, "values": values}).encode()
        fdpass.send_fds(self._peer(a["to"]), message, fds)

    def do_recv(self, a: dict[str, Any]) -> None:
        peer = self._peer(a["from"])
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
            self.fds[prefix + name] = fd
        prefix = a["prefix"] if a["value"] is None else ""
        self.values.update({prefix + name: value for name, value in values.items()})

    # --- BAR0: barriers, MMIO regions ---------------------------------------------------------
    def do_barrier(self, a: dict[str, Any]) -> None:
        count = self._int(a["count"])
        before = self._counters().barriers if a["check"] else 0
        for _ in range(count):
            self.dev.pci_barrier()
        if a["check"]:  # an unplugged device never acknowledges: no drain then
            self.dev.pci_barrier_drain()
            counted = self._counters().barriers - before
            if counted != count:
                raise Mismatch(f"{count} counted", f"{counted} counted")

    def do_counters(self, a: dict[str, Any]) -> None:
        client = self._counters()
        for key in ("barriers", "doorbell_rings"):
            if a[key] is not None and getattr(client, key) != self._int(a[key]):
                raise Mismatch(f"{key} = {self._int(a[key])}", f"{getattr(client, key)}")

    def do_mmio_open(self, a: dict[str, Any]) -> None:
        name = a["as"] or a["region"]
        self.regions[name] = region = self.dev.mmio_open(a["region"])
        self.values[f"{name}.offset"] = region.offset

    def do_map_mmio(self, a: dict[str, Any]) -> None:
        region = self._named(self.regions, a["region"], "MMIO region")
        mapping = self.dev.mmap_mmio(region, writable=a["writable"])
        self.maps[a["map"] or a["region"]] = mapping

    def do_ring(self, a: dict[str, Any]) -> None:
        mapping = self._named(self.maps, a["map"], "mapping")
        mapping.write_u32(0, self._int(a["value"]))
        deadline = time.monotonic() + ACK_TIMEOUT
        while a["ack"] and mapping.read_u32(0) != 0:  # the device clears what it acted on
            if time.monotonic() > deadline:
                raise Mismatch("the device to clear the doorbell", "no acknowledgement")
            time.sleep(0.0005)

    def do_version(self, a: dict[str, Any]) -> None:
        self.dev.version()

    # --- the device's unplug, as a process lives it -----------------------------------------
    def do_unplugged(self, a: dict[str, Any]) -> None:
        """Wait until the device is unplugged and every mapping of this process reads
        from its own zero pages (clients/unplug.py)."""
        if not self.dev.wait_unplugged(a["timeout"]):
            raise Mismatch("the device unplugged", "still plugged in")

    def do_reopen(self, a: dict[str, Any]) -> None:
        """close(2) of the DRM file and a new open(2): everything the file held goes
        (handles, VMs, queues, regions: their names are forgotten); mappings and
        received descriptors stay. After an unplug and REPLUG, the new device."""
        self.dev.close()
        self.dev = Device.open(self.socket_path)
        self.values["client_id"] = self.dev.client_id
        for space in (self.bos, self.vms, self.regions):
            for name in space:
                self.values.pop(name, None)
                self.values.pop(f"{name}.offset", None)
            space.clear()
        for held in (self.bo_maps, self.sizes, self.bindings, self.queues, self.hosts):
            held.clear()
        self.last_fence = None

    # --- VM export and the IB-like driver -----------------------------------------------------
    def do_vm_export(self, a: dict[str, Any]) -> None:
        self.fds[a["fd"]] = self.dev.vm_export(self._ref(a["vm"], self.vms))

    def do_ib_open(self, a: dict[str, Any]) -> None:
        verbs = self.verbs[a["ib"] or self.scenario.ib_names[0]]
        context = IbContext.open(verbs, self._named(self.fds, a["fd"], "descriptor"))
        if self.ib is not None:
            self.ib.close()
        self.ib = context

    def _ib(self) -> IbContext:
        if self.ib is None:
            raise KeyError("no ib_open step has succeeded in this process")
        return self.ib

    def do_reg_mr(self, a: dict[str, Any]) -> None:
        access = sum(MR_ACCESS[flag] for flag in set(a["access"]))
        mr = self._ib().reg_mr(self._int(a["addr"]), self._int(a["length"]), access)
        self.mrs[a["mr"]] = mr
        self.values[f"{a['mr']}.rkey"], self.values[f"{a['mr']}.lkey"] = mr.rkey, mr.lkey

    def do_qp(self, a: dict[str, Any]) -> None:
        self.qps[a["qp"]] = qp = self._ib().create_qp()
        self.values[f"{a['qp']}.num"] = qp.num

    def do_connect(self, a: dict[str, Any]) -> None:
        self._named(self.qps, a["qp"], "queue pair").connect(self._ref(a["remote"]))

    def do_rdma_write(self, a: dict[str, Any], read: bool = False) -> None:
        qp: QueuePair = self._named(self.qps, a["qp"], "queue pair")
        mr: MemoryRegion = self._named(self.mrs, a["mr"], "memory region")
        post = qp.rdma_read if read else qp.rdma_write
        post(
            mr,
            self._int(a["remote_addr"]),
            self._ref(a["rkey"]),
            self._int(a["length"]),
            local_addr=mr.addr + self._int(a["local_offset"]),
        )
        wc = qp.wait_cq()
        if wc.status != WC_STATUS[a["status"]]:
            names = {v: k for k, v in WC_STATUS.items()}
            raise Mismatch(f"completion {a['status']}", names.get(wc.status, str(wc.status)))

    def do_rdma_read(self, a: dict[str, Any]) -> None:
        self.do_rdma_write(a, read=True)

    # --- host memory and userptr ---------------------------------------------------------------
    def do_host_memory(self, a: dict[str, Any]) -> None:
        host = self.dev.host_memory(self._int(a["size"]))
        self.hosts[a["host"]] = host
        self.maps[a["host"]] = host.mapping  # `write` and `read` work on it by its name
        self.values[f"{a['host']}.addr"] = host.base

    def do_bind_userptr(self, a: dict[str, Any]) -> None:
        host: HostMemory = self._named(self.hosts, a["host"], "host memory")
        offset = self._int(a["offset"])
        length = host.size - offset if a["length"] is None else self._int(a["length"])
        self.dev.vm_bind_userptr(
            self._ref(a["vm"], self.vms), host, offset, self._int(a["addr"]), length
        )

    def do_host_replace(self, a: dict[str, Any]) -> None:
        host: HostMemory = self._named(self.hosts, a["host"], "host memory")
        host.replace(self._int(a["offset"]), self._data(a)[0])

    def do_host_free(self, a: dict[str, Any]) -> None:
        host: HostMemory = self._named(self.hosts, a["host"], "host memory")
        host.free(self._int(a["offset"]), self._int(a["length"]))

    # --- the debugger -------------------------------------------------------------------------
    def _target_pid(self, ref: str) -> int:
        label = self.scenario.peer(self.spec, self.index, ref, verb="attach to")
        pid: int = self._named(self.pids, label, "pid (from the runner) of a process")
        return pid

    def do_attach(self, a: dict[str, Any]) -> None:
        self.dev.debug_attach(self._target_pid(a["target"]))

    def do_detach(self, a: dict[str, Any]) -> None:
        self.dev.debug_detach(self._target_pid(a["target"]))

    def do_debug_read(self, a: dict[str, Any]) -> None:
        client_id, vm, addr = self._ref(a["client_id"]), self._ref(a["vm"]), self._int(a["addr"])
        if a["length"] is not None:
            self.dev.debug_vm_read(client_id, vm, addr, self._int(a["length"]))
            return
        data, shown = self._data(a)
        got = self.dev.debug_vm_read(client_id, vm, addr, len(data))
        if got != data:
            raise Mismatch(shown, self._shown(a, got))

    def do_debug_write(self, a: dict[str, Any]) -> None:
        client_id, vm, addr = self._ref(a["client_id"]), self._ref(a["vm"]), self._int(a["addr"])
        self.dev.debug_vm_write(client_id, vm, addr, self._data(a)[0])

    def do_events(self, a: dict[str, Any]) -> None:
        """DEBUG_EVENTs of these kinds, in this order; others in between are passed over."""
        wanted: list[str] = list(a["kinds"])
        seen: list[str] = []
        deadline = time.monotonic() + float(a["timeout"])
        while wanted:
            try:
                message = self.dev.wait_event(max(deadline - time.monotonic(), 0.001))
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

    # --- admin and coordination -----------------------------------------------------------------
    def do_unplug(self, a: dict[str, Any]) -> None:
        self.dev.admin_unplug()

    def do_replug(self, a: dict[str, Any]) -> None:
        self.dev.admin_replug()

    def do_sync_point(self, a: dict[str, Any]) -> None:
        self.report({"event": "sync", "name": a["name"]})
        if self.control_in.readline().strip() != "go":
            raise Mismatch("the runner's go-ahead", "end of file")


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


# --- the runner -------------------------------------------------------------------------------
@attrs.define
class ProcessResult:
    label: str
    role: str
    total: int
    passed: int = 0
    failed: int = 0
    first_failure: str = ""
    finished: bool = False
    at_sync: str | None = None

    def fail(self, text: str) -> None:
        self.failed += 1
        if not self.first_failure:
            self.first_failure = text


@attrs.define
class _Running:
    result: ProcessResult
    proc: trio.Process
    stderr_path: Path


class Runner:
    def __init__(self, scenario: Scenario, out: TextIO) -> None:
        self.scenario = scenario
        self.out = out
        self.running: list[_Running] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"  {time.monotonic() - self.started:6.2f} s  {text}", file=self.out, flush=True)

    async def run(self, socket_path: str, verbs: dict[str, str], tmp: Path) -> list[ProcessResult]:
        pairs = self.scenario.pairs()
        ends: dict[str, dict[str, socket.socket]] = {}
        for a, b in sorted(pairs):
            end_a, end_b = fdpass.socketpair()
            ends.setdefault(a, {})[b] = end_a
            ends.setdefault(b, {})[a] = end_b
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        )
        for key in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
        try:
            for spec, i in self.scenario.instances():
                label = spec.label(i)
                mine = ends.get(label, {})
                command = [
                    sys.executable,
                    "-m",
                    "clients.scenario",
                    "worker",
                    str(self.scenario.path),
                    spec.name,
                    str(i),
                    "--socket",
                    socket_path,
                ]
                command += [f"--verbs={name}={path}" for name, path in verbs.items()]
                command += [f"--peer={peer}={end.fileno()}" for peer, end in mine.items()]
                stderr_path = tmp / f"{label}.stderr"
                with open(stderr_path, "wb") as stderr:
                    proc = await trio.lowlevel.open_process(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        pass_fds=[end.fileno() for end in mine.values()],
                        env=env,
                    )
                result = ProcessResult(label, spec.role, len(spec.steps))
                self.running.append(_Running(result, proc, stderr_path))
        finally:
            for peers in ends.values():  # the children hold theirs: EOF when one exits
                for end in peers.values():
                    end.close()
        pids = {run.result.label: run.proc.pid for run in self.running}
        line = (json.dumps({"pids": pids}) + "\n").encode()
        for run, (spec, _) in zip(self.running, self.scenario.instances(), strict=True):
            if spec.role == "debugger":
                assert run.proc.stdin is not None
                await run.proc.stdin.send_all(line)
        self.say(f"started {len(self.running)} processes")
        with trio.move_on_after(self.scenario.timeout) as scope:
            async with trio.open_nursery() as nursery:
                for run in self.running:
                    nursery.start_soon(self._watch, run)
        for run in self.running:
            if run.proc.returncode is None:
                run.proc.kill()
            await run.proc.wait()
            if scope.cancelled_caught and not run.result.finished:
                done = run.result.passed + run.result.failed
                run.result.fail(f"timed out after {self.scenario.timeout:g} s in step {done + 1}")
        return [run.result for run in self.running]

    async def _watch(self, run: _Running) -> None:
        assert run.proc.stdout is not None
        result = run.result
        buffer = b""
        async for chunk in run.proc.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:  # something in the worker printed: not ours to judge
                    continue
                await self._event(run, event)
        await run.proc.wait()
        if not result.finished:
            lines = run.stderr_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no message"
            result.fail(f"exited with status {run.proc.returncode} ({last})")
            result.finished = True
            self.say(f"{result.label}: died ({last})")
            await self._release()

    async def _event(self, run: _Running, event: dict[str, Any]) -> None:
        result = run.result
        if event["event"] == "step":
            if event["ok"]:
                result.passed += 1
            else:
                where = f"step {event['index']} ({event['do']})"
                result.fail(f"{where}: expected {event['expected']}, got {event['got']}")
        elif event["event"] == "sync":
            result.at_sync = event["name"]
            await self._release()
        elif event["event"] == "done":
            result.finished = True
            self.say(f"{result.label}: finished, {result.passed}/{result.total} passed")
            await self._release()

    async def _release(self) -> None:
        """Let every process waiting at a sync point go once all running ones are there."""
        active = [run for run in self.running if not run.result.finished]
        if not active or any(run.result.at_sync is None for run in active):
            return
        names = sorted({str(run.result.at_sync) for run in active})
        if len(names) > 1:
            for run in active:
                run.result.fail(f"sync points out of step: {', '.join(names)}")
        self.say(f"sync point {'/'.join(names)}: {len(active)} processes")
        for run in active:
            run.result.at_sync = None
        for run in active:
            assert run.proc.stdin is not None
            await run.proc.stdin.send_all(b"go\n")


def print_table(scenario: Scenario, results: list[ProcessResult], out: TextIO) -> None:
    print(f"\nscenario {scenario.name}: {len(results)} processes", file=out)
    width = max([len("process"), *(len(r.label) for r in results)])
    rw = max([5, *(len(r.role) for r in results)])
    print(
        f"{'process':<{width}}  {'role':<{rw}}  {'passed':>9}  {'failed':>6}  first failure",
        file=out,
    )
    for r in results:
        passed = f"{r.passed}/{r.total}"
        line = f"{r.label:<{width}}  {r.role:<{rw}}  {passed:>9}  {r.failed:>6}  {r.first_failure}"
        print(line.rstrip(), file=out)
    failed = sum(1 for r in results if r.failed)
    verdict = "all expectations met" if not failed else f"{failed} process(es) FAILED"
    print(verdict, file=out)


def run_scenario(path: Path, socket_path: Path | None, out: TextIO = sys.stdout) -> int:
    """Run a scenario file; 0 when every expectation held, 1 otherwise, 2 for a bad file."""
    try:
        scenario = load(path)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"scenario {scenario.name}: {scenario.description}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="xec-scenario-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = None
        aux: list[AuxDriverProcess] = []
        try:
            if socket_path is not None:
                try:
                    SeqpacketTransport.connect(socket_path).close()
                except OSError as exc:
                    print(f"no daemon at {socket_path}: {exc.strerror}", file=sys.stderr)
                    return 2
            else:
                daemon = DaemonProcess(
                    socket_path=tmp / "xed.sock",
                    log_path=tmp / "daemon.log",
                    extra_args=("--log-level", "warning"),
                ).start()
                socket_path = daemon.socket_path
                print(f"  started a daemon (pid {daemon.pid}) on {socket_path}", file=out)
            verbs = {}
            for name in scenario.ib_names:
                driver = AuxDriverProcess(
                    socket_path,
                    socket_path=tmp / f"{name}.verbs.sock",
                    log_path=tmp / f"{name}.log",
                )
                aux.append(driver)
                driver.start()
                verbs[name] = str(driver.socket_path)
                print(f"  started the IB-like aux driver {name!r} (pid {driver.pid})", file=out)
            runner = Runner(scenario, out)
            results = trio.run(runner.run, str(socket_path), verbs, tmp)
        finally:
            for driver in aux:
                driver.cleanup()
            if daemon is not None:
                daemon.cleanup()
    print_table(scenario, results, out)
    return 1 if any(r.failed for r in results) else 0


def check_scenario(path: Path, out: TextIO = sys.stdout) -> int:
    try:
        scenario = load(path)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    steps = sum(len(spec.steps) for spec, _ in scenario.instances())
    instances = sum(1 for _ in scenario.instances())
    print(
        f"{path}: ok ({instances} processes, {steps} steps, {len(scenario.pairs())} socket pairs)",
        file=out,
    )
    return 0


def list_scenarios(out: TextIO = sys.stdout) -> int:
    for path in sorted(SHIPPED.glob("*.toml")):
        try:
            description = load(path).description
        except ScenarioError:
            description = "(does not check: run `xec scenario check` on it)"
        print(f"{path.stem:<20} {description}", file=out)
    return 0


def cli(args: argparse.Namespace) -> int:
    """Dispatch of `xec scenario run|check|list`."""
    if args.which == "list":
        return list_scenarios()
    path = resolve_scenario_path(args.file)
    if args.which == "check":
        return check_scenario(path)
    return run_scenario(path, args.socket)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} worker FILE PROCESS INDEX --socket PATH")
