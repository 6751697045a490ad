"""``python3 -m guest_driver``: build, install, check and inspect the guest driver shim."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protocols import guest_daemon as gd

from . import _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m guest_driver",
        description="The ava-vdev guest driver: an OpenCL ICD that forwards every call to the "
                    "host through the ava-vdev PCI device (or, with AVA_VDEV_SOCKET=PATH, "
                    "through a device server's socket on this machine).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="compile the ICD, runtime and tools, and the ava_vdev_pin "
                                     "module where the kernel's headers are; prints the ICD "
                                     "path last")
    b.add_argument("--out", type=Path, default=None,
                   help="output directory (default $AVA_BUILD_DIR or ~/.cache/ava-vdev/build)")
    b.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    i = sub.add_parser("install", help="build, register the ICD in /etc/OpenCL/vendors/ava.icd "
                                       "and start ava-vdevd (root)")
    i.add_argument("--out", type=Path, default=None, help="build directory (as for build)")
    i.add_argument("--group", default=gd.DEFAULT_GROUP,
                   help=f"the group whose members may use the device (default "
                        f"{gd.DEFAULT_GROUP}; created if missing)")
    i.add_argument("--no-daemon", action="store_true",
                   help="do not install or start ava-vdevd: only root can then use the device "
                        "(the direct path, for debugging)")
    sub.add_parser("uninstall", help="stop ava-vdevd and remove it, /etc/OpenCL/vendors/ava.icd "
                                     "and the installed library")
    c = sub.add_parser("check", help="list the OpenCL functions binaries import and which are forwarded")
    c.add_argument("binaries", nargs="+", metavar="BINARY")
    s = sub.add_parser("status", help="show the device, ABI version, features and queues")
    s.add_argument("--out", type=Path, default=None,
                   help="build directory (as for build; default: the installed library, if any)")
    d = sub.add_parser(
        "daemon", help="run ava-vdevd (root): own the device and serve OpenCL programs of "
                       "ordinary users in the group",
        description="ava-vdevd owns the ava-vdev device (binds it, maps BAR0) and serves "
                    "applications on a UNIX socket: each process gets DMA memory of its own, "
                    "queues only it can reach, and DMA windows the host enforces. Runs until "
                    "SIGTERM or SIGINT, then releases every queue and removes its socket.")
    d.add_argument("--socket", default=gd.DEFAULT_SOCKET,
                   help=f"where to listen (default {gd.DEFAULT_SOCKET}; the runtime's "
                        "AVA_VDEV_DAEMON names another)")
    d.add_argument("--group", default=gd.DEFAULT_GROUP,
                   help=f"the group that may use the device (default {gd.DEFAULT_GROUP}); "
                        "the socket is root:GROUP 0660")
    d.add_argument("--max-memory", type=_mib, default=256 << 20, metavar="MIB",
                   help="DMA memory one process may have, in MiB (default 256)")
    d.add_argument("--max-queues", type=int, default=16,
                   help="queues (threads using OpenCL) one process may have (default 16)")
    d.add_argument("--user-memory", type=_mib_up_to(None), default=1 << 30, metavar="MIB",
                   help="DMA memory all processes of one user may have together, in MiB "
                        "(default 1024; root is not bounded)")
    d.add_argument("--user-queues", type=int, default=32,
                   help="queues all processes of one user may have together (default 32 of "
                        "the device's 64; root is not bounded)")
    d.add_argument("--quarantine", type=float, default=2.0, metavar="SECONDS",
                   help="how long a departed process's memory is kept at least before it is "
                        "freed; it is also kept until the host says no transfer the process "
                        "left running touches it (default 2)")
    d.add_argument("--loopback", metavar="SERVER_SOCKET", default=None,
                   help="serve a device server on this machine over vfio-user instead of the "
                        "PCI device (tests and benchmarks on the host)")
    d.add_argument("--pin-module", type=Path, default=None, metavar="KO",
                   help="load this ava_vdev_pin.ko (unless loaded) and give /dev/ava-vdev-pin "
                        "to the group, so that ordinary users' transfers lend their own pages "
                        "(zero-copy; `install` passes the one it built). Without it a module "
                        "already loaded is used; with none, their transfers are copied")
    d.add_argument("-v", "--verbose", action="store_true", help="log every connection and queue")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            lib = _build.build(args.out, force=args.force, verbose=True)
            _say_module(*_build.build_module(args.out, force=args.force, verbose=True))
            print(lib)
        elif args.command == "install":
            from ._install import install, install_daemon
            lib = _build.build(args.out)
            print(f"installed {install(lib)} -> {lib.name}")
            if args.no_daemon:
                print("ava-vdevd not installed: only root can use the device")
            else:
                module, why = _build.build_module(args.out)
                _say_module(module, why)
                how = install_daemon(args.group, module)
                print(f"ava-vdevd serves {gd.DEFAULT_SOCKET} for the group {args.group!r}: {how}")
                print(f"add users with: adduser USER {args.group}")
        elif args.command == "uninstall":
            from ._install import uninstall
            removed = uninstall()
            print("removed " + ", ".join(map(str, removed)) if removed else "nothing installed")
        elif args.command == "check":
            from ._check import opencl_imports, report
            rc = 0
            for path in args.binaries:
                try:
                    print(report(opencl_imports(path)))
                except (OSError, ValueError) as exc:
                    print(f"{path}: {exc}", file=sys.stderr)
                    rc = 1
            return rc
        elif args.command == "daemon":
            return _daemon(args)
        elif args.command == "status":
            from ._install import LIBDIR
            from ._status import status
            installed = LIBDIR / "libava_icd.so"
            # Any user may ask: the installed library needs no build (and no write access).
            lib = installed if args.out is None and installed.exists() else _build.build(args.out)
            print(status(lib))
    except _build.BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"{exc} (run as root)", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"ava-vdev: {exc}", file=sys.stderr)
        return 1
    return 0


def _say_module(module: Path | None, why: str) -> None:
    if module is not None:
        print(f"ava_vdev_pin module: {module} (zero-copy for ordinary users)")
    else:
        print(f"ava_vdev_pin module not built: {why}; ordinary users' transfers are copied")


def _mib_up_to(limit_mib: int | None):
    """An argparse type: a size in MiB from 4 to ``limit_mib``, as bytes."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: a whole number of MiB") from None
        if value < 4 or (limit_mib is not None and value > limit_mib):
            raise argparse.ArgumentTypeError(
                f"{value} MiB: give 4 to {limit_mib}" if limit_mib else f"{value} MiB: at least 4")
        return value << 20
    return parse


_mib = _mib_up_to(gd.MAX_CLIENT_MEMORY >> 20)


def _daemon(args: argparse.Namespace) -> int:
    import logging

    from ._daemon import run
    from ._daemon_devices import LoopbackDevice, UioDevice

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="ava-vdevd: %(message)s")
    if args.loopback:
        def factory():
            return LoopbackDevice(args.loopback)
    else:
        factory = UioDevice
    try:
        return run(factory, args.socket, group=args.group or None, max_memory=args.max_memory,
                   max_queues=args.max_queues, user_memory=args.user_memory,
                   user_queues=args.user_queues, quarantine_s=args.quarantine,
                   pin_module=args.pin_module)
    except (OSError, RuntimeError) as exc:
        logging.getLogger("ava-vdevd").error("cannot serve: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
