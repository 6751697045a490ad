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
import functools
import logging
import os
import shutil
import struct
import tempfile
import threading

from protocols import opencl_api as api
from protocols.opencl_api import NULL_LEN

from ._cl import ffi, lib
from ._handles import HOST_ID_BASE, HandleTable
from ._wire import Decoder, Encoder, WireError

log = logging.getLogger("host_backend.opencl")

CL_SUCCESS = 0
CL_OUT_OF_RESOURCES = -5
CL_OUT_OF_HOST_MEMORY = -6
CL_INVALID_VALUE = -30
CL_MEM_ALLOC_HOST_PTR = 1 << 4
CL_MEM_SIZE = 0x1102

INVALID_HANDLE = {
    "cl_platform_id": -32, "cl_device_id": -33, "cl_context": -34, "cl_command_queue": -36,
    "cl_mem": -38, "cl_sampler": -41, "cl_program": -44, "cl_kernel": -48, "cl_event": -58,
}
#: How to drop a reference of each created type, in the order objects are torn down.
RELEASE_ORDER = (("cl_event", "clReleaseEvent"), ("cl_kernel", "clReleaseKernel"),
                 ("cl_program", "clReleaseProgram"), ("cl_mem", "clReleaseMemObject"),
                 ("cl_sampler", "clReleaseSampler"), ("cl_command_queue", "clReleaseCommandQueue"),
                 ("cl_context", "clReleaseContext"), ("cl_device_id", "clReleaseDevice"))

#: A NULL array with a non-zero count: CL_INVALID_EVENT_WAIT_LIST for events.
NULL_ARRAY_STATUS = {"cl_event": -57}

#: Per-call caps on what a guest may make the host allocate.
MAX_OUT_BUFFER = 64 << 20
MAX_ARRAY = 1 << 16
MAX_PROPERTIES = 256


class CallError(Exception):
    """Stop decoding: the call's status is ``status`` (an OpenCL error code)."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


class _Call:
    """Per-call state (calls run concurrently on the poller and worker threads)."""

    __slots__ = ("errcode", "size_ret", "target", "index", "events", "cleanups", "arrays",
                 "binary_index", "structs")

    def __init__(self) -> None:
        self.errcode = None      # cl_int * for a creating function
        self.size_ret = None     # the size_t * an OutBuffer's size comes back in
        self.target = None       # the first handle argument (what retain/release act on)
        self.index: dict[str, int] = {}    # argument name -> position in the C call
        self.events: list[tuple[int, object]] = []     # (guest id, cl_event * cell)
        self.cleanups: list = []       # run after the call whatever happened
        self.arrays: dict[str, list[int]] = {}     # FixedArray values by argument name
        self.binary_index: int | None = None       # an AVA_PROGRAM_BINARY query
        self.structs: dict[str, dict | None] = {}   # InStruct fields by argument name


@functools.lru_cache(maxsize=None)
def call_names(fn: api.Function) -> frozenset[str]:
    return frozenset(a.name for a in fn.args)


@functools.lru_cache(maxsize=None)
def has_out_buffer(fn: api.Function) -> bool:
    return any(isinstance(a.kind, api.OutBuffer) for a in fn.args)


def _signed(value: int, width: int) -> int:
    bits = width * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class OpenClBackend:
    name = "opencl"

    def __init__(self, *, max_objects: int = 65536, max_bytes: int = 8 << 30):
        self.blocking_opcodes = frozenset(fn.opcode for fn in api.FUNCTIONS if fn.blocking)
        self.handles = HandleTable(max_objects=max_objects, max_bytes=max_bytes)
        self._lock = threading.Lock()
        self.calls = 0

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
            return -errno.EINVAL, 0
        return 0, ctx.write_reply(reply)

    def release_queue(self, queue: int, owner: int | None = None, last: bool = True) -> None:
        if last and owner is not None:
            self._release_objects(lambda entry: entry.owner == owner)

    def close(self) -> None:
        self._release_objects(lambda entry: entry.owner is not None)

    def _release_objects(self, which) -> None:
        with self._lock:
            doomed = [(h, e) for h, e in self.handles._entries.items() if which(e)]
            for h, _ in doomed:
                self.handles.forget(h)
        for obj_type, release_name in RELEASE_ORDER:
            release = getattr(lib(), release_name)
            for handle, entry in doomed:
                if entry.obj_type == obj_type:
                    for _ in range(entry.refs):
                        release(entry.ptr)
        if doomed:
            log.info("released %d objects", len(doomed))

    # -- one call -------------------------------------------------------------------------

    def call(self, fn: api.Function, payload: bytes, owner: int, dma=None) -> bytes:
        """Run ``fn`` with the encoded ``payload``; returns the encoded reply.  ``dma``
        resolves guest addresses (application data passed by reference)."""
        enc = Encoder()
        dec = Decoder(payload)
        call = _Call()
        try:
            with self._lock:
                new_id = self._claim_id(fn, dec)
                cargs, posts = self._decode(fn, dec, owner, call, dma)
                dec.done()
            if call.binary_index is not None:
                result = self._program_binary(cargs, call)
            else:
                result = getattr(lib(), fn.name)(*cargs)
            with self._lock:
                status = self._account(fn, result, cargs, new_id, owner, call)
                enc.set_status(status)
                for post in posts:
                    post(status, enc)
        except CallError as exc:
            log.debug("%s: %s (%d)", fn.name, exc, exc.status)
            enc = Encoder(exc.status)
        finally:
            for cleanup in call.cleanups:
                cleanup()
        return enc.bytes()

    def _claim_id(self, fn: api.Function, dec: Decoder) -> int | None:
        if not fn.creates:
            return None
        new_id = dec.u64()
        why = self.handles.check_new(new_id)
        if why:
            raise CallError(CL_OUT_OF_RESOURCES if "limit" in why else CL_INVALID_VALUE,
                            f"new {fn.creates}: {why}")
        return new_id

    def _account(self, fn, result, cargs, new_id, owner, call: _Call) -> int:
        """The call's status, and the handle table updated to match what it did."""
        for event_id, cell in call.events:
            if cell[0] != ffi.NULL:
                self.handles.add(event_id, "cl_event", cell[0], owner)
        if fn.creates:
            status = call.errcode[0]
            if status == CL_SUCCESS and result != ffi.NULL:
                nbytes = cargs[call.index["size"]] if "size" in call.index and \
                    fn.creates == "cl_mem" else 0
                if fn.name == "clCreateImage":
                    nbytes = self._mem_size(result)
                self.handles.add(new_id, fn.creates, result, owner, nbytes)
            return status
        status = int(result)
        if status == CL_SUCCESS:
            handle = call.target
            if fn.retains:
                self.handles.retain(handle)
            elif fn.releases:
                self.handles.release(handle)
        return status

    @staticmethod
    def _mem_size(mem) -> int:
        """An image's bytes, counted against the session's memory limit like a buffer's."""
        cell = ffi.new("size_t *")
        if lib().clGetMemObjectInfo(mem, CL_MEM_SIZE, 8, cell, ffi.NULL) != CL_SUCCESS:
            return 0
        return int(cell[0])

    def _decode(self, fn: api.Function, dec: Decoder, owner: int, call: _Call, dma=None):
        cargs: list = []
        posts: list = []
        scalars: dict[str, int] = {}
        checks: list = []          # length checks against arguments decoded later
        for arg in fn.args:
            kind = arg.kind
            call.index[arg.name] = len(cargs)
            if isinstance(kind, api.Scalar):
                width, signed = api.SCALAR_TYPES[kind.ctype]
                raw = dec.u64()
                if width < 8 and raw >> (width * 8):
                    raise WireError(f"{arg.name}={raw:#x} does not fit {kind.ctype}")
                value = _signed(raw, width) if signed else raw
                if (isinstance(kind, api.MemFlags) and value & api.CL_MEM_USE_HOST_PTR
                        and not value & (api.CL_MEM_COPY_HOST_PTR | CL_MEM_ALLOC_HOST_PTR)):
                    value = value & ~api.CL_MEM_USE_HOST_PTR | api.CL_MEM_COPY_HOST_PTR
                scalars[arg.name] = value
                cargs.append(value)
            elif isinstance(kind, api.Handle):
                handle = dec.u64()
                cargs.append(self._resolve(kind.obj, handle, owner, fn, arg))
                if call.target is None:
                    call.target = handle
            elif isinstance(kind, api.Handles):
                n = dec.u64()
                if n == NULL_LEN:
                    if scalars.get(kind.count):
                        # The spec's answer, given here: some implementations read
                        # through the NULL array (PoCL's clCompileProgram does).
                        raise CallError(NULL_ARRAY_STATUS.get(kind.obj, CL_INVALID_VALUE),
                                        f"{arg.name} is NULL, {kind.count} is not 0")
                    cargs.append(ffi.NULL)
                    continue
                if n != scalars.get(kind.count) or n > MAX_ARRAY:
                    raise WireError(f"{arg.name} has {n} entries, {kind.count} says {scalars.get(kind.count)}")
                ptrs = [self._resolve(kind.obj, h, owner, fn, arg) for h in dec.u64s(n)]
                cargs.append(ffi.new(f"{kind.obj}[]", ptrs) if ptrs else ffi.new(f"{kind.obj}[1]"))
            elif isinstance(kind, api.OutHandles):
                cap = dec.u64()
                if cap == NULL_LEN:
                    cargs.append(ffi.NULL)
                    continue
                if cap > MAX_ARRAY:
                    raise WireError(f"{arg.name} capacity {cap}")
                out = ffi.new(f"{kind.obj}[]", max(cap, 1))
                cargs.append(out)
                posts.append(self._post_out_handles(kind.obj, out, cap))
            elif isinstance(kind, api.InBuffer):
                data = dec.blob()
                if data is None:
                    cargs.append(ffi.NULL)
                    continue
                if kind.size in call_names(fn):
                    checks.append((arg.name, kind.size, len(data)))
                elif len(data) > 4096:
                    raise WireError(f"{arg.name}: {len(data)} bytes")
                cargs.append(ffi.from_buffer(data))
            elif isinstance(kind, api.CString):
                data = dec.blob()
                if data is None:
                    cargs.append(ffi.NULL)
                elif not data or data[-1] != 0 or 0 in data[:-1]:
                    raise CallError(CL_INVALID_VALUE, f"{arg.name} is not one NUL-terminated string")
                else:
                    cargs.append(ffi.new("char[]", data))
            elif isinstance(kind, api.BuildOptions):
                cargs.append(self._build_options(arg, dec, call))
            elif isinstance(kind, api.OutBuffer):
                cap = dec.u64()
                if cap == NULL_LEN:
                    cargs.append(ffi.NULL)
                    continue
                if cap != scalars.get(kind.size):
                    raise WireError(f"{arg.name} capacity {cap}, {kind.size} says {scalars.get(kind.size)}")
                param = scalars.get(kind.param)
                if (fn.name == "clGetProgramInfo" and param is not None
                        and 0 <= param - api.AVA_PROGRAM_BINARY < api.AVA_PROGRAM_BINARY_MAX):
                    call.binary_index = param - api.AVA_PROGRAM_BINARY
                if kind.elem == 1:
                    alloc = min(cap, MAX_OUT_BUFFER)
                    cargs[call.index[kind.size]] = alloc
                else:                                  # an array of cap structs
                    if cap > MAX_ARRAY:
                        raise WireError(f"{arg.name}: {cap} entries")
                    alloc = cap * kind.elem
                out = ffi.new("char[]", max(alloc, 1))
                cargs.append(ffi.cast(f"{kind.ctype} *", out))
                posts.append(self._post_out_buffer(kind, out, alloc, scalars, call))
            elif isinstance(kind, api.OutScalar):
                flag = dec.u64()
                if flag not in (1, NULL_LEN):
                    raise WireError(f"{arg.name} presence flag {flag:#x}")
                present = flag == 1
                if not present and (call.size_ret is not None or not has_out_buffer(fn)):
                    cargs.append(ffi.NULL)       # NULL stays NULL: the implementation decides
                    continue
                # An info query's size comes back here even when the guest passed NULL:
                # the reply needs it to know how many bytes were written.
                cell = ffi.new(f"{kind.ctype} *")
                cargs.append(cell)
                if call.size_ret is None:
                    call.size_ret = cell
                posts.append(self._post_out_scalar(cell, present))
            elif isinstance(kind, api.Strings):
                count = dec.u64()
                if count != scalars.get(kind.count) or count > MAX_ARRAY:
                    raise WireError(f"{count} strings, {kind.count} says {scalars.get(kind.count)}")
                blobs = []
                for _ in range(count):
                    b = dec.blob()
                    if b is None:
                        raise CallError(CL_INVALID_VALUE, f"{arg.name} holds a NULL string")
                    blobs.append(b)
                keep = [ffi.new("char[]", b) for b in blobs]
                cargs.append(ffi.new("char *[]", keep) if keep else ffi.NULL)
                cargs.append(ffi.new("size_t[]", [len(b) for b in blobs]) if blobs else ffi.NULL)
                posts.append(lambda status, enc, keep=keep: None)    # keeps the strings alive
            elif isinstance(kind, api.Properties):
                n = dec.u64()
                if n == NULL_LEN:
                    cargs.append(ffi.NULL)
                    continue
                if n > MAX_PROPERTIES:
                    raise WireError(f"{n} properties")
                flat = dec.u64s(2 * n)
                values = []
                for key, value in zip(flat[0::2], flat[1::2]):
                    if key == 0:
                        raise CallError(CL_INVALID_VALUE, "property key 0 inside the list")
                    obj = kind.handle_keys.get(key)
                    if obj is not None:
                        value = int(ffi.cast("intptr_t", self._resolve(obj, value, owner, fn, arg)))
                    values += [_signed(key, 8), _signed(value, 8)]
                cargs.append(ffi.new(f"{kind.ctype}[]", values + [0]))
            elif isinstance(kind, api.Callback):
                if dec.u64() != 0:
                    raise CallError(CL_INVALID_VALUE, f"{kind.user_data} without {arg.name}")
                cargs.append(ffi.NULL)       # the guest calls it; the host never does
            elif isinstance(kind, api.UserData):
                cargs.append(ffi.NULL)
            elif isinstance(kind, api.FixedArray):
                n = dec.u64()
                if n == NULL_LEN:
                    cargs.append(ffi.NULL)
                    continue
                if n != kind.n:
                    raise WireError(f"{arg.name} has {n} entries, not {kind.n}")
                call.arrays[arg.name] = values = dec.u64s(n)
                cargs.append(ffi.new(f"{kind.ctype}[]", values))
            elif isinstance(kind, api.Binaries):
                cargs += self._binaries(kind, arg, dec, scalars, posts)
            elif isinstance(kind, api.CStrings):
                n = dec.u64()
                if n == NULL_LEN:
                    if scalars.get(kind.count):
                        raise CallError(CL_INVALID_VALUE, f"{arg.name} is NULL, {kind.count} is not 0")
                    cargs.append(ffi.NULL)
                    continue
                if n != scalars.get(kind.count) or n > MAX_ARRAY:
                    raise WireError(f"{n} strings, {kind.count} says {scalars.get(kind.count)}")
                keep = []
                for _ in range(n):
                    data = dec.blob()
                    if data is not None and (not data or data[-1] != 0 or 0 in data[:-1]):
                        raise CallError(CL_INVALID_VALUE, f"{arg.name}: not NUL-terminated")
                    keep.append(ffi.NULL if data is None else ffi.new("char[]", data))
                cargs.append(ffi.new("char *[]", keep) if keep else ffi.new("char *[1]"))
                posts.append(lambda status, enc, keep=keep: None)    # keeps the strings alive
            elif isinstance(kind, api.NewHandles):
                cargs.append(self._new_handles(kind, arg, dec, scalars, call, posts, owner))
            elif isinstance(kind, api.HostRect):
                o, r = call.arrays.get(kind.origin), call.arrays.get(kind.region)
                span = api.rect_span(o, r, scalars[kind.row_pitch], scalars[kind.slice_pitch]) \
                    if o and r else 0
                cargs.append(self._host_data(kind, arg, dec, span, call, cargs, posts, dma))
            elif isinstance(kind, api.ErrcodeRet):
                call.errcode = ffi.new("cl_int *")
                cargs.append(call.errcode)
            elif isinstance(kind, api.InArray):
                n = dec.u64()
                if n == NULL_LEN:
                    cargs.append(ffi.NULL)
                    continue
                count = scalars.get(kind.count)
                # The guest never reads more than 3 work sizes; for a larger (invalid)
                # work_dim the implementation rejects it before looking at the array.
                if n > MAX_ARRAY or not (n == count or (count > 3 and n == 3)):
                    raise WireError(f"{arg.name} has {n} entries, {kind.count} says {count}")
                cargs.append(ffi.new(f"{kind.ctype}[]", dec.u64s(n)) if n else ffi.new(f"{kind.ctype}[1]"))
            elif isinstance(kind, api.EventOut):
                new_id = dec.u64()
                if new_id == 0:
                    cargs.append(ffi.NULL)
                    continue
                why = self.handles.check_new(new_id)
                if why or any(new_id == e for e, _ in call.events):
                    raise CallError(CL_OUT_OF_RESOURCES if why and "limit" in why else CL_INVALID_VALUE,
                                    f"new event: {why or 'id used twice'}")
                cell = ffi.new("cl_event *")
                call.events.append((new_id, cell))
                cargs.append(cell)
            elif isinstance(kind, api.KernelArg):
                size, tag = dec.u64(), dec.u64()
                scalars[kind.size] = size
                cargs.append(size)
                if tag == api.KARG_BYTES:
                    data = dec.blob()
                    if data is None or len(data) != size:
                        raise WireError(f"kernel argument bytes disagree with arg_size {size}")
                    cargs.append(ffi.from_buffer(data))
                elif tag in (api.KARG_MEM, api.KARG_SAMPLER):
                    obj = "cl_mem" if tag == api.KARG_MEM else "cl_sampler"
                    cargs.append(ffi.new(f"{obj} *", self._resolve(obj, dec.u64(), owner, fn, arg)))
                elif tag == api.KARG_LOCAL:
                    cargs.append(ffi.NULL)
                else:
                    raise WireError(f"kernel argument tag {tag}")
            elif isinstance(kind, api.HostData):
                cargs.append(self._host_data(kind, arg, dec, scalars.get(kind.size), call, cargs,
                                             posts, dma))
            elif isinstance(kind, api.HostImage):
                cargs.append(self._host_image(kind, arg, dec, scalars, call, cargs, posts, dma))
            elif isinstance(kind, api.InStruct):
                cargs.append(self._in_struct(kind, arg, dec, owner, fn, call))
            elif isinstance(kind, api.FixedBytes):
                data = dec.blob()
                if data is not None and len(data) != kind.n:
                    raise WireError(f"{arg.name} carries {len(data)} bytes, not {kind.n}")
                cargs.append(ffi.NULL if data is None else ffi.new("char[]", data))
            elif isinstance(kind, api.ImageHostPtr):
                cargs.append(self._image_host_ptr(kind, arg, dec, scalars, call, cargs))
            else:
                raise TypeError(f"{fn.name}.{arg.name}: no decoder for {kind!r}")
        for name, size_name, length in checks:
            if scalars.get(size_name) != length:
                raise WireError(f"{name} carries {length} bytes, {size_name} says {scalars.get(size_name)}")
        return cargs, posts

    def _host_data(self, kind, arg, dec: Decoder, size: int, call, cargs, posts, dma):
        """Application memory by reference (HostData, HostRect): a view of guest RAM
        the implementation reads or writes in place (zero copy), or a bounce buffer
        for a scatter list.  ``size`` is the length the other arguments imply."""
        mode = dec.u64()
        if mode == NULL_LEN:
            return ffi.NULL
        if dma is None:
            raise WireError(f"{arg.name}: guest memory reference without a DMA map")
        if mode == api.HOSTDATA_RANGE:
            addr, length = dec.u64(), dec.u64()
            if length != size:
                raise WireError(f"{arg.name} is {length} bytes, its arguments say {size}")
            return ffi.from_buffer(dma.translate(addr, length, write=kind.out))
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
        if not kind.out:
            return ffi.from_buffer(b"".join(views))
        # A rectangle leaves the bytes between its rows alone: start from the guest's.
        bounce = (bytearray(b"".join(views)) if isinstance(kind, (api.HostRect, api.HostImage))
                  else bytearray(size))
        if kind.blocking:                   # the bounce must be filled before we reply
            cargs[call.index[kind.blocking]] = 1

        def scatter_back(status: int, enc: Encoder) -> None:
            if status == CL_SUCCESS:
                pos = 0
                for v in views:
                    v[:] = bounce[pos:pos + v.nbytes]
                    pos += v.nbytes
        posts.append(scatter_back)
        return ffi.from_buffer(bounce)

    def _in_struct(self, kind: api.InStruct, arg, dec: Decoder, owner: int, fn, call: _Call):
        """A struct rebuilt in the host's layout; handle fields translated to pointers."""
        n = dec.u64()
        if n == NULL_LEN:
            call.structs[arg.name] = None
            return ffi.NULL
        if n != len(kind.fields):
            raise WireError(f"{arg.name} has {n} fields, not {len(kind.fields)}")
        out = ffi.new(f"{kind.ctype} *")
        values = {}
        for (name, ctype), raw in zip(kind.fields, dec.u64s(n)):
            width, _ = api.SCALAR_TYPES[ctype]
            if width < 8 and raw >> (width * 8):
                raise WireError(f"{arg.name}.{name}={raw:#x} does not fit {ctype}")
            obj = kind.handles.get(name)
            if obj is None:
                setattr(out, name, raw)
            elif raw:
                ptr = self.handles.lookup(obj, raw, owner)
                if ptr is None:
                    raise CallError(kind.bad_handle or INVALID_HANDLE[obj],
                                    f"{fn.name}.{arg.name}.{name}: {raw:#x} is not a live {obj}")
                setattr(out, name, ffi.cast("void *", ptr))
            values[name] = raw
        call.structs[arg.name] = values
        return out

    def _image_host_ptr(self, kind: api.ImageHostPtr, arg, dec: Decoder, scalars, call, cargs):
        """clCreateImage's host data: exactly the bytes the image will read from it.
        When that size cannot be known the host refuses (with the status the spec
        gives) rather than hand the implementation a pointer it might read past; only
        a NULL context, format or descriptor, which the implementation rejects before
        looking at the data, goes through."""
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
        bound = max(size, api.image_read_bound(fmt, desc)) if size else 1
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

    def _host_image(self, kind: api.HostImage, arg, dec: Decoder, scalars, call, cargs, posts,
                    dma):
        """Application memory of an image transfer, sized from the real image: what the
        guest says must match.  A region with extent the image type does not have
        (span 0) is refused here, so the implementation never writes through a
        pointer to nothing; an empty one it accepts as a no-op."""
        image = cargs[call.index[kind.image]]
        span = 0
        if image != ffi.NULL:
            info = self._image_info(image)
            if info is None:
                raise CallError(api.CL_INVALID_MEM_OBJECT, f"{kind.image} is not an image")
            span = api.image_span(*info, call.arrays.get(kind.region),
                                  scalars[kind.row_pitch], scalars[kind.slice_pitch])
        ptr = self._host_data(kind, arg, dec, span, call, cargs, posts, dma)
        region = call.arrays.get(kind.region)
        if ptr != ffi.NULL and image != ffi.NULL and span == 0 and not (region and 0 in region):
            # (An empty region is a no-op the implementation accepts.)
            raise CallError(CL_INVALID_VALUE, f"{arg.name}: the region is out of shape")
        return ptr

    def _binaries(self, kind: api.Binaries, arg, dec: Decoder, scalars, posts) -> list:
        """``lengths`` and ``binaries`` arrays (two C arguments)."""
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

    def _new_handles(self, kind: api.NewHandles, arg, dec: Decoder, scalars, call, posts, owner):
        """Objects the call creates into an array: the guest chose their ids."""
        cap = dec.u64()
        if cap == NULL_LEN:
            return ffi.NULL
        if cap != scalars.get(kind.count) or cap > MAX_ARRAY:
            raise WireError(f"{arg.name} capacity {cap}, {kind.count} says {scalars.get(kind.count)}")
        ids = dec.u64s(cap)
        for new_id in ids:
            why = self.handles.check_new(new_id)
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
                    self.handles.add(ids[filled], kind.obj, out[filled], owner)
                    filled += 1
            enc.u64(filled)
        posts.append(post)
        return out

    def _program_binary(self, cargs, call: _Call) -> int:
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
            ffi.memmove(out, bufs[call.binary_index], length)
        return CL_SUCCESS

    def _build_options(self, arg, dec: Decoder, call: "_Call"):
        """Options plus the guest's include directories, recreated on the host."""
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
        if options is None:
            return ffi.NULL
        if not options or options[-1] != 0 or 0 in options[:-1]:
            raise CallError(CL_INVALID_VALUE, f"{arg.name} is not one NUL-terminated string")
        text = options[:-1].decode("utf-8", "replace")
        if files or api.INCLUDE_MARKER.format(0) in text:
            root = tempfile.mkdtemp(prefix="ava-inc-")
            call.cleanups.append(lambda: shutil.rmtree(root, ignore_errors=True))
            dirs = set()
            for index, path, data in files:
                rel = path.decode("utf-8", "replace")
                parts = rel.split("/")
                if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or index > 255:
                    raise CallError(CL_INVALID_VALUE, f"include path {rel!r} is not a plain "
                                    "relative path")
                target = os.path.join(root, str(index), *parts)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
                dirs.add(index)
            for index in range(256):
                marker = api.INCLUDE_MARKER.format(index)
                if marker in text:
                    os.makedirs(os.path.join(root, str(index)), exist_ok=True)
                    text = text.replace(marker, os.path.join(root, str(index)))
        return ffi.new("char[]", text.encode() + b"\0")

    def _resolve(self, obj_type: str, handle: int, owner: int, fn, arg):
        if handle == 0:
            return ffi.NULL          # the implementation reports NULL itself
        ptr = self.handles.lookup(obj_type, handle, owner)
        if ptr is None:
            raise CallError(INVALID_HANDLE[obj_type],
                            f"{fn.name}.{arg.name}: {handle:#x} is not a live {obj_type}")
        return ptr

    # -- outputs -------------------------------------------------------------------------

    def _shared_or_known_id(self, obj_type: str, address: int) -> int:
        if address == 0:
            return 0
        known = self.handles.id_for_existing(obj_type, address)
        if known is not None:
            return known
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

    def _post_out_buffer(self, kind: api.OutBuffer, out, alloc: int, scalars: dict, call: _Call):
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
            obj = kind.handle_params.get(scalars.get(kind.param))
            if obj is not None and written % 8 == 0:
                addrs = struct.unpack(f"<{written // 8}Q", data)
                data = struct.pack(f"<{len(addrs)}Q",
                                   *(self._shared_or_known_id(obj, a) for a in addrs))
            enc.blob(data)
        return post

    @staticmethod
    def _post_out_scalar(cell, present: bool):
        def post(status: int, enc: Encoder) -> None:
            if present:
                enc.u64(int(cell[0]))
        return post


__all__ = ["OpenClBackend", "HOST_ID_BASE"]
