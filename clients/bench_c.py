"""The C rows of `xec bench`: round trips and barrier stores timed by a C program.

clients/preload/bench/rtt.c is the client, built beside the preload library. Through the
library (`xec run`'s environment) it issues DRM_IOCTL_VERSION as any C program would;
without it, it sends the same request's bytes to the raw echo server. It is driven in
rounds, one stdin line each, so its rows interleave with the Python ones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from protocols import Op, encode_request
from protocols import messages as m

from . import preload
from .run import NODES, environment


def _library_env(socket_path: Path) -> dict[str, str]:
    return environment(preload.build(), socket_path, NODES, None)


class CRounds:
    """The C client in a process of its own, answering each round with its timings."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.per_round = int(argv[-1])
        self.proc = subprocess.Popen(
            [str(preload.build_program("rtt")), *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.pid = self.proc.pid

    @classmethod
    def ioctl(cls, socket_path: Path, per_round: int) -> CRounds:
        """VERSION through the preload library, on /dev/dri/card0."""
        return cls(["ioctl", str(per_round)], _library_env(socket_path))

    @classmethod
    def echo(cls, echo_path: str, per_round: int) -> CRounds:
        """The VERSION request's bytes to a raw echo server: no library, no daemon."""
        payload = encode_request(1, Op.VERSION, m.DrmVersion()).hex()
        return cls(["echo", echo_path, payload, str(per_round)])

    def run(self, n: int) -> list[float]:
        """One round (n must be the per-round count given at start): microseconds."""
        assert n == self.per_round and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        samples = [float(x) for x in line.split()]
        if len(samples) != n:
            raise RuntimeError(f"the C client failed (status {self.proc.poll()})")
        return samples

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc.wait()


def barrier_store_us(socket_path: Path, count: int) -> float:
    """Microseconds per store to the PCI barrier page through the fault path, from C."""
    done = subprocess.run(
        [str(preload.build_program("rtt")), "barrier", str(count)],
        env=_library_env(socket_path), capture_output=True, text=True, timeout=600,
        check=True,
    )  # fmt: skip
    return float(done.stdout.strip())
