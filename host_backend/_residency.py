"""Device memory that may be oversubscribed: buffers and images beyond the
device-memory capacity wait in host memory and come back before a command uses them.

The guest keeps its ids.  A memory object the host lets go of is read into the host
store, its real object released; the next call that names it (a kernel argument, a
transfer, a copy, a fill, an info query, a sub-buffer of it) first makes it again,
from the saved bytes, with the flags, properties, format and descriptor it had, and
takes the references the guest holds.  Kernel arguments that named it are set again
before the next launch.  What the guest can read back stays as native: the flags
(the host adds CL_MEM_COPY_HOST_PTR to make an object again, and hides it), the
reference counts of the object and of its context (the context's counts the private
queue that saves contents, and every object it holds: both are accounted for).

A parent buffer and its sub-buffers move as one: the parent is the unit, and its
sub-buffers are made again, in their regions, when it comes back.

What never leaves the device (``Mem.pinned`` says why): images made on a buffer and
that buffer (they share storage), images with host pitches (their layout is the
application's), pipes (no way to read them), objects whose contents the host may
not read (CL_MEM_HOST_NO_ACCESS images).  Objects a command in flight uses stay
until its event ends, and so do those of a call in progress.

The policy (README, "Device memory"): when a creation or a restore needs room, the
objects evicted are those whose next use is predicted furthest ahead.  Each object
keeps its last use and the distance between its last two uses, both on a clock that
counts the bytes of memory objects the guest's calls touch; the next use is the last
plus that distance (Belady's rule on predicted reuse); an overdue one is not
expected back within its age again.  An object not used twice yet is predicted
after every object with a known reuse under a capacity's worth of traffic: while
fresh (used within the last capacity's worth) the newest goes first, as programs
make their objects and then go over them in that order; once stale (used longer
ago than that) the oldest goes first, before any other.  So a sweep larger than
the capacity keeps a fixed part resident instead of missing on every object (LRU's
worst case), a hot set that fits stays, and objects left unused go first.  Objects
just set as kernel arguments go last (their launch follows); among equals the
larger goes first (fewer moves).  Nothing moves speculatively, nor more than the
room asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from protocols import opencl_api as api

from ._args import CallError
from ._cl import address as _addr
from ._cl import ffi, lib, platforms_and_devices

log = logging.getLogger("host_backend.memory")

CL_SUCCESS = 0
CL_INVALID_OPERATION = -59
CL_MEM_OBJECT_ALLOCATION_FAILURE = -4
CL_MEM_COPY_HOST_PTR = 1 << 5
CL_MEM_HOST_NO_ACCESS = 1 << 9
CL_MEM_FLAGS = 0x1101
CL_MEM_REFERENCE_COUNT = 0x1105
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_CONTEXT_DEVICES = 0x1081
CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3
CL_QUEUE_PROPERTIES = 0x1093
CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE = 1 << 0
_PROPS_SIZE = ffi.sizeof("cl_command_queue_properties")
_PROPS_P = ffi.typeof("cl_command_queue_properties *")
_LAUNCH = api.BY_NAME["clEnqueueNDRangeKernel"]
#: Queues whose order ``in_order`` keeps at most; past it it starts again.
_QUEUE_ORDERS = 4096
CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F
CL_DEVICE_MAX_MEM_ALLOC_SIZE = 0x1010
#: How long making room may wait, in all, for commands in flight to end.
WAIT_S = 1.0
CL_EVENT_COMMAND_QUEUE = 0x11D0
#: Host buffers of restored contents kept for the next evictions of their size.
SPARE_BUFFERS = 4
#: Pieces in which contents the host may not read directly are copied out.
COPY_PIECE = 4 << 20

#: Memory-object creations the host can repeat (the others' objects stay resident).
REMADE = frozenset({"clCreateBuffer", "clCreateBufferWithProperties", "clCreateImage",
                    "clCreateImageWithProperties", "clCreateSubBuffer"})
#: The argument of each creation that holds data the host made persistent copies of.
_KEPT_ARGS = ("properties", "image_format", "image_desc", "buffer_create_info")


@dataclass(eq=False)
class Mem:
    """One memory object the guest created, and how to make it again."""

    handle: int
    kind: str                       # "buffer", "image", "sub" or "other"
    ptr: Any                        # the real object (stale while not resident)
    context: Any
    size: int
    create: tuple | None = None     # (function name, arguments kept, index of names)
    parent: Mem | None = None
    children: list[Mem] = field(default_factory=list)
    pinned: str = ""                # why it never leaves the device
    resident: bool = True
    alive: bool = True              # the guest holds it (a parent lives on for its sub-buffers)
    saved: Any = None               # bytearray, or a file in the swap directory
    restored: bool = False          # made again at least once (its flags gained COPY_HOST_PTR)
    in_call: int = 0
    busy: list = field(default_factory=list)        # events of commands in flight that use it
    busy_queue: int = 0             # the in-order queue all of ``busy`` came from (0: mixed)
    last_use: int = 0
    reuse: int = -1                 # bytes of traffic between its last two uses (-1: unknown)
    kernel_args: set = field(default_factory=set)   # (kernel id, index) naming it
    held_back: bool = False         # its commands did not end when waited for
    armed: bool = False             # set as a kernel argument since the last command
    serial: int = 0                 # the order of making
    used: bool = False              # a command used it (since its making)

    @property
    def root(self) -> Mem:
        return self.parent or self

    def family(self) -> list[Mem]:
        return [self, *self.children]


@dataclass
class MemoryStats:
    created: int = 0
    evictions: int = 0
    restores: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    seconds_out: float = 0.0
    seconds_in: float = 0.0
    refused: int = 0
    peak_resident: int = 0
    over_capacity: int = 0          # times room could not be made (all in use)

    def line(self) -> str:
        return (f"created={self.created} evictions={self.evictions} restores={self.restores} "
                f"bytes_out={self.bytes_out} bytes_in={self.bytes_in} "
                f"seconds_out={self.seconds_out:.3f} seconds_in={self.seconds_in:.3f} "
                f"refused={self.refused} over_capacity={self.over_capacity} "
                f"peak_resident={self.peak_resident}")


class DeviceMemory:
    """Residency of one session's memory objects (see the module docstring).  Every
    method runs under the backend's lock."""

    def __init__(self, backend, *, capacity: int | None = None, guest_size: int | None = None,
                 store: int = 16 << 30, swap_dir: str | None = None, spill: int = 1 << 20):
        self.backend = backend
        self.asked_capacity = capacity
        self.capacity = 0                   # set from the devices at first need
        self._configured = False
        self.guest_size = guest_size
        #: A manager's memory quota for the VM (None: none).
        self.quota: int | None = None
        self.reported = 0                   # the device's own global memory size
        self.native_max_alloc = 1 << 62     # and its largest allocation
        self.store_limit = store
        self.swap_dir = swap_dir
        self.spill = spill
        self.mems: dict[int, Mem] = {}
        self.resident_bytes = 0
        self.stored_bytes = 0
        self.clock = 0
        self.stats = MemoryStats()
        self._queues: dict[int, Any] = {}     # context address -> the private queue
        self._counts: dict[str, int] | None = None   # references an object takes (measured)
        self._spare: list[bytearray] = []       # host buffers of contents restored
        #: kernel id -> argument index -> (memory object id, the address it was set to)
        self._kernel_args: dict[int, dict[int, tuple[int, int]]] = {}
        #: queue address -> (its pointer object, ``in_order``'s answer)
        self._queue_order: dict[int, tuple[Any, int]] = {}

    # -- configuration ---------------------------------------------------------------------

    def _configure(self) -> None:
        """The capacity: what the devices report, or less if asked."""
        if self._configured:
            return
        self._configured = True
        reported = 0
        cell = ffi.new("cl_ulong *")
        for device in _all_devices():
            if lib().clGetDeviceInfo(device, CL_DEVICE_GLOBAL_MEM_SIZE, 8, cell,
                                     ffi.NULL) == CL_SUCCESS:
                reported = max(reported, int(cell[0]))
            if lib().clGetDeviceInfo(device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, 8, cell,
                                     ffi.NULL) == CL_SUCCESS:
                self.native_max_alloc = int(cell[0]) if self.native_max_alloc == 1 << 62 \
                    else max(self.native_max_alloc, int(cell[0]))
        self.reported = reported
        self.capacity = min(self.asked_capacity or reported, reported or self.asked_capacity
                            or (1 << 62))
        log.debug("device memory: capacity %d bytes (the device reports %d), host store %d "
                  "bytes%s", self.capacity, reported, self.store_limit,
                  f", large contents in {self.swap_dir}" if self.swap_dir else "")

    def info_filters(self) -> dict[int, Any]:
        """clGetDeviceInfo answers the guest sees differently: the memory size it is
        promised (which may exceed the capacity), cut to a manager's quota (never more
        than the device has), and the largest allocation within it.  Read at each
        query: a quota may change while the session runs."""

        def global_mem(raw: bytes) -> bytes:
            if len(raw) != 8:
                return raw
            return self.promised(int.from_bytes(raw, "little")).to_bytes(8, "little")

        def max_alloc(raw: bytes) -> bytes:
            if len(raw) != 8:
                return raw
            native = int.from_bytes(raw, "little")
            return min(native, self.promised(native)).to_bytes(8, "little")
        return {CL_DEVICE_GLOBAL_MEM_SIZE: global_mem, CL_DEVICE_MAX_MEM_ALLOC_SIZE: max_alloc}

    def promised(self, reported: int) -> int:
        """The memory the guest is told of, for a device that reports ``reported``."""
        size = self.guest_size if self.guest_size is not None else reported
        if self.quota is not None:
            size = min(size, self.quota, reported)
        return size

    def max_alloc(self) -> int:
        """The largest buffer the guest is told it may make (the device's, or less)."""
        self._configure()
        return min(self.native_max_alloc, self.promised(self.reported))

    def over_max_alloc(self, fn_name: str, nbytes: int) -> bool:
        """A buffer the implementation made that a device of the promised size would
        have refused (CL_INVALID_BUFFER_SIZE): past a quota's largest allocation."""
        return (fn_name in ("clCreateBuffer", "clCreateBufferWithProperties")
                and (self.guest_size is not None or self.quota is not None)
                and nbytes > self.max_alloc())

    # -- creation --------------------------------------------------------------------------

    def room_for(self, nbytes: int) -> None:
        """Before a creation of ``nbytes``: make room, unless it would be refused anyway."""
        self._configure()
        if nbytes and self.fits_store(nbytes):
            self._make_room(nbytes)

    def fits_store(self, nbytes: int) -> bool:
        """Whether a new object of ``nbytes`` fits the capacity and the host store."""
        self._configure()
        return self.resident_bytes + self.stored_bytes + nbytes <= self.capacity + self.store_limit

    def refuse(self, fn_name: str, nbytes: int) -> None:
        self.stats.refused += 1
        log.info("%s refused: %d bytes do not fit (device memory %d of %d in use, host store "
                 "%d of %d)", fn_name, nbytes, self.resident_bytes, self.capacity,
                 self.stored_bytes, self.store_limit)

    def created(self, fn_name: str, handle: int, ptr, cargs: list, call, nbytes: int) -> None:
        """A memory object exists: record how to make it again."""
        index, structs = call.index, call.structs
        context = cargs[index["context"]] if "context" in index else ffi.NULL
        kind, parent, pinned = "other", None, ""
        if fn_name == "clCreateSubBuffer":
            parent = self.mems.get(call.target or 0)
            kind = "sub" if parent is not None and parent.kind == "buffer" else "other"
            context = parent.context if parent is not None else context
        elif fn_name in ("clCreateImage", "clCreateImageWithProperties"):
            kind = "image"
            desc = structs.get("image_desc") or {}
            if desc.get("buffer"):
                pinned = "an image made on a buffer shares its storage"
                source = self.mems.get(desc["buffer"])
                if source is not None:
                    source.root.pinned = source.root.pinned or pinned
            elif desc.get("image_row_pitch") or desc.get("image_slice_pitch"):
                pinned = "its host pitches set the layout"
        elif fn_name in ("clCreateBuffer", "clCreateBufferWithProperties"):
            kind = "buffer"
        if kind == "other":
            pinned = pinned or "the host cannot make it again"
        mem = Mem(handle, kind, ptr, context, nbytes, parent=parent if kind == "sub" else None,
                  pinned=pinned)
        if fn_name in REMADE and kind != "other":
            mem.create = (fn_name, _kept(cargs, index), dict(index))
        if mem.parent is not None:
            mem.parent.children.append(mem)
        self.mems[handle] = mem
        self.stats.created += 1
        if mem.parent is None:
            self.resident_bytes += nbytes
            self.stats.peak_resident = max(self.stats.peak_resident, self.resident_bytes)
        # Made now, used by the commands to come: the clock moves with commands only.
        mem.last_use = self.clock
        mem.serial = self.stats.created

    # -- use -------------------------------------------------------------------------------

    def use(self, handle: int, entry, call, fn) -> Any:
        """The real object for a call naming ``handle``: resident, and held for the
        call (released by ``end_call``)."""
        mem = self.mems.get(handle)
        if mem is None:
            return entry.ptr
        root = mem.root
        if not mem.resident and (fn.retains or fn.releases):
            call.skip_real = True           # only the guest's count changes (see restore)
            return entry.ptr
        if not root.resident:
            self._restore(root)
        if not mem.resident:            # (a sub-buffer too: its parent came back without it)
            raise CallError(CL_MEM_OBJECT_ALLOCATION_FAILURE,
                            f"{fn.name}: memory object {handle:#x} could not be made again")
        root.in_call += 1
        call.mems.append(root)
        if fn.name.startswith("clEnqueue"):
            self._touch(root)               # a command: its data is used
        return mem.ptr

    def end_call(self, call) -> None:
        for mem in call.mems:
            mem.in_call -= 1
        call.mems.clear()

    def enqueued(self, call, event, queue=None) -> None:
        """A command that uses ``call.mems`` is in flight until ``event`` ends.

        On an in-order ``queue`` a command ends after every command before it, so an
        object whose commands in flight all came from that queue needs only the
        newest event: launches back to back keep one event per object, not a list
        to poll."""
        if event == ffi.NULL:
            return
        cl = lib()
        in_order = 0
        if queue is not None and queue != ffi.NULL:
            in_order = self.in_order(queue)
        for mem in call.mems:
            cl.clRetainEvent(event)
            if in_order and mem.busy and mem.busy_queue == in_order:
                for older in mem.busy:
                    cl.clReleaseEvent(older)
                mem.busy.clear()
            elif len(mem.busy) >= 8:
                self._settle(mem)
            mem.busy_queue = in_order if not mem.busy or mem.busy_queue == in_order else 0
            mem.busy.append(event)
            mem.held_back = False

    def in_order(self, queue) -> int:
        """The address of ``queue`` if it runs its commands in order, else 0.  A queue's
        properties never change, so each is asked once: the answer is kept with the
        queue's own pointer object (the one its table entry holds), and a queue made
        later at the same address, with another pointer object, is asked again."""
        address = _addr(queue)
        known = self._queue_order.get(address)
        if known is not None and known[0] is queue:
            return known[1]
        props = ffi.new(_PROPS_P)
        in_order = address if lib().clGetCommandQueueInfo(
            queue, CL_QUEUE_PROPERTIES, _PROPS_SIZE, props, ffi.NULL) == CL_SUCCESS \
            and not props[0] & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE else 0
        if len(self._queue_order) >= _QUEUE_ORDERS:
            self._queue_order.clear()         # (queues come and go at new addresses)
        self._queue_order[address] = (queue, in_order)
        return in_order

    def launch(self, kernel_id: int, kernel, call) -> None:
        """Before a kernel launch: the memory objects its arguments name are resident,
        held for the call, and set again where they were made again since."""
        args = self._kernel_args.get(kernel_id)
        if not args:
            return
        entries = self.backend.handles._entries
        for index, (mem_id, _) in list(args.items()):
            mem = self.mems.get(mem_id)
            entry = entries.get(mem_id)
            if mem is None or entry is None:
                continue                        # released by the guest: as natively
            ptr = self.use(mem_id, entry, call, _LAUNCH)
            # The address the kernel holds now, read after ``use``: making this object
            # again may have evicted an argument already seen (its slot then holds
            # NULL), and the allocator may hand a remade object its old address.
            address = args[index][1]
            if _addr(ptr) != address:
                lib().clSetKernelArg(kernel, index, ffi.sizeof("cl_mem"), ffi.new("cl_mem *", ptr))
                args[index] = (mem_id, _addr(ptr))

    def kernel_arg(self, kernel_id: int, index: int, mem_id: int | None) -> None:
        """clSetKernelArg succeeded: remember which memory object the argument names."""
        args = self._kernel_args.setdefault(kernel_id, {})
        old = args.pop(index, None)
        if old is not None and old[0] in self.mems:
            self.mems[old[0]].kernel_args.discard((kernel_id, index))
        mem = self.mems.get(mem_id or 0)
        if mem is not None:
            args[index] = (mem.handle, _addr(mem.ptr))
            mem.kernel_args.add((kernel_id, index))
            mem.root.armed = True           # a launch is coming: it goes last

    def kernel_cloned(self, source: int, clone: int) -> None:
        for index, (mem_id, _) in self._kernel_args.get(source, {}).items():
            self.kernel_arg(clone, index, mem_id)
            # The clone's argument holds the address the source's held.
            self._kernel_args[clone][index] = self._kernel_args[source][index]

    def kernel_gone(self, kernel_id: int) -> None:
        for index, (mem_id, _) in self._kernel_args.pop(kernel_id, {}).items():
            mem = self.mems.get(mem_id)
            if mem is not None:
                mem.kernel_args.discard((kernel_id, index))

    def gone(self, handle: int) -> None:
        """The guest's last reference to a memory object went (the real object went
        with it, or it was not resident)."""
        mem = self.mems.get(handle)
        if mem is None:
            return
        mem.alive = False
        for kernel_id, index in list(mem.kernel_args):
            self._kernel_args.get(kernel_id, {}).pop(index, None)
        mem.kernel_args.clear()
        if mem.parent is not None:
            mem.parent.children.remove(mem)
            del self.mems[handle]
            self._drop_if_done(mem.parent)
        else:
            self._drop_if_done(mem)

    def _drop_if_done(self, root: Mem) -> None:
        if root.alive or root.children:
            return
        self.mems.pop(root.handle, None)
        if root.resident:
            self.resident_bytes -= root.size
        else:
            self._forget_saved(root)
        for event in root.busy:
            lib().clReleaseEvent(event)
        root.busy.clear()

    # -- what the guest reads back -----------------------------------------------------------

    def mem_info(self, handle: int, param: int, out) -> None:
        """clGetMemObjectInfo succeeded: the flags as the guest made the object."""
        mem = self.mems.get(handle)
        if mem is None or param != CL_MEM_FLAGS or out == ffi.NULL or not mem.root.restored:
            return
        create = mem.root.create
        if create is not None and not create[1][create[2]["flags"]] & CL_MEM_COPY_HOST_PTR:
            cell = ffi.cast("cl_mem_flags *", out)
            cell[0] &= ~CL_MEM_COPY_HOST_PTR

    @property
    def adjusts_context_counts(self) -> bool:
        """Whether ``context_info`` may change a context's reference count: only once
        an object has left the device (the counts are measured then)."""
        return self._counts is not None

    def context_info(self, context, param: int, out) -> None:
        """clGetContextInfo succeeded: the reference count as if every object of the
        context were resident and the host had no queue of its own there."""
        if param != CL_CONTEXT_REFERENCE_COUNT or out == ffi.NULL or self._counts is None:
            return
        address = _addr(context)
        away = sum(1 for m in self.mems.values()
                   if not m.root.resident and (m.alive or m.children) and _addr(m.context) == address)
        adjust = away * self._counts["mem"] - (self._counts["queue"] if address in self._queues else 0)
        if adjust:
            cell = ffi.cast("cl_uint *", out)
            cell[0] = max(int(cell[0]) + adjust, 0)

    # -- eviction and restore ------------------------------------------------------------------

    def _touch(self, mem: Mem) -> None:
        mem.armed = False
        if mem.used:
            mem.reuse = self.clock - mem.last_use
        mem.used = True
        self.clock += max(mem.size, 1)
        mem.last_use = self.clock

    def _victim_order(self, mem: Mem) -> tuple[bool, int, int, int]:
        """Sorted descending, the order in which objects leave: not about to be used by
        a launch first, then by predicted next use, furthest first, then larger first,
        then newer first."""
        return (not mem.armed, self._next_use(mem), mem.size, mem.serial)

    def _next_use(self, mem: Mem) -> int:
        age = self.clock - mem.last_use
        if mem.reuse < 0:
            if age > self.capacity:                 # stale: oldest first
                return self.clock + 2 * self.capacity + age
            # Fresh, not used twice yet: back in the order they came (programs make
            # their objects, then go over them in that order), so the newest goes first.
            return self.clock + 2 * self.capacity - age
        due = mem.last_use + mem.reuse
        return due if due >= self.clock else self.clock + age

    def _settle(self, mem: Mem) -> bool:
        """Drop the events that ended; True when none is left (the object is idle)."""
        if not mem.busy:
            return True
        state = ffi.new("cl_int *")
        left = []
        for event in mem.busy:
            if lib().clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, 4, state,
                                    ffi.NULL) == CL_SUCCESS and state[0] > 0:
                left.append(event)
            else:
                lib().clReleaseEvent(event)
        mem.busy = left
        return not left

    @staticmethod
    def _movable(mem: Mem, keep: Mem | None) -> bool:
        """Whether an object may leave at all (a resident root no call holds)."""
        return (mem.parent is None and mem.resident and not mem.pinned and mem is not keep
                and mem.create is not None and mem.size > 0
                and not any(m.in_call for m in mem.family()))

    def _evictable(self, mem: Mem, keep: Mem | None) -> bool:
        """Whether it may leave now: no command in flight uses it, and it fits the store."""
        return (self._movable(mem, keep) and self._settle(mem)
                and self.stored_bytes + mem.size <= self.store_limit)

    def _make_room(self, nbytes: int, keep: Mem | None = None) -> None:
        need = self.resident_bytes + nbytes - self.capacity
        if need <= 0:
            return
        candidates = [m for m in self.mems.values() if self._evictable(m, keep)]
        candidates.sort(key=self._victim_order, reverse=True)
        for mem in candidates:
            if need <= 0:
                break
            if self.stored_bytes + mem.size > self.store_limit:
                continue
            if self._evict(mem):
                need -= mem.size
        if need > 0:
            need = self._wait_for_room(need, keep)
        if need > 0:
            self.stats.over_capacity += 1
            log.debug("device memory over capacity by %d bytes: nothing else can leave "
                      "(in use, pinned, or the host store is full)", need)

    def _wait_for_room(self, need: int, keep: Mem | None) -> int:
        """Nothing idle is left to evict: objects whose commands are in flight become
        idle when those end, which they do by themselves unless a user event holds
        them back.  So wait for them, next-use order, up to WAIT_S in all (then the
        capacity is exceeded until they end).  One that does not end in time is not
        waited for again until it gets another command."""
        busy = [m for m in self.mems.values()
                if m.busy and not m.held_back and self._movable(m, keep)]
        busy.sort(key=self._victim_order, reverse=True)
        deadline = time.monotonic() + WAIT_S
        for mem in busy:
            if need <= 0 or self.stored_bytes + mem.size > self.store_limit:
                break
            _flush(mem.busy)
            while not self._settle(mem) and time.monotonic() < deadline:
                time.sleep(0.0005)
            if mem.busy:
                # Held back (a user event?), or the time is up: not waited for again
                # until it gets a new command.
                mem.held_back = True
                continue
            if self._evict(mem):
                need -= mem.size
        return need

    def _evict(self, mem: Mem) -> bool:
        start = time.perf_counter()
        data = self._save(mem)
        if data is None:
            return False
        for m in (*mem.children, mem):
            self._unset_kernel_args(m)
            self._release_real(m)
            m.resident = False
            self.backend.handles.replace(m.handle, ffi.NULL)    # no stale address anywhere
        mem.saved = self._store(data)
        self.resident_bytes -= mem.size
        self.stored_bytes += mem.size
        took = time.perf_counter() - start
        self.stats.evictions += 1
        self.stats.bytes_out += mem.size
        self.stats.seconds_out += took
        log.debug("evicted memory object %#x (%d bytes, %d sub-buffers) to host %s in %.1f ms",
                  mem.handle, mem.size, len(mem.children),
                  "memory" if isinstance(mem.saved, bytearray) else "swap", took * 1000)
        return True

    def _restore(self, mem: Mem) -> None:
        self._make_room(mem.size, keep=mem)
        start = time.perf_counter()
        data = self._load(mem.saved)
        from_file = data is not mem.saved
        name, kept, index = mem.create or ("", [], {})
        args = list(kept)
        args[index["flags"]] |= CL_MEM_COPY_HOST_PTR
        args[index["host_ptr"]] = ffi.from_buffer(data)
        errcode = ffi.new("cl_int *")
        args[index["errcode_ret"]] = errcode
        ptr = getattr(lib(), name)(*args)
        if errcode[0] != CL_SUCCESS or ptr == ffi.NULL:
            # Left saved: the command that needed it gets the implementation's answer
            # for a released object, and a later one tries again.
            log.warning("memory object %#x could not be made again (%d); it stays in the "
                        "host store", mem.handle, errcode[0])
            return
        self._take_real(mem, ptr)
        for child in mem.children:
            _, ckept, cindex = child.create or ("", [], {})
            cargs = list(ckept)
            cargs[cindex["buffer"]] = ptr
            cargs[cindex["errcode_ret"]] = errcode
            cptr = lib().clCreateSubBuffer(*cargs)
            if errcode[0] != CL_SUCCESS:
                log.warning("sub-buffer %#x could not be made again (%d)", child.handle, errcode[0])
                continue
            self._take_real(child, cptr)
        if not mem.alive:
            lib().clReleaseMemObject(ptr)     # held by its sub-buffers only, as natively
        self._forget_saved(mem)
        if from_file:
            self._give_back(data)
        self.resident_bytes += mem.size
        self.stats.peak_resident = max(self.stats.peak_resident, self.resident_bytes)
        took = time.perf_counter() - start
        self.stats.restores += 1
        self.stats.bytes_in += mem.size
        self.stats.seconds_in += took
        log.debug("restored memory object %#x (%d bytes) in %.1f ms", mem.handle, mem.size,
                  took * 1000)

    def _take_real(self, mem: Mem, ptr) -> None:
        """A remade object stands for the guest's: its id, and the guest's references."""
        handles = self.backend.handles
        entry = handles._entries.get(mem.handle)
        if entry is not None:
            for _ in range(entry.refs - 1):
                lib().clRetainMemObject(ptr)
            handles.replace(mem.handle, ptr)
        mem.ptr = ptr
        mem.resident = True
        mem.restored = True

    def _release_real(self, mem: Mem) -> None:
        entry = self.backend.handles._entries.get(mem.handle)
        refs = entry.refs if entry is not None else 0
        for _ in range(refs):
            lib().clReleaseMemObject(mem.ptr)

    def _unset_kernel_args(self, mem: Mem) -> None:
        """Arguments naming an object about to be released name nothing until the next
        launch sets them again (an implementation may hold a reference through them)."""
        handles = self.backend.handles
        for kernel_id, index in mem.kernel_args:
            kernel = handles._entries.get(kernel_id)
            if kernel is not None:
                lib().clSetKernelArg(kernel.ptr, index, ffi.sizeof("cl_mem"), ffi.new("cl_mem *"))
            args = self._kernel_args.get(kernel_id)
            if args is not None and index in args:
                args[index] = (mem.handle, 0)

    def _queue(self, context):
        """The host's own queue on a context (contents are read through it: a guest's
        queue may wait on a user event for ever)."""
        address = _addr(context)
        queue = self._queues.get(address)
        if queue is None:
            self._measure_counts()
            count = ffi.new("size_t *")
            cl = lib()
            if cl.clGetContextInfo(context, CL_CONTEXT_DEVICES, 0, ffi.NULL, count) != CL_SUCCESS \
                    or not count[0]:
                return None
            devices = ffi.new("cl_device_id[]", count[0] // ffi.sizeof("cl_device_id"))
            cl.clGetContextInfo(context, CL_CONTEXT_DEVICES, count[0], devices, ffi.NULL)
            errcode = ffi.new("cl_int *")
            queue = cl.clCreateCommandQueue(context, devices[0], 0, errcode)
            if errcode[0] != CL_SUCCESS:
                return None
            self._queues[address] = queue
        return queue

    def _save(self, mem: Mem) -> bytearray | None:
        queue = self._queue(mem.context)
        if queue is None:
            mem.pinned = "the host has no queue on its context"
            return None
        data = self._buffer(mem.size)
        out = ffi.from_buffer(data)
        cl = lib()
        if mem.kind == "image":
            status = cl.clEnqueueReadImage(queue, mem.ptr, 1, ffi.new("size_t[3]"),
                                           ffi.new("size_t[3]", _image_region(mem)), 0, 0, out,
                                           0, ffi.NULL, ffi.NULL)
        else:
            status = cl.clEnqueueReadBuffer(queue, mem.ptr, 1, 0, mem.size, out, 0, ffi.NULL,
                                            ffi.NULL)
            if status == CL_INVALID_OPERATION:           # the host may not read it directly
                status = self._copy_out(queue, mem, out)
        if status != CL_SUCCESS:
            mem.pinned = f"its contents cannot be read ({status})"
            log.debug("memory object %#x stays resident: %s", mem.handle, mem.pinned)
            return None
        return data

    @staticmethod
    def _copy_out(queue, mem: Mem, out) -> int:
        """Contents the host may not read (CL_MEM_HOST_NO_ACCESS, HOST_WRITE_ONLY):
        copied piece by piece into a buffer it may read."""
        cl = lib()
        errcode = ffi.new("cl_int *")
        piece = min(mem.size, COPY_PIECE)
        temp = cl.clCreateBuffer(mem.context, 1, piece, ffi.NULL, errcode)
        if errcode[0] != CL_SUCCESS:
            return errcode[0]
        try:
            for at in range(0, mem.size, piece):
                n = min(piece, mem.size - at)
                status = cl.clEnqueueCopyBuffer(queue, mem.ptr, temp, at, 0, n, 0, ffi.NULL,
                                                ffi.NULL)
                if status == CL_SUCCESS:
                    status = cl.clEnqueueReadBuffer(queue, temp, 1, 0, n, out + at, 0,
                                                    ffi.NULL, ffi.NULL)
                if status != CL_SUCCESS:
                    return status
            return CL_SUCCESS
        finally:
            cl.clReleaseMemObject(temp)

    def _store(self, data: bytearray):
        """Contents kept: in memory, or large ones in an unlinked file of the swap
        directory (gone with the file, whatever happens to the process)."""
        if self.swap_dir and len(data) >= self.spill:
            try:
                f = tempfile.TemporaryFile(dir=self.swap_dir, prefix="ava-evicted-")
                f.write(data)
            except OSError as exc:
                log.warning("swap directory %s: %s; keeping the contents in memory",
                            self.swap_dir, exc)
            else:
                self._give_back(data)
                return f
        return data

    def _load(self, saved) -> bytearray:
        if isinstance(saved, bytearray):
            return saved
        saved.seek(0)
        data = self._buffer(os.fstat(saved.fileno()).st_size)
        saved.readinto(data)
        return data

    def _give_back(self, data: bytearray) -> None:
        if len(self._spare) < SPARE_BUFFERS:
            self._spare.append(data)      # the next eviction of that size takes it

    def _forget_saved(self, mem: Mem) -> None:
        if mem.saved is None:
            return
        if isinstance(mem.saved, bytearray):
            self._give_back(mem.saved)
        else:
            mem.saved.close()
        mem.saved = None
        self.stored_bytes -= mem.size

    def _buffer(self, size: int) -> bytearray:
        """Host memory for contents: a spare one of that size if there is one (fresh
        memory costs a page fault per page, as much as the copy itself)."""
        for i, spare in enumerate(self._spare):
            if len(spare) == size:
                return self._spare.pop(i)
        return bytearray(size)

    def _measure_counts(self) -> None:
        """The references a queue and a buffer take on their context, and a sub-buffer
        on its parent, on this implementation (PoCL: 1 each), measured once on a
        context of the host's own so the guest's counts can be kept."""
        if self._counts is not None:
            return
        self._counts = {"queue": 0, "mem": 0}
        cl = lib()
        devices = _all_devices()
        if not devices:
            return
        errcode = ffi.new("cl_int *")
        ctx = cl.clCreateContext(ffi.NULL, 1, ffi.new("cl_device_id[1]", [devices[0]]),
                                 ffi.NULL, ffi.NULL, errcode)
        if errcode[0] != CL_SUCCESS:
            return
        count = ffi.new("cl_uint *")

        def refs() -> int:
            cl.clGetContextInfo(ctx, CL_CONTEXT_REFERENCE_COUNT, 4, count, ffi.NULL)
            return int(count[0])
        before = refs()
        queue = cl.clCreateCommandQueue(ctx, devices[0], 0, errcode)
        self._counts["queue"] = refs() - before
        before = refs()
        buf = cl.clCreateBuffer(ctx, 1, 64, ffi.NULL, errcode)
        self._counts["mem"] = refs() - before
        cl.clReleaseMemObject(buf)
        cl.clReleaseCommandQueue(queue)
        cl.clReleaseContext(ctx)

    # -- the end ---------------------------------------------------------------------------------

    def context_gone(self, context) -> None:
        """The guest let go of a context: the host's queue there goes once no memory
        object of the context is left to save (the queue holds the context)."""
        address = _addr(context)
        if any(_addr(m.context) == address for m in self.mems.values()):
            return
        queue = self._queues.pop(address, None)
        if queue is not None:
            lib().clReleaseCommandQueue(queue)

    def close(self) -> None:
        """The session ended: the saved contents go, and a summary is logged."""
        for mem in self.mems.values():
            if mem.parent is None:
                self._forget_saved(mem)
            for event in mem.busy:
                lib().clReleaseEvent(event)
            mem.busy.clear()
        self.mems.clear()
        self._spare.clear()
        for queue in self._queues.values():
            lib().clReleaseCommandQueue(queue)
        self._queues.clear()

    def summary(self) -> None:
        if self.stats.created or self.stats.refused:
            log.info("device memory summary: capacity=%d store=%d %s", self.capacity,
                     self.store_limit, self.stats.line())


def _flush(events: list) -> None:
    """Make sure the commands behind ``events`` are on their way to the device."""
    cell = ffi.new("cl_command_queue *")
    for event in events:
        if lib().clGetEventInfo(event, CL_EVENT_COMMAND_QUEUE, ffi.sizeof("cl_command_queue"),
                                cell, ffi.NULL) == CL_SUCCESS and cell[0] != ffi.NULL:
            lib().clFlush(cell[0])


def _all_devices() -> list:
    return [device for _, devices in platforms_and_devices() for device in devices]


def _kept(cargs: list, index: dict) -> list:
    """A creation's arguments, with persistent copies of what it pointed to."""
    kept = list(cargs)
    for name in _KEPT_ARGS:
        at = index.get(name)
        if at is None or kept[at] == ffi.NULL:
            continue
        value = kept[at]
        ctype = ffi.typeof(value)
        kept[at] = ffi.new(ctype.cname, list(value) if ctype.kind == "array" else value[0])
    for name in ("host_ptr", "errcode_ret"):       # set at each making
        if name in index:
            kept[index[name]] = ffi.NULL
    return kept


def _image_region(mem: Mem) -> list[int]:
    desc = mem.create[1][mem.create[2]["image_desc"]] if mem.create else None
    if desc is None:
        return [0, 0, 0]
    t, w, h, d, n = (desc.image_type, desc.image_width, desc.image_height, desc.image_depth,
                     desc.image_array_size)
    if t == api.CL_MEM_OBJECT_IMAGE1D_ARRAY:
        return [w, n, 1]
    if t == api.CL_MEM_OBJECT_IMAGE2D:
        return [w, h, 1]
    if t == api.CL_MEM_OBJECT_IMAGE2D_ARRAY:
        return [w, h, n]
    if t == api.CL_MEM_OBJECT_IMAGE3D:
        return [w, h, d]
    return [w, 1, 1]
