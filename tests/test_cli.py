"""The command lines as a user meets them: which socket (`--socket`, else $XED_SOCKET,
else the default), how long they wait, their exit statuses (sysexits) and messages (no
traceback for a user's mistake), Ctrl-C, `--json`, `--help` and `--version`.

Every command runs as a process of its own; the ones that must run as another uid are
forked from the test process (the interpreter may live where uid 65534 cannot run it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, spawn_client

import clients.cli
import xed.cli
from clients import DaemonGone, Device, exits
from clients.daemon import DaemonFailed, DaemonProcess
from protocols.cli import DEFAULT_TIMEOUT, HelpFormatter, connect_timeout, socket_path

NOBODY = 65534
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
for _name in ("XED_SOCKET", "XED_TIMEOUT", "XDG_RUNTIME_DIR", "NOTIFY_SOCKET"):
    ENV.pop(_name, None)


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`xed ...` or `xec ...` as a user runs it, in a process of its own."""
    module = {"xed": "xed", "xec": "clients"}[argv[0]]
    return subprocess.run(
        [sys.executable, "-m", module, *argv[1:]],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env or ENV,
    )  # fmt: skip


@pytest.fixture
def mute(tmp_path: Path) -> Iterator[Path]:
    """A socket that listens and never accepts nor answers: a service stuck starting."""
    path = tmp_path / "mute.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    sock.listen(64)
    yield path
    sock.close()


# --- which socket -----------------------------------------------------------------------------
def test_socket_rule_is_option_then_environment_then_default() -> None:
    """socket_path(): the given path, else $XED_SOCKET, else the runtime dir, else /run."""
    env = {"XED_SOCKET": "/e/x.sock", "XDG_RUNTIME_DIR": "/rt"}
    assert socket_path("/given.sock", env) == Path("/given.sock")
    assert socket_path(None, env) == Path("/e/x.sock")
    assert socket_path(None, {"XDG_RUNTIME_DIR": "/rt"}) == Path("/rt/xed/xed.sock")
    assert socket_path(None, {}) == Path("/run/xed/xed.sock")


def test_serve_and_ctl_honour_xed_socket_over_the_runtime_dir(tmp_path: Path) -> None:
    """With XDG_RUNTIME_DIR set, `xed serve` listens at $XED_SOCKET and `xed ctl` finds it
    there; `--socket` beats $XED_SOCKET."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    path = tmp_path / "elsewhere.sock"
    env = dict(ENV, XDG_RUNTIME_DIR=str(runtime), XED_SOCKET=str(path))
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        with open(tmp_path / "daemon.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xed", "serve"], stderr=log, cwd=ROOT,
                env=dict(env, NOTIFY_SOCKET=str(notify_path)),
            )  # fmt: skip
        try:
            while "READY=1" not in notify.recv(4096).decode().split("\n"):
                pass
            assert path.is_socket() and not (runtime / "xed").exists()
            done = run("xed", "ctl", "status", "--json", env=env)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["pid"] == proc.pid
            wrong = dict(env, XED_SOCKET=str(tmp_path / "nobody.sock"))
            done = run("xed", "ctl", "--socket", str(path), "status", "--json", env=wrong)
            assert json.loads(done.stdout)["pid"] == proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


# --- timeouts ---------------------------------------------------------------------------------
def test_timeout_rule_and_a_bad_value() -> None:
    """connect_timeout(): --timeout, else $XED_TIMEOUT, else the default; a bad value is
    refused naming where it came from, and `xec` exits 2 for it."""
    assert connect_timeout(None, {}) == DEFAULT_TIMEOUT
    assert connect_timeout(None, {"XED_TIMEOUT": "0.5"}) == 0.5
    assert connect_timeout(2.0, {"XED_TIMEOUT": "0.5"}) == 2.0
    with pytest.raises(ValueError, match=r"\$XED_TIMEOUT must be a number"):
        connect_timeout(None, {"XED_TIMEOUT": "soon"})
    done = run("xec", "debug", "attach", "1", env=dict(ENV, XED_TIMEOUT="soon"))
    assert done.returncode == 2 and "$XED_TIMEOUT must be a number" in done.stderr


def test_ctl_gives_up_on_a_daemon_that_never_answers(mute: Path) -> None:
    """`xed ctl` against a listener that never answers HELLO exits 69 after --timeout,
    saying what to check (it used to wait forever)."""
    done = run("xed", "ctl", "--socket", str(mute), "--timeout", "0.5", "status", timeout=60)
    assert done.returncode == 69, done.stderr
    assert f"xed ctl: cannot connect to {mute}: no answer from the daemon in 0.5 s" in done.stderr
    assert "systemctl status xed" in done.stderr


def test_device_open_times_out_with_the_path(mute: Path) -> None:
    """Device.open() on a daemon that never answers raises TimeoutError (ETIMEDOUT)
    naming the socket, after $XED_TIMEOUT seconds or the timeout given; a listener whose
    backlog stays full times out the same way (a blocking connect would hang)."""
    probe = textwrap.dedent(
        """
        import json, socket, sys
        from clients import Device
        seen = []
        for path, timeout in ((sys.argv[1], None), (sys.argv[1], 0.2), (sys.argv[2], 0.2)):
            try:
                Device.open(path, timeout=timeout)
            except OSError as exc:
                seen.append([type(exc).__name__, exc.errno, exc.filename, exc.strerror])
        print(json.dumps(seen))
        """
    )
    full = mute.parent / "full.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(full))
    listener.listen(0)
    queued = []
    with contextlib.ExitStack() as stack:
        stack.callback(listener.close)
        while True:  # fill its backlog
            client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            stack.callback(client.close)
            client.setblocking(False)
            try:
                client.connect(str(full))
            except BlockingIOError:
                break
            queued.append(client)
        done = subprocess.run(
            [sys.executable, "-c", probe, str(mute), str(full)], capture_output=True,
            text=True, timeout=60, cwd=ROOT, env=dict(ENV, XED_TIMEOUT="0.3"),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert [s[:3] for s in seen] == [
        ["TimeoutError", errno.ETIMEDOUT, str(mute)],
        ["TimeoutError", errno.ETIMEDOUT, str(mute)],
        ["TimeoutError", errno.ETIMEDOUT, str(full)],
    ]
    assert "no answer from the daemon in 0.3 s" in seen[0][3]
    assert "systemctl status xed" in seen[2][3]


# --- exit statuses and messages ---------------------------------------------------------------
NOPE_COMMANDS = [
    ["xec", "bench", "rtt"],
    ["xec", "bench", "mmap"],
    ["xec", "bench", "barrier"],
    ["xec", "bench", "rdma"],
    ["xec", "bench", "stalls"],
    ["xec", "load", "barrier"],
    ["xec", "scenario", "run", "isolation"],
    ["xec", "debug", "attach", "1"],
    ["xed", "ctl", "status"],
]


@pytest.mark.parametrize("argv", NOPE_COMMANDS, ids=lambda a: " ".join(a[:3]))
def test_no_daemon_at_the_socket_is_69_with_the_path(argv: list[str], tmp_path: Path) -> None:
    """Each command given a socket nobody serves exits 69 at once, naming the socket and
    what to check; no traceback (bench rdma used to wait 30 s and blame READY=1)."""
    path = tmp_path / "nope.sock"
    where = ["--socket", str(path)]
    argv = [*argv[:2], *where, *argv[2:]] if argv[0] == "xed" else [*argv, *where]
    done = run(*argv, timeout=60)
    assert done.returncode == 69, done.stdout + done.stderr
    assert f"{path}: No such file or directory (no daemon listens there" in done.stderr
    assert "systemctl status xed" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def as_nobody(argv: list[str], main: Any, cwd: Path) -> tuple[int, str]:
    """Run `main(argv)` in a child forked from this process that drops to uid 65534;
    its exit status and stderr."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as uid 65534")
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 70
        try:
            os.dup2(err_w, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            status = main(argv)
        except BaseException as exc:  # the test sees it on stderr
            print(f"child: {exc!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(err_w)
    with os.fdopen(err_r) as err:
        text = err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory uid 65534 may enter and write in (tmp_path's parents are root's)."""
    path = Path(tempfile.mkdtemp(prefix="xed-cli-"))
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_not_in_the_group_is_77_saying_who_may_connect(open_dir: Path) -> None:
    """A uid the socket's mode shuts out exits 77 (EX_NOPERM) with a message saying who
    may connect (the socket's group) and how to join it."""
    with DaemonProcess(socket_path=open_dir / "xed.sock", log_path=open_dir / "d.log") as d:
        status, err = as_nobody(
            ["debug", "attach", "1", "--socket", str(d.socket_path)], clients.cli.main, open_dir
        )
    assert status == 77, err
    assert f"{d.socket_path}: permission denied: only root and members of the group" in err
    assert "usermod -aG" in err and "Traceback" not in err


def test_ib_serve_refused_the_aux_role_is_77_in_one_line(open_dir: Path) -> None:
    """`xec ib serve` as a uid the daemon does not allow the aux role: exit 77 and one
    line saying who may be an aux driver (it was a 43-line exception group, then 69)."""
    with DaemonProcess(socket_path=open_dir / "xed.sock", log_path=open_dir / "d.log") as d:
        d.socket_path.chmod(0o666)  # nobody may connect; the role is what is refused
        verbs = open_dir / "verbs.sock"
        argv = ["ib", "serve", "--socket", str(verbs), "--daemon", str(d.socket_path)]
        status, err = as_nobody(argv, clients.cli.main, open_dir)
    assert status == 77, err
    lines = [line for line in err.splitlines() if not line.startswith("{")]  # its JSON log
    assert lines == [
        f"xec ib serve: the daemon at {d.socket_path} refuses this uid ({NOBODY}) the aux "
        "role: only root, the daemon's own uid and [aux] allowed_uids/allowed_gids of its "
        "configuration may be an auxiliary driver (this uid may not be an auxiliary driver "
        "([aux]))"
    ], err


# --- Ctrl-C -----------------------------------------------------------------------------------
def _interrupt_when(proc: subprocess.Popen[str], marker: str) -> str:
    """Wait for `marker` on the command's stderr, then Ctrl-C its whole process group as
    a terminal does; the rest of its stderr."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    else:
        raise AssertionError("the command ended first:\n" + "".join(seen))
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, rest = proc.communicate(timeout=60)
    finally:  # never leave the group behind, whatever failed
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return "".join(seen) + rest


def _group_left(pgid: int) -> list[int]:
    """Processes still alive (not zombies) in process group `pgid`."""
    left = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    left.append(int(name))
    return left


def _start_in_own_group(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clients", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV, start_new_session=True,
    )  # fmt: skip


def test_ctrl_c_in_scenario_run_is_130_without_traceback(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) during `xec scenario run`: exit 130, one
    line, no traceback, no worker or daemon left (it could exit 1 with a traceback: an
    interrupt that arrived inside trio's nursery came as an exception group)."""
    path = tmp_path / "wait.toml"
    path.write_text(
        textwrap.dedent(
            """
            timeout = 300
            [[process]]
            name = "a"
            steps = [{ do = "version" }, { do = "sync_point", name = "never" }]
            [[process]]
            name = "b"
            steps = [{ do = "recv", from = "a", timeout = 300 }]
            """
        )
    )
    with _start_in_own_group("scenario", "run", str(path)) as proc:
        err = _interrupt_when(proc, "started 2 processes")
    assert proc.returncode == 130, err
    assert err.strip().endswith("xec scenario run: interrupted") and "Traceback" not in err, err
    assert _group_left(proc.pid) == []


def test_ctrl_c_in_load_barrier_is_130_without_traceback() -> None:
    """Ctrl-C to the whole group during `xec load barrier`: exit 130 and no traceback
    from any writer (there was one per writer)."""
    with _start_in_own_group("load", "barrier", "--clients", "3", "--seconds", "60") as proc:
        err = _interrupt_when(proc, "barriers counted")
    assert proc.returncode == 130, err
    assert err.strip().endswith("xec load barrier: interrupted") and "Traceback" not in err, err
    assert _group_left(proc.pid) == []


# --- --json -----------------------------------------------------------------------------------
def test_ctl_actions_answer_json_with_json(fresh_daemon: DaemonProcess) -> None:
    """`xed ctl unplug|replug|log-level --json` print JSON (they ignored --json)."""
    where = ["xed", "ctl", "--socket", str(fresh_daemon.socket_path)]
    documents = []
    for action in (["unplug"], ["replug"], ["log-level", "debug"]):
        done = run(*where, *action, "--json")
        assert done.returncode == 0, done.stderr
        documents.append(json.loads(done.stdout))
    assert documents == [{"unplugged": True}, {"unplugged": False}, {"log_level": "debug"}]
    done = run(*where, "replug")  # not unplugged: refused, in words
    assert done.returncode == 1
    assert done.stderr.startswith("xed ctl: ADMIN_REPLUG: EALREADY")


def test_bench_json_is_one_document_and_progress_is_on_stderr() -> None:
    """`xec bench rtt --json`: stdout is one JSON document of the figures; the text and
    the progress (round by round) go to stderr."""
    done = run("xec", "bench", "rtt", "--rounds", "2", "--per-round", "50", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["round_trips"] == 100 and result["ratio"] > 0
    assert result["design_floor"] > 0 and result["over_floor"] > 0
    assert set(result["rows"]) == {
        "daemon VERSION ioctl", "raw seqpacket echo", "same echo in trio", "msgpack floor",
        "design floor", "same ioctl from C", "same echo from C",
    }  # fmt: skip
    assert "round 2/2" in done.stderr and "ratio:" in done.stderr
    assert "over floor:" in done.stderr


def test_load_json_counts_every_barrier() -> None:
    """`xec load barrier --json`: one document, one run per writer count, nothing lost."""
    done = run("xec", "load", "barrier", "--sweep", "1,2", "--seconds", "0.3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [r["clients"] for r in result["runs"]] == [1, 2]
    assert result["lost"] == 0 and all(len(r["rows"]) == r["clients"] for r in result["runs"])
    assert done.stderr.count("barriers counted") >= 2  # progress in a sweep too


def test_scenario_json_for_run_check_and_list(fresh_daemon: DaemonProcess, tmp_path: Path) -> None:
    """`xec scenario run|check|list --json` each print one JSON document."""
    where = ["--socket", str(fresh_daemon.socket_path)]
    done = run("xec", "scenario", "run", "isolation", *where, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["scenario"] == "isolation"
    assert [p["label"] for p in result["processes"]] == ["alice", "bob"]
    assert all(p["failed"] == 0 and p["passed"] == p["total"] for p in result["processes"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[process]]\nname = "a"\nsteps = [{ do = "creat", bo = "x" }]\n')
    done = run("xec", "scenario", "check", str(bad), "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout) == {
        "file": str(bad), "ok": False,
        "problems": ["process 'a', step 1: unknown step 'creat' (did you mean 'create'?)"],
    }  # fmt: skip
    done = run("xec", "scenario", "list", "--json")
    assert "isolation" in [entry["name"] for entry in json.loads(done.stdout)]


def test_debug_attach_json(fresh_daemon: DaemonProcess) -> None:
    """`xec debug attach PID --dump ... --json`: the VMs and the bytes as one document."""
    target = spawn_client(
        fresh_daemon.socket_path,
        """
        vm = dev.vm_create()
        bo = dev.gem_create(4096)
        dev.mmap_bo(bo)[0:4] = b"xed!"
        dev.vm_bind(vm, bo, 0x1_0000_0000)
        print(json.dumps([dev.client_id, vm]), flush=True)
        sys.stdin.readline()
        """,
    )
    try:
        assert target.stdout is not None
        client_id, vm = json.loads(target.stdout.readline())
        done = run(
            "xec", "debug", "attach", str(target.pid), "--socket", str(fresh_daemon.socket_path),
            "--dump", f"{client_id}:{vm}:0x100000000:4", "--json",
        )  # fmt: skip
    finally:
        target.communicate("\n", timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["pid"] == target.pid
    assert [(v["client_id"], v["vm_id"]) for v in result["vms"]] == [(client_id, vm)]
    assert result["dumps"] == [
        {"client_id": client_id, "vm_id": vm, "addr": 0x1_0000_0000, "hex": b"xed!".hex()}
    ]


# --- --help and --version ---------------------------------------------------------------------
def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("prog", ["xed", "xec"])
def test_every_option_has_help_and_shows_its_default(prog: str) -> None:
    """Every option and argument of every command says what it is; each with a default
    shows it (a switch's default is its absence: not shown), none shows `default: None`;
    no "(more as features land)"."""
    build = {"xed": xed.cli, "xec": clients.cli}[prog].build_parser
    for parser in _parsers(build()):
        assert parser.formatter_class is HelpFormatter, parser.prog
        text = parser.format_help()
        assert "default: None" not in text and "as features land" not in text, text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # each command says what it does
                assert all(choice.help for choice in action._choices_actions), parser.prog
                continue
            assert action.help, f"{parser.prog}: {action.dest} has no help"
            shown = HelpFormatter(parser.prog)._get_help_string(action) or ""
            switch = action.nargs == 0  # its default is its absence: nothing to show
            valued = action.default not in (None, False, [], argparse.SUPPRESS)
            if valued and action.option_strings and not switch:
                assert "default" in shown, f"{parser.prog} {action.option_strings}: {shown}"
            if switch:
                assert "(default:" not in shown, f"{parser.prog} {action.option_strings}: {shown}"


def test_help_shows_defaults_in_a_real_process() -> None:
    """`xec bench rtt --help` and `xed serve --help` print the defaults of their options."""
    done = run("xec", "bench", "rtt", "--help")
    assert done.returncode == 0
    assert re.search(r"--rounds ROUNDS\s+interleaved rounds \(default: 10\)", done.stdout)
    done = run("xed", "serve", "--help")
    assert "(default: 2.0)" in done.stdout and "$XED_SOCKET" in done.stdout


@pytest.mark.parametrize("prog", ["xed", "xec"])
def test_version(prog: str) -> None:
    """`xed --version` and `xec --version` print the version and the protocol's, exit 0."""
    done = run(prog, "--version")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"{prog} \S+ \(protocol \d+\.\d+\)\n", done.stdout), done.stdout


def test_a_daemon_that_exits_at_start_is_reported_at_once(tmp_path: Path) -> None:
    """DaemonProcess.start() of a daemon that exits (a bad configuration) fails at once
    with its exit status and its last words, not after waiting 30 s for READY=1."""
    config = tmp_path / "bad.toml"
    config.write_text("[device]\nva_bits = 9\n")
    daemon = DaemonProcess(socket_path=tmp_path / "x.sock", config=config, ready_timeout=600)
    with pytest.raises(DaemonFailed) as failed:
        daemon.start()
    daemon.cleanup()
    assert failed.value.status == 78
    assert str(failed.value).startswith("the xed daemon exited with status 78 before it was ready")
    assert "va_bits must be between 32 and 57" in str(failed.value)


def test_daemon_gone_names_its_socket(make_daemon: Any) -> None:
    """A daemon that dies under a connection: DaemonGone names the socket it was at."""
    daemon = make_daemon()
    with Device.open(daemon.socket_path) as dev:
        daemon.proc.kill()
        daemon.proc.wait()
        with pytest.raises(DaemonGone, match=f"the daemon at {re.escape(str(daemon.socket_path))}"):
            dev.version()


def test_reported_unwraps_exception_groups_and_lets_bugs_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C inside a trio nursery arrives as an exception group: still 130 and one
    line (the race that made `xec scenario run` exit 1 with a traceback); a group of a
    user's failures is its first; anything else is a bug and raises."""

    def raising(exc: BaseException) -> Any:
        def command() -> int:
            raise exc

        return command

    interrupted = BaseExceptionGroup("nursery", [KeyboardInterrupt(), DaemonGone("gone")])
    assert exits.reported("xec x", raising(interrupted)) == 130
    unreachable = OSError(errno.ECONNREFUSED, "Connection refused (...)", "/s.sock")
    assert exits.reported("xec x", raising(ExceptionGroup("n", [unreachable]))) == 69
    assert capsys.readouterr().err.splitlines() == [
        "xec x: interrupted",
        "xec x: /s.sock: Connection refused (...)",
    ]
    with pytest.raises(ExceptionGroup):
        exits.reported("xec x", raising(ExceptionGroup("n", [unreachable, RuntimeError()])))
    with pytest.raises(OSError):  # no file named: not the user's, ours
        exits.reported("xec x", raising(OSError(errno.EBADF, "Bad file descriptor")))
