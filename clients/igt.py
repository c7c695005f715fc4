"""`xec igt`: IGT's xe tests, unmodified, against the daemon.

IGT (igt-gpu-tools) is the test suite the kernel's DRM drivers are held to; its xe tests
are the yardstick of the preload library (clients/preload). They are taken as Debian
builds them from IGT's sources (the igt-gpu-tools-tests package of Debian unstable, the
only suite with the xe tests this project is judged by), with every shared library they
need from the same suite, C library and dynamic loader included, so that they run alike
on any Linux machine whatever libraries it has (clients/debian.py fetches and checks
them). They are unpacked into a cache,

    $XDG_CACHE_HOME/xed/igt/<suite>-<arch>/root-<version>/   (~/.cache/xed/... without it)

once, and from then on run without a network: each through that suite's own loader
(`ld-linux... --library-path ... xe_mmap`) under `xec run`, so that the preload library
is what it finds at /dev/dri.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from protocols.cli import EX_NOPERM, EX_USAGE

from . import debian
from .daemon import daemon_at
from .preload import cache_dir
from .run import run

SUITE = "sid"
# the test programs, and the package of libigt.so they link (no library by its name)
ROOTS = ("igt-gpu-tools-tests", "igt-gpu-tools")
# The preload library stands in for /dev/dri, debugfs and the host settings IGT
# changes as root (the console's binding to its virtual terminal, ftrace_dump_on_oops
# and, in xe_vm, dropping the page cache: clients/preload/debugfs.c). Run as root,
# IGT also writes its progress to the host's kernel log (/dev/kmsg), and some xe tests
# load and unload kernel modules, suspend the machine or write other sysfs files: on a
# machine with a real Intel GPU that is the real one. These tests were seen, traced
# under the library (strace of every open for writing), to do nothing to the host as
# root but those kernel log lines; any other needs --as-root.
# The DRM core's fence tests run too: they load sw_sync with libkmod first, and the
# library hides the kernel's modules, so nothing is loaded.
SAFE_AS_ROOT = frozenset(
    {
        "xe_mmap", "xe_prime_self_import", "xe_create", "xe_exec_basic", "xe_waitfence",
        "xe_exec_compute_mode", "xe_query", "xe_exec_balancer", "xe_vm", "xe_exec_atomic",
        "xe_exec_queue_property", "xe_evict", "xe_exec_fault_mode", "xe_exec_mix_modes",
        "xe_dma_buf_sync", "xe_spin_batch", "xe_exec_store", "xe_exec_reset",
        "sw_sync", "syncobj_basic", "syncobj_wait", "syncobj_timeline", "syncobj_eventfd",
    }
)  # fmt: skip
# tests of the DRM core (not xe's) that xed runs: syncobjs, sync files, sw_sync
CORE_TESTS = ("sw_sync", "syncobj_basic", "syncobj_eventfd", "syncobj_timeline", "syncobj_wait")
# uname -m -> (Debian's architecture, the loader's name, the multiarch directory)
_ARCHES = {
    "x86_64": ("amd64", "ld-linux-x86-64.so.2", "x86_64-linux-gnu"),
    "aarch64": ("arm64", "ld-linux-aarch64.so.1", "aarch64-linux-gnu"),
}


@attrs.frozen
class Install:
    """IGT unpacked with its libraries, ready to run."""

    root: Path
    version: str  # igt-gpu-tools-tests' Debian version
    suite: str
    multiarch: str
    loader_name: str

    @property
    def tests(self) -> Path:
        return self.root / "usr" / "libexec" / "igt-gpu-tools"

    @property
    def loader(self) -> Path:
        return self.root / "usr" / "lib" / self.multiarch / self.loader_name

    @property
    def library_path(self) -> str:
        lib = self.root / "usr" / "lib" / self.multiarch
        return f"{lib}:{self.root / 'lib' / self.multiarch}"

    def command(self, test: str, args: Sequence[str] = ()) -> list[str]:
        """The command line running `test` with IGT's own libraries."""
        program = str(self.tests / test)
        return [str(self.loader), "--library-path", self.library_path, program, *args]

    def xe_tests(self) -> list[str]:
        """IGT's xe tests, and the DRM core's that xed answers (CORE_TESTS)."""
        xe = sorted(p.name for p in self.tests.glob("xe_*") if p.is_file())
        return xe + [name for name in CORE_TESTS if (self.tests / name).is_file()]


def _arch() -> tuple[str, str, str]:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise debian.ArchiveError(
            f"IGT runs here on {' or '.join(_ARCHES)} only, not {machine}", debian.EX_UNAVAILABLE
        )
    return _ARCHES[machine]


def _is_library(name: str) -> bool:
    """What an IGT test needs at run time: shared libraries (and their data packages),
    not the tools, interpreters and data sets some of them also depend on."""
    return name.startswith("lib") or name == "zlib1g"


@contextlib.contextmanager
def _locked(where: Path) -> Iterator[None]:
    """One fetch at a time per cache (test workers, two shells)."""
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch(
    mirror: str = debian.MIRROR, suite: str = SUITE, refresh: bool = False, verify: bool = True
) -> Install:
    """IGT's tests and libraries, unpacked: the cached ones unless `refresh` (or none
    are cached yet), else fetched, checked and unpacked now. ArchiveError if that
    cannot be done (its status says why)."""
    arch, loader_name, multiarch = _arch()
    where = cache_dir() / "igt" / f"{suite}-{arch}"
    record = where / "installed.json"
    with _locked(where):
        if record.exists() and not refresh:
            kept = json.loads(record.read_text())
            install = Install(where / kept["root"], kept["version"], suite, multiarch,
                              loader_name)  # fmt: skip
            if install.loader.exists():
                return install
        _say(f"reading the {suite} package index of {mirror} ({arch})")
        index = debian.fetch_index(mirror, suite, arch, verify)
        packages = debian.closure(index, ROOTS, _is_library)
        megabytes = sum(p.size for p in packages) / 1e6
        version = index[ROOTS[0]].version
        _say(f"IGT {version}: {len(packages)} packages, {megabytes:.1f} MB")
        fresh = where / f"root-{version}.partial"
        if fresh.exists():
            shutil.rmtree(fresh)
        fresh.mkdir()
        for package in packages:
            data = debian.fetch_package(mirror, package, where / "debs")
            debian.unpack_deb(data, fresh)
        root = where / f"root-{version}"
        if root.exists():
            shutil.rmtree(root)
        fresh.rename(root)
        record.write_text(json.dumps({"root": root.name, "version": version}) + "\n")
        _say(f"IGT {version} unpacked in {root}")
        return Install(root, version, suite, multiarch, loader_name)


def _say(text: str) -> None:
    print(f"xec igt: {text}", file=sys.stderr, flush=True)


# --- the commands -----------------------------------------------------------------------
def cmd_fetch(mirror: str, refresh: bool, verify: bool, as_json: bool) -> int:
    try:
        install = fetch(mirror, refresh=refresh, verify=verify)
    except debian.ArchiveError as exc:
        _say(str(exc))
        return exc.status
    if as_json:
        print(json.dumps({"version": install.version, "root": str(install.root),
                          "tests": install.xe_tests()}))  # fmt: skip
    else:
        print(f"IGT {install.version} ({install.suite}) in {install.root}")
    return 0


def cmd_list(as_json: bool) -> int:
    try:
        install = fetch()
    except debian.ArchiveError as exc:
        _say(str(exc))
        return exc.status
    tests = install.xe_tests()
    print(json.dumps(tests) if as_json else "\n".join(tests))
    return 0


def refused_as_root(test: str, euid: int, as_root: bool) -> str | None:
    """Why `test` is not run for this user (None: it is run)."""
    if euid != 0 or test in SAFE_AS_ROOT or as_root:
        return None
    return (
        f"not running {test} as root: IGT as root may load kernel modules, suspend or "
        "write sysfs on this machine, which the preload library does not stand in for. "
        f"Run it as another user, or pass --as-root (harmless as root: "
        f"{', '.join(sorted(SAFE_AS_ROOT))})"
    )


def cmd_run(
    socket: Path | None, node: str | None, test: str, args: Sequence[str], as_root: bool = False
) -> int:
    """Run IGT test `test` with `args` under the preload library against the daemon at
    `socket` (None: a daemon of its own). Its exit status: IGT's own (0 every subtest
    passed, 77 skipped, 98 one failed), or ours (2 no such test, 69 ..., 77 a test
    not known to be harmless to the host, as root, without `as_root`)."""
    if not test or "/" in test or test.startswith("."):
        _say(f"{test!r} is no IGT test name (xec igt list shows them)")
        return EX_USAGE
    try:
        install = fetch()
    except debian.ArchiveError as exc:
        _say(str(exc))
        return exc.status
    if not (install.tests / test).is_file():
        _say(f"IGT {install.version} has no test {test} (xec igt list shows them)")
        return EX_USAGE
    refusal = refused_as_root(test, os.geteuid(), as_root)
    if refusal:
        _say(refusal)
        return EX_NOPERM
    with daemon_at(socket) as (path, _daemon):
        return run(install.command(test, args), path, node)
