"""The listening socket: one device, one client at a time.

The socket is created mode 0600.  A live socket at the path (something
answers a connect) is never clobbered; a stale one is removed.  A second
client that connects while one is being served is told no (closed at once),
rather than left waiting for a VERSION reply that QEMU would time out on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
from typing import Any

import trio

from ._backends import BACKENDS, make_backend
from ._device import AcceleratorDevice
from ._executor import ExecutorConfig, ExecutorLimits, ExecutorProcess, describe_exit
from ._sandbox import SandboxConfig, sandbox_root_dir
from ._session import Session, session_name

log = logging.getLogger("vdev.server")
#: Backend loggers that -v turns to DEBUG in the executor too (evictions, restores).
DEBUG_LOGGERS = ("host_backend.memory",)
#: A session shorter than this says clients come and go (host processes over the
#: loopback transport, one after another): the next standby then starts as soon as a
#: session takes the current one, at the lowest CPU priority until a session takes it
#: in turn.  Started when a session ended instead, a standby was not ready for a client
#: that came 0.1-0.15 s later (a Python process's start): each of pyopencl's examples
#: waited about 50 ms for it.  A long session (a VM's) keeps no second executor idle.
CHURN_S = 5.0
#: The nice value of a standby started during a session (``CHURN_S``).
EARLY_STANDBY_NICE = 19


class SocketInUse(Exception):
    pass


def _prepare_path(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it "
                          "(remove it or choose another --socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise SocketInUse(f"cannot probe existing socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise SocketInUse(f"another server is listening on {path}; stop it or choose another --socket")


class Server:
    """Owns the listening socket and the device; serves sessions one at a time.

    Each session's commands run in an executor process of its own (sandboxed by
    ``sandbox``, reset past ``limits``); ``in_process=True`` runs them in this
    process instead, for white-box tests of the ring engine and backends."""

    def __init__(self, path: str, device: AcceleratorDevice | None = None, *,
                 backend: str = "test", stall_timeout: float = 5.0, in_process: bool = False,
                 sandbox: SandboxConfig | None = None, limits: ExecutorLimits | None = None,
                 backend_options: dict[str, Any] | None = None,
                 tenant: tuple[int, int] | None = None, vm_name: str = "",
                 standby: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.backend_name = backend
        self.backend_options = dict(backend_options or {})
        #: Under a manager: (the tenant table's fd, this VM's slot), handed to executors.
        self.tenant = tenant
        self.vm_name = vm_name
        self.in_process = in_process
        self.sandbox = sandbox or SandboxConfig()
        self.limits = limits or ExecutorLimits()
        self.path = os.path.abspath(path)
        self.device = device or AcceleratorDevice()
        self.stall_timeout = stall_timeout
        self.session: Session | None = None
        self.sessions_served = 0
        self._serial = 0
        self._listener: trio.socket.SocketType | None = None
        self._ino = 0
        self._one_at_a_time = trio.Lock()
        self.busy_wait = 1.0
        #: Keep an executor started ahead for the next client (``vdev serve`` does unless
        #: --no-standby): started with the server and after each session, idle until a
        #: session takes it.
        self.standby = standby and not in_process
        self._standby: ExecutorProcess | None = None
        #: Whether the standby runs at EARLY_STANDBY_NICE (started during a session).
        self._standby_niced = False
        #: How long the last session lasted (None: none yet).
        self._last_session_s: float | None = None
        #: What executors load instead of parsing C (see ``_prepare_executors``).
        self._prepared_fd: int | None = None
        #: The OpenCL backend's lane, compiled here for every executor (its sandbox
        #: cannot reach the build cache).
        self._lane_fd: int | None = None

    def executor_config(self) -> ExecutorConfig:
        level = logging.getLogger("vdev").getEffectiveLevel()
        debug = tuple(name for name in DEBUG_LOGGERS
                      if logging.getLogger(name).isEnabledFor(logging.DEBUG))
        return ExecutorConfig(backend=self.backend_name, sandbox=self.sandbox,
                              limits=self.limits, log_level=logging.getLevelName(level),
                              backend_options=self.backend_options, debug_loggers=debug,
                              tenant_fd=self.tenant[0] if self.tenant else None,
                              tenant_slot=self.tenant[1] if self.tenant else 0,
                              vm_name=self.vm_name, prepared_fd=self._prepared_fd,
                              lane_fd=self._lane_fd)

    def _prepare_executors(self) -> None:
        """Parse the OpenCL declarations once, here, for every executor of this server
        (``host_backend._cl_prepared``): each then starts 60-70 ms sooner; and
        compile the backend's lane (``host_backend._lane``, cached), which an
        executor's sandbox could not.  Each travels in a sealed memfd, which no
        executor can change and which goes with this process however it ends.  Any
        failure only costs time: the declarations parsed by each executor, the
        lane's calls taking the Python path."""
        if self.in_process or self.backend_name != "opencl" or self._prepared_fd is not None:
            return
        from host_backend._cl_prepared import prepared_source
        from host_backend._lane import LaneUnavailable, library_path
        try:
            self._prepared_fd = _sealed_memfd("ava-cl-declarations", prepared_source().encode())
        except Exception as exc:
            log.warning("cannot prepare the OpenCL declarations for executors (each parses "
                        "them itself): %s", exc)
        try:
            self._lane_fd = _sealed_memfd("ava-lane", library_path().read_bytes())
        except (LaneUnavailable, OSError) as exc:
            log.warning("the info-query lane is off (its calls take the Python path): %s", exc)

    # -- the standby executor ----------------------------------------------------------

    def _start_standby(self, *, early: bool = False) -> None:
        if not self.standby or self._standby is not None:
            return
        try:
            proc = ExecutorProcess(self.executor_config(), "standby", set())
        except OSError as exc:
            log.warning("cannot start a standby executor (the next client starts its own): "
                        "%s", exc)
            return
        self._standby = proc
        # (Its only thread yet: the threads it starts inherit the value.)
        self._standby_niced = early and _renice(proc.pid, EARLY_STANDBY_NICE)
        log.info("started a standby executor (pid %d, backend %s) for the next client%s",
                 proc.pid, self.backend_name,
                 f", at nice {EARLY_STANDBY_NICE} until one takes it" if self._standby_niced
                 else "")

    def _take_standby(self) -> ExecutorProcess | None:
        """The standby, for a session's first executor; None when there is none or it
        died while it waited (it is reaped here; the session starts its own)."""
        proc, self._standby = self._standby, None
        if proc is not None and proc.proc.poll() is not None:
            log.warning("the standby executor (pid %d) %s while it waited; starting another "
                        "for this client", proc.pid, describe_exit(proc.proc.returncode))
            proc.close()
            proc = None
        if proc is not None and self._standby_niced:
            _renice(proc.pid, os.getpriority(os.PRIO_PROCESS, 0))   # the server's own
        self._standby_niced = False
        if self._churning():
            self._start_standby(early=True)
        return proc

    def _churning(self) -> bool:
        """Whether to start the next standby now (``CHURN_S``).  Only where the server
        may give it its priority back (root) and no tenant table sets executors'
        priorities (a manager's VMs: long sessions)."""
        return (self._last_session_s is not None and self._last_session_s < CHURN_S
                and os.geteuid() == 0 and self.tenant is None)

    def _stop_standby(self) -> None:
        proc, self._standby = self._standby, None
        if proc is not None:
            proc.stop()
            proc.close()

    def bind(self) -> None:
        """Create the socket (mode 0600) at ``path``; raises SocketInUse or OSError."""
        if self._listener is not None:
            return
        if not self.in_process and self.sandbox.full_sandbox() and not self.sandbox.root_dir:
            # SandboxError now, not at the first client.
            self.sandbox.root_dir = sandbox_root_dir()
        _prepare_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._listener = trio.socket.from_stdlib_socket(sock)
        self._ino = os.stat(self.path).st_ino

    async def serve(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        self.bind()
        listener, ino = self._listener, self._ino
        assert listener is not None
        try:
            listener.listen(4)
            log.info("listening on %s", self.path)
            self._prepare_executors()
            task_status.started(self)
            self._start_standby()
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _ = await listener.accept()
                    self._serial += 1
                    nursery.start_soon(self._serve_connection, conn, self._serial)
        finally:
            self._stop_standby()
            for fd in (self._prepared_fd, self._lane_fd):
                if fd is not None:
                    os.close(fd)
            self._prepared_fd = self._lane_fd = None
            listener.close()
            self._listener = None
            try:
                if os.stat(self.path).st_ino == ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _serve_connection(self, conn: trio.socket.SocketType, serial: int) -> None:
        """Serve ``conn`` once the device is free; refuse it if that takes over a second
        (a client that just left may still be tearing down)."""
        name = session_name(serial, conn)
        try:
            acquired = False
            with trio.move_on_after(self.busy_wait):
                await self._one_at_a_time.acquire()
                acquired = True
            if not acquired:
                busy = self.session.name if self.session else "another client"
                log.warning("%s refused: %s is being served (one client at a time)", name, busy)
                return
            started = trio.current_time()
            try:
                if self.in_process:
                    self.session = Session(self.device, conn, name=name,
                                           backend=make_backend(self.backend_name,
                                                                self.backend_options),
                                           stall_timeout=self.stall_timeout)
                else:
                    self.session = Session(self.device, conn, name=name,
                                           executor=self.executor_config(),
                                           stall_timeout=self.stall_timeout,
                                           standby=self._take_standby)
                await self.session.run()
                self._last_session_s = trio.current_time() - started
                # Its executor has ended: the next client's starts now, while none waits
                # (unless it started when this session took its own: _churning).
                self._start_standby()
            finally:
                self.session = None
                self.sessions_served += 1
                self._one_at_a_time.release()
        finally:
            conn.close()


def _renice(pid: int, value: int) -> bool:
    """Set every thread of ``pid`` to nice ``value`` (on Linux, nice is a thread's: a
    process's threads keep their own); whether all were."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    done = True
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except OSError as exc:      # gone meanwhile, or not ours to raise
            log.debug("renice thread %s of pid %d to %d: %s", tid, pid, value, exc)
            done = False
    return done


def _sealed_memfd(name: str, data: bytes) -> int:
    """``data`` in a memfd sealed against every change (an executor may read it only;
    it goes with this process however it ends)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd
