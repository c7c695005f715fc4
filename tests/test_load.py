"""`xec load barrier` end to end: real writer processes, a real daemon, the device's own
counts against what each writer wrote. Speeds are printed, never asserted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

SESSIONS = re.compile(
    r"^sessions: tool (\d+), writers ([\d, ]+), daemon (\d+), prober (\d+), echo control (\d+)$",
    re.MULTILINE,
)


def _sessions(run: str) -> tuple[int, set[int], int, int, int]:
    found = SESSIONS.search(run)
    assert found, run
    tool, writers, daemon, prober, echo = found.groups()
    return int(tool), {int(w) for w in writers.split(", ")}, int(daemon), int(prober), int(echo)


def test_load_sweep_counts_every_barrier_for_its_own_file() -> None:
    """Each run of a sweep counts every barrier for its own file, with progress shown."""
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", "load", "barrier",
            "--sweep", "1,3", "--seconds", "0.5", "--writer-policy", "batch", "--nice", "5",
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    each, sweep = out.split("\n== sweep ==")
    runs = each.split("\n== ")[1:]
    assert [int(run.split()[0]) for run in runs] == [1, 3]
    # the sweep at a glance: both acknowledgement figures for each writer count
    table = re.findall(r"^\s+([13])\s+[\d,]+\s+\d+ us\s+\d+ us\s+\d+ us\s+\d+ us\s+0 ", sweep, re.M)
    assert table == ["1", "3"], sweep
    # a sweep shows progress as a single run does: at least a line per run, on stderr
    assert done.stderr.count("barriers counted") >= 2, done.stderr
    for run in runs:
        assert "writers at nice 5 (batch policy)" in run
        rows = re.findall(r"^\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+(\d+)$", run, re.MULTILINE)
        assert len(rows) == int(run.split()[0])
        for _client, written, counted, lost in rows:
            assert int(written.replace(",", "")) > 0
            assert written == counted and lost == "0"
        assert "lost: 0\n" in run and "counted for the wrong file: 0\n" in run
        # a barrier's acknowledgement, the prober's and the writers' own (never a time)
        for label in ("acknowledgement latency", "acknowledgement latency, writers' own samples"):
            assert re.search(rf"^{label}: p50 \d+ us, p99 \d+ us", run, re.MULTILINE), run
        # the daemon's ioctl and the raw echo control, each idle and under load
        for label in ("ioctl latency", "raw echo (control)"):
            line = rf"^{re.escape(label)}: idle p50 \d+ us / p99 \d+ us; under load p50 \d+ us"
            assert re.search(line, run, re.MULTILINE), run
        # the writers stay in the tool's session; the daemon, the prober and the echo
        # control each have one of their own, as a deployment's daemon and a separate
        # program would (the kernel's autogroup shares CPU time between sessions)
        tool, writers, daemon, prober, echo = _sessions(run)
        assert writers == {tool}
        assert len({tool, daemon, prober, echo}) == 4, run


def test_load_one_run_prints_both_acknowledgement_figures() -> None:
    """One run (--clients) prints the acknowledgement's p50 and p99 by the device's clock,
    as the prober saw it, and the writers' own; the daemon's CPU and its page watcher's
    scheduling, with every barrier counted."""
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "load", "barrier", "--clients", "2",
         "--seconds", "0.3"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    device = re.search(r"^acknowledgement latency: p50 (\d+) us, p99 (\d+) us \(the prober's "
                       r"barriers, from the store until the device read it", out, re.M)  # fmt: skip
    seen = re.search(r"^acknowledgement latency, as the prober saw it: p50 (\d+) us, "
                     r"p99 (\d+) us", out, re.M)  # fmt: skip
    assert device and seen, out
    # each barrier was read by the device before its page read 0xdeadbeef again: per
    # sample, so for every percentile, the device's figure is at most the prober's
    assert int(device[1]) <= int(seen[1]) and int(device[2]) <= int(seen[2]), out
    assert re.search(r"^acknowledgement latency, writers' own samples: p50 \d+ us", out, re.M)
    cpu = r"^daemon CPU: \d+% of one core \(its page watcher thread \d+\.\d%"
    assert re.search(cpu, out, re.M), out
    # how the kernel runs the page watcher, whatever this machine grants
    assert re.search(r"^page watcher thread: (fifo|normal|unknown)", out, re.MULTILINE), out
    assert "lost: 0\n" in out


def test_load_one_session_keeps_everyone_with_the_writers() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "clients.cli", "load", "barrier",
            "--clients", "2", "--seconds", "0.3", "--one-session",
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost: 0\n" in done.stdout
    tool, writers, daemon, prober, echo = _sessions(done.stdout)
    assert writers == {daemon} == {prober} == {echo} == {tool}


def test_load_refuses_an_unknown_policy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "load", "barrier", "--writer-policy", "fifo"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'fifo'" in done.stderr


def _children(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found |= {int(child) for child in f.read().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_interrupted_load_leaves_no_process_behind() -> None:
    """Ctrl-C to the tool alone: the daemon, the echo server and the prober live in
    sessions of their own and see no signal, so the tool must stop them itself."""
    tool = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "load", "barrier", "--clients", "3"]
        + ["--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert tool.stderr is not None
        seen = []
        for line in tool.stderr:  # progress lines (on stderr) come once the load runs
            seen.append(line)
            if "barriers counted" in line:
                break
        children = _children(tool.pid)
        assert len(children) >= 6  # daemon, echo server, 3 writers, prober
        tool.send_signal(signal.SIGINT)
        _, err = tool.communicate(timeout=60)
        err = "".join(seen) + err
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    assert tool.returncode == 130, err
    assert err.strip().endswith("xec load barrier: interrupted") and "Traceback" not in err, err
    assert not [pid for pid in children if _alive(pid)]
