"""`make demo`'s story (clients/demo.py) runs to its end and finds what it expects: it
starts its own daemon, aux driver and client processes, so this is the whole job a new
user runs first, end to end."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_demo_story_finds_everything_as_expected() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "clients.demo"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.rstrip().endswith("all as expected"), demo.stdout
    # the RDMA READs of ivy's host memory, before and after she rewrote it
    assert '"ivy\'s notes, v1."' in demo.stdout and '"ivy\'s notes, v2."' in demo.stdout
