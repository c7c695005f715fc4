"""`xec load chaos`: a bounded run of everything a hostile or careless client can do,
beside a client that did nothing wrong, then the daemon's account.

It starts its own daemon (low limits, a small descriptor table, so that limits are
reached within seconds) and the IB-like aux driver, takes their baseline (descriptors,
objects), measures a bystander's round trips at rest, and then, for the time asked,
keeps a number of agents (clients.chaos.agents) alive: workers doing real work, fuzzers,
forgers and hogs, each killed with SIGKILL at a random moment of its life, while the
device is unplugged and replugged now and then. At the end every agent is killed, the
daemon is given time to settle, and it prints:

    daemon restarts      the daemon died or was replaced (must be 0)
    aux driver restarts  the same for the aux driver (must be 0)
    unclean replies      answers that are not an errno the op table lists, clients the
                         daemon dropped for nothing, crashes it counted or logged (0)
    leaked descriptors   the daemon's open descriptors now minus at the start (0)
    leaked objects       its object counts now minus at the start (0)
    bystander            round-trip p50/p99 at rest and during the chaos

The exit status is 0 when all of those are 0 and the bystander saw nothing wrong.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from protocols import to_wire

from ..daemon import AuxDriverProcess, DaemonProcess
from ..device import Device
from ..progress import Progress

# Limits low enough to be reached within seconds: a hog meets them, nobody else should.
CHAOS_CONFIG = """\
[limits]
bos = 2000
fence_waits = 64
unread_descriptors = 64
"""
NOFILE = 16384
KINDS = (("worker", 5), ("fuzz", 2), ("forger", 2), ("hog", 1))
MAX_HOGS = 2  # at once: each holds up to its limits until killed
SETTLE_SECONDS = 20.0
PROGRESS_EVERY = 5.0  # seconds between two progress lines on stderr during the storm


@attrs.frozen
class ChaosOptions:
    seconds: float = 30.0
    agents: int = 6  # alive at once
    seed: int | None = None
    idle_seconds: float = 2.0
    unplug_every: float = 2.0  # seconds between two short unplugs (0: never)


@attrs.define
class Agent:
    kind: str
    proc: subprocess.Popen[str]
    dies_at: float
    errors: Path
    lines: list[dict[str, Any]] = attrs.Factory(list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"unclean": f"{self.kind} printed {line.strip()[:80]!r}"})


@attrs.define
class Tally:
    started: dict[str, int] = attrs.Factory(dict)
    killed: int = 0
    unplugs: int = 0
    ops: int = 0
    unclean: list[str] = attrs.Factory(list)
    failed: list[str] = attrs.Factory(list)  # agents that died on their own: our bugs
    unclean_clients: dict[str, list[str]] = attrs.Factory(dict)  # a leak's connections


def _spawn(
    kind: str, daemon: Path, verbs: Path, seed: int, now: float, rng: random.Random
) -> Agent:
    errors = daemon.parent / f"agent-{seed}.err"  # read only if it failed on its own
    with open(errors, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.chaos.agents", kind, str(daemon), str(verbs),
             str(seed)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    agent = Agent(kind, proc, now + rng.uniform(0.3, 4.0), errors)
    threading.Thread(target=agent.read, daemon=True).start()
    return agent


def _account(daemon: DaemonProcess) -> tuple[int, dict[str, int], Any]:
    with Device.open(daemon.socket_path, role="admin") as admin:
        status = admin.admin_status()
        fds = daemon.open_fds()
    return fds, to_wire(status.objects), status


def _clients(daemon: DaemonProcess) -> list[str]:
    """Who is connected (role, command, objects held): what a leak report names."""
    with Device.open(daemon.socket_path, role="admin") as admin:
        return sorted(
            f"{c.role} {c.comm} bos={c.bos} vms={c.vms} exported={c.exported}"
            for c in admin.admin_clients()
        )


def _settle(
    daemon: DaemonProcess, want: tuple[int, dict[str, int]]
) -> tuple[int, dict[str, int], Any]:
    """The account once it matches `want`, or as it is after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        fds, objects, status = _account(daemon)
        if (fds, objects) == want or time.monotonic() > deadline:
            return fds, objects, status
        time.sleep(0.1)


def run(opts: ChaosOptions, out: Any = sys.stdout) -> dict[str, Any]:
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="xed-chaos-") as tmp:
        config = Path(tmp) / "chaos.toml"
        config.write_text(CHAOS_CONFIG)
        daemon = DaemonProcess(
            socket_path=Path(tmp) / "xed.sock", config=config, log_path=Path(tmp) / "daemon.log",
            extra_args=("--log-level", "warning"), nofile=NOFILE, own_session=True,
        )  # fmt: skip
        daemon.start()
        aux = AuxDriverProcess(daemon.socket_path, log_path=Path(tmp) / "aux.log")
        try:
            aux.start()
            pids = (daemon.pid, aux.pid)
            fds0, objects0, _ = _account(daemon)
            clients0 = _clients(daemon)
            bystander = subprocess.Popen(
                [sys.executable, "-m", "clients.chaos.bystander", str(daemon.socket_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert bystander.stdin is not None and bystander.stdout is not None
            time.sleep(opts.idle_seconds)  # the bystander measures the daemon at rest
            _tell(bystander, "chaos")
            _storm(opts, daemon, aux, seed, rng, tally, out)
            _tell(bystander, "stop")
            seen = json.loads(bystander.stdout.readline() or "{}")
            bystander.wait(30)
            alive = (_alive(daemon), _alive(aux))
            if alive[0]:
                _plug_in(daemon)
                fds1, objects1, status = _settle(daemon, (fds0, objects0))
                if (fds1, objects1) != (fds0, objects0):  # who came or went, for the report
                    tally.unclean_clients = {"before": clients0, "after": _clients(daemon)}
            log = daemon.log_text()
        finally:
            aux.cleanup()
            daemon.cleanup()
    if not alive[0]:
        tally.unclean.append(f"the daemon died: {log.strip().splitlines()[-1:]}")
        return _result(opts, seed, tally, alive, seen, None, 0, {})
    for counter in ("task_crashes", "ioctl_crashes"):
        if getattr(status, counter):
            tally.unclean.append(f"the daemon counted {getattr(status, counter)} {counter}")
    tracebacks = log.count("Traceback")
    if tracebacks:
        tally.unclean.append(f"the daemon logged {tracebacks} tracebacks")
    leaked = {k: objects1[k] - objects0[k] for k in objects0 if objects1[k] != objects0[k]}
    alive = (alive[0] and status.pid == pids[0], alive[1])
    return _result(opts, seed, tally, alive, seen, status, fds1 - fds0, leaked)


def _alive(process: DaemonProcess) -> bool:
    return process.proc is not None and process.proc.poll() is None


def _tell(bystander: subprocess.Popen[str], line: str) -> None:
    assert bystander.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        bystander.stdin.write(line + "\n")
        bystander.stdin.flush()


def _result(
    opts: ChaosOptions,
    seed: int,
    tally: Tally,
    alive: tuple[bool, bool],
    seen: dict[str, Any],
    status: Any,
    leaked_fds: int,
    leaked: dict[str, int],
) -> dict[str, Any]:
    return {
        "seconds": opts.seconds,
        "seed": seed,
        "agents_started": tally.started,
        "agents_killed": tally.killed,
        "unplugs": tally.unplugs,
        "agent_ops": tally.ops,
        "daemon_restarts": int(not alive[0]),
        "aux_restarts": int(not alive[1]),
        "unclean_replies": len(tally.unclean),
        "agent_failures": tally.failed[:10],
        "unclean_examples": tally.unclean[:10],
        "leaked_descriptors": leaked_fds,
        "leaked_objects": leaked,
        "leaked_from": tally.unclean_clients,  # the connections before and after a leak
        "limits_hit": status.limits_hit if status is not None else 0,
        "bystander": seen,
    }


def _storm(
    opts: ChaosOptions,
    daemon: DaemonProcess,
    aux: AuxDriverProcess,
    seed: int,
    rng: random.Random,
    tally: Tally,
    out: Any,
) -> None:
    """Keep `opts.agents` agents alive until the time is up; unplug now and then."""
    agents: list[Agent] = []
    end = time.monotonic() + opts.seconds
    next_unplug = time.monotonic() + opts.unplug_every if opts.unplug_every else float("inf")
    kinds = [kind for kind, weight in KINDS for _ in range(weight)]
    n = 0
    progress = Progress(every=PROGRESS_EVERY)
    try:
        while (now := time.monotonic()) < end:
            progress(
                f"{end - now:5.1f} s left: {sum(tally.started.values())} agents started, "
                f"{tally.killed} killed, {tally.unplugs} unplugs"
            )
            for agent in [a for a in agents if now >= a.dies_at or a.proc.poll() is not None]:
                if agent.proc.poll() is None:
                    agent.proc.send_signal(signal.SIGKILL)
                    tally.killed += 1
                agents.remove(agent)
                _collect(agent, tally)
            while len(agents) < opts.agents:
                # one of each kind first, so that even a short run meets them all
                kind = KINDS[n][0] if n < len(KINDS) else rng.choice(kinds)
                if kind == "hog" and sum(a.kind == "hog" for a in agents) >= MAX_HOGS:
                    kind = "worker"
                n += 1
                agents.append(_spawn(kind, daemon.socket_path, aux.socket_path, seed + n, now, rng))
                tally.started[kind] = tally.started.get(kind, 0) + 1
            if not _alive(daemon):
                break  # nothing left to storm
            if now >= next_unplug:
                _unplug_briefly(daemon)
                tally.unplugs += 1
                next_unplug = now + opts.unplug_every
            time.sleep(0.05)
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGKILL)
                tally.killed += 1
            agent.proc.wait()
            _collect(agent, tally)


def _collect(agent: Agent, tally: Tally) -> None:
    status = agent.proc.wait()
    if status not in (0, -signal.SIGKILL):
        last = agent.errors.read_text().strip().splitlines()[-1:] or ["(nothing on stderr)"]
        tally.failed.append(f"{agent.kind} exited {status}: {last[0][:200]}")
    for line in agent.lines:
        tally.ops += int(line.get("ops", 0))
        if "unclean" in line:
            tally.unclean.append(f"{agent.kind}: {line['unclean']}")


def _plug_in(daemon: DaemonProcess) -> None:
    """A device in, as at the start, before the account is compared: a fuzzer is
    root too, so it may send ADMIN_UNPLUG last, and the aux driver connects again only
    to a device that is in (it waits for one while it is out)."""
    with Device.open(daemon.socket_path, role="admin") as admin:
        if admin.admin_status().unplugged:
            admin.admin_replug()


def _unplug_briefly(daemon: DaemonProcess) -> None:
    with contextlib.suppress(OSError), Device.open(daemon.socket_path, role="admin") as admin:
        admin.admin_unplug()
        time.sleep(0.1)
        admin.admin_replug()


def print_report(result: dict[str, Any], out: Any = sys.stdout) -> None:
    started = ", ".join(f"{n} {kind}" for kind, n in sorted(result["agents_started"].items()))
    print(
        f"chaos: {result['seconds']:.0f} s, seed {result['seed']}: agents {started}; "
        f"{result['agents_killed']} killed with SIGKILL mid-work, {result['unplugs']} unplugs",
        file=out,
    )
    print(f"daemon restarts: {result['daemon_restarts']}", file=out)
    print(f"aux driver restarts: {result['aux_restarts']}", file=out)
    print(f"unclean replies: {result['unclean_replies']}", file=out)
    for example in result["unclean_examples"]:
        print(f"  {example}", file=out)
    print(f"agents that failed on their own: {len(result['agent_failures'])}", file=out)
    for failure in result["agent_failures"]:
        print(f"  {failure}", file=out)
    print(f"leaked descriptors: {result['leaked_descriptors']}", file=out)
    leaked = result["leaked_objects"]
    print(
        f"leaked objects: {sum(abs(v) for v in leaked.values())} {leaked or ''}".rstrip(), file=out
    )
    print(f"limits reached by the hostile: {result['limits_hit']}", file=out)
    phases = result["bystander"].get("phases", {})
    idle, chaos = phases.get("idle", {}), phases.get("chaos", {})
    if idle and chaos:
        print(
            f"bystander p99: {idle['p99_us']:.0f} us before, {chaos['p99_us']:.0f} us during "
            f"(p50 {idle['p50_us']:.0f} -> {chaos['p50_us']:.0f} us; "
            f"{idle['calls']} + {chaos['calls']} calls)",
            file=out,
        )
    for problem in result["bystander"].get("problems", []):
        print(f"bystander: {problem}", file=out)
    for refusal, count in result["bystander"].get("refusals", {}).items():
        print(f"bystander refused: {refusal} x{count}", file=out)


def clean(result: dict[str, Any]) -> bool:
    bystander = result["bystander"]
    return (
        not result["daemon_restarts"]
        and not result["aux_restarts"]
        and not result["unclean_replies"]
        and not result["agent_failures"]
        and not result["leaked_descriptors"]
        and not result["leaked_objects"]
        and not bystander.get("problems")
        and not bystander.get("refusals")
        and bool(bystander.get("phases"))
    )


def main(opts: ChaosOptions, as_json: bool = False) -> int:
    result = run(opts)
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_report(result)
    return 0 if clean(result) else 1


__all__ = ["ChaosOptions", "clean", "main", "print_report", "run"]
