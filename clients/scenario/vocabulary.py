"""The scenario file's vocabulary: the steps, their fields and kinds, which role may run
which step, the choices a field takes, and which names a step uses and defines.

Everything the checks (checks.py, names.py) and the worker (worker.py, steps_*.py) agree
on lives here, once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from protocols.constants import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
    IBV_ACCESS_LOCAL_WRITE,
    IBV_ACCESS_REMOTE_READ,
    IBV_ACCESS_REMOTE_WRITE,
    PROT_READ,
    PROT_WRITE,
    XE_PLACEMENT_SYSMEM,
    XE_PLACEMENT_VRAM0,
)

SUCCESS = "success"
DEFAULT_TIMEOUT = 60.0  # seconds for a whole run, unless the file says otherwise
TOP_LEVEL_KEYS = ("name", "description", "timeout", "process")
PROCESS_KEYS = ("name", "role", "count", "steps", "barriers")

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


# --- names: what a step looks up, and in which of the process's tables ----------------------
# Tables: "bo", "vm", "fd", "map", "region", "host", "mr", "qp", and "value" (every number
# the process holds: its pid and client_id, its handles and ids by name, MAP.offset and the
# like, and what it received). A "ref" field finds its name in its table or among the
# values, or is a number; a "name" field must name an entry of its table.
USES: dict[str, dict[str, str]] = {
    "close": {"bo": "bo"},
    "map": {"bo": "bo"},
    "mmap_offset": {"bo": "bo"},
    "mmap": {"offset": "value"},
    "write": {"map": "map"},
    "read": {"map": "map"},
    "bind": {"vm": "vm", "bo": "bo"},
    "unbind": {"vm": "vm"},
    "exec": {"vm": "vm"},
    "export": {"bo": "bo"},
    "import": {"fd": "fd"},
    "dmabuf_map": {"fd": "fd"},
    "sync": {"fd": "fd"},
    "send": {"fd": "fd", "value": "value"},
    "map_mmio": {"region": "region"},
    "ring": {"map": "map"},
    "vm_export": {"vm": "vm"},
    "ib_open": {"fd": "fd"},
    "connect": {"qp": "qp", "remote": "value"},
    "rdma_write": {"qp": "qp", "mr": "mr", "rkey": "value"},
    "rdma_read": {"qp": "qp", "mr": "mr", "rkey": "value"},
    "bind_userptr": {"vm": "vm", "host": "host"},
    "host_replace": {"host": "host"},
    "host_free": {"host": "host"},
    "debug_read": {"client_id": "value", "vm": "value"},
    "debug_write": {"client_id": "value", "vm": "value"},
}
TABLE_NAMES = {
    "bo": "BO", "vm": "VM", "fd": "descriptor", "map": "mapping", "region": "MMIO region",
    "host": "host memory", "mr": "memory region", "qp": "queue pair", "value": "value",
}  # fmt: skip
# what every process holds from the start
OWN_VALUES = ("pid", "client_id")


def defines(do: str, a: dict[str, Any]) -> list[tuple[str, str]]:
    """(table, name) of what a step that succeeds adds to the process's tables (received
    names excepted: they depend on the sender, see names.py). `a` holds the step's
    fields, defaults included, placeholders filled."""
    if do == "create":
        return [("bo", a["bo"]), ("value", a["bo"])]
    if do == "import":
        return [("bo", a["bo"]), ("value", a["bo"])]
    if do == "vm":
        return [("vm", a["vm"]), ("value", a["vm"])]
    if do == "map":
        name = a["map"] or str(a["bo"])
        return [("map", name), ("value", f"{name}.offset")]
    if do == "mmap_offset":
        return [("value", a["value"] or f"{a['bo']}.offset")]
    if do == "mmap":
        return [("map", a["map"])]
    if do in ("export", "vm_export"):
        return [("fd", a["fd"])]
    if do == "dmabuf_map":
        return [("map", a["map"] or a["fd"])]
    if do == "mmio_open":
        name = a["as"] or a["region"]
        return [("region", name), ("value", f"{name}.offset")]
    if do == "map_mmio":
        return [("map", a["map"] or a["region"])]
    if do == "reg_mr":
        return [("mr", a["mr"]), ("value", f"{a['mr']}.rkey"), ("value", f"{a['mr']}.lkey")]
    if do == "qp":
        return [("qp", a["qp"]), ("value", f"{a['qp']}.num")]
    if do == "host_memory":
        return [("host", a["host"]), ("map", a["host"]), ("value", f"{a['host']}.addr")]
    return []


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when `word` is close to one of `choices`, else ''."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
