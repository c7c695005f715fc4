"""One process cannot reach another's objects: every id and offset is per file.

Process A holds objects and stays alive (a spawned client talking over stdin/stdout)
while process B, a separate client process, tries A's handles, VM ids, exec queue ids
and fake mmap offsets.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import run_client, spawn_client

from clients.daemon import DaemonProcess

BASE = 0x1_0000_0000
BO_SIZE = 0x10000
PATTERN = "a5"  # hex byte A writes all over its BO

HOLDER = f"""
bo = dev.gem_create({BO_SIZE})
vm = dev.vm_create()
dev.vm_bind(vm, bo, {BASE})
queue = dev.exec_queue_create(vm)
offset = dev.gem_mmap_offset(bo)
m = dev.mmap(offset, {BO_SIZE})
m[0:{BO_SIZE}] = bytes.fromhex({PATTERN!r}) * {BO_SIZE}
print(json.dumps(dict(bo=bo, vm=vm, queue=queue, offset=offset)), flush=True)
sys.stdin.readline()
assert m[0:{BO_SIZE}] == bytes.fromhex({PATTERN!r}) * {BO_SIZE}, "B changed A's memory"
print(json.dumps("intact"), flush=True)
"""


class Holder:
    """Process A: holds a BO (mapped and filled), a VM with a binding, an exec queue."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.proc = spawn_client(daemon.socket_path, HOLDER)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            raise AssertionError(f"process A failed:\n{self._stderr()}")
        self.ids: dict[str, int] = json.loads(line)

    def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def finish(self) -> None:
        """Let A check its memory and exit; fail if anything went wrong in A."""
        out, err = self.proc.communicate("done\n", timeout=30)
        assert self.proc.returncode == 0, f"process A failed:\n{err}"
        assert json.loads(out.strip().splitlines()[-1]) == "intact"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def holder(daemon: DaemonProcess) -> Iterator[Holder]:
    a = Holder(daemon)
    try:
        yield a
        a.finish()
    finally:
        a.kill()


def _errno_of(daemon: DaemonProcess, call: str, ids: dict[str, int]) -> Any:
    """Run `call` in process B (with A's ids as `ids`) and return the errno it raised."""
    code = f"""
ids = json.loads(argv[0])
try:
    {call}
    result = "no error"
except XeError as exc:
    result = exc.errno
"""
    return run_client(daemon.socket_path, code, json.dumps(ids))


def test_other_process_gem_handle_mmap_offset_is_enoent(
    daemon: DaemonProcess, holder: Holder
) -> None:
    """B asking GEM_MMAP_OFFSET for A's handle gets ENOENT."""
    assert _errno_of(daemon, "dev.gem_mmap_offset(ids['bo'])", holder.ids) == errno.ENOENT


def test_other_process_gem_handle_close_is_einval(daemon: DaemonProcess, holder: Holder) -> None:
    """B closing A's GEM handle gets EINVAL, and A's BO survives (A checks its memory)."""
    assert _errno_of(daemon, "dev.gem_close(ids['bo'])", holder.ids) == errno.EINVAL


def test_other_process_gem_handle_in_vm_bind_is_enoent(
    daemon: DaemonProcess, holder: Holder
) -> None:
    """B binding A's handle number into B's own VM gets ENOENT (no such handle in B)."""
    call = "dev.vm_bind(dev.vm_create(), ids['bo'], 0x1000000, size=0x1000)"
    assert _errno_of(daemon, call, holder.ids) == errno.ENOENT


def test_other_process_vm_bind_is_einval(daemon: DaemonProcess, holder: Holder) -> None:
    """B binding its own BO into A's VM id gets EINVAL (no such VM in B)."""
    call = "dev.vm_bind(ids['vm'], dev.gem_create(0x1000), 0x2000000)"
    assert _errno_of(daemon, call, holder.ids) == errno.EINVAL


def test_other_process_vm_unbind_is_einval(daemon: DaemonProcess, holder: Holder) -> None:
    """B unbinding A's binding through A's VM id gets EINVAL; A's binding stays."""
    call = f"dev.vm_unbind(ids['vm'], {BASE}, {BO_SIZE})"
    assert _errno_of(daemon, call, holder.ids) == errno.EINVAL


def test_other_process_vm_destroy_is_enoent(daemon: DaemonProcess, holder: Holder) -> None:
    """B destroying A's VM id gets ENOENT."""
    assert _errno_of(daemon, "dev.vm_destroy(ids['vm'])", holder.ids) == errno.ENOENT


def test_other_process_exec_queue_create_on_vm_is_enoent(
    daemon: DaemonProcess, holder: Holder
) -> None:
    """B creating an exec queue on A's VM id gets ENOENT."""
    assert _errno_of(daemon, "dev.exec_queue_create(ids['vm'])", holder.ids) == errno.ENOENT


def test_other_process_exec_is_enoent(daemon: DaemonProcess, holder: Holder) -> None:
    """B submitting a batch on A's exec queue id gets ENOENT."""
    call = f"dev.exec(ids['queue'], {BASE})"
    assert _errno_of(daemon, call, holder.ids) == errno.ENOENT


def test_other_process_exec_queue_destroy_is_enoent(daemon: DaemonProcess, holder: Holder) -> None:
    """B destroying A's exec queue id gets ENOENT."""
    assert _errno_of(daemon, "dev.exec_queue_destroy(ids['queue'])", holder.ids) == errno.ENOENT


def test_replayed_fake_mmap_offset_is_eacces(daemon: DaemonProcess, holder: Holder) -> None:
    """B mapping A's fake mmap offset (right length, shared) gets EACCES."""
    call = f"dev.mmap(ids['offset'], {BO_SIZE})"
    assert _errno_of(daemon, call, holder.ids) == errno.EACCES
    read_only = "dev.mmap(ids['offset'], 0x1000, prot=1)"
    assert _errno_of(daemon, read_only, holder.ids) == errno.EACCES


def test_replayed_fake_offset_as_user_fence_address_is_efault(
    daemon: DaemonProcess, holder: Holder
) -> None:
    """B naming A's fake offset as a WAIT_USER_FENCE user address gets EFAULT."""
    code = """
from protocols import Op, messages as m
ids = json.loads(argv[0])
try:
    dev.ioctl(
        Op.XE_WAIT_USER_FENCE,
        m.DrmXeWaitUserFence(addr=ids['offset'], value=0xa5a5a5a5a5a5a5a5, timeout=0),
    )
    result = "no error"
except XeError as exc:
    result = exc.errno
"""
    assert run_client(daemon.socket_path, code, json.dumps(holder.ids)) == errno.EFAULT


def test_same_handle_number_other_process_sees_own_memory(
    daemon: DaemonProcess, holder: Holder
) -> None:
    """A's writes in its BO are never seen by B in B's own BO with the same handle number."""
    code = f"""
ids = json.loads(argv[0])
bo = dev.gem_create({BO_SIZE})
assert bo == ids['bo'], (bo, ids)
with dev.mmap_bo(bo) as mapping:
    before = bytes(mapping[0:{BO_SIZE}])
    mapping[0:{BO_SIZE}] = b"\\x5a" * {BO_SIZE}
result = dict(bo=bo, zero=before == bytes({BO_SIZE}), a5=before.count(0xA5))
"""
    result = run_client(daemon.socket_path, code, json.dumps(holder.ids))
    assert result == {"bo": holder.ids["bo"], "zero": True, "a5": 0}


def test_handle_numbers_are_per_file(daemon: DaemonProcess, holder: Holder) -> None:
    """Handle, VM and exec queue numbers restart in each file: A and B both get 1."""
    assert holder.ids["bo"] == 1
    assert holder.ids["vm"] == 1
    assert holder.ids["queue"] == 1
    code = """
bo = dev.gem_create(0x1000)
vm = dev.vm_create()
queue = dev.exec_queue_create(vm)
result = dict(bo=bo, vm=vm, queue=queue, offset=dev.gem_mmap_offset(bo))
"""
    result = run_client(daemon.socket_path, code)
    assert (result["bo"], result["vm"], result["queue"]) == (1, 1, 1)
    assert result["offset"] != holder.ids["offset"]


def test_batch_cannot_read_other_process_binding(daemon: DaemonProcess, holder: Holder) -> None:
    """B's batch reading the GPU address where A bound its BO faults in B's own VM."""
    code = f"""
bo = dev.gem_create({BO_SIZE})
vm = dev.vm_create()
dev.vm_bind(vm, bo, {BASE} + {BO_SIZE})  # B's BO sits just above where A's BO is bound
queue = dev.exec_queue_create(vm)
with dev.mmap_bo(bo) as mapping:
    batch = Batch().copy_dword({BASE} + {BO_SIZE} + 0x2000, {BASE}).end()
    mapping[0:len(batch)] = batch.tobytes()
    fence = user_fence({BASE} + {BO_SIZE} + 0x3000, 1)
    dev.exec(queue, {BASE} + {BO_SIZE}, syncs=[fence])
    dev.wait_user_fence(mapping.user_address(0x3000), 1, timeout=-1)  # xe signals anyway
    try:
        dev.exec(queue, {BASE} + {BO_SIZE})
        again = 0
    except XeError as exc:
        again = exc.errno
    result = dict(copied=mapping.read_u32(0x2000), again=again)
"""
    result = run_client(daemon.socket_path, code)
    assert result == {"copied": 0, "again": errno.ECANCELED}  # the fault banned the queue


WORKER = """
tag = int(argv[0])
bo = dev.gem_create(0x10000)
vm = dev.vm_create()
dev.vm_bind(vm, bo, 0x100000000)  # the same GPU address in both processes
queue = dev.exec_queue_create(vm)
mapping = dev.mmap_bo(bo)
print(json.dumps("ready"), flush=True)
sys.stdin.readline()
seen = []
for i in range(1, 41):
    value = (tag << 16) | i
    batch = Batch().store_dword(0x100000000 + 0x1000, value)
    batch = batch.atomic_inc(0x100000000 + 0x1004).end()
    mapping[0x100:0x100 + len(batch)] = batch.tobytes()
    dev.exec(queue, 0x100000000 + 0x100, syncs=[user_fence(0x100000000 + 0x2000, i)])
    dev.wait_user_fence(mapping.user_address(0x2000), i, timeout=10_000_000_000)
    seen.append([mapping.read_u32(0x1000), value])
result = dict(seen=seen, count=mapping.read_u32(0x1004))
print(json.dumps(result), flush=True)
"""


def test_concurrent_batches_see_only_their_own_results(daemon: DaemonProcess) -> None:
    """Two processes running batches at the same GPU address at once each see only theirs."""
    workers: list[subprocess.Popen[str]] = []
    try:
        for tag in (0xA, 0xB):
            workers.append(spawn_client(daemon.socket_path, WORKER, str(tag)))
        for proc in workers:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate(timeout=30)
                raise AssertionError(f"worker failed:\n{err}")
            assert json.loads(line) == "ready"
        for proc in workers:  # both start together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in workers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"worker failed:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    for result in results:
        assert all(got == want for got, want in result["seen"]), result["seen"]
        assert result["count"] == 40
