"""`xec bench stalls` runs end to end at a small scale and prints a line per scenario and
the overall worst. Nothing here looks at how long anything took (tests never assert
wall-clock times): it checks that the bench starts its own daemon and bystander, runs
every scenario to the end and reports it, so `make bench` cannot rot unnoticed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

SCENARIOS = ("unmap-all", "prefetch", "unmap-range", "exec-backlog", "timeline-wait")
SCALE = "0.01"  # 2,000 mappings, 41 jobs, a 164-point chain: a few seconds in all


def xec(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_bench_stalls_prints_every_scenario_and_the_worst() -> None:
    out = xec("bench", "stalls", "--scale", SCALE).stdout
    for name in SCENARIOS:
        row = (
            rf"^{name}\s+idle\s+\d+\.\d\d/\d+\.\d\d ms\s+during\s+(\d+\.\d\d/\d+\.\d\d|-/-) ms"
            r"\s+worst stall: "
        )
        assert re.search(row, out, re.MULTILINE), out
    # "none" only if no round trip overlapped any request (each fits between two calls)
    overall = r"^overall worst stall: (\d+\.\d\d ms \([a-z-]+\)|none \(.*\))$"
    assert re.search(overall, out, re.MULTILINE), out


def test_bench_stalls_json_has_every_scenario() -> None:
    """--json: one document on stdout with a row per scenario; the text goes to stderr."""
    done = xec("bench", "stalls", "--scale", SCALE, "--json")
    result = json.loads(done.stdout)
    assert [row["name"] for row in result["scenarios"]] == list(SCENARIOS)
    for row in result["scenarios"]:
        assert row["idle"]["calls"] > 0, row
    assert result["mappings"] == 2000 and result["worst_scenario"] in (*SCENARIOS, None)
    assert "overall worst stall:" in done.stderr


def test_bench_stalls_scale_is_a_fraction() -> None:
    """Past 1 a scenario would cross the daemon's default limits: a usage error."""
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "bench", "stalls", "--scale", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "at most 1" in done.stderr, done.stderr
