"""``python -m vdev``: the device server's command line."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys

import trio

from . import _sizes as sizes
from ._backends import BACKENDS
from ._executor import ExecutorLimits
from ._sandbox import KernelCache, SandboxConfig, SandboxError
from ._server import Server, SocketInUse

log = logging.getLogger("vdev")
#: The size of a server's kernel cache (a tmpfs: _sandbox.KernelCache).
KERNEL_CACHE_BYTES = 1 << 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vdev",
        description="ava-vdev: a vfio-user server exposing a paravirtual accelerator "
                    "PCI device to QEMU's vfio-user-pci.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="serve the device on a UNIX socket",
        description="Listen on a UNIX socket (created mode 0600) and serve one vfio-user "
                    "client at a time, accepting the next after a disconnect. Point QEMU at it "
                    "with -device '{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\","
                    "\"path\":\"PATH\"}}'. Stops cleanly on SIGINT/SIGTERM and removes its socket.")
    serve.add_argument("--socket", required=True, metavar="PATH",
                       help="socket path; a stale socket there is removed, a live one is "
                            "never replaced")
    serve.add_argument("--backend", default="opencl", choices=sorted(BACKENDS),
                       help="what executes the guest's commands: 'opencl' (the default) runs "
                            "the guest's OpenCL calls on the host's OpenCL (AVA_HOST_OPENCL "
                            "names the library, default libOpenCL.so.1) and also answers the "
                            "diagnostic commands; 'test' answers only the diagnostic commands "
                            "(nop, echo, fill, sleep, fail), for testing the transport without "
                            "OpenCL (default: opencl)")
    serve.add_argument("-v", "--verbose", action="count", default=0,
                       help="-v: log every vfio-user message with its decoded fields; "
                            "-vv: also DMA and IRQ details")
    serve.add_argument("-q", "--quiet", action="store_true",
                       help="log only warnings and errors")
    serve.add_argument("--stall-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="cut off a client that stops mid-message for this long (default 5)")
    ex = serve.add_argument_group(
        "executor", "Each client's commands run in a child process of its own (the executor), "
        "which may die without the server or QEMU noticing: its pending commands fail with "
        "ENODEV (CL_OUT_OF_RESOURCES in the guest), the guest processes that used it lose "
        "their contexts, and a new executor serves new ones.")
    ex.add_argument("--command-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="reset the executor (as a GPU driver's hang check would) when a kernel "
                         "runs, or a non-blocking command takes, longer than this (default 10)")
    ex.add_argument("--sandbox", choices=("auto", "required", "off"), default="auto",
                    help="confine the executor: its own mount, network, IPC and UTS "
                         "namespaces, a read-only view of /usr, the Python prefix and the "
                         "project, a private /tmp, an unprivileged user, no new privileges, "
                         "rlimits. 'auto' (default): when the server runs as root, else "
                         "rlimits only; 'required': refuse to start without it; 'off': "
                         "rlimits only")
    ex.add_argument("--no-standby", dest="standby", action="store_false",
                    help="start each client's executor when its first queue needs one. By "
                         "default one executor is kept started ahead, idle, from the "
                         "server's start and again after each client, so that a client's "
                         "first call does not wait for Python and the OpenCL "
                         "implementation to start (0.14-0.19 s on a 2-core machine)")
    ex.add_argument("--executor-user", default="nobody", metavar="USER",
                    help="the unprivileged user the sandboxed executor runs as (default nobody)")
    ex.add_argument("--executor-memory", type=float, default=32, metavar="GIB",
                    help="cap on the executor's private memory (RLIMIT_DATA; guest RAM is "
                         "shared and not counted), in GiB (default 32)")
    ex.add_argument("--executor-bind", action="append", default=[], metavar="PATH",
                    help="also give the sandboxed executor this host path, read-write (a "
                         "GPU's device nodes, e.g. /dev/nvidia0); repeatable")
    mem = serve.add_argument_group(
        "device memory", "Buffers and images past the device-memory capacity wait in a host "
        "store and come back, contents intact, before a command uses them: the guest sees "
        "no difference but time. An allocation fails (CL_MEM_OBJECT_ALLOCATION_FAILURE) only "
        "when the capacity and the host store are both full. SIZE: bytes, or with a suffix "
        "K, M, G or T (powers of 1024). -v logs every eviction and restore; every "
        "session that made a memory object ends with a summary line.")
    mem.add_argument("--device-memory", type=parse_size, metavar="SIZE",
                     help="the device memory live memory objects may occupy (default: what "
                          "the device reports; more than that is cut to it)")
    mem.add_argument("--guest-memory", type=parse_size, metavar="SIZE",
                     help="the CL_DEVICE_GLOBAL_MEM_SIZE the guest sees, which may exceed "
                          "the device memory (CL_DEVICE_MAX_MEM_ALLOC_SIZE is cut to it); "
                          "default: what the device reports")
    mem.add_argument("--host-store", type=parse_size, default=16 << 30, metavar="SIZE",
                     help="the most host memory (or swap files) evicted contents may take "
                          "(default 16G); it counts against --executor-memory unless "
                          "--swap-dir takes them")
    mem.add_argument("--swap-dir", metavar="DIR",
                     help="keep evicted contents of 1 MiB and more in unlinked files in this "
                          "directory instead of memory; it must be writable by the executor's "
                          "user (it is bound into the sandbox read-write)")
    tenant = serve.add_argument_group(
        "under a manager", "Set by `python -m vdev manager` for each VM it serves; a bare "
        "`serve` leaves them out.")
    tenant.add_argument("--vm-name", metavar="NAME",
                        help="the VM's name, in every log line")
    tenant.add_argument("--tenant-table", metavar="PATH",
                        help="the manager's tenant table: this VM's weight, latency class and "
                             "quotas, read by its executors at every decision")
    tenant.add_argument("--tenant-slot", type=int, default=0, metavar="N",
                        help="this VM's slot in the tenant table (default 0)")
    tenant.add_argument("--compute-units", type=int, metavar="N",
                        help="run the VM's contexts on a sub-device of N compute units "
                             "(clCreateSubDevices by counts) of --opencl-device")
    tenant.add_argument("--opencl-device", default="0:0", metavar="P:D",
                        help="the device --compute-units partitions: platform and device "
                             "index (default 0:0)")

    manager = sub.add_parser(
        "manager", help="serve the device to many VMs, one server each, with shares and quotas",
        description="Start one device server per VM of the configuration (TOML), each on "
                    "its VM's socket, supervise them (a server that dies is logged and "
                    "restarted; the others keep serving), and enforce each VM's weight, "
                    "latency class and quotas.  SIGHUP reloads the file; SIGTERM stops "
                    "every server and removes the sockets.  See the README's 'Sharing the "
                    "device among VMs' for the file's keys.")
    manager.add_argument("--config", required=True, metavar="FILE.toml")
    manager.add_argument("--check", action="store_true",
                         help="only check the configuration (against the device too) and exit")
    for p in (manager,):
        p.add_argument("-v", "--verbose", action="count", default=0,
                       help="-v: also the servers' every vfio-user message; -vv: more")
        p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")

    ctl = sub.add_parser(
        "ctl", help="change a running manager's weights and quotas, or reload its file",
        description="Talk to a running manager over its control socket.  `set VM key=value "
                    "...` changes weight, class, memory (a size, or 0 for none), objects, "
                    "inflight and rate (0: none) at once, without restarting anything "
                    "(until the next reload, which reads the file again); `reload` re-reads "
                    "the file, as SIGHUP does.")
    stats = sub.add_parser(
        "stats", help="per-VM statistics of a running manager",
        description="Calls, device commands and time, bytes moved, live objects and bytes, "
                    "quota refusals and latency, per VM.  The same figures are served in "
                    "the Prometheus text format on the manager's metrics socket.")
    for p in (ctl, stats):
        where = p.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="FILE.toml",
                           help="the manager's configuration (its control socket is found "
                                "there)")
        where.add_argument("--control", metavar="PATH",
                           help="the manager's control socket (default "
                                "/run/ava-vdev/control.sock)")
    ctl.add_argument("action", choices=("set", "reload"))
    ctl.add_argument("vm", nargs="?", help="with set: the VM")
    ctl.add_argument("values", nargs="*", metavar="KEY=VALUE")
    stats.add_argument("--json", action="store_true", help="the raw figures, as JSON")
    stats.add_argument("--prometheus", action="store_true",
                       help="the Prometheus text format, as the metrics socket serves it")
    return parser


def parse_size(text: str) -> int:
    """A size option's bytes (argparse shows the error with the option)."""
    try:
        return sizes.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def memory_options(args: argparse.Namespace) -> dict[str, object]:
    """The OpenCL backend's device-memory keyword arguments from the command line."""
    options: dict[str, object] = {"host_store": args.host_store}
    if args.device_memory:
        options["device_memory"] = args.device_memory
    if args.guest_memory:
        options["guest_memory"] = args.guest_memory
    if args.swap_dir:
        options["swap_dir"] = os.path.abspath(args.swap_dir)
    return options


def configure_logging(verbose: int, quiet: bool, vm: str | None = None) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    where = f" vm={vm}" if vm else ""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s{where} %(name)s %(levelname)s: %(message)s")
    if verbose >= 1:
        logging.getLogger("vdev.msg").setLevel(logging.DEBUG)
        logging.getLogger("host_backend.memory").setLevel(logging.DEBUG)


async def _serve(args: argparse.Namespace) -> None:
    options = memory_options(args) if args.backend == "opencl" else {}
    if args.compute_units and args.backend == "opencl":
        platform, _, device = args.opencl_device.partition(":")
        options.update(compute_units=args.compute_units, platform=int(platform),
                       device=int(device or 0))
    tenant = None
    if args.tenant_table:
        tenant = (os.open(args.tenant_table, os.O_RDWR | os.O_CLOEXEC), args.tenant_slot)
    binds = list(args.executor_bind)
    if "swap_dir" in options:
        binds.append(str(options["swap_dir"]))
    sandbox = SandboxConfig(mode=args.sandbox, user=args.executor_user,
                            memory_bytes=int(args.executor_memory * (1 << 30)),
                            extra_binds=binds, kernel_cache=args.kernel_cache)
    server = Server(args.socket, backend=args.backend, stall_timeout=args.stall_timeout,
                    sandbox=sandbox, limits=ExecutorLimits(command_s=args.command_timeout),
                    backend_options=options, tenant=tenant, vm_name=args.vm_name or "",
                    standby=args.standby)
    server.bind()       # fail early, outside any nursery, with a plain error
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            if args.tenant_table:
                nursery.start_soon(_stop_with_manager, nursery.cancel_scope, os.getppid())


async def _stop_with_manager(scope: trio.CancelScope, manager: int) -> None:
    """A VM's server under a manager outlives it by a second at most: a manager
    killed outright (SIGKILL, OOM) leaves no server holding a VM's socket."""
    while os.getppid() == manager:
        await trio.sleep(1.0)
    log.warning("the manager (pid %d) is gone; shutting down", manager)
    scope.cancel()


def _client(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``vdev ctl`` and ``vdev stats``: requests to a running manager."""
    from . import _metrics
    from ._manager import ManagerError, request
    from ._manager_config import ConfigError, load_config

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        control = args.control or (load_config(args.config).control if args.config
                                   else "/run/ava-vdev/control.sock")
        if args.command == "stats":
            vms = request(control, {"op": "stats"})["vms"]
            out = json.dumps(vms, indent=1) + "\n" if args.json else \
                _metrics.render(vms) if args.prometheus else _metrics.table(vms)
            sys.stdout.write(out)
            return 0
        if args.action == "reload":
            print(request(control, {"op": "reload"}, timeout=120)["changes"])
            return 0
        if not args.vm or not args.values:
            parser.error("ctl set needs a VM and KEY=VALUE pairs, e.g. `ctl set alpha weight=3`")
        values = {}
        for pair in args.values:
            key, eq, value = pair.partition("=")
            if not eq:
                parser.error(f"{pair!r} is not KEY=VALUE")
            values[key.strip()] = value
        request(control, {"op": "set", "vm": args.vm, "values": values})
        print(f"{args.vm}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        return 0
    except (ManagerError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.swap_dir and not os.path.isdir(args.swap_dir):
        parser.error(f"--swap-dir {args.swap_dir}: no such directory")
    if args.command in ("ctl", "stats"):
        return _client(parser, args)
    configure_logging(args.verbose, args.quiet, getattr(args, "vm_name", None))
    if args.command == "manager":
        from ._manager import check_only, run_manager
        if args.check:
            return check_only(args.config)
        return trio.run(functools.partial(run_manager, args.config, verbose=args.verbose,
                                          quiet=args.quiet))
    if args.command == "serve":
        cache = None
        try:
            if args.backend == "opencl":
                cache = KernelCache(SandboxConfig(mode=args.sandbox, user=args.executor_user),
                                    KERNEL_CACHE_BYTES)
            args.kernel_cache = cache.path if cache else ""
            trio.run(_serve, args)
        except (SocketInUse, SandboxError) as exc:
            log.error("%s", exc)
            return 2
        except OSError as exc:
            log.error("cannot serve on %s: %s", args.socket, exc)
            return 1
        finally:
            if cache is not None:
                cache.close()
    return 0
