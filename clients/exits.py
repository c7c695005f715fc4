"""How an `xec` command ends: one line on stderr and a sysexits status for what a user
can fix (no daemon at that socket, not allowed, a bad file, Ctrl-C), a traceback only
for what is our bug.

The failures that are the user's to fix: an OSError naming a file (the library's
connect errors name the socket; `unreachable()` in transport.py), a refusal by the
daemon (XeError: its errno decides between 77 and 69), the daemon going away
(DaemonGone), and a daemon or aux driver of ours that did not come up (DaemonFailed).
Trio's nurseries may wrap any of these in exception groups; a group whose every leaf is
one of them is reported by its first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from protocols.cli import EX_INTERRUPTED, EX_UNAVAILABLE, exit_status

from .daemon import DaemonFailed
from .errors import DaemonGone, XeError


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def explain(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit status) for a failure that is not a bug, else None."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EX_INTERRUPTED
    if isinstance(exc, DaemonFailed):
        return str(exc), exc.status
    if isinstance(exc, XeError):
        return f"refused by the daemon: {exc}", exit_status(exc.errno)
    if isinstance(exc, DaemonGone):
        return f"{exc}: check `systemctl status xed` (or the daemon's log)", EX_UNAVAILABLE
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}", exit_status(exc.errno)
    return None


def reported(prog: str, command: Callable[[], int]) -> int:
    """Run `command`; a failure `explain` knows becomes `prog: message` and its status."""
    try:
        return command()
    except BaseException as exc:
        leaves = _leaves(exc)
        explained = [explain(leaf) for leaf in leaves]
        if not all(explained):
            raise
        interrupted = [e for e in explained if e and e[1] == EX_INTERRUPTED]
        message, status = (interrupted or explained)[0] or ("", 0)
        print(f"{prog}: {message}", file=sys.stderr)
        return status
