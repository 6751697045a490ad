"""``python -m vdev.bench opencl``: what OpenCL calls cost through the device, against
native OpenCL in the same run.

``tests/samples/clbench.c`` runs twice, natively on the host's OpenCL and through the
device (the ICD over the loopback transport, a fresh server), and prints its figures
(see that file), and the host's own time per call is measured in-process
(``_host_cost``).  pyopencl's examples, from the lab root, then run the same two ways,
cold (empty pyopencl and kernel caches: a fresh cache directory, a fresh server) and
warm (the same again).  With ``--vm`` clbench's transfers also run in a lab guest,
as root, where they lend the application's pages (zero-copy) and the host moves the
bulk data, so the bandwidth means something under TCG too; then again with zero-copy
off, copied through staging as an ordinary user's are.
Figures are printed beside the issue's targets; nothing here asserts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._host_cost import host_cost

Figures = dict[str, Any]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: pyopencl's examples that finish in seconds on a CPU and need no display.
EXAMPLES = ("demo.py", "demo_array.py", "demo_elementwise.py", "demo_elementwise_complex.py",
            "demo_meta_template.py", "demo-struct-reduce.py", "narray.py", "pi-monte-carlo.py",
            "n-body.py")
TRANSFER_SIZES = ("4k", "1m", "64m")


def _compile(out_dir: str) -> str:
    exe = os.path.join(out_dir, "clbench")
    subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(ROOT, "tests", "samples", "clbench.c"),
                    "-lOpenCL"], check=True)
    return exe


def _vendors(out_dir: str, build_dir: str) -> str:
    vendors = os.path.join(out_dir, "vendors")
    os.makedirs(vendors, exist_ok=True)
    with open(os.path.join(vendors, "ava.icd"), "w") as f:
        f.write(os.path.join(build_dir, "libava_icd.so") + "\n")
    return vendors


def _clbench(exe: str, env: dict[str, str], args: list[str], what: str) -> Figures:
    res = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"clbench ({what}) failed: {res.stderr[-2000:]}")
    figures: Figures = json.loads(res.stdout.strip().splitlines()[-1])
    return figures


def lab_examples() -> str | None:
    """pyopencl's examples in the lab root, or None when the lab has not been built."""
    res = subprocess.run([sys.executable, "-m", "qemu", "lab", "examples"], cwd=ROOT,
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def _examples_wall(examples: str, env: dict[str, str], cache: str) -> float:
    """Seconds for every example, one after the other, with ``cache`` as the cache home."""
    env = dict(env, XDG_CACHE_HOME=cache, POCL_CACHE_DIR=os.path.join(cache, "pocl"),
               PYOPENCL_CTX="0", MPLBACKEND="Agg")
    start = time.monotonic()
    for example in EXAMPLES:
        res = subprocess.run([sys.executable, example], cwd=examples, env=env,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"pyopencl example {example} failed: {res.stderr[-2000:]}")
    return time.monotonic() - start


#: Alternating runs of clbench, directly and through ava-vdevd, with --daemon.
DAEMON_PAIRS = 3


def run_opencl(build_dir: str, *, quick: bool = False, examples: bool = True,
               daemon: bool = False, pairs: int = DAEMON_PAIRS,
               progress: Callable[[str], None] = lambda _: None) -> Figures:
    """{"native": clbench's figures, "device": ..., "examples": {...} or a reason}; with
    ``daemon`` also "daemon": clbench through ava-vdevd on the same server."""
    from .bench import alternating_runs, loopback_daemon, loopback_server, median_figures
    args = ["--quick"] if quick else []
    results: Figures = {}
    with tempfile.TemporaryDirectory(prefix="ava-clbench-", dir="/tmp") as d:
        exe = _compile(d)
        vendors = _vendors(d, build_dir)
        progress("clbench, natively")
        results["native"] = _clbench(exe, dict(os.environ), args, "native")
        with loopback_server("opencl") as (sock, _):
            progress("clbench, through the device")
            device_env = dict(os.environ, OCL_ICD_VENDORS=vendors, AVA_VDEV_SOCKET=sock)
            results["device"] = _clbench(exe, device_env, args, "device")
            if daemon:
                # Pairs against the same server, each path first as often as second, each
                # figure's median: this machine's noise between two runs is wider than the
                # difference sought.  The server takes one client at a time: the daemon
                # holds it meanwhile.
                def direct() -> Figures:
                    progress("clbench, through the device")
                    return _clbench(exe, device_env, args, "device")

                def through_daemon() -> Figures:
                    with loopback_daemon(sock) as path:
                        progress("clbench, through the device and ava-vdevd")
                        # As much DMA memory as the direct loopback path maps (1 GiB).
                        env = dict(os.environ, OCL_ICD_VENDORS=vendors, AVA_VDEV_DAEMON=path,
                                   AVA_VDEV_MEM="1G")
                        return _clbench(exe, env, args, "daemon")
                directs, daemons = alternating_runs(pairs, direct, through_daemon,
                                                    done=[results["device"]])
                results["daemon"] = median_figures(daemons)
                results["daemon_direct"] = median_figures(directs)
        progress("the host's own time per call, in-process")
        results["host"] = host_cost(1000 if quick else 3000)
        if not examples:
            results["examples"] = {"skipped": "--no-examples"}
            return results
        where = lab_examples()
        if where is None:
            results["examples"] = {"skipped": "the lab is not built (make lab): pyopencl's "
                                              "examples come from its root"}
            return results
        walls: Figures = {}
        for side in ("native", "device"):
            cache = os.path.join(d, f"cache-{side}")
            os.makedirs(cache)
            if side == "native":
                for state in ("cold", "warm"):
                    progress(f"pyopencl examples, natively, {state}")
                    walls[f"native_{state}_s"] = _examples_wall(where, dict(os.environ), cache)
                continue
            with loopback_server("opencl") as (sock, _):    # a fresh server: cold caches
                env = dict(os.environ, OCL_ICD_VENDORS=vendors, AVA_VDEV_SOCKET=sock)
                for state in ("cold", "warm"):
                    progress(f"pyopencl examples, through the device, {state}")
                    walls[f"device_{state}_s"] = _examples_wall(where, env, cache)
        results["examples"] = walls
    return results


#: DMA memory (and hugepages) for the guest's copying run: a 64 MiB transfer needs
#: 64 MiB of staging when it is copied.
_VM_COPY_MEM = "96M"


def run_vm_transfers() -> Figures:
    """clbench's transfers in a lab guest, through the device (its ICD built there): as
    root, zero-copy (the application's pages lent in place: the io_uring pin); then with
    zero-copy off (``copied``: through staging); then as an ordinary user in the group
    (``user``: lent through the ava_vdev_pin module, with its memlock limit raised past
    the 64 MiB transfers, as an administrator would for the group)."""
    script = ("set -e; cd /mnt/ava; python3 -m guest_driver install --out /tmp/b >/dev/null; "
              "gcc -O2 -o /tmp/clbench tests/samples/clbench.c -lOpenCL; "
              "/tmp/clbench --quick --transfers-only; "
              f"AVA_VDEV_ZERO_COPY=0 AVA_VDEV_MEM={_VM_COPY_MEM} "
              "/tmp/clbench --quick --transfers-only; useradd -m -G ava alice; "
              "prlimit --memlock=$((256 << 20)) setpriv --reuid=alice --regid=alice "
              "--init-groups env HOME=/home/alice /tmp/clbench --quick --transfers-only")
    res = subprocess.run([sys.executable, "-m", "qemu", "run", "--timeout", "900",
                          "--hugepages", "160", "--", "sh", "-c", script],
                         cwd=ROOT, capture_output=True, text=True, timeout=960)
    if res.returncode != 0:
        raise SystemExit(f"the VM run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    lent, copied, user = (json.loads(line) for line in res.stdout.strip().splitlines()[-3:])
    figures: Figures = dict(lent)
    figures["copied"] = copied
    figures["user"] = user
    return figures


def _fmt(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


#: (label, key, unit, higher is better, target: (kind, value) with kind "abs" (the
#: device figure itself, at most) or "ratio" (device / native, at most; at least for
#: bandwidth)).
ROWS: tuple[tuple[str, str, str, bool, tuple[str, float] | None], ...] = (
    ("info query (kept in the guest)", "info_query_us", "us", False, ("abs", 0.5)),
    ("forwarded null call", "forwarded_info_us", "us", False, ("abs", 5.0)),
    ("clSetKernelArg, another buffer", "set_arg_us", "us", False, None),
    ("clSetKernelArg, the same buffer", "set_arg_same_us", "us", False, None),
    ("launch, 4 args + finish, median", "launch4_median_us", "us", False, ("ratio", 1.2)),
    ("launch, 4 args + finish, p99", "launch4_p99_us", "us", False, ("ratio", 1.5)),
    ("the same, 1st arg another buffer", "launch4_changing_median_us", "us", False, None),
    ("1,000 launches, then finish", "async_launches_us", "us", False, ("ratio", 1.1)),
    *((f"{kind} {size.upper().replace('K', ' KiB').replace('M', ' MiB')}",
       f"{kind}_{size}_gbs", "GB/s", True, ("ratio", 0.9) if size == "64m" else None)
      for kind in ("write", "read", "map") for size in TRANSFER_SIZES),
    ("build, cold", "build_cold_ms", "ms", False, None),
    ("build, warm", "build_warm_ms", "ms", False, ("ratio", 1.2)),
    ("build with -I, cold", "build_inc_cold_ms", "ms", False, None),
    ("build with -I, warm", "build_inc_warm_ms", "ms", False, ("ratio", 1.2)),
)


#: (label, key in ``host_cost``'s figures, target in us or None).
HOST_ROWS: tuple[tuple[str, str, float | None], ...] = (
    ("forwarded null call", "null", 2.0),
    ("clSetKernelArg, a buffer", "set_arg", None),
    ("launch, 2 buffer arguments", "launch", None),
)


def _verdict(target: tuple[str, float] | None, ours: float, theirs: float,
             higher_better: bool) -> str:
    if target is None:
        return ""
    kind, value = target
    if kind == "abs":
        return f"<= {value:g} us: {'met' if ours <= value else 'NOT met'}"
    ratio = ours / theirs if theirs else float("inf")
    ok = ratio >= value if higher_better else ratio <= value
    return f"{'>=' if higher_better else '<='} {value:g}x: {'met' if ok else 'NOT met'}"


def report_opencl(r: Figures) -> str:
    native, device = r["native"], r["device"]
    lines = [f"OpenCL benchmark on {native['device']}: through the device (loopback) vs native",
             f"  {'':34} {'device':>12} {'native':>14} {'ratio':>8}  target"]
    for label, key, unit, higher_better, target in ROWS:
        ours, theirs = device[key], native[key]
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        lines.append(f"  {label:34} {_fmt(ours):>7} {unit:<4} {_fmt(theirs):>9} {unit:<4} "
                     f"{ratio:>8}  {_verdict(target, ours, theirs, higher_better)}")
    host = r.get("host")
    if host:
        lines.append("  the host's own time per call (in-process, no guest): with the C lane, "
                     "the Python fast path alone, the interpreter:")
        for label, key, most in HOST_ROWS:
            lane, fast, slow = host[key]["lane"], host[key]["fast"], host[key]["interpreter"]
            verdict = f"<= {most:g} us: {'met' if lane <= most else 'NOT met'}" if most else ""
            lines.append(f"    {label:32} {_fmt(lane):>7} us {_fmt(fast):>7} us "
                         f"{_fmt(slow):>7} us  {verdict}")
    ex = r.get("examples", {})
    if "skipped" in ex:
        lines.append(f"  pyopencl examples: skipped ({ex['skipped']})")
    elif ex:
        for state in ("cold", "warm"):
            ours, theirs = ex[f"device_{state}_s"], ex[f"native_{state}_s"]
            lines.append(f"  {f'pyopencl examples, {state} (wall)':34} {ours:>7.2f} s    "
                         f"{theirs:>9.2f} s    {ours / theirs:>7.2f}x  "
                         f"{_verdict(('ratio', 1.1), ours, theirs, False)}")
    through = r.get("daemon")
    if through:
        from .bench import change_verdict
        direct = r.get("daemon_direct") or device
        lines.append(f"  through ava-vdevd against the direct path (same server, medians of "
                     f"{through.get('runs', 1)} runs each, ABBA; target: within 5 %):")
        for label, key, unit, higher_better, _ in ROWS:
            ours, theirs = through[key], direct[key]
            change, verdict = change_verdict(ours, theirs, higher_better)
            lines.append(f"    {label:32} {_fmt(ours):>7} {unit:<4} {_fmt(theirs):>9} {unit:<4} "
                         f"{change:>+7.1%}  {verdict}")
    vm = r.get("vm")
    if vm:
        copied, user = vm.get("copied") or {}, vm.get("user") or {}
        lines.append(f"  in a lab guest, as root, through the device against the host natively"
                     f"{' (and with zero-copy off)' if copied else ''}"
                     f"{'; and as an ordinary user, lending through the module' if user else ''}:")
        for kind in ("write", "read", "map"):
            for size in TRANSFER_SIZES:
                key = f"{kind}_{size}_gbs"
                ours, theirs = vm[key], native[key]
                line = (f"    {kind} {size:<4} {ours:>9.3f} GB/s {theirs:>9.3f} GB/s "
                        f"{ours / theirs if theirs else 0:>7.2f}x")
                if key in copied:
                    line += f"    copied: {copied[key]:.3f} GB/s"
                if key in user:
                    line += (f"    ordinary user: {user[key]:.3f} GB/s"
                             + (f" ({user[key] / ours - 1:+.1%})" if ours else ""))
                lines.append(line)
    return "\n".join(lines)

