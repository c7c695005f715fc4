"""`xec`: client-side tools (benchmarks now; more as features land)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench_p = sub.add_parser("bench", help="speed figures, measured side by side")
    bench_sub = bench_p.add_subparsers(dest="which", required=True)
    rtt = bench_sub.add_parser("rtt", help="ioctl round trip vs a raw socket echo")
    rtt.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    rtt.add_argument("--rounds", type=int, default=10)
    rtt.add_argument("--per-round", type=int, default=2000)
    rtt.add_argument("--spread", action="store_true", help="do not pin both ends to one CPU")
    mm = bench_sub.add_parser("mmap", help="mmap of a 1 GiB BO vs a 4 KiB BO")
    mm.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    mm.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    if args.which == "rtt":
        bench.bench_rtt(args.socket, args.rounds, args.per_round, args.spread)
    else:
        bench.bench_mmap(args.socket, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
