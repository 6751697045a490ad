"""The executor: one VM's ring engine and backend, in a sandboxed child process.

``python -m vdev._executor_child`` is started by the device server (``_executor``)
with four inherited fds: the control and event sockets, the doorbell eventfd and
the status page (``protocols.executor``).  It sandboxes itself first (``_sandbox``),
then loads the backend, maps the guest memory the parent hands it, and serves the
rings in guest memory directly: the hot path never crosses a process boundary.

It keeps no state the parent needs: when it dies (a guest kernel that faults, an
implementation that aborts, a reset for a command past its time limit) the parent
completes its pending commands and starts another.  So it exits at once, with
``os._exit``, when the parent closes the control socket or goes away.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import mmap
import os
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from construct import ConstructError

from protocols import device_abi as abi
from protocols import executor as xp
from protocols.executor import ControlOp, EventOp

from ._backend import Backend
from ._sandbox import SandboxConfig, SandboxError, enter, probe, sandbox_root_dir
from ._tenants import TenantScheduler

if TYPE_CHECKING:
    from ._rings import Fence

log = logging.getLogger("vdev.executor")

TICK_S = 0.1
#: How often pending fences (memory a queue may no longer reach, not yet settled) are
#: looked at: at first, and at the longest.
FENCE_POLL_S = 0.002
FENCE_POLL_MAX_S = 0.1
_CMD_FIELDS = struct.Struct("<QII")         # command_since, command_queue, command_opcode
_KERNEL_FIELDS = struct.Struct("<QII")      # kernel_since, kernel_owner, kernel_opcode
_U64 = struct.Struct("<Q")
assert xp.STATUS_OFFSETS["command_queue"] == xp.STATUS_OFFSETS["command_since"] + 8
assert xp.STATUS_OFFSETS["kernel_owner"] == xp.STATUS_OFFSETS["kernel_since"] + 8


class StatusPage:
    """The executor's side of the status page (see protocols.executor.Status)."""

    def __init__(self, fd: int):
        self._mm = mmap.mmap(fd, xp.STATUS_SIZE, mmap.MAP_SHARED)
        os.close(fd)
        self._mm[:xp.Status.sizeof()] = xp.Status.build(dict(
            pid=os.getpid(), heartbeat=0, command_since=0, command_queue=0, command_opcode=0,
            commands=0, kernel_since=0, kernel_owner=0, kernel_opcode=0, teardown_since=0))
        self.commands = 0
        self._cmd = xp.STATUS_OFFSETS["command_since"]
        self.command_cell = (self._mm, self._cmd)

    # CommandMonitor (the ring engine's threads)
    def started(self, queue: int, opcode: int, inline: bool) -> None:
        self.commands += 1
        _CMD_FIELDS.pack_into(self._mm, self._cmd, time.monotonic_ns() if inline else 0,
                              queue, opcode)

    def finished(self) -> None:
        _U64.pack_into(self._mm, self._cmd, 0)

    def counted(self, commands: int) -> None:
        self.commands += commands

    def put(self, name: str, value: int) -> None:
        _U64.pack_into(self._mm, xp.STATUS_OFFSETS[name], value)

    def put_kernel(self, since: int, owner: int, opcode: int) -> None:
        _KERNEL_FIELDS.pack_into(self._mm, xp.STATUS_OFFSETS["kernel_since"], since,
                                 owner & 0xFFFFFFFF, opcode)


class Executor:
    """Serves one VM's rings until the parent closes the control socket."""

    def __init__(self, backend: Backend, control: socket.socket, events: socket.socket,
                 doorbell: int, status: StatusPage, tenant: TenantScheduler | None = None,
                 vm_name: str = ""):
        from ._dma import DmaMap
        from ._rings import RingEngine

        self.backend = backend
        self.control = control
        self.events = events
        self.doorbell = doorbell
        self.status = status
        self.dma = DmaMap()
        self.generations: dict[int, int] = {}
        #: Each windowed queue's DMA windows, as the parent last sent them.
        self.windows: dict[int, tuple[tuple[int, int], ...]] = {}
        self._send_lock = threading.Lock()
        #: (queue, fence number, the engine's fence) until it is done (_fence_watch).
        self._fences: list[tuple[int, int, Fence]] = []
        self._fences_changed = threading.Condition()
        self._irq_records = [xp.Event.build(dict(op=EventOp.IRQ.name, body=dict(queue=q)))
                             for q in range(abi.NUM_QUEUES)]
        self.kernels = backend.enable_kernel_watch() if hasattr(backend, "enable_kernel_watch") \
            else None
        self.tenant = tenant
        self.vm_name = vm_name
        self._tenant_generation = -1
        if tenant is not None:
            backend.meter = tenant      # type: ignore[attr-defined]
            tenant.reaper = getattr(backend, "reap_device_commands", None)
            self._apply_settings()
        self.engine = RingEngine(self.dma, backend, raise_irq=self._irq,
                                 fail_queue=self._queue_failed, monitor=status,
                                 admission=tenant)

    def _apply_settings(self) -> None:
        """The VM's quotas from the tenant table, when the manager changed them."""
        assert self.tenant is not None
        generation = self.tenant.me["generation"]
        if generation == self._tenant_generation:
            return
        self._tenant_generation = generation
        settings = self.tenant.settings
        if hasattr(self.backend, "set_quotas"):
            self.backend.set_quotas(memory=settings.memory_quota or None,
                                    objects=settings.objects_quota or None)
        log.info("tenant %s: weight %d, %s, quotas: memory %s, objects %s, in flight %s, "
                 "rate %s/s", settings.name, settings.weight, settings.latency_class.name.lower(),
                 settings.memory_quota or "-", settings.objects_quota or "-",
                 settings.inflight_quota or "-", settings.rate_quota or "-")

    # -- to the parent --------------------------------------------------------------

    def _send(self, record: bytes) -> None:
        try:
            with self._send_lock:
                self.events.send(record)
        except OSError:
            os._exit(0)             # the parent is gone: nothing left to serve

    def _irq(self, queue: int) -> None:
        self._send(self._irq_records[queue])

    def _queue_failed(self, queue: int, err: int) -> None:
        self._send(xp.Event.build(dict(op=EventOp.QUEUE_FAILED.name, body=dict(
            queue=queue, generation=self.generations.get(queue, 0), errno=err))))

    def _ack(self, seq: int) -> None:
        try:
            self.control.send(xp.Event.build(dict(op=EventOp.ACK.name, body=dict(seq=seq))))
        except OSError:
            os._exit(0)

    # -- threads --------------------------------------------------------------------

    def _doorbells(self) -> None:
        while True:
            try:
                os.eventfd_read(self.doorbell)
            except OSError:
                return
            self.engine.kick()

    def _fence_watch(self) -> None:
        """Say FENCE_DONE for each fence once the engine finds it settled: looked at
        every FENCE_POLL_S at first, less and less often (down to FENCE_POLL_MAX_S)
        while the same ones stay pending (a command behind a user event...)."""
        pause = FENCE_POLL_S
        while True:
            with self._fences_changed:
                while not self._fences:
                    self._fences_changed.wait()
                    pause = FENCE_POLL_S
                pending = list(self._fences)
            done = [entry for entry in pending if self.engine.fence_done(entry[2])]
            if done:
                with self._fences_changed:
                    self._fences = [e for e in self._fences if e not in done]
                for queue, fence, _ in done:
                    self._send(xp.Event.build(dict(op=EventOp.FENCE_DONE.name, body=dict(
                        queue=queue, fence=fence))))
                pause = FENCE_POLL_S
            if len(done) < len(pending):
                with self._fences_changed:          # a new fence wakes it at once
                    self._fences_changed.wait(pause)
                pause = min(pause * 2, FENCE_POLL_MAX_S)

    def _watchdog(self) -> None:
        beat = 0
        backend = self.backend
        while True:
            time.sleep(TICK_S)
            beat += 1
            self.status.put("heartbeat", beat)
            self.status.put("commands", self.status.commands)
            if self.kernels is not None:
                try:
                    self.status.put_kernel(*self.kernels.sample(time.monotonic_ns()))
                except Exception:
                    log.exception("sampling kernel run times failed")
            self.status.put("teardown_since", getattr(backend, "teardown_since", 0))
            if self.tenant is not None:
                self._tenant_tick()

    def _tenant_tick(self) -> None:
        assert self.tenant is not None
        try:
            self._apply_settings()
            running = False
            if self.kernels is not None:
                running = bool(self.kernels.sample(time.monotonic_ns())[0])
            handles = getattr(self.backend, "handles", None)
            self.tenant.tick(running, len(handles) if handles is not None else 0,
                             handles.bytes_used if handles is not None else 0)
        except Exception:
            log.exception("tenant table update failed")

    def run(self) -> None:
        for target, name in ((self.engine.run, "poller"), (self._doorbells, "doorbell"),
                             (self._watchdog, "watchdog"), (self._fence_watch, "fences")):
            threading.Thread(target=target, name=f"executor-{name}", daemon=True).start()
        self._send(xp.Event.build(dict(op=EventOp.READY.name, body=dict(pid=os.getpid()))))
        while True:
            fds = array.array("i")
            try:
                data, ancdata, _flags, _addr = self.control.recvmsg(
                    xp.MAX_RECORD, socket.CMSG_SPACE(4 * fds.itemsize))
            except InterruptedError:
                continue
            except OSError as exc:
                log.error("control socket failed: %s", exc)
                return
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
            if not data:
                return                  # the parent closed it: the session is over
            try:
                self._handle(xp.Control.parse(data), list(fds))
            except (ConstructError, KeyError) as exc:
                for fd in fds:
                    os.close(fd)
                log.error("malformed control record (%d bytes): %s", len(data), exc)

    def _handle(self, msg: Any, fds: list[int]) -> None:
        from ._dma import DmaError

        op, body = ControlOp[str(msg.op)], msg.body
        log.debug("control %s %s%s", op.name, dict((k, v) for k, v in body.items() if k != "_io"),
                  f" fds {fds}" if fds else "")
        # Only DMA_ADD carries an fd (one, when has_fd says so); any other is closed.
        memory_fd = fds.pop(0) if op == ControlOp.DMA_ADD and body.has_fd and fds else None
        for stray in fds:
            os.close(stray)
        if op == ControlOp.DMA_ADD:
            try:
                self.dma.add(body.iova, body.size, body.flags, body.offset, memory_fd)
            except DmaError as exc:
                log.error("cannot map guest memory %#x+%#x: %s", body.iova, body.size, exc)
            self.engine.dma_changed()
        elif op == ControlOp.DMA_REMOVE:
            try:
                self.dma.remove(body.iova, body.size)
            except Exception as exc:
                log.warning("unmap %#x+%#x: %s", body.iova, body.size, exc)
            self.engine.dma_changed()
            self._ack(body.seq)
        elif op == ControlOp.DMA_CLEAR:
            self.dma.clear()
            self.engine.dma_changed()
            self._ack(body.seq)
        elif op == ControlOp.QUEUE_WINDOWS:
            windows = tuple((w.start, w.end) for w in body.windows)
            self.windows[body.queue] = windows
            self.engine.set_windows(body.queue, windows)
            self._ack(body.seq)
        elif op == ControlOp.FENCE:
            fence = self.engine.fence(body.queue, body.owner)
            with self._fences_changed:
                self._fences.append((body.queue, body.fence, fence))
                self._fences_changed.notify()
        elif op == ControlOp.QUEUE_ENABLE:
            self.generations[body.queue] = body.generation
            err = self.engine.enable_queue(body.queue, body.ring, body.slots, body.owner,
                                           self.windows.get(body.queue))
            if err:
                self._queue_failed(body.queue, err)
        elif op == ControlOp.QUEUE_DISABLE:
            self.engine.disable_queue(body.queue)
            self._ack(body.seq)
        elif op == ControlOp.QUEUE_RELEASE:
            self.windows.pop(body.queue, None)
            self.engine.release_queue(body.queue, body.owner, bool(body.last))
            self._ack(body.seq)
        elif op == ControlOp.SYNC:
            self._ack(body.seq)
        elif op == ControlOp.ADOPT:
            # A standby started before its session: from now on its lines name it.
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter(log_format(body.name, self.vm_name)))
            log.info("serving %s (started ahead)", body.name)


def log_format(name: str, vm_name: str = "") -> str:
    """Every line names the session served (and the VM, under a manager) and this PID."""
    where = f" vm={vm_name}" if vm_name else ""
    return f"%(asctime)s{where} %(name)s[{name}, pid {os.getpid()}] %(levelname)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vdev._executor_child",
                                     description="a device server's executor (started by "
                                                 "the server, not by hand)")
    parser.add_argument("--probe", action="store_true",
                        help="enter the sandbox (as a server's executor would: the full one "
                             "as root), print what it can reach as JSON, exit")
    parser.add_argument("--probe-path", action="append", default=[],
                        help="with --probe: also try to read this host path")
    parser.add_argument("--control", type=int, default=-1)
    parser.add_argument("--events", type=int, default=-1)
    parser.add_argument("--doorbell", type=int, default=-1)
    parser.add_argument("--status", type=int, default=-1)
    parser.add_argument("--backend", default="test")
    parser.add_argument("--name", default="executor")
    parser.add_argument("--lost-owners", default="")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--backend-options", default="{}",
                        help="the backend's keyword arguments, as JSON")
    parser.add_argument("--debug-logger", action="append", default=[])
    parser.add_argument("--tenant-fd", type=int, default=-1,
                        help="the manager's tenant table (inherited fd)")
    parser.add_argument("--tenant-slot", type=int, default=0)
    parser.add_argument("--vm-name", default="")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "required", "off"))
    parser.add_argument("--sandbox-user", default="nobody")
    parser.add_argument("--sandbox-root", default="")
    parser.add_argument("--kernel-cache", default="", metavar="DIR",
                        help="the server's kernel cache (bound read-write; see "
                             "_sandbox.KernelCache)")
    parser.add_argument("--memory", type=int, default=32 << 30)
    parser.add_argument("--max-tasks", type=int, default=4096)
    parser.add_argument("--max-files", type=int, default=4096)
    parser.add_argument("--tmp-bytes", type=int, default=1 << 30)
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument("--bind-ro", action="append", default=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=log_format(args.name, args.vm_name))
    for name in args.debug_logger:
        logging.getLogger(name).setLevel(logging.DEBUG)
    binds = [*args.bind, *([args.kernel_cache] if args.kernel_cache else [])]
    cfg = SandboxConfig(mode=args.sandbox, user=args.sandbox_user, root_dir=args.sandbox_root,
                        memory_bytes=args.memory, max_tasks=args.max_tasks,
                        max_files=args.max_files, tmp_bytes=args.tmp_bytes,
                        extra_binds=binds, read_only_paths=args.bind_ro)
    tenant = None
    if args.tenant_fd >= 0:
        from ._tenants import TenantTable
        tenant = TenantScheduler(TenantTable(args.tenant_fd), args.tenant_slot)
        # Before any thread exists: they all inherit it.
        tenant.set_cpu_priority()
    try:
        if args.probe and not cfg.root_dir and cfg.full_sandbox():
            cfg.root_dir = sandbox_root_dir()       # by hand, as a server would give it
        mode = enter(cfg)
    except (SandboxError, OSError) as exc:
        log.error("cannot enter the sandbox: %s", exc)
        return 2
    if args.probe:
        print(json.dumps(dict(probe(args.probe_path), mode=mode)), flush=True)
        return 0
    if mode == "full" or args.kernel_cache:
        # The server's kernel cache, shared by its executors; a sandboxed executor sees
        # none of the host's (and no home directory to find one in).
        os.environ["POCL_CACHE_DIR"] = args.kernel_cache or "/tmp/pocl-cache"
    from ._backends import make_backend

    options = json.loads(args.backend_options)
    if args.kernel_cache and args.backend == "opencl":
        # Include directories at paths that outlive this executor: the cache's keys.
        options["include_root"] = os.path.join(args.kernel_cache, "includes")
    backend = make_backend(args.backend, options)
    lost = {int(o) for o in args.lost_owners.split(",") if o}
    if lost and hasattr(backend, "lost_owners"):
        backend.lost_owners.update(lost)
    if hasattr(backend, "prepare"):
        backend.prepare()
    log.info("serving (sandbox: %s, uid %d, backend %s%s)", mode, os.getuid(), args.backend,
             f", contexts of guest processes {sorted(lost)} lost" if lost else "")
    executor = Executor(backend, socket.socket(fileno=args.control),
                        socket.socket(fileno=args.events), args.doorbell,
                        StatusPage(args.status), tenant, args.vm_name)
    executor.run()
    if tenant is not None:
        tenant.tick(False, 0, 0)    # the session's objects are gone with it
    if hasattr(backend, "summary"):
        backend.summary()           # the session's figures (device memory), in its log
    logging.shutdown()
    os._exit(0)             # never join threads a kernel may hold, nor run atexit hooks


if __name__ == "__main__":
    sys.exit(main())
