"""`xec load chaos`, short: hostile and careless clients leave the daemon as they found it."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from conftest import ROOT

from clients.chaos import clean, print_report


def test_a_short_chaos_run_leaves_the_daemon_clean() -> None:
    """Five seconds of fuzzers, forgers, hogs and SIGKILLed workers with unplugs: no
    restart, no unclean reply, no leaked descriptor or object, every kind of agent ran
    and was killed, the bystander was measured at rest and during the storm, and the
    storm showed its progress on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "clients", "load", "chaos", "--seconds", "5", "--agents", "5",
         "--seed", "11", "--unplug-every", "1", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # the whole account beside any failed check: a run that fails once in many must say why
    account = json.dumps(result, sort_keys=True)[:4000] + "\n" + done.stderr[-2000:]
    assert result["daemon_restarts"] == 0 and result["aux_restarts"] == 0, account
    assert result["unclean_replies"] == 0, account
    assert result["leaked_descriptors"] == 0 and result["leaked_objects"] == {}, account
    assert result["agents_killed"] > 0 and result["unplugs"] > 0, account
    assert set(result["agents_started"]) == {"worker", "fuzz", "forger", "hog"}, account
    phases = result["bystander"]["phases"]
    assert phases["idle"]["calls"] > 0 and phases["chaos"]["calls"] > 0, account
    assert not result["bystander"]["problems"], account
    assert not result["bystander"]["refusals"], account
    assert clean(result) and done.returncode == 0, account
    assert "s left: " in done.stderr and "agents started" in done.stderr  # progress
    report = io.StringIO()
    print_report(result, report)
    lines = report.getvalue().splitlines()
    for line in ("daemon restarts: 0", "unclean replies: 0", "leaked descriptors: 0"):
        assert line in lines
    assert any(line.startswith("bystander p99: ") for line in lines)
