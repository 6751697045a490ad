"""The OpenCL backend: decodes a call by its spec entry, runs it on the host's
OpenCL through raw entry points, and encodes the outputs.

Nothing here is written per function: the spec (``protocols.opencl_api``)
says what each argument is, and this interpreter treats each kind once.
Guest ids are translated through the session's handle table in both
directions, so no host pointer ever reaches the guest.  A malformed encoding
ends in a transport error (negative errno in the completion); a bad handle
ends in the OpenCL error the implementation gives for an invalid object.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from protocols import opencl_api as api
from protocols import opencl_caps as caps
from protocols.device_abi import CmdFlags

from ._args import (
    CL_INVALID_VALUE,
    CL_OUT_OF_RESOURCES,
    CL_SUCCESS,
    INVALID_HANDLE,
    MAX_OUT_BUFFER,
    ArgDecoder,
    Call,
    CallError,
)
from ._cl import ffi, lib, platforms_and_devices
from ._fastpath import (
    SMALL_TRANSFER,
    SUCCESS_REPLY,
    InfoQuery,
    KernelArgCall,
    LaunchCall,
    NullMarkerCall,
    SmallTransferCall,
    ended_within,
)
from ._handles import HOST_ID_BASE, HandleTable, _address, guest_id
from ._handles import key as handle_key
from ._includes import IncludeStore
from ._kernel_args import (
    CL_KERNEL_ARG_INFO_NOT_AVAILABLE,
    CL_PROGRAM_BUILD_OPTIONS,
    KernelArgGuard,
    strip_added_option,
)
from ._lane import LANE_OFF_ENV, Lane, LaneRing, LaneUnavailable
from ._lane import load as load_lane
from ._queue_tails import QueueTails
from ._residency import DeviceMemory
from ._tenancy import DEVICE_COMMANDS, Tenancy, call_class
from ._watch import KernelWatch
from ._wire import Decoder, Encoder, WireError

log = logging.getLogger("host_backend.opencl")

_POSTED = int(CmdFlags.POSTED)

CL_MEM_SIZE = 0x1102
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_EVENT_COMMAND_TYPE = 0x11D1
CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3
CL_COMMAND_USER = 0x1204
#: The status a dead owner's pending user events are failed with: the commands and
#: waits behind them end (CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) instead of
#: blocking a worker thread for ever.
DEAD_OWNER_EVENT_STATUS = -5        # CL_OUT_OF_RESOURCES
#: How long releasing a dead owner's objects waits for its calls still running.
RELEASE_DEADLINE_S = 10.0
#: How often a teardown looks again at the lane's calls in flight (they do not signal).
LANE_POLL_S = 0.001
CL_MEM_OBJECT_ALLOCATION_FAILURE = -4
CL_INVALID_BUFFER_SIZE = -61
#: How long the ring poller waits for a marker to end before a clFinish goes to a
#: worker thread (see ``execute_settled``): the poller's other queues wait meanwhile,
#: as long as they do for any command (RingEngine.handoff_nap_s).  An idle queue's
#: marker ends in 2-15 us on PoCL; a hand-off costs 20-40 us.
SETTLE_POLL_S = 50e-6
#: The largest blocking buffer transfer run on the ring poller when its queue is idle
#: (``_small_transfer_ready``): a copy of this size takes 40-100 us, less than a
#: worker's hand-off and wake-ups cost it (1 MiB writes 240-250 us handed off, 98 us
#: on the poller; the poller's other queues wait meanwhile, as for any command).
SETTLED_TRANSFER_MAX = 1 << 20
assert all([a.name for a in api.BY_NAME[name].args][:1] == ["command_queue"]
           and [type(a.kind) for a in api.BY_NAME[name].args][1:] == [
               api.Handle, api.Scalar, api.Scalar, api.Scalar, api.HostData, api.Scalar,
               api.Handles, api.EventOut]
           for name in ("clEnqueueReadBuffer", "clEnqueueWriteBuffer"))
#: Non-blocking transfers of guest memory in flight at once; past it they block.
MAX_TRANSFERS = 4096

#: How to drop a reference of each created type, in the order objects are torn down.
RELEASE_ORDER = (("cl_event", "clReleaseEvent"), ("cl_kernel", "clReleaseKernel"),
                 ("cl_program", "clReleaseProgram"), ("cl_mem", "clReleaseMemObject"),
                 ("cl_sampler", "clReleaseSampler"), ("cl_command_queue", "clReleaseCommandQueue"),
                 ("cl_context", "clReleaseContext"), ("cl_device_id", "clReleaseDevice"))


FastCall = InfoQuery | KernelArgCall | LaunchCall | NullMarkerCall


class OpenClBackend:
    name = "opencl"

    def __init__(self, *, max_objects: int = 65536, max_bytes: int = 8 << 30,
                 device_memory: int | None = None, guest_memory: int | None = None,
                 host_store: int = 16 << 30, swap_dir: str | None = None,
                 compute_units: int | None = None, platform: int = 0, device: int = 0,
                 include_root: str | None = None, lane: bool = True):
        self.blocking_opcodes = frozenset(fn.opcode for fn in api.FUNCTIONS if fn.blocking)
        #: Under a manager: the commands admitted in turn, and each call's latency class.
        self.device_opcodes = frozenset(fn.opcode for fn in api.FUNCTIONS
                                        if fn.name in DEVICE_COMMANDS)
        self.call_classes = {fn.opcode: int(call_class(fn)) for fn in api.FUNCTIONS}
        #: The VM's scheduler (a manager's TenantScheduler), set by the executor.
        self.meter = None
        self.tenancy = Tenancy(self, compute_units=compute_units, platform=platform,
                               device=device)
        self._default_limits = (max_objects, max_bytes)
        self.handles = HandleTable(max_objects=max_objects, max_bytes=max_bytes)
        #: Device memory and what does not fit it (see _residency).
        self.memory = DeviceMemory(self, capacity=device_memory, guest_size=guest_memory,
                                   store=host_store, swap_dir=swap_dir)
        self._info_filters = dict(caps.FILTERED)
        self._info_filters["clGetDeviceInfo"] = {**caps.FILTERED["clGetDeviceInfo"],
                                                 **self.memory.info_filters()}
        self._lock = threading.Lock()
        self._calls_done = threading.Condition(self._lock)
        self._running: dict[int, int] = {}      # owner -> calls in progress
        #: Calls started: each non-blocking transfer is tagged with its call's number
        #: (fences).
        self._call_seq = 0
        # Non-blocking transfers in flight: (event, views of guest RAM it may touch,
        # owner, the start number of the call that issued it).
        self._transfers: deque = deque()
        self._reaping = 0                       # reaper jobs waiting for calls to end
        self._reaper = _Reaper()
        self.kernel_args = KernelArgGuard()
        #: Each in-order queue's last command, where the host holds its event (a
        #: launch's): what a finish asks (``_idle``).
        self.tails = QueueTails()
        self._enqueue_opcodes = frozenset(fn.opcode for fn in api.FUNCTIONS
                                          if fn.name.startswith("clEnqueue"))
        #: include_root: where build include directories live, when they should keep
        #: their paths beyond this session (the server's kernel cache).
        self.includes = IncludeStore(include_root)
        self.calls = 0
        #: Calls the guest posted without waiting, and those whose status was not the
        #: CL_SUCCESS the guest answered.
        self.posted = 0
        self.mispredicted = 0
        #: Guest processes whose objects were lost with a previous executor (a device
        #: reset): their stale ids fail with CL_OUT_OF_RESOURCES, as after a GPU reset.
        self.lost_owners: set[int] = set()
        #: Kernel run times (None: not watched; the executor turns it on).
        self.kernels: KernelWatch | None = None
        #: When a dead owner's teardown began (monotonic ns; 0: none running).
        self.teardown_since = 0
        #: Info queries' fast paths by function (see _fastpath); False: the interpreter
        #: runs every call (tests compare the two).
        self.fast_path = True
        self.fast_calls = 0
        #: Blocking calls answered without a worker thread (see ``execute_settled``).
        self.settled_calls = 0
        self.settle_poll_s = SETTLE_POLL_S
        self._fast: dict[int, FastCall] = {}
        for fn in api.FUNCTIONS:
            query = self._fast_path_of(fn)
            if query is not None:
                self._fast[fn.opcode] = query
        #: The blocking calls ``execute_settled`` runs without blocking.
        self._small_transfers = {name: SmallTransferCall(api.BY_NAME[name]) for name in (
            "clEnqueueReadBuffer", "clEnqueueWriteBuffer")}
        #: Plain info queries run from the ring in C (``_lane``); None: off.
        self.lane: Lane | None = None
        self.lane_calls = 0
        #: False: the lane takes nothing (the Python fast path answers; benchmarks
        #: compare the two).
        self.use_lane = True
        if lane:
            self._start_lane()

    def _start_lane(self) -> None:
        if os.environ.get(LANE_OFF_ENV) == "0":
            log.info("the info-query lane is off (%s=0)", LANE_OFF_ENV)
            return
        try:
            self.lane = Lane(load_lane(), [q for q in self._fast.values()
                                           if isinstance(q, InfoQuery)], lib(), ffi)
        except (LaneUnavailable, OSError) as exc:
            log.warning("the info-query lane is off (calls take the Python path): %s", exc)
            return
        self.handles.set_mirror(self.lane)

    # -- the lane (the ring engine asks) ---------------------------------------------

    def lane_opcodes(self) -> frozenset[int] | None:
        """The opcodes the lane may take now (None: none).  It answers what the fast
        path answers, and not in a metered or partitioned session (whose hooks answer
        some queries)."""
        lane = self.lane
        if (lane is None or lane.broken or not self.fast_path or not self.use_lane
                or self.meter is not None or self.tenancy.sub is not None):
            return None
        return lane.opcodes

    def lane_ring(self, queue: int, owner: int, slots: int, view: memoryview,
                  intervals: list, status_cell: tuple | None) -> LaneRing | None:
        """What the lane reads of a ring (None: the ring's commands are Python's)."""
        if not 0 <= owner < 1 << 64:
            return None
        return LaneRing(queue, owner, slots, view, intervals, status_cell)

    def run_lane(self, ring: LaneRing, head: int, tail: int) -> tuple[int, bool]:
        """Run the commands from ``head`` the lane takes (``Lane.run``): (how many,
        whether the guest asked for an interrupt after the last)."""
        assert self.lane is not None
        done, irq = self.lane.run(ring, head, tail, self.memory.adjusts_context_counts)
        if done:
            self.calls += done
            self.fast_calls += done
            self.lane_calls += done
        return done, irq

    def _lane_inflight(self) -> int:
        return self.lane.inflight if self.lane is not None else 0

    def enable_kernel_watch(self) -> KernelWatch:
        self.kernels = KernelWatch()
        return self.kernels

    def prepare(self) -> None:
        """Give the platforms and devices their ids now, in enumeration order, so that
        every executor of a VM hands out the same ids: a guest process that survived a
        device reset can create new contexts with the ids it already has."""
        found = platforms_and_devices()
        if not found:
            log.warning("no OpenCL platform on this host: the guest's programs will find no "
                        "platform (CL_PLATFORM_NOT_FOUND_KHR). Hint: check the host's OpenCL "
                        "with clinfo, and the loader's OCL_ICD_VENDORS (%s)",
                        os.environ.get("OCL_ICD_VENDORS", "not set: /etc/OpenCL/vendors"))
        for platform, devices in found:
            self.handles.id_for_shared("cl_platform_id", platform, _address(platform))
            for device in devices:
                self.handles.id_for_shared("cl_device_id", device, _address(device))
        self.tenancy.prepare()

    def reap_device_commands(self) -> int:
        """Charge the device commands that finished to the VM's scheduler; how many
        are still out."""
        return self.tenancy.completions.reap()

    def set_quotas(self, *, memory: int | None, objects: int | None) -> None:
        """A manager's quotas for this VM (at start, and whenever they change): live
        memory-object bytes, which the device also reports as its memory, and live
        objects.  None: the session's default limit."""
        with self._lock:
            default_objects, default_bytes = self._default_limits
            self.handles.max_objects = objects or default_objects
            self.handles.max_bytes = memory or default_bytes
            self.memory.quota = memory

    # -- Backend protocol --------------------------------------------------------------

    def execute(self, ctx) -> tuple[int, int]:
        fn = api.BY_OPCODE.get(ctx.opcode)
        if fn is None:
            return -errno.ENOSYS, 0
        self.calls += 1
        try:
            reply = self.call(fn, ctx.read_payload(), ctx.owner, ctx.dma)
        except WireError as exc:
            log.warning("queue %d: malformed %s: %s", ctx.queue, fn.name, exc)
            if ctx.flags & _POSTED:
                self._mispredicted(ctx, fn, f"malformed ({exc})")
            return -errno.EINVAL, 0
        if ctx.flags & _POSTED:
            self.posted += 1
            if reply[:8] != SUCCESS_REPLY:
                status = int.from_bytes(reply[:8], "little", signed=True)
                self._mispredicted(ctx, fn, f"status {status}")
        return 0, ctx.write_reply(reply)

    def execute_settled(self, ctx) -> tuple[int, int] | Callable[[], tuple[int, int]] | None:
        """A blocking call answered on the ring poller because it need not wait: a
        ``clFinish`` of a queue whose commands have all ended (a marker enqueued now has
        ended: CL_SUCCESS, as the implementation's own would answer), a
        ``clWaitForEvents`` of events that have all ended (run as it is: it returns at
        once), a small transfer on such a queue (``SmallTransferCall``; or the rest of
        it, for a worker to wait for, in the rare case that another thread's command got
        in front of it meanwhile: see ``vdev._backend.Unfinished``).  None: the call
        goes to a worker thread as any blocking call.  Not under a manager, whose
        scheduler admits each call in turn."""
        fn = api.BY_OPCODE.get(ctx.opcode)
        if fn is None or self.meter is not None or not self.fast_path:
            return None
        settled = self._SETTLED.get(fn.name)
        if settled is None:
            return None
        payload = ctx.read_payload()
        with self._lock:
            seq = self._call_started(ctx.owner)
        try:
            ended = settled(self, payload, ctx.owner)
        finally:
            self._call_ended(ctx.owner, seq)
        if not ended:
            return None
        if fn.name == "clFinish":
            self.calls += 1
            self.settled_calls += 1
            return 0, ctx.write_reply(SUCCESS_REPLY)
        small = self._small_transfers.get(fn.name)
        if small is not None:
            return self._small_transfer(ctx, payload, small)
        self.settled_calls += 1
        return self.execute(ctx)

    def _small_transfer(self, ctx, payload: bytes, small: SmallTransferCall
                        ) -> tuple[int, int] | Callable[[], tuple[int, int]] | None:
        """``execute_settled`` for a small transfer: its reply, the rest of it for a
        worker to wait for, or None (the interpreter's, on a worker)."""
        if ctx.flags & _POSTED:
            return None
        owner = ctx.owner
        with self._lock:
            seq = self._call_started(owner)
        waits = False
        try:
            outcome = small(self, payload, owner, ctx.dma)
            if outcome is None:
                return None
            self.settled_calls += 1
            if not callable(outcome):
                return self._answered(ctx, outcome)
            waits = True
            rest: Callable[[], bytes] = outcome

            def finish() -> tuple[int, int]:
                try:
                    reply = rest()
                finally:
                    self._call_ended(owner, seq)
                return self._answered(ctx, reply)
            return finish
        finally:
            if not waits:
                self._call_ended(owner, seq)

    def _answered(self, ctx, reply: bytes) -> tuple[int, int]:
        """A call the fast path ran, answered."""
        self.calls += 1
        self.fast_calls += 1
        return 0, ctx.write_reply(reply)

    def _queue_idle(self, payload: bytes, owner: int) -> bool:
        if len(payload) != 8:
            return False
        return self._idle(int.from_bytes(payload, "little"), owner)

    def _small_transfer_ready(self, payload: bytes, owner: int) -> bool:
        """A blocking ``clEnqueueReadBuffer`` / ``clEnqueueWriteBuffer`` that will not
        wait: of at most ``SETTLED_TRANSFER_MAX`` bytes of one guest range, no wait
        list, no event asked for, a resident buffer, an idle queue.  A worker's hand-off
        (two thread wake-ups) cost more than the 4 KiB copy itself: 4 KiB transfers ran
        at 0.02-0.04 GB/s, against PoCL's 0.06-0.16 natively."""
        n = len(payload)
        if n != SMALL_TRANSFER.size:       # a range (not a scatter list), no wait list
            return False
        (queue_id, mem_id, blocking, _offset, size, mode, _addr, length, num_events,
         listed, event) = SMALL_TRANSFER.unpack(payload)
        if not blocking or size > SETTLED_TRANSFER_MAX or mode != api.HOSTDATA_RANGE \
                or length != size or num_events != 0 or listed != api.NULL_LEN or mem_id == 0 \
                or event != 0:
            return False
        mem = self.memory.mems.get(handle_key(mem_id, owner))
        if mem is not None and not (mem.resident and mem.root.resident):
            return False                    # brought back from the host store: a worker's
        return self._idle(queue_id, owner)

    def _idle(self, queue_id: int, owner: int) -> bool:
        """Whether ``owner``'s queue has ended every command within ``settle_poll_s``:
        its last command, where the host holds its event (``QueueTails``: a launch, a
        small transfer), else a marker enqueued now."""
        queue = self._owned_object("cl_command_queue", queue_id, owner)
        if queue is None:
            return False
        cl = lib()
        with self._lock:
            tail = self.tails.take(queue)
        if tail is not None:        # the queue's last command is known: no marker
            try:
                return ended_within(cl, queue, tail, self.settle_poll_s)
            finally:
                cl.clReleaseEvent(tail)
        event = ffi.new("cl_event *")
        if cl.clEnqueueMarkerWithWaitList(queue, 0, ffi.NULL, event) != CL_SUCCESS:
            return False
        try:
            return ended_within(cl, queue, event[0], self.settle_poll_s)
        finally:
            cl.clReleaseEvent(event[0])

    def _events_ended(self, payload: bytes, owner: int) -> bool:
        dec = Decoder(payload)
        try:
            count = dec.u64()
            if count == 0 or count > 64 or dec.u64() != count:
                return False
            ids = dec.u64s(count)
            dec.done()
        except WireError:
            return False
        for handle in ids:
            event = self._owned_object("cl_event", handle, owner)
            if event is None or not self._ended(event):
                return False
        return True

    def _owned_object(self, obj_type: str, handle: int, owner: int):
        """The real object behind one of ``owner``'s ids, or None."""
        if handle == 0:
            return None
        ptr = self.handles.lookup(obj_type, handle_key(handle, owner), owner)
        return None if ptr is None or ptr == ffi.NULL else ptr

    @staticmethod
    def _ended(event) -> bool:
        state = ffi.new("cl_int *")
        return lib().clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, 4, state,
                                    ffi.NULL) == CL_SUCCESS and state[0] <= 0

    #: The blocking calls ``execute_settled`` may answer, and how it tells.
    _SETTLED: ClassVar[dict[str, Callable[..., bool]]] = {
        "clFinish": _queue_idle, "clWaitForEvents": _events_ended,
        "clEnqueueReadBuffer": _small_transfer_ready,
        "clEnqueueWriteBuffer": _small_transfer_ready}

    def _mispredicted(self, ctx, fn: api.Function, what: str) -> None:
        """A posted call (the guest answered CL_SUCCESS without waiting) that the host
        did not run as predicted: the guest's rule for posting it is wrong."""
        self.mispredicted += 1
        log.warning("queue %d owner %d: posted %s got %s, but the guest already answered "
                    "CL_SUCCESS (a misprediction, %d so far: please report it with this line)",
                    ctx.queue, ctx.owner, fn.name, what, self.mispredicted)
        if self.meter is not None:
            self.meter.mispredicted()

    def release_queue(self, queue: int, owner: int | None = None, last: bool = True) -> None:
        """A queue went away (its process died, or it was released): when it was the
        owner's last, everything the owner created goes.  Which objects is decided
        now; releasing them may block (a queue waits for its commands), so that runs
        on the reaper thread, never on the caller's (the vfio-user loop)."""
        if last and owner is not None:
            doomed = self._forget_objects(lambda entry: entry.owner == owner)
            if doomed:
                self._reaper.submit(self._release_dead_owners, doomed, {owner})

    def summary(self) -> None:
        """Log the session's device-memory figures (when anything moved)."""
        with self._lock:
            self.memory.summary()
        if self.calls:
            log.info("calls: %d, %d of them by the fast path, %d of those by the C lane",
                     self.calls, self.fast_calls, self.lane_calls)
        if self.posted:
            log.info("posted calls: %d (answered in the guest without waiting), mispredicted: "
                     "%d", self.posted, self.mispredicted)

    def close(self) -> None:
        """The session ended: everything goes, on the reaper thread (a release can
        wait on commands; the caller is the vfio-user loop), which is then stopped."""
        self.summary()
        with self._lock:
            self.tails.close()
        doomed = self._forget_objects(lambda entry: entry.owner is not None)
        self._reaper.submit(self._release_dead_owners, doomed,
                            {e.owner for _, e in doomed if e.owner is not None})
        self._reaper.submit(self.includes.close)
        self._reaper.submit(self.memory.close)
        self._reaper.stop()

    def _release_dead_owners(self, doomed: list, owners: set[int]) -> None:
        """Release a dead owner's objects without ending the process: PoCL aborts when
        an event is released while another thread waits on it.  First its pending user
        events fail (which ends the waits on them), then its calls still running get
        RELEASE_DEADLINE_S to return; past it the objects are left unreleased (logged),
        since releasing them would abort the process that serves every guest."""
        self.teardown_since = time.monotonic_ns()
        try:
            self._release_within_deadline(doomed, owners)
        finally:
            self.teardown_since = 0

    def _release_within_deadline(self, doomed: list, owners: set[int]) -> None:
        self._fail_user_events(doomed)
        deadline = time.monotonic() + RELEASE_DEADLINE_S
        with self._calls_done:
            self._reaping += 1
            try:
                # (A lane call that looked an object up before the teardown took it
                # off the table may still be running: the lane counts them.)
                while any(self._running.get(o) for o in owners) or self._lane_inflight():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.warning("owners %s: %d objects left unreleased: calls still "
                                    "running after %.0f s (a kernel that does not end?)",
                                    sorted(owners), len(doomed), RELEASE_DEADLINE_S)
                        return
                    self._calls_done.wait(min(left, LANE_POLL_S) if self._lane_inflight() else left)
            finally:
                self._reaping -= 1
        self._release(doomed)

    @staticmethod
    def _fail_user_events(doomed: list) -> None:
        cell = ffi.new("cl_int *")
        for _, entry in doomed:
            if entry.obj_type != "cl_event" or entry.ptr == ffi.NULL:
                continue
            get = lib().clGetEventInfo
            if get(entry.ptr, CL_EVENT_COMMAND_TYPE, 4, cell, ffi.NULL) != CL_SUCCESS \
                    or cell[0] != CL_COMMAND_USER:
                continue
            if get(entry.ptr, CL_EVENT_COMMAND_EXECUTION_STATUS, 4, cell, ffi.NULL) \
                    == CL_SUCCESS and cell[0] > 0:
                lib().clSetUserEventStatus(entry.ptr, DEAD_OWNER_EVENT_STATUS)

    def _forget_objects(self, which) -> list:
        with self._lock:
            doomed = [(h, e) for h, e in self.handles._entries.items() if which(e)]
            for h, e in doomed:
                self._object_gone(h, e)
            for h, _ in doomed:
                self.handles.forget(h)
        return doomed

    @staticmethod
    def _release(doomed) -> None:
        for obj_type, release_name in RELEASE_ORDER:
            release = getattr(lib(), release_name)
            for _handle, entry in doomed:
                if entry.obj_type == obj_type and entry.ptr != ffi.NULL:   # NULL: in the host store
                    for _ in range(entry.refs):
                        release(entry.ptr)
        if doomed:
            log.info("released %d objects", len(doomed))

    # -- one call -------------------------------------------------------------------------

    def call(self, fn: api.Function, payload: bytes, owner: int, dma=None) -> bytes:
        """Run ``fn`` with the encoded ``payload``; returns the encoded reply.  ``dma``
        resolves guest addresses (application data passed by reference).  Calls in
        progress are counted per owner: a dead owner's objects are released only once
        none is left (see ``_release_dead_owners``)."""
        fast = self._fast.get(fn.opcode)
        if fast is not None and self.fast_path and not (
                (fast.metered_hook and self.meter is not None)
                or (fast.partition_hook and self.tenancy.sub is not None)):
            lock = self._lock
            lock.acquire()          # (not ``with``: twice the cost, on every call)
            self._call_started(owner)
            lock.release()
            try:
                reply = fast(self, payload, owner)
            finally:
                self._call_ended(owner, 0)
            if reply is not None:
                self.fast_calls += 1
                return reply
        enc = Encoder()
        dec = Decoder(payload)
        call = Call()
        seq = 0
        enqueues_on = None
        try:
            with self._lock:
                seq = self._call_started(owner)
                new_id = self._claim_id(fn, dec, owner)
                cargs, posts = self._decode(fn, dec, owner, call, dma)
                dec.done()
                self._settle_transfers()
                if call.deferred is not None and (not call.events or
                                                  len(self._transfers) >= MAX_TRANSFERS):
                    cargs[call.deferred] = 1      # nothing to follow it by: it blocks
                    call.deferred = None
                self._memory_before(fn, cargs, call)
                if fn.opcode in self._enqueue_opcodes:
                    queue_at = call.index.get("command_queue")
                    enqueues_on = cargs[queue_at] if queue_at is not None else None
                    if enqueues_on is not None:
                        self.tails.forget(enqueues_on)
                if self.meter is not None or self.tenancy.sub is not None:
                    self.tenancy.before(fn, cargs, call, metered=self.meter is not None)
            filters = self._info_filters.get(fn.name)
            info_filter = filters.get(cargs[1]) if filters else None
            if call.skip_real:
                result = CL_SUCCESS
            elif call.replacement is not None:
                result = call.replacement()
            elif call.binary_index is not None:
                result = self._program_binary(cargs, call)
            elif info_filter is not None:
                result = self._filtered_info(fn, cargs, info_filter)
            elif fn.name == "clGetProgramInfo" and cargs[1] == api.CL_PROGRAM_BINARIES:
                result = self._binaries_skipped(cargs)
            elif call.segments is not None:
                result = self._segmented(fn, cargs, call)
            else:
                result = getattr(lib(), fn.name)(*cargs)
            if fn.name in self._AS_NATIVE:
                result = self._AS_NATIVE[fn.name](self, result, cargs, call)
            if self.meter is not None and fn.name == "clGetCommandQueueInfo":
                result = self.tenancy.queue_info(int(result), cargs)
            with self._lock:
                status = self._account(fn, result, cargs, new_id, owner, call)
                if call.mems and status == CL_SUCCESS:
                    at = call.index.get("command_queue")
                    self.memory.enqueued(call, self._command_event(call, cargs),
                                         cargs[at] if at is not None else None)
                enc.set_status(status)
                for post in posts:
                    post(status, enc)
            if self.meter is not None and fn.name in DEVICE_COMMANDS and status == CL_SUCCESS:
                size_at = call.index.get("size")
                self.tenancy.issued(self._command_event(call, cargs), self.meter,
                                    int(cargs[size_at]) if size_at is not None else 0)
            if call.deferred is not None and status == CL_SUCCESS:
                self._hold_transfer(call, owner, seq)
            if call.watch is not None and status == CL_SUCCESS and call.watch[0] != ffi.NULL \
                    and self.kernels is not None:
                # The guest's own event keeps its reference; a private one is the watch's.
                self.kernels.track(call.watch[0], owner, fn.opcode, retain=bool(call.events))
        except CallError as exc:
            log.debug("%s: %s (%d)", fn.name, exc, exc.status)
            enc = Encoder(exc.status)
        finally:
            for cleanup in call.cleanups:
                cleanup()
            if call.own_event is not None and call.own_event[0] != ffi.NULL:
                lib().clReleaseEvent(call.own_event[0])
            if enqueues_on is not None:     # a launch recorded meanwhile is not the newest
                with self._lock:
                    self.tails.forget(enqueues_on)
            if seq:
                self._call_ended(owner, seq, call)
        return enc.bytes()

    def _call_started(self, owner: int) -> int:
        """Count a call of ``owner`` in progress (under the lock); its start number."""
        self._running[owner] = self._running.get(owner, 0) + 1
        self._call_seq += 1
        return self._call_seq

    def _call_ended(self, owner: int, seq: int, call: Call | None = None) -> None:
        lock = self._lock
        lock.acquire()          # (not ``with``: twice the cost, on every call)
        try:
            if call is not None:
                self.memory.end_call(call)
            left = self._running[owner] - 1
            if left:
                self._running[owner] = left
            else:
                del self._running[owner]
                if self._reaping:
                    self._calls_done.notify_all()
        finally:
            lock.release()

    #: Functions whose every answer a hook rewrites: no fast path.
    _NO_FAST_PATH = frozenset({"clGetKernelArgInfo", "clGetProgramInfo"})
    #: Params a hook always answers, and those it answers in some sessions only
    #: (``hook_idle``): the former never take the fast path, the latter ask first.
    _HOOKED_PARAMS: ClassVar[dict[str, frozenset[int]]] = {
        "clGetProgramBuildInfo": frozenset({CL_PROGRAM_BUILD_OPTIONS})}
    _SESSION_HOOKED_PARAMS: ClassVar[dict[str, frozenset[int]]] = {
        "clGetContextInfo": frozenset({CL_CONTEXT_REFERENCE_COUNT})}

    def _fast_path_of(self, fn: api.Function) -> FastCall | None:
        if fn.name == "clSetKernelArg":
            return KernelArgCall(fn)
        if fn.name == "clEnqueueMarkerWithWaitList":
            return NullMarkerCall(fn)
        if fn.name == "clEnqueueNDRangeKernel":
            return LaunchCall(fn)
        hooked = self._HOOKED_PARAMS.get(fn.name, frozenset())
        session_hooked = self._SESSION_HOOKED_PARAMS.get(fn.name, frozenset())
        if fn.name in self._NO_FAST_PATH or not InfoQuery.plain(fn) or (
                fn.name in self._AS_NATIVE and not (hooked or session_hooked)):
            return None
        excluded = frozenset(self._info_filters.get(fn.name, {})) | hooked
        return InfoQuery.for_function(fn, excluded, session_hooked)

    def hook_idle(self, fn: api.Function, param: int) -> bool:
        """Whether the hook of ``fn`` leaves ``param``'s answer as the implementation
        gives it in this session: a context's reference count, while nothing waits
        in the host store (``DeviceMemory.context_info``)."""
        return fn.name == "clGetContextInfo" and not self.memory.adjusts_context_counts

    @staticmethod
    def _segmented(fn: api.Function, cargs, call: Call) -> int:
        """A buffer transfer of guest memory that a scatter list describes, run as one
        command per piece, each after the one before (the guest's wait list goes to
        the first): no bounce buffer, so it need not block.  The last piece's event
        is the guest's.  Bounds are checked first, as the implementation would for
        the whole, so no piece runs for a transfer it would refuse.  Blocking (the
        guest asked so, or there is no event): the call returns when the last piece
        (and so every piece) is over."""
        cl = lib()
        at = call.index
        buffer, offset, size = cargs[at["buffer"]], cargs[at["offset"]], cargs[at["size"]]
        total = ffi.new("size_t *")
        status = cl.clGetMemObjectInfo(buffer, CL_MEM_SIZE, ffi.sizeof("size_t"), total, ffi.NULL)
        if status != CL_SUCCESS:
            return status
        if size == 0 or offset > total[0] or size > total[0] - offset:
            return CL_INVALID_VALUE
        pieces = call.segments or []
        last_cell = cargs[at["event"]]
        flag = at.get("blocking_read", at.get("blocking_write"))
        # Blocking: the last piece blocks (the pieces before it are its wait list, one
        # after another), and the first, when it carries the guest's wait list, so that
        # it reports a failed event there as the whole blocking call would.
        blocks = flag is not None and cargs[flag]
        waits = bool(cargs[at["num_events_in_wait_list"]])
        previous = None
        pos = 0
        for i, piece in enumerate(pieces):
            args = list(cargs)
            n = ffi.sizeof(piece)
            args[at["offset"]], args[at["size"]], args[at["ptr"]] = offset + pos, n, piece
            if flag is not None and blocks and i < len(pieces) - 1 and not (i == 0 and waits):
                args[flag] = 0
            if previous is not None:
                args[at["num_events_in_wait_list"]] = 1
                args[at["event_wait_list"]] = ffi.new("cl_event[1]", [previous])
            last = i == len(pieces) - 1
            args[at["event"]] = last_cell if last and last_cell != ffi.NULL else \
                ffi.new("cl_event *")
            status = getattr(cl, fn.name)(*args)
            if status != CL_SUCCESS and previous is not None:
                # The pieces before run on: the guest memory they touch must outlive
                # them (the caller drops its views when we return).
                cl.clWaitForEvents(1, ffi.new("cl_event[1]", [previous]))
            if previous is not None:
                cl.clReleaseEvent(previous)
                previous = None
            if status != CL_SUCCESS:
                return status
            if not last or last_cell == ffi.NULL:
                previous = args[at["event"]][0]
            pos += n
        if previous is not None:
            cl.clReleaseEvent(previous)
        return CL_SUCCESS

    def _hold_transfer(self, call: Call, owner: int, seq: int) -> None:
        """A non-blocking transfer went to the implementation: its views of guest RAM
        stay referenced (the mapping with them) until its event says it is over."""
        event = call.events[0][1][0]
        lib().clRetainEvent(event)
        with self._lock:
            self._transfers.append((event, call.held, owner, seq))

    # -- fences: when guest memory an owner may no longer reach is no longer touched ----

    def fence_point(self, owner: int) -> int:
        """Where a fence for ``owner`` stands now (the ring engine asks once the owner's
        commands before the fence are over): transfers issued by calls started so far
        are the ones ``fence_done`` waits for."""
        with self._lock:
            return self._call_seq

    def fence_done(self, owner: int, point: int) -> bool:
        """Whether every non-blocking transfer of guest memory that a call of ``owner``
        started by ``point`` left running is over: memory the owner may no longer reach
        (a guest daemon's returned pin) is then untouched for good.  Each of the owner's
        own is asked, so another owner's transfer behind a user event holds up nobody
        else's fence.  False, to be asked again, while the lock is busy (a long call
        holds it; the register read that asks must not wait for it)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._settle_transfers()
            state = ffi.new("cl_int *")
            for event, _, o, seq in self._transfers:
                if o != owner or seq > point:
                    continue
                status = lib().clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, 4,
                                              state, ffi.NULL)
                if status == CL_SUCCESS and state[0] > 0:
                    return False
            return True
        finally:
            self._lock.release()

    def _settle_transfers(self) -> None:
        """Drop the transfers that are over, oldest first (called under the lock)."""
        if not self._transfers:
            return                            # every call comes here: nothing to allocate
        cl = lib()
        state = ffi.new("cl_int *")
        while self._transfers:
            event = self._transfers[0][0]
            status = cl.clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, 4, state,
                                       ffi.NULL)
            if status == CL_SUCCESS and state[0] > 0:
                return
            self._transfers.popleft()
            cl.clReleaseEvent(event)

    def _claim_id(self, fn: api.Function, dec: Decoder, owner: int) -> int | None:
        if not fn.creates:
            return None
        new_id = handle_key(dec.u64(), owner)
        why = self.handles.check_new(new_id)
        if why and "limit" in why:
            self._refused("objects", fn.name)
        if why:
            raise CallError(CL_OUT_OF_RESOURCES if "limit" in why else CL_INVALID_VALUE,
                            f"new {fn.creates}: {why}")
        return new_id

    def _account(self, fn, result, cargs, new_id, owner, call: Call) -> int:
        """The call's status, and the handle table updated to match what it did."""
        for event_id, cell in call.events:
            if cell[0] != ffi.NULL:
                self.handles.add(event_id, "cl_event", cell[0], owner)
        if fn.creates:
            status = call.errcode[0]
            if status == CL_SUCCESS and result != ffi.NULL:
                nbytes = self._buffer_bytes(fn, cargs, call)
                if fn.name in ("clCreateImage", "clCreateImageWithProperties"):
                    nbytes = self._mem_size(result)
                # Checked once the object exists, its own bytes included, under the lock
                # (calls on other queues create objects too): the implementation's own
                # answers (a size over CL_DEVICE_MAX_MEM_ALLOC_SIZE, a bad flag) come
                # first, as natively, and an image's size is known only now.
                if fn.creates == "cl_mem" and self.memory.over_max_alloc(fn.name, nbytes):
                    lib().clReleaseMemObject(result)
                    self._refused("memory", fn.name, nbytes)
                    return CL_INVALID_BUFFER_SIZE
                if self.handles.over_cap(nbytes):
                    lib().clReleaseMemObject(result)
                    self._refused("memory", fn.name, nbytes)
                    return CL_MEM_OBJECT_ALLOCATION_FAILURE
                if fn.creates == "cl_mem" and not self.memory.fits_store(nbytes):
                    lib().clReleaseMemObject(result)
                    self.memory.refuse(fn.name, nbytes)
                    return CL_MEM_OBJECT_ALLOCATION_FAILURE
                self.handles.add(new_id, fn.creates, result, owner, nbytes)
                if fn.creates == "cl_command_queue":
                    self.tenancy.created_queue(result, call)
                if fn.creates == "cl_mem":
                    self.memory.created(fn.name, new_id, result, cargs, call, nbytes)
                elif fn.name == "clCloneKernel" and call.target is not None:
                    self.memory.kernel_cloned(call.target, new_id)
            return status
        status = int(result)
        if status == CL_SUCCESS:
            handle, entry = call.target, call.target_entry
            if handle is None or entry is None:
                pass                # no object argument: nothing to retain or release
            elif fn.retains:
                self.handles.retain(entry)
            elif fn.releases:
                if self.handles.release(handle, entry):
                    self._object_gone(handle, entry)
            elif fn.name == "clSetKernelArg":
                self.memory.kernel_arg(handle, cargs[1], call.kernel_mem)
        return status

    def _object_gone(self, handle: int, entry) -> None:
        """An id died: what the device memory keeps for it goes too."""
        if entry.obj_type == "cl_mem":
            self.memory.gone(handle)
        elif entry.obj_type == "cl_kernel":
            self.memory.kernel_gone(handle)
        elif entry.obj_type == "cl_context":
            self.memory.context_gone(entry.ptr)
        elif entry.obj_type == "cl_command_queue":
            self.tenancy.queue_gone(entry.ptr)
            self.tails.forget(entry.ptr)

    def _refused(self, which: str, fn_name: str, nbytes: int = 0) -> None:
        """A quota said no: the log says which, and by how much."""
        handles = self.handles
        if which == "memory":
            limit = self.memory.quota or handles.max_bytes
            what = "memory quota" if self.memory.quota else "session memory limit"
            if nbytes > self.memory.max_alloc():
                log.warning("%s refused by the %s: %d bytes asked, over the largest "
                            "allocation (%d) by %d bytes", fn_name, what, nbytes,
                            self.memory.max_alloc(), nbytes - self.memory.max_alloc())
            else:
                log.warning("%s refused by the %s: %d bytes asked, %d of %d in use: %d bytes "
                            "over", fn_name, what, nbytes, handles.bytes_used, limit,
                            handles.bytes_used + nbytes - limit)
        else:
            log.warning("%s refused by the object quota: %d live objects of %d", fn_name,
                        handles.created, handles.max_objects)
        if self.meter is not None:
            self.meter.refused(which)

    def _memory_before(self, fn: api.Function, cargs, call: Call) -> None:
        """Under the lock, before the real call: room for a new memory object, the
        memory objects of a kernel launch resident, and an event to follow a command
        that uses memory objects, or whose device time a manager's scheduler charges,
        by (the guest may have asked for none)."""
        if fn.creates == "cl_mem":
            nbytes = self._buffer_bytes(fn, cargs, call)
            if fn.name in ("clCreateImage", "clCreateImageWithProperties"):
                fmt, desc = call.structs.get("image_format"), call.structs.get("image_desc")
                nbytes = api.image_host_size(fmt, desc)[0] if fmt and desc else 0
            self.memory.room_for(nbytes)
            return
        if fn.name in ("clEnqueueNDRangeKernel", "clEnqueueTask"):
            kernel = cargs[call.index["kernel"]]
            kernel_id = self.handles.id_for_existing("cl_kernel", _address(kernel))
            if kernel_id is not None:
                self.memory.launch(kernel_id, kernel, call)
        at = call.index.get("event")
        followed = call.mems or (self.meter is not None and fn.name in DEVICE_COMMANDS)
        if followed and at is not None and cargs[at] == ffi.NULL and fn.name.startswith("clEnqueue"):
            call.own_event = cargs[at] = ffi.new("cl_event *")

    @staticmethod
    def _command_event(call: Call, cargs):
        """The event of the command a call enqueued (NULL if none)."""
        at = call.index.get("event")
        if at is None or cargs[at] == ffi.NULL:
            return ffi.NULL
        return cargs[at][0]

    @staticmethod
    def _buffer_bytes(fn: api.Function, cargs: list[object], call: Call) -> int:
        """The bytes a buffer creation asks for (0 for anything else)."""
        if fn.creates != "cl_mem" or "size" not in call.index:
            return 0
        return int(cargs[call.index["size"]])    # type: ignore[call-overload]

    @staticmethod
    def _mem_size(mem) -> int:
        """An image's bytes, counted against the session's memory limit like a buffer's."""
        cell = ffi.new("size_t *")
        if lib().clGetMemObjectInfo(mem, CL_MEM_SIZE, 8, cell, ffi.NULL) != CL_SUCCESS:
            return 0
        return int(cell[0])

    def _decode(self, fn: api.Function, dec: Decoder, owner: int, call: Call, dma=None):
        return ArgDecoder(self, fn, dec, owner, call, dma).run()

    # -- what the argument-metadata build option must not change --------------------------

    def _kernel_arg_info_as_native(self, status: int, cargs, call: Call) -> int:
        """Kernels of programs the guest built without -cl-kernel-arg-info have none."""
        if status == CL_SUCCESS and cargs[0] != ffi.NULL:
            program = self.handles.id_for_existing("cl_program",
                                                   self.kernel_args.kernel_program(cargs[0]))
            if self.kernel_args.hides_arg_info(program):
                return CL_KERNEL_ARG_INFO_NOT_AVAILABLE
        return status

    def _build_options_as_native(self, status: int, cargs, call: Call) -> int:
        """CL_PROGRAM_BUILD_OPTIONS without the option the host added: sized and
        written from the shorter text (a buffer sized for it is large enough)."""
        program, device, param, size, out = cargs[:5]
        if param != CL_PROGRAM_BUILD_OPTIONS or status not in (CL_SUCCESS, CL_INVALID_VALUE):
            return status
        need = ffi.new("size_t *")
        cl = lib()
        if cl.clGetProgramBuildInfo(program, device, param, 0, ffi.NULL, need) != CL_SUCCESS:
            return status
        real = ffi.new("char[]", max(need[0], 1))
        if cl.clGetProgramBuildInfo(program, device, param, need[0], real, ffi.NULL) != CL_SUCCESS:
            return status
        text = strip_added_option(ffi.string(real)) + b"\0"
        if out != ffi.NULL:
            if size < len(text):
                return CL_INVALID_VALUE
            ffi.memmove(out, text, len(text))
        if call.size_ret is not None:
            call.size_ret[0] = len(text)
        return CL_SUCCESS

    def _mem_info_as_native(self, status: int, cargs, call: Call) -> int:
        """Flags as the guest made the object, also after the host made it again."""
        if status == CL_SUCCESS and call.target is not None:
            with self._lock:
                self.memory.mem_info(call.target, cargs[1], cargs[3])
        return status

    def _context_info_as_native(self, status: int, cargs, call: Call) -> int:
        """A context's reference count, whatever waits in the host store."""
        if status == CL_SUCCESS and cargs[0] != ffi.NULL:
            with self._lock:
                self.memory.context_info(cargs[0], cargs[1], cargs[3])
        return status

    _AS_NATIVE: ClassVar[dict[str, Callable[..., int]]] = {
        "clGetKernelArgInfo": _kernel_arg_info_as_native,
        "clGetProgramBuildInfo": _build_options_as_native,
        "clGetMemObjectInfo": _mem_info_as_native,
        "clGetContextInfo": _context_info_as_native}

    @staticmethod
    def _filtered_info(fn: api.Function, cargs, info_filter) -> int:
        """A device or platform query whose answer the device filters
        (protocols/opencl_caps.py): the implementation's whole value, filtered, then
        handed out under the query's own rules (a short buffer is CL_INVALID_VALUE)."""
        obj, param, size, out, size_ret = cargs
        query = getattr(lib(), fn.name)
        need = ffi.new("size_t *")
        status = query(obj, param, 0, ffi.NULL, need)
        if status != CL_SUCCESS:
            return status
        raw = ffi.new("char[]", max(need[0], 1))
        status = query(obj, param, need[0], raw, ffi.NULL)
        if status != CL_SUCCESS:
            return status
        value = info_filter(bytes(ffi.buffer(raw, need[0])))
        if out != ffi.NULL:
            if size < len(value):
                return CL_INVALID_VALUE
            ffi.memmove(out, value, len(value))
        if size_ret != ffi.NULL:
            size_ret[0] = len(value)
        return CL_SUCCESS

    @staticmethod
    def _binaries_skipped(cargs) -> int:
        """clGetProgramInfo(CL_PROGRAM_BINARIES) as sent on the wire: an array of
        pointers the host cannot write through (the guest's ICD asks for each binary
        with AVA_PROGRAM_BINARY instead).  Every entry reads as NULL, which the spec
        says to skip; the implementation is asked only the size (PoCL writes through
        NULL entries and ends its process)."""
        program, _, size, out, size_ret = cargs
        need = ffi.new("size_t *")
        status = lib().clGetProgramInfo(program, api.CL_PROGRAM_BINARIES, 0, ffi.NULL, need)
        if status == CL_SUCCESS and out != ffi.NULL and size < need[0]:
            status = CL_INVALID_VALUE
        if status == CL_SUCCESS and size_ret != ffi.NULL:
            size_ret[0] = need[0]
        return status

    def _program_binary(self, cargs, call: Call) -> int:
        """clGetProgramInfo(AVA_PROGRAM_BINARY + i): the i-th device's binary."""
        program, size, out, size_ret = cargs[0], cargs[2], cargs[3], cargs[4]
        cl = lib()
        count = ffi.new("size_t *")
        status = cl.clGetProgramInfo(program, api.CL_PROGRAM_BINARY_SIZES, 0, ffi.NULL, count)
        if status != CL_SUCCESS:
            return status
        sizes = ffi.new("size_t[]", max(count[0] // 8, 1))
        status = cl.clGetProgramInfo(program, api.CL_PROGRAM_BINARY_SIZES, count[0], sizes, ffi.NULL)
        if status != CL_SUCCESS:
            return status
        if call.binary_index >= count[0] // 8:
            return CL_INVALID_VALUE
        if sum(sizes[i] for i in range(count[0] // 8)) > MAX_OUT_BUFFER * 4:
            return CL_OUT_OF_RESOURCES
        bufs = [ffi.new("unsigned char[]", max(sizes[i], 1)) for i in range(count[0] // 8)]
        status = cl.clGetProgramInfo(program, api.CL_PROGRAM_BINARIES, count[0],
                                     ffi.new("unsigned char *[]", bufs), ffi.NULL)
        if status != CL_SUCCESS:
            return status
        length = sizes[call.binary_index]
        if size_ret != ffi.NULL:
            size_ret[0] = length
        if out != ffi.NULL:
            if size < length:
                return CL_INVALID_VALUE
            ffi.memmove(out, bufs[call.binary_index or 0], length)
        return CL_SUCCESS

    def _resolve(self, obj_type: str, handle: int, owner: int, fn, arg, call: Call | None = None):
        if handle == 0:
            return ffi.NULL          # the implementation reports NULL itself
        ptr = self.handles.lookup(obj_type, handle, owner)
        if ptr is not None and obj_type == "cl_mem" and call is not None:
            return self.memory.use(handle, self.handles._entries[handle], call, fn)
        if ptr is None:
            if owner in self.lost_owners and handle not in self.handles:
                raise CallError(CL_OUT_OF_RESOURCES,
                                f"{fn.name}.{arg.name}: {handle:#x} was lost in a device reset")
            raise CallError(INVALID_HANDLE[obj_type],
                            f"{fn.name}.{arg.name}: {handle:#x} is not a live {obj_type}")
        return ptr

    # -- outputs -------------------------------------------------------------------------

    def _shared_or_known_id(self, obj_type: str, address: int) -> int:
        if address == 0:
            return 0
        known = self.handles.id_for_existing(obj_type, address)
        if known is not None:
            return guest_id(known)
        if obj_type in ("cl_platform_id", "cl_device_id"):
            return self.handles.id_for_shared(obj_type, ffi.cast(obj_type, address), address)
        return 0     # an object the guest never saw (created internally): opaque NULL

    def _post_out_handles(self, obj_type: str, out, cap: int):
        def post(status: int, enc: Encoder) -> None:
            ids = []
            if status == CL_SUCCESS:
                for i in range(cap):
                    address = int(ffi.cast("uintptr_t", out[i]))
                    if address == 0:
                        break
                    ids.append(self._shared_or_known_id(obj_type, address))
            enc.u64(len(ids))
            enc.u64s(ids)
        return post

    def _post_out_buffer(self, kind: api.OutBuffer, out, alloc: int, scalars: dict, call: Call):
        def post(status: int, enc: Encoder) -> None:
            if status not in kind.filled_on:
                enc.blob(b"")
                return
            if call.size_ret is None:               # an output array (binary_status)
                written = alloc
            else:
                written = min(alloc, int(call.size_ret[0]) * kind.elem)
            if written < alloc <= 16:
                # Some implementations report fewer bytes than they write for scalar
                # queries (PoCL: DEVICE_ENQUEUE_CAPABILITIES); the caller sees what a
                # native call leaves in its buffer.
                written = alloc
            data = bytes(ffi.buffer(out, written))
            if scalars.get(kind.param) in kind.hidden_params:
                data = bytes(len(data))         # a host pointer: the guest answers itself
            param = scalars.get(kind.param, -1)
            obj = kind.handle_params.get(param)
            if obj is not None and written % 8 == 0:
                addrs = struct.unpack(f"<{written // 8}Q", data)
                data = struct.pack(f"<{len(addrs)}Q",
                                   *(self._shared_or_known_id(obj, a) for a in addrs))
            props = kind.property_params.get(param)
            if props is not None and props.handle_keys:
                data = self._property_ids(props, data)
            enc.blob(data)
        return post

    def _property_ids(self, props: api.Properties, data: bytes) -> bytes:
        """A property list read back: the values of its handle keys (a context's
        platform) become ids, the rest stays as the implementation wrote it.  A value
        whose key is cut off by a short buffer is zeroed: never a host pointer."""
        words = list(struct.unpack(f"<{len(data) // 8}Q", data[:len(data) // 8 * 8]))
        i = 0
        while i < len(words) and words[i] != 0:
            obj = props.handle_keys.get(words[i])
            if obj is not None and i + 1 < len(words):
                words[i + 1] = self._shared_or_known_id(obj, words[i + 1])
            i += 2
        return struct.pack(f"<{len(words)}Q", *words) + bytes(len(data) % 8)

    @staticmethod
    def _post_out_scalar(cell, present: bool):
        def post(status: int, enc: Encoder) -> None:
            if present:
                enc.u64(int(cell[0]))
        return post


__all__ = ["HOST_ID_BASE", "OpenClBackend"]


class _Reaper:
    """One daemon thread that releases objects in order.  A daemon: a release may
    wait for ever on a command that never ends, and the interpreter joins the
    threads of a ThreadPoolExecutor at exit, so the server could not stop."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ava-release", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._jobs.put((fn, args))

    def stop(self) -> None:
        """Finish the jobs submitted so far, then end (without waiting here)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("releasing objects failed")
