"""`xec run`: an unmodified program against the daemon, through the preload library.

The library (clients/preload) is built on first use, the daemon is asked whether it
answers (a short HELLO + VERSION, so a wrong socket is said plainly before the program
starts), a directory standing in for /sys/kernel/debug is made (what is written to its
gtN/force_reset files asks the daemon for a GT reset: gt_reset_files.py), and the
program runs
with LD_PRELOAD and the socket in its environment. Its exit status comes back as it is,
a death by signal N as 128+N, as shells report it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import preload
from .device import Device
from .errors import DaemonGone, XeError
from .gt_reset_files import reset_files

EX_UNAVAILABLE = 69  # sysexits.h: the daemon is not there
NODES = ("card0", "renderD128")
# what the debugfs stand-in holds: enough for the IGT xe tests to find their files
_DEBUGFS_FILES = ("name", "clients", "gem_names", "forcewake_all")


def environment(
    library: Path, socket_path: Path, nodes: Sequence[str], debugfs: Path | None
) -> dict[str, str]:
    """The program's environment: ours plus the library, preloaded first."""
    env = dict(os.environ)
    preloads = [str(library), *filter(None, env.get("LD_PRELOAD", "").split(":"))]
    env["LD_PRELOAD"] = ":".join(preloads)
    env["XED_SOCKET"] = str(socket_path)
    env["XED_PRELOAD_NODES"] = ",".join(nodes)
    if debugfs is not None:
        env["XED_PRELOAD_DEBUGFS"] = str(debugfs)
    return env


@contextlib.contextmanager
def debugfs_dir(device_name: str) -> Iterator[Path]:
    """A directory laid out as /sys/kernel/debug is for one xe device: dri/0 and dri/128;
    beside it, `host/`: copies of the host settings IGT changes as root, which the
    library opens instead (clients/preload/debugfs.c)."""
    with tempfile.TemporaryDirectory(prefix="xed-debugfs-") as tmp:
        root = Path(tmp) / "debugfs"
        for minor in (0, 128):
            where = root / "dri" / str(minor)
            where.mkdir(parents=True)
            for name in _DEBUGFS_FILES:
                (where / name).write_text("")
            (where / "name").write_text(f"xe dev={device_name} unique={device_name}\n")
        # sw_sync's file: IGT looks for it with access(R_OK | W_OK); opening it makes a
        # timeline in the daemon instead (clients/preload/sw_sync.c)
        (root / "sync").mkdir()
        (root / "sync" / "sw_sync").write_text("")
        _copy_host_settings(Path(tmp) / "host")
        yield root


def _copy_host_settings(host: Path) -> None:
    """What the host's virtual-terminal consoles and ftrace_dump_on_oops read now, and
    an empty drop_caches, as files a program may write (reading them changes nothing)."""
    ftrace = host / "proc/sys/kernel/ftrace_dump_on_oops"
    ftrace.parent.mkdir(parents=True)
    ftrace.write_text(_read_or("/proc/sys/kernel/ftrace_dump_on_oops", "0\n"))
    drop_caches = host / "proc/sys/vm/drop_caches"  # write-only on the host: reads nothing
    drop_caches.parent.mkdir(parents=True)
    drop_caches.write_text("")
    consoles = Path("/sys/class/vtconsole")
    (host / "sys/class/vtconsole").mkdir(parents=True)
    for console in sorted(consoles.glob("vtcon*")) if consoles.is_dir() else ():
        copy = host / "sys/class/vtconsole" / console.name
        copy.mkdir()
        for name in ("name", "bind"):
            (copy / name).write_text(_read_or(str(console / name), ""))


def _read_or(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def check_daemon(socket_path: Path) -> str | None:
    """None if a daemon answers at `socket_path`, else why not."""
    try:
        with Device.open(socket_path) as dev:
            dev.version()
    except (OSError, DaemonGone, XeError) as exc:
        return str(exc)
    return None


def run(argv: Sequence[str], socket_path: Path, node: str | None = None) -> int:
    """Run `argv` under the library; its exit status (128+N for a signal N)."""
    try:
        library = preload.build()
    except preload.BuildError as exc:
        print(f"xec run: {exc}", file=sys.stderr)
        return exc.status
    problem = check_daemon(socket_path)
    if problem is not None:
        print(f"xec run: no xed daemon answers at {socket_path}: {problem}", file=sys.stderr)
        return EX_UNAVAILABLE
    nodes = (node,) if node else NODES
    with debugfs_dir("0000:00:02.0") as debugfs, reset_files(debugfs, socket_path):
        env = environment(library, socket_path, nodes, debugfs)
        try:
            child = subprocess.Popen(list(argv), env=env)
        except FileNotFoundError:
            print(f"xec run: {argv[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"xec run: {argv[0]}: permission denied", file=sys.stderr)
            return 126
        return _wait(child)


def _wait(child: subprocess.Popen[bytes]) -> int:
    """Wait for the program, passing SIGTERM and SIGHUP on; SIGINT reaches it from the
    terminal by itself (same process group), so here it is only waited out."""
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda n, _f: child.send_signal(n)) for sig in forwarded}
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGINT, previous_int)
    return 128 - status if status < 0 else status
