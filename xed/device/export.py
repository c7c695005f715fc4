"""Objects that leave a process as a file descriptor: dma-bufs, and exported VMs later.

Each is one end of socketpair(AF_UNIX, SOCK_SEQPACKET); the daemon keeps the other.

- Identity: the inode of the handed-out end. A descriptor that comes back in
  SCM_RIGHTS is looked up by fstat(); any other kind of file, or another daemon's
  object, is not found.
- Lifetime: when every copy of the handed-out end is closed, our end reads EOF and
  polls POLLHUP (an empty datagram reads the same, so the poll decides: seqpacket.py);
  that is the kernel's release(). The daemon may itself hold a copy of the handed-out
  end for a while (the kernel's obj->dma_buf reference does the same): `hold()` and
  `let_go()`.
- Peers: whoever holds the handed-out end can speak on it. Another daemon importing a
  dma-buf does, to ask for the pages; requests arrive on our end and are answered there,
  one per scheduler turn and without ever waiting for room, so no holder can stall the
  device. A holder that shuts the descriptor down both ways ends it for every holder:
  the kernel shows that exactly as the last close.
"""

from __future__ import annotations

import collections
import errno as errnos
import os
import socket
import stat
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from protocols import (
    MAX_DATAGRAM,
    MAX_FDS,
    SPECS,
    EventMessage,
    ProtocolError,
    Role,
    decode_incoming,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    pack_fds,
    unpack_fds,
)
from protocols import messages as m

from ..inflight import outq, smallest_truesize
from ..seqpacket import EmptyRead, empty_read
from .errors import IoctlError
from .limits import Account, uncharge_export

if TYPE_CHECKING:
    from .device import XeDevice

_log = structlog.get_logger("xed")
PEER_UNREAD = 4  # answers on an exported object's descriptor a peer may leave unread
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
SHUT_POLL = 1.0  # seconds between looks for the last close of a descriptor shut for sending
_Exported = TypeVar("_Exported", bound="ExportedObject")


class ExportedObject:
    kind = "exported"

    def __init__(self, device: XeDevice) -> None:
        ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        ours.setblocking(False)
        self.device = device
        self._ours = ours
        self._held: int | None = theirs.detach()
        info = os.fstat(self._held)
        self.ino = info.st_ino
        self.st_dev = info.st_dev
        self.released = False
        self.generation = device.generation  # of the device that made it
        self.account: Account | None = None  # whose limits.exported it counts against
        device.exported[self.ino] = self
        device.counts[self.kind] += 1
        device.start_soon(self._serve, what=self.kind)

    # --- the daemon's own reference to the handed-out end ---------------------------------
    @property
    def held(self) -> bool:
        return self._held is not None

    def hold(self, fd: int) -> None:
        """Keep a copy of a handed-out end (from one that came back to us)."""
        if self._held is None:
            self._held = os.dup(fd)

    def let_go(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def new_fd(self) -> int:
        """A fresh descriptor of the handed-out end, for a reply (the server closes it)."""
        assert self._held is not None, "only a held object can be handed out again"
        return os.dup(self._held)

    def hand_out(self) -> int:
        """The descriptor for a reply, keeping no copy: the object lives as long as its
        holders keep theirs (a sync file, a syncobj's descriptor)."""
        fd = self.new_fd()
        self.let_go()
        return fd

    # --- release and peers -------------------------------------------------------------------
    def release(self) -> None:
        """Every copy of the handed-out end is closed: drop what the object held."""

    def settle(self) -> None:
        """Release the object now if every copy of the handed-out end is closed already.
        close(2) of the last copy releases a kernel object at once, so an ioctl right
        after it (VM_DESTROY after closing the export) must find it gone, not wait for
        our task to notice the hangup."""
        if self.released or self._held is not None:
            return
        if empty_read(self._ours) is EmptyRead.GONE:
            trio.lowlevel.notify_closing(self._ours)  # our task's wait ends, quietly
            self._release()

    def info(self) -> Any:
        """What the admin view shows of this object."""
        return m.XedExportedInfo(kind=self.kind, ino=self.ino, held_by_daemon=int(self.held))

    def forget(self, owner: Any) -> None:
        """A file is gone: drop any state kept on its behalf."""

    def peer_request(self, op: Any, args: Any) -> tuple[Any, list[int]]:
        raise IoctlError(errnos.EINVAL, f"a {self.kind} does not answer {op.name}")

    async def _serve(self) -> None:
        """Answer the peers until every copy of the handed-out end is closed, then
        release the object. However this ends (a crash of ours included: the device
        logs and counts it), the object is released, and only this object."""
        try:
            await self._serve_peers()
        except BaseException:  # a crash, or the daemon going: at once
            self._release()
            raise
        await self._release_in_turn()

    async def _release_in_turn(self) -> None:
        """Release the object now, unless others are being released already: then in
        their turn. A file closed with thousands of exports lets go of them all at once,
        and every one's task wakes in one scheduler batch: the first releases its own
        and stays on to release the others, RELEASE_BATCH between checkpoints, rather
        than every release in that one batch stalling the other clients."""
        device = self.device
        queue = device.releasing
        if queue is not None:
            queue.append(self)  # released in a later batch (unless settle() does first)
            return
        queue = device.releasing = collections.deque()
        try:
            self._release()  # as before: a release alone is not deferred a moment
            while True:
                await trio.lowlevel.checkpoint()  # the others woken with it queue meanwhile
                if not queue:
                    break
                for _ in range(min(RELEASE_BATCH, len(queue))):
                    _release_contained(queue.popleft())
        finally:
            device.releasing = None
            while queue:  # cancelled (the daemon going): the rest at once
                _release_contained(queue.popleft())

    async def _serve_peers(self) -> None:
        waited = True
        while True:
            try:
                data, ancdata, _flags, _ = self._ours.recvmsg(
                    MAX_DATAGRAM, _ANC_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._ours)
                except trio.ClosedResourceError:  # settle() released it under us
                    return
                waited = True
                continue
            except OSError as exc:
                # ECONNRESET: the last copy was closed with an answer of ours unread;
                # whatever else fails on our own end, nobody can reach the object again
                _log.debug(f"{self.kind}_peer_reset", ino=self.ino, errno=exc.errno)
                return
            fds, _junk = unpack_fds(ancdata)
            for fd in fds:  # peers never need to send us descriptors
                os.close(fd)
            if not data and not fds:
                why = empty_read(self._ours)
                if why is EmptyRead.GONE:
                    return
                if why is EmptyRead.SHUT:
                    await self._wait_gone()
                    return
            if not waited:
                # it was already waiting: take the next only after everyone else had a
                # turn, or a holder that floods the descriptor would have the device
                await trio.lowlevel.checkpoint()
            waited = False
            self.device.crash_point(self.kind)
            if data:
                self._answer_peer(data)

    async def _wait_gone(self) -> None:
        """A holder shut the descriptor for sending: nothing can come any more, but the
        object lives on in every copy. Our end now polls readable for good, so look for
        the last close now and then rather than at every wakeup."""
        _log.info(f"{self.kind}_peer_shut", ino=self.ino)
        while empty_read(self._ours) is not EmptyRead.GONE:
            await trio.sleep(SHUT_POLL)

    def _release(self) -> None:
        if self.released:
            return
        self.released = True
        self.let_go()
        self._ours.close()
        del self.device.exported[self.ino]
        self.device.counts[self.kind] -= 1
        uncharge_export(self)
        self.release()
        _log.debug(f"{self.kind}_released", ino=self.ino)

    def _answer_peer(self, data: bytes) -> None:
        try:
            request = decode_request(data)
            if Role.PEER not in SPECS[request.op].roles:
                message = f"{request.op.name} on a {self.kind}"
                raise ProtocolError(errnos.EACCES, message, request.id)
        except ProtocolError as exc:
            if exc.request_id:
                self._send_nowait(encode_error(exc.request_id, exc.errno, exc.message), [])
            return
        fds: list[int] = []
        try:
            if self.device.is_gone(self.generation):
                raise IoctlError(errnos.ENODEV, f"a {self.kind} of a device since unplugged")
            result, fds = self.peer_request(request.op, request.args)
            if fds and outq(self._ours.fileno()) >= PEER_UNREAD * smallest_truesize():
                # Descriptors in flight count against the daemon's user, whoever leaves
                # them unread, and every client's replies need that budget. A peer (a
                # daemon importing) reads each answer, and has at most a few imports of
                # one dma-buf under way; no message is smaller than the smallest
                # truesize, so fewer than PEER_UNREAD answers are unread below this.
                raise IoctlError(errnos.EMFILE, "answers with memory are still unread")
            self._send_nowait(encode_reply(request.id, request.op, 0, result), fds)
        except IoctlError as exc:
            self._send_nowait(encode_error(request.id, exc.errno, exc.message), [])
        except OSError as exc:  # opening the memory for the answer: no descriptor left
            message = f"the exporter cannot open its memory: {exc.strerror}"
            self._send_nowait(encode_error(request.id, errnos.ENOMEM, message), [])
        finally:
            for fd in fds:
                os.close(fd)

    def _send_nowait(self, data: bytes, fds: list[int]) -> None:
        # a peer that does not read its answers loses them; it cannot stall the daemon
        try:
            self._ours.sendmsg([data], pack_fds(fds))
        except OSError as exc:
            _log.debug("peer_answer_dropped", kind=self.kind, errno=exc.errno)


RELEASE_BATCH = 128  # objects one task releases between checkpoints (ExportedObject._serve)


def _release_contained(exported: ExportedObject) -> None:
    """exported._release() for the task releasing it in its turn: a crash of ours is
    logged and counted as the object's own task's would be, and the others go on."""
    try:
        exported._release()
    except Exception:
        exported.device.stats["task_crashes"] += 1
        _log.exception("task_crashed", task=exported.kind)


def lookup(device: XeDevice, fd: int) -> ExportedObject | None:
    """The object behind a descriptor a client sent us, if it is one of ours; ENODEV
    for one of a device since unplugged (after REPLUG: of the device that went)."""
    info = os.fstat(fd)
    if not stat.S_ISSOCK(info.st_mode):
        return None
    found = device.exported.get(info.st_ino)
    if found is None or found.st_dev != info.st_dev or found.released:
        return None
    if device.is_gone(found.generation):
        raise IoctlError(errnos.ENODEV, f"a {found.kind} of a device since unplugged")
    return found


def exported_as(
    device: XeDevice, fd: int, kind: type[_Exported], err: int, message: str
) -> _Exported:
    """The object of class `kind` behind `fd` (a sync file, a timeline, an exported VM),
    else IoctlError(err, message); ENODEV for one of a device since unplugged."""
    found = lookup(device, fd)
    if not isinstance(found, kind):
        raise IoctlError(err, message)
    return found


PEER_TIMEOUT = 2.0  # seconds another daemon has to answer on its object's descriptor


async def peer_call(fd: int, op: Any, args: Any) -> tuple[Any, list[int]]:
    """Ask the daemon behind a foreign exported object, over the object's descriptor.

    Anything that is not a live xed object answering in time (a pipe, an unconnected
    socket, a peer that says no) is EINVAL: "not a dma-buf", as the kernel puts it.
    An exported object's descriptor is one end of a socketpair: its peer has no address.
    A socket whose peer has one (a client's connection to a daemon, this one or another)
    is refused without a word said on it, so nobody's connection is ever spoken on.
    """
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise IoctlError(errnos.EINVAL, "not a dma-buf")
    # The descriptor's open file is shared with the client: never change its flags
    # (O_NONBLOCK would leak into the client's copy); ask per call with MSG_DONTWAIT.
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sock.family != socket.AF_UNIX:
            raise IoctlError(errnos.EINVAL, "not a dma-buf")
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_SEQPACKET:
            raise IoctlError(errnos.EINVAL, "not a dma-buf")
        try:
            peer = sock.getpeername()
        except OSError:
            raise IoctlError(errnos.EINVAL, "not a dma-buf (not connected)") from None
        if peer:
            raise IoctlError(errnos.EINVAL, "not a dma-buf (a connection to a named socket)")
        try:
            sock.sendmsg([encode_request(1, op, args)], [], socket.MSG_DONTWAIT)
        except OSError as exc:
            raise IoctlError(errnos.EINVAL, "not a dma-buf (cannot speak to it)") from exc
        with trio.move_on_after(PEER_TIMEOUT):
            while True:
                try:
                    data, ancdata, _flags, _ = sock.recvmsg(
                        MAX_DATAGRAM, _ANC_SPACE, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
                    )
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError as exc:
                    raise IoctlError(errnos.EINVAL, "not a dma-buf") from exc
                fds, _junk = unpack_fds(ancdata)
                try:
                    reply = decode_incoming(data, tuple(fds), {1: op})
                except ProtocolError:
                    _close(fds)
                    raise IoctlError(errnos.EINVAL, "not a dma-buf (no xed answer)") from None
                if isinstance(reply, EventMessage):
                    _close(fds)
                    continue
                if reply.errno:
                    _close(fds)
                    raise IoctlError(errnos.EINVAL, f"the owner refused: {reply.result.message}")
                return reply.result, fds
        raise IoctlError(errnos.EINVAL, "not a dma-buf (no answer)")
    finally:
        sock.close()


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
