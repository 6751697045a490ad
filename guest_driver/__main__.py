"""``python3 -m guest_driver``: build, install, check and inspect the guest driver shim."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m guest_driver",
        description="The ava-vdev guest driver: an OpenCL ICD that forwards every call to the "
                    "host through the ava-vdev PCI device (or, with AVA_VDEV_SOCKET=PATH, "
                    "through a device server's socket on this machine).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="compile the ICD, runtime and tools; prints the ICD path last")
    b.add_argument("--out", type=Path, default=None,
                   help="output directory (default $AVA_BUILD_DIR or ~/.cache/ava-vdev/build)")
    b.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    i = sub.add_parser("install", help="build, then register the ICD in /etc/OpenCL/vendors/ava.icd "
                                       "(root)")
    i.add_argument("--out", type=Path, default=None, help="build directory (as for build)")
    sub.add_parser("uninstall", help="remove /etc/OpenCL/vendors/ava.icd and the installed library")
    c = sub.add_parser("check", help="list the OpenCL functions binaries import and which are forwarded")
    c.add_argument("binaries", nargs="+", metavar="BINARY")
    s = sub.add_parser("status", help="show the device, ABI version, features and queues")
    s.add_argument("--out", type=Path, default=None, help="build directory (as for build)")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            lib = _build.build(args.out, force=args.force, verbose=True)
            print(lib)
        elif args.command == "install":
            from ._install import install
            lib = _build.build(args.out)
            print(f"installed {install(lib)} -> {lib.name}")
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
        elif args.command == "status":
            from ._status import status
            print(status(_build.build(args.out)))
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


if __name__ == "__main__":
    sys.exit(main())
