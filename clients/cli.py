"""`xec`: client-side tools: benchmarks and load tests (more as features land)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import bench, load


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
    bar = bench_sub.add_parser("barrier", help="a barrier by page store vs ioctl vs exec")
    bar.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    bar.add_argument("--count", type=int, default=200_000, help="page stores to time")

    load_p = sub.add_parser("load", help="load tests with many client processes")
    load_sub = load_p.add_subparsers(dest="which", required=True)
    lb = load_sub.add_parser("barrier", help="N processes writing their PCI barrier pages")
    lb.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    lb.add_argument("--clients", type=int, default=8, help="writer processes")
    lb.add_argument("--seconds", type=float, default=5.0)
    lb.add_argument("--bo-writes", action="store_true", help="interleave BO writes")
    lb.add_argument("--ioctls", action="store_true", help="interleave ioctls")
    lb.add_argument("--nice", type=int, default=0, help="niceness of the writers")
    lb.add_argument(
        "--prober-nice", type=int, default=0, help="niceness of the ioctl latency prober"
    )
    lb.add_argument(
        "--daemon-nice", type=int, default=None,
        help="renice the daemon (negative values need root), as a unit's Nice= would",
    )  # fmt: skip
    lb.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[],
        help="run once per writer count, e.g. 1,8,32,64",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "load":
        opts = load.LoadOptions(
            clients=args.clients,
            seconds=args.seconds,
            bo_writes=args.bo_writes,
            ioctls=args.ioctls,
            nice=args.nice,
            daemon_nice=args.daemon_nice,
            prober_nice=args.prober_nice,
        )
        return load.main_load(args.socket, opts, args.sweep)
    if args.which == "rtt":
        bench.bench_rtt(args.socket, args.rounds, args.per_round, args.spread)
    elif args.which == "mmap":
        bench.bench_mmap(args.socket, args.repeats)
    else:
        bench.bench_barrier(args.socket, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
