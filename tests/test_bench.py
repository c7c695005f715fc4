"""The benchmark commands run end to end and print the figures the issues ask for.

Nothing here looks at how fast anything was (tests never assert wall-clock times); it
checks that each benchmark starts its own daemon, measures both sides and reports them,
so `make bench` cannot rot unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

RATIO = re.compile(r"^ratio: (\d+\.\d\d)", re.MULTILINE)


def xec(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_rtt_reports_both_sides_and_their_cpu() -> None:
    out = xec("bench", "rtt", "--rounds", "2", "--per-round", "100")
    assert "round trips: 200 each, 2 interleaved rounds" in out
    labels = ("daemon VERSION ioctl", "raw seqpacket echo", "  same echo in trio")
    for label in (*labels, "  msgpack floor", "  design floor"):
        (row,) = [line for line in out.splitlines() if line.startswith(label)]
        # median, p99, client CPU, server CPU: four measured figures per row
        assert len(re.findall(r"\d+\.\d us", row)) == 4, row
    assert re.search(r"^floor: \d+\.\d\d ", out, re.MULTILINE), out
    assert float(RATIO.search(out).group(1)) > 0  # type: ignore[union-attr]
    assert re.search(r"^ratio: \d+\.\d\d  design floor: \d+\.\d\d ", out, re.MULTILINE), out
    assert re.search(r"^over floor: \d+\.\d\d  .*target <= 1\.25", out, re.MULTILINE), out


def test_bench_mmap_shows_no_byte_of_the_mapping_on_the_socket() -> None:
    out = xec("bench", "mmap", "--repeats", "5")
    sizes = [
        [int(n) for n in re.findall(r"\d+", found)]
        for found in re.findall(r"bytes on the socket per mmap \[([\d, ]+)\]", out)
    ]
    assert len(sizes) == 2  # 4 KiB and 1 GiB
    assert max(max(s) for s in sizes) < 200  # a 1 GiB BO crosses as a descriptor
    assert RATIO.search(out)


def test_bench_barrier_compares_the_three_ways() -> None:
    out = xec("bench", "barrier", "--count", "2000")
    for way in ("store to the barrier page", "ioctl round trip", "EXEC of MI_MEM_FENCE"):
        assert re.search(rf"{way}.*\s(\d+\.\d+) us", out), out
    assert re.search(r"^ratio ioctl/store: \d+x", out, re.MULTILINE), out
    idle = r"^idle daemon, 32 barrier pages mapped, nobody writing: \d+\.\d+% of one core"
    assert re.search(idle, out, re.MULTILINE), out


def test_bench_scale_prints_each_kind_and_the_start_time() -> None:
    """`xec bench scale`, tiny: a row for connections, BOs, exec queues and VMs (memory
    each, create and release times), the idle queue's and the connection's cost, and the
    daemon's start to READY=1, as run and with its bytecode cached, and its floor."""
    out = xec("bench", "scale", "--connections", "20", "--objects", "20", "--starts", "2")
    for kind in ("connections", "bos", "exec_queues", "vms"):
        row = rf"^\s+{kind}\s+20\s+-?\d+\.\d\d KiB\s+\d+\.\d us\s+\d+\.\d us$"
        assert re.search(row, out, re.MULTILINE), out
    assert re.search(r"^exec queue, idle: -?\d+\.\d\d KiB each", out, re.MULTILINE), out
    assert re.search(r"^connection: -?\d+\.\d KiB each", out, re.MULTILINE), out
    ready = r"^daemon start to READY=1: \d+ ms \(median of 2; target <= 300 ms\)$"
    assert re.search(ready, out, re.MULTILINE), out
    installed = r"^  the same with its bytecode cached, as installed: \d+ ms \(median of 2\)$"
    assert re.search(installed, out, re.MULTILINE), out
    floor = r"^  floor: \d+ ms to start, import trio, msgpack, attrs and structlog, and exit "
    assert re.search(floor + r"\(median of 2\)$", out, re.MULTILINE), out


def test_bench_rdma_compares_with_memcpy_and_an_ioctl() -> None:
    out = xec("bench", "rdma", "--repeats", "1")
    assert re.search(r"^at 64 MiB: \d+% of memcpy bandwidth", out, re.MULTILINE), out
    assert re.search(r"64-byte RDMA WRITE \+ poll: [\d.]+ us; one daemon ioctl", out), out


def test_bench_throughput_prints_each_count_against_the_design_floor() -> None:
    """bench throughput runs N client processes through the daemon and through the
    design floor's server, and prints per N both rates, their ratio and both p99s, then
    the CPU each call cost in the clients and in the server, for both."""
    out = xec("bench", "throughput", "--clients", "1,2", "--seconds", "0.2", "--rounds", "1")
    for clients in (1, 2):
        row = re.search(
            rf"^\s+{clients}\s+([\d,]+)\s+([\d,]+)\s+(\d+\.\d\d)\s+.* us\s+.* us$",
            out,
            re.MULTILINE,
        )
        assert row, out
        assert int(row.group(1).replace(",", "")) > 0 and int(row.group(2).replace(",", "")) > 0
    cpu = out.split("CPU per call", 1)[1]
    for clients in (1, 2):  # clients, server and their sum, for each side
        cells = re.search(rf"^\s+{clients}((?:\s+\d+\.\d){{6}})$", cpu, re.MULTILINE)
        assert cells, out
        daemon_client, daemon_server, daemon_sum = map(float, cells.group(1).split()[:3])
        assert daemon_client > 0 and daemon_server > 0
        assert abs(daemon_sum - (daemon_client + daemon_server)) <= 0.11
    assert re.search(r"^throughput ratio: \d+\.\d\d at worst", out, re.MULTILINE), out


def test_bench_rtt_places_its_processes_as_asked() -> None:
    """Pinned by default (client and daemon on one CPU), --spread puts the daemon on
    another CPU than its client, --float pins neither; the two cannot be combined. Where
    they ran is read back from the kernel (the JSON's `cpus`)."""
    allowed = sorted(os.sched_getaffinity(0))
    found = {}
    for option in ((), ("--spread",), ("--float",)):
        out = xec("bench", "rtt", "--rounds", "1", "--per-round", "20", "--json", *option)
        found[option] = json.loads(out)
    shared, spread, floating = found.values()
    assert shared["placement"] == "shared"
    assert shared["cpus"] == {"client": allowed[:1], "daemon": allowed[:1]}
    assert spread["placement"] == "spread"
    if len(allowed) > 1:
        assert spread["cpus"] == {"client": allowed[:1], "daemon": allowed[1:2]}
    assert floating["placement"] == "float"
    assert floating["cpus"] == {"client": allowed, "daemon": allowed}
    both = subprocess.run(
        [sys.executable, "-m", "clients.cli", "bench", "rtt", "--spread", "--float"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_bench_rtt_spread_with_one_cpu_says_so() -> None:
    """Allowed one CPU, --spread cannot put the servers elsewhere: every process shares
    it, and the output says so rather than claiming a spread."""
    cpu = min(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "bench", "rtt", "--spread", "--json",
         "--rounds", "1", "--per-round", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cpus"] == {"client": [cpu], "daemon": [cpu]}
    assert f"one CPU allowed: all on CPU {cpu}" in done.stderr
