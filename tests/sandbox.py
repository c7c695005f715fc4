"""A throwaway systemd for tests: PID 1 of its own namespaces, on a copy-on-write overlay.

`Sandbox.boot(units, workdir)` runs the machine's /usr/lib/systemd/systemd as PID 1 of
new pid/mount/uts/ipc/cgroup namespaces, chrooted into an overlay of "/" whose writes
land in a tmpfs (with fresh tmpfs on /run and /tmp), after copying the unit files of
`units` into its /run/systemd/system. Commands run inside through nsenter; killing PID 1
ends the namespaces and everything in them, so nothing reaches the real disk.

Never boot systemd on the real root: its boot-time tmpfiles step empties /tmp.
Needs root. `unavailable()` says why a machine cannot run it, and `Sandbox.boot` raises
`SandboxUnavailable` when the namespaces or the overlay cannot be set up, so tests skip
there instead of failing; a systemd that starts but does not come up is a failure.

`xed_units(dest)` prepares the deploy/ units for such a test: ExecStart runs this test
run's Python (`-m xed serve`), everything else (socket paths, hardening) stays as shipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = Path("/usr/lib/systemd/systemd")
TARGET = "xed-sandbox.target"
# a clean environment for PID 1 and for commands run inside: nothing of pytest's leaks in
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

# Runs under `unshare`, as root of the new mount namespace: $1 the work directory (gets a
# tmpfs), $2 the unit directory, $3... directories to bind read-only at the same path
# (those not on the root file system, which the overlay of "/" would not show).
_BOOT = r"""
set -eu
base=$1; units=$2; shift 2
mount -t tmpfs -o mode=0700 xed-sandbox "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
for dir in "$@"; do
  mkdir -p "$r$dir"
  mount --rbind "$dir" "$r$dir"
  mount -o remount,bind,ro "$r$dir"
done
mkdir -p "$r/run/systemd/system"
cp -r "$units/." "$r/run/systemd/system/"
printf '[Unit]\nDescription=xed test sandbox\n' > "$r/run/systemd/system/xed-sandbox.target"
hostname xed-sandbox
echo "xed-sandbox: exec systemd" >&2
exec chroot "$r" /usr/lib/systemd/systemd --system --unit=xed-sandbox.target \
     --log-target=console --show-status=no
"""


class SandboxUnavailable(Exception):
    """This machine cannot run the sandbox (no namespaces, no overlay): skip, not fail."""


def unavailable() -> str | None:
    """Why the sandbox cannot run here, or None if it may."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} not found"
    for tool in ("unshare", "nsenter", "chroot", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _on_root_fs(path: Path) -> bool:
    return os.stat(path).st_dev == os.stat("/").st_dev


# the sandbox gets fresh, empty /tmp and /run: whatever lives there must be bound in
_REPLACED = (Path("/tmp"), Path("/run"))


def _needs_bind(path: Path) -> bool:
    """Not visible through the overlay of the root file system as it is."""
    resolved = path.resolve()
    return not _on_root_fs(resolved) or any(
        resolved == top or top in resolved.parents for top in _REPLACED
    )


class Sandbox:
    """One booted systemd; `run` executes commands inside it."""

    def __init__(self, unshare: subprocess.Popen[bytes], pid: int, log: Path) -> None:
        self._unshare = unshare
        self.pid = pid  # systemd, PID 1 inside; this is its pid outside
        self.log = log

    @classmethod
    def boot(cls, units: Path, workdir: Path, timeout: float = 20.0) -> Sandbox:
        """Boot systemd with the unit files in `units`; wait until it is running."""
        reason = unavailable()
        if reason:
            raise SandboxUnavailable(reason)
        base = Path(tempfile.mkdtemp(prefix="overlay-", dir=workdir))
        log = workdir / f"{base.name}.log"
        binds = sorted(
            {
                str(p.resolve())
                for p in (ROOT, Path(sys.prefix), Path(sys.base_prefix))
                if _needs_bind(p)
            }
        )
        with open(log, "wb") as out:
            unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
                 "--propagation", "private", "bash", "-c", _BOOT, "xed-sandbox",
                 str(base), str(units), *binds],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(ENV, container="xed-sandbox"),
            )  # fmt: skip
        sandbox: Sandbox | None = None
        try:
            pid = cls._find_systemd(unshare, log, timeout)
            sandbox = cls(unshare, pid, log)
            sandbox._wait_running(timeout)
            return sandbox
        except BaseException:
            if sandbox is not None:
                sandbox.shutdown()
            else:
                unshare.kill()
                unshare.wait()
            raise

    @staticmethod
    def _find_systemd(unshare: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
        """The pid of the namespace's PID 1 once it has become systemd."""
        children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if unshare.poll() is not None:
                text = log.read_text(errors="replace")
                if "exec systemd" not in text:
                    raise SandboxUnavailable(
                        "cannot set up the namespaces or the overlay:\n" + text[-2000:]
                    )
                raise AssertionError(f"systemd exited at once:\n{text[-4000:]}")
            try:
                pids = children.read_text().split()
                comm = Path(f"/proc/{pids[0]}/comm").read_text().strip() if pids else ""
            except OSError:
                comm = ""
            if comm == "systemd":
                return int(pids[0])
            time.sleep(0.02)
        raise AssertionError(f"no systemd after {timeout}s:\n{log.read_text()[-4000:]}")

    def _wait_running(self, timeout: float) -> None:
        state = ""

        def up() -> bool:
            nonlocal state
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        try:
            wait_until(up, timeout, "systemctl is-system-running")
        except AssertionError:
            raise AssertionError(
                f"systemd did not come up (state {state!r}):\n{self.log.read_text()[-4000:]}"
            ) from None

    # --- inside ---------------------------------------------------------------------------
    def run(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside (as root, in all of its namespaces, at its root directory)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-p", "-C", "-r", "-w", *cmd],
            input=input,
            capture_output=True,
            text=True,
            env=dict(ENV, **(env or {})),
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", "--no-pager", *args, check=check).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit (`systemctl show -p PROP --value UNIT`)."""
        return self.systemctl("show", "-p", prop, "--value", unit)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Create the file `path` inside, with its parent directories."""
        self.run("install", "-D", "-m", mode, "/dev/stdin", path, input=text)

    # --- the end ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Kill PID 1: the kernel kills everything else in the namespace with it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        try:
            self._unshare.wait(30)
        except subprocess.TimeoutExpired:
            self._unshare.kill()
            self._unshare.wait()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


# --- xed's units, made runnable from this checkout ----------------------------------------
_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))


def _under_home(path: Path) -> bool:
    return any(path == home or home in path.parents for home in _HOMES)


def home_drop_in(paths: Sequence[str]) -> list[str]:
    """The settings of deploy/xed.service.d/home.conf, its BindReadOnlyPaths= adjusted
    to `paths` as its comment tells an installer to."""
    text = (DEPLOY / "xed.service.d" / "home.conf").read_text()
    settings = [line for line in text.splitlines() if line and line[0] not in "#["]
    bind = [i for i, line in enumerate(settings) if line.startswith("BindReadOnlyPaths=")]
    assert len(bind) == 1, "home.conf: one BindReadOnlyPaths= line to adjust"
    settings[bind[0]] = "BindReadOnlyPaths=" + " ".join(paths)
    return settings


def xed_units(dest: Path, python: str = sys.executable, extra: Sequence[str] = ()) -> Path:
    """Copy deploy/'s units into `dest` with ExecStart running `python -m xed serve`
    (same arguments, same socket paths, same hardening) from this checkout.

    A drop-in per service points PYTHONPATH at the checkout and, where the interpreter
    or checkout lives under a home directory (which ProtectHome=yes hides), switches to
    ProtectHome=tmpfs with those directories bound read-only: the documented way to run
    it from there; a checkout under /tmp (which PrivateTmp=yes hides) is bound likewise.
    `extra` lines are added to that drop-in.
    """
    dest.mkdir(parents=True, exist_ok=True)
    exec_start = re.compile(r"^ExecStart=\S+ serve ", re.M)
    for unit in ("xed.socket", "xed.service", "xed@.socket", "xed@.service"):
        text = (DEPLOY / unit).read_text()
        if unit.endswith(".service"):
            text, n = exec_start.subn(f"ExecStart={python} -m xed serve ", text)
            assert n == 1, f"deploy/{unit}: no `ExecStart=... serve ...` line to rewrite"
        (dest / unit).write_text(text)
    lines = ["[Service]", f"Environment=PYTHONPATH={ROOT}"]
    needed = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT.resolve()}
    hidden = sorted(str(p) for p in needed if _under_home(p))
    if hidden:  # the shipped drop-in for interpreters under /home or /root, pointed at ours
        lines += home_drop_in(hidden)
    # PrivateTmp=yes gives the service an empty /tmp: a checkout there is bound back in
    in_tmp = sorted(str(p) for p in needed if Path("/tmp") in p.parents)
    if in_tmp:
        lines += ["BindReadOnlyPaths=" + " ".join(in_tmp)]
    lines += list(extra)
    for service in ("xed.service", "xed@.service"):
        drop_in = dest / f"{service}.d"
        drop_in.mkdir(exist_ok=True)
        (drop_in / "50-test-checkout.conf").write_text("\n".join(lines) + "\n")
    return dest
