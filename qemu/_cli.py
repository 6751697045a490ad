"""``python -m qemu``: the lab's command line.

Exit codes of ``run`` and ``demo``: the guest command's own status; 124 when
``--timeout`` expired; 125 when the lab, the server or QEMU failed (the
message and the kept run directory say why); 128+N after signal N.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ._accel import decide_accel
from ._cmdline import parse_size, user_cmdline
from ._errors import GuestTimeout, LabError
from ._lab import Lab
from ._machine import ByteSink, Interrupted, LabMachine, run_in_guest

EXIT_TIMEOUT = 124
EXIT_LAB_FAILURE = 125


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto (default): KVM if a test boot under KVM works (verdict cached "
                        "in the lab directory), else TCG")
    p.add_argument("--memory", type=_size, default=2 << 30, metavar="SIZE",
                   help="guest RAM, shared memfd (default 2G)")
    p.add_argument("--cpus", type=_positive_int, default=2, metavar="N",
                   help="guest CPUs (default 2)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop everything after S seconds, boot included (exit code 124)")
    p.add_argument("--hugepages", type=_nonnegative_int, default=64, metavar="N",
                   help="2 MiB hugepages reserved at guest boot (default 64)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m vdev serve` (repeatable; write "
                        "--server-arg=-v for values starting with -)")
    p.add_argument("--timing", action="store_true",
                   help="print boot-to-command and total durations on stderr")
    p.add_argument("--native-pocl", action="store_true",
                   help="register the guest's own PoCL ICD for this run (in the overlay)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the run directory (logs, socket dir, scratch) after success too")
    p.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                   help="host directory shared read-write at /mnt/scratch (default: a fresh "
                        "one in the run directory)")
    p.add_argument("--no-device", dest="device", action="store_false",
                   help="debug: boot without the device server")
    p.add_argument("--device-socket", type=Path, default=None, metavar="PATH",
                   help="attach the device of a server already running on PATH (a VM's "
                        "socket under `python -m vdev manager`) instead of starting one")



def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=None,
                        help="lab directory (default $AVA_LAB_DIR or ~/.cache/ava-vdev/lab)")
    parser = argparse.ArgumentParser(
        prog="python -m qemu",
        description="The ava-vdev lab: QEMU 11 in a Debian trixie root, a guest booted from it "
                    "with the device attached, one command run inside.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = sub.add_parser("lab", help="build or inspect the lab")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    build = lab_sub.add_parser("build", parents=[common], help="build or refresh the lab "
                               "(idempotent, resumable)")
    build.add_argument("--force", action="append", default=[], metavar="STEP",
                       help="redo STEP (root, packages, setup, kernel, initramfs) even if "
                            "up to date")
    build.add_argument("--reprobe", action="store_true", help="decide KVM vs TCG again")
    lab_sub.add_parser("status", parents=[common], help="what the lab holds, versions, size, "
                       "KVM verdict")
    lab_sub.add_parser("examples", parents=[common], help="print the directory of pyopencl's "
                       "examples in the lab root (exit 1 if the lab has none yet)")

    run = sub.add_parser("run", parents=[common], help="boot a guest with the device and run "
                         "a command in it: run [OPTIONS] -- CMD [ARGS...]",
                         usage="python -m qemu run [OPTIONS] -- CMD [ARGS...]")
    _add_machine_options(run)

    demo = sub.add_parser("demo", parents=[common], help="the main job: clinfo, vadd.c and "
                          "pyopencl examples natively on the host, then in a lab guest "
                          "through the device (after lspci and a register round trip), and "
                          "a verdict per program")
    _add_machine_options(demo)

    pc = sub.add_parser("print-cmdline", parents=[common],
                        help="the QEMU command line for your own QEMU (>= 10.1)")
    pc.add_argument("--socket", default="/run/ava/vm1.sock", metavar="PATH",
                    help="the server's socket (default /run/ava/vm1.sock)")
    pc.add_argument("--memory", type=_size, default=2 << 30, metavar="SIZE")
    pc.add_argument("--accel", choices=("kvm", "tcg"), default="kvm")
    pc.add_argument("--lab", action="store_true",
                    help="print the lab's own full command line instead (chroot included)")
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: launcher options before, the guest command after."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _err(msg: str) -> None:
    print(f"ava: {msg}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace, command: Sequence[str],
                stdout: ByteSink | None = None) -> int:
    """Run ``command`` in a lab guest; its stdout goes to ``stdout`` (default ours)."""
    lab = Lab(args.dir)
    try:
        lab.check_ready()
    except LabError as exc:
        _err(f"error: {exc}")
        return EXIT_LAB_FAILURE

    async def main() -> int:
        verdict = await decide_accel(args.accel, lab)
        _err(f"accel {verdict.accel} ({verdict.reason})")
        machine = LabMachine(
            lab, command, accel=verdict.accel, memory=args.memory, cpus=args.cpus,
            hugepages=args.hugepages, server_args=args.server_arg, device=args.device,
            device_socket=args.device_socket.absolute() if args.device_socket else None,
            native_pocl=args.native_pocl, keep_logs=args.keep_logs, scratch=args.scratch,
            stdout=stdout)
        try:
            result = await run_in_guest(machine, timeout=args.timeout)
        except GuestTimeout as exc:
            _err(f"error: {exc}")
            _kept(machine)
            return EXIT_TIMEOUT
        except Interrupted as exc:
            _err(str(exc))
            _kept(machine)
            return 128 + exc.signum
        except LabError as exc:
            _err(f"error: {exc}")
            _kept(machine)
            return EXIT_LAB_FAILURE
        if args.timing:
            boot = f"{result.boot_seconds:.1f} s" if result.boot_seconds is not None else "-"
            cmd = f"{result.command_seconds:.1f} s" if result.command_seconds is not None else "-"
            _err(f"timing: boot to command {boot} (guest uptime "
                 f"{result.guest_uptime_at_start or 0:.1f} s), command {cmd}, "
                 f"total {result.total_seconds:.1f} s ({verdict.accel})")
        if args.keep_logs:
            _err(f"run directory: {result.run_dir}")
        return result.status

    return trio.run(main)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _kept(machine: LabMachine) -> None:
    if machine.kept_run_dir is not None:
        _err(f"run directory kept: {machine.kept_run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = split_command(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    if args.command == "lab":
        lab = Lab(args.dir)
        if args.lab_command == "build":
            signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                lab.build(force=args.force, reprobe=args.reprobe)
            except LabError as exc:
                _err(f"lab build failed: {exc}")
                return 1
            except KeyboardInterrupt:
                _err("lab build interrupted (it resumes where it stopped)")
                return 128 + signal.SIGINT
            return 0
        if args.lab_command == "examples":
            where = lab.path / "root" / "usr" / "share" / "doc" / "python-pyopencl-doc" / \
                "examples"
            if not where.is_dir():
                _err(f"no pyopencl examples in the lab yet ({where}): run `make lab`")
                return 1
            print(where)
            return 0
        print("\n".join(lab.status_lines()))
        return 0
    if args.command == "print-cmdline":
        if args.lab:
            server, qemu = LabMachine(Lab(args.dir), ["CMD"]).example_argvs()
            print(f"# the server, then QEMU (fds 3-5: socketpairs for ava.ctl, ava.out, "
                  f"ava.err):\n{shlex.join(server)}\n{shlex.join(qemu)}")
            return 0
        print(f"# 1. the device server (this checkout):\n"
              f"python -m vdev serve --socket {args.socket}\n"
              f"# 2. QEMU >= 10.1 with shareable guest RAM and the device:\n"
              + user_cmdline(args.socket, memory=args.memory, accel=args.accel))
        return 0
    if args.command == "run":
        if not command:
            parser.error("run: no command given (usage: python -m qemu run [OPTIONS] -- CMD ...)")
        return run_command(args, command)
    if args.command == "demo":
        if command:
            parser.error("demo takes no command")
        import os

        from ._demo import DEMO_COMMAND, Tee, host_native_outputs, verdict_lines
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        examples = os.path.join(str(Lab(args.dir).path), "root", "usr", "share", "doc",
                                "python-pyopencl-doc", "examples")
        print("=== on the host, natively (the host's own OpenCL) ===", flush=True)
        native = host_native_outputs(repo, examples)
        print(native, flush=True)
        print("\n=== in a lab guest: the same programs through the ava-vdev device ===",
              flush=True)
        _err("demo: booting a lab guest with the ava device (server backend: opencl)")
        guest = Tee(sys.stdout.buffer)
        status = run_command(args, DEMO_COMMAND, stdout=guest)
        if status != 0:
            return status
        lines, all_same = verdict_lines(native, guest.text())
        print("\n=== native against the device ===\n" + "\n".join(lines), flush=True)
        return 0 if all_same else 1
    parser.error(f"unknown command {args.command}")
    return 2
