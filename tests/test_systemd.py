"""deploy/ under a real systemd: each test boots its own in namespaces (tests/sandbox.py).

The units run as shipped (user xed-daemon, the full hardening, /run/xed sockets); only
ExecStart points at this checkout. The tests that boot systemd skip, saying why, without
root, without /usr/lib/systemd/systemd, or where namespaces or overlays cannot be set up.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from sandbox import (
    DEPLOY,
    ROOT,
    Sandbox,
    SandboxUnavailable,
    home_drop_in,
    wait_until,
    xed_units,
)

import xed.config
from xed.config import Config, load
from xed.device import promptness

SOCKET = "/run/xed/xed.sock"
CAP_SYS_RESOURCE = 24  # linux/capability.h
# connect with the client library, create a BO, write it through one mapping and read
# it back through another; print what the daemon saw of us
CLIENT = """
import json, os, sys
from clients import Device
with Device.open(sys.argv[1]) as dev:
    handle = dev.gem_create(0x10000)
    dev.mmap_bo(handle)[0:12] = b"hello, xed!\\n"
    back = bytes(dev.mmap_bo(handle)[0:12])
    print(json.dumps({"pid": os.getpid(), "read": back.decode(), "device": dev.identity.name}))
"""


def _boot(tmp_path: Path, extra: tuple[str, ...] = ()) -> Sandbox:
    units = xed_units(tmp_path / "units", extra=extra)
    try:
        sandbox = Sandbox.boot(units, tmp_path)
    except SandboxUnavailable as exc:
        pytest.skip(f"cannot boot systemd in namespaces here: {exc}")
    try:
        sandbox.systemctl("start", "systemd-journald.socket", "systemd-journald.service")
        sandbox.run("systemd-sysusers", str(DEPLOY / "sysusers.d" / "xed.conf"))
        sandbox.run("systemd-tmpfiles", "--create", str(DEPLOY / "tmpfiles.d" / "xed.conf"))
        sandbox.write("/etc/xed/xed.toml", (DEPLOY / "xed.toml").read_text())
    except BaseException:
        sandbox.shutdown()
        raise
    return sandbox


@pytest.fixture
def sd(tmp_path: Path) -> Iterator[Sandbox]:
    """A fresh systemd with xed's users, /run/xed, config and units installed."""
    with _boot(tmp_path) as sandbox:
        yield sandbox


def client(sandbox: Sandbox, socket: str = SOCKET) -> Any:
    """Run the CLIENT program inside the sandbox (as root); return what it printed."""
    done = sandbox.run(sys.executable, "-c", CLIENT, socket, env={"PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout)


def journal_entries(sandbox: Sandbox, *matches: str, unit: str = "xed.service") -> list[Any]:
    """What journald stored for `unit` (optionally only entries with FIELD=value
    `matches`, selected by journalctl itself), each entry a dict of its fields."""
    out = sandbox.run("journalctl", "--no-pager", "-u", unit, "-o", "json", *matches).stdout
    return [json.loads(line) for line in out.splitlines()]


def _read_back(value: Any) -> Any:
    """A field as the daemon logged it: it sends non-strings as JSON."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def journal(sandbox: Sandbox, unit: str = "xed.service") -> list[dict[str, Any]]:
    """The daemon's structured events, rebuilt from the native fields of its entries
    (XED_EVENT=... becomes "event": ...)."""
    return [
        {key[4:].lower(): _read_back(value) for key, value in entry.items() if key[:4] == "XED_"}
        for entry in journal_entries(sandbox, unit=unit)
        if "XED_EVENT" in entry
    ]


def _events(sandbox: Sandbox, name: str) -> list[dict[str, Any]]:
    return [e for e in journal(sandbox) if e.get("event") == name]


# --- the files themselves -------------------------------------------------------------
def test_units_verify_clean_and_security_exposure_low(tmp_path: Path) -> None:
    """`systemd-analyze verify` says nothing about the shipped units, and
    `systemd-analyze security` rates xed.service 1.0 or lower."""
    with _boot(tmp_path) as sandbox:
        # the shipped ExecStart path must exist for verify: point it at this venv
        sandbox.run("mkdir", "-p", "/opt/xed")
        sandbox.run("ln", "-s", sys.prefix, "/opt/xed/venv")
        units = [str(DEPLOY / u) for u in ("xed.socket", "xed.service", "xed@.socket")]
        done = sandbox.run(
            "systemd-analyze", "verify", *units, str(DEPLOY / "xed@.service"), check=False
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        security = sandbox.run(
            "systemd-analyze", "security", "--offline=yes", "--no-pager",
            str(DEPLOY / "xed.service"),
        ).stdout  # fmt: skip
    score = re.search(r"Overall exposure level for xed.service: ([0-9.]+)", security)
    assert score is not None, security
    assert float(score.group(1)) <= 1.0, security


def _service_section(path: Path) -> list[str]:
    """The settings of a unit's [Service] section, in order, without comments."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    section = lines[lines.index("[Service]") + 1 :]
    section = section[: next((i for i, x in enumerate(section) if x.startswith("[")), None)]
    return [line for line in section if line and not line.startswith("#")]


def test_home_drop_in_unhides_only_what_it_binds() -> None:
    """deploy/xed.service.d/home.conf, for an interpreter under /home or /root: an empty
    tmpfs over them and read-only binds of the interpreter and venv (every sandbox test
    runs with it whenever this interpreter lives there)."""
    settings = home_drop_in(["/root/.pyenv"])
    assert settings == ["ProtectHome=tmpfs", "BindReadOnlyPaths=/root/.pyenv"]


def test_template_service_matches_plain_service() -> None:
    """xed@.service runs like xed.service, with /etc/xed/%i.toml as its configuration."""
    plain = _service_section(DEPLOY / "xed.service")
    template = _service_section(DEPLOY / "xed@.service")
    assert [x.replace("/etc/xed/xed.toml", "/etc/xed/%i.toml") for x in plain] == template


def _settings(cls: type, prefix: str = "") -> set[str]:
    """Every setting of a configuration class, as dotted TOML keys."""
    names = set()
    for field in attrs.fields(cls):
        nested = getattr(xed.config, str(field.type), None)
        if isinstance(nested, type) and attrs.has(nested):
            names |= _settings(nested, f"{prefix}{field.name}.")
        else:
            names.add(prefix + field.name)
    return names


def _keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    names = set()
    for key, value in table.items():
        if isinstance(value, dict):
            names |= _keys(value, f"{prefix}{key}.")
        else:
            names.add(prefix + key)
    return names


def test_example_config_spells_out_every_default() -> None:
    """deploy/xed.toml loads, names every setting of xed/config.py, and gives each its
    built-in default."""
    assert load(DEPLOY / "xed.toml") == Config()
    example = tomllib.loads((DEPLOY / "xed.toml").read_text())
    assert _keys(example) == _settings(Config)


# --- running --------------------------------------------------------------------------
def test_client_activates_service_and_journal_has_events(sd: Sandbox) -> None:
    """Enabling xed.socket alone starts nothing; the first client starts xed.service
    (user xed-daemon), is served, and the journal holds its structured events."""
    sd.systemctl("enable", "--now", "xed.socket")
    assert sd.show("xed.service", "ActiveState") == "inactive"
    seen = client(sd)
    assert seen["read"] == "hello, xed!\n"
    assert sd.systemctl("is-active", "xed.service") == "active"
    main_pid = sd.show("xed.service", "MainPID")
    status = sd.run("cat", f"/proc/{main_pid}/status").stdout
    uid = sd.run("id", "-u", "xed-daemon").stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
    # systemd gives a service a session of its own (setsid): with autogroup, the
    # scheduler weighs it apart from users' sessions, as `xec load barrier` assumes
    stat = sd.run("cat", f"/proc/{main_pid}/stat").stdout
    assert stat.rsplit(")", 1)[1].split()[3] == main_pid, stat
    wait_until(lambda: bool(_events(sd, "client_disconnected")), 10, "client_disconnected")
    connected = _events(sd, "client_connected")
    assert [e["pid"] for e in connected] == [seen["pid"]]
    assert _events(sd, "daemon_starting")[0]["activated"] is True
    assert sd.show("xed.service", "StatusText").startswith("clients: ")


def test_journal_entries_carry_each_event_field_natively(sd: Sandbox) -> None:
    """Under systemd the daemon sends native journal entries: journalctl selects events
    by their fields, and a refused ioctl is a debug-priority entry naming its errno (at
    the shipped info level a refusal leaves no entry)."""
    sd.systemctl("enable", "--now", "xed.socket")
    seen = client(sd)
    refuse = "from clients import Device; import sys; d = Device.open(sys.argv[1])\n"
    refuse += "try: d.gem_close(int(sys.argv[2]))\nexcept OSError as e: print(e.errno)"
    env = {"PYTHONPATH": str(ROOT)}
    done = sd.run(sys.executable, "-c", refuse, SOCKET, "12345", env=env)
    assert done.stdout.strip() == "22"  # EINVAL, as drm_gem_close answers
    sd.run(sys.executable, "-m", "xed", "ctl", "--socket", SOCKET, "log-level", "debug", env=env)
    done = sd.run(sys.executable, "-c", refuse, SOCKET, "54321", env=env)
    assert done.stdout.strip() == "22"
    wait_until(lambda: bool(_events(sd, "client_disconnected")), 10, "client_disconnected")
    (connected,) = journal_entries(sd, "XED_EVENT=client_connected", f"XED_PID={seen['pid']}")
    assert connected["SYSLOG_IDENTIFIER"] == "xed"
    assert connected["PRIORITY"] == "6"
    assert connected["MESSAGE"].startswith("client_connected ")
    assert f"pid={seen['pid']}" in connected["MESSAGE"].split()
    assert "XED_TIMESTAMP" not in connected  # journald stamps entries itself
    # the sample client, the two refused ones and `xed ctl` have all come and gone
    wait_until(lambda: len(_events(sd, "client_disconnected")) >= 4, 10, "4 disconnects")
    (refused,) = journal_entries(sd, "XED_EVENT=ioctl_refused", "XED_OP=GEM_CLOSE")
    assert refused["XED_ERRNO"] == "EINVAL"
    assert "54321" in refused["XED_REASON"]  # the one made at debug level
    assert refused["PRIORITY"] == "7"
    assert refused["XED_CLIENT_ID"].isdigit()
    # no JSON lines on the stream beside the entries: every event went natively
    assert not [e for e in journal_entries(sd) if e.get("MESSAGE", "").startswith("{")]


def _threads(sandbox: Sandbox, pid: str) -> list[tuple[str, int, int]]:
    """Each thread of process `pid`: its name, real-time priority and scheduling policy
    (fields 2, 40 and 41 of /proc/PID/task/TID/stat)."""
    # an idle trio worker thread may end meanwhile (trio keeps one 10 s): skip it then
    script = f"for task in /proc/{pid}/task/*; do cat $task/stat 2>/dev/null; done; true"
    out = sandbox.run("sh", "-c", script).stdout
    threads = []
    for line in out.splitlines():
        head, tail = line.rsplit(")", 1)
        fields = tail.split()  # from field 3 on
        threads.append((head.split("(", 1)[1], int(fields[37]), int(fields[38])))
    return threads


def _watcher_runs_fifo(sandbox: Sandbox) -> None:
    """xed.service's page watcher thread, and it alone, runs SCHED_FIFO at priority 1,
    and the daemon said so in the journal."""
    wait_until(lambda: bool(_events(sandbox, "page_watcher_started")), 10, "the watcher")
    assert [e["scheduling"] for e in _events(sandbox, "page_watcher_started")] == ["fifo"]
    threads = _threads(sandbox, sandbox.show("xed.service", "MainPID"))
    watcher = promptness.THREAD_NAME.decode()
    assert [(p, policy) for name, p, policy in threads if name == watcher] == [(1, os.SCHED_FIFO)]
    others = {(p, policy) for name, p, policy in threads if name != watcher}
    assert others == {(0, os.SCHED_OTHER)}, threads


def _cannot_raise_rtprio() -> str | None:
    """Why no process of this test run (systemd in the sandbox included) can have an
    RLIMIT_RTPRIO of 1, or None: a hard limit below 1 and no CAP_SYS_RESOURCE to raise it."""
    hard = resource.getrlimit(resource.RLIMIT_RTPRIO)[1]
    status = Path("/proc/self/status").read_text().splitlines()
    effective = int(next(x for x in status if x.startswith("CapEff:")).split()[1], 16)
    if hard != resource.RLIM_INFINITY and hard < 1 and not effective >> CAP_SYS_RESOURCE & 1:
        return f"this test run's hard RLIMIT_RTPRIO is {hard} and it lacks CAP_SYS_RESOURCE"
    return None


def test_page_watcher_runs_fifo_under_the_shipped_units(sd: Sandbox) -> None:
    """The shipped units let the page watcher thread, and it alone, take SCHED_FIFO
    priority 1 with no capability: LimitRTPRIO=1, no RestrictRealtime=, sched_setscheduler
    allowed back (the journal says page_watcher_started scheduling=fifo); where systemd
    cannot grant the limit, the watcher falls back to an ordinary thread and says so."""
    sd.systemctl("enable", "--now", "xed.socket")
    client(sd)  # the first connection starts the daemon, and with it the watcher
    # the seccomp filter lets it sleep on the barrier words too (systemd >= 250's
    # @system-service has futex_waitv)
    wait_until(lambda: bool(_events(sd, "page_watcher_started")), 10, "the watcher")
    assert [e["sleeps_on"] for e in _events(sd, "page_watcher_started")] == ["futex_waitv"]
    assert sd.show("xed.service", "LimitRTPRIO") == "1"
    assert sd.show("xed.service", "RestrictRealtime") == "no"
    limits = sd.run("cat", f"/proc/{sd.show('xed.service', 'MainPID')}/limits").stdout
    rtprio = re.search(r"^Max realtime priority\s+(\d+)\s+(\d+)", limits, re.M)
    assert rtprio is not None, limits
    if _cannot_raise_rtprio() is None:
        assert rtprio.groups() == ("1", "1"), limits
        _watcher_runs_fifo(sd)
        return
    # Here (a container whose root lacks CAP_SYS_RESOURCE) systemd silently lowers the
    # limit to the hard one it has: the watcher must then fall back, say so in the
    # journal, and leave every thread an ordinary one.
    hard = resource.getrlimit(resource.RLIMIT_RTPRIO)[1]
    assert rtprio.groups() == (str(hard), str(hard)), limits
    wait_until(lambda: bool(_events(sd, "page_watcher_started")), 10, "the watcher")
    assert [e["scheduling"] for e in _events(sd, "page_watcher_started")] in (
        ["short slice"],
        ["normal"],
    )
    threads = _threads(sd, sd.show("xed.service", "MainPID"))
    assert {(p, policy) for _, p, policy in threads} == {(0, os.SCHED_OTHER)}, threads


def test_hardening_leaves_the_watcher_its_fifo(tmp_path: Path) -> None:
    """Whatever grants the privilege (here CAP_SYS_NICE, where RLIMIT_RTPRIO cannot be
    raised), neither the seccomp filter nor anything else of the shipped hardening
    refuses the page watcher its SCHED_FIFO priority 1, and no other thread takes it."""
    extra = ("CapabilityBoundingSet=CAP_SYS_NICE", "AmbientCapabilities=CAP_SYS_NICE")
    with _boot(tmp_path, extra) as sandbox:
        sandbox.systemctl("enable", "--now", "xed.socket")
        client(sandbox)
        _watcher_runs_fifo(sandbox)


def test_socket_file_owner_and_mode(sd: Sandbox) -> None:
    """/run/xed is root:xed 0750 and the socket root:xed 0660, as systemd made them."""
    sd.systemctl("start", "xed.socket")
    assert sd.run("stat", "-c", "%U:%G %a", "/run/xed").stdout.split() == ["root:xed", "750"]
    assert sd.run("stat", "-c", "%U:%G %a %F", SOCKET).stdout.strip() == "root:xed 660 socket"


def test_only_root_and_group_xed_may_connect(sd: Sandbox) -> None:
    """A process of the group xed connects; one of no group gets EACCES."""
    sd.systemctl("start", "xed.socket")
    xed_gid = sd.run("getent", "group", "xed").stdout.split(":")[2]
    program = """
import sys, os
from clients import Device
os.setgroups([int(g) for g in sys.argv[2:]]); os.setgid(65534); os.setuid(65534)
try:
    Device.open(sys.argv[1]).close()
    print("connected")
except PermissionError:
    print("EACCES")
"""
    env = {"PYTHONPATH": str(ROOT)}
    member = sd.run(sys.executable, "-c", program, SOCKET, xed_gid, env=env).stdout
    outsider = sd.run(sys.executable, "-c", program, SOCKET, env=env).stdout
    assert (member.strip(), outsider.strip()) == ("connected", "EACCES")


def test_stop_is_clean_and_socket_reactivates(sd: Sandbox) -> None:
    """`systemctl stop xed.service` ends it with Result=success and exit status 0,
    after STOPPING=1 and a drain; the socket stays and the next client starts it again."""
    sd.systemctl("start", "xed.socket")
    client(sd)
    sd.systemctl("stop", "xed.service")
    assert sd.show("xed.service", "Result") == "success"
    assert sd.show("xed.service", "ExecMainStatus") == "0"
    names = [e["event"] for e in journal(sd)]
    assert names.index("daemon_stopping") < names.index("daemon_drained")
    assert names[-1] == "daemon_stopped"
    assert sd.systemctl("is-active", "xed.socket") == "active"
    assert client(sd)["read"] == "hello, xed!\n"
    assert sd.systemctl("is-active", "xed.service") == "active"


def test_sigkilled_daemon_is_restarted(sd: Sandbox) -> None:
    """A daemon killed with SIGKILL is restarted (Restart=on-failure); clients work."""
    sd.systemctl("start", "xed.socket")
    client(sd)
    first = sd.show("xed.service", "MainPID")
    # the main process only: a kill of the whole cgroup may fail EIO on a busy machine
    # ("Failed to send signal SIGKILL to auxiliary processes"), and the main is the daemon
    sd.systemctl("kill", "--kill-who=main", "-s", "KILL", "xed.service")

    def restarted() -> bool:
        return (
            sd.show("xed.service", "NRestarts") == "1"
            and sd.show("xed.service", "SubState") == "running"
        )

    wait_until(restarted, 15, "xed.service restarted after SIGKILL")
    assert sd.show("xed.service", "MainPID") != first
    assert client(sd)["read"] == "hello, xed!\n"


def test_hung_loop_trips_watchdog_and_restarts(tmp_path: Path) -> None:
    """A daemon whose loop hangs stops its WATCHDOG=1 pings: systemd kills it
    (Result=watchdog) and restarts it."""
    # the loop blocks 1 s after start (test-only switch); the watchdog fires 2 s later
    extra = ("WatchdogSec=2", "Environment=XED_TEST_HANG_AFTER=1")
    with _boot(tmp_path, extra) as sandbox:
        sandbox.systemctl("start", "xed.service")
        results: set[str] = set()

        def watchdog_and_back() -> bool:
            results.add(sandbox.show("xed.service", "Result"))
            restarts = int(sandbox.show("xed.service", "NRestarts"))
            return "watchdog" in results and restarts >= 1

        wait_until(watchdog_and_back, 20, "the watchdog to kill and restart xed.service")
        failures = [e for e in journal(sandbox) if e.get("event") == "test_hang"]
        assert failures, "the daemon never reached its test hang"


def test_template_instance_serves_its_own_config(sd: Sandbox) -> None:
    """xed@gpu1.socket listens on /run/xed/gpu1.sock; its daemon reads /etc/xed/gpu1.toml."""
    sd.write("/etc/xed/gpu1.toml", '[device]\nname = "second-gpu"\n')
    sd.systemctl("start", "xed@gpu1.socket")
    assert client(sd, "/run/xed/gpu1.sock")["device"] == "second-gpu"
    assert sd.systemctl("is-active", "xed@gpu1.service") == "active"


def test_bad_config_exits_78_and_is_not_restarted(sd: Sandbox) -> None:
    """A bad configuration exits with EX_CONFIG (78): the service fails once and
    RestartPreventExitStatus=78 keeps it from restarting."""
    sd.write("/etc/xed/broken.toml", "[device]\nva_bits = 9\n")
    done = sd.run("systemctl", "start", "xed@broken.service", check=False)
    assert done.returncode != 0
    assert sd.show("xed@broken.service", "ExecMainStatus") == "78"
    assert sd.show("xed@broken.service", "Result") == "exit-code"
    assert sd.show("xed@broken.service", "NRestarts") == "0"
    assert sd.show("xed@broken.service", "ActiveState") == "failed"
    # journaled at error priority, so that `journalctl -p warning` shows it (a plain
    # stderr line would be priority 6)
    entries = journal_entries(sd, "XED_EVENT=config_invalid", unit="xed@broken.service")
    assert [e["PRIORITY"] for e in entries] == ["3"], entries
    assert "va_bits must be between 32 and 57" in entries[0]["XED_ERROR"]
    warned = sd.run("journalctl", "--no-pager", "-u", "xed@broken.service", "-p", "warning")
    assert "va_bits must be between 32 and 57" in warned.stdout
