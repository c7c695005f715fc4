"""`xec load barrier`: many processes hammering their PCI barrier pages at once.

Each writer is a separate process with its own connection and its own barrier page; it
writes barriers (the client library's tagged running number) as fast as it can for the
given time, optionally mixing in BO writes and ioctls, samples how long the device takes
to acknowledge a write (the page reading 0xdeadbeef again), drains, and reports what it
wrote. While they run, a separate prober process measures ioctl round trips and, as a
control, round trips through a raw socket echo server running at the daemon's priority:
what the same load does to any round trip between two processes on this machine; and
between them the acknowledgement of barriers of its own: from its store until the
device read it, by the device's own clock (PCI_BARRIER_ACKS), and beside it until the
prober saw its page read 0xdeadbeef again, the figure a program that waits for one
sees, which also holds any wait of the prober's for a CPU (a writer's own samples hold
its wait for a CPU among the other busy writers too, printed apart). The parent shows
progress, then compares every writer's count with the device's count for that writer's
file (a barrier written but not counted is lost; counted for the wrong file would show
as a count above what was written), and prints the table.

Sessions matter to the scheduler. With autogroup (Linux's default on desktops and most
distributions), CPU time is shared between sessions before it is shared between the
processes of one session: 64 busy writers started by this tool get, together, what one
other session gets. A daemon deployed for real runs apart from its users (systemd gives a
service its own session and cgroup; one started from another terminal has its own
session), and a latency-sensitive client is a
program of its own. So the daemon this tool starts, the prober and the echo server each
get a session of their own, and the writers share the tool's; `--one-session` puts them
all in one, to see the difference. The report prints every process's session id.

Progress (each second: barriers counted so far, and the rate) goes to stderr, in a sweep
too; the report goes to stdout, as text or (`--json`) one JSON document for all runs.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from protocols.constants import PCI_BARRIER_SEQ_HALF, PCI_BARRIER_SEQ_MASK

from .daemon import daemon_at
from .device import Device
from .echo import EchoClient, EchoServer
from .measure import cpu_seconds, daemon_pid, percentile, threads_cpu_ns
from .progress import Progress, results_as_json

ACK_SAMPLE_EVERY = 2000  # barriers between two acknowledgement-latency samples
ACKS_ASKED_EVERY = 256  # the prober's samples between two PCI_BARRIER_ACKS (<= 1024 kept)
PROBE_INTERVAL = 0.002  # seconds between the prober's round trips
IDLE_PROBE_SECONDS = 2.0  # how long the idle round trips are sampled before the load


@attrs.frozen
class LoadOptions:
    clients: int
    seconds: float
    bo_writes: bool = False
    ioctls: bool = False
    nice: int = 0
    daemon_nice: int | None = None
    prober_nice: int = 0
    writer_policy: str = "normal"  # a POLICIES key
    one_session: bool = False  # daemon (if started here), prober and echo with the writers


# --- the processes -------------------------------------------------------------------------
POLICIES = {"normal": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}


def _ready_then_wait_for_go() -> None:
    """Tell the parent this process is set up, then start when everyone is: 64 Python
    processes starting at once would otherwise be what the prober measures."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)  # the parent gave up


def writer(
    socket_path: str, seconds: float, bo_writes: bool, ioctls: bool, nice: int, policy: str
) -> None:
    os.nice(nice)
    if policy != "normal":
        os.sched_setscheduler(0, POLICIES[policy], os.sched_param(0))
    dev = Device.open(socket_path)
    dev.pci_barrier_mapping()
    bo_map = dev.mmap_bo(dev.gem_create(1 << 16)) if bo_writes else None
    acks: list[float] = []
    _ready_then_wait_for_go()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for _ in range(200):
            dev.pci_barrier()
        n += 200
        if bo_map is not None:
            bo_map.write_u64(n % 4096 * 8, n)
        if ioctls and n % 2000 == 0:
            dev.version()
        if n % ACK_SAMPLE_EVERY == 0:
            acks.append(_acknowledged(dev)[1])
    dev.pci_barrier_drain()
    written = dev.barriers_written
    print(
        json.dumps(
            {"client_id": dev.client_id, "written": written, "acks": acks, "session": os.getsid(0)}
        )
    )
    sys.stdout.flush()
    sys.stdin.read()  # keep the file open until the parent has read the device's counts
    dev.close()


def prober(socket_path: str, echo_path: str, seconds: float, nice: int) -> None:
    """Round trips while the writers run: a daemon ioctl, then (the control) a raw socket
    echo served at the daemon's priority, alternately, so both see the same load; and
    between them a barrier of its own, timed until the device acknowledges it."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    dev = Device.open(socket_path)
    echo = EchoClient(echo_path)
    dev.pci_barrier()
    dev.pci_barrier_drain()
    dev.pci_barrier_acks()  # the device records when it reads our barriers from now on
    _ready_then_wait_for_go()
    samples, echoes, acks = _probe(dev, echo, time.monotonic() + seconds, barriers=True)
    echo.close()
    report = {
        "samples": samples,
        "echo": echoes,
        "acks": [counted for counted, _seen in acks],
        "acks_seen": [seen for _counted, seen in acks],
        "session": os.getsid(0),
    }
    print(json.dumps(report))


def _probe(
    dev: Device, echo: EchoClient, deadline: float, barriers: bool = False
) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    samples: list[float] = []
    echoes: list[float] = []
    acks: list[tuple[float, float]] = []
    waited: list[tuple[int, int, float]] = []  # barriers the device has not told of yet
    while time.monotonic() < deadline:
        start = time.perf_counter()
        dev.version()
        samples.append(time.perf_counter() - start)
        time.sleep(PROBE_INTERVAL)
        echoes.append(echo.round_trip())
        if barriers:
            time.sleep(PROBE_INTERVAL)
            stored, seen = _acknowledged(dev)
            waited.append((stored, dev.barriers_written & PCI_BARRIER_SEQ_MASK, seen))
            if len(waited) == ACKS_ASKED_EVERY:
                acks += _counted(dev, waited)
                waited = []
        time.sleep(PROBE_INTERVAL)
    if waited:
        acks += _counted(dev, waited)
    return samples, echoes, acks


def _acknowledged(dev: Device) -> tuple[int, float]:
    """One barrier: (the time before its store, CLOCK_MONOTONIC ns; the seconds until
    its page read 0xdeadbeef again), which holds any time the scheduler took this
    process's CPU away while it waited."""
    page = dev.pci_barrier_mapping()
    clock = time.monotonic_ns
    stored = clock()
    dev.pci_barrier()
    while page.read_u32(0) != 0xDEADBEEF:
        pass
    return stored, (clock() - stored) / 1e9


def _counted(dev: Device, waited: list[tuple[int, int, float]]) -> list[tuple[float, float]]:
    """For each barrier of `waited` (when stored, its running number, the seconds until
    its page was seen idle again), in the order stored, with the device recording since
    before the first (Device.pci_barrier_acks): the seconds from its store until the
    device read it, by the device's clock (the acknowledgement latency), and the seen."""
    reply = dev.pci_barrier_acks()
    if reply.dropped:
        raise RuntimeError(f"the device kept too few reads ({reply.dropped} dropped)")
    reads = list(zip(reply.seqs, reply.counted_ns, strict=True))
    counted, i = [], 0
    for stored, seq, seen in waited:
        # the first read whose number reached this barrier's counted it
        while (
            i < len(reads)
            and (reads[i][0] - seq) & PCI_BARRIER_SEQ_MASK >= PCI_BARRIER_SEQ_HALF
        ):
            i += 1
        if i == len(reads):
            raise RuntimeError(f"the device told of no read of barrier {seq}")
        counted.append(((reads[i][1] - stored) / 1e9, seen))
    return counted


def _spawn(*args: object, own_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clients.load", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )


def autogroup_state() -> str:
    """The word "on" if the kernel shares CPU time between sessions first, else "off"
    ("unknown" where it does not say)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return "on" if f.read().strip() == "1" else "off"
    except OSError:
        return "unknown"


_POLICY_NAMES = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}


def _watcher_tid(daemon_pid: int) -> int | None:
    """The daemon's page watcher thread (named xed-watcher); None where /proc does not
    show it (the daemon gone, or another user's)."""
    tasks = f"/proc/{daemon_pid}/task"
    try:
        tids = os.listdir(tasks)
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                if f.read().strip() == "xed-watcher":
                    return int(tid)
        except OSError:  # ended meanwhile
            continue
    return None


def watcher_scheduling(daemon_pid: int) -> str:
    """How the kernel runs the daemon's page watcher thread, as /proc tells: its
    policy, and for an ordinary thread the slice it asked for."""
    tid = _watcher_tid(daemon_pid)
    if tid is None:
        return "unknown"
    try:
        with open(f"/proc/{daemon_pid}/task/{tid}/sched") as f:
            fields = dict(
                (key.strip(), value.strip())
                for key, _, value in (line.partition(":") for line in f)
            )
    except OSError:  # gone meanwhile
        return "unknown"
    try:
        policy = _POLICY_NAMES.get(int(fields.get("policy", "0")), "other")
        slice_ms = int(fields.get("se.slice", "0")) / 1e6
    except ValueError:
        return "unknown"
    if policy == "fifo":
        return "fifo (real-time: runs as soon as it wakes)"
    if slice_ms <= 0.1:
        note = "no real-time priority: a short slice instead"
    else:
        note = "no real-time priority nor short slice: looks wait for a CPU"
    return f"{policy}, slice {slice_ms:g} ms ({note})"


# --- one run -------------------------------------------------------------------------------
def run_load(socket_path: str, daemon_pid: int, opts: LoadOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xec-load-") as tmp:
        echo_server = EchoServer(os.path.join(tmp, "echo.sock"), own_session=not opts.one_session)
        try:
            daemon_priority = os.getpriority(os.PRIO_PROCESS, daemon_pid)
            os.setpriority(os.PRIO_PROCESS, echo_server.pid, daemon_priority)
            return _run_load(socket_path, daemon_pid, opts, echo_server)
        finally:
            echo_server.stop()


def _run_load(
    socket_path: str, daemon_pid: int, opts: LoadOptions, echo_server: EchoServer
) -> dict[str, Any]:
    progress = Progress()
    progress(f"idle round trips for {IDLE_PROBE_SECONDS:g} s", force=True)
    echo = echo_server.connect()
    with Device.open(socket_path) as dev:  # before the load: the idle values
        idle, idle_echo, _ = _probe(dev, echo, time.monotonic() + IDLE_PROBE_SECONDS)
    echo.close()
    with Device.open(socket_path, role="admin") as admin:
        counted_before = admin.admin_status().barriers
        progress(f"starting {opts.clients} writer(s) and the prober", force=True)
        writers = [
            _spawn(
                "writer",
                socket_path,
                opts.seconds,
                int(opts.bo_writes),
                int(opts.ioctls),
                opts.nice,
                opts.writer_policy,
            )
            for _ in range(opts.clients)
        ]
        probe = _spawn(
            "prober",
            socket_path,
            echo_server.path,
            opts.seconds,
            opts.prober_nice,
            own_session=not opts.one_session,
        )
        try:
            for process in [*writers, probe]:
                assert process.stdout is not None and process.stdin is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a load process died starting (status {process.wait()})")
            cpu_before = cpu_seconds(daemon_pid)
            threads_before = threads_cpu_ns(daemon_pid)
            started = time.monotonic()
            for process in [*writers, probe]:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            while (
                any(w.poll() is None for w in writers) and time.monotonic() - started < opts.seconds
            ):
                time.sleep(min(1.0, opts.seconds))
                total = admin.admin_status().barriers - counted_before
                elapsed = time.monotonic() - started
                progress(f"{total:>12,} barriers counted  {total / elapsed:>12,.0f}/s", force=True)
            reports = []
            for w in writers:
                assert w.stdout is not None
                line = w.stdout.readline()
                if not line:
                    raise RuntimeError(f"a writer died (status {w.wait()})")
                reports.append(json.loads(line))
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(daemon_pid) - cpu_before
            threads_after = threads_cpu_ns(daemon_pid)
            counts = {c.client_id: c.barriers for c in admin.admin_clients()}
            for w in writers:
                assert w.stdin is not None
                w.stdin.close()
                w.wait()
            probe_out, _ = probe.communicate(timeout=60)
        finally:
            for process in [*writers, probe]:  # still running only if something failed
                if process.poll() is None:
                    process.kill()
                    process.wait()
    loaded = json.loads(probe_out)
    rows = []
    for report in reports:
        counted = counts.get(report["client_id"], 0)
        rows.append((report["client_id"], report["written"], counted))
    acks = [a for report in reports for a in report["acks"]]
    total = sum(counted for _, _, counted in rows)
    return {
        "rows": rows,
        "lost": sum(max(written - counted, 0) for _, written, counted in rows),
        "misattributed": sum(max(counted - written, 0) for _, written, counted in rows),
        "rate": total / elapsed,
        "ack_p50_us": percentile(loaded["acks"], 0.5) * 1e6,
        "ack_p99_us": percentile(loaded["acks"], 0.99) * 1e6,
        "seen_ack_p50_us": percentile(loaded["acks_seen"], 0.5) * 1e6,
        "seen_ack_p99_us": percentile(loaded["acks_seen"], 0.99) * 1e6,
        "writer_ack_p50_us": percentile(acks, 0.5) * 1e6,
        "writer_ack_p99_us": percentile(acks, 0.99) * 1e6,
        "ioctl": _latencies(idle, loaded["samples"]),
        "echo": _latencies(idle_echo, loaded["echo"]),
        "daemon_cpu_pct": 100 * cpu / elapsed,
        "watcher_cpu_pct": 100 * _watcher_ns(daemon_pid, threads_before, threads_after)
        / 1e9 / elapsed,
        "watcher_scheduling": watcher_scheduling(daemon_pid),
        "seconds": elapsed,
        "sessions": {
            "tool": os.getsid(0),
            "writers": sorted({report["session"] for report in reports}),
            "daemon": os.getsid(daemon_pid),
            "prober": loaded["session"],
            "echo": os.getsid(echo_server.pid),
        },
    }


def _watcher_ns(pid: int, before: dict[int, int], after: dict[int, int]) -> int:
    """The CPU the daemon's page watcher thread took between two threads_cpu_ns()."""
    tid = _watcher_tid(pid)
    return after.get(tid, 0) - before.get(tid, 0) if tid is not None else 0


def _latencies(idle: list[float], loaded: list[float]) -> dict[str, float]:
    lat = {
        "idle_p50_us": statistics.median(idle) * 1e6,
        "idle_p99_us": percentile(idle, 0.99) * 1e6,
        "load_p50_us": statistics.median(loaded) * 1e6 if loaded else 0.0,
        "load_p99_us": percentile(loaded, 0.99) * 1e6,
    }
    lat["p99_ratio"] = lat["load_p99_us"] / max(lat["idle_p99_us"], 1e-3)
    return lat


def print_report(opts: LoadOptions, result: dict[str, Any]) -> None:
    print(f"\n{'client':>8} {'written':>12} {'counted':>12} {'lost':>6}")
    for client_id, written, counted in result["rows"]:
        print(f"{client_id:>8} {written:>12,} {counted:>12,} {max(written - counted, 0):>6}")
    print(f"lost: {result['lost']}")
    print(f"counted for the wrong file: {result['misattributed']}")
    print(f"aggregate barrier rate: {result['rate']:,.0f}/s over {result['seconds']:.1f} s")
    print(
        f"acknowledgement latency: p50 {result['ack_p50_us']:.0f} us, "
        f"p99 {result['ack_p99_us']:.0f} us (the prober's barriers, from the store until "
        "the device read it, by its clock; target p50 <= 500 us, p99 <= 2000 us)"
    )
    print(
        f"acknowledgement latency, as the prober saw it: p50 {result['seen_ack_p50_us']:.0f} "
        f"us, p99 {result['seen_ack_p99_us']:.0f} us (until its page read 0xdeadbeef again: "
        "its own wait for a CPU too)"
    )
    print(
        f"acknowledgement latency, writers' own samples: p50 {result['writer_ack_p50_us']:.0f} "
        f"us, p99 {result['writer_ack_p99_us']:.0f} us (a busy writer's wait for a CPU too)"
    )
    for label, key in (("ioctl latency", "ioctl"), ("raw echo (control)", "echo")):
        lat = result[key]
        print(
            f"{label}: idle p50 {lat['idle_p50_us']:.0f} us / p99 {lat['idle_p99_us']:.0f} us; "
            f"under load p50 {lat['load_p50_us']:.0f} us / p99 {lat['load_p99_us']:.0f} us "
            f"({lat['p99_ratio']:.1f}x idle p99)"
        )
    print(
        f"daemon CPU: {result['daemon_cpu_pct']:.0f}% of one core (its page watcher thread "
        f"{result['watcher_cpu_pct']:.1f}%; its other threads answer ioctls)"
    )
    print(f"page watcher thread: {result['watcher_scheduling']}")
    sessions = result["sessions"]
    print(
        f"sessions: tool {sessions['tool']}, writers {', '.join(map(str, sessions['writers']))}, "
        f"daemon {sessions['daemon']}, prober {sessions['prober']}, "
        f"echo control {sessions['echo']}"
    )


def main_load(
    socket_path: Path | None, opts: LoadOptions, sweep: list[int], as_json: bool = False
) -> int:
    """One run, or one per writer count of `sweep`; 0 if no barrier was lost or counted
    for the wrong file, else 1."""
    with results_as_json(as_json) as emit:
        runs = _main_load(socket_path, opts, sweep)
        emit({"runs": runs, "lost": sum(r["lost"] + r["misattributed"] for r in runs)})
    return 0 if all(r["lost"] + r["misattributed"] == 0 for r in runs) else 1


def _main_load(socket_path: Path | None, opts: LoadOptions, sweep: list[int]) -> list[Any]:
    runs = []
    with daemon_at(socket_path, own_session=not opts.one_session) as (socket, daemon):
        path = str(socket)
        pid = daemon.pid if daemon else daemon_pid(path)
        if opts.daemon_nice is not None:
            # the daemon stands in for kernel code, which runs in the caller's own time
            # slice; giving it priority over the writers is how a deployment would run it
            os.setpriority(os.PRIO_PROCESS, pid, opts.daemon_nice)
        for clients in sweep or [opts.clients]:
            run_opts = attrs.evolve(opts, clients=clients)
            daemon_nice = os.getpriority(os.PRIO_PROCESS, pid)
            print(
                f"\n== {clients} writer process(es), {opts.seconds:g} s, writers at nice "
                f"{opts.nice} ({opts.writer_policy} policy), daemon at nice {daemon_nice}, "
                f"autogroup {autogroup_state()} =="
            )
            result = run_load(path, pid, run_opts)
            print_report(run_opts, result)
            runs.append({"clients": clients, "daemon_nice": daemon_nice, **result})
    if len(runs) > 1:
        _print_sweep(runs)
    return runs


def _print_sweep(runs: list[Any]) -> None:
    """The sweep at a glance: one line per writer count."""
    print("\n== sweep ==")
    print(
        f"{'writers':>8} {'barriers/s':>12} {'ack p50':>9} {'ack p99':>9} "
        f"{'writers p50':>12} {'writers p99':>12} {'lost':>5} {'daemon CPU':>11}"
    )
    for run in runs:
        print(
            f"{run['clients']:>8} {run['rate']:>12,.0f} {run['ack_p50_us']:>6.0f} us "
            f"{run['ack_p99_us']:>6.0f} us {run['writer_ack_p50_us']:>9.0f} us "
            f"{run['writer_ack_p99_us']:>9.0f} us {run['lost']:>5} {run['daemon_cpu_pct']:>10.0f}%"
        )


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the tool stops its writers and prober itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    role = sys.argv[1]
    if role == "writer":
        writer(
            sys.argv[2],
            float(sys.argv[3]),
            sys.argv[4] == "1",
            sys.argv[5] == "1",
            int(sys.argv[6]),
            sys.argv[7],
        )
    elif role == "prober":
        prober(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
