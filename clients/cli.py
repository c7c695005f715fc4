"""`xec`: client-side tools: benchmarks and load tests (more as features land)."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from . import bench, load
from .transport import default_socket_path


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
    mm.add_argument("--spread", action="store_true", help="do not pin both ends to one CPU")
    bar = bench_sub.add_parser("barrier", help="a barrier by page store vs ioctl vs exec")
    bar.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    bar.add_argument("--count", type=int, default=200_000, help="page stores to time")

    rd = bench_sub.add_parser("rdma", help="RDMA WRITE bandwidth vs memcpy, latency vs ioctl")
    rd.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    rd.add_argument("--repeats", type=int, default=20)
    rd.add_argument("--spread", action="store_true", help="do not pin the processes to one CPU")

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
        "--writer-policy", choices=sorted(load.POLICIES), default="normal",
        help="scheduling policy of the writers: idle or batch marks them as background "
        "load, which the scheduler makes way for (as for any batch job)",
    )  # fmt: skip
    lb.add_argument(
        "--prober-nice", type=int, default=0, help="niceness of the ioctl latency prober"
    )
    lb.add_argument(
        "--daemon-nice", type=int, default=None,
        help="renice the daemon (negative values need root), as a unit's Nice= would",
    )  # fmt: skip
    lb.add_argument(
        "--one-session", action="store_true",
        help="keep the daemon, the prober and the echo control in the writers' session "
        "(by default each has its own: with autogroup, the kernel shares CPU time "
        "between sessions first, as a deployment's daemon and a separate program have)",
    )  # fmt: skip
    lb.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[],
        help="run once per writer count, e.g. 1,8,32,64",
    )  # fmt: skip
    lc = load_sub.add_parser(
        "chaos",
        help="hostile and careless clients against a daemon of its own, then its account",
        description="Fuzzed datagrams, SIGKILL storms of clients doing real work, forged "
        "dma-bufs, hogs at their limits and unplug/replug, beside a bystander client; "
        "then daemon restarts, unclean replies, leaked descriptors and objects (all must "
        "be 0) and the bystander's round trips at rest and during. Exit status 0 if clean.",
    )
    lc.add_argument("--seconds", type=float, default=30.0, help="length of the storm (default: 30)")
    lc.add_argument("--agents", type=int, default=6, help="agents alive at once (default: 6)")
    lc.add_argument("--seed", type=int, default=None, help="repeat a run (default: random)")
    lc.add_argument(
        "--unplug-every", type=float, default=2.0,
        help="seconds between short unplugs of the device, 0 for none (default: 2)",
    )  # fmt: skip
    lc.add_argument("--json", action="store_true", help="the result as one JSON object")
    ib_p = sub.add_parser("ib", help="the IB-like auxiliary driver")
    ib_sub = ib_p.add_subparsers(dest="which", required=True)
    ib_serve = ib_sub.add_parser("serve", help="serve applications' verbs on a socket")
    ib_serve.add_argument("--socket", type=Path, required=True, help="the verbs socket to serve")
    ib_serve.add_argument("--daemon", type=Path, default=None, help="the xed daemon's socket")
    ib_serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    ib_serve.add_argument(
        "--reconnect-for", type=float, default=30.0, metavar="SECONDS",
        help="when the daemon goes away, wait this long for it to come back (the socket "
        "unit restarts it) before exiting with status 69 (default: 30)",
    )  # fmt: skip
    sc_p = sub.add_parser("scenario", help="run scenario files of many client processes")
    sc_sub = sc_p.add_subparsers(dest="which", required=True)
    sc_run = sc_sub.add_parser("run", help="run a scenario and print its result table")
    sc_run.add_argument("file", help="a scenario file, or the name of a shipped one")
    sc_run.add_argument("--socket", type=Path, help="use a running daemon instead of starting one")
    sc_check = sc_sub.add_parser("check", help="validate a scenario file without running it")
    sc_check.add_argument("file", help="a scenario file, or the name of a shipped one")
    sc_sub.add_parser("list", help="the shipped scenarios")
    run_p = sub.add_parser(
        "run",
        help="run an unmodified program against the daemon (LD_PRELOAD)",
        description="Run PROGRAM with the preload library: /dev/dri/card0 and "
        "/dev/dri/renderD128 exist for it, and each open of them is a drm file of the "
        "daemon (see README: Running unmodified C programs). The library is built with "
        "the system C compiler on first use. Exit status: PROGRAM's own (128+N if a "
        "signal N ended it); 69 if no daemon answers or no C compiler is found, 70 if "
        "the library does not compile, 127 if PROGRAM is not found.",
    )
    run_p.add_argument("--socket", type=Path, default=None, help="the daemon's socket")
    run_p.add_argument(
        "--node", choices=["card0", "renderD128"], default=None,
        help="the only device node that exists for PROGRAM (default: both; a node "
        "not chosen is missing, ENOENT, whatever the host has)",
    )  # fmt: skip
    run_p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    debug_p = sub.add_parser("debug", help="a small debugger for a process using xed")
    debug_sub = debug_p.add_subparsers(dest="which", required=True)
    att = debug_sub.add_parser("attach", help="attach to PID: list, dump, patch, follow")
    att.add_argument("pid", type=int)
    att.add_argument("--socket", type=Path, default=None, help="the daemon's socket")
    att.add_argument("--dump", action="append", default=[], metavar="CLIENT:VM:ADDR:LEN")
    att.add_argument("--patch", action="append", default=[], metavar="CLIENT:VM:ADDR:HEX")
    att.add_argument(
        "--follow", type=float, default=0.0, metavar="SECONDS",
        help="print the target's events for this long (or until it exits)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # the tools' own cleanup (daemon, helpers) has run by now
        print("xec: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "run":
        from .run import run

        program = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not program:
            print("xec run: no PROGRAM given (xec run [options] -- PROGRAM [ARGS...])",
                  file=sys.stderr)  # fmt: skip
            return 2
        return run(program, args.socket or default_socket_path(), args.node)
    if args.command == "debug":
        from .debugger import attach

        return attach(
            args.socket or default_socket_path(), args.pid, args.dump, args.patch, args.follow
        )
    if args.command == "scenario":
        from . import scenario

        return scenario.cli(args)
    if args.command == "ib":
        daemon = args.daemon or default_socket_path()
        return ib_main(args.socket, daemon, args.log_level, args.reconnect_for)
    if args.command == "load" and args.which == "chaos":
        from . import chaos

        chaos_opts = chaos.ChaosOptions(
            seconds=args.seconds, agents=args.agents, seed=args.seed,
            unplug_every=args.unplug_every,
        )  # fmt: skip
        return chaos.main(chaos_opts, args.json)
    if args.command == "load":
        opts = load.LoadOptions(
            clients=args.clients,
            seconds=args.seconds,
            bo_writes=args.bo_writes,
            ioctls=args.ioctls,
            nice=args.nice,
            daemon_nice=args.daemon_nice,
            prober_nice=args.prober_nice,
            writer_policy=args.writer_policy,
            one_session=args.one_session,
        )
        return load.main_load(args.socket, opts, args.sweep)
    if args.which == "rtt":
        bench.bench_rtt(args.socket, args.rounds, args.per_round, args.spread)
    elif args.which == "mmap":
        bench.bench_mmap(args.socket, args.repeats, args.spread)
    elif args.which == "rdma":
        bench.bench_rdma(args.socket, args.repeats, args.spread)
    else:
        bench.bench_barrier(args.socket, args.count)
    return 0


EX_UNAVAILABLE = 69  # sysexits.h: a service the program needs is not there


def ib_main(verbs: Path, daemon: Path, log_level: str, reconnect_for: float = 30.0) -> int:
    """Run the aux driver until SIGINT/SIGTERM; READY=1 on NOTIFY_SOCKET once serving.
    No daemon at start, or none back `reconnect_for` seconds after it went away: one
    line on stderr and status 69."""
    import logging
    import signal

    import structlog
    import trio

    from .ib.service import DaemonUnavailable, serve

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[log_level.upper()]
        ),
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(partial(serve, reconnect_for=reconnect_for), verbs, daemon)
                _notify_ready()
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    unavailable: BaseException | None = None
    try:
        trio.run(run)
    except* DaemonUnavailable as group:
        unavailable = group
        while isinstance(unavailable, BaseExceptionGroup):  # the nurseries it came through
            unavailable = unavailable.exceptions[0]
    if unavailable is not None:
        print(f"xec ib serve: {unavailable}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _notify_ready() -> None:
    import os
    import socket

    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


if __name__ == "__main__":
    sys.exit(main())
