"""The device server's side of its executor: the child process that runs a VM's work.

The session (this process) keeps the vfio-user socket, config space, the DMA map,
the interrupts and the queue registers, and never runs OpenCL or guest code.  The
executor (``_executor_child``) maps the same guest memory and serves the rings in
it directly.  ``IsolatedEngine`` stands where an in-process ``RingEngine`` would
(it is the queue table's listener and gets the doorbells and DMA changes) and
forwards all of it over the control socket, in order.  An unmap is acknowledged
before the session replies to QEMU, so the executor never touches a range QEMU
took back.

When the executor dies, by a signal or an exit, or is killed because it stopped
answering or a command passed its time limit, the session:

1. completes every command left on its rings with ``-ENODEV``, so each waiting
   call in the guest returns (CL_OUT_OF_RESOURCES), and marks those queues FAILED;
2. marks the guest processes that had queues as having lost their contexts: the
   next executor answers their old ids with CL_OUT_OF_RESOURCES;
3. logs the cause (signal or exit status, the command that was running) and
   starts a fresh executor, which serves new queues and new contexts.

QEMU sees none of it: its socket, the device's registers and its DMA map stay.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from construct import ConstructError

from protocols import device_abi as abi
from protocols import executor as xp
from protocols.device_abi import RingStatus
from protocols.executor import LANE_ENV, PREPARED_ENV, ControlOp, EventOp

from ._dma import DmaError, DmaMap, DmaRange
from ._queues import QueueTable
from ._sandbox import SandboxConfig
from ._windows import WindowedDma, Windows, queue_view

log = logging.getLogger("vdev.executor")

#: The errno a command gets when its executor died before completing it.
DEVICE_LOST = errno.ENODEV
_CQE = struct.Struct("<QiI")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


@dataclass
class ExecutorLimits:
    """When the session gives up on an executor and resets it."""

    command_s: float = 10.0        # an inline command or a running kernel
    heartbeat_s: float = 5.0       # the executor's watchdog thread stopped ticking
    startup_s: float = 60.0        # from spawn to READY
    teardown_s: float = 20.0       # releasing a dead guest process's objects
    reply_s: float = 3.0           # an acknowledgement on the control socket
    grace_s: float = 0.5           # after closing the control socket, before SIGKILL
    #: How often the session reads the executor's status page: a small part of the
    #: shortest limit, and no oftener than needed (each look wakes the server, whose
    #: event loop costs about 1 ms of CPU a wake-up on a slow host).
    watch_s: float = 0.25

    def watch_period(self) -> float:
        return min(self.watch_s, self.command_s / 10, self.heartbeat_s / 10)


@dataclass
class ExecutorConfig:
    backend: str = "test"
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    limits: ExecutorLimits = field(default_factory=ExecutorLimits)
    log_level: str = "INFO"
    #: Keyword arguments of the backend (the OpenCL backend's device memory).
    backend_options: dict[str, Any] = field(default_factory=dict)
    #: Loggers the executor logs at DEBUG (the server's -v).
    debug_loggers: tuple[str, ...] = ()
    #: Under a manager: the tenant table's fd (inherited) and this VM's slot in it.
    tenant_fd: int | None = None
    tenant_slot: int = 0
    #: The VM's name in the executor's log lines (under a manager).
    vm_name: str = ""
    #: The OpenCL declarations the server prepared (a sealed memfd; None: none).
    prepared_fd: int | None = None
    #: The backend's lane library the server compiled (a sealed memfd; None: none).
    lane_fd: int | None = None


class ExecutorGone(Exception):
    pass


def _opcode_name(opcode: int) -> str:
    if opcode < abi.DIAG_OPCODE_LIMIT:
        try:
            return f"opcode {opcode} ({abi.SelftestOp(opcode).name})"
        except ValueError:
            return f"opcode {opcode}"
    from protocols import opencl_api
    fn = opencl_api.BY_OPCODE.get(opcode)
    return f"opcode {opcode} ({fn.name})" if fn else f"opcode {opcode}"


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


#: Environment variables an executor inherits (by prefix): what the OpenCL
#: implementation, the loader and Python read.  The rest of the server's environment
#: (credentials, tokens, paths of other services) stays out of its reach.
ENV_PREFIXES = ("POCL_", "OCL_", "AVA_", "CUDA_", "NVIDIA_", "ROCR_", "HSA_", "GPU_", "LC_",
                "PYTHON")
ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "VIRTUAL_ENV"})


#: The OpenCL loader's variables, and the guest driver's library: a loader that a
#: client's settings point at the guest driver (an ``OCL_ICD_VENDORS`` exported for a
#: program on the same machine, then the server started from that shell) would give
#: the executor no host platform, and every session ``CL_PLATFORM_NOT_FOUND_KHR``.
LOADER_VARIABLES = ("OCL_ICD_VENDORS", "OCL_ICD_FILENAMES")
GUEST_DRIVER_LIBRARY = "libava_icd"
_warned_loader: set[tuple[str, str]] = set()


def names_guest_driver(value: str) -> bool:
    """Whether a loader variable's value (``:``-separated library paths, ``.icd``
    files or vendors directories) names the guest driver."""
    for entry in value.split(":"):
        if GUEST_DRIVER_LIBRARY in os.path.basename(entry):
            return True
        if os.path.isdir(entry):
            try:
                icds = [os.path.join(entry, n) for n in os.listdir(entry) if n.endswith(".icd")]
            except OSError:
                continue
        else:
            icds = [entry] if entry.endswith(".icd") else []
        for icd in icds:
            try:
                with open(icd, encoding="utf-8", errors="replace") as f:
                    if GUEST_DRIVER_LIBRARY in f.read(4096):
                        return True
            except OSError:
                continue
    return False


def executor_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}
    for var in LOADER_VARIABLES:
        value = env.get(var)
        if value is not None and names_guest_driver(value):
            del env[var]
            if (var, value) not in _warned_loader:
                _warned_loader.add((var, value))
                log.warning("%s=%s names the ava-vdev guest driver (%s.so), which is the "
                            "guest's OpenCL, not the host's: executors do not get it, and "
                            "use the host's own vendors (/etc/OpenCL/vendors). Hint: set it "
                            "only for the programs that use the device", var, value,
                            GUEST_DRIVER_LIBRARY)
    # The executor imports this very checkout (it starts in /, so its own directory would
    # not be on its path), whether the project is installed or run from a source tree.
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    return env


class ExecutorProcess:
    """One executor: the child, its sockets, eventfd and status page."""

    def __init__(self, config: ExecutorConfig, name: str, lost_owners: set[int]):
        self.config = config
        self.name = name
        self.ready = False
        self.killed_because = ""
        self.spawned_at = time.monotonic()
        #: When a session took it, for one started ahead (a standby); 0: started for one.
        self.adopted_at = 0.0
        self._seq = 0
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        evt, evt_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.doorbell = os.eventfd(0, os.EFD_CLOEXEC)   # blocking: the child waits on it
        status_fd = os.memfd_create("ava-executor-status", os.MFD_CLOEXEC)
        os.ftruncate(status_fd, xp.STATUS_SIZE)
        self.status = mmap.mmap(status_fd, xp.STATUS_SIZE, mmap.MAP_SHARED)
        child_fds: tuple[int, ...] = (ctl_child.fileno(), evt_child.fileno(), self.doorbell,
                                      status_fd)
        tenant_args: list[str] = []
        if config.tenant_fd is not None:
            child_fds += (config.tenant_fd,)
            tenant_args = ["--tenant-fd", str(config.tenant_fd),
                           "--tenant-slot", str(config.tenant_slot)]
        if config.vm_name:
            tenant_args += ["--vm-name", config.vm_name]
        env = executor_environment()
        if config.prepared_fd is not None:
            child_fds += (config.prepared_fd,)
            env[PREPARED_ENV] = f"/proc/self/fd/{config.prepared_fd}"
        if config.lane_fd is not None:
            child_fds += (config.lane_fd,)
            env[LANE_ENV] = f"/proc/self/fd/{config.lane_fd}"
        argv = [sys.executable, "-m", "vdev._executor_child", "--control", str(child_fds[0]),
                "--events", str(child_fds[1]), "--doorbell", str(child_fds[2]),
                "--status", str(child_fds[3]), "--backend", config.backend, "--name", name,
                "--log-level", config.log_level,
                "--backend-options", json.dumps(config.backend_options),
                *(f"--debug-logger={name}" for name in config.debug_loggers),
                "--lost-owners", ",".join(str(o) for o in sorted(lost_owners)),
                *tenant_args, *config.sandbox.as_args()]
        try:
            self.proc = subprocess.Popen(argv, pass_fds=child_fds, stdin=subprocess.DEVNULL,
                                         cwd="/", env=env)
        finally:
            ctl_child.close()
            evt_child.close()
            os.close(status_fd)
        self.pid = self.proc.pid
        ctl.settimeout(config.limits.reply_s)
        evt.setblocking(False)
        self.control = ctl
        self.events = trio.socket.from_stdlib_socket(evt)

    # -- control channel (the session's thread; bounded waits) --------------------------

    def send(self, op: ControlOp, body: dict[str, object], fds: tuple[int, ...] = ()) -> None:
        record = xp.Control.build(dict(op=op.name, body=body))
        try:
            if fds:
                socket.send_fds(self.control, [record], list(fds))
            else:
                self.control.send(record)
        except OSError as exc:      # timeout (a full socket: a stuck executor) or gone
            raise ExecutorGone(f"control socket: {exc or 'timed out'}") from exc

    def request(self, op: ControlOp, **body: object) -> None:
        """Send and wait for the acknowledgement (everything before it is done)."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        self.send(op, dict(body, seq=seq))
        deadline = time.monotonic() + self.config.limits.reply_s
        while True:
            self.control.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data = self.control.recv(xp.MAX_RECORD)
            except OSError as exc:
                raise ExecutorGone(f"no acknowledgement of {op.name} within "
                                   f"{self.config.limits.reply_s:g} s ({exc or 'timed out'})"
                                   ) from exc
            finally:
                self.control.settimeout(self.config.limits.reply_s)
            if not data:
                raise ExecutorGone("control socket closed")
            try:
                msg = xp.Event.parse(data)
            except ConstructError as exc:
                raise ExecutorGone(f"malformed acknowledgement: {exc}") from exc
            if str(msg.op) == EventOp.ACK.name and msg.body.seq == seq:
                return

    def ring_doorbell(self) -> None:
        try:
            os.eventfd_write(self.doorbell, 1)
        except OSError:
            pass            # the counter is saturated: the executor has a wake-up pending

    def read_status(self) -> Any:
        try:
            return xp.Status.parse(self.status[:xp.Status.sizeof()])
        except ConstructError:
            return None     # not written yet (or scribbled on by a hostile executor)

    # -- ending ----------------------------------------------------------------------

    def kill(self, why: str) -> None:
        """SIGKILL (our own child, by the PID we started; not yet reaped)."""
        if self.proc.returncode is None and not self.killed_because:
            self.killed_because = why
            log.error("%s: resetting the executor (pid %d): %s", self.name, self.pid, why)
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def stop(self) -> int | None:
        """End it: close the control socket (it exits at once), then SIGKILL after the
        grace period; reaps it.  Blocks for at most about grace + 2 s."""
        self.control.close()
        try:
            return self.proc.wait(self.config.limits.grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            log.error("%s: executor pid %d did not end after SIGKILL", self.name, self.pid)
            return None

    def close(self) -> None:
        self.control.close()
        self.events.close()
        os.close(self.doorbell)
        self.status.close()


@dataclass
class _RingRecord:
    addr: int
    slots: int
    owner: int
    generation: int
    served_by: int = 0      # the pid of the executor that was told to serve it
    windows: Windows | None = None


def _window_records(windows: Windows) -> list[dict[str, int]]:
    return [dict(start=start, end=end) for start, end in windows]


class IsolatedEngine:
    """A session's rings, served by an executor process (the QueueTable listener)."""

    def __init__(self, dma: DmaMap, queues: QueueTable, config: ExecutorConfig, *,
                 name: str, raise_irq: Callable[[int], None],
                 on_give_up: Callable[[str], None],
                 standby: Callable[[], ExecutorProcess | None] | None = None):
        self.dma = dma
        #: The server's executor started ahead, taken by this session's first spawn: a
        #: client's first call need not wait for an executor to start (Python, the
        #: sandbox, the OpenCL implementation: 0.3 s here).
        self._standby = standby
        self.queues = queues
        self.config = config
        self.name = name
        self._raise_irq = raise_irq
        self._on_give_up = on_give_up
        self.rings: dict[int, _RingRecord] = {}
        self.lost_owners: set[int] = set()
        self.proc: ExecutorProcess | None = None
        self._generation = 0
        self._closing = False
        self._needed = trio.Event()      # set by the first queue enable: start one
        #: Each queue's fences the executor has not yet said are settled
        #: (QueueState.SETTLING), by the number it will say it with.
        self.fences: dict[int, set[int]] = {}
        self._fence_seq = 0

    # -- queue listener and session hooks (the session's thread) --------------------------

    def enable_queue(self, queue: int, ring_addr: int, slots: int, owner: int = 0,
                     windows: Windows | None = None) -> int:
        try:
            queue_view(self.dma, queue, windows).translate(ring_addr, abi.ring_bytes(slots),
                                                           write=True)
        except DmaError as exc:
            log.warning("queue %d: ring %#x unusable: %s", queue, ring_addr, exc)
            return exc.errno
        if self._closing:
            return errno.ENODEV
        self._generation += 1
        rec = self.rings[queue] = _RingRecord(ring_addr, slots, owner, self._generation,
                                              windows=windows)
        self._send_enable(queue, rec)
        self._needed.set()
        return 0

    def set_windows(self, queue: int, windows: Windows) -> None:
        """Acknowledged, like an unmap: memory the new windows leave out is not touched
        for this queue once the guest's register write is answered."""
        rec = self.rings.get(queue)
        if rec is None:
            return
        rec.windows = windows
        if not WindowedDma(self.dma, queue, windows).allows(rec.addr, abi.ring_bytes(rec.slots)):
            self.rings.pop(queue, None)
            self.queues.fail(queue, errno.EFAULT)
        self._request(ControlOp.QUEUE_WINDOWS, queue=queue, count=len(windows),
                      windows=_window_records(windows))

    def fence(self, queue: int, owner: int) -> None:
        """Pending until the executor's FENCE_DONE, or until it has ended (a process
        that did not end, even killed, may still run what it was given)."""
        if self.proc is None:
            return                  # no executor: nothing of the owner's is running
        self._fence_seq = fence = self._fence_seq % 0xFFFFFFFF + 1
        self.fences.setdefault(queue, set()).add(fence)
        self._forward(ControlOp.FENCE, queue=queue, owner=owner & 0xFFFFFFFF, fence=fence)

    def settling(self, queue: int) -> bool:
        return bool(self.fences.get(queue))

    # Disable and release are acknowledged, like an unmap: once the guest's register
    # write returns, the executor no longer reads or writes that ring's memory.
    def disable_queue(self, queue: int) -> None:
        if self.rings.pop(queue, None) is not None:
            self._request(ControlOp.QUEUE_DISABLE, queue=queue)

    def release_queue(self, queue: int, owner: int = 0, last: bool = True) -> None:
        self.rings.pop(queue, None)
        self._request(ControlOp.QUEUE_RELEASE, queue=queue, owner=owner, last=int(last))

    def kick(self, queue: int = 0) -> None:
        if self.proc is not None:
            self.proc.ring_doorbell()

    def dma_added(self, rng: DmaRange, fd: int | None) -> None:
        self._forward(ControlOp.DMA_ADD, fds=(fd,) if fd is not None else (),
                      iova=rng.iova, size=rng.size, offset=rng.offset, flags=rng.flags,
                      has_fd=int(fd is not None))

    def dma_removed(self, iova: int, size: int) -> None:
        self._request(ControlOp.DMA_REMOVE, iova=iova, size=size)

    def dma_cleared(self) -> None:
        self._request(ControlOp.DMA_CLEAR)

    def dma_changed(self) -> None:
        """The parent's own view: a ring whose memory left fails here too."""
        for queue, rec in list(self.rings.items()):
            try:
                self.dma.translate(rec.addr, abi.ring_bytes(rec.slots), write=True)
            except DmaError:
                self.rings.pop(queue, None)
                self.queues.fail(queue, errno.EFAULT)

    def _send_enable(self, queue: int, rec: _RingRecord) -> None:
        if rec.windows is not None and not self._forward(
                ControlOp.QUEUE_WINDOWS, queue=queue, seq=0, count=len(rec.windows),
                windows=_window_records(rec.windows)):
            return
        if self._forward(ControlOp.QUEUE_ENABLE, queue=queue, slots=rec.slots, ring=rec.addr,
                         owner=rec.owner & 0xFFFFFFFF, generation=rec.generation):
            rec.served_by = self.proc.pid if self.proc else 0

    def _forward(self, op: ControlOp, fds: tuple[int, ...] = (), **body: object) -> bool:
        """Send ``op`` to the executor; False if there is none to send it to (the next
        one gets the state it needs when it starts) or it could not take it."""
        proc = self.proc
        if proc is None or proc.killed_because:
            return False
        try:
            proc.send(op, body, fds)
        except ExecutorGone as exc:
            proc.kill(f"{op.name} could not be delivered: {exc}")
            return False
        return True

    def _request(self, op: ControlOp, **body: object) -> None:
        proc = self.proc
        if proc is None or proc.killed_because:
            return
        try:
            proc.request(op, **body)
        except ExecutorGone as exc:
            proc.kill(f"{op.name}: {exc}")
            # Dead before the reply to QEMU: the range is never touched again.
            proc.stop()

    # -- the executor's life (a task in the session's nursery) ---------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start an executor when a queue needs one (a session that never enables a
        queue never starts one), supervise it, and after it ends start the next one
        when a queue needs it again."""
        failures = 0
        task_status.started()
        while not self._closing:
            await self._needed.wait()
            if self._closing:
                return
            proc = self._spawn()
            try:
                await self._supervise(proc)
            finally:
                with trio.CancelScope(shield=True):
                    returncode = proc.stop()
                    self._executor_ended(proc, returncode)
                    proc.close()
                    self.proc = None
            if self._closing:
                return
            failures = 0 if proc.ready else failures + 1
            if failures >= 3:
                why = (f"the executor failed to start {failures} times in a row (see the "
                       "log lines before); the device is marked FAILED")
                log.error("%s: %s", self.name, why)
                self._on_give_up(why)
                self._closing = True
                return
            if failures:
                await trio.sleep(0.2 * failures)    # the next queue's retry, not at once

    def _spawn(self) -> ExecutorProcess:
        self._needed = trio.Event()
        take, self._standby = self._standby, None       # the session's first executor only
        proc = take() if take is not None and not self.lost_owners else None
        if proc is not None:
            proc.name = self.name
            proc.adopted_at = time.monotonic()
            self.proc = proc
            self._forward(ControlOp.ADOPT, name=self.name[:200])
            log.info("%s: executor pid %d, started ahead, serves this session", self.name,
                     proc.pid)
        else:
            proc = ExecutorProcess(self.config, self.name, self.lost_owners)
            self.proc = proc
            log.info("%s: executor started (pid %d, backend %s)", self.name, proc.pid,
                     self.config.backend)
        # What the new executor needs, in order: guest memory, then the rings.
        for rng, fd in self.dma.snapshot():
            self.dma_added(rng, fd)
        for queue, rec in self.rings.items():
            self._send_enable(queue, rec)
        return proc

    async def _supervise(self, proc: ExecutorProcess) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog, proc)
            await self._read_events(proc)
            nursery.cancel_scope.cancel()

    async def _read_events(self, proc: ExecutorProcess) -> None:
        while True:
            try:
                data = await proc.events.recv(xp.MAX_RECORD)
            except OSError as exc:
                log.warning("%s: executor event socket: %s", self.name, exc)
                return
            if not data:
                return          # it exited (or closed the socket): either way it is done
            try:
                msg = xp.Event.parse(data)
            except ConstructError as exc:
                proc.kill(f"malformed event ({len(data)} bytes): {exc}")
                return
            op, body = str(msg.op), msg.body
            if op == EventOp.IRQ.name:
                if 0 <= body.queue < abi.MSIX_VECTORS:
                    self._raise_irq(body.queue)
            elif op == EventOp.FENCE_DONE.name:
                pending = self.fences.get(body.queue)
                if pending is not None:
                    pending.discard(body.fence)
                    if not pending:
                        del self.fences[body.queue]
            elif op == EventOp.QUEUE_FAILED.name:
                rec = self.rings.get(body.queue)
                if rec is not None and rec.generation == body.generation:
                    self.rings.pop(body.queue)
                    err = body.errno if 0 < body.errno < 4096 else errno.EIO
                    self.queues.fail(body.queue, err)
            elif op == EventOp.READY.name:
                proc.ready = True
                if proc.adopted_at:
                    log.info("%s: executor pid %d ready; this session waited %.2f s for it "
                             "(started ahead)", self.name, proc.pid,
                             max(time.monotonic() - proc.adopted_at, 0.0))
                else:
                    log.info("%s: executor pid %d ready in %.2f s", self.name, proc.pid,
                             time.monotonic() - proc.spawned_at)
            else:
                proc.kill(f"unexpected event {op}")
                return

    async def _watchdog(self, proc: ExecutorProcess) -> None:
        limits = self.config.limits
        last_beat, beat_at = -1, time.monotonic()
        period = limits.watch_period()
        while proc.proc.poll() is None:
            await trio.sleep(period)
            now = time.monotonic()
            if not proc.ready:
                if now - proc.spawned_at > limits.startup_s:
                    proc.kill(f"not ready {limits.startup_s:g} s after it started")
                beat_at = now
                continue
            st = proc.read_status()
            if st is None:
                proc.kill("its status page is unreadable")
                return
            if st.heartbeat != last_beat:
                last_beat, beat_at = st.heartbeat, now
            elif now - beat_at > limits.heartbeat_s:
                proc.kill(f"it stopped answering (no heartbeat for {now - beat_at:.1f} s)")
                return
            now_ns = time.monotonic_ns()
            if st.command_since and now_ns - st.command_since > limits.command_s * 1e9:
                proc.kill(f"{_opcode_name(st.command_opcode)} on queue {st.command_queue} ran "
                          f"for {(now_ns - st.command_since) / 1e9:.1f} s (limit "
                          f"{limits.command_s:g} s)")
                return
            if st.kernel_since and now_ns - st.kernel_since > limits.command_s * 1e9:
                proc.kill(f"a kernel ({_opcode_name(st.kernel_opcode)} from guest process "
                          f"{st.kernel_owner}) ran for {(now_ns - st.kernel_since) / 1e9:.1f} s "
                          f"(limit {limits.command_s:g} s)")
                return
            if st.teardown_since and now_ns - st.teardown_since > limits.teardown_s * 1e9:
                proc.kill(f"releasing a departed guest process's objects took over "
                          f"{limits.teardown_s:g} s")
                return

    def _executor_ended(self, proc: ExecutorProcess, returncode: int | None) -> None:
        if returncode is not None:
            self.fences.clear()     # it is gone: nothing it ran touches guest memory
        if self._closing and not proc.killed_because:
            return              # the session is ending: nothing is waiting for it
        st = proc.read_status()
        last = ""
        if st is not None and st.commands:
            last = (f"; last command: {_opcode_name(st.command_opcode)} on queue "
                    f"{st.command_queue}" + (" (running)" if st.command_since else ""))
        cause = proc.killed_because or f"it {describe_exit(returncode)}"
        owners = {self.queues.regs[q].owner for q in range(self.queues.count)
                  if self.queues.regs[q].state & abi.QueueState.CLAIMED}
        pending, queues = self._fail_rings(proc.pid)
        self.lost_owners |= owners
        if len(self.lost_owners) > 4096:
            self.lost_owners = set(sorted(self.lost_owners)[-4096:])
        log.error("%s: executor pid %d ended (%s%s): %d commands in flight failed with %s on "
                  "queues %s; contexts of guest processes %s are lost; %s", self.name, proc.pid,
                  cause, last, pending, errno.errorcode[DEVICE_LOST], queues or "none",
                  sorted(owners) or "none",
                  "the session is ending" if self._closing
                  else "a new executor starts for the next queue")

    def _fail_rings(self, pid: int) -> tuple[int, list[int]]:
        """Complete what is left on every ring executor ``pid`` served with DEVICE_LOST
        and fail those queues.  A queue enabled once that executor was doomed never
        reached it: it stays, for the next executor."""
        pending, queues = 0, []
        for queue, rec in sorted(self.rings.items()):
            if rec.served_by != pid:
                continue
            del self.rings[queue]
            queues.append(queue)
            try:
                view = self.dma.translate(rec.addr, abi.ring_bytes(rec.slots), write=True)
            except DmaError:
                self.queues.fail(queue, DEVICE_LOST)
                continue
            head = _U64.unpack_from(view, abi.RING_HEAD)[0]
            tail = _U64.unpack_from(view, abi.RING_TAIL)[0]
            end = tail if 0 <= tail - head <= rec.slots else head
            cq_base = abi.RING_HEADER_SIZE + rec.slots * abi.COMMAND_SIZE
            for index in range(head, end):
                _CQE.pack_into(view, cq_base + (index & (rec.slots - 1)) * abi.COMPLETION_SIZE,
                               index, -DEVICE_LOST, 0)
            pending += end - head
            _U64.pack_into(view, abi.RING_HEAD, end)
            _U32.pack_into(view, abi.RING_STATUS, RingStatus.FAILED)
            self.queues.fail(queue, DEVICE_LOST)
            self._raise_irq(queue)          # a guest asleep on the ring wakes and sees it
        if self.rings and not self._closing:
            self._needed.set()              # queues are waiting: start the next one now
        return pending, queues

    def close(self) -> None:
        """The session is ending: the next exit is expected, and nothing respawns."""
        self._closing = True
        self._needed.set()
