"""What the command lines of both sides share: which socket, how long to wait for the
daemon, what an exit status means, what to tell a user who cannot connect, and how
`--help` shows defaults.

`xed` and `clients` never import each other, so the rules live here, once. Pure
functions: the environment is an argument (os.environ unless given); nothing here
opens, stats or connects anything.
"""

from __future__ import annotations

import argparse
import errno as E
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SOCKET_ENV = "XED_SOCKET"
TIMEOUT_ENV = "XED_TIMEOUT"
SYSTEM_SOCKET = Path("/run/xed/xed.sock")  # where deploy/xed.socket listens
DEFAULT_TIMEOUT = 5.0  # seconds for connect and HELLO: a daemon answers in microseconds

# Exit statuses: sysexits.h where one fits (systemd, mail and sudo speak it too), the
# shell's 128 + signal for an interrupt, argparse's 2 for a usage error.
EX_OK = 0
EX_FAILURE = 1  # the command ran and found something wrong (a failed expectation)
EX_USAGE = 2
EX_UNAVAILABLE = 69  # no daemon (or aux driver) to talk to, or it went away
EX_SOFTWARE = 70  # a helper process of ours failed
EX_CANTCREAT = 73  # cannot create the socket to listen on
EX_NOPERM = 77  # the daemon (or the file system) said no to this uid
EX_CONFIG = 78  # a bad configuration file
EX_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C

_UNAVAILABLE = {
    E.ENOENT, E.ECONNREFUSED, E.ETIMEDOUT, E.EAGAIN, E.ECONNRESET, E.EPIPE, E.ENODEV,
    E.ENOTSOCK, E.ENOTDIR,
}  # fmt: skip
_NOPERM = {E.EACCES, E.EPERM}


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where a daemon listens when nobody says: $XDG_RUNTIME_DIR/xed/xed.sock for a
    user's own daemon, else the system socket."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "xed" / "xed.sock" if runtime else SYSTEM_SOCKET


def socket_path(
    given: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The one rule of every command and of the library: `--socket` (or the path a
    caller gives), else $XED_SOCKET, else the default."""
    env = os.environ if environ is None else environ
    if given is not None and os.fspath(given):
        return Path(given)
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    return default_socket_path(env)


def connect_timeout(given: float | None = None, environ: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for connect and HELLO: `--timeout` (or the caller's), else
    $XED_TIMEOUT, else DEFAULT_TIMEOUT. ValueError names a bad value and where it came from."""
    env = os.environ if environ is None else environ
    if given is not None:
        value, source = given, "--timeout"
    elif env.get(TIMEOUT_ENV):
        source = f"${TIMEOUT_ENV}"
        try:
            value = float(env[TIMEOUT_ENV])
        except ValueError:
            raise ValueError(
                f"{source} must be a number of seconds, not {env[TIMEOUT_ENV]!r}"
            ) from None
    else:
        return DEFAULT_TIMEOUT
    if not value > 0:
        raise ValueError(f"{source} must be a positive number of seconds, not {value!r}")
    return float(value)


def exit_status(errno: int | None) -> int:
    """The exit status for a failure that carries an errno (connect, HELLO, a refusal)."""
    if errno in _NOPERM:
        return EX_NOPERM
    if errno in _UNAVAILABLE:
        return EX_UNAVAILABLE
    return EX_FAILURE


def connect_failure(errno: int, group: str | None = None, timeout: float | None = None) -> str:
    """Why a connect or HELLO to the daemon failed, and what to check: the strerror of
    the OSError the library raises (its filename is the socket path). `group`: the group
    the socket (or its directory) belongs to, if the caller could see it."""
    if errno == E.ETIMEDOUT:
        waited = f" in {timeout:g} s" if timeout is not None else ""
        return (
            f"no answer from the daemon{waited} (starting, stuck, or failing to start?): "
            "check `systemctl status xed`; wait longer with --timeout or $XED_TIMEOUT"
        )
    if errno == E.EAGAIN:
        return (
            "the daemon's queue of new connections stays full (is it stuck?): "
            "check `systemctl status xed`"
        )
    if errno in _NOPERM:
        who = f"root and members of the group {group!r}" if group else "root and its group"
        add = f" (`usermod -aG {group} $USER`, then log in again)" if group else ""
        return f"permission denied: only {who} may connect{add}"
    text = os.strerror(errno)
    if errno in (E.ENOENT, E.ECONNREFUSED, E.ENOTDIR):
        return (
            f"{text} (no daemon listens there: check `systemctl status xed.socket xed`, "
            "or start one with `xed serve`)"
        )
    return text


class HelpFormatter(argparse.HelpFormatter):
    """--help as systemctl and docker show it: each option says its default, when it
    has one worth saying (not None, not a switch's, not a list still empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default: Any = action.default
        if (
            "%(default)" in text
            or "default:" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.nargs == 0  # a switch: its default is the others' absence
            or default == []
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class VersionAction(argparse.Action):
    """`--version`: the installed distribution's version and the protocol's, looked up
    only when asked (the metadata machinery is slow to import, and may be out of reach
    of a uid that can run the tool but not read all of the standard library)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version (and the protocol's) and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from .version import PROTOCOL_VERSION

        try:
            mine = version("xed")
        except PackageNotFoundError:  # a checkout that was never installed
            mine = "unknown"
        major, minor = PROTOCOL_VERSION
        print(f"{parser.prog} {mine} (protocol {major}.{minor})")
        parser.exit()
