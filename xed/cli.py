"""`xed`: the daemon (`xed serve`) and its admin tool (`xed ctl`)."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import sys
from pathlib import Path

import trio

from . import log as xlog
from . import systemd
from .config import EX_CONFIG, Config, ConfigError, load
from .ctl import run
from .server import AlreadyRunning, ServerHandle, bind_listener, default_socket_path, serve


def raise_nofile_limit() -> int:
    """Every BO and exported object is a descriptor: take all the kernel allows us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _run(config: Config, listener: socket.socket, path: Path | None) -> None:
    log = xlog.get()

    def ready(handle: ServerHandle) -> None:
        systemd.notify(f"READY=1\nSTATUS=serving {handle.device.identity.name}")

    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(serve, config, listener, path, ready)
            async for signum in signals:
                log.info("daemon_stopping", signal=signal.Signals(signum).name)
                systemd.notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def cmd_serve(args: argparse.Namespace) -> int:
    xlog.configure(args.log_level)
    log = xlog.get()
    try:
        config = load(args.config)
        activated = systemd.listen_fds()
    except (ConfigError, systemd.ActivationError) as exc:
        print(f"xed: {exc}", file=sys.stderr)
        return EX_CONFIG
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    nofile = raise_nofile_limit()
    path: Path | None
    if activated:
        listener, path = activated[0], None
    else:
        path = args.socket or default_socket_path()
        try:
            listener = bind_listener(path)
        except (AlreadyRunning, OSError) as exc:
            print(f"xed: {exc}", file=sys.stderr)
            return 1
    log.info("daemon_starting", socket=str(path), activated=bool(activated), nofile=nofile)
    try:
        trio.run(_run, config, listener, path)
    finally:
        listener.close()
        if path is not None:
            path.unlink(missing_ok=True)
    log.info("daemon_stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the daemon in the foreground")
    serve_p.add_argument("--socket", type=Path, help="listening socket (default: %(default)s)")
    serve_p.add_argument("--config", type=Path, help="TOML file overriding the built-in device")
    serve_p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    serve_p.set_defaults(func=cmd_serve)
    ctl_p = sub.add_parser("ctl", help="inspect and steer a running daemon")
    ctl_p.add_argument("--socket", type=Path, default=None, help="daemon socket")
    ctl_sub = ctl_p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("status", "object counts and counters of the device"),
        ("clients", "every connection: pid, uid, command, role, objects, barriers"),
        ("unplug", "unplug the device: ioctls answer ENODEV, mappings stay"),
        ("replug", "plug the device back in"),
    ):
        action_p = ctl_sub.add_parser(action, help=text)
        action_p.add_argument("--json", action="store_true", help="machine-readable output")
        action_p.set_defaults(
            func=lambda a: run(a.socket or default_socket_path(), a.action, a.json)
        )
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
