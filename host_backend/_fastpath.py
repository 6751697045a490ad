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
from typing import Any

from protocols import opencl_api as api
from protocols.opencl_api import NULL_LEN

from ._args import MAX_OUT_BUFFER
from ._cl import ffi, lib
from ._handles import HOST_ID_BASE

_I64 = struct.Struct("<q")
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

    __slots__ = ("_cfunc_name", "_excluded", "_filled_on", "_handles", "_hooked", "_layout",
                 "_out_at", "_param_at", "_scalars", "_size_at", "_size_ret_at", "fn",
                 "metered_hook", "partition_hook")

    def __init__(self, fn: api.Function, excluded: frozenset[int], hooked: frozenset[int]):
        self.fn = fn
        self._layout = struct.Struct(f"<{len(fn.args)}Q")
        self._cfunc_name = fn.name
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
            entry = entries.get(handle if handle >= HOST_ID_BASE else owner_key | handle)
            if entry is None or entry.obj_type != obj_type or (
                    entry.owner is not None and entry.owner != owner) or entry.ptr == ffi.NULL:
                return None
            words[at] = entry.ptr
        cap = words[self._out_at]
        if cap == NULL_LEN:
            out = ffi.NULL
            alloc = 0
        else:
            if cap != words[self._size_at]:
                return None
            alloc = min(cap, MAX_OUT_BUFFER)
            words[self._size_at] = alloc
            out = ffi.new(_CHARS, alloc or 1)
        words[self._out_at] = out
        flag = words[self._size_ret_at]
        if flag != 1 and flag != NULL_LEN:
            return None
        size_ret = words[self._size_ret_at] = ffi.new(_SIZE_T_P)
        status = int(getattr(lib(), self._cfunc_name)(*words))
        parts = [_I64.pack(status)]
        if out != ffi.NULL:
            if status in self._filled_on:
                written = min(alloc, int(size_ret[0]))
                if written < alloc <= 16:
                    written = alloc         # as the interpreter (see _post_out_buffer)
                parts.append(written.to_bytes(8, "little"))
                parts.append(ffi.buffer(out, written)[:] + bytes(-written % 8))
            else:
                parts.append(_EMPTY_BLOB)
        if flag == 1:
            parts.append(int(size_ret[0]).to_bytes(8, "little"))
        return b"".join(parts)
