"""debugfs gtN/force_reset and force_reset_sync for a program under `xec run`.

IGT resets a GT by writing "1" to /sys/kernel/debug/dri/<minor>/gtN/force_reset (or
force_reset_sync, which returns once the reset is done). In the debugfs stand-in those
are plain files that a thread of `xec run` looks at every few milliseconds: whatever is
written there (anything but white space) is taken away and the daemon asked for the
reset (ADMIN_GT_RESET, which takes the admin role: root, or the [admin] group of the
daemon's configuration). The files are made only when the daemon grants that role, so
a program that may not reset a GT finds none, as on a kernel without debugfs access.
Opening one without writing (IGT's has_xe_gt_reset probe), or reading it, does
nothing. The writer of force_reset_sync does not wait for the reset, as it would on
xe: it comes within the thread's next look, and a job it stops ends at its next
preemption point.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .device import Device
from .errors import DaemonGone, XeError

NAMES = ("force_reset", "force_reset_sync")
LOOK = 0.005  # seconds between two looks at the files
ADMIN_TIMEOUT = 5.0  # seconds the admin connection waits to connect


@contextlib.contextmanager
def reset_files(debugfs: Path, socket_path: Path, gts: tuple[int, ...] = (0,)) -> Iterator[None]:
    """gtN/force_reset[_sync] under each dri/<minor> of `debugfs`, served while the
    context lasts (none at all if the daemon refuses us its admin role)."""
    try:
        admin = Device.open(socket_path, role="admin", timeout=ADMIN_TIMEOUT)
    except (OSError, DaemonGone, XeError):
        yield
        return
    files = []
    for minor_dir in sorted((debugfs / "dri").iterdir()):
        for gt in gts:
            where = minor_dir / f"gt{gt}"
            where.mkdir(exist_ok=True)
            for name in NAMES:
                (where / name).write_bytes(b"")
                files.append((where / name, gt))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(files, stop, admin), daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=ADMIN_TIMEOUT)
        admin.close()


def _watch(files: list[tuple[Path, int]], stop: threading.Event, admin: Device) -> None:
    said = False
    while True:
        stopping = stop.wait(LOOK)  # a last look once stopped: a write just before exit
        for path, gt in files:
            try:
                if not path.stat().st_size:
                    continue
                with open(path, "r+b") as f:
                    written = f.read(64)
                    f.truncate(0)
            except OSError:
                continue
            if not written.strip(b" \t\n\0"):
                continue
            try:
                admin.admin_gt_reset(gt)
            except (OSError, DaemonGone, XeError) as exc:
                if not said:  # said once: the program goes on, unreset
                    where = f"{path.parent.name}/{path.name}"
                    print(f"xec run: {where}: no GT reset: {exc}", file=sys.stderr)
                said = True
        if stopping:
            return
