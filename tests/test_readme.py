"""The README's examples run as written: every Python block (but those marked as not run,
with the reason, in an HTML comment just above) and the C program, against a real daemon
(and the IB-like aux driver where a block opens it), each in a process of its own.
Every TOML block is taken as what it shows: a scenario (it has [[process]] tables) is
checked by the scenario loader and run; any other is a daemon configuration, loaded by
the daemon's own loader, which must end up with each setting the block gives."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.daemon import AuxDriverProcess, DaemonProcess
from clients.scenario.checks import load as load_scenario
from xed.config import load as load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)
VERBS = "/tmp/verbs.sock"  # where the README's aux driver listens (xec ib serve --socket)


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for match in _BLOCK.finditer(README):
        if match["lang"] != "python" or match["before"].startswith("<!-- not run"):
            continue
        body = match["body"]
        first = next(line for line in body.splitlines() if line.strip() and "import" not in line)
        blocks.append((first.strip()[:40], body))
    return blocks


BLOCKS = _python_blocks()


def _toml_blocks() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(configurations, scenarios), each as (README line of the block, its text)."""
    configs, scenarios = [], []
    for match in _BLOCK.finditer(README):
        if match["lang"] != "toml" or match["before"].startswith("<!-- not run"):
            continue
        line = f"README.md:{README.count(chr(10), 0, match.start('body'))}"
        body = match["body"] + "\n"
        (scenarios if "[[process]]" in body else configs).append((line, body))
    return configs, scenarios


CONFIGS, SCENARIOS = _toml_blocks()


@pytest.fixture(scope="module")
def readme_daemon() -> Iterator[tuple[DaemonProcess, AuxDriverProcess]]:
    with DaemonProcess() as daemon:
        driver = AuxDriverProcess(daemon.socket_path)
        with driver:
            yield daemon, driver


def test_the_readme_has_the_blocks_we_expect() -> None:
    """Not vacuous: the first program, dma-bufs, BAR0 and the aux driver's RDMA are run."""
    assert len(BLOCKS) >= 4, [name for name, _ in BLOCKS]


def test_the_readme_has_the_toml_blocks_we_expect() -> None:
    """Not vacuous: dma_buf, debugger and the full configuration; the scenario example."""
    assert len(CONFIGS) >= 3 and len(SCENARIOS) >= 1, (CONFIGS, SCENARIOS)


def _settings(table: dict[str, Any], where: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _settings(value, f"{where}{key}.")
        else:
            yield f"{where}{key}", value


@pytest.mark.parametrize("line,body", CONFIGS, ids=[line for line, _ in CONFIGS])
def test_config_block_is_what_the_daemon_loads(tmp_path: Path, line: str, body: str) -> None:
    """The daemon's configuration loader takes the block (no unknown section or setting,
    no refused value) and each setting in it is what the daemon then has."""
    path = tmp_path / "xed.toml"
    path.write_text(body)
    config: Any = load_config(path)
    for dotted, value in _settings(tomllib.loads(body)):
        got = config
        for part in dotted.split("."):
            got = getattr(got, part)
        expected = tuple(value) if isinstance(value, list) else value
        assert got == expected, (line, dotted, got, value)


@pytest.mark.parametrize("line,body", SCENARIOS, ids=[line for line, _ in SCENARIOS])
def test_scenario_block_is_checked_and_runs(
    readme_daemon: tuple[DaemonProcess, AuxDriverProcess], tmp_path: Path, line: str, body: str
) -> None:
    """The scenario loader finds no problem in the block (ScenarioError lists them), and
    `xec scenario run` of it against a daemon has every step hold."""
    daemon, _ = readme_daemon
    path = tmp_path / "scenario.toml"
    path.write_text(body)
    load_scenario(path)
    done = subprocess.run(
        [sys.executable, "-m", "clients", "scenario", "run", str(path), "--socket",
         str(daemon.socket_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (line, done.stdout, done.stderr)


@pytest.mark.parametrize("name,body", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_python_block_runs_as_written(
    readme_daemon: tuple[DaemonProcess, AuxDriverProcess], name: str, body: str
) -> None:
    """The block runs unchanged but for the aux driver's socket path (our own driver's),
    with XED_SOCKET naming the daemon; what its comments promise for print() is printed."""
    daemon, driver = readme_daemon
    code = body.replace(VERBS, str(driver.socket_path))
    env = dict(os.environ, XED_SOCKET=str(daemon.socket_path))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    promised = [
        line.split("# ", 1)[1].split(":")[0].strip()
        for line in body.splitlines()
        if line.lstrip().startswith("print(") and "# " in line and "b'" in line.split("# ", 1)[1]
    ]
    for text in promised:
        assert text in done.stdout, (text, done.stdout)


def test_the_c_program_runs_under_xec_run(
    readme_daemon: tuple[DaemonProcess, AuxDriverProcess], tmp_path: Path
) -> None:
    """"Running unmodified C programs": the heredoc compiles as the README says and prints
    what the README shows."""
    daemon, _ = readme_daemon
    section = README.split("## Running unmodified C programs", 1)[1]
    source = section.split("cat > bo.c <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    shown = re.search(r"^# (handle [^(]*?)\s*(\(.*)?$", section, re.M)
    assert shown is not None
    (tmp_path / "bo.c").write_text(source + "\n")
    subprocess.run(
        ["cc", "-I", str(ROOT / "clients" / "preload"), "-o", "bo", "bo.c"],
        cwd=tmp_path, check=True, timeout=120,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "clients", "run", "--socket", str(daemon.socket_path), "--",
         "./bo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # a fresh file's first handle is 1 on any daemon; fake offsets are the device's
    # own, so the offset is whatever the daemon gave
    offset = re.compile(r"offset 0x[0-9a-f]+")
    assert offset.sub("offset", done.stdout.strip()) == offset.sub("offset", shown[1])
