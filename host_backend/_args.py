"""Argument decoding: one call's encoded arguments turned into C values.

Each argument kind of the spec (``protocols.opencl_api``) has one method here;
``ArgDecoder.PLAN`` maps the kind's class to it, so a call walks a precomputed
list instead of testing every kind.  The decoder checks what the guest sent
against the other arguments (counts, lengths, spans), translates guest ids to
host objects, and registers the outputs that come back after the call
(``posts``).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from protocols import opencl_api as api
from protocols.opencl_api import NULL_LEN

from ._cl import ffi, lib
from ._handles import key as handle_key
from ._kernel_args import with_arg_info
from ._wire import Decoder, Encoder, WireError

CL_SUCCESS = 0
CL_OUT_OF_RESOURCES = -5
CL_OUT_OF_HOST_MEMORY = -6
CL_INVALID_VALUE = -30
CL_MEM_ALLOC_HOST_PTR = 1 << 4

INVALID_HANDLE = {
    "cl_platform_id": -32, "cl_device_id": -33, "cl_context": -34, "cl_command_queue": -36,
    "cl_mem": -38, "cl_sampler": -41, "cl_program": -44, "cl_kernel": -48, "cl_event": -58,
}
#: A NULL array with a non-zero count: CL_INVALID_EVENT_WAIT_LIST for an enqueue's
#: wait list, CL_INVALID_VALUE otherwise (clWaitForEvents included).
NULL_ARRAY_STATUS = {"event_wait_list": -57}

#: A blocking buffer transfer through a scatter list runs as one command per piece
#: when its pieces average at least this; smaller pieces (the 4 KiB pages of a
#: zero-copy transfer in a VM, where no huge page backs them) are gathered into one
#: bounce buffer.  Measured here for 64 MiB: about 7 µs a piece, against 0.55 ns a
#: byte more for the bounce buffer's copies, so the two cost the same at 13 KiB.
SEGMENT_MIN_BYTES = 16 << 10

#: Per-call caps on what a guest may make the host allocate.
MAX_OUT_BUFFER = 64 << 20
MAX_ARRAY = 1 << 16
MAX_PROPERTIES = 256


class CallError(Exception):
    """Stop decoding: the call's status is ``status`` (an OpenCL error code)."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


#: Calls that start a kernel: their events are watched for run time (KernelWatch).
KERNEL_LAUNCHES = frozenset({"clEnqueueNDRangeKernel", "clEnqueueTask", "clEnqueueNativeKernel"})


class Call:
    """Per-call state (calls run concurrently on the poller and worker threads)."""

    __slots__ = (
        "arrays",
        "binary_index",
        "cleanups",
        "deferred",
        "errcode",
        "events",
        "forced_profiling",
        "held",
        "index",
        "kernel_mem",
        "mems",
        "own_event",
        "replacement",
        "segments",
        "size_ret",
        "skip_real",
        "structs",
        "target",
        "target_entry",
        "watch",
    )

    def __init__(self) -> None:
        self.errcode: Any = None     # cl_int * (cdata) for a creating function
        self.size_ret: Any = None    # the size_t * an OutBuffer's size comes back in
        self.target: int | None = None   # the first handle argument (what retain/release act on)
        # Its table entry when the call was decoded: a retain or release that runs while
        # its owner's objects are being torn down counts against that entry, which the
        # teardown releases as many times as it still holds.
        self.target_entry: Any = None
        self.index: dict[str, int] = {}    # argument name -> position in the C call
        self.events: list[tuple[int, Any]] = []        # (guest id, cl_event * cell)
        self.cleanups: list = []       # run after the call whatever happened
        self.arrays: dict[str, list[int]] = {}     # FixedArray values by argument name
        self.binary_index: int | None = None       # an AVA_PROGRAM_BINARY query
        self.structs: dict[str, dict | None] = {}   # InStruct fields by argument name
        self.watch: Any = None       # a kernel launch's cl_event * cell (see KernelWatch)
        # A non-blocking transfer of guest memory: the position of its blocking flag,
        # and the views of guest RAM the implementation may touch after the reply.
        self.deferred: int | None = None
        self.held: list = []
        self.segments: list | None = None    # a non-blocking HostData's scatter pieces
        self.mems: list = []           # memory objects held resident for the call
        self.kernel_mem: int | None = None   # the memory object a kernel argument names
        self.own_event: Any = None     # an event cell the host added to follow a command
        self.skip_real = False         # only the guest's reference count changes
        self.forced_profiling: Any = None   # a queue made profiled for the scheduler
        self.replacement: Any = None   # what runs instead of the real call (a partition's)

T = TypeVar("T")


def per_function(compute: Callable[[api.Function], T]) -> Callable[[api.Function], T]:
    """Memoise ``compute(fn)`` by the function's identity: hashing a frozen spec entry
    walks all its arguments, which costs more than the lookups it would save."""
    memo: dict[int, tuple[api.Function, T]] = {}

    @functools.wraps(compute)
    def lookup(fn: api.Function) -> T:
        hit = memo.get(id(fn))
        if hit is None:
            hit = memo[id(fn)] = (fn, compute(fn))      # fn kept alive: its id stays its own
        return hit[1]
    return lookup


@per_function
def call_names(fn: api.Function) -> frozenset[str]:
    return frozenset(a.name for a in fn.args)


@per_function
def has_out_buffer(fn: api.Function) -> bool:
    return any(isinstance(a.kind, api.OutBuffer) for a in fn.args)


def as_signed(value: int, width: int) -> int:
    bits = width * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def scalar_value(raw: int, ctype: str, what: str) -> int:
    """The C value of a scalar the guest sent as 64 bits.  The guest widens a signed
    type by sign extension (``(uint64_t)(cl_int)-30`` is 0xffffffffffffffe2), so a
    signed value fits when it is in range either way; an unsigned one must have no bits
    above its width."""
    width, signed = api.SCALAR_TYPES[ctype]
    if signed:
        value = as_signed(raw, 8)
        if width < 8 and not -(1 << (width * 8 - 1)) <= value < (1 << (width * 8 - 1)):
            if raw >> (width * 8):
                raise WireError(f"{what}={raw:#x} does not fit {ctype}")
            value = as_signed(raw, width)       # the zero-extended form of a negative value
        return value
    if width < 8 and raw >> (width * 8):
        raise WireError(f"{what}={raw:#x} does not fit {ctype}")
    return raw


class ArgDecoder:
    """Decodes the arguments of one call of ``fn`` (see the module docstring)."""

    #: The decoding method for each argument kind (filled in below the class).
    PLAN: ClassVar[dict[type, Callable[..., None]]]

    def __init__(self, backend, fn: api.Function, dec: Decoder, owner: int, call: Call, dma=None):
        self.backend = backend
        self.fn = fn
        self.dec = dec
        self.owner = owner
        self.call = call
        self.dma = dma
        self.cargs: list = []
        self.posts: list = []
        self.scalars: dict[str, int] = {}
        self.checks: list = []          # length checks against arguments decoded later

    def run(self) -> tuple[list, list]:
        """The C arguments, and what to do with the outputs after the call."""
        index, cargs = self.call.index, self.cargs
        for arg, method in _plan(self.fn):
            index[arg.name] = len(cargs)
            method(self, arg, arg.kind)
        for name, size_name, length in self.checks:
            if self.scalars.get(size_name) != length:
                raise WireError(f"{name} carries {length} bytes, {size_name} says "
                                f"{self.scalars.get(size_name)}")
        return cargs, self.posts

    def resolve(self, obj_type: str, handle: int, arg):
        """The host object behind a guest id (NULL for 0); CallError if not ours."""
        return self.backend._resolve(obj_type, handle, self.owner, self.fn, arg, self.call)

    # -- one method per argument kind ------------------------------------------------------

    def _arg_scalar(self, arg, kind) -> None:
        value = scalar_value(self.dec.u64(), kind.ctype, arg.name)
        if (isinstance(kind, api.MemFlags) and value & api.CL_MEM_USE_HOST_PTR
                and not value & (api.CL_MEM_COPY_HOST_PTR | CL_MEM_ALLOC_HOST_PTR)):
            value = value & ~api.CL_MEM_USE_HOST_PTR | api.CL_MEM_COPY_HOST_PTR
        self.scalars[arg.name] = value
        self.cargs.append(value)

    def key(self, handle: int) -> int:
        """The handle table's key for an id this guest process names (its own id
        space; see ``_handles``)."""
        return handle_key(handle, self.owner)

    def _arg_handle(self, arg, kind) -> None:
        handle = self.key(self.dec.u64())
        if handle == 0 and not kind.nullable:
            # The spec's answer, given here: some implementations dereference a NULL
            # object (PoCL's clEnqueueTask does).
            raise CallError(INVALID_HANDLE[kind.obj], f"{arg.name} is NULL")
        self.cargs.append(self.resolve(kind.obj, handle, arg))
        if self.call.target is None:
            self.call.target = handle
            self.call.target_entry = self.backend.handles.entry(handle)

    def _arg_handles(self, arg, kind) -> None:
        n = self.dec.u64()
        if n == NULL_LEN:
            if self.scalars.get(kind.count):
                # The spec's answer, given here: some implementations read
                # through the NULL array (PoCL's clCompileProgram does).
                raise CallError(NULL_ARRAY_STATUS.get(arg.name, CL_INVALID_VALUE),
                                f"{arg.name} is NULL, {kind.count} is not 0")
            self.cargs.append(ffi.NULL)
            return
        if n != self.scalars.get(kind.count) or n > MAX_ARRAY:
            raise WireError(f"{arg.name} has {n} entries, {kind.count} says {self.scalars.get(kind.count)}")
        ids = self.dec.u64s(n)
        if 0 in ids:             # a NULL object inside the array: some implementations
            raise CallError(     # dereference it (PoCL's built-in kernel programs do)
                NULL_ARRAY_STATUS.get(arg.name, INVALID_HANDLE[kind.obj]),
                f"{arg.name} holds a NULL {kind.obj}")
        ptrs = [self.resolve(kind.obj, self.key(h), arg) for h in ids]
        self.cargs.append(ffi.new(f"{kind.obj}[]", ptrs) if ptrs else ffi.new(f"{kind.obj}[1]"))

    def _arg_out_handles(self, arg, kind) -> None:
        cap = self.dec.u64()
        if cap == NULL_LEN:
            self.cargs.append(ffi.NULL)
            return
        if cap > MAX_ARRAY:
            raise WireError(f"{arg.name} capacity {cap}")
        out = ffi.new(f"{kind.obj}[]", max(cap, 1))
        self.cargs.append(out)
        self.posts.append(self.backend._post_out_handles(kind.obj, out, cap))

    def _arg_in_buffer(self, arg, kind) -> None:
        data = self.dec.blob()
        if data is None:
            self.cargs.append(ffi.NULL)
            return
        if kind.size in call_names(self.fn):
            self.checks.append((arg.name, kind.size, len(data)))
        elif len(data) > 4096:
            raise WireError(f"{arg.name}: {len(data)} bytes")
        self.cargs.append(ffi.from_buffer(data))

    def _arg_c_string(self, arg, kind) -> None:
        data = self.dec.blob()
        if data is None:
            self.cargs.append(ffi.NULL)
        elif not data or data[-1] != 0 or 0 in data[:-1]:
            raise CallError(CL_INVALID_VALUE, f"{arg.name} is not one NUL-terminated string")
        else:
            self.cargs.append(ffi.new("char[]", data))

    def _arg_build_options(self, arg, kind) -> None:
        self.cargs.append(self._build_options(arg))

    def _arg_out_buffer(self, arg, kind) -> None:
        cap = self.dec.u64()
        if cap == NULL_LEN:
            self.cargs.append(ffi.NULL)
            return
        if cap != self.scalars.get(kind.size):
            raise WireError(f"{arg.name} capacity {cap}, {kind.size} says {self.scalars.get(kind.size)}")
        param = self.scalars.get(kind.param)
        if (self.fn.name == "clGetProgramInfo" and param is not None
                and 0 <= param - api.AVA_PROGRAM_BINARY < api.AVA_PROGRAM_BINARY_MAX):
            self.call.binary_index = param - api.AVA_PROGRAM_BINARY
        if kind.elem == 1:
            alloc = min(cap, MAX_OUT_BUFFER)
            self.cargs[self.call.index[kind.size]] = alloc
        else:                                  # an array of cap structs
            if cap > MAX_ARRAY:
                raise WireError(f"{arg.name}: {cap} entries")
            alloc = cap * kind.elem
        out = ffi.new("char[]", max(alloc, 1))
        self.cargs.append(ffi.cast(f"{kind.ctype} *", out))
        self.posts.append(self.backend._post_out_buffer(kind, out, alloc, self.scalars, self.call))

    def _arg_out_scalar(self, arg, kind) -> None:
        flag = self.dec.u64()
        if flag not in (1, NULL_LEN):
            raise WireError(f"{arg.name} presence flag {flag:#x}")
        present = flag == 1
        if not present and (self.call.size_ret is not None or not has_out_buffer(self.fn)):
            self.cargs.append(ffi.NULL)       # NULL stays NULL: the implementation decides
            return
        # An info query's size comes back here even when the guest passed NULL:
        # the reply needs it to know how many bytes were written.
        cell = ffi.new(f"{kind.ctype} *")
        self.cargs.append(cell)
        if self.call.size_ret is None:
            self.call.size_ret = cell
        self.posts.append(self.backend._post_out_scalar(cell, present))

    def _arg_strings(self, arg, kind) -> None:
        count = self.dec.u64()
        if count == NULL_LEN:       # the spec's answer (PoCL reads through the NULL array)
            raise CallError(CL_INVALID_VALUE, f"{arg.name} is NULL")
        if count != self.scalars.get(kind.count) or count > MAX_ARRAY:
            raise WireError(f"{count} strings, {kind.count} says {self.scalars.get(kind.count)}")
        blobs = []
        for _ in range(count):
            b = self.dec.blob()
            if b is None:
                raise CallError(CL_INVALID_VALUE, f"{arg.name} holds a NULL string")
            blobs.append(b)
        keep = [ffi.new("char[]", b) for b in blobs]
        self.cargs.append(ffi.new("char *[]", keep) if keep else ffi.NULL)
        self.cargs.append(ffi.new("size_t[]", [len(b) for b in blobs]) if blobs else ffi.NULL)
        self.posts.append(lambda status, enc, keep=keep: None)    # keeps the strings alive

    def _arg_properties(self, arg, kind) -> None:
        n = self.dec.u64()
        if n == NULL_LEN:
            self.cargs.append(ffi.NULL)
            return
        if n > MAX_PROPERTIES:
            raise WireError(f"{n} properties")
        flat = self.dec.u64s(2 * n)
        values = []
        signed = api.SCALAR_TYPES[kind.ctype][1]     # intptr_t lists, or cl_ulong ones
        for key, value in zip(flat[0::2], flat[1::2], strict=True):
            if key == 0:
                raise CallError(CL_INVALID_VALUE, "property key 0 inside the list")
            for refused_key, bits, status in kind.refused:
                if key == refused_key and value & bits:
                    raise CallError(status, f"{arg.name}: {key:#x} = {value:#x} is not "
                                            "supported through the device")
            obj = kind.handle_keys.get(key)
            if obj is not None:
                value = int(ffi.cast("uintptr_t", self.resolve(obj, self.key(value), arg)))
            values += [as_signed(key, 8), as_signed(value, 8)] if signed else [key, value]
        # Two zeros: a partition by counts ends its counts with a 0 of its own, and a
        # list of an odd number of them reaches the wire without it.
        self.cargs.append(ffi.new(f"{kind.ctype}[]", values + [0, 0]))

    def _arg_callback(self, arg, kind) -> None:
        if self.dec.u64() != 0:
            raise CallError(CL_INVALID_VALUE, f"{kind.user_data} without {arg.name}")
        self.cargs.append(ffi.NULL)       # the guest calls it; the host never does

    def _arg_user_data(self, arg, kind) -> None:
        self.cargs.append(ffi.NULL)

    def _arg_fixed_array(self, arg, kind) -> None:
        n = self.dec.u64()
        if n == NULL_LEN:
            self.cargs.append(ffi.NULL)
            return
        if n != kind.n:
            raise WireError(f"{arg.name} has {n} entries, not {kind.n}")
        self.call.arrays[arg.name] = values = self.dec.u64s(n)
        self.cargs.append(ffi.new(f"{kind.ctype}[]", values))

    def _arg_binaries(self, arg, kind) -> None:
        self.cargs += self._binaries(kind, arg)

    def _arg_c_strings(self, arg, kind) -> None:
        n = self.dec.u64()
        if n == NULL_LEN:
            if self.scalars.get(kind.count):
                raise CallError(CL_INVALID_VALUE, f"{arg.name} is NULL, {kind.count} is not 0")
            self.cargs.append(ffi.NULL)
            return
        if n != self.scalars.get(kind.count) or n > MAX_ARRAY:
            raise WireError(f"{n} strings, {kind.count} says {self.scalars.get(kind.count)}")
        keep = []
        for _ in range(n):
            data = self.dec.blob()
            if data is not None and (not data or data[-1] != 0 or 0 in data[:-1]):
                raise CallError(CL_INVALID_VALUE, f"{arg.name}: not NUL-terminated")
            keep.append(ffi.NULL if data is None else ffi.new("char[]", data))
        self.cargs.append(ffi.new("char *[]", keep) if keep else ffi.new("char *[1]"))
        self.posts.append(lambda status, enc, keep=keep: None)    # keeps the strings alive

    def _arg_new_handles(self, arg, kind) -> None:
        self.cargs.append(self._new_handles(kind, arg))

    def _arg_host_rect(self, arg, kind) -> None:
        o, r = self.call.arrays.get(kind.origin), self.call.arrays.get(kind.region)
        span = api.rect_span(o, r, self.scalars[kind.row_pitch], self.scalars[kind.slice_pitch]) \
            if o and r else 0
        self.cargs.append(self._host_data(kind, arg, span))

    def _arg_errcode_ret(self, arg, kind) -> None:
        self.call.errcode = ffi.new("cl_int *")
        self.cargs.append(self.call.errcode)

    def _arg_in_array(self, arg, kind) -> None:
        n = self.dec.u64()
        if n == NULL_LEN:
            self.cargs.append(ffi.NULL)
            return
        count = self.scalars.get(kind.count, -1)      # -1: no count argument, never matches
        # The guest never reads more than 3 work sizes; for a larger (invalid)
        # work_dim the implementation rejects it before looking at the array.
        if n > MAX_ARRAY or not (n == count or (count > 3 and n == 3)):
            raise WireError(f"{arg.name} has {n} entries, {kind.count} says {count}")
        self.cargs.append(ffi.new(f"{kind.ctype}[]", self.dec.u64s(n)) if n else ffi.new(f"{kind.ctype}[1]"))

    def _arg_event_out(self, arg, kind) -> None:
        new_id = self.key(self.dec.u64())
        if new_id == 0:
            if self.fn.name in KERNEL_LAUNCHES and self.backend.kernels is not None:
                # The launch's event is needed to bound its run time, wanted or not.
                self.call.watch = ffi.new("cl_event *")
                self.cargs.append(self.call.watch)
            else:
                self.cargs.append(ffi.NULL)
            return
        why = self.backend.handles.check_new(new_id)
        if why or any(new_id == e for e, _ in self.call.events):
            raise CallError(CL_OUT_OF_RESOURCES if why and "limit" in why else CL_INVALID_VALUE,
                            f"new event: {why or 'id used twice'}")
        cell = ffi.new("cl_event *")
        self.call.events.append((new_id, cell))
        self.cargs.append(cell)
        if self.fn.name in KERNEL_LAUNCHES and self.backend.kernels is not None:
            self.call.watch = cell

    def _arg_kernel_arg(self, arg, kind) -> None:
        size, tag = self.dec.u64(), self.dec.u64()
        self.scalars[kind.size] = size
        self.cargs.append(size)
        if tag == api.KARG_BYTES:
            data = self.dec.blob()
            if data is None or len(data) != size:
                raise WireError(f"kernel argument bytes disagree with arg_size {size}")
            self._check_kernel_arg("bytes", data)
            self.cargs.append(ffi.from_buffer(data))
        elif tag in (api.KARG_MEM, api.KARG_SAMPLER):
            obj = "cl_mem" if tag == api.KARG_MEM else "cl_sampler"
            mem_id = self.key(self.dec.u64())
            ptr = self.resolve(obj, mem_id, arg)
            if tag == api.KARG_MEM:
                self.call.kernel_mem = mem_id
            self._check_kernel_arg("memory" if tag == api.KARG_MEM else "sampler", None)
            self.cargs.append(ffi.new(f"{obj} *", ptr))
        elif tag == api.KARG_LOCAL:
            self.cargs.append(ffi.NULL)
        else:
            raise WireError(f"kernel argument tag {tag}")

    def _check_kernel_arg(self, tag: str, data: bytes | None) -> None:
        """Refuse bytes where the kernel expects an object (see _kernel_args)."""
        kernel = self.cargs[self.call.index["kernel"]]
        if kernel == ffi.NULL:
            return                              # the implementation answers for NULL
        status = self.backend.kernel_args.check(kernel, self.call.target,
                                                self.scalars["arg_index"], tag, data)
        if status:
            raise CallError(status, f"argument {self.scalars['arg_index']}: {tag} where the "
                            "kernel expects something else")

    def _arg_host_data(self, arg, kind) -> None:
        self.cargs.append(self._host_data(kind, arg, self.scalars.get(kind.size, 0)))

    def _arg_host_image(self, arg, kind) -> None:
        self.cargs.append(self._host_image(kind, arg))

    def _arg_in_struct(self, arg, kind) -> None:
        self.cargs.append(self._in_struct(kind, arg))

    def _arg_fixed_bytes(self, arg, kind) -> None:
        data = self.dec.blob()
        if data is not None and len(data) != kind.n:
            raise WireError(f"{arg.name} carries {len(data)} bytes, not {kind.n}")
        self.cargs.append(ffi.NULL if data is None else ffi.new("char[]", data))

    def _arg_image_host_ptr(self, arg, kind) -> None:
        self.cargs.append(self._image_host_ptr(kind, arg))

    # -- helpers of the kinds above ----------------------------------------------------

    def _host_data(self, kind, arg, size: int):
        """Application memory by reference (HostData, HostRect): a view of guest RAM
        the implementation reads or writes in place (zero copy), or a bounce buffer
        for a scatter list.  ``size`` is the length the other arguments imply."""
        dec, call, cargs, posts, dma = self.dec, self.call, self.cargs, self.posts, self.dma
        mode = dec.u64()
        if mode == NULL_LEN:
            return ffi.NULL
        if dma is None:
            raise WireError(f"{arg.name}: guest memory reference without a DMA map")
        flag = call.index[kind.blocking] if getattr(kind, "blocking", None) else None
        if flag is not None and cargs[flag] == 0:
            # The guest keeps this staging until it sees the command over
            # (guest_driver/icd/icd_deferred.c); the backend holds the views (and
            # with them the mapping) as long as the command runs.
            call.deferred = flag
        elif flag is not None:
            cargs[flag] = 1
        if mode == api.HOSTDATA_RANGE:
            addr, length = dec.u64(), dec.u64()
            if length != size:
                raise WireError(f"{arg.name} is {length} bytes, its arguments say {size}")
            view = ffi.from_buffer(dma.translate(addr, length, write=kind.out))
            call.held.append(view)
            return view
        if mode != api.HOSTDATA_SG:
            raise WireError(f"{arg.name}: unknown reference mode {mode}")
        table, count = dec.u64(), dec.u64()
        if count > (1 << 20):
            raise WireError(f"{arg.name}: {count} scatter entries")
        raw = bytes(dma.translate(table, count * 16))
        views = [dma.translate(a, n, write=kind.out)
                 for a, n, _ in struct.iter_unpack("<QII", raw) if n]
        if sum(v.nbytes for v in views) != size:
            raise WireError(f"{arg.name}: scatter list does not add up to {size} bytes")
        if isinstance(kind, api.HostData) and (call.deferred is not None or
                                                 size >= SEGMENT_MIN_BYTES * len(views)):
            # One command per piece, in place (OpenClBackend._segmented): always when
            # the command must not block (a bounce buffer lives for one call), and for
            # a blocking transfer when its pieces are large enough that a command per
            # piece costs less than copying them all through a bounce buffer.
            call.segments = [ffi.from_buffer(v) for v in views]
            call.held += call.segments
            return ffi.NULL
        if flag is not None:
            # Our bounce buffers must not be touched after we reply.
            cargs[flag] = 1
            call.deferred = None
        if not kind.out:
            return ffi.from_buffer(b"".join(views))
        # A rectangle leaves the bytes between its rows alone: start from the guest's.
        bounce = (bytearray(b"".join(views)) if isinstance(kind, (api.HostRect, api.HostImage))
                  else bytearray(size))

        def scatter_back(status: int, enc: Encoder) -> None:
            if status == CL_SUCCESS:
                pos, whole = 0, memoryview(bounce)
                for v in views:
                    v[:] = whole[pos:pos + v.nbytes]
                    pos += v.nbytes
        posts.append(scatter_back)
        return ffi.from_buffer(bounce)

    def _in_struct(self, kind: api.InStruct, arg):
        """A struct rebuilt in the host's layout; handle fields translated to pointers."""
        dec, owner, fn, call = self.dec, self.owner, self.fn, self.call
        n = dec.u64()
        if n == NULL_LEN:
            call.structs[arg.name] = None
            return ffi.NULL
        if n != len(kind.fields):
            raise WireError(f"{arg.name} has {n} fields, not {len(kind.fields)}")
        out = ffi.new(f"{kind.ctype} *")
        values = {}
        for (name, ctype), raw in zip(kind.fields, dec.u64s(n), strict=True):
            raw = scalar_value(raw, ctype, f"{arg.name}.{name}") & ((1 << 64) - 1)
            if raw and name in kind.zero_fields:
                raise CallError(kind.bad_handle or CL_INVALID_VALUE,
                                f"{fn.name}.{arg.name}.{name} must be 0")
            obj = kind.handles.get(name)
            if obj is None:
                setattr(out, name, raw)
            elif raw:
                raw = self.key(raw)
                ptr = self.backend.handles.lookup(obj, raw, owner)
                if ptr is None:
                    raise CallError(kind.bad_handle or INVALID_HANDLE[obj],
                                    f"{fn.name}.{arg.name}.{name}: {raw:#x} is not a live {obj}")
                if obj == "cl_mem":
                    ptr = self.resolve(obj, raw, arg)     # resident for the call
                setattr(out, name, ffi.cast("void *", ptr))
            values[name] = raw
        call.structs[arg.name] = values
        return out

    def _image_host_ptr(self, kind: api.ImageHostPtr, arg):
        """clCreateImage's host data: exactly the bytes the image will read from it.
        When that size cannot be known the host refuses (with the status the spec
        gives) rather than hand the implementation a pointer it might read past; only
        a NULL context, format or descriptor, which the implementation rejects before
        looking at the data, goes through."""
        dec, scalars, call, cargs = self.dec, self.scalars, self.call, self.cargs
        data = dec.blob()
        if data is None:
            return ffi.NULL
        fmt, desc = call.structs.get(kind.format), call.structs.get(kind.desc)
        size, why = 0, 0
        if scalars[kind.flags] & (api.CL_MEM_COPY_HOST_PTR | api.CL_MEM_USE_HOST_PTR) and fmt \
                and desc:
            size, why = api.image_host_size(fmt, desc)
        if len(data) != size:
            raise WireError(f"{arg.name} carries {len(data)} bytes, the image reads {size}")
        if why and cargs[call.index["context"]] != ffi.NULL:
            raise CallError(why, f"{arg.name}: the image's size is unknown")
        # Zero padding up to the furthest byte any row could reach, whatever the
        # implementation makes of a pitch smaller than a row.
        bound = max(size, api.image_read_bound(fmt, desc)) if size and fmt and desc else 1
        if bound - size > MAX_OUT_BUFFER:
            raise CallError(api.CL_INVALID_IMAGE_DESCRIPTOR, f"{arg.name}: pitches far "
                            "smaller than a row")
        out = ffi.new("char[]", bound)
        ffi.memmove(out, data, len(data))
        return out

    def _image_info(self, image) -> tuple[int, int] | None:
        """(type, element size) of a real memory object; None if it is not an image."""
        cl = lib()
        mem_type, elem = ffi.new("cl_mem_object_type *"), ffi.new("size_t *")
        if cl.clGetMemObjectInfo(image, api.CL_MEM_TYPE, 4, mem_type, ffi.NULL) != CL_SUCCESS \
                or mem_type[0] not in api.IMAGE_TYPES:
            return None
        if cl.clGetImageInfo(image, api.CL_IMAGE_ELEMENT_SIZE, 8, elem, ffi.NULL) != CL_SUCCESS:
            return None
        return int(mem_type[0]), int(elem[0])

    def _host_image(self, kind: api.HostImage, arg):
        """Application memory of an image transfer, sized from the real image: what the
        guest says must match.  A region with extent the image type does not have
        (span 0) is refused here, so the implementation never writes through a
        pointer to nothing; an empty one it accepts as a no-op."""
        scalars, call, cargs = self.scalars, self.call, self.cargs
        image = cargs[call.index[kind.image]]
        span = 0
        if image != ffi.NULL:
            info = self._image_info(image)
            if info is None:
                raise CallError(api.CL_INVALID_MEM_OBJECT, f"{kind.image} is not an image")
            span = api.image_span(*info, call.arrays.get(kind.region, []),
                                  scalars[kind.row_pitch], scalars[kind.slice_pitch])
        ptr = self._host_data(kind, arg, span)
        region = call.arrays.get(kind.region)
        if ptr != ffi.NULL and image != ffi.NULL and span == 0 and not (region and 0 in region):
            # (An empty region is a no-op the implementation accepts.)
            raise CallError(CL_INVALID_VALUE, f"{arg.name}: the region is out of shape")
        return ptr

    def _binaries(self, kind: api.Binaries, arg) -> list:
        """``lengths`` and ``binaries`` arrays (two C arguments)."""
        dec, scalars, posts = self.dec, self.scalars, self.posts
        n = dec.u64()
        if n == NULL_LEN:
            return [ffi.NULL, ffi.NULL]
        if n != scalars.get(kind.count) or n > MAX_ARRAY:
            raise WireError(f"{n} binaries, {kind.count} says {scalars.get(kind.count)}")
        blobs = [dec.blob() for _ in range(n)]
        if sum(len(b) for b in blobs if b) > api.MAX_INCLUDE_BYTES * 16:
            raise CallError(CL_OUT_OF_RESOURCES, f"{arg.name}: binaries too large")
        keep = [ffi.NULL if b is None else ffi.new("unsigned char[]", b or b"\0") for b in blobs]
        lengths = ffi.new("size_t[]", [len(b) if b is not None else 0 for b in blobs] or [0])
        posts.append(lambda status, enc, keep=keep: None)    # keeps the bytes alive
        return [lengths, ffi.new("unsigned char *[]", keep) if keep else ffi.new("unsigned char *[1]")]

    def _new_handles(self, kind: api.NewHandles, arg):
        """Objects the call creates into an array: the guest chose their ids."""
        dec, scalars, posts, owner = self.dec, self.scalars, self.posts, self.owner
        cap = dec.u64()
        if cap == NULL_LEN:
            return ffi.NULL
        if cap != scalars.get(kind.count) or cap > MAX_ARRAY:
            raise WireError(f"{arg.name} capacity {cap}, {kind.count} says {scalars.get(kind.count)}")
        ids = [self.key(i) for i in dec.u64s(cap)]
        for new_id in ids:
            why = self.backend.handles.check_new(new_id)
            if why:
                raise CallError(CL_OUT_OF_RESOURCES if "limit" in why else CL_INVALID_VALUE,
                                f"new {kind.obj}: {why}")
        if len(set(ids)) != len(ids):
            raise CallError(CL_INVALID_VALUE, f"{arg.name}: an id used twice")
        out = ffi.new(f"{kind.obj}[]", max(cap, 1))

        def post(status: int, enc: Encoder) -> None:
            filled = 0
            if status == CL_SUCCESS:
                while filled < cap and out[filled] != ffi.NULL:
                    self.backend.handles.add(ids[filled], kind.obj, out[filled], owner)
                    filled += 1
            enc.u64(filled)
        posts.append(post)
        return out

    def _build_options(self, arg):
        """Options plus the guest's include directories, recreated on the host."""
        dec, call = self.dec, self.call
        options = dec.blob()
        count = dec.u64()
        if count > api.MAX_INCLUDE_FILES:
            raise WireError(f"{count} include files")
        files, total = [], 0
        for _ in range(count):
            index, path, data = dec.u64(), dec.blob(), dec.blob()
            if path is None or data is None:
                raise WireError("include file without path or data")
            total += len(data)
            if total > api.MAX_INCLUDE_BYTES:
                raise CallError(CL_OUT_OF_RESOURCES, "include directories larger than "
                                f"{api.MAX_INCLUDE_BYTES} bytes")
            files.append((index, path, data))
        if options is not None and (not options or options[-1] != 0 or 0 in options[:-1]):
            raise CallError(CL_INVALID_VALUE, f"{arg.name} is not one NUL-terminated string")
        text = options[:-1].decode("utf-8", "replace") if options is not None else ""
        text, asked = with_arg_info(text)
        self.backend.kernel_args.program_built(call.target, asked)
        indices = {i for i in range(256) if api.INCLUDE_MARKER.format(i) in text}
        if files or indices:
            checked = []
            for index, path, data in files:
                rel = path.decode("utf-8", "replace")
                parts = rel.split("/")
                if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or index > 255:
                    raise CallError(CL_INVALID_VALUE, f"include path {rel!r} is not a plain "
                                    "relative path")
                checked.append((index, parts, data))
            root, done = self.backend.includes.checkout(checked, indices)
            call.cleanups.append(done)
            for index in indices:
                text = text.replace(api.INCLUDE_MARKER.format(index), os.path.join(root, str(index)))
        return ffi.new("char[]", text.encode() + b"\0")



ArgDecoder.PLAN = {
    api.Scalar: ArgDecoder._arg_scalar,
    api.Handle: ArgDecoder._arg_handle,
    api.Handles: ArgDecoder._arg_handles,
    api.OutHandles: ArgDecoder._arg_out_handles,
    api.InBuffer: ArgDecoder._arg_in_buffer,
    api.CString: ArgDecoder._arg_c_string,
    api.BuildOptions: ArgDecoder._arg_build_options,
    api.OutBuffer: ArgDecoder._arg_out_buffer,
    api.OutScalar: ArgDecoder._arg_out_scalar,
    api.Strings: ArgDecoder._arg_strings,
    api.Properties: ArgDecoder._arg_properties,
    api.Callback: ArgDecoder._arg_callback,
    api.UserData: ArgDecoder._arg_user_data,
    api.FixedArray: ArgDecoder._arg_fixed_array,
    api.Binaries: ArgDecoder._arg_binaries,
    api.CStrings: ArgDecoder._arg_c_strings,
    api.NewHandles: ArgDecoder._arg_new_handles,
    api.HostRect: ArgDecoder._arg_host_rect,
    api.ErrcodeRet: ArgDecoder._arg_errcode_ret,
    api.InArray: ArgDecoder._arg_in_array,
    api.EventOut: ArgDecoder._arg_event_out,
    api.KernelArg: ArgDecoder._arg_kernel_arg,
    api.HostData: ArgDecoder._arg_host_data,
    api.HostImage: ArgDecoder._arg_host_image,
    api.InStruct: ArgDecoder._arg_in_struct,
    api.FixedBytes: ArgDecoder._arg_fixed_bytes,
    api.ImageHostPtr: ArgDecoder._arg_image_host_ptr,
    api.MemFlags: ArgDecoder._arg_scalar,
}


@per_function
def _plan(fn: api.Function) -> tuple:
    """(argument, decoding method) for each argument of ``fn``, computed once."""
    try:
        return tuple((arg, ArgDecoder.PLAN[type(arg.kind)]) for arg in fn.args)
    except KeyError as exc:
        raise TypeError(f"{fn.name}: no decoder for {exc}") from None
