"""`xec`: the client-side tools: benchmarks, load tests, scenarios, the IB-like aux
driver and a debugger.

Exit status: 0 done (every expectation held), 1 an expectation failed, 2 a usage error or
a bad scenario file, 69 no daemon to talk to (or it went away), 77 not allowed, 130
interrupted. `--json` prints the results as one JSON document on stdout; progress goes
to stderr either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from protocols.cli import (
    EX_NOPERM,
    EX_UNAVAILABLE,
    EX_USAGE,
    TIMEOUT_ENV,
    HelpFormatter,
    VersionAction,
    connect_timeout,
    socket_path,
)

from . import bench, exits, load
from .progress import results_as_json

SOCKET_DEFAULT = "$XED_SOCKET, else $XDG_RUNTIME_DIR/xed/xed.sock, else /run/xed/xed.sock"
OWN_DAEMON = "a running daemon's socket (default: start a daemon of its own, and stop it after)"


if TYPE_CHECKING:  # generic only in typeshed
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _sub(
    parent: Subparsers, name: str, text: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A command with help text, a description, and defaults shown in its --help."""
    return parent.add_parser(
        name, help=text, description=description or text[0].upper() + text[1:] + ".",
        formatter_class=HelpFormatter,
    )  # fmt: skip


def _connection_options(p: argparse.ArgumentParser, own_daemon: bool = True) -> None:
    """--socket and --timeout, as every command that talks to a daemon has them."""
    text = OWN_DAEMON if own_daemon else f"the daemon's socket (default: {SOCKET_DEFAULT})"
    p.add_argument("--socket", type=Path, metavar="PATH", help=text)
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help="how long to wait for a daemon to accept and answer HELLO; sets "
        f"${TIMEOUT_ENV} for the processes this command starts (default: ${TIMEOUT_ENV}, "
        "else 5)",
    )  # fmt: skip


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true",
        help="the results as one JSON document on stdout (the text goes to stderr)",
    )  # fmt: skip


def _placement_options(p: argparse.ArgumentParser) -> None:
    """Where the processes run (measure.place_here): by default all on one CPU."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--spread", dest="placement", action="store_const", const="spread",
        help="clients on one CPU, servers (daemon, echo servers) on another: every "
        "round trip crosses CPUs, each contestant's alike (by default all share one)",
    )  # fmt: skip
    where.add_argument(
        "--float", dest="placement", action="store_const", const="float",
        help="pin nothing: the scheduler places each pair, and the figures then compare "
        "placements as much as software",
    )  # fmt: skip
    p.set_defaults(placement="shared")


def _bench_parsers(sub: Subparsers) -> None:
    bench_p = _sub(sub, "bench", "speed figures, measured side by side in one run")
    bench_sub = bench_p.add_subparsers(dest="which", required=True, metavar="BENCHMARK")
    rtt = _sub(bench_sub, "rtt", "ioctl round trip vs a raw socket echo")
    _connection_options(rtt)
    rtt.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    rtt.add_argument("--per-round", type=int, default=2000, help="round trips per round")
    _placement_options(rtt)
    mm = _sub(bench_sub, "mmap", "mmap of a 1 GiB BO vs a 4 KiB BO")
    _connection_options(mm)
    mm.add_argument("--repeats", type=int, default=200, help="mappings of each size")
    _placement_options(mm)
    bar = _sub(bench_sub, "barrier", "a barrier by page store vs ioctl vs exec")
    _connection_options(bar)
    bar.add_argument("--count", type=int, default=200_000, help="page stores to time")
    rd = _sub(bench_sub, "rdma", "RDMA WRITE bandwidth vs memcpy, latency vs ioctl")
    _connection_options(rd)
    rd.add_argument("--repeats", type=int, default=20, help="runs of each size")
    _placement_options(rd)
    sc = _sub(
        bench_sub, "scale",
        "many clients and objects: daemon memory and time per object, start to READY=1",
    )  # fmt: skip
    sc.add_argument("--connections", type=int, default=10_000, help="concurrent connections")
    sc.add_argument("--objects", type=int, default=10_000, help="BOs, VMs and exec queues each")
    sc.add_argument(
        "--starts", type=int, default=7, help="daemon starts timed to READY=1 (their median)"
    )
    tp = _sub(bench_sub, "throughput", "ioctls per second from N client processes at once")
    _connection_options(tp)
    tp.add_argument(
        "--clients", type=_counts, default=[1, 4, 16, 64], metavar="N,N,...",
        help="how many client processes at once, one figure each (default: 1,4,16,64)",
    )  # fmt: skip
    tp.add_argument("--seconds", type=float, default=1.0, help="length of each round")
    # two rounds left each N's ratio about as noisy as the margin it is judged by
    tp.add_argument("--rounds", type=int, default=4, help="alternating rounds per N")
    st = _sub(
        bench_sub, "stalls",
        "how long one client's worst request holds every other client up",
        "How long one client's worst request holds every other client up: a bystander "
        "process's VERSION round trips, idle and during each scenario's expensive "
        "request (UNMAP_ALL, PREFETCH and UNMAP over many mappings, a backlog of jobs "
        "released by one fence, a long TIMELINE_WAIT), each within the default limits.",
    )  # fmt: skip
    _connection_options(st)
    st.add_argument(
        "--scale", type=_scale, default=1.0,
        help="every count at this fraction of the full size (200,000 mappings, 4096 "
        "jobs...): 0 < SCALE <= 1",
    )  # fmt: skip
    for p in (rtt, mm, bar, rd, sc, tp, st):
        _json_option(p)


def _counts(text: str) -> list[int]:
    """A list of positive counts, written as "1,4,16"."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts are at least 1: {text!r}")
    return counts


def _scale(text: str) -> float:
    """A fraction of the full size: above 0, at most 1 (past it, the daemon's limits)."""
    try:
        scale = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < scale <= 1:
        raise argparse.ArgumentTypeError(f"the scale is above 0 and at most 1: {text!r}")
    return scale


def _load_parsers(sub: Subparsers) -> None:
    load_p = _sub(sub, "load", "load tests with many client processes")
    load_sub = load_p.add_subparsers(dest="which", required=True, metavar="TEST")
    lb = _sub(load_sub, "barrier", "N processes writing their PCI barrier pages")
    _connection_options(lb)
    lb.add_argument("--clients", type=int, default=8, help="writer processes")
    lb.add_argument("--seconds", type=float, default=5.0, help="how long the writers write")
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
        "--daemon-nice", type=int, metavar="NICE",
        help="renice the daemon (negative values need root), as a unit's Nice= would "
        "(default: leave it as it is)",
    )  # fmt: skip
    lb.add_argument(
        "--one-session", action="store_true",
        help="keep the daemon, the prober and the echo control in the writers' session "
        "(by default each has its own: with autogroup, the kernel shares CPU time "
        "between sessions first, as a deployment's daemon and a separate program have)",
    )  # fmt: skip
    lb.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[],
        metavar="N,N,...", help="run once per writer count, e.g. 1,8,32,64 (default: once, "
        "with --clients)",
    )  # fmt: skip
    _json_option(lb)
    lc = _sub(
        load_sub, "chaos",
        "hostile and careless clients against a daemon of its own, then its account",
        "Fuzzed datagrams, SIGKILL storms of clients doing real work, forged dma-bufs, "
        "hogs at their limits and unplug/replug, beside a bystander client; then daemon "
        "restarts, unclean replies, leaked descriptors and objects (all must be 0) and "
        "the bystander's round trips at rest and during. Exit status 0 if clean.",
    )  # fmt: skip
    lc.add_argument("--seconds", type=float, default=30.0, help="length of the storm")
    lc.add_argument("--agents", type=int, default=6, help="agents alive at once")
    lc.add_argument("--seed", type=int, help="repeat a run (default: random)")
    lc.add_argument(
        "--unplug-every", type=float, default=2.0, metavar="SECONDS",
        help="seconds between short unplugs of the device, 0 for none",
    )  # fmt: skip
    _json_option(lc)


def _other_parsers(sub: Subparsers) -> None:
    ib_p = _sub(sub, "ib", "the IB-like auxiliary driver")
    ib_sub = ib_p.add_subparsers(dest="which", required=True, metavar="ACTION")
    ib_serve = _sub(
        ib_sub, "serve", "serve applications' verbs on a socket",
        "Serve applications' verbs on a socket as the daemon's auxiliary driver (role "
        "aux: root, the daemon's uid, or [aux] allowed_uids/allowed_gids), until SIGTERM "
        "or SIGINT. Exit status: 0 stopped, 69 no daemon, 77 not allowed the aux role.",
    )  # fmt: skip
    ib_serve.add_argument(
        "--socket", type=Path, required=True, metavar="PATH", help="the verbs socket to serve"
    )
    ib_serve.add_argument(
        "--daemon", type=Path, metavar="PATH",
        help=f"the xed daemon's socket (default: {SOCKET_DEFAULT})",
    )  # fmt: skip
    ib_serve.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help=f"how long to wait for the daemon to answer HELLO (default: ${TIMEOUT_ENV}, else 5)",
    )  # fmt: skip
    ib_serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="events below it are dropped",
    )  # fmt: skip
    ib_serve.add_argument(
        "--reconnect-for", type=float, default=30.0, metavar="SECONDS",
        help="when the daemon goes away, wait this long for it to come back (the socket "
        "unit restarts it) before exiting with status 69",
    )  # fmt: skip
    sc_p = _sub(sub, "scenario", "run scenario files of many client processes")
    sc_sub = sc_p.add_subparsers(dest="which", required=True, metavar="ACTION")
    sc_run = _sub(
        sc_sub, "run", "run a scenario and print its result table",
        "Run a scenario and print its result table. Exit status: 0 every expectation "
        "held, 1 one failed, 2 a bad file, 69 no daemon at --socket.",
    )  # fmt: skip
    sc_run.add_argument("file", help="a scenario file, or the name of a shipped one")
    _connection_options(sc_run)
    _json_option(sc_run)
    sc_check = _sub(
        sc_sub, "check", "validate a scenario file without running it",
        "Validate a scenario file without running it: every problem, with its place. "
        "Exit status: 0 good, 2 bad.",
    )  # fmt: skip
    sc_check.add_argument("file", help="a scenario file, or the name of a shipped one")
    _json_option(sc_check)
    sc_list = _sub(sc_sub, "list", "the shipped scenarios")
    _json_option(sc_list)
    run_p = _sub(
        sub, "run", "run an unmodified program against the daemon (LD_PRELOAD)",
        "Run PROGRAM with the preload library: /dev/dri/card0 and /dev/dri/renderD128 "
        "exist for it, and each open of them is a drm file of the daemon (see README: "
        "Running unmodified C programs). The library is built with the system C compiler "
        "on first use. Exit status: PROGRAM's own (128+N if a signal N ended it); 69 if "
        "no daemon answers or no C compiler is found, 70 if the library does not "
        "compile, 127 if PROGRAM is not found.",
    )  # fmt: skip
    _connection_options(run_p, own_daemon=False)
    _node_option(run_p, "PROGRAM")
    run_p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    _igt_parsers(sub)
    debug_p = _sub(sub, "debug", "a small debugger for a process using xed")
    debug_sub = debug_p.add_subparsers(dest="which", required=True, metavar="ACTION")
    att = _sub(
        debug_sub, "attach", "attach to PID: list, dump, patch, follow",
        "Attach to a process using xed (same uid, or root): list its VMs and bindings, "
        "dump or patch its memory at GPU addresses, follow its events. Exit status: 0 "
        "done, 1 refused, 69 no daemon, 77 not allowed.",
    )  # fmt: skip
    att.add_argument("pid", type=int, help="the process to attach to")
    _connection_options(att, own_daemon=False)
    att.add_argument(
        "--dump", action="append", default=[], metavar="CLIENT:VM:ADDR:LEN",
        help="print LEN bytes at GPU address ADDR of VM in connection CLIENT (repeatable)",
    )  # fmt: skip
    att.add_argument(
        "--patch", action="append", default=[], metavar="CLIENT:VM:ADDR:HEX",
        help="write the bytes HEX at GPU address ADDR of VM in connection CLIENT "
        "(repeatable; patches go before dumps)",
    )  # fmt: skip
    att.add_argument(
        "--follow", type=float, default=0.0, metavar="SECONDS",
        help="print the target's events for this long (or until it exits), 0 for none",
    )  # fmt: skip
    _json_option(att)


def _node_option(p: argparse.ArgumentParser, runs: str) -> None:
    """--node, as `xec run` and `xec igt run` take it (preload: the nodes a program sees)."""
    p.add_argument(
        "--node", choices=["card0", "renderD128"], default=None,
        help=f"the only device node that exists for {runs} (default: both; a node "
        "not chosen is missing, ENOENT, whatever the host has)",
    )  # fmt: skip


def _igt_parsers(sub: Subparsers) -> None:
    igt_p = _sub(
        sub, "igt", "IGT's xe tests, unmodified, against the daemon",
        "IGT's xe tests (igt-gpu-tools, as Debian unstable builds them), unmodified, run "
        "with the preload library against the daemon. The tests and every library they "
        "need are fetched from the Debian archive once, checked (gpgv, SHA256) and kept "
        "in $XDG_CACHE_HOME/xed/igt (see README: Running IGT's xe tests).",
    )  # fmt: skip
    igt_sub = igt_p.add_subparsers(dest="which", required=True, metavar="ACTION")
    fetch_p = _sub(
        igt_sub, "fetch", "fetch, check and unpack IGT's tests and libraries",
        "Fetch, check and unpack IGT's tests and the libraries they need, unless they "
        "are cached already. Exit status: 0 done, 65 a file failed its check, 69 the "
        "archive cannot be reached or the signature cannot be checked.",
    )  # fmt: skip
    fetch_p.add_argument(
        "--mirror", default="http://deb.debian.org/debian", metavar="URL",
        help="the Debian archive to fetch from",
    )  # fmt: skip
    fetch_p.add_argument(
        "--refresh", action="store_true",
        help="fetch the index again and unpack what it names now, cached or not",
    )  # fmt: skip
    fetch_p.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="do not check the archive's signature (no gpgv or Debian keyring here); "
        "every file is still checked against the index's SHA256",
    )  # fmt: skip
    _json_option(fetch_p)
    list_p = _sub(
        igt_sub, "list", "the xe tests there are, and the DRM core's fence tests (fetched first)"
    )
    _json_option(list_p)
    run_p = _sub(
        igt_sub, "run", "run one IGT test against the daemon",
        "Run one IGT test (fetched first if need be) under the preload library, as "
        "`xec run` runs a program: `xec igt run xe_mmap --run-subtest pci-membarrier`. "
        "Exit status: the test's own (IGT: 0 passed, 77 skipped, 98 a subtest failed); "
        "2 no such test; 65 or 69 as for fetch, or no daemon; 77 as root, a test not "
        "known to be harmless to the host without --as-root.",
    )  # fmt: skip
    _connection_options(run_p)
    run_p.add_argument(
        "--as-root", action="store_true",
        help="run a test as root even if it may touch the host (load kernel modules, "
        "suspend, write sysfs); the tests traced to leave it alone, which a refusal "
        "names (README: Running IGT's xe tests), need not",
    )  # fmt: skip
    _node_option(run_p, "the test")
    run_p.add_argument("test", metavar="TEST", help="an IGT test: xe_mmap, xe_prime_self_import...")
    run_p.add_argument("args", nargs=argparse.REMAINDER, help="the test's own options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xec", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _bench_parsers(sub)
    _load_parsers(sub)
    _other_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = " ".join(filter(None, ["xec", args.command, getattr(args, "which", None)]))
    timeout = getattr(args, "timeout", None)
    try:
        connect_timeout(timeout)  # a bad $XED_TIMEOUT is a usage error, said at once
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_USAGE
    if timeout is not None:  # for the library here and in every process we start
        os.environ[TIMEOUT_ENV] = repr(timeout)
    return exits.reported(prog, partial(_run, args))


def _run(args: argparse.Namespace) -> int:
    if args.command == "run":
        from .run import run

        program = args.program[1:] if args.program[:1] == ["--"] else args.program
        if not program:
            print("xec run: no PROGRAM given (xec run [options] -- PROGRAM [ARGS...])",
                  file=sys.stderr)  # fmt: skip
            return EX_USAGE
        return run(program, socket_path(args.socket), args.node)
    if args.command == "igt":
        from . import igt

        if args.which == "fetch":
            return igt.cmd_fetch(args.mirror, args.refresh, args.verify, args.json)
        if args.which == "list":
            return igt.cmd_list(args.json)
        test_args = args.args[1:] if args.args[:1] == ["--"] else args.args
        return igt.cmd_run(args.socket, args.node, args.test, test_args, args.as_root)
    if args.command == "debug":
        from .debugger import attach

        path = socket_path(args.socket)
        return attach(path, args.pid, args.dump, args.patch, args.follow, args.json)
    if args.command == "scenario":
        from . import scenario

        return scenario.cli(args)
    if args.command == "ib":
        return ib_main(args.socket, socket_path(args.daemon), args.log_level, args.reconnect_for)
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
        return load.main_load(args.socket, opts, args.sweep, args.json)
    with results_as_json(args.json) as emit:
        if args.which == "rtt":
            emit(bench.bench_rtt(args.socket, args.rounds, args.per_round, args.placement))
        elif args.which == "mmap":
            emit(bench.bench_mmap(args.socket, args.repeats, args.placement))
        elif args.which == "rdma":
            emit(bench.bench_rdma(args.socket, args.repeats, args.placement))
        elif args.which == "scale":
            from .bench_scale import bench_scale

            emit(bench_scale(args.connections, args.objects, args.starts))
        elif args.which == "throughput":
            from .throughput import bench_throughput

            emit(bench_throughput(args.socket, args.clients, args.seconds, args.rounds))
        elif args.which == "stalls":
            from .bench_stalls import bench_stalls

            emit(bench_stalls(args.socket, args.scale))
        else:
            emit(bench.bench_barrier(args.socket, args.count))
    return 0


def ib_main(verbs: Path, daemon: Path, log_level: str, reconnect_for: float = 30.0) -> int:
    """Run the aux driver until SIGINT/SIGTERM; READY=1 on NOTIFY_SOCKET once serving.
    No daemon at start, or none back `reconnect_for` seconds after it went away: one
    line on stderr and status 69; the daemon refusing us the aux role: 77."""
    import logging
    import signal

    import structlog
    import trio

    from .ib.service import AuxRefused, DaemonUnavailable, serve

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

    failure: BaseException | None = None
    try:
        trio.run(run)
    except* (DaemonUnavailable, AuxRefused) as group:
        failure = group
        while isinstance(failure, BaseExceptionGroup):  # the nurseries it came through
            failure = failure.exceptions[0]
    if failure is not None:
        print(f"xec ib serve: {failure}", file=sys.stderr)
        return EX_NOPERM if isinstance(failure, AuxRefused) else EX_UNAVAILABLE
    return 0


def _notify_ready() -> None:
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
