"""Launching the device server and a lab guest together, and running one command in it.

:class:`LabMachine` is shaped like QEMU's ``python/qemu/machine/machine.py``: an
(async) context manager with paired setup and teardown. Whatever
``_pre_launch`` creates (the run directory, the socketpairs, the command file)
``_post_shutdown`` frees, also after a failed launch; ``__aexit__`` always
shuts both children down (SIGTERM, a timed wait, then SIGKILL), QEMU first.

Resource handling: each run gets its own ``mkdtemp`` directory (printed on
failure, removed on success unless ``keep_logs``) holding the server socket,
the logs (``server.log``, ``qemu.log``, ``console.log``) and, unless a scratch
directory is given, the guest's scratch share. The guest's stdout, stderr and
control channel are socketpairs passed to QEMU as file descriptors, so no
fixed path is involved. QEMU runs chrooted in the lab root inside a private
mount namespace, where the run directory, the checkout and the lab's kernel
are bind-mounted under ``/run/ava``; the mounts vanish with QEMU.

Error handling: a child that exits while starting raises
:class:`LaunchFailure`; the server exiting under a running guest raises
:class:`ServerDied` (QEMU is stopped first); QEMU ending before the guest
reported an exit status raises :class:`GuestFailure`; a timeout raises
:class:`GuestTimeout` after everything was stopped. Each failure carries the
argv, the exit code and the tail of the relevant log.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from . import _guest as g
from ._chroot import Bind, ChrootSpec, chroot_argv
from ._cmdline import LabQemuConfig, lab_qemu_argv
from ._errors import (
    ChildFailure,
    GuestFailure,
    GuestTimeout,
    LabError,
    LaunchFailure,
    ServerDied,
    describe_returncode,
)
from ._lab import OPENCL_VENDORS, OPENCL_VENDORS_DISABLED, POCL_ICD, ROOT_VIEW, RUN_MOUNT, Lab

log = logging.getLogger("qemu.machine")


class ByteSink(Protocol):
    """Where the guest's stdout or stderr goes: a binary file, or anything that
    writes and flushes bytes (the demo keeps a copy for its verdicts)."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...

CHECKOUT = Path(__file__).resolve().parent.parent
SOCKET_NAME = "vdev.sock"
#: Where an external server's socket directory (--device-socket) appears in the run.
EXTERNAL_DIR = "device"
# Lines in QEMU's log after which the guest never continues (QEMU pauses it).
QEMU_FATAL_MARKERS = ("KVM internal error", "emulation failure")


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if unreadable)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Child:
    """One child process with its log file, stopped by terminate, timed wait, then kill.

    The child runs in its own session (a Ctrl-C on the terminal reaches only
    the launcher, which then stops the children in order), stdin from
    /dev/null, stdout and stderr to ``log``.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path, *,
                 pass_fds: Sequence[int] = (), cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.pass_fds = tuple(pass_fds)
        self.cwd = cwd
        self.env = env
        self.proc: trio.Process | None = None
        self.killed = False
        self.stopping = False

    async def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds, cwd=self.cwd, env=self.env, start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, grace: float) -> None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL; always reaps. Safe to repeat."""
        if self.proc is None:
            return
        with trio.CancelScope(shield=True):
            if self.proc.poll() is None:
                self.stopping = True
                self.proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self.proc.wait()
                if self.proc.poll() is None:
                    log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it",
                                self.name, self.proc.pid, grace)
                    self.killed = True
                    self.proc.kill()
            await self.proc.wait()

    def failure(self, cls: type[ChildFailure], what: str, lines: int = 20) -> ChildFailure:
        return cls(what, name=self.name, argv=self.argv, returncode=self.returncode,
                   log=self.log, log_tail=log_tail(self.log, lines))


@dataclass
class RunResult:
    """What a finished guest command left: its status and the run's timings."""

    status: int
    run_dir: Path
    boot_seconds: float | None = None     # QEMU start to the command starting
    command_seconds: float | None = None  # command start to its exit status
    total_seconds: float = 0.0            # launcher start to the end
    guest_uptime_at_start: float | None = None
    notes: list[str] = field(default_factory=list)


def command_script(command: Sequence[str], *, native_pocl: bool) -> str:
    """The shell script the guest runs (from the scratch share) for ``command``."""
    lines = ["# written by `python -m qemu run`; the guest runs it as root, cwd /mnt/scratch"]
    if native_pocl:
        lines += [f"mkdir -p {OPENCL_VENDORS}",
                  f"cp {OPENCL_VENDORS_DISABLED}/{POCL_ICD} {OPENCL_VENDORS}/{POCL_ICD}"]
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


class LabMachine:
    """The device server plus a lab guest running ``command``; use as ``async with``.

    ``async with LabMachine(lab, ["uname", "-a"]) as vm: status = (await vm.wait()).status``
    """

    qemu_grace = 5.0
    server_grace = 5.0
    server_ready_timeout = 20.0
    poweroff_grace = 10.0

    def __init__(self, lab: Lab, command: Sequence[str], *, accel: str = "tcg",
                 memory: int = 2 << 30, cpus: int = 2, hugepages: int = 64,
                 server_args: Sequence[str] = (), device: bool = True,
                 native_pocl: bool = False, keep_logs: bool = False,
                 scratch: Path | None = None, stdout: ByteSink | None = None,
                 stderr: ByteSink | None = None, python: str = sys.executable,
                 append: str = "", keep_on_failure: bool = True,
                 device_socket: Path | None = None) -> None:
        if not command:
            raise ValueError("no command to run in the guest")
        self.lab = lab
        self.command = list(command)
        self.accel = accel
        self.memory = memory
        self.cpus = cpus
        self.hugepages = hugepages
        self.server_args = list(server_args)
        self.device = device
        self.native_pocl = native_pocl
        self.keep_logs = keep_logs
        self.user_scratch = scratch
        self.stdout = stdout if stdout is not None else sys.stdout.buffer
        self.stderr = stderr if stderr is not None else sys.stderr.buffer
        self.python = python
        self.append = append
        self.keep_on_failure = keep_on_failure
        #: A running server's socket (a manager's VM) to attach instead of starting one.
        self.device_socket = device_socket

        self.run_dir: Path | None = None
        self.scratch: Path | None = None
        self.server: Child | None = None
        self.qemu: Child | None = None
        self._sockets: list[socket.socket] = []       # all ends we still hold
        self._child_ends: list[socket.socket] = []    # the ends QEMU gets
        self._ctl: trio.socket.SocketType | None = None
        self._out: trio.socket.SocketType | None = None
        self._err: trio.socket.SocketType | None = None
        self._failed = False
        self._t0 = time.monotonic()
        self._t_qemu: float | None = None
        self._t_start: float | None = None
        self._t_exit: float | None = None
        self._status: int | None = None
        self._guest_fail: str | None = None
        self._uptime: float | None = None
        self._aux: trio.Nursery | None = None
        self._qemu_fatal: str | None = None

    # -- paths -----------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / SOCKET_NAME

    def log_path(self, name: str) -> Path:
        assert self.run_dir is not None
        return self.run_dir / f"{name}.log"

    # -- the two command lines (tests override these with fakes) ---------------
    def server_argv(self) -> list[str]:
        return [self.python, "-m", "vdev", "serve", "--socket", str(self.socket_path),
                *self.server_args]

    def qemu_config(self, fds: tuple[int, int, int]) -> LabQemuConfig:
        return LabQemuConfig(
            accel=self.accel, memory=self.memory, cpus=self.cpus, hugepages=self.hugepages,
            kernel=f"{RUN_MOUNT}/boot/vmlinuz", initrd=f"{RUN_MOUNT}/boot/initrd.img",
            console_log=f"{RUN_MOUNT}/console.log", root_export=ROOT_VIEW,
            src_export=f"{RUN_MOUNT}/src", scratch_export=f"{RUN_MOUNT}/scratch",
            device_socket=(f"{RUN_MOUNT}/{EXTERNAL_DIR}/{self.device_socket.name}"
                           if self.device_socket else f"{RUN_MOUNT}/{SOCKET_NAME}")
            if self.device else None,
            ctl_fd=fds[0], out_fd=fds[1], err_fd=fds[2], append=self.append)

    def chroot_spec(self) -> ChrootSpec:
        assert self.run_dir is not None and self.scratch is not None
        return ChrootSpec(self.lab.root, self_view=ROOT_VIEW, binds=(
            Bind(self.run_dir, RUN_MOUNT),
            Bind(CHECKOUT, f"{RUN_MOUNT}/src", readonly=True),
            Bind(self.lab.boot, f"{RUN_MOUNT}/boot", readonly=True),
            Bind(self.scratch, f"{RUN_MOUNT}/scratch"),
            *((Bind(self.device_socket.parent, f"{RUN_MOUNT}/{EXTERNAL_DIR}"),)
              if self.device_socket else ()),
        ))

    def qemu_argv(self, fds: tuple[int, int, int]) -> list[str]:
        return chroot_argv(self.chroot_spec(), lab_qemu_argv(self.qemu_config(fds)))

    def example_argvs(self) -> tuple[list[str], list[str]]:
        """The server and QEMU command lines of a run, with a placeholder run directory."""
        saved = self.run_dir, self.scratch
        self.run_dir = Path(tempfile.gettempdir()) / "ava-run-XXXXXXXX"
        self.scratch = self.user_scratch or self.run_dir / "scratch"
        try:
            return self.server_argv(), self.qemu_argv((3, 4, 5))
        finally:
            self.run_dir, self.scratch = saved

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> LabMachine:
        try:
            self._pre_launch()
            await self._launch()
        except BaseException:
            self._failed = True
            await self._shutdown()
            self._post_shutdown()
            raise
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            self._failed = True
        try:
            await self._shutdown()
        finally:
            self._post_shutdown()

    def _pre_launch(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="ava-run-"))
        os.chmod(self.run_dir, 0o700)
        self.scratch = self.user_scratch or self.run_dir / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        control = self.scratch / g.CONTROL_DIR
        control.mkdir(exist_ok=True)
        (control / g.RUN_SCRIPT).write_text(
            command_script(self.command, native_pocl=self.native_pocl))
        for name in ("ctl", "out", "err"):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sockets += [ours, theirs]
            self._child_ends.append(theirs)
            setattr(self, f"_{name}", trio.socket.from_stdlib_socket(ours))

    async def _launch(self) -> None:
        if self.device and self.device_socket is not None:
            if not self.device_socket.is_socket():
                raise LabError(f"--device-socket {self.device_socket}: no server socket "
                               "there (start the server or manager first)")
            (self.run_dir / EXTERNAL_DIR).mkdir()    # type: ignore[operator]
        elif self.device:
            self.server = Child("server", self.server_argv(), self.log_path("server"),
                                cwd=CHECKOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            await self.server.start()
            await self._wait_server_ready()
        ctl, out, err = (s.fileno() for s in self._child_ends)
        fds = (ctl, out, err)
        self.qemu = Child("qemu", self.qemu_argv(fds), self.log_path("qemu"), pass_fds=fds)
        self._t_qemu = time.monotonic()
        await self.qemu.start()
        for s in self._child_ends:
            s.close()
        self._child_ends.clear()

    async def _wait_server_ready(self) -> None:
        assert self.server is not None
        with trio.move_on_after(self.server_ready_timeout):
            while True:
                if not self.server.running():
                    await self.server.wait()
                    raise self.server.failure(LaunchFailure,
                                              "the device server exited while starting")
                if self.socket_path.is_socket():
                    return
                await trio.sleep(0.02)
        raise self.server.failure(
            LaunchFailure, f"the device server did not create {self.socket_path} within "
                           f"{self.server_ready_timeout:.0f} s")

    async def _shutdown(self) -> None:
        with trio.CancelScope(shield=True):
            if self.qemu is not None:
                await self.qemu.stop(self.qemu_grace)
            if self.server is not None:
                await self.server.stop(self.server_grace)

    def _post_shutdown(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        self._child_ends.clear()
        if self.run_dir is None:
            return
        if self.user_scratch is not None:
            shutil.rmtree(self.user_scratch / g.CONTROL_DIR, ignore_errors=True)
        if self.keep_logs or (self._failed and self.keep_on_failure):
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def kept_run_dir(self) -> Path | None:
        """The run directory if it survives this run (failure or ``keep_logs``)."""
        if self.run_dir is not None and self.run_dir.exists():
            return self.run_dir
        return None

    # -- running ---------------------------------------------------------------
    async def wait(self, timeout: float | None = None) -> RunResult:
        """Stream the guest's output until QEMU exits; return the command's status.

        Raises :class:`ServerDied`, :class:`GuestFailure` or :class:`GuestTimeout`.
        """
        assert self.qemu is not None and self.run_dir is not None
        server_died = False
        try:
            with trio.move_on_after(timeout if timeout else float("inf")) as deadline:
                async with trio.open_nursery() as nursery:
                    # Until EOF, that is until QEMU has exited and its data is drained.
                    nursery.start_soon(self._pump, self._out, self.stdout)
                    nursery.start_soon(self._pump, self._err, self.stderr)
                    nursery.start_soon(self._control)
                    # Until QEMU exits.
                    async with trio.open_nursery() as aux:
                        self._aux = aux

                        async def watch_server() -> None:
                            nonlocal server_died
                            if self.server is not None:
                                await self.server.wait()
                                server_died = True
                                nursery.cancel_scope.cancel()

                        aux.start_soon(watch_server)
                        aux.start_soon(self._watch_qemu_log, nursery)
                        await self.qemu.wait()
                        aux.cancel_scope.cancel()
                    self._aux = None
        except BaseException:
            self._failed = True
            raise
        if deadline.cancelled_caught:
            self._failed = True
            await self._shutdown()
            raise GuestTimeout(
                f"the run took longer than {timeout:g} s: stopped QEMU and the server\n"
                f"  console log: {self.log_path('console')}\n"
                + _indent(log_tail(self.log_path("console"), 10))
                + f"\n  QEMU log: {self.log_path('qemu')}\n"
                + _indent(log_tail(self.log_path("qemu"), 5)))
        if self._qemu_fatal is not None:
            self._failed = True
            await self._shutdown()
            raise self.qemu.failure(GuestFailure, f"QEMU stopped the guest: {self._qemu_fatal}")
        if self.server is not None and not self.server.running() and not self.server.stopping:
            server_died = True  # it died as QEMU exited (QEMU may exit because of it)
        if server_died:
            self._failed = True
            await self._shutdown()
            assert self.server is not None
            raise self.server.failure(ServerDied, "the device server exited while the guest "
                                                  "was running; QEMU was stopped")
        return self._result()

    def _result(self) -> RunResult:
        assert self.qemu is not None and self.run_dir is not None
        if self._status is None:
            self._failed = True
            if self._guest_fail:
                what = f"the guest failed to boot: {self._guest_fail}"
            elif self._t_start is None:
                what = "QEMU exited before the guest started the command"
            else:
                what = "QEMU exited before the guest reported the command's exit status"
            what += f"\n  console log: {self.log_path('console')}\n" + _indent(
                log_tail(self.log_path("console"), 15))
            raise self.qemu.failure(GuestFailure, what)
        now = time.monotonic()
        assert self._t_qemu is not None
        return RunResult(
            status=self._status, run_dir=self.run_dir,
            boot_seconds=None if self._t_start is None else self._t_start - self._t_qemu,
            command_seconds=(None if self._t_start is None or self._t_exit is None
                             else self._t_exit - self._t_start),
            total_seconds=now - self._t0, guest_uptime_at_start=self._uptime)

    async def _watch_qemu_log(self, nursery: trio.Nursery) -> None:
        """QEMU pauses (rather than exits) on some fatal errors: notice them in its log."""
        path = self.log_path("qemu")
        seen = 0
        while True:
            await trio.sleep(0.25)
            try:
                with open(path, "rb") as f:
                    f.seek(seen)
                    chunk = f.read()
            except OSError:
                continue
            seen += len(chunk)
            for line in chunk.decode(errors="replace").splitlines():
                if any(marker in line for marker in QEMU_FATAL_MARKERS):
                    self._qemu_fatal = line.strip()
                    nursery.cancel_scope.cancel()
                    return

    async def _pump(self, sock: trio.socket.SocketType | None, dest: ByteSink) -> None:
        assert sock is not None

        def write(data: bytes) -> None:
            try:
                dest.write(data)
                dest.flush()
            except (BrokenPipeError, ValueError):
                pass  # our reader went away: keep draining so the guest never blocks

        while True:
            data = await sock.recv(65536)
            if not data:
                return
            await trio.to_thread.run_sync(write, data)

    async def _control(self) -> None:
        assert self._ctl is not None
        buf = b""
        while True:
            data = await self._ctl.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                await self._control_line(line.decode(errors="replace").strip())

    async def _control_line(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "start":
            self._t_start = time.monotonic()
            try:
                self._uptime = float(rest)
            except ValueError:
                pass
        elif word == "exit":
            try:
                self._status = int(rest)
            except ValueError:
                self._guest_fail = f"bad exit report {line!r}"
                return
            self._t_exit = time.monotonic()
            assert self._ctl is not None
            try:
                await self._ctl.send(b"bye\n")
            except OSError:
                pass
            if self._aux is not None:
                self._aux.start_soon(self._reap_after_poweroff)
        elif word == "fail":
            self._guest_fail = rest

    async def _reap_after_poweroff(self) -> None:
        """The guest reported its status; if it does not power off, stop QEMU ourselves."""
        assert self.qemu is not None
        await trio.sleep(self.poweroff_grace)
        if self.qemu.running():
            log.warning("the guest did not power off within %.0f s: stopping QEMU",
                        self.poweroff_grace)
            await self.qemu.stop(self.qemu_grace)


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


async def run_in_guest(machine: LabMachine, *, timeout: float | None = None,
                       handle_signals: bool = True) -> RunResult:
    """Launch ``machine``, wait for its command, tear everything down.

    With ``handle_signals``, SIGINT and SIGTERM stop everything and raise
    :class:`Interrupted` carrying the signal.
    """
    got: list[int] = []

    async def body() -> RunResult:
        async with machine:
            return await machine.wait(timeout)

    if not handle_signals:
        return await body()
    result: RunResult | None = None
    error: Exception | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                async for signum in signals:
                    got.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            async def main() -> None:
                nonlocal result, error
                try:
                    result = await body()
                except Exception as exc:  # re-raised below, outside the nursery
                    error = exc
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(main)
    if got:
        raise Interrupted(got[0], machine.kept_run_dir)
    if error is not None:
        raise error
    assert result is not None
    return result


class Interrupted(LabError):
    """SIGINT or SIGTERM stopped the run (everything was shut down first)."""

    def __init__(self, signum: int, run_dir: Path | None) -> None:
        self.signum = signum
        self.run_dir = run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name}: stopped QEMU and "
                         "the server")


__all__ = [
    "Child",
    "Interrupted",
    "LabMachine",
    "RunResult",
    "command_script",
    "describe_returncode",
    "log_tail",
    "run_in_guest",
]
