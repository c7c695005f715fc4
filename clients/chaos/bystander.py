"""The client that did nothing wrong: it measures its round trips while chaos goes on.

    python -m clients.chaos.bystander DAEMON_SOCKET

It makes VERSION calls back to back and, every so often, a BO it writes and reads back
through its mapping. Each line on stdin ("chaos", "stop") starts the next phase; at
"stop" it prints one JSON line: per phase, calls, p50 and p99 in microseconds, and what
went wrong (a refusal other than ENODEV while the device is unplugged, a BO that did not
read back what was written while the device stayed, the daemon dropping it). An unplug
leaves its connection one of the device that went (ENODEV for good): it opens a new one
as soon as REPLUG has plugged the next device in.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from errno import ENODEV

from ..device import Device
from ..errors import DaemonGone, XeError
from ..measure import percentile

BO_EVERY = 50
UNPLUGGED_PAUSE = 0.01  # seconds between two opens refused while the device is unplugged


def main(path: str) -> int:
    phases: dict[str, list[float]] = {"idle": [], "chaos": []}
    problems: list[str] = []
    refusals: dict[str, int] = {}
    state = {"phase": "idle"}

    def control() -> None:
        for line in sys.stdin:
            state["phase"] = line.strip()
            if state["phase"] == "stop":
                return
        state["phase"] = "stop"

    threading.Thread(target=control, daemon=True).start()
    dev: Device | None = Device.open(path)
    calls = 0
    while state["phase"] != "stop":
        phase = state["phase"]
        start = time.perf_counter()
        try:
            if dev is None:  # the device went: a connection to the next one, once it is in
                dev = Device.open(path)
            dev.version()
            phases.setdefault(phase, []).append(time.perf_counter() - start)
            calls += 1
            if calls % BO_EVERY == 0:
                handle = dev.gem_create(65536)
                with dev.mmap_bo(handle) as cpu:
                    cpu[100:108] = calls.to_bytes(8, "little")
                    if cpu[100:108] != calls.to_bytes(8, "little"):
                        dev.version()  # ENODEV if the unplug emptied it meanwhile
                        problems.append("a BO did not read back what was written")
                dev.gem_close(handle)
        except XeError as exc:
            if exc.errno != ENODEV:
                key = f"{exc.op} {exc.errno}"
                refusals[key] = refusals.get(key, 0) + 1
            elif dev is not None:  # unplugged: this connection is the old device's for good
                dev.close()
                dev = None
            else:  # still unplugged
                time.sleep(UNPLUGGED_PAUSE)
        except DaemonGone as exc:
            problems.append(f"the daemon dropped the bystander: {exc}")
            try:
                dev = Device.open(path)
            except OSError as gone:  # the daemon itself is gone: nothing more to see
                problems.append(f"cannot reconnect: {gone}")
                break
    report = {
        name: {
            "calls": len(samples),
            "p50_us": round(percentile(samples, 0.50) * 1e6, 1) if samples else 0,
            "p99_us": round(percentile(samples, 0.99) * 1e6, 1) if samples else 0,
        }
        for name, samples in phases.items()
    }
    print(json.dumps({"phases": report, "problems": problems, "refusals": refusals}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
