"""`xed`: the daemon (`xed serve`) and its admin tool (`xed ctl`)."""

from __future__ import annotations

import argparse
import gc
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import trio

from protocols import Event
from protocols import messages as m
from protocols.cli import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_INTERRUPTED,
    EX_USAGE,
    TIMEOUT_ENV,
    HelpFormatter,
    VersionAction,
    connect_timeout,
    socket_path,
)

from . import log as xlog
from . import systemd
from .config import Config, ConfigError, load
from .journal import stderr_is_journal
from .server import AlreadyRunning, ServerHandle, bind_listener, serve

STATUS_INTERVAL = 2.0  # seconds between STATUS= refreshes (sent only when the line changes)
DRAIN_POLL = 0.05  # how often the drain looks whether the last client has gone


class DrainingListener(socket.socket):
    """The listening socket, able to turn new connections away while the daemon drains.

    Once `draining` is set, each connection that arrives is accepted and closed at once
    (the client sees the end of the connection), so the accept loop stays parked instead
    of spinning on a socket that keeps polling readable.
    """

    draining = False

    def accept(self) -> tuple[socket.socket, Any]:
        while self.draining:
            conn, _ = super().accept()  # BlockingIOError when none is waiting: park
            conn.close()
            xlog.get().info("connection_refused", reason="draining")
        return super().accept()


def raise_nofile_limit() -> int:
    """Every BO and exported object is a descriptor: take all the kernel allows us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def status_line(handle: ServerHandle, barriers_per_s: float) -> str:
    """STATUS= for `systemctl status`: one line of clients, objects and barrier rate."""
    counts = handle.device.object_counts()
    mib = counts.bo_bytes / (1 << 20)
    return (
        f"clients: {handle.connections}, BOs: {counts.bos} ({mib:.1f} MiB), VMs: {counts.vms}, "
        f"exec queues: {counts.exec_queues}, dma-bufs: {counts.dma_bufs}, "
        f"barriers/s: {barriers_per_s:.0f}"
    )


async def _report_status(handle: ServerHandle, listener: DrainingListener) -> None:
    """Refresh STATUS= every STATUS_INTERVAL seconds while the line changes."""
    last = status_line(handle, 0.0)  # what READY=1 carried
    barriers, since = handle.device.stats["barriers"], trio.current_time()
    while True:
        await trio.sleep(STATUS_INTERVAL)
        handle.device.crash_point("sd_status")
        now, count = trio.current_time(), handle.device.stats["barriers"]
        line = status_line(handle, (count - barriers) / max(now - since, 1e-9))
        if listener.draining:
            line = f"draining: {line}"
        barriers, since = count, now
        if line != last:
            systemd.notify(f"STATUS={line}")
            last = line


async def _watchdog(handle: ServerHandle, period: float) -> None:
    """WATCHDOG=1 every `period` seconds, from the loop that serves: if the loop hangs,
    the pings stop and systemd kills and restarts us (Result=watchdog)."""
    while True:
        systemd.notify("WATCHDOG=1")
        await trio.sleep(period)
        handle.device.crash_point("sd_watchdog")


async def _hang_for_tests(delay: float) -> None:
    """TEST ONLY (XED_TEST_HANG_AFTER): block the whole loop after `delay` seconds, as a
    handler stuck in a system call would, so tests can see the watchdog fire."""
    await trio.sleep(delay)
    xlog.get().warning("test_hang", reason="XED_TEST_HANG_AFTER is set: blocking the loop")
    time.sleep(1e6)  # deliberately blocking: nothing else in the loop runs any more


async def _drain(
    handle: ServerHandle, listener: DrainingListener, signals: AsyncIterator[int], timeout: float
) -> None:
    """Refuse new connections and give connected clients up to `timeout` seconds to
    leave; a second SIGTERM/SIGINT cuts the wait short."""
    listener.draining = True
    log = xlog.get()
    start = trio.current_time()
    for xef in handle.device.clients():  # tell everyone still connected
        xef.send_event(
            Event.DAEMON_STOPPING,
            m.DaemonStopping(seconds=int(timeout), reason="the daemon is stopping"),
        )

    async def clients_gone(scope: trio.CancelScope) -> None:
        while handle.connections:
            await trio.sleep(DRAIN_POLL)
        scope.cancel()

    async def second_signal(scope: trio.CancelScope) -> None:
        async for signum in signals:
            log.info("drain_interrupted", signal=signal.Signals(signum).name)
            break
        scope.cancel()

    with trio.move_on_after(timeout) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clients_gone, nursery.cancel_scope)
            nursery.start_soon(second_signal, nursery.cancel_scope)
    log.info(
        "daemon_drained",
        clients_left=handle.connections,
        timed_out=deadline.cancelled_caught,
        seconds=round(trio.current_time() - start, 3),
    )


async def _run(
    config: Config,
    listener: DrainingListener,
    path: Path | None,
    drain_timeout: float = 2.0,
    hang_after: float | None = None,
) -> None:
    log = xlog.get()
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            handle: ServerHandle = await nursery.start(serve, config, listener, path)
            # What it took to start (modules, tables, the device) lives as long as the
            # daemon: the cyclic collector need not walk it again. Its every full
            # collection did, holding the interpreter ~8 ms: a pause for every
            # client and for the page watcher, whose acknowledgements wait for it.
            gc.freeze()
            # serve() is in its accept loop from here on: systemd may send us clients
            systemd.notify(f"READY=1\nSTATUS={status_line(handle, 0.0)}")
            # device tasks: a bug in them is logged and counted, and they start again;
            # the daemon never ends for want of a ping (nor a descriptor: systemd.notify)
            device = handle.device
            period = systemd.watchdog_period()
            if period is not None:
                device.start_forever(partial(_watchdog, handle, period), what="sd_watchdog")
            if systemd.notify_enabled():
                device.start_forever(partial(_report_status, handle, listener), what="sd_status")
            if hang_after is not None:
                nursery.start_soon(_hang_for_tests, hang_after)
            async for signum in signals:
                log.info(
                    "daemon_stopping",
                    signal=signal.Signals(signum).name,
                    clients=handle.connections,
                    drain_timeout=drain_timeout,
                )
                systemd.notify(f"STOPPING=1\nSTATUS=draining, clients: {handle.connections}")
                break
            await _drain(handle, listener, signals, drain_timeout)
            nursery.cancel_scope.cancel()


def _test_hang_after() -> float | None:
    """TEST ONLY: XED_TEST_HANG_AFTER=SECONDS makes the daemon block its own loop that
    long after starting (see _hang_for_tests). Never set it in a real deployment."""
    value = os.environ.get("XED_TEST_HANG_AFTER")
    return float(value) if value else None


def _fatal(event: str, exc: Exception, status: int) -> int:
    """A reason not to start, said where the operator looks: as an error-priority
    journal entry under systemd (a plain stderr line there would be priority 6, and
    `journalctl -p warning` would show nothing), as one plain line anywhere else."""
    if stderr_is_journal():
        xlog.get().error(event, error=str(exc), exit_status=status)
    else:
        print(f"xed: {exc}", file=sys.stderr)
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    xlog.configure(args.log_level)
    log = xlog.get()
    try:
        config = load(args.config)
        activated = systemd.listen_fds()
        if len(activated) > 1:
            raise systemd.ActivationError(
                f"expected one socket in LISTEN_FDS, got {len(activated)}"
            )
        hang_after = _test_hang_after()
    except (ConfigError, systemd.ActivationError, ValueError) as exc:
        return _fatal("config_invalid", exc, EX_CONFIG)
    systemd.forget_activation()
    nofile = raise_nofile_limit()
    path: Path | None
    if activated:
        sock, path = activated[0], None
    else:
        path = socket_path(args.socket)
        try:
            sock = bind_listener(path)
        except (AlreadyRunning, OSError) as exc:
            return _fatal("socket_unavailable", exc, EX_CANTCREAT)
    listener = DrainingListener(fileno=sock.detach())
    log.info(
        "daemon_starting",
        socket=str(path) if path else None,
        activated=bool(activated),
        nofile=nofile,
        watchdog_period=systemd.watchdog_period(),
        notify=systemd.notify_enabled(),
    )
    try:
        trio.run(_run, config, listener, path, args.drain_timeout, hang_after)
    finally:
        listener.close()
        if path is not None:
            path.unlink(missing_ok=True)
    log.info("daemon_stopped")
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    try:
        timeout = connect_timeout(args.timeout)
    except ValueError as exc:
        print(f"xed ctl: {exc}", file=sys.stderr)
        return EX_USAGE
    from .ctl import run  # the admin tool's client: `xed serve` never needs it

    value = str(args.gt) if args.action == "gt-reset" else args.level
    return run(socket_path(args.socket), args.action, args.json, value, timeout)


SOCKET_DEFAULT = "default: $XED_SOCKET, else $XDG_RUNTIME_DIR/xed/xed.sock, else /run/xed/xed.sock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xed", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser(
        "serve", help="run the daemon in the foreground", formatter_class=HelpFormatter,
        description="Run the daemon in the foreground until SIGTERM or SIGINT. Exit "
        "status: 0 stopped, 78 bad configuration, 73 cannot create the socket.",
    )  # fmt: skip
    serve_p.add_argument(
        "--socket", type=Path, metavar="PATH",
        help=f"the socket to listen on ({SOCKET_DEFAULT}; not used when socket-activated)",
    )
    serve_p.add_argument(
        "--config", type=Path, metavar="FILE",
        help="TOML file overriding the built-in device (default: the built-in device)",
    )  # fmt: skip
    serve_p.add_argument(
        "--log-level", default="info", choices=list(xlog.LEVELS), help="events below it are dropped"
    )
    serve_p.add_argument(
        "--drain-timeout", type=float, default=2.0, metavar="SECONDS",
        help="on SIGTERM, how long connected clients get to leave",
    )  # fmt: skip
    serve_p.set_defaults(func=cmd_serve)
    ctl_p = sub.add_parser(
        "ctl", help="inspect and steer a running daemon", formatter_class=HelpFormatter,
        description="Talk to a running daemon as its admin (root, the daemon's uid, or "
        "[admin] allowed_uids/allowed_gids). Exit status: 0 done, 69 no daemon, 77 not "
        "allowed, 1 refused.",
    )  # fmt: skip
    ctl_p.add_argument(
        "--socket", type=Path, metavar="PATH", help=f"the daemon's socket ({SOCKET_DEFAULT})"
    )
    ctl_p.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="how long to wait for the daemon to accept and answer "
        f"(default: ${TIMEOUT_ENV}, else 5)",
    )  # fmt: skip
    ctl_sub = ctl_p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("status", "object counts and counters of the device"),
        ("clients", "every connection: pid, uid, command, role, objects, barriers"),
        ("objects", "object counts, and each dma-buf and exported VM with who holds it"),
        ("stats", "per-op calls, refusals by errno, latency percentiles"),
        ("unplug", "unplug the device: ioctls answer ENODEV, mappings read zeros"),
        ("replug", "plug a new device in (connections opened before stay ENODEV)"),
        ("gt-reset", "reset a GT: its queues with a job running are banned"),
        ("log-level", "change the daemon's log level now"),
    ):
        action_p = ctl_sub.add_parser(
            action, help=text, description=text[0].upper() + text[1:] + ".",
            formatter_class=HelpFormatter,
        )  # fmt: skip
        if action == "log-level":
            action_p.add_argument("level", choices=list(xlog.LEVELS), help="the new level")
        if action == "gt-reset":
            action_p.add_argument("--gt", type=int, default=0, metavar="N", help="the GT (0)")
        action_p.add_argument(
            "--json", action="store_true", help="one JSON document instead of text"
        )
        action_p.set_defaults(func=cmd_ctl, level=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:  # `xed ctl` waiting on a daemon, stopped by Ctrl-C
        print("xed: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
