"""The ring engine: polls guest rings, runs commands, writes completions back.

One poller thread per session serves every enabled ring.  It spins briefly
after work, then sleeps with growing back-off, and after ``idle_timeout``
sets IDLE in every ring, re-checks the tails (closing the race with a guest
that published just before), and sleeps until a doorbell.  Commands whose
opcode the backend marks blocking run on a worker thread while their queue is
paused, so other queues keep going.  Everything read from a ring is copied
before it is validated; every guest address goes through the DMA map.
"""

from __future__ import annotations

import errno
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from protocols import device_abi as abi
from protocols.device_abi import CmdFlags, RingStatus
from protocols.tenants import CallClass

from ._backend import Backend, CommandContext, Unfinished
from ._dma import DmaError, DmaMap
from ._windows import WindowedDma, Windows, queue_view

_T = TypeVar("_T")
log = logging.getLogger("vdev.rings")

_CMD = struct.Struct("<HHIQQQII QQQ".replace(" ", ""))
_CQE = struct.Struct("<QiI")
assert _CMD.size == abi.COMMAND_SIZE and _CQE.size == abi.COMPLETION_SIZE
#: Word indices of the header fields (the ring is 64-byte aligned).
_TAIL_W, _HEAD_W = abi.RING_TAIL // 8, abi.RING_HEAD // 8
_CMD_SIZE = abi.COMMAND_SIZE
_STATUS_W, _ARMED_W = abi.RING_STATUS // 4, abi.RING_IRQ_ARMED // 4
assert not (abi.RING_TAIL % 8 or abi.RING_HEAD % 8 or abi.RING_STATUS % 4 or abi.RING_IRQ_ARMED % 4)


class Flight:
    """One owner's commands taken off its rings and not yet over, by the number each
    was taken with (fences: ``RingEngine.fence``).  Only the poller takes commands, so
    only it counts; a command is numbered before it reads its ring's view of memory."""

    __slots__ = ("running", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self.running: set[int] = set()


class Fence:
    """``RingEngine.fence``: the queue, the owner, its commands taken by then, and the
    backend's fence point once those are over (None before)."""

    __slots__ = ("owner", "point", "queue", "taken")

    def __init__(self, queue: int, owner: int, taken: int):
        self.queue = queue
        self.owner = owner
        self.taken = taken
        self.point: int | None = None


class Ring:
    """Host-side state of one enabled queue."""

    __slots__ = (
        "addr",
        "busy",
        "cmd_base",
        "commands",
        "cq_base",
        "ctx",
        "flight",
        "generation",
        "head",
        "lane",
        "lane_dma",
        "lane_generation",
        "lane_view",
        "mask",
        "queue",
        "running",
        "slots",
        "u16",
        "u32",
        "u64",
        "view",
    )

    def __init__(self, queue: int, addr: int, slots: int, view: memoryview,
                 dma: DmaMap | WindowedDma, owner: int = 0):
        self.queue = queue
        self.addr = addr
        self.slots = slots
        self.mask = slots - 1
        self.set_view(view)
        self.head = 0
        self.generation = 0
        self.busy = False
        self.ctx = CommandContext(dma, queue, owner)
        self.flight = Flight()      # the owner's (RingEngine.enable_queue)
        self.running = 0            # the number its command now running was taken with
        self.cmd_base = abi.RING_HEADER_SIZE
        self.cq_base = abi.RING_HEADER_SIZE + slots * abi.COMMAND_SIZE
        self.commands = 0
        #: What the backend's lane reads of this ring (``RingEngine._run_lane``), and
        #: what it was made from: made again when any of them changes.
        self.lane: object = None
        self.lane_dma: object = None
        self.lane_generation = -1
        self.lane_view: memoryview | None = None

    def set_view(self, view: memoryview) -> None:
        """The ring's memory, also as 32- and 64-bit words: header fields are read and
        written with one aligned access each, as the guest's atomics expect
        (``struct.pack_into`` zeroes the bytes first, then writes them one by one)."""
        self.view = view
        self.u16 = view.cast("H")
        self.u32 = view.cast("I")
        self.u64 = view.cast("Q")

    def set_status(self, value: int) -> None:
        self.u32[_STATUS_W] = value


_OTHER = int(CallClass.OTHER)
# Plain ints: an IntFlag operation costs a microsecond on the hot path.
_SG_FLAGS = int(CmdFlags.PAYLOAD_SG | CmdFlags.REPLY_SG)
_PAYLOAD_SG, _REPLY_SG, _IRQ = int(CmdFlags.PAYLOAD_SG), int(CmdFlags.REPLY_SG), int(CmdFlags.IRQ)
#: Scatter lists longer than this are walked on a worker thread, not the poller: a
#: 1M-entry list takes seconds to translate, and the poller serves every queue.
INLINE_SG_ENTRIES = 256


def _long_lists(flags: int, payload_len: int, reply_len: int) -> bool:
    return bool((flags & _PAYLOAD_SG and payload_len > INLINE_SG_ENTRIES)
                or (flags & _REPLY_SG and reply_len > INLINE_SG_ENTRIES))


class DaemonWorkers:
    """Threads for blocking commands, up to ``limit``, started as needed and reused.

    Daemon threads, unlike a ThreadPoolExecutor's: a blocking command may never
    return (a wait on a user event that nobody sets, a kernel that never ends), and
    the interpreter joins an executor's threads at exit, so the server could not
    stop on SIGTERM."""

    def __init__(self, limit: int, name: str):
        self._limit = limit
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0          # threads waiting for a job, not yet promised one
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        with self._lock:
            if self._closed:
                return
            if self._idle:
                self._idle -= 1             # that thread takes this job
            elif self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._run, name=f"{self._name}-{self._threads}",
                                 daemon=True).start()
            # else: every thread is busy; the job waits for the first one free
            self._jobs.put((fn, args))

    def shutdown(self) -> None:
        """Queued jobs are dropped; running ones finish (or not) on their own."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in range(self._threads):
                self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("blocking command failed")
            with self._lock:
                self._idle += 1


class CommandMonitor(Protocol):
    """Told when each command starts and when an inline one ends (the executor's
    status page, which lets the parent bound a command's time)."""

    def started(self, queue: int, opcode: int, inline: bool) -> None: ...

    def finished(self) -> None: ...

    def counted(self, commands: int) -> None:
        """``commands`` more ran outside Python (a backend's lane), which wrote their
        start and end into ``command_cell`` itself."""

    #: Where the current command is recorded (a buffer and the offset in it of its
    #: start time, queue and opcode: u64, u32, u32), for a lane to write.
    @property
    def command_cell(self) -> tuple[Any, int] | None: ...


class Lane(Protocol):
    """A backend's lane: commands it runs outside Python, straight from the ring."""

    def lane_opcodes(self) -> frozenset[int] | None: ...

    def lane_ring(self, queue: int, owner: int, slots: int, view: memoryview,
                  intervals: list[tuple[int, int, Any, int, bool, bool]],
                  status_cell: tuple[Any, int] | None) -> object | None: ...

    def run_lane(self, ring: object, head: int, tail: int) -> tuple[int, bool]: ...


class Admission(Protocol):
    """A tenant's scheduler under a manager (``_tenants.TenantScheduler``): told of
    every command before it runs, so it may slow it (the command rate) or hold a
    device command for the VM's turn, and of its latency after."""

    def admit_call(self) -> None: ...

    def admit_device(self) -> None: ...

    def settle(self) -> None: ...

    def record(self, klass: int, latency_ns: int) -> None: ...


class RingEngine:
    """Serves the rings of one session (implements the QueueTable listener).

    ``raise_irq(queue)`` and ``fail_queue(queue, errno)`` are called from the
    engine's own threads; they must be thread-safe."""

    def __init__(self, dma: DmaMap, backend: Backend, *,
                 raise_irq: Callable[[int], None], fail_queue: Callable[[int, int], None],
                 monitor: CommandMonitor | None = None, admission: Admission | None = None,
                 spin_s: float = 50e-6, idle_timeout: float = 2e-3, max_sleep: float = 200e-6):
        self.dma = dma
        self.backend = backend
        self.spin_s = spin_s
        self.idle_timeout = idle_timeout
        self.max_sleep = max_sleep
        self._raise_irq = raise_irq
        self._fail_queue = fail_queue
        self._monitor = monitor
        self._admission = admission
        #: What the backend says of each opcode: which are device commands (admitted
        #: in turn) and each one's latency class (statistics).
        self._device_opcodes: frozenset[int] = getattr(backend, "device_opcodes", frozenset())
        self._call_classes: dict[int, int] = getattr(backend, "call_classes", {})
        #: The backend's answer to a blocking command that need not wait (see
        #: ``_execute_settled``), if it has one.
        self._settled: Callable[[CommandContext], tuple[int, int] | Unfinished | None] | None = \
            getattr(backend, "execute_settled", None)
        #: The backend's lane, if it has one: commands it runs outside Python, in order,
        #: up to the first it does not take (not under a manager, which admits each).
        self._lane: Lane | None = backend if (
            admission is None and hasattr(backend, "run_lane")) else None  # type: ignore[assignment]
        self._rings: dict[int, Ring] = {}
        #: Each owner's commands taken off its rings and not yet over (fences).
        self._flights: dict[int, Flight] = {}
        #: queue -> its fences not yet settled.
        self._fences: dict[int, list[Fence]] = {}
        self._active: tuple[Ring, ...] = ()
        self._lock = threading.RLock()
        self._fence_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._workers = DaemonWorkers(abi.NUM_QUEUES, "vdev-blocking")
        self._handed_off = 0        # commands on worker threads now
        #: The longest a command published on another ring waits meanwhile.
        self.handoff_nap_s = 50e-6
        self.idle = False
        self.sleeps = 0

    # -- queue listener (trio thread) ---------------------------------------------

    def enable_queue(self, queue: int, ring_addr: int, slots: int, owner: int = 0,
                     windows: Windows | None = None) -> int:
        dma = queue_view(self.dma, queue, windows)
        try:
            view = dma.translate(ring_addr, abi.ring_bytes(slots), write=True)
        except DmaError as exc:
            log.warning("queue %d: ring %#x unusable: %s", queue, ring_addr, exc)
            return exc.errno
        ring = Ring(queue, ring_addr, slots, view, dma, owner)
        ring.u64[_HEAD_W] = 0
        ring.set_status(0)
        with self._lock:
            ring.flight = self._flights.setdefault(owner, Flight())
            self._rings[queue] = ring
            self._active = tuple(self._rings.values())
        self.kick(queue)
        return 0

    def set_windows(self, queue: int, windows: Windows) -> None:
        """New windows for an enabled queue: its next command translates through them.
        A ring that the new windows leave out fails (EFAULT)."""
        with self._lock:
            ring = self._rings.get(queue)
            if ring is None:
                return
            ring.ctx.dma = dma = WindowedDma(self.dma, queue, windows)
            if not dma.allows(ring.addr, abi.ring_bytes(ring.slots)):
                self._fail(ring, errno.EFAULT, "the new DMA windows leave out the ring")

    def fence(self, queue: int, owner: int) -> Fence:
        """Memory that ``owner`` may no longer reach through ``queue`` (new windows, a
        disable, a release) is settled once every command of that owner taken off any
        of its rings by now is over, and every non-blocking transfer of guest memory
        those left running (the backend's ``fence_done``).  Called after the change:
        a command taken later reads the queue's new view of memory."""
        with self._lock:
            flight = self._flights.get(owner)
            taken = flight.taken if flight is not None else 0
            fence = Fence(queue, owner, taken)
            self._fences.setdefault(queue, []).append(fence)
        return fence

    def settling(self, queue: int) -> bool:
        """Whether any fence of ``queue`` is not settled yet (QueueState.SETTLING)."""
        with self._lock:
            fences = list(self._fences.get(queue, ()))
        return not all([self.fence_done(f) for f in fences])    # each looked at: pruned

    def fence_done(self, fence: Fence) -> bool:
        """Whether ``fence`` (what ``fence`` returned) is settled; a settled one is
        forgotten."""
        if self._fence_pending(fence):
            return False
        with self._lock:
            mine = self._fences.get(fence.queue)
            if mine is not None and fence in mine:
                mine.remove(fence)
                if not mine:
                    del self._fences[fence.queue]
        return True

    def _fence_pending(self, fence: Fence) -> bool:
        flight = self._flights.get(fence.owner)
        if flight is not None and any(seq <= fence.taken for seq in list(flight.running)):
            return True
        fence_point = getattr(self.backend, "fence_point", None)
        if fence_point is None:
            return False            # a backend whose commands keep no memory once over
        if fence.point is None:
            # Every command taken before the fence is over: whatever they left running
            # was issued by now.
            fence.point = fence_point(fence.owner)
        return not self.backend.fence_done(fence.owner, fence.point)  # type: ignore[attr-defined]

    def disable_queue(self, queue: int) -> None:
        """The ring is no longer served (a command of it still running goes on: the
        queue table's fence waits for it)."""
        with self._lock:
            ring = self._rings.pop(queue, None)
            if ring is not None:
                ring.generation += 1
                stop = getattr(ring.lane, "stop", None)
                if stop is not None:
                    stop()          # a lane run on it returns
            self._active = tuple(self._rings.values())

    def release_queue(self, queue: int, owner: int = 0, last: bool = True) -> None:
        self.disable_queue(queue)
        try:
            self.backend.release_queue(queue, owner, last)
        except Exception:
            log.exception("backend failed to release queue %d", queue)

    def kick(self, queue: int = 0) -> None:
        """A doorbell (or anything that may have made work appear)."""
        self._wake.set()

    def dma_changed(self) -> None:
        """Re-check every ring against the DMA map; fail the ones whose memory left."""
        with self._lock:
            for ring in list(self._rings.values()):
                try:
                    ring.set_view(self.dma.translate(ring.addr, abi.ring_bytes(ring.slots),
                                                     write=True))
                except DmaError as exc:
                    self._fail(ring, errno.EFAULT, f"ring memory unmapped ({exc})", write_status=False)

    # -- the poller thread ------------------------------------------------------------

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def run(self) -> None:
        """Thread body: poll until ``stop``."""
        try:
            last_work = time.monotonic()
            backoff = 0.0
            while not self._stop:
                if self.poll_once():
                    last_work = time.monotonic()
                    backoff = 0.0
                    continue
                idle_for = time.monotonic() - last_work
                if self._handed_off:
                    # A worker runs a blocking command (a finish, a wait): spinning
                    # would take a core from the device work it waits for.  Its end
                    # (or a doorbell) wakes this nap.  Past ``idle_timeout`` (a long
                    # kernel) the naps end too: even 50 us naps took 15 % of a core
                    # from the kernel's threads (8-10 % longer kernels on 2 cores).
                    if idle_for >= self.idle_timeout:
                        self._sleep_until_doorbell()
                        last_work = time.monotonic()
                    elif self._wake.wait(self.handoff_nap_s):
                        self._wake.clear()
                        last_work = time.monotonic()
                elif idle_for < self.spin_s:
                    # Spin.  Nothing here gives up the core or the GIL: a sleep,
                    # even of zero, is a timer in the kernel (20-80 us on a virtual
                    # machine's timers), longer than the call it waits for, and
                    # sched_yield hands the core to any runnable thread, a batch VM's
                    # low-priority kernel included, until the next tick.  A thread
                    # of ours that wants the GIL meanwhile gets it within the
                    # interpreter's switch interval (5 ms; a shorter one made kernel
                    # launches slower); a blocking command's worker needs none of
                    # this: while one runs, the poller naps above instead.
                    pass
                elif idle_for < self.idle_timeout:
                    backoff = min(max(backoff * 2, 10e-6), self.max_sleep)
                    # A finished blocking command or a doorbell ends the nap early: the
                    # guest that waited on it is about to publish its next command.
                    if self._wake.wait(backoff):
                        self._wake.clear()
                        last_work = time.monotonic()
                        backoff = 0.0
                else:
                    self._sleep_until_doorbell()
                    last_work = time.monotonic()
                    backoff = 0.0
        finally:
            # A blocking command still running (its guest may be gone) finishes on its
            # own; its completion is discarded (the queue's generation moved on).
            self._workers.shutdown()

    def _fence(self) -> None:
        # A locked RMW orders our stores before the loads that follow (x86 TSO
        # otherwise lets a load pass an earlier store).
        self._fence_lock.acquire()
        self._fence_lock.release()

    def _sleep_until_doorbell(self) -> None:
        self._wake.clear()
        rings = self._active
        for ring in rings:
            ring.set_status(RingStatus.IDLE)
        self._fence()
        if not self._has_work(rings):
            self.idle = True
            self.sleeps += 1
            self._wake.wait()
            self.idle = False
        for ring in self._active:
            ring.set_status(0)

    def _has_work(self, rings: Iterable[Ring]) -> bool:
        for ring in rings:
            if not ring.busy and ring.u64[_TAIL_W] != ring.head:
                return True
        return False

    def poll_once(self) -> int:
        """Run every command published on every ring; returns how many."""
        done = 0
        lane = self._lane
        opcodes = lane.lane_opcodes() if lane is not None else None
        for ring in self._active:
            if ring.busy:
                continue
            tail = ring.u64[_TAIL_W]
            head = ring.head
            if tail == head:
                continue
            if not 0 < tail - head <= ring.slots:
                self._fail(ring, errno.EINVAL, f"tail {tail} is not within {ring.slots} of head {head}")
                continue
            gen = ring.generation
            while head < tail and ring.generation == gen:
                if opcodes is not None and ring.u16[
                        (ring.cmd_base + (head & ring.mask) * _CMD_SIZE) >> 1] in opcodes:
                    assert lane is not None
                    ran, irq = self._run_lane(lane, ring, head, tail)
                    head += ran
                    done += ran
                    if ran and irq:
                        continue        # it stopped for the interrupt, not the command
                    if head >= tail or ring.generation != gen:
                        break
                if not self._process(ring, head):
                    break       # handed to a worker; the queue waits for it
                head += 1
                done += 1
        return done

    def _run_lane(self, lane: Lane, ring: Ring, head: int, tail: int) -> tuple[int, bool]:
        """The commands from ``head`` that the lane takes (those up to ``tail``, and any
        the guest publishes while it waits), run by it: (how many, whether it stopped
        to raise the queue's interrupt).  It reads the ring and
        the guest memory the queue may reach as described now, counted as one command
        of the ring's owner taken off the ring (fences wait for it)."""
        flight = ring.flight
        flight.taken = ring.running = taken = flight.taken + 1
        flight.running.add(taken)
        try:
            dma = ring.ctx.dma
            if ring.lane_dma is not dma or ring.lane_generation != dma.generation \
                    or ring.lane_view is not ring.view:
                cell = getattr(self._monitor, "command_cell", None)
                ring.lane = lane.lane_ring(ring.queue, ring.ctx.owner, ring.slots, ring.view,
                                           dma.host_intervals(), cell)
                ring.lane_dma, ring.lane_generation, ring.lane_view = dma, dma.generation, ring.view
            state = ring.lane
            if state is None:
                return 0, False
            ran, irq = lane.run_lane(state, head, tail)
        finally:
            flight.running.discard(taken)
        if ran:
            ring.head = head + ran
            ring.commands += ran
            if self._monitor is not None:
                self._monitor.counted(ran)
            if irq:
                self._raise_irq(ring.queue)
        return ran, irq

    def _process(self, ring: Ring, index: int) -> bool:
        """Run command ``index``; False if it went to a worker thread."""
        (opcode, flags, payload_len, seq, payload_addr, reply_addr, reply_len, _,
         arg0, arg1, arg2) = _CMD.unpack_from(ring.view, ring.cmd_base + (index & ring.mask) * 64)
        if seq != index:
            self._complete(ring, index, -errno.EINVAL, 0, flags)
            return True
        flight = ring.flight
        flight.taken = ring.running = taken = flight.taken + 1
        flight.running.add(taken)
        ctx = ring.ctx
        ctx.opcode, ctx.flags = opcode, flags
        ctx.payload_len, ctx.payload_addr = payload_len, payload_addr
        ctx.reply_len, ctx.reply_addr = reply_len, reply_addr
        ctx.arg0, ctx.arg1, ctx.arg2 = arg0, arg1, arg2
        monitor = self._monitor
        admission = self._admission
        if opcode in self.backend.blocking_opcodes or (
                flags & _SG_FLAGS and _long_lists(flags, payload_len, reply_len)):
            settled = None
            if self._settled is not None and admission is None and not flags & _SG_FLAGS:
                if monitor is not None:
                    monitor.started(ring.queue, opcode, True)
                settled = self._execute_settled(ctx)
                if monitor is not None:
                    monitor.finished()
            if settled is None or callable(settled):
                ring.busy = True
                if monitor is not None:
                    monitor.started(ring.queue, opcode, False)
                with self._lock:
                    self._handed_off += 1
                self._workers.submit(self._run_blocking, ring, index, ring.generation, flags,
                                     settled)
                return False        # over (flight.running) when the worker is done
            status, result_len = settled
        elif admission is not None:
            status, result_len = self._admitted(ctx, admission, monitor, ring.queue)
        elif monitor is not None:
            monitor.started(ring.queue, opcode, True)
            status, result_len = self._execute(ctx)
            monitor.finished()
        else:
            status, result_len = self._execute(ctx)
        flight.running.discard(taken)
        self._complete(ring, index, status, result_len, flags)
        return True

    def _admitted(self, ctx: CommandContext, admission: Admission,
                  monitor: CommandMonitor | None, queue: int | None) -> tuple[int, int]:
        """Run a command under a manager: admitted first (a wait for the VM's turn is not
        the command's own time, so the monitor starts after it), its latency recorded.
        ``queue`` None: on a worker thread, which started the monitor itself."""
        started = time.monotonic_ns()
        admission.admit_call()
        device = ctx.opcode in self._device_opcodes
        if device:
            admission.admit_device()
        if monitor is not None and queue is not None:
            monitor.started(queue, ctx.opcode, True)
        try:
            result = self._execute(ctx)
        finally:
            if monitor is not None and queue is not None:
                monitor.finished()
            if device:
                admission.settle()
        admission.record(self._call_classes.get(ctx.opcode, _OTHER), time.monotonic_ns() - started)
        return result

    def _execute(self, ctx: CommandContext) -> tuple[int, int]:
        result = self._guarded(self.backend.execute, ctx)
        assert result is not None           # execute always answers
        return result

    def _execute_settled(self, ctx: CommandContext) -> tuple[int, int] | Unfinished | None:
        """A blocking command whose wait is already over (a finish of an idle queue, a
        wait for events that ended), answered here; None: it goes to a worker; an
        ``Unfinished``: it started here, and a worker waits for its end.  A hand-off
        costs two thread wake-ups, several times the call itself."""
        assert self._settled is not None
        return self._guarded(self._settled, ctx)

    def _guarded(self, run: Callable[[CommandContext], _T],
                 ctx: CommandContext) -> _T | tuple[int, int]:
        """``run(ctx)``, with a bad guest address and a backend's own failure turned
        into the command's error completion (the queue goes on)."""
        try:
            return run(ctx)
        except DmaError as exc:
            log.debug("queue %d opcode %d: %s", ctx.queue, ctx.opcode, exc)
            return -exc.errno, 0
        except Exception:
            log.exception("queue %d: backend %s failed on opcode %d", ctx.queue,
                          self.backend.name, ctx.opcode)
            return -errno.EIO, 0

    def _run_blocking(self, ring: Ring, index: int, generation: int, flags: int,
                      started: Unfinished | None = None) -> None:
        taken = ring.running
        try:
            if started is not None:
                status, result_len = self._guarded(lambda _ctx: started(), ring.ctx)
            elif self._admission is not None:
                status, result_len = self._admitted(ring.ctx, self._admission, None, None)
            else:
                status, result_len = self._execute(ring.ctx)
        finally:
            ring.flight.running.discard(taken)
        with self._lock:
            if ring.generation == generation:
                self._complete(ring, index, status, result_len, flags)
            ring.busy = False
            self._handed_off -= 1
        self._wake.set()

    def _complete(self, ring: Ring, index: int, status: int, result_len: int, flags: int) -> None:
        _CQE.pack_into(ring.view, ring.cq_base + (index & ring.mask) * 16, index, status,
                       result_len)
        ring.head = index + 1
        ring.u64[_HEAD_W] = index + 1
        ring.commands += 1
        self._fence()
        if flags & _IRQ or ring.u32[_ARMED_W]:
            ring.u32[_ARMED_W] = 0
            self._raise_irq(ring.queue)

    def _fail(self, ring: Ring, err: int, why: str, *, write_status: bool = True) -> None:
        log.warning("queue %d failed: %s", ring.queue, why)
        if write_status:
            ring.set_status(RingStatus.FAILED)
        self.disable_queue(ring.queue)
        self._fail_queue(ring.queue, err)
