"""Which process a connection came from: one process instance, not a pid.

A pid names a process only while that process lives. Once it has exited and been
reaped, the kernel gives the number to the next process that forks, and a check that
stops at the pid (as the debugger's did) reaches a stranger. The kernel's answer is the
pidfd: a reference to one process that reports its exit and never follows the pid to a
newcomer.

The daemon keeps no pidfd per connection (that would be a descriptor each); it keeps
what tells the process instance apart from any other that has had or will have its pid:

- the inode of a pidfd of it: on pidfs (Linux 6.9 and later) every process has its own,
  never reused during the boot;
- its start time in clock ticks since boot (/proc/PID/stat), for older kernels, where
  every pidfd shares one inode (two processes given the same pid within one tick are
  then not told apart).

The process that opened a connection is pinned by SO_PEERPIDFD (Linux 6.5 and later:
the peer at connect(2), even if its pid has been reused since); without it, by
pidfd_open(2) of the SO_PEERCRED pid at accept, which cannot see a pid reused between
the peer's connect and our accept.
"""

from __future__ import annotations

import contextvars
import os
import select
import socket
from errno import EINVAL, ENOPROTOOPT, ESRCH

SO_PEERPIDFD = 77  # <asm-generic/socket.h>; the socket module does not know it yet

Instance = tuple[int, int]  # (start time in ticks, pidfd inode)


def pidfd_open(pid: int) -> int | None:
    """A pidfd of the process `pid` names now; None if there is none (or it is a thread).

    Raises OSError for anything else (EMFILE: the daemon is out of descriptors).
    """
    if not 0 < pid < 1 << 31:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (ESRCH, EINVAL):  # EINVAL: a thread id, not a process
            return None
        raise


def exited(pidfd: int) -> bool:
    """Whether the process has exited (a pidfd polls readable from then on)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def instance(pidfd: int, pid: int) -> Instance | None:
    """What identifies the process `pidfd` refers to (whose pid is `pid`), or None if it
    has exited: it is then no process any connection or debugger can name."""
    ino = os.fstat(pidfd).st_ino
    started = _start_time(pid)
    # Checked after reading /proc: a process still alive held its pid all along, so the
    # start time read was its own and not a newcomer's.
    if exited(pidfd):
        return None
    return started, ino


def peer_instance(sock: socket.socket, pid: int) -> Instance | None:
    """The process instance that connected `sock` (pid from SO_PEERCRED), or None if it
    is gone already."""
    try:
        pidfd: int | None = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno != ENOPROTOOPT:  # the peer was reaped already (before Linux 6.16)
            return None
        try:  # before Linux 6.5
            pidfd = pidfd_open(pid)
        except OSError:
            return None
    if pidfd is None:
        return None
    try:
        return instance(pidfd, pid)
    finally:
        os.close(pidfd)


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (0 if /proc hides it: the inode then decides alone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return 0
    # the command name (field 2) may hold spaces and parentheses: split after it
    after_comm = fields.rpartition(b")")[2].split()
    return int(after_comm[19]) if len(after_comm) > 19 else 0


# The pid of the process whose request is being answered: each connection's task sets
# its peer's, so a handler can ask what the kernel asks of `current`.
caller_pid: contextvars.ContextVar[int] = contextvars.ContextVar("caller_pid", default=0)
CAP_SYS_NICE = 23


def caller_capable(cap: int) -> bool:
    """capable(cap) of the calling process: whether `cap` is in its effective set now
    (/proc/PID/status, read as the request is answered, so a process that dropped its
    privileges since it connected is seen without them); False where it cannot be read."""
    pid = caller_pid.get()
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
