"""The PCI barrier page and signal interposition of the preload library (barrier.c,
signals.c).

Without a daemon: C programs under tests/preload/barrier_*.c link the two files directly
and map a memfd page as the daemon would hand it over, then store, fault and trap. Each
checks itself and exits 0; the exit statuses and output are checked here.

With a daemon: tests/preload/barrier_xec.c maps /dev/dri/card0's barrier page under
`xec run` (the whole library), and the daemon's own count (`xed ctl clients`) is checked
against the stores the program made. A daemon whose page watcher, asleep, would look by
itself only after an hour shows that a barrier after a quiet spell wakes it, and one whose
watcher lingers between its last look and its sleep, that a wake-up lost there costs
nothing (the watcher sleeps on the barrier words too).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import Device
from clients.daemon import DaemonProcess
from protocols import Op
from protocols import messages as m
from protocols.constants import NOTICE_WATCHER_ASLEEP, PAGE_SIZE
from tests.conftest import _check_log, adjusted_xed, baseline
from tests.sandbox import wait_until
from tests.test_lifecycle import wait_for_baseline
from tests.test_preload import spawn

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "clients" / "preload"
TESTS = ROOT / "tests" / "preload"
CFLAGS = ("-Wall", "-Wextra", "-Werror", "-O2", "-pthread")
TIMEOUT = 60
INTERPOSED = (
    "sigaction", "__sigaction", "signal", "bsd_signal", "ssignal", "sysv_signal",
    "__sysv_signal", "sigset", "sigignore", "sighold", "sigprocmask", "pthread_sigmask",
)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every barrier_*.c program, compiled with the two library files."""
    cc = shutil.which("cc")
    assert cc, "the preload library needs a C compiler (cc)"
    out = tmp_path_factory.mktemp("barrier")
    for source in sorted(TESTS.glob("barrier_*.c")):
        if source.stem == "barrier_xec":  # the whole library's, under xec run
            continue
        sources = [str(source), str(LIB / "barrier.c"), str(LIB / "signals.c")]
        command = [cc, *CFLAGS, f"-I{LIB}", *sources, "-o", str(out / source.stem)]
        subprocess.run(command, check=True, timeout=TIMEOUT)
    return out


def run(built: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(built / name), *args], capture_output=True, text=True, timeout=TIMEOUT
    )


def passes(built: Path, name: str, *args: str) -> str:
    proc = run(built, name, *args)
    assert proc.returncode == 0, f"{name} {args}: status {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def test_library_files_build_as_shared_objects(tmp_path: Path) -> None:
    """barrier.c and signals.c build as the library is built (-fvisibility=hidden, -Werror)
    and still export every interposer."""
    sources = [str(LIB / "barrier.c"), str(LIB / "signals.c")]
    lib = tmp_path / "lib.so"
    command = ["cc", *CFLAGS, "-fPIC", "-shared", "-fvisibility=hidden", *sources, "-o", str(lib)]
    subprocess.run(command, check=True, timeout=TIMEOUT)
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(INTERPOSED) <= set(symbols)


def test_every_store_width_reads_deadbeef_and_counts_once(built: Path) -> None:
    """1, 2, 4, 8, 16-byte stores, RMWs, string and far-addressed stores: 0xdeadbeef, one each."""
    assert passes(built, "barrier_rw").strip() == "ok 31 barriers"


def test_four_threads_count_exactly_and_no_reader_sees_a_value(built: Path) -> None:
    """4 threads x 20000 stores (one with every signal blocked): 80000, and nothing visible."""
    assert passes(built, "barrier_threads").strip() == "count 80000 seen 0"


def test_forked_child_shares_the_count(built: Path) -> None:
    """Parent and forked child storing at once (the child through two mappings): exact sum."""
    assert passes(built, "barrier_fork").strip() == "count 60001"


def test_program_segv_and_trap_handlers_are_called_as_the_kernel_would(built: Path) -> None:
    """NULL store: SA_SIGINFO handler, si_addr, mask, NODEFER, ONSTACK, RESETHAND, longjmp."""
    out = passes(built, "barrier_segv")
    assert "NULL store: program's handler, si_addr 16, siglongjmp out" in out
    assert "the program's own trap flag: its trap after the barrier store" in out
    assert len(out.splitlines()) == 11


def test_igt_small_bar_sigbus_pattern(built: Path) -> None:
    """signal(SIGBUS)/signal(SIGSEGV) with sigsetjmp and siglongjmp out, three times over."""
    assert passes(built, "barrier_sigbus").strip() == "ok"


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("segv-dfl", -signal.SIGSEGV),
        ("segv-ign", -signal.SIGSEGV),
        ("segv-dfl-kill", -signal.SIGSEGV),
        ("trap-dfl", -signal.SIGTRAP),
        ("trap-ign", -signal.SIGTRAP),
        ("resethand", -signal.SIGSEGV),
        ("segv-ign-kill", 0),
    ],
)
def test_no_handler_ends_the_program_as_the_kernel_would(
    built: Path, case: str, status: int
) -> None:
    """SIG_DFL/SIG_IGN faults kill with the signal; kill() under SIG_IGN is discarded."""
    proc = run(built, "barrier_dfl", case)
    assert proc.returncode == status, proc.stderr
    assert "still alive" not in proc.stdout
    if case == "resethand":
        assert proc.stdout == "first fault handled\n"


def test_sigaction_reads_back_the_programs_action(built: Path) -> None:
    """oldact and signal()'s return are the program's, equal to what SIGBUS reads back."""
    out = passes(built, "barrier_sigaction")
    assert out.splitlines() == [
        "read-back equals the kernel's",
        "SIGSEGV is never blocked",
        "a handler's sa_mask reads back SIGSEGV but does not block it",
    ]


def test_disposition_inherited_across_exec_is_the_programs(built: Path) -> None:
    """SIGSEGV/SIGTRAP ignored before exec read back SIG_IGN after the library installs."""
    assert passes(built, "barrier_sigaction", "exec").strip() == "inherited SIG_IGN read back"


def test_bench_counts_every_store(built: Path) -> None:
    """The benchmark program's stores all count (its timing is reported, never asserted)."""
    out = passes(built, "barrier_bench", "1000")
    assert '"stores": 1000' in out


# --- under `xec run`, against a real daemon ---------------------------------------------
@pytest.fixture(scope="module")
def xec_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """barrier_xec.c, compiled as any program (the library comes with `xec run`)."""
    exe = tmp_path_factory.mktemp("barrier-xec") / "barrier_xec"
    command = [
        "cc", "-std=gnu11", "-O1", *CFLAGS, f"-I{LIB}", f"-I{TESTS}",
        str(TESTS / "barrier_xec.c"), "-o", str(exe),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=TIMEOUT)
    return exe


def xec_argv(daemon: DaemonProcess, exe: Path, *args: str) -> list[str]:
    """`xec run` of `exe` against `daemon`."""
    socket_path = str(daemon.socket_path)
    return [sys.executable, "-m", "clients", "run", "--socket", socket_path, "--", str(exe), *args]


def running(
    daemon: DaemonProcess, exe: Path, *args: str
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """`xec` for a test that talks to the program: it is killed if a check fails first."""
    return spawn(xec_argv(daemon, exe, *args))


def step(proc: subprocess.Popen[str]) -> list[str]:
    """Let the program go on (a line on its stdin); the words of the line it answers."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    return proc.stdout.readline().split()


def counted(admin: Device, pid: int, files: int, want: int) -> list[int]:
    """The barriers the daemon counted for each drm file of `pid`, once they add up to
    `want` (or after 10 s, whatever they are then)."""
    deadline = time.monotonic() + 10
    while True:
        mine = [c.barriers for c in admin.admin_clients() if c.pid == pid and c.role == "drm"]
        if (len(mine) == files and sum(mine) >= want) or time.monotonic() > deadline:
            return mine
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("case", "files", "per_file"),
    [
        ("igt", 1, [1024 + 1000]),
        ("threads", 1, [4 * 1000]),
        ("fork", 1, [2 * 1000]),
        ("parallel", 2, [1000, 1000]),
        ("segv", 1, [3 * 1000]),
        ("replaced", 1, [1000]),
    ],
)
def test_daemon_counts_every_store(
    daemon: DaemonProcess,
    admin: Device,
    xec_program: Path,
    case: str,
    files: int,
    per_file: list[int],
) -> None:
    """Under xec run: IGT's checks, threads, fork, two files, the program's SIGSEGV handler,
    a page replaced by MAP_FIXED; xed ctl clients shows exactly one barrier per store."""
    before = baseline(daemon)
    with running(daemon, xec_program, case, "1000") as proc:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:1] == ["stored"], proc.communicate(timeout=TIMEOUT)[1]
        total, pid = int(words[1]), int(words[3])
        assert total == sum(per_file)
        assert sorted(counted(admin, pid, files, total)) == per_file
        _, err = proc.communicate("\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err
    assert wait_for_baseline(daemon, before) == before


def test_fault_without_handler_kills_under_xec_run(
    daemon: DaemonProcess, xec_program: Path
) -> None:
    """Under xec run, a NULL store with no handler (barrier page mapped) ends it by SIGSEGV."""
    before = baseline(daemon)
    with running(daemon, xec_program, "segv-dfl", "10") as proc:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 128 + signal.SIGSEGV, err
    assert wait_for_baseline(daemon, before) == before


# --- waking the page watcher ---------------------------------------------------------------
# The daemon itself, its page watcher's own looks while asleep made an hour apart (SLOW_LOOK
# is 50 ms): a barrier counted within a test's bounds was counted because someone woke it.
SLEEPY_WATCHER = ("import xed.device.watcher", "xed.device.watcher.SLOW_LOOK = 3600.0")
# ... and whose watcher, once it has looked on its way to sleep, lingers half a second
# before it sleeps: a barrier whose writer wakes it then wakes nobody.
LATE_SLEEPER = (
    *SLEEPY_WATCHER,
    "import time",
    "import protocols.futex",
    "sleep = protocols.futex.Sleeper.sleep",
    "def late(self, timeout):",
    "    time.sleep(0.5)",
    "    sleep(self, timeout)",
    "protocols.futex.Sleeper.sleep = late",
)
# ... or whose watcher sleeps as where futex_waitv is missing or filtered out
WAITV_MISSING = ("import protocols.futex", "protocols.futex._waitv = False")
SYS_FUTEX, FUTEX_WAIT, SYS_FUTEX_WAITV = 202, 0, 449  # x86-64, as barrier.c
SYS_CLOCK_NANOSLEEP = 230  # time.sleep
WATCHER_THREAD = "xed-watcher"  # xed/device/promptness.py THREAD_NAME


@contextlib.contextmanager
def own_daemon(tmp_path: Path, *setup: str) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(
        socket_path=tmp_path / "xed.sock",
        log_path=tmp_path / "daemon.log",
        extra_args=("--log-level", "debug"),
        entry=adjusted_xed(*setup),
    )
    proc.start()
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None, "the daemon died"
    proc.stop()
    _check_log(proc)
    proc.cleanup()


@pytest.fixture(params=["futex_waitv", "FUTEX_WAIT"])
def sleepy_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A daemon of this test's own whose page watcher sleeps an hour unless woken: on its
    asleep word and the barrier words, or (as where futex_waitv is missing or filtered
    out) on its asleep word alone."""
    setup = SLEEPY_WATCHER if request.param == "futex_waitv" else SLEEPY_WATCHER + WAITV_MISSING
    with own_daemon(tmp_path, *setup) as proc:
        yield proc


@pytest.fixture
def late_sleeper(tmp_path: Path) -> Iterator[DaemonProcess]:
    """The same, whose watcher lingers between its last look and its sleep."""
    with own_daemon(tmp_path, *LATE_SLEEPER) as proc:
        yield proc


def watcher_syscall(daemon: DaemonProcess) -> list[int]:
    """The system call the page watcher thread is blocked in, and its arguments (empty
    while it runs)."""
    for task in Path(f"/proc/{daemon.pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != WATCHER_THREAD:
                continue
            call = (task / "syscall").read_text().split()  # "running" while it runs
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        return [int(call[0]), *(int(a, 16) for a in call[1:7])] if call[0] != "running" else []
    return []


def watcher_sleeps(daemon: DaemonProcess) -> bool:
    """The page watcher thread is blocked until its asleep word is woken (FUTEX_WAIT for
    it to leave 1, or futex_waitv with the barrier pages' words): a FUTEX_WAKE from now on
    wakes it (one sent while it is on its way there would not)."""
    call = watcher_syscall(daemon)
    return call[:1] == [SYS_FUTEX_WAITV] or (
        call[:1] == [SYS_FUTEX] and call[2:4] == [FUTEX_WAIT, 1]
    )


def says_asleep(notice: mmap.mmap) -> bool:
    """The device's notice page says its page watcher is asleep (or on its way there)."""
    return bool(struct.unpack_from("<I", notice, NOTICE_WATCHER_ASLEEP)[0] == 1)


def asleep(daemon: DaemonProcess, notice: mmap.mmap) -> bool:
    """The page watcher says so and is blocked in its sleep: a wake-up reaches it."""
    return says_asleep(notice) and watcher_sleeps(daemon)


def notice_page(dev: Device) -> mmap.mmap:
    _, (fd,) = dev.ioctl_fds(Op.UNPLUG_NOTICE, m.XedUnplugNotice())
    try:
        return mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)


def test_a_barrier_after_a_quiet_spell_wakes_the_page_watcher(
    sleepy_daemon: DaemonProcess, xec_program: Path
) -> None:
    """Under xec run, one store while the daemon's page watcher sleeps (its own look an hour
    away) is counted while the page is still mapped: the library woke the watcher."""
    path = sleepy_daemon.socket_path
    with (
        Device.open(path, role="admin") as admin,
        Device.open(path) as dev,
        notice_page(dev) as notice,
        running(sleepy_daemon, xec_program, "wake") as proc,
    ):
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:1] == ["mapped"], proc.communicate(timeout=TIMEOUT)[1]
        pid = int(words[2])

        wait_until(lambda: asleep(sleepy_daemon, notice), 10, "the page watcher asleep")
        assert step(proc)[:2] == ["store", "done"]
        assert counted(admin, pid, 1, 1) == [1]
        assert step(proc)[:2] == ["stored", "1"]
        _, err = proc.communicate("\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err


def barriers_of(admin: Device, dev: Device) -> int:
    (info,) = [c for c in admin.admin_clients() if c.client_id == dev.client_id]
    return info.barriers


def lingers(daemon: DaemonProcess, notice: mmap.mmap) -> bool:
    """The late sleeper's watcher has set its asleep word and looked, and not yet slept."""
    return says_asleep(notice) and watcher_syscall(daemon)[:1] == [SYS_CLOCK_NANOSLEEP]


def test_a_barrier_whose_wake_up_is_lost_is_counted_at_once_all_the_same(
    late_sleeper: DaemonProcess,
) -> None:
    """A store after the page watcher's last look on its way to sleep, whose wake-up comes
    before the watcher sleeps (and so wakes nobody), ends that sleep as it begins: the
    watcher sleeps on the word the store changed too. Its own look is an hour away. (The
    library's store; the preload library's stores land in the same word.)"""
    path = late_sleeper.socket_path
    with (
        Device.open(path, role="admin") as admin,
        Device.open(path) as dev,
        notice_page(dev) as notice,
    ):
        dev.pci_barrier()  # maps the page, and may be counted while the watcher is awake
        wait_until(lambda: barriers_of(admin, dev) == 1, 10, "the first barrier")
        wait_until(lambda: lingers(late_sleeper, notice), 10, "the watcher on its way", 0.002)
        dev.pci_barrier()
        assert lingers(late_sleeper, notice), "the store landed outside the window"
        wait_until(lambda: barriers_of(admin, dev) == 2, 10, "the second barrier")


REPLUGS = 20  # devices met by one process: three blocks of notice.c (8 each), and more than
# the 16 it once remembered


@pytest.mark.parametrize("sleepy_daemon", ["futex_waitv"], indirect=True)  # either would do
def test_barrier_stores_wake_the_page_watcher_of_every_device_plugged_in(
    sleepy_daemon: DaemonProcess, xec_program: Path
) -> None:
    """One program under xec run meets device after device (unplugged and plugged in again
    before each round): a store on each new device's page, while its watcher sleeps an
    hour, is counted at once. The library maps each device's notice page, however many."""
    path = sleepy_daemon.socket_path
    with (
        Device.open(path, role="admin") as admin,
        running(sleepy_daemon, xec_program, "replugs", str(REPLUGS)) as proc,
    ):
        for round_ in range(REPLUGS):
            admin.admin_unplug()
            admin.admin_replug()
            words = step(proc)
            assert words[:3] == ["mapped", "round", str(round_)], proc.communicate(timeout=TIMEOUT)
            pid = int(words[4])
            with Device.open(path) as dev, notice_page(dev) as notice:
                wait_until(
                    lambda: asleep(sleepy_daemon, notice), 10, "the page watcher asleep", 0.002
                )
            assert step(proc) == ["store", "done", "round", str(round_)]
            # its file on this round's device, and the one it opened on the first device
            mine = counted(admin, pid, 2, 1)
            assert sorted(mine) == [0, 1], (round_, mine)
            assert step(proc) == ["closed", "round", str(round_)]
        _, err = proc.communicate("\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err


def test_barrier_store_after_unplug_and_replug_does_not_crash(
    sleepy_daemon: DaemonProcess, xec_program: Path
) -> None:
    """Stores and munmap after the device is unplugged (its notice page let go, its asleep
    word 0) and replugged end the program normally: the old page is never woken or faulted."""
    path = sleepy_daemon.socket_path
    with (
        Device.open(path, role="admin") as admin,
        running(sleepy_daemon, xec_program, "wake") as proc,
    ):
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:1] == ["mapped"], proc.communicate(timeout=TIMEOUT)[1]
        admin.admin_unplug()
        admin.admin_replug()
        for reply in (["store", "done"], ["stored", "1"]):
            assert step(proc)[:2] == reply
        _, err = proc.communicate("\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err
