"""The aux driver as a process: its verbs socket, and its link to the daemon across the
daemon's restarts.

Every context belongs to the daemon its VM was imported from. When that daemon goes
away (it died; a socket unit restarts it), the contexts die with it: their regions and
QPs are let go at once, and each application's next verb answers EIO, as uverbs does
once its device is gone, so it closes the context and opens a new one (work requests
complete before IBV_POST_SEND answers, so none is left to flush). The driver
connects again meanwhile, with a growing pause, and serves new contexts against the
daemon that comes back; if none does within `reconnect_for` seconds it gives up
(DaemonUnavailable: `xec ib serve` exits 69, EX_UNAVAILABLE) rather than keep a socket
that can only answer errors.

An unplug of the daemon's device is the same end for the contexts (their VMs belong to
the device that went, and the daemon's connection of ours with them): the driver
watches the device's notice page, closes its link at the unplug and connects again
once REPLUG has plugged a new device in, however long the daemon stays unplugged.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import structlog
import trio

from protocols import SHORTAGE
from protocols.cli import connect_timeout

from ..errors import XeError
from ..transport import unreachable
from .driver import IbDriver
from .link import DaemonLink

log = structlog.get_logger("xec.ib")
RECONNECT_FOR = 30.0  # seconds to wait for the daemon to come back before giving up
RECONNECT_PAUSE = (0.05, 1.0)  # the first and the longest pause between two tries


def bind_verbs_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


class DaemonUnavailable(Exception):
    """No daemon to serve against: none at start, or none back in time after it went."""


class AuxRefused(Exception):
    """The daemon does not let this uid be an auxiliary driver (HELLO answered EACCES)."""


async def _open_link(daemon_path: Path, nursery: trio.Nursery) -> DaemonLink:
    """Connect as role aux, within the connect timeout ($XED_TIMEOUT, else 5 s); the
    link's reader runs in `nursery` until the daemon goes. A daemon that never answers
    raises unreachable()'s TimeoutError, one that refuses the role AuxRefused."""
    timeout = connect_timeout()
    link = await DaemonLink.connect(daemon_path)
    try:
        await nursery.start(link.run)
        with trio.fail_after(timeout):
            await link.hello("aux")
        notice = await link.unplug_notice()
    except trio.TooSlowError:
        link.close()
        raise unreachable(errno.ETIMEDOUT, daemon_path, timeout) from None
    except XeError as exc:
        link.close()
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise AuxRefused(
                f"the daemon at {daemon_path} refuses this uid ({os.getuid()}) the aux role: "
                "only root, the daemon's own uid and [aux] allowed_uids/allowed_gids of its "
                f"configuration may be an auxiliary driver ({exc.detail or exc.strerror})"
            ) from None
        raise
    except BaseException:
        link.close()
        raise
    nursery.start_soon(link.watch_unplug, notice)
    return link


async def _reconnect(daemon_path: Path, nursery: trio.Nursery, within: float) -> DaemonLink:
    """A link to the daemon once it is back (the socket unit restarts it), trying with a
    growing pause for `within` seconds; DaemonUnavailable after that."""
    deadline = trio.current_time() + within
    pause, why = RECONNECT_PAUSE[0], "not tried"
    while True:
        with trio.move_on_at(deadline):
            try:
                return await _open_link(daemon_path, nursery)
            except OSError as exc:  # refused, not there yet, or gone again mid-HELLO
                why = f"{type(exc).__name__}: {exc}"
                if exc.errno == errno.ENODEV:  # there, its device unplugged: wait for it
                    deadline = trio.current_time() + within
            await trio.sleep(pause)
            pause = min(2 * pause, RECONNECT_PAUSE[1])
        if trio.current_time() >= deadline:
            raise DaemonUnavailable(
                f"the xed daemon at {daemon_path} did not come back within {within:g} s ({why})"
            )


ACCEPT_PAUSE = 0.1  # seconds between tries while accept(2) finds no descriptor or memory


async def _accept(listener: trio.socket.SocketType, driver: IbDriver) -> None:
    """Serve each application that connects. Out of descriptors (any application may
    hold connections until the table is full) or of kernel memory: log, pause, go on;
    the connection waits in the backlog until an application lets some go (logged once
    per shortage, not at every try)."""
    short = False
    while True:
        try:
            conn, _ = await listener.accept()
        except OSError as exc:
            if exc.errno not in SHORTAGE:
                raise
            if not short:
                log.warning("accept_failed", errno=errno.errorcode.get(exc.errno or 0))
            short = True
            await trio.sleep(ACCEPT_PAUSE)
            continue
        short = False
        driver.nursery.start_soon(driver.serve_app, socket.socket(fileno=conn.detach()))


async def serve(
    verbs_path: Path,
    daemon_path: Path,
    *,
    reconnect_for: float = RECONNECT_FOR,
    task_status: trio.TaskStatus[IbDriver] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve applications on `verbs_path` as the daemon's aux driver, until cancelled.

    When the daemon goes away, every context dies with it (their VMs were that daemon's)
    and the driver connects again, serving new contexts against the daemon that comes
    back. DaemonUnavailable if there is none at start, or none back in `reconnect_for`
    seconds."""
    link: DaemonLink | None = None
    listener: trio.socket.SocketType | None = None
    gave_up: DaemonUnavailable | AuxRefused | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                try:
                    link = await _open_link(daemon_path, nursery)
                except OSError as exc:
                    what = exc.strerror if exc.filename else str(exc)
                    raise DaemonUnavailable(f"no xed daemon at {daemon_path}: {what}") from exc
                listener = trio.socket.from_stdlib_socket(bind_verbs_socket(verbs_path))
                driver = IbDriver(nursery)
                driver.attach(link)
                log.info(
                    "ib_ready", socket=str(verbs_path), device=link.identity and link.identity.name
                )
                task_status.started(driver)
                nursery.start_soon(_accept, listener, driver)
                while True:
                    await link.closed.wait()
                    link.close()
                    dead = driver.daemon_lost(link)
                    log.warning("daemon_lost", daemon=str(daemon_path), contexts=dead)
                    link = None
                    link = await _reconnect(daemon_path, nursery, reconnect_for)
                    driver.attach(link)
                    log.info("daemon_reconnected", daemon=str(daemon_path))
            except (DaemonUnavailable, AuxRefused) as exc:
                gave_up = exc  # raised below, alone rather than in the nursery's group
                nursery.cancel_scope.cancel()
    finally:
        if listener is not None:
            listener.close()
            verbs_path.unlink(missing_ok=True)
        if link is not None:
            link.close()
    if gave_up is not None:
        raise gave_up
