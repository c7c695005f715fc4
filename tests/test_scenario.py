"""Scenario files: `xec scenario run|check|list` with real daemon, aux driver and worker
processes, and the checks that refuse a malformed file before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clients.daemon import DaemonProcess
from clients.scenario import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.toml"))


def xec(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `xec` as a user would, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "clients", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def table_row(output: str, label: str) -> str:
    (row,) = [line for line in output.splitlines() if line.split()[:1] == [label]]
    return row


def test_the_shipped_scenarios_are_the_seven_of_the_issue() -> None:
    """Barrier load, MMIO isolation, dma-buf ring, VM export, debugger, unplug, isolation."""
    assert SHIPPED_NAMES == [
        "barrier_load",
        "debugger_userptr",
        "dma_buf_ring",
        "isolation",
        "mmio_isolation",
        "unplug_under_load",
        "vm_export_rdma",
    ]


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_scenario_runs_green(name: str, fresh_daemon: DaemonProcess) -> None:
    """Every shipped scenario meets all its expectations (exit 0, no failed step)."""
    done = xec("scenario", "run", name, "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all expectations met" in done.stdout
    header = done.stdout.index("first failure")
    rows = done.stdout[header:].splitlines()[1:-1]
    assert rows and all(row.split()[3] == "0" for row in rows), done.stdout


def test_barrier_load_counts_are_exact_per_process(fresh_daemon: DaemonProcess) -> None:
    """Eight writers of 10 000 barriers: each passes its own exact-count check."""
    done = xec("scenario", "run", "barrier_load", "--socket", str(fresh_daemon.socket_path))
    for i in range(8):
        assert table_row(done.stdout, f"writer.{i}").split()[2:4] == ["1/1", "0"]


def test_run_starts_its_own_daemon_and_aux_driver() -> None:
    """Without --socket, run starts a daemon and (for role ib) the aux driver itself."""
    done = xec("scenario", "run", "vm_export_rdma")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started a daemon" in done.stderr  # progress, on stderr
    assert "started the IB-like aux driver 'ib'" in done.stderr


def test_wrong_expectation_exits_nonzero_naming_the_step(
    tmp_path: Path, fresh_daemon: DaemonProcess
) -> None:
    """A step expected to fail with ENOENT that fails with EACCES: exit 1, the row says so."""
    text = (SHIPPED / "isolation.toml").read_text()
    replay = 'offset = "secret.offset"\nsize = 65536\nexpect = "EACCES"'
    assert replay in text
    path = write(tmp_path, text.replace(replay, replay.replace("EACCES", "ENOENT")))
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 1
    assert "step 2 (mmap): expected ENOENT, got EACCES" in table_row(done.stdout, "bob")
    assert table_row(done.stdout, "alice").split()[2:4] == ["8/8", "0"]


def test_wrong_data_names_expected_and_got(tmp_path: Path, fresh_daemon: DaemonProcess) -> None:
    """A read comparing other bytes than the ones written shows both in the table."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "a"
        steps = [
          { do = "create", bo = "b" },
          { do = "map", bo = "b" },
          { do = "write", map = "b", data = "real" },
          { do = "read", map = "b", data = "fake" },
          { do = "read", map = "b", u32 = 0x6C616572 },
        ]
        """,
    )
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 1
    row = table_row(done.stdout, "a")
    assert row.split()[2:4] == ["4/5", "1"]
    assert "step 4 (read): expected 'fake', got 'real'" in row


def test_peer_that_leaves_gives_eof_not_a_hang(tmp_path: Path, fresh_daemon: DaemonProcess) -> None:
    """A recv from a peer that finished without sending fails at once with end of file."""
    path = write(
        tmp_path,
        """
        timeout = 30
        [[process]]
        name = "quiet"
        steps = [{ do = "version" }]
        [[process]]
        name = "waiting"
        steps = [{ do = "recv", from = "quiet" }]
        """,
    )
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 1
    assert "quiet has gone" in table_row(done.stdout, "waiting")


def test_sync_point_waits_for_every_running_process(
    tmp_path: Path, fresh_daemon: DaemonProcess
) -> None:
    """A sync point lets nobody on before all reach it: the reader sees the writer's bytes."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "owner"
        steps = [
          { do = "create", bo = "b" },
          { do = "export", bo = "b", fd = "fd" },
          { do = "send", to = "other", fd = "fd" },
          { do = "map", bo = "b" },
          { do = "sync_point", name = "written" },
          { do = "read", map = "b", data = "from the other side" },
        ]
        [[process]]
        name = "other"
        steps = [
          { do = "recv", from = "owner" },
          { do = "barrier", count = 20000 },
          { do = "dmabuf_map", fd = "fd" },
          { do = "write", map = "fd", data = "from the other side" },
          { do = "sync_point", name = "written" },
        ]
        """,
    )
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_reports_malformed_steps_with_positions(tmp_path: Path) -> None:
    """check lists every bad step by process and position, and exits 2 without running."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "a"
        steps = [
          { do = "create", bo = "x" },
          { do = "frobnicate" },
          { do = "write", map = "x", ofset = 4, data = "hi" },
          { do = "map", bo = "x", expect = "EWHATEVER" },
          { do = "exec", vm = "v", batch = 0, ops = [{ op = "jump", addr = 1 }] },
          { do = "create", size = "big" },
          { do = "unplug" },
        ]
        """,
    )
    done = xec("scenario", "check", str(path))
    assert done.returncode == 2
    err = done.stderr
    assert "process 'a', step 2: unknown step 'frobnicate'" in err
    assert "process 'a', step 3 (write): unknown field 'ofset'" in err
    assert "process 'a', step 4 (map): expect must be 'success' or an errno name" in err
    assert "process 'a', step 5 (exec): field 'ops' instruction 1" in err
    assert "process 'a', step 6 (create): missing field 'bo'" in err
    assert "process 'a', step 6 (create): field 'size' has a bad placeholder or number" in err
    assert "process 'a', step 7 (unplug): not a step a process of role 'app' can run" in err
    assert "step 1" not in err


def test_check_reports_bad_peers_and_missing_aux_driver(tmp_path: Path) -> None:
    """A ring of one, an unknown peer and ib_open without an ib process are refused."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "a"
        steps = [
          { do = "send", to = "next" },
          { do = "recv", from = "nobody" },
          { do = "ib_open", fd = "vm" },
        ]
        """,
    )
    done = xec("scenario", "check", str(path))
    assert done.returncode == 2
    assert "process 'a', step 1 (send): 'next' needs count >= 2" in done.stderr
    assert "process 'a', step 2 (recv): no process instance named 'nobody'" in done.stderr
    assert "process 'a', step 3 (ib_open): no process has role 'ib'" in done.stderr


def test_check_reports_invalid_toml_with_line_and_column(tmp_path: Path) -> None:
    """A file that is not TOML: the parser's line and column, exit 2."""
    path = write(tmp_path, 'name = "x"\n[[process]\n')
    done = xec("scenario", "check", str(path))
    assert done.returncode == 2
    assert "invalid TOML" in done.stderr and "line 2" in done.stderr


def test_check_accepts_the_debugger_role_and_places_its_bad_steps(tmp_path: Path) -> None:
    """Role debugger checks now; its malformed steps are listed by process and position."""
    good = write(
        tmp_path,
        """
        [[process]]
        name = "app"
        steps = [{ do = "host_memory", host = "h" }, { do = "send", to = "dbg", value = "pid" }]
        [[process]]
        name = "dbg"
        role = "debugger"
        steps = [{ do = "recv", from = "app" }, { do = "attach", target = "app" }]
        """,
        name="good.toml",
    )
    done = xec("scenario", "check", str(good))
    assert done.returncode == 0, done.stderr
    assert ": ok (2 processes, 4 steps, 1 socket pairs)" in done.stdout
    bad = write(
        tmp_path,
        """
        [[process]]
        name = "app"
        steps = [{ do = "attach", target = "dbg" }]
        [[process]]
        name = "dbg"
        role = "debugger"
        steps = [
          { do = "attach", target = "app" },
          { do = "create", bo = "b" },
          { do = "events", kinds = ["bind", "frobbed"] },
          { do = "events", kinds = [] },
          { do = "debug_read", client_id = 1, vm = 1, addr = 0, data = "x", length = 1 },
          { do = "debug_write", client_id = 1, addr = 0, data = "x" },
          { do = "detach", target = "app", expect = "ENOPE" },
        ]
        """,
        name="bad.toml",
    )
    done = xec("scenario", "check", str(bad))
    assert done.returncode == 2
    err = done.stderr
    assert "process 'app', step 1 (attach): not a step a process of role 'app' can run" in err
    assert "process 'dbg', step 2 (create): not a step a process of role 'debugger'" in err
    assert "process 'dbg', step 3 (events): field 'kinds' must be one of open, close" in err
    assert "process 'dbg', step 4 (events): field 'kinds' names no event" in err
    assert "step 5 (debug_read): give exactly one of data, hex, u32, u64, length" in err
    assert "process 'dbg', step 6 (debug_write): missing field 'vm'" in err
    assert "process 'dbg', step 7 (detach): expect must be 'success' or an errno name" in err
    assert "'dbg', step 1 " not in err
    targets = write(
        tmp_path,
        """
        [[process]]
        name = "dbg"
        role = "debugger"
        steps = [{ do = "attach", target = "nobody" }, { do = "detach", target = "{self}" }]
        """,
        name="targets.toml",
    )
    done = xec("scenario", "check", str(targets))
    assert done.returncode == 2
    assert "process 'dbg', step 1 (attach): no process instance named 'nobody'" in done.stderr
    assert "process 'dbg', step 2 (detach): a process cannot attach to itself" in done.stderr


def test_debugger_wrong_expectations_name_their_steps(
    tmp_path: Path, fresh_daemon: DaemonProcess
) -> None:
    """The debugger scenario with EBUSY expected as EPERM and a wrong dword: exit 1, both named."""
    text = (SHIPPED / "debugger_userptr.toml").read_text()
    for old, new in [
        ('target = "app", expect = "EBUSY"', 'target = "app", expect = "EPERM"'),
        ("0x1_0000_2100, u32 = 0xC0FFEE01", "0x1_0000_2100, u32 = 0xC0FFEE02"),
    ]:
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = write(tmp_path, text)
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 2 (attach): expected EPERM, got EBUSY" in table_row(done.stdout, "other_dbg")
    row = table_row(done.stdout, "dbg")
    assert row.split()[2:4] == ["21/22", "1"]
    assert "step 9 (debug_read): expected 0xc0ffee02, got 0xc0ffee01" in row
    assert table_row(done.stdout, "app").split()[2:4] == ["23/23", "0"]


def test_check_accepts_every_shipped_scenario() -> None:
    """check passes on each shipped file and counts its processes."""
    for name in SHIPPED_NAMES:
        done = xec("scenario", "check", name)
        assert done.returncode == 0, done.stderr
        assert ": ok (" in done.stdout


def test_list_shows_shipped_scenarios_with_descriptions() -> None:
    """list prints one line per shipped scenario, its name then its description."""
    done = xec("scenario", "list")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED_NAMES
    assert all(len(line.split()) > 3 for line in lines)


def test_run_with_a_socket_nobody_serves_exits_69(tmp_path: Path) -> None:
    """--socket naming no daemon: a message naming the socket, exit 69 (EX_UNAVAILABLE),
    no worker spawned."""
    path = tmp_path / "none.sock"
    done = xec("scenario", "run", "isolation", "--socket", str(path))
    assert done.returncode == 69, done.stderr
    assert f"{path}: No such file or directory (no daemon listens there" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_reports_every_problem_at_once_with_did_you_mean(tmp_path: Path) -> None:
    """A bad role does not hide its process's step errors; `steps` that is not a list is
    one problem (not one per character); misspelt keys, roles, steps, fields, choices and
    errno names each get a "did you mean"; the problems come in file order."""
    path = write(
        tmp_path,
        """
        nmae = "typo"
        [[process]]
        name = "a"
        role = "ap"
        steps = [
          { do = "creat", bo = "x" },
          { do = "create", bo = "buf", sise = 4096 },
          { do = "sync", fd = "f", op = "strat" },
          { do = "version", expect = "EACCESS" },
        ]
        [[process]]
        name = "b"
        coutn = 2
        steps = "not a list"
        """,
    )
    done = xec("scenario", "check", str(path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{path}: {line}"
        for line in [
            "unknown top-level key 'nmae' (did you mean 'name'?)",
            "process 'a': unknown role 'ap' (one of app, load, admin, ib, debugger) "
            "(did you mean 'app'?)",
            "process 'a', step 1: unknown step 'creat' (did you mean 'create'?)",
            "process 'a', step 2 (create): unknown field 'sise' (did you mean 'size'?)",
            "process 'a', step 3 (sync): field 'op' must be one of start, end "
            "(did you mean 'start'?)",
            "process 'a', step 4 (version): expect must be 'success' or an errno name, "
            "not 'EACCESS' (did you mean 'EACCES'?)",
            "process 'b': unknown key 'coutn' (did you mean 'count'?)",
            "process 'b': 'steps' must be a list of step tables",
        ]
    ]


def test_check_refuses_names_no_earlier_step_makes(tmp_path: Path) -> None:
    """A BO, mapping, descriptor or value no earlier step of that process makes or
    receives is a problem of the file, with the closest name it does hold; what a peer
    sends counts as received, whatever the order of the steps in the file."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "a"
        steps = [
          { do = "create", bo = "mine" },
          { do = "map", bo = "mien" },
          { do = "recv", from = "b", prefix = "b." },
          { do = "import", fd = "b.thiers", bo = "t" },
          { do = "import", fd = "b.theirs", bo = "t2", expect = "EINVAL" },
          { do = "close", bo = "t2" },
          { do = "send", to = "b", value = ["mine", "nothing", "0x10"] },
          { do = "wait" },
        ]
        [[process]]
        name = "b"
        steps = [
          { do = "create", bo = "b" },
          { do = "recv", from = "a" },
          { do = "read", map = "mine", data = "x" },
          { do = "export", bo = "b", fd = "theirs" },
          { do = "send", to = "a", fd = "theirs" },
        ]
        """,
    )
    done = xec("scenario", "check", str(path))
    assert done.returncode == 2
    bo, fd, value = "BO", "descriptor", "value"
    assert done.stderr.splitlines() == [
        f"{path}: process {line}"
        for line in [
            f"'a', step 2 (map): field 'bo': no earlier step makes or receives a {bo} named "
            "'mien' (did you mean 'mine'?)",
            f"'a', step 4 (import): field 'fd': no earlier step makes or receives a {fd} named "
            "'b.thiers' (did you mean 'b.theirs'?)",
            f"'a', step 6 (close): field 'bo': no earlier step makes or receives a {bo} named "
            "'t2' (did you mean 't'?)",
            f"'a', step 7 (send): field 'value': no earlier step makes or receives a {value} "
            "named 'nothing'",
            "'a', step 8 (wait): no exec with a fence before it",
            "'b', step 3 (read): field 'map': no earlier step makes or receives a mapping "
            "named 'mine'",
        ]
    ]


def test_run_refuses_a_bad_name_before_starting_anything(
    tmp_path: Path, fresh_daemon: DaemonProcess
) -> None:
    """`run` checks names first: a misspelt map is exit 2 with its place, and no
    process connects (it used to run and fail the step with a KeyError)."""
    path = write(
        tmp_path,
        """
        [[process]]
        name = "a"
        steps = [
          { do = "create", bo = "buf" },
          { do = "map", bo = "buf" },
          { do = "read", map = "bfu", data = "x" },
        ]
        """,
    )
    done = xec("scenario", "run", str(path), "--socket", str(fresh_daemon.socket_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "process 'a', step 3 (read): field 'map': no earlier step makes or receives a "
        "mapping named 'bfu' (did you mean 'buf'?)"
    ) in done.stderr
    assert "started" not in done.stderr and done.stdout == ""
