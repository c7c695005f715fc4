"""Unmodified C programs against a real daemon, through the preload library (`xec run`).

Each C program under tests/preload/ is compiled with the system `cc` into a temporary
directory and run under `xec run`; it exits 0 when every check it makes held, else it
prints the failed check. The Python side checks what only the daemon can tell (objects
released, barriers counted) and what `xec run` itself promises.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import needs_root

from clients import Device, preload, run
from clients.daemon import DaemonProcess
from protocols import Event, Op, constants, encode_event
from protocols import messages as m
from protocols.codec import MAX_DATAGRAM, MAX_FDS
from protocols.version import PROTOCOL_VERSION
from tests.conftest import baseline, start_daemon
from tests.sandbox import wait_until
from tests.test_lifecycle import wait_for_baseline

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "tests" / "preload"
TIMEOUT = 120
RENDER = "/dev/dri/renderD128"


@pytest.fixture(scope="session")
def library() -> Path:
    """The preload library, built once for the session (as `xec run` would)."""
    return preload.build()


class Programs:
    """Compiles tests/preload/NAME.c on demand, once per test."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def __call__(self, name: str) -> Path:
        exe = self.where / name
        if not exe.exists():
            cmd = [
                "cc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
                f"-I{preload.SOURCE_DIR}", f"-I{PROGRAMS}", "-o", str(exe),
                str(PROGRAMS / f"{name}.c"),
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
            assert done.returncode == 0, f"{name}.c does not compile:\n{done.stderr}"
        return exe


@pytest.fixture
def program(tmp_path: Path, library: Path) -> Programs:
    return Programs(tmp_path)


def xec_run(
    socket_path: Path,
    argv: list[str],
    *,
    node: str | None = None,
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`xec run` as a user types it; stdout and stderr captured."""
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(socket_path)]
    if node:
        cmd += ["--node", node]
    return subprocess.run(
        [*cmd, "--", *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
    )  # fmt: skip


@contextlib.contextmanager
def spawn(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A running process with stdout and stderr piped; killed if still running at the end."""
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
        env=env if env is not None else dict(os.environ, PYTHONPATH=str(ROOT)),
    ) as proc:  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)


def passes(socket_path: Path, exe: Path, *args: str, node: str | None = None) -> str:
    """Run a test program under the library; it must exit 0. Its stdout."""
    done = xec_run(socket_path, [str(exe), *args], node=node)
    assert done.returncode == 0, f"{exe.name} failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


# --- device nodes ---------------------------------------------------------------------
def test_device_nodes(daemon: DaemonProcess, program: Programs) -> None:
    """stat/open (every libc entry point)/fstat/readlink/reopen of the nodes as the kernel."""
    passes(daemon.socket_path, program("nodes"))


def test_node_option_leaves_one_node(daemon: DaemonProcess, program: Programs) -> None:
    """--node renderD128: card0 is missing (ENOENT), renderD128 opens."""
    exe = program("one_node")
    passes(daemon.socket_path, exe, "renderD128", node="renderD128")
    passes(daemon.socket_path, exe, "card0", node="card0")


# --- xec run ------------------------------------------------------------------------------
def test_exit_status_passes_through(daemon: DaemonProcess) -> None:
    """PROGRAM's exit status comes back; a signal death as 128+N."""
    assert xec_run(daemon.socket_path, ["sh", "-c", "exit 7"]).returncode == 7
    killed = xec_run(daemon.socket_path, ["sh", "-c", "kill -9 $$"])
    assert killed.returncode == 128 + signal.SIGKILL


def test_no_daemon_is_said_plainly(tmp_path: Path) -> None:
    """No daemon at the socket: one line naming it, status 69, the program never runs."""
    marker = tmp_path / "ran"
    done = xec_run(tmp_path / "none.sock", ["touch", str(marker)])
    assert done.returncode == 69
    assert str(tmp_path / "none.sock") in done.stderr
    assert not marker.exists()


def test_missing_program_is_127(daemon: DaemonProcess) -> None:
    """A PROGRAM that does not exist: 127, as a shell says."""
    assert xec_run(daemon.socket_path, ["/nonexistent/program"]).returncode == 127


def test_no_compiler_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No C compiler: BuildError with status 69 and a message that says so."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(preload.BuildError) as info:
        preload.build()
    assert info.value.status == 69
    assert "no C compiler" in str(info.value)


def test_broken_source_is_software_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources that do not compile: BuildError 70 with the compiler's words, nothing cached."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.c").write_text("int f(void) { return x; }\n")
    (src / preload.EXPORTS).write_text("{ global: f; local: *; };\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(preload, "SOURCE_DIR", src)
    with pytest.raises(preload.BuildError) as info:
        preload.build()
    assert info.value.status == 70
    assert "broken.c" in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_library_exports_only_the_interposed_functions(library: Path) -> None:
    """The built library exports exactly exports.map's libc names, nothing of its own."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    text = (preload.SOURCE_DIR / preload.EXPORTS).read_text()
    listed = set(re.findall(r"\b(\w+);", text.split("global:")[1].split("local:")[0]))
    assert exported == listed


def test_build_is_cached_by_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library lands under the cache in a directory named by the sources' hash."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = preload.build()
    assert built.parent.parent == tmp_path / "xed"
    assert re.fullmatch(r"preload-[0-9a-f]{16}", built.parent.name)
    assert preload.build() == built


# --- the constants the C side copies --------------------------------------------------------
def _c_constants(program: Programs) -> dict[str, int]:
    out = subprocess.run(
        [str(program("constants"))], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    pairs = (line.split() for line in out.stdout.splitlines() if line)
    return {name: int(value, 0) for name, value in pairs}


def test_c_constants_match_protocols(program: Programs) -> None:
    """Every protocol constant proto.h hard-codes equals the Python protocol's."""
    c = _c_constants(program)
    ops = {name.removeprefix("XED_OP_"): v for name, v in c.items() if name.startswith("XED_OP_")}
    assert ops, "constants.c printed no op"
    for name, value in ops.items():
        assert Op[name] == value, name
    expected = {
        "XED_PROTOCOL_MAJOR": PROTOCOL_VERSION[0],
        "XED_PROTOCOL_MINOR": PROTOCOL_VERSION[1],
        "XED_MAX_DATAGRAM": MAX_DATAGRAM,
        "XED_MAX_FDS": MAX_FDS,
        "XED_PCI_BARRIER_MMAP_OFFSET": constants.XE_PCI_BARRIER_MMAP_OFFSET,
        "XED_PCI_BARRIER_IDLE": constants.PCI_BARRIER_IDLE,
        "XED_PCI_BARRIER_SEQ_TAG": constants.PCI_BARRIER_SEQ_TAG,
        "XED_PCI_BARRIER_SEQ_MASK": constants.PCI_BARRIER_SEQ_MASK,
        "XED_NOTICE_WATCHER_ASLEEP": constants.NOTICE_WATCHER_ASLEEP,
        "XED_NOTICE_UNPLUGGED": constants.NOTICE_UNPLUGGED,
        "XED_HOST_INVALIDATE_START": constants.HOST_INVALIDATE_START,
        "XED_HOST_INVALIDATE_END_REPLACED": constants.HOST_INVALIDATE_END_REPLACED,
        "XED_HOST_INVALIDATE_END_FREED": constants.HOST_INVALIDATE_END_FREED,
        "XED_CHAIN_LINK_FAULT": constants.CHAIN_LINK_FAULT,
        "XED_CHAIN_BODY_FAULT": constants.CHAIN_BODY_FAULT,
        "XED_CHAIN_TOO_LONG": constants.CHAIN_TOO_LONG,
        "XED_EVENT_PROTOCOL_ERROR": Event.PROTOCOL_ERROR,
    }
    for name, value in expected.items():
        assert c[name] == value, name
    printed = set(c)
    defined = set(re.findall(r"#define (XED_\w+) ", (preload.SOURCE_DIR / "proto.h").read_text()))
    assert defined == printed, f"constants.c misses {sorted(defined - printed)}"


# --- ioctls -------------------------------------------------------------------------------
def test_ioctls(daemon: DaemonProcess, program: Programs) -> None:
    """Every translated ioctl succeeds and fails as the kernel's, errno for errno."""
    passes(daemon.socket_path, program("ioctls"))


def test_bad_pointers_are_efault(daemon: DaemonProcess, program: Programs) -> None:
    """NULL, unmapped and read-only pointers in and inside ioctls: EFAULT, no SIGSEGV."""
    passes(daemon.socket_path, program("efault"))


def test_memory_is_read_without_pipes_from_before_the_constructor(
    daemon: DaemonProcess, program: Programs
) -> None:
    """A copy made before the library's constructor (from .preinit_array) leaves the
    library reading the program's memory with process_vm_readv: with pipes forbidden
    after it, every ioctl still reads and writes back its argument."""
    passes(daemon.socket_path, program("early_copy"))


def test_parallel_queue_batch_addresses(make_daemon: Any, program: Programs) -> None:
    """A parallel queue's EXEC reads its array of batch addresses from the program: every
    lane runs; a wrong count is EINVAL before the array is read, an unreadable array
    EFAULT, and no SIGSEGV."""
    daemon = make_daemon("[device.engines]\nvideo_decode = 2\n")
    passes(daemon.socket_path, program("parallel"))


def test_properties(daemon: DaemonProcess, program: Programs) -> None:
    """VM_GET_PROPERTY(FAULTS): the size probe, a batch's fault written to `data` as
    struct xe_vm_fault, an unwritable `data` EFAULT, the daemon's refusals;
    EXEC_QUEUE_GET_PROPERTY(BAN) before and after the fault."""
    assert "properties ok" in passes(daemon.socket_path, program("properties"))


def test_child_that_drops_root_keeps_its_inherited_file(
    daemon: DaemonProcess, program: Programs
) -> None:
    """A forked child (and a grandchild) that drops to uid 65534 before its first call
    on the drm file it inherited: its calls still reach the daemon, whose socket uid
    65534 cannot reach, and are checked against its rights then (a high priority is
    EPERM without CAP_SYS_NICE), as IGT's xe_exec_queue_property does."""
    needs_root()
    assert "drop_root ok" in passes(daemon.socket_path, program("drop_root"))


def test_syncobjs(daemon: DaemonProcess, program: Programs) -> None:
    """SYNCOBJ CREATE/DESTROY/WAIT/RESET/SIGNAL errno for errno, deadlines, and syncobjs
    signalled by VM_BIND and EXEC and waited on by EXEC."""
    passes(daemon.socket_path, program("syncobj"))


def test_timeline_syncobjs(daemon: DaemonProcess, program: Programs) -> None:
    """TIMELINE_SIGNAL, QUERY, TIMELINE_WAIT and TRANSFER errno for errno (EFAULT of each
    user pointer in the kernel's order), WAIT_FOR_SUBMIT and WAIT_AVAILABLE, a point
    signalled from another thread, and points signalled and waited on by VM_BIND and
    EXEC (tests/test_syncobj_timeline.py holds their semantics)."""
    out = passes(daemon.socket_path, program("timeline"))
    assert "timeline ok" in out


def test_syncobj_eventfd(daemon: DaemonProcess, program: Programs) -> None:
    """SYNCOBJ_EVENTFD, emulated in the library: the eventfd counts 1 at once for a point
    signalled, later for one another thread signals, with WAIT_AVAILABLE for a point
    submitted; never for a drm file closed first, nor for a syncobj freed first (while a
    descriptor keeping it keeps the registration, a destroy right after included); errno
    in drm_syncobj.c's order."""
    out = passes(daemon.socket_path, program("eventfd"))
    assert "eventfd ok" in out


def test_syncobj_eventfd_beyond_the_fence_waits_limit(make_daemon: Any, program: Programs) -> None:
    """Registrations pending past limits.fence_waits (4 here) all count once signalled:
    the kernel's take no wait slot, and neither do the library's (when they waited with
    TIMELINE_WAIT, four of eight were refused ENOMEM and never counted)."""
    daemon = make_daemon("[limits]\nfence_waits = 4\n")
    out = passes(daemon.socket_path, program("eventfd"), "beyond", "8")
    assert "eventfd beyond ok" in out


def test_sync_files(daemon: DaemonProcess, program: Programs) -> None:
    """SYNCOBJ_HANDLE_TO_FD / FD_TO_HANDLE and the dma-buf's EXPORT/IMPORT_SYNC_FILE from
    C, errno for errno (tests/test_sync_file.py holds their semantics)."""
    out = passes(daemon.socket_path, program("sync_file"))
    assert "sync files ok" in out


def test_sync_file_ioctls(daemon: DaemonProcess, program: Programs) -> None:
    """SYNC_IOC_MERGE and SYNC_IOC_FILE_INFO on the daemon's sync files, in the kernel's
    order of checks, while another descriptor's '>' ioctls still go to the kernel."""
    out = passes(daemon.socket_path, program("sync_file_ioctls"))
    assert "sync file ioctls ok" in out


def test_host_settings_igt_changes_as_root_are_stood_in_for(
    daemon: DaemonProcess, program: Programs
) -> None:
    """The virtual terminals' console binding and ftrace_dump_on_oops, which IGT writes
    as root, open as the stand-in's regular files: the host's stay as they were."""
    out = passes(daemon.socket_path, program("host_settings"))
    assert "host settings ok" in out


# --- userptr ----------------------------------------------------------------------------
# memory for a 64 MiB arena at most (clients/preload/userptr.c tries 4 GiB, 1 GiB, 256 MiB)
SMALL_DEVICE = """
[device]
system_memory = 33554432
vram_size = 33554432
visible_vram_size = 33554432
"""


def test_userptr_of_the_programs_own_memory(fresh_daemon: DaemonProcess, program: Programs) -> None:
    """MAP_USERPTR of heap and anonymous memory as it is: the device runs batches from
    it and stores into it, through two files; the stack, a file's pages, nothing mapped
    and PROT_NONE are EFAULT; memory mapped over a binding, moved by mremap or unmapped
    is what the device then finds; a forked child's private copy is its own. Nothing
    is left in the daemon afterwards."""
    before = baseline(fresh_daemon)
    assert "userptr ok" in passes(fresh_daemon.socket_path, program("userptr"))
    assert wait_for_baseline(fresh_daemon, before) == before


def test_userptr_arena_is_used_again(make_daemon: Any, program: Programs) -> None:
    """On a device whose memory holds a 64 MiB arena, 16 MiB bound and unmapped eight
    times over binds every time, unmapped by the program or by libc's free(); memory
    shared with a forked child is not handed out again. Nothing is left afterwards."""
    daemon = make_daemon(SMALL_DEVICE)
    before = baseline(daemon)
    assert "reuse ok" in passes(daemon.socket_path, program("userptr_reuse"))
    assert wait_for_baseline(daemon, before) == before


def test_userptr_bind_costs_the_file_no_extra_connection(
    fresh_daemon: DaemonProcess, program: Programs
) -> None:
    """The first MAP_USERPTR of a file registers the process's arena with it before the
    VM_BIND is sent, on the file's own connection: the file has no channel after it."""
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(fresh_daemon.socket_path)]
    with spawn(cmd + ["--", str(program("userptr")), "hold"]) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        word, pid = holder.stdout.readline().split()
        assert word == "bound"
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            files = [c for c in admin.admin_clients() if c.pid == int(pid)]
        assert [(c.role, c.channels) for c in files] == [("drm", 0)]
        holder.stdin.write("done\n")
        holder.stdin.flush()
        _out, err = holder.communicate(timeout=TIMEOUT)
        assert holder.returncode == 0, err


# --- one file, many descriptors and callers ---------------------------------------------
def test_dup_fork_threads_share_one_file(daemon: DaemonProcess, program: Programs) -> None:
    """dup*/F_DUPFD copies, a forked child and threads all act on one drm file."""
    passes(daemon.socket_path, program("sharing"))


def test_files_released_after_sharing(fresh_daemon: DaemonProcess, program: Programs) -> None:
    """Once every copy (the child's, the threads' channels) is closed, nothing is left."""
    before = baseline(fresh_daemon)
    passes(fresh_daemon.socket_path, program("sharing"))
    assert wait_for_baseline(fresh_daemon, before) == before


# --- dma-bufs --------------------------------------------------------------------------------
def test_dma_buf_descriptors(daemon: DaemonProcess, program: Programs) -> None:
    """dup/close/lseek/mmap/SYNC on dma-bufs as the kernel; memory lives while held."""
    passes(daemon.socket_path, program("dmabuf"))


def test_dma_buf_passed_between_programs(
    fresh_daemon: DaemonProcess, program: Programs, tmp_path: Path
) -> None:
    """A dma-buf sent over a Unix socket to another program under xec run imports and maps."""
    exe, where = program("dmabuf_pass"), str(tmp_path / "pass.sock")
    before = baseline(fresh_daemon)
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(fresh_daemon.socket_path)]
    with spawn(cmd + ["--", str(exe), "send", where]) as sender:
        assert sender.stdout is not None
        assert sender.stdout.readline().strip() == "listening"
        passes(fresh_daemon.socket_path, exe, "receive", where)
        _out, err = sender.communicate(timeout=TIMEOUT)
        assert sender.returncode == 0, err
    assert wait_for_baseline(fresh_daemon, before) == before


# --- a program that dies -----------------------------------------------------------------------
def test_sigkilled_program_releases_everything(
    fresh_daemon: DaemonProcess, program: Programs
) -> None:
    """SIGKILL with BOs, a mapping, a dma-buf, a VM and a queue held: the daemon frees all."""
    before = baseline(fresh_daemon)
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(fresh_daemon.socket_path)]
    with spawn(cmd + ["--", str(program("holder"))]) as holder:
        assert holder.stdout is not None
        word, pid = holder.stdout.readline().split()
        assert word == "ready"
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            assert admin.admin_status().objects.bos == 2
        os.kill(int(pid), signal.SIGKILL)
        assert holder.wait(timeout=TIMEOUT) == 128 + signal.SIGKILL
    assert wait_for_baseline(fresh_daemon, before) == before


# --- the PCI barrier page ---------------------------------------------------------------------
def test_barrier_page_reads_and_errors(daemon: DaemonProcess, program: Programs) -> None:
    """Every word reads 0xdeadbeef, no store is read back; 8192 bytes, private, PROT_READ
    and a real handle are EINVAL (xe_mmap pci-membarrier, -bad-pagesize, -bad-object)."""
    passes(daemon.socket_path, program("membarrier"))


def test_barrier_page_parallel(daemon: DaemonProcess, program: Programs) -> None:
    """A reopened file in a forked child and the parent never see each other's stores."""
    passes(daemon.socket_path, program("membarrier"), "parallel")


def test_barrier_stores_are_counted(fresh_daemon: DaemonProcess, program: Programs) -> None:
    """Each store through the fault path counts one barrier of that file in the daemon."""
    stores = 500
    cmd = [sys.executable, "-m", "clients", "run", "--socket", str(fresh_daemon.socket_path)]
    with spawn(cmd + ["--", str(program("membarrier")), "count", str(stores)]) as proc:
        assert proc.stdout is not None
        word, n, pid = proc.stdout.readline().split()
        assert (word, int(n)) == ("stored", stores)

        def counted() -> int:
            with Device.open(fresh_daemon.socket_path, role="admin") as admin:
                mine = [c for c in admin.admin_clients() if c.pid == int(pid)]
            assert len(mine) == 1
            return mine[0].barriers

        wait_until(lambda: counted() == stores, TIMEOUT, f"{stores} barriers counted")
        with Device.open(fresh_daemon.socket_path, role="admin") as admin:
            assert admin.admin_status().barriers == stores


def test_program_signal_handlers_still_fire(daemon: DaemonProcess, program: Programs) -> None:
    """The program's SIGSEGV (siglongjmp out) and SIGBUS (small BAR) handlers run; barrier
    stores in between never reach them."""
    passes(daemon.socket_path, program("own_handlers"))


# --- debugfs, mmap, and the IGT tests' own calls -----------------------------------------
def test_debugfs_stand_in(daemon: DaemonProcess, program: Programs) -> None:
    """/sys/kernel/debug looks mounted; dri/<minor>/name and forcewake_all open."""
    passes(daemon.socket_path, program("debugfs"))


def test_mmap_rules(daemon: DaemonProcess, program: Programs) -> None:
    """mmap of a fake offset: the kernel's errnos, the program's address/length/prot."""
    passes(daemon.socket_path, program("mmap_rules"))


def test_prime_self_import_races(fresh_daemon: DaemonProcess, program: Programs) -> None:
    """xe_prime_self_import's calls, threaded races included; nothing leaks after."""
    before = baseline(fresh_daemon)
    passes(fresh_daemon.socket_path, program("prime_races"), "1")
    assert wait_for_baseline(fresh_daemon, before) == before


# --- a connection the daemon will not serve ----------------------------------------------
def test_open_past_the_connection_limit_is_emfile(
    tmp_path: Path, library: Path, program: Programs
) -> None:
    """open() of the device by a uid at [limits] connections_per_uid is EMFILE, as the
    library's Device.open: whether the daemon answered the library's HELLO or, not
    having seen it yet, said so in a PROTOCOL_ERROR event and hung up. (Run without
    `xec run`, whose own check of the daemon would be the refused connection.)"""
    daemon = start_daemon(tmp_path, "[limits]\nconnections_per_uid = 1\n")
    env = run.environment(library, daemon.socket_path, ("renderD128",), None)
    argv = [str(program("open_errno")), RENDER]
    try:
        with Device.open(daemon.socket_path):  # the uid's one connection
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TIMEOUT)
            assert (done.returncode, done.stdout) == (0, f"errno {errno.EMFILE}\n"), done.stderr

        def refused() -> bool:  # logged by the daemon's log thread, a moment later
            return "connection_refused" in daemon.log_path.read_text()

        wait_until(refused, TIMEOUT, "the refusal logged")
    finally:
        daemon.stop()
        daemon.cleanup()


@pytest.mark.parametrize("reads_hello", [True, False], ids=["eof", "reset"])
def test_a_hang_up_after_protocol_error_is_that_errno(
    tmp_path: Path, library: Path, program: Programs, reads_hello: bool
) -> None:
    """The daemon's other way to turn a connection away, made certain rather than left
    to a race: accept, send a PROTOCOL_ERROR event (EMFILE), hang up. The program's
    open() fails with EMFILE, not ENODEV: after the event and EOF (its HELLO read) or
    after the reset the kernel reports first when its HELLO was left unread."""
    path = tmp_path / "refuser.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    env = run.environment(library, path, ("renderD128",), None)
    with listener, spawn([str(program("open_errno")), RENDER], env) as opener:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            if reads_hello:
                assert conn.recv(MAX_DATAGRAM)
            info = m.ProtocolErrorInfo(errno=errno.EMFILE, message="turned away")
            conn.send(encode_event(Event.PROTOCOL_ERROR, info))
        out, err = opener.communicate(timeout=TIMEOUT)
    assert (opener.returncode, out) == (0, f"errno {errno.EMFILE}\n"), err


def test_sw_sync_timelines(daemon: DaemonProcess, program: Programs) -> None:
    """debugfs's sync/sw_sync opens daemon timelines whose fences INC signals and whose last
    close signals with ENOENT at once, errno for errno, from children and threads too."""
    out = passes(daemon.socket_path, program("sw_sync"))
    assert "sw_sync ok" in out
