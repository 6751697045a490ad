"""``python -m vdev.bench ring|opencl|oversub|tenants``: figures beside their native baselines.

``ring`` runs the guest runtime's ``ava-bench`` against a real server over the
loopback transport on this machine, and with ``--vm`` also inside a lab guest
(uio path; slow under TCG); its baselines are a function call for latency and
memcpy for bandwidth.  ``opencl`` runs the OpenCL sample ``tests/samples/clbench.c``
twice in the same run: natively on the host's OpenCL, and through the device
(the ICD over the loopback transport), and prints both side by side.  ``oversub``
runs a workload at working sets from half to four times a server's device memory
(``vdev._oversub_bench``).  ``tenants`` runs VMs side by side under a manager:
shares against weights, throughput, interactive latency, the scheduler's cost
(``vdev._tenants_bench``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from ._cli import parse_size
from ._opencl_bench import report_opencl, run_opencl, run_vm_transfers
from ._oversub_bench import RATIOS, plot_oversub, report_oversub, run_oversub

#: A benchmark's figures by name, as ava-bench and clbench print them (JSON).
Figures = dict[str, Any]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"null_rt_median_us": 20.0, "async_cmds_per_s": 200_000, "echo_64m_ratio": 0.5}


def build_tools() -> str:
    out = subprocess.run([sys.executable, "-m", "guest_driver", "build"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return os.path.dirname(out.strip().splitlines()[-1])


@contextlib.contextmanager
def loopback_server(backend: str, log: IO[bytes] | None = None, options: tuple[str, ...] = ()
                    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A device server on a private socket (its output to ``log`` if given); yields
    the socket path and the process, stopped (by PID) on the way out, also when this
    process gets SIGTERM (SystemExit, outside trio; code that runs trio inside the
    block catches SIGTERM itself, see ``vdev.fuzz``)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield from _loopback_server(backend, log, options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _loopback_server(backend: str, log: IO[bytes] | None, options: tuple[str, ...] = ()
                     ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="ava-bench-", dir="/tmp") as d:
        sock = os.path.join(d, "bench.sock")
        server = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", sock,
                                   "--backend", backend, *(options or ("-q",))], cwd=ROOT,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the device server did not start")
                time.sleep(0.02)
            yield sock, server
        finally:
            stop_process(server)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (by PID, ours), then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def loopback_daemon(server_sock: str, log: IO[bytes] | None = None, *,
                    group: str | None = None, options: tuple[str, ...] = ()
                    ) -> Iterator[str]:
    """The guest daemon (ava-vdevd) serving a loopback server, as a VM's daemon serves
    its device; yields its socket (for AVA_VDEV_DAEMON), beside the server's.  ``group``
    (default: this process's) may connect.  Stopped by PID on the way out."""
    import grp
    path = os.path.join(os.path.dirname(server_sock), "daemon.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "guest_driver", "daemon", "--loopback",
                               server_sock, "--socket", path, "--max-memory", "1024",
                               "--group", group or grp.getgrgid(os.getgid()).gr_name,
                               *options], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                              stderr=log or subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the guest daemon did not start")
            time.sleep(0.02)
        yield path
    finally:
        stop_process(daemon)


def _ava_bench(build_dir: str, quick: bool, env: dict[str, str]) -> Figures:
    res = subprocess.run([os.path.join(build_dir, "ava-bench")] + (["--quick"] if quick else []),
                         env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"ava-bench failed: {res.stderr}")
    figures: Figures = json.loads(res.stdout)
    return figures


def run_loopback(build_dir: str, quick: bool, daemon: bool = False, pairs: int = 3
                 ) -> dict[str, Figures]:
    """ava-bench over the loopback transport; with ``daemon`` also through ava-vdevd (an
    unprivileged application's path), against the same server: ``pairs`` runs of each
    (``alternating_runs``), and each figure's median (this machine's noise between two
    runs is wider than the difference sought)."""
    with loopback_server("test") as (sock, _):
        direct_env = {"AVA_VDEV_SOCKET": sock}
        if not daemon:
            return {"loopback": _ava_bench(build_dir, quick, direct_env)}
        def through_daemon() -> Figures:
            # The server serves one client at a time: the daemon holds it only meanwhile.
            with loopback_daemon(sock) as path:
                # The direct loopback path maps 1 GiB; a process asks the daemon for 32 MiB
                # unless told: enough for the 64 MiB echo's payload and reply here.
                return _ava_bench(build_dir, quick, {
                    "AVA_VDEV_DAEMON": path, "AVA_VDEV_MEM": "512M"})
        runs = alternating_runs(pairs, lambda: _ava_bench(build_dir, quick, direct_env),
                                through_daemon)
    return {"loopback": median_figures(runs[0]), "daemon": median_figures(runs[1])}


def alternating_runs(pairs: int, first: Callable[[], Figures], second: Callable[[], Figures],
                     done: list[Figures] | None = None) -> tuple[list[Figures], list[Figures]]:
    """``pairs`` runs of each, in the order ABBA ABBA ...: the run just after a switch
    of path inherits the previous one's aftermath (an executor that is still ending, a
    daemon starting), and running each path first as often as second cancels that.
    Run in plain alternation, the second path measured 10 % slower on a burst of
    launches when both were the same.  ``done``: ``first``'s runs made already (the
    first pair then starts with the second)."""
    a: list[Figures] = list(done or [])
    b: list[Figures] = []
    for i in range(max(pairs, 1)):
        steps = [(a, first), (b, second)] if i % 2 == 0 else [(b, second), (a, first)]
        for into, run in steps:
            if len(into) <= i:
                into.append(run())
    return a, b


def median_figures(runs: list[Figures]) -> Figures:
    """Each figure's median over runs (the first run's shape)."""
    import statistics

    def med(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: med([v[k] for v in values]) for k in first}
        if isinstance(first, list):
            return [med([v[i] for v in values]) for i in range(len(first))]
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            # The same in every run (a size, a count): as it is, an int staying an int
            # (the median of an even number of values is a mean, a float).
            return first if values.count(first) == len(values) else statistics.median(values)
        return first
    out: Figures = med(runs)
    out["runs"] = len(runs)
    return out


def change_verdict(ours: float, theirs: float, higher_better: bool,
                   limit: float = 0.05) -> tuple[float, str]:
    """``ours`` against ``theirs`` as a relative change, and whether it is within
    ``limit`` on the worse side."""
    change = ours / theirs - 1 if theirs else 0.0
    worse = -change if higher_better else change
    return change, f"{'within' if worse <= limit else 'over'} {limit * 100:g} %"


def compare_daemon(direct: Figures, daemon: Figures) -> str:
    """The daemon path against the direct one, figure by figure (target: within 5 %)."""
    pairs = [("null round trip, median", direct["null_rt_us"]["median"],
              daemon["null_rt_us"]["median"], False),
             ("null round trip, p99", direct["null_rt_us"]["p99"], daemon["null_rt_us"]["p99"],
              False),
             ("asynchronous commands/s", direct["async_cmds_per_s"], daemon["async_cmds_per_s"],
              True)]
    pairs += [(f"echo {_size(a['size'])} bytes/s", a["bytes_per_s"], b["bytes_per_s"], True)
              for a, b in zip(direct["echo"], daemon["echo"], strict=True)]
    lines = [f"through ava-vdevd against the direct path (same server, medians of "
             f"{direct.get('runs', 1)} runs each, ABBA; target: within 5 %)"]
    for name, a, b, higher_better in pairs:
        change, verdict = change_verdict(b, a, higher_better)
        lines.append(f"  {name:28} {a:>14,.2f} {b:>14,.2f} {change:+8.1%}  {verdict}")
    return "\n".join(lines)


def run_vm(quick: bool) -> Figures:
    script = ("cd /mnt/ava && python3 -m guest_driver build --out /tmp/b >/dev/null && "
              f"AVA_VDEV_MEM=400M /tmp/b/ava-bench {'--quick' if quick else ''}")
    res = subprocess.run([sys.executable, "-m", "qemu", "run", "--hugepages", "256", "--timeout",
                          "900", "--", "sh", "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=960)
    if res.returncode != 0:
        raise SystemExit(f"the VM run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    figures: Figures = json.loads(res.stdout.strip().splitlines()[-1])
    return figures


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def report(name: str, f: Figures) -> str:
    call_us = f["native_call_ns"] / 1000
    rows = [
        ("null round trip, median", f"{f['null_rt_us']['median']:.2f} us",
         f"{call_us:.4f} us (call)", f"{f['null_rt_us']['median'] / call_us:,.0f}x"),
        ("null round trip, p99", f"{f['null_rt_us']['p99']:.2f} us", f"{call_us:.4f} us (call)",
         f"{f['null_rt_us']['p99'] / call_us:,.0f}x"),
        ("asynchronous commands", f"{f['async_cmds_per_s']:,.0f}/s",
         f"{f['native_calls_per_s']:,.0f}/s (calls)",
         f"{f['async_cmds_per_s'] / f['native_calls_per_s']:.2%}"),
    ]
    for e in f["echo"]:
        if e["bytes_per_s"] < 0 or not e["memcpy_bytes_per_s"]:
            rows.append((f"echo {_size(e['size'])}", "failed", "(out of DMA memory?)", "-"))
            continue
        rows.append((f"echo {_size(e['size'])}", f"{e['bytes_per_s'] / 1e9:.2f} GB/s",
                     f"{e['memcpy_bytes_per_s'] / 1e9:.2f} GB/s (memcpy)",
                     f"{e['bytes_per_s'] / e['memcpy_bytes_per_s']:.0%}"))
    lines = [f"ring benchmark, {name} ({f['transport']} transport)",
             f"  {'':28} {'device':>14} {'native':>26} {'ratio':>8}"]
    lines += [f"  {a:28} {b:>14} {c:>26} {d:>8}" for a, b, c, d in rows]
    big = f["echo"][-1]
    checks = [
        (f"null round trip median <= {TARGETS['null_rt_median_us']:g} us",
         f["null_rt_us"]["median"] <= TARGETS["null_rt_median_us"]),
        (f">= {TARGETS['async_cmds_per_s']:,} asynchronous commands/s",
         f["async_cmds_per_s"] >= TARGETS["async_cmds_per_s"]),
        (f"echo {_size(big['size'])} >= {TARGETS['echo_64m_ratio']:.0%} of memcpy",
         big["bytes_per_s"] >= TARGETS["echo_64m_ratio"] * big["memcpy_bytes_per_s"]),
    ]
    lines.append("  targets: " + "; ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in checks))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vdev.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["ring", "opencl", "oversub", "tenants"],
                        help="ring: the transport; opencl: OpenCL calls, native vs device; "
                             "oversub: throughput as the working set outgrows the device "
                             "memory; tenants: VMs sharing the device under a manager "
                             "(shares, throughput, interactive latency, scheduler cost)")
    parser.add_argument("--vm", action="store_true", help="ring, opencl: also measure inside a "
                        "lab guest (opencl: the transfers, as root: zero-copy, then copied "
                        "through staging with zero-copy off, then as an ordinary user, "
                        "lending through the ava_vdev_pin module)")
    parser.add_argument("--daemon", action="store_true",
                        help="ring, opencl: also measure through the guest daemon ava-vdevd "
                             "(an unprivileged application's path) beside the direct one")
    parser.add_argument("--pairs", type=int, default=3, metavar="N",
                        help="ring, opencl with --daemon: runs of each path, in the order "
                             "ABBA ABBA ..., each figure's median counting (default 3; "
                             "more narrow the machine's noise)")
    parser.add_argument("--quick", action="store_true",
                        help="ring, opencl: fewer iterations; tenants: 3.5 s workloads "
                             "(smoke test)")
    parser.add_argument("--no-examples", action="store_true",
                        help="opencl: leave out pyopencl's examples (they take a minute)")
    parser.add_argument("--seconds", type=float, default=6.0, metavar="S",
                        help="tenants: how long each workload runs (default 6)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--capacity", type=parse_size, default=32 << 20, metavar="SIZE",
                        help="oversub: the server's --device-memory (default 32M)")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS),
                        metavar="R,R,...", help="oversub: working set / device memory, the "
                        "first the baseline (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="oversub: runs of each case, the fastest counting (default 3)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="oversub: draw throughput against the ratio; tenants: shares "
                             "over time and the latency distributions (matplotlib)")
    args = parser.parse_args(argv)
    build_dir = build_tools()
    if args.what == "oversub":
        try:
            ratios = tuple(float(r) for r in args.ratios.split(","))
        except ValueError:
            parser.error(f"--ratios {args.ratios!r}: numbers separated by commas")
        figures = run_oversub(build_dir, args.capacity, ratios, repeat=max(args.repeat, 1),
                              progress=lambda what: print(f"  running {what}", file=sys.stderr,
                                                          flush=True))
        print(json.dumps(figures, indent=2) if args.json else report_oversub(figures))
        if args.plot:
            plot_oversub(figures, args.plot)
            print(f"plot: {args.plot}", file=sys.stderr)
        return 0
    if args.what == "tenants":
        from ._tenants_bench import plot_tenants, report_tenants, run_tenants
        figures = run_tenants(build_dir, seconds=args.seconds, quick=args.quick,
                              progress=lambda what: print(f"  running {what}", file=sys.stderr,
                                                          flush=True))
        print(json.dumps(figures, indent=2) if args.json else report_tenants(figures))
        if args.plot:
            plot_tenants(figures, args.plot)
            print(f"plot: {args.plot}", file=sys.stderr)
        return 0
    if args.what == "opencl":
        results = run_opencl(build_dir, quick=args.quick, examples=not args.no_examples,
                             daemon=args.daemon, pairs=args.pairs,
                             progress=lambda what: print(f"  running {what}", file=sys.stderr,
                                                         flush=True))
        if args.vm:
            results["vm"] = run_vm_transfers()
        print(json.dumps(results, indent=2) if args.json else report_opencl(results))
        return 0
    results = run_loopback(build_dir, args.quick, daemon=args.daemon, pairs=args.pairs)
    if args.vm:
        results["vm"] = run_vm(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        names = {"loopback": "host loopback", "daemon": "host loopback through ava-vdevd",
                 "vm": "lab guest"}
        for name, figures in results.items():
            print(report(names[name], figures))
        if "daemon" in results:
            print(compare_daemon(results["loopback"], results["daemon"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
