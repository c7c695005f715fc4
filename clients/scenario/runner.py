"""The runner: a scenario's processes started, wired, kept in step and accounted for.

`run_scenario` starts a daemon (unless given one) and an IB-like aux driver per process
of role `ib`, spawns every other process as a worker (`python -m clients.scenario
worker`), wires a socket pair between every two processes that send to or receive from
each other (descriptors travel over them with SCM_RIGHTS), releases `sync_point` steps
once every running process has reached one (a line on the worker's stdout, "go" back
on its stdin: no sleeps), tells each `debugger` process the pid of every other one (its
first stdin line), and collects a ProcessResult per process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio

from .. import fdpass
from ..daemon import AuxDriverProcess, DaemonProcess, check_daemon
from ..progress import Progress
from .model import Scenario

ROOT = Path(__file__).resolve().parent.parent.parent  # where `clients` can be imported from


@attrs.define
class ProcessResult:
    label: str
    role: str
    total: int
    passed: int = 0
    failed: int = 0
    first_failure: str = ""
    finished: bool = False
    at_sync: str | None = None

    def fail(self, text: str) -> None:
        self.failed += 1
        if not self.first_failure:
            self.first_failure = text


@attrs.define
class _Running:
    result: ProcessResult
    proc: trio.Process
    stderr_path: Path


class Runner:
    """Spawns the workers, wires their socket pairs, releases sync points, collects
    their reports; progress (who started, finished, died, reached a sync point) goes to
    stderr as it happens."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.running: list[_Running] = []
        self.say = Progress(every=0)

    async def run(self, socket_path: str, verbs: dict[str, str], tmp: Path) -> list[ProcessResult]:
        pairs = self.scenario.pairs()
        ends: dict[str, dict[str, socket.socket]] = {}
        for a, b in sorted(pairs):
            end_a, end_b = fdpass.socketpair()
            ends.setdefault(a, {})[b] = end_a
            ends.setdefault(b, {})[a] = end_b
        root = str(ROOT)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        )
        for key in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
        try:
            for spec, i in self.scenario.instances():
                label = spec.label(i)
                mine = ends.get(label, {})
                command = [
                    sys.executable,
                    "-m",
                    "clients.scenario",
                    "worker",
                    str(self.scenario.path),
                    spec.name,
                    str(i),
                    "--socket",
                    socket_path,
                ]
                command += [f"--verbs={name}={path}" for name, path in verbs.items()]
                command += [f"--peer={peer}={end.fileno()}" for peer, end in mine.items()]
                stderr_path = tmp / f"{label}.stderr"
                with open(stderr_path, "wb") as stderr:
                    proc = await trio.lowlevel.open_process(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        pass_fds=[end.fileno() for end in mine.values()],
                        env=env,
                    )
                result = ProcessResult(label, spec.role, len(spec.steps))
                self.running.append(_Running(result, proc, stderr_path))
        finally:
            for peers in ends.values():  # the children hold theirs: EOF when one exits
                for end in peers.values():
                    end.close()
        pids = {run.result.label: run.proc.pid for run in self.running}
        line = (json.dumps({"pids": pids}) + "\n").encode()
        for run, (spec, _) in zip(self.running, self.scenario.instances(), strict=True):
            if spec.role == "debugger":
                assert run.proc.stdin is not None
                await run.proc.stdin.send_all(line)
        self.say(f"started {len(self.running)} processes")
        try:
            with trio.move_on_after(self.scenario.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    for run in self.running:
                        nursery.start_soon(self._watch, run)
        finally:  # timed out, or interrupted (Ctrl-C): none of ours outlives the run
            for run in self.running:
                if run.proc.returncode is None:
                    run.proc.kill()
        for run in self.running:
            await run.proc.wait()
            if scope.cancelled_caught and not run.result.finished:
                done = run.result.passed + run.result.failed
                run.result.fail(f"timed out after {self.scenario.timeout:g} s in step {done + 1}")
        return [run.result for run in self.running]

    async def _watch(self, run: _Running) -> None:
        assert run.proc.stdout is not None
        result = run.result
        buffer = b""
        async for chunk in run.proc.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:  # something in the worker printed: not ours to judge
                    continue
                await self._event(run, event)
        await run.proc.wait()
        if not result.finished:
            lines = run.stderr_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no message"
            result.fail(f"exited with status {run.proc.returncode} ({last})")
            result.finished = True
            self.say(f"{result.label}: died ({last})")
            await self._release()

    async def _event(self, run: _Running, event: dict[str, Any]) -> None:
        result = run.result
        if event["event"] == "step":
            if event["ok"]:
                result.passed += 1
            else:
                where = f"step {event['index']} ({event['do']})"
                result.fail(f"{where}: expected {event['expected']}, got {event['got']}")
        elif event["event"] == "sync":
            result.at_sync = event["name"]
            await self._release()
        elif event["event"] == "done":
            result.finished = True
            self.say(f"{result.label}: finished, {result.passed}/{result.total} passed")
            await self._release()

    async def _release(self) -> None:
        """Let every process waiting at a sync point go once all running ones are there."""
        active = [run for run in self.running if not run.result.finished]
        if not active or any(run.result.at_sync is None for run in active):
            return
        names = sorted({str(run.result.at_sync) for run in active})
        if len(names) > 1:
            for run in active:
                run.result.fail(f"sync points out of step: {', '.join(names)}")
        self.say(f"sync point {'/'.join(names)}: {len(active)} processes")
        for run in active:
            run.result.at_sync = None
        for run in active:
            assert run.proc.stdin is not None
            await run.proc.stdin.send_all(b"go\n")


def run_scenario(scenario: Scenario, socket_path: Path | None) -> list[ProcessResult]:
    """Run a checked scenario against the daemon at `socket_path` (None: one of its own)
    and return each process's result."""
    say = Progress(every=0)
    with tempfile.TemporaryDirectory(prefix="xec-scenario-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = None
        aux: list[AuxDriverProcess] = []
        try:
            if socket_path is not None:
                check_daemon(socket_path)
            say(f"scenario {scenario.name}: {scenario.description}")
            if socket_path is None:
                daemon = DaemonProcess(
                    socket_path=tmp / "xed.sock",
                    log_path=tmp / "daemon.log",
                    extra_args=("--log-level", "warning"),
                ).start()
                socket_path = daemon.socket_path
                say(f"started a daemon (pid {daemon.pid}) on {socket_path}")
            verbs = {}
            for name in scenario.ib_names:
                driver = AuxDriverProcess(
                    socket_path,
                    socket_path=tmp / f"{name}.verbs.sock",
                    log_path=tmp / f"{name}.log",
                )
                aux.append(driver)
                driver.start()
                verbs[name] = str(driver.socket_path)
                say(f"started the IB-like aux driver {name!r} (pid {driver.pid})")
            runner = Runner(scenario)
            # Ctrl-C lands at a checkpoint, never between a task made and started (its
            # coroutine would be left unawaited, and say so on stderr at exit)
            results: list[ProcessResult] = trio.run(
                runner.run, str(socket_path), verbs, tmp,
                restrict_keyboard_interrupt_to_checkpoints=True,
            )  # fmt: skip
        finally:
            for driver in aux:
                driver.cleanup()
            if daemon is not None:
                daemon.cleanup()
    return results
