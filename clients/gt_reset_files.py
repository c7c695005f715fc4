"""debugfs gtN/force_reset and force_reset_sync for a program under `xec run`.

IGT resets a GT by writing "1" to /sys/kernel/debug/dri/<minor>/gtN/force_reset (or
force_reset_sync, which returns once the reset is done). In the debugfs stand-in those
two are named pipes; a thread of `xec run` reads each and asks the daemon for the reset
(ADMIN_GT_RESET, which takes the admin role: root, or the [admin] group of the daemon's
configuration). The reset is made before the next write is read; the writer of
force_reset_sync does not wait for it, as it would on xe, but a job the reset stops ends
at its next preemption point, within a tenth of a millisecond of the daemon's turn.
Opening the file and closing it without writing (IGT's has_xe_gt_reset probe) does
nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .device import Device
from .errors import DaemonGone, XeError

NAMES = ("force_reset", "force_reset_sync")


@contextlib.contextmanager
def reset_files(debugfs: Path, socket_path: Path, gts: tuple[int, ...] = (0,)) -> Iterator[None]:
    """Named pipes gtN/force_reset[_sync] under each dri/<minor> of `debugfs`, served
    while the context lasts."""
    fifos = []
    for minor_dir in sorted((debugfs / "dri").iterdir()):
        for gt in gts:
            where = minor_dir / f"gt{gt}"
            where.mkdir(exist_ok=True)
            for name in NAMES:
                os.mkfifo(where / name, 0o600)
                fifos.append((where / name, gt))
    stop = threading.Event()
    admin = _Admin(socket_path)
    threads = [
        threading.Thread(target=_serve, args=(path, gt, stop, admin), daemon=True)
        for path, gt in fifos
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for path, _gt in fifos:  # a reader waiting in open() returns, reads EOF, stops
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        for thread in threads:
            thread.join(timeout=5)
        admin.close()


class _Admin:
    """The admin connection, opened at the first reset asked (most programs ask none)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.dev: Device | None = None
        self.lock = threading.Lock()
        self.refused = False

    def reset(self, gt: int) -> None:
        with self.lock:
            try:
                if self.dev is None:
                    self.dev = Device.open(self.socket_path, role="admin")
                self.dev.admin_gt_reset(gt)
            except (OSError, DaemonGone, XeError) as exc:
                if not self.refused:  # said once: the program goes on, unreset
                    print(f"xec run: gt{gt}/force_reset: no GT reset: {exc}", file=sys.stderr)
                self.refused = True

    def close(self) -> None:
        with self.lock:
            if self.dev is not None:
                self.dev.close()


def _serve(path: Path, gt: int, stop: threading.Event, admin: _Admin) -> None:
    while not stop.is_set():
        try:
            fd = os.open(path, os.O_RDONLY)  # waits for a writer
        except OSError:
            return
        try:
            data = b""
            while chunk := os.read(fd, 64):
                data += chunk[: 64 - len(data)]
        finally:
            os.close(fd)
        if data.strip() and not stop.is_set():
            admin.reset(gt)
