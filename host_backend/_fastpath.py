"""The fast path: the common case of an info query, decoded, run and encoded by one
function specialised for that query, instead of the general interpreter.

Info queries are the calls a guest forwards most often (an event's status while it
waits, a context's reference count, a kernel's work-group sizes), and each one the
interpreter runs walks every argument kind, builds per-call state and closures, and
consults every hook.  Here each query's shape comes from the spec once
(``InfoQuery.for_function``): where its handles, scalars and output buffer sit in the
payload, which C function it calls, which of its params some hook or filter
answers.  A call then costs one ``struct`` unpack, a table lookup per handle, the C
call and one ``struct`` pack.

The fast path answers only what it answers exactly as the interpreter would:
anything else (a payload not of the plain fixed shape, an id not found, a NULL
object, a param a filter, hook or id translation answers, a value that does not
fit its C type, a metered or partitioned session's hooked query) makes it return
None, and the interpreter runs the call from the start.  So errors, and every rare
case, keep their single implementation; ``tests/test_fast_path.py`` compares the
two paths' replies.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from protocols import opencl_api as api
from protocols.opencl_api import NULL_LEN

from ._args import MAX_OUT_BUFFER, CallError
from ._cl import ffi, lib
from ._handles import HOST_ID_BASE
from ._handles import key as handle_key
from ._watch import CL_EVENT_COMMAND_EXECUTION_STATUS

_I64 = struct.Struct("<q")
#: An encoded reply of CL_SUCCESS and nothing else.
SUCCESS_REPLY = _I64.pack(0)
_EMPTY_BLOB = bytes(8)
_SIZE_T_P = ffi.typeof("size_t *")
_CHARS = ffi.typeof("char[]")
_OWNER_KEY_SHIFT = 64
#: Queries a manager's scheduler or a compute partition answers in part itself
#: (``_tenancy``): with either in force they take the interpreter's path.
METERED_HOOKED = frozenset({"clGetCommandQueueInfo", "clGetEventProfilingInfo"})
PARTITION_HOOKED = frozenset({"clGetDeviceInfo"})


def _fixed_kinds(fn: api.Function) -> bool:
    return all(isinstance(a.kind, (api.Handle, api.Scalar, api.OutBuffer, api.OutScalar))
               for a in fn.args)


class InfoQuery:
    """One query's fast path: ``query(payload, owner)`` is the encoded reply, or None
    for the interpreter to run the call."""

    __slots__ = ("_cfunc", "_cfunc_name", "_excluded", "_filled_on", "_handles", "_hooked", "_layout",
                 "_out_at", "_param_at", "_scalars", "_size_at", "_size_ret_at", "fn",
                 "metered_hook", "partition_hook")

    def __init__(self, fn: api.Function, excluded: frozenset[int], hooked: frozenset[int]):
        self.fn = fn
        self._layout = struct.Struct(f"<{len(fn.args)}Q")
        self._cfunc_name = fn.name
        self._cfunc: Any = None         # bound at the first call (the library loads late)
        handles, scalars = [], []
        out: api.OutBuffer | None = None
        for i, arg in enumerate(fn.args):
            kind = arg.kind
            if isinstance(kind, api.Handle):
                handles.append((i, kind.obj))
            elif isinstance(kind, api.Scalar):
                width, signed = api.SCALAR_TYPES[kind.ctype]
                # Signed scalars take the interpreter's path when negative (its rule
                # for sign-extended values); the fast path passes values that fit as is.
                scalars.append((i, (1 << (width * 8 - (1 if signed else 0))) - 1))
            elif isinstance(kind, api.OutBuffer):
                out = kind
                self._out_at = i
            else:
                self._size_ret_at = i
        assert out is not None and out.param is not None
        names = [a.name for a in fn.args]
        self._param_at = names.index(out.param)
        self._size_at = names.index(out.size)
        self._handles = tuple(handles)
        self._scalars = tuple(scalars)
        self._filled_on = out.filled_on
        # Params whose answer is not the implementation's bytes as they are.
        self._excluded = (excluded | out.hidden_params | frozenset(out.handle_params)
                          | frozenset(out.property_params))
        #: Params a hook of the backend's answers only in some sessions: those ask
        #: ``backend.hook_idle(fn, param)`` first.
        self._hooked = hooked
        self.metered_hook = fn.name in METERED_HOOKED
        self.partition_hook = fn.name in PARTITION_HOOKED

    @staticmethod
    def plain(fn: api.Function) -> bool:
        """Whether ``fn`` is a plain info query: handles (of objects that never leave
        the device: no memory objects), scalars, one byte buffer and its size."""
        if not _fixed_kinds(fn) or fn.creates or fn.retains or fn.releases:
            return False
        outs = [a.kind for a in fn.args if isinstance(a.kind, api.OutBuffer)]
        size_rets = [a for a in fn.args if isinstance(a.kind, api.OutScalar)]
        if len(outs) != 1 or len(size_rets) != 1 or outs[0].elem != 1 or outs[0].param is None:
            return False
        if any(isinstance(a.kind, api.Handle) and a.kind.obj == "cl_mem" for a in fn.args):
            return False        # memory objects may wait in the host store (_residency)
        return not any(isinstance(a.kind, api.MemFlags) for a in fn.args)

    @classmethod
    def for_function(cls, fn: api.Function, excluded: frozenset[int],
                     hooked: frozenset[int] = frozenset()) -> InfoQuery | None:
        """The fast path of ``fn``, or None when it is not a plain info query."""
        return cls(fn, excluded, hooked) if cls.plain(fn) else None

    def __call__(self, backend: Any, payload: bytes, owner: int) -> bytes | None:
        if len(payload) != self._layout.size:
            return None
        words = list(self._layout.unpack(payload))
        param = words[self._param_at]
        if param in self._excluded or (param in self._hooked and not backend.hook_idle(self.fn, param)):
            return None
        for at, limit in self._scalars:
            if words[at] > limit:
                return None
        entries = backend.handles._entries
        owner_key = ((owner & 0xFFFFFFFF) + 1) << _OWNER_KEY_SHIFT
        for at, obj_type in self._handles:
            handle = words[at]
            if handle == 0:
                return None
            ptr = _owned(entries.get(handle if handle >= HOST_ID_BASE else owner_key | handle),
                         obj_type, owner)
            if ptr is None:
                return None
            words[at] = ptr
        cap = words[self._out_at]
        flag = words[self._size_ret_at]
        if flag != 1 and flag != NULL_LEN:
            return None
        alloc = 0
        if cap != NULL_LEN:
            if cap != words[self._size_at]:
                return None
            alloc = words[self._size_at] = min(cap, MAX_OUT_BUFFER)
        # The output cells: a pool's, zeroed as new ones would be (a short answer's
        # padding must not carry an older one's bytes); a long answer's own.
        scratch = _SCRATCH.pop() if _SCRATCH else _Scratch()
        size_ret = scratch.size_ret
        size_ret[0] = 0
        if cap == NULL_LEN:
            out = ffi.NULL
        elif alloc <= _SCRATCH_BYTES:
            out = scratch.out
            ffi.memmove(out, _ZEROS, alloc)
        else:
            out = ffi.new(_CHARS, alloc)
        words[self._out_at] = out
        words[self._size_ret_at] = size_ret
        try:
            cfunc = self._cfunc
            if cfunc is None:
                cfunc = self._cfunc = getattr(lib(), self._cfunc_name)
            status = int(cfunc(*words))
            returned = int(size_ret[0])
            if out == ffi.NULL:
                reply = _I64.pack(status)
            elif status in self._filled_on:
                written = min(alloc, returned)
                if written < alloc <= 16:
                    written = alloc         # as the interpreter (see _post_out_buffer)
                reply = b"".join((_I64.pack(status), written.to_bytes(8, "little"),
                                  ffi.unpack(out, written), bytes(-written % 8)))
            else:
                reply = _I64.pack(status) + _EMPTY_BLOB
        finally:
            _SCRATCH.append(scratch)
        if flag == 1:
            return reply + returned.to_bytes(8, "little")
        return reply


class _Scratch:
    """An info query's output cells, reused (two ``ffi.new`` a query cost more than the
    C call itself): a pool entry is taken by one call at a time (``list.pop`` and
    ``append`` are atomic), so calls on several threads each have their own."""

    __slots__ = ("out", "size_ret")

    def __init__(self) -> None:
        self.out = ffi.new(_CHARS, _SCRATCH_BYTES)
        self.size_ret = ffi.new(_SIZE_T_P)


#: Answers up to this size use a pooled cell (``_Scratch``); longer ones a new one.
_SCRATCH_BYTES = 256
_ZEROS = bytes(_SCRATCH_BYTES)
_SCRATCH: list[_Scratch] = []


_KERNEL_ARG_HEAD = struct.Struct("<4Q")        # kernel, arg_index, arg_size, tag
_U64 = struct.Struct("<Q")
_CL_MEM_P = ffi.typeof("cl_mem *")
_POINTER_SIZE = ffi.sizeof("void *")
_UINT_MAX = 0xFFFFFFFF
_SIZES = ffi.typeof("size_t[]")
_EVENTS = ffi.typeof("cl_event[]")
_EVENT_P = ffi.typeof("cl_event *")


class KernelArgCall:
    """``clSetKernelArg``'s fast path: bytes, and a memory object on the device, set
    on a kernel of the caller's.  Programs set every argument before every launch, and
    the guest posts each one (it checked the status itself), so the host's cost per
    argument is what a launch's arguments cost.

    As the interpreter does: the kernel-argument guard (``_kernel_args``) refuses
    bytes where the kernel expects an object; the memory object is held on the device
    for the call (``DeviceMemory``: it is not evicted meanwhile); the device memory
    learns which object the argument names once the call succeeded.  Anything else
    (local memory, a sampler, an object waiting in the host store, an id not found,
    what the guard refuses, a payload not of the plain shape) is the interpreter's."""

    metered_hook = False
    partition_hook = False

    def __init__(self, fn: api.Function):
        assert [type(a.kind) for a in fn.args] == [api.Handle, api.Scalar, api.KernelArg]
        self.fn = fn

    def __call__(self, backend: Any, payload: bytes, owner: int) -> bytes | None:
        n = len(payload)
        if n < 40:
            return None
        kernel_raw, index, size, tag = _KERNEL_ARG_HEAD.unpack_from(payload)
        if index > _UINT_MAX or kernel_raw == 0:
            return None
        kernel_key = kernel_raw if kernel_raw >= HOST_ID_BASE else (
            ((owner & 0xFFFFFFFF) + 1) << _OWNER_KEY_SHIFT | kernel_raw)
        mem_key = None
        if tag == api.KARG_BYTES:
            if _U64.unpack_from(payload, 32)[0] != size or n != 40 + (size + 7) // 8 * 8:
                return None
            data = payload[40:40 + size]
        elif tag == api.KARG_MEM and n == 40:
            raw = _U64.unpack_from(payload, 32)[0]
            if raw == 0:
                return None
            mem_key = raw if raw >= HOST_ID_BASE else (
                ((owner & 0xFFFFFFFF) + 1) << _OWNER_KEY_SHIFT | raw)
        else:
            return None
        entries = backend.handles._entries
        memory = backend.memory
        held = None
        with backend._lock:
            kernel = _owned(entries.get(kernel_key), "cl_kernel", owner)
            if kernel is None:
                return None
            if mem_key is None:
                if size == _POINTER_SIZE and backend.kernel_args.check(
                        kernel, kernel_key, index, "bytes", data):
                    return None
                value = ffi.from_buffer(data)
            else:
                ptr = _owned(entries.get(mem_key), "cl_mem", owner)
                if ptr is None:
                    return None
                mem = memory.mems.get(mem_key)
                if mem is not None:
                    if not (mem.resident and mem.root.resident):
                        return None
                    held = mem.root
                    held.in_call += 1
                    ptr = mem.ptr
                if backend.kernel_args.check(kernel, kernel_key, index, "memory", None):
                    if held is not None:
                        held.in_call -= 1
                    return None
                value = ffi.new(_CL_MEM_P, ptr)
        status = -1
        try:
            status = int(lib().clSetKernelArg(kernel, index, size, value))
        finally:
            # Recorded before the hold ends, as the interpreter does: an eviction in
            # between would move the object while its new argument is not yet known.
            with backend._lock:
                if status == 0:
                    memory.kernel_arg(kernel_key, index, mem_key)
                if held is not None:
                    held.in_call -= 1
        return _I64.pack(status)


_NULL_MARKER = struct.Struct("<4Q")     # queue, no wait list (0, NULL_LEN), no event (0)


class NullMarkerCall:
    """``clEnqueueMarkerWithWaitList`` with no wait list and no event, on a queue of the
    caller's: answered CL_SUCCESS, and nothing is enqueued.  Such a marker can be seen
    by nothing: no event reports it, and a later finish, wait or marker waits for the
    same commands with it or without it (it holds no command back, even on an
    out-of-order queue, as a barrier would).  The guest sends one to unmap a mapping
    made for reading; enqueued, it cost an interpreter's call, and it hid the queue's
    last transfer from the finish that follows (``QueueTails``), which then waited for
    a marker of its own (25 us on PoCL).  A queue id not found is the interpreter's
    (CL_INVALID_COMMAND_QUEUE); so is every other shape, and a metered session, whose
    scheduler admits each command."""

    metered_hook = True
    partition_hook = False

    def __init__(self, fn: api.Function):
        assert [a.name for a in fn.args] == [
            "command_queue", "num_events_in_wait_list", "event_wait_list", "event"]
        self.fn = fn

    def __call__(self, backend: Any, payload: bytes, owner: int) -> bytes | None:
        if len(payload) != 32:
            return None
        queue_raw, num_events, listed, event_raw = _NULL_MARKER.unpack(payload)
        if num_events or listed != NULL_LEN or event_raw or queue_raw == 0:
            return None
        if _owned(backend.handles._entries.get(handle_key(queue_raw, owner)),
                  "cl_command_queue", owner) is None:
            return None
        return SUCCESS_REPLY


_WORDS: dict[int, struct.Struct] = {}


def _words(nbytes: int) -> struct.Struct:
    """The little-endian u64s of a payload of ``nbytes`` (the wire's byte order)."""
    layout = _WORDS.get(nbytes)
    if layout is None:
        layout = _WORDS[nbytes] = struct.Struct(f"<{nbytes // 8}Q")
    return layout


class _Held:
    """What ``DeviceMemory.use`` records of a call: the memory objects held for it (the
    interpreter's ``Call`` has twenty fields and six containers, made for every call)."""

    __slots__ = ("mems", "skip_real")

    def __init__(self) -> None:
        self.mems: list[Any] = []
        self.skip_real = False


_LAUNCH_MAX_WAITS = 16
#: The longest payload of the shape the fast path takes: queue, kernel, work_dim,
#: three arrays of up to 3 sizes with their counts, the event count and list, the event.
_LAUNCH_MAX_BYTES = 8 * (3 + 3 * (1 + 3) + 2 + _LAUNCH_MAX_WAITS + 1)
#: Launch shapes kept (``LaunchCall._shapes``); past it the table starts again.
_LAUNCH_SHAPES = 256


class LaunchCall:
    """``clEnqueueNDRangeKernel``'s fast path: a queue and a kernel of the caller's,
    1 to 3 dimensions, each work-size array absent or of ``work_dim`` entries, a wait
    list of the caller's events (or none), an event the guest names (or none).

    As the interpreter does: pending transfers that ended are dropped first; the
    memory objects the kernel's arguments name are made resident and held for the
    call (``DeviceMemory.launch``); the command gets an event when the guest asked for
    one, when the kernel watch bounds its run time, or when memory objects must stay
    until it ends; the guest's event enters the handle table, the memory objects are
    busy until the event ends, the watch follows the launch.  Anything else (a NULL or
    unknown object, a malformed payload, an event id the table refuses, a metered or
    partitioned session, whose scheduler admits each launch) is the interpreter's."""

    metered_hook = True
    partition_hook = True

    def __init__(self, fn: api.Function):
        assert [a.name for a in fn.args] == [
            "command_queue", "kernel", "work_dim", "global_work_offset", "global_work_size",
            "local_work_size", "num_events_in_wait_list", "event_wait_list", "event"]
        self.fn = fn
        self._shapes: dict[bytes, tuple[int, int, int, tuple[Any, ...], tuple[int, ...]]] = {}

    @staticmethod
    def _decode(payload: bytes) -> tuple[int, int, int, tuple[Any, ...], tuple[int, ...]] | None:
        """(queue id, kernel id, work_dim, the three size arrays as C arrays or NULL, the
        wait list's ids) of a payload of the plain shape; None for anything else."""
        words = _words(len(payload)).unpack(payload)
        queue_raw, kernel_raw, dim = words[0], words[1], words[2]
        if not 1 <= dim <= 3 or queue_raw == 0 or kernel_raw == 0:
            return None
        at, last = 3, len(words) - 1
        sizes: list[Any] = []
        for _ in range(3):
            count = words[at]
            at += 1
            if count == NULL_LEN:
                sizes.append(ffi.NULL)
            elif count == dim and at + count <= last:
                sizes.append(ffi.new(_SIZES, words[at:at + count]))
                at += count
            else:
                return None
        if at + 2 > last:
            return None
        num_events, listed = words[at], words[at + 1]
        at += 2
        if num_events == 0:
            if listed != NULL_LEN:
                return None
            wait_raw: tuple[int, ...] = ()
        elif listed != num_events or num_events > _LAUNCH_MAX_WAITS or at + num_events > last:
            return None
        else:
            wait_raw = words[at:at + num_events]
            at += num_events
        if at != last:
            return None
        return queue_raw, kernel_raw, dim, tuple(sizes), wait_raw

    def __call__(self, backend: Any, payload: bytes, owner: int) -> bytes | None:
        n = len(payload)
        if n % 8 or not 64 <= n <= _LAUNCH_MAX_BYTES:
            return None
        # A program launches the same kernel the same way over and over: the decoded
        # shape is kept by the payload's bytes (the event's id, last, apart).
        shape_bytes = payload[:-8]
        shape = self._shapes.get(shape_bytes)
        if shape is None:
            shape = self._decode(payload)
            if shape is None:
                return None
            if len(self._shapes) >= _LAUNCH_SHAPES:
                self._shapes.clear()
            self._shapes[shape_bytes] = shape
        queue_raw, kernel_raw, dim, sizes, wait_raw = shape
        event_raw = int.from_bytes(payload[-8:], "little")
        handles = backend.handles
        entries = handles._entries
        memory = backend.memory
        held = _Held()
        watch = backend.kernels
        kernel_key = handle_key(kernel_raw, owner)
        with backend._lock:
            queue = _owned(entries.get(handle_key(queue_raw, owner)), "cl_command_queue", owner)
            kernel = _owned(entries.get(kernel_key), "cl_kernel", owner)
            if queue is None or kernel is None:
                return None
            waits = []
            for raw in wait_raw:
                event = _owned(entries.get(handle_key(raw, owner)), "cl_event", owner) \
                    if raw else None
                if event is None:
                    return None
                waits.append(event)
            event_key = 0
            if event_raw:
                event_key = handle_key(event_raw, owner)
                if handles.check_new(event_key):
                    return None
            backend._settle_transfers()
            epoch = backend.tails.epoch
            try:            # (the kernel's key: what its arguments were recorded under)
                memory.launch(kernel_key, kernel, held)
            except CallError as exc:
                memory.end_call(held)
                return _I64.pack(exc.status)
            cell = ffi.new(_EVENT_P) if event_key or watch is not None or held.mems else ffi.NULL
        wait_list = ffi.new(_EVENTS, waits) if waits else ffi.NULL
        status = -1
        event = ffi.NULL
        try:
            status = int(lib().clEnqueueNDRangeKernel(queue, kernel, dim, sizes[0], sizes[1],
                                                      sizes[2], len(waits), wait_list, cell))
            if cell != ffi.NULL:
                event = cell[0]
        finally:
            with backend._lock:
                if status == 0:         # the queue's newest command (a finish asks it)
                    backend.tails.record(queue, event, epoch, bool(memory.in_order(queue)))
                if event_key and event != ffi.NULL:
                    handles.add(event_key, "cl_event", event, owner)
                if held.mems and status == 0:
                    memory.enqueued(held, event, queue)
                memory.end_call(held)
        if event != ffi.NULL:
            if watch is not None and status == 0:
                watch.track(event, owner, self.fn.opcode, retain=bool(event_key))
            elif not event_key:
                lib().clReleaseEvent(event)         # the host's own, to follow the command
        return _I64.pack(status)


def _owned(entry: Any, obj_type: str, owner: int) -> Any:
    """The real object of a table entry the caller may use (None: the interpreter's)."""
    if entry is None or entry.obj_type != obj_type or (
            entry.owner is not None and entry.owner != owner) or entry.ptr == ffi.NULL:
        return None
    return entry.ptr


#: A small blocking transfer's payload (``SmallTransferCall``): queue, buffer,
#: blocking, offset, size, the guest range (mode, address, length), no wait list
#: (0, NULL_LEN), the event id.
SMALL_TRANSFER = struct.Struct("<11Q")
#: How long the poller polls a small transfer's event before a worker waits for it
#: instead: one on an idle queue ends within microseconds (100 us for 1 MiB), unless
#: another thread's command went onto the queue in front of it meanwhile.
SPUN_POLL_S = 2e-3


def ended_within(cl: Any, queue: Any, event: Any, seconds: float) -> bool:
    """Whether ``event``'s command, on ``queue``, ends within ``seconds``, polled
    (``queue`` is flushed first, unless the command already ended).  The ring poller
    asks so where it must not block: the implementation's own blocking call sleeps on a
    condition variable until its scheduler thread wakes it (on PoCL a 4 KiB write took
    55-60 us so, 20-25 us polled)."""
    state = ffi.new("cl_int *")
    deadline = None
    while cl.clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, 4, state,
                            ffi.NULL) == 0 and state[0] > 0:
        if deadline is None:
            cl.clFlush(queue)
            deadline = time.monotonic() + seconds
        elif time.monotonic() > deadline:
            return False
    return True


class SmallTransferCall:
    """A blocking ``clEnqueueReadBuffer`` / ``clEnqueueWriteBuffer`` the ring poller
    runs because its queue is idle (``OpenClBackend.execute_settled``), of the shape
    ``SMALL_TRANSFER`` with no event asked for: a buffer of the caller's, resident,
    and one range of guest memory.  Run as the same transfer without blocking, its
    event polled until it ends (``ended_within``), so the call returns when the
    transfer is over, with its enqueue's status (what the blocking call returns: PoCL's
    finishes the queue after enqueueing).  The ended command is the queue's tail
    (``QueueTails``): the next one on an idle queue needs no marker.

    Another thread's command may go onto the queue between the idle check and the
    enqueue, and wait for a user event that only a later command sets: past
    ``SPUN_POLL_S`` the call returns the rest of the transfer (a function: the wait,
    then the reply) for a worker thread, so the poller goes on to that command.

    As the interpreter does: the buffer is held for the call and its use recorded
    (``DeviceMemory.use``); the guest range is translated for reading (a write) or
    writing (a read), and a bad one is the command's error completion.  The buffer's
    commands need no busy event: this one ended before the call returns.  Anything
    else (an id not found or not the caller's, a buffer in the host store, a guest
    event) is the interpreter's."""

    def __init__(self, fn: api.Function):
        assert fn.name in ("clEnqueueReadBuffer", "clEnqueueWriteBuffer")
        self.fn = fn
        self.into_guest = fn.name == "clEnqueueReadBuffer"

    def __call__(self, backend: Any, payload: bytes, owner: int, dma: Any
                 ) -> bytes | Callable[[], bytes] | None:
        """The reply; or, for a transfer still waiting after ``SPUN_POLL_S``, a function
        that waits for it and returns the reply; or None (the interpreter's)."""
        (queue_raw, mem_raw, _blocking, offset, size, _mode, addr, length, _n, _listed,
         event_raw) = SMALL_TRANSFER.unpack(payload)
        if event_raw or queue_raw == 0 or mem_raw == 0:
            return None
        entries = backend.handles._entries
        memory = backend.memory
        mem_key = handle_key(mem_raw, owner)
        queue = _owned(entries.get(handle_key(queue_raw, owner)), "cl_command_queue", owner)
        entry = entries.get(mem_key)
        if queue is None or _owned(entry, "cl_mem", owner) is None:
            return None
        view = ffi.from_buffer(dma.translate(addr, length, write=self.into_guest))
        held = _Held()
        with backend._lock:
            mem = memory.mems.get(mem_key)
            if mem is not None and not (mem.resident and mem.root.resident):
                return None
            ptr = memory.use(mem_key, entry, held, self.fn)
            backend._settle_transfers()
            backend.tails.forget(queue)
            epoch = backend.tails.epoch
        cl = lib()
        cell = ffi.new(_EVENT_P)
        status = -1
        waits = False
        try:
            status = int(getattr(cl, self.fn.name)(queue, ptr, 0, offset, size, view, 0,
                                                  ffi.NULL, cell))
            waits = status == 0 and not ended_within(cl, queue, cell[0], SPUN_POLL_S)
        finally:
            if not waits:
                self._over(backend, queue, cell, status, epoch, held)
        if not waits:
            return _I64.pack(status)

        def rest(view: Any = view) -> bytes:
            """(``view``: the guest memory the transfer uses stays referenced, and so
            mapped, until it is over.)"""
            try:
                cl.clWaitForEvents(1, ffi.new(_EVENTS, [cell[0]]))
            finally:
                self._over(backend, queue, cell, status, epoch, held)
            return _I64.pack(status)
        return rest

    @staticmethod
    def _over(backend: Any, queue: Any, cell: Any, status: int, epoch: int, held: _Held) -> None:
        """The transfer is over (or never started): the queue's tail, the buffer's hold."""
        with backend._lock:
            if status == 0:
                backend.tails.record(queue, cell[0], epoch, bool(backend.memory.in_order(queue)))
            else:
                backend.tails.forget(queue)
            backend.memory.end_call(held)
        if status == 0:
            lib().clReleaseEvent(cell[0])
