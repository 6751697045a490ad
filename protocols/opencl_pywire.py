"""A Python guest-side encoder for OpenCL calls, derived from the same spec as the
guest's generated C stubs and the host's decoder (``opencl_api``): what tests and the
host's in-process benchmark (``vdev/_host_cost.py``) send a backend without a guest.

``encode(fn, **args)`` takes C-level values (ints for scalars, guest ids for
handles, bytes for buffers and strings, None for NULL) and returns the payload;
``decode(fn, reply)`` returns ``(status, {output name: value})``.
"""

from __future__ import annotations

import struct
from typing import Any

from protocols import opencl_api as api
from protocols.opencl_api import NULL_LEN


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def _blob(b: bytes | None) -> bytes:
    if b is None:
        return _u64(NULL_LEN)
    return _u64(len(b)) + b + bytes(-len(b) % 8)


def encode(fn: api.Function, new_id: int | None = None, **values: Any) -> bytes:
    out = [_u64(new_id or 0)] if fn.creates else []
    for arg in fn.args:
        k = arg.kind
        v: Any = values.get(arg.name)
        if isinstance(k, (api.Scalar, api.Handle)):
            out.append(_u64(v or 0))
        elif isinstance(k, api.Handles):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(map(_u64, v)))
        elif isinstance(k, (api.OutHandles,)):
            out.append(_u64(NULL_LEN if v is None else v))          # capacity
        elif isinstance(k, api.OutBuffer):
            out.append(_u64(NULL_LEN if v is None else v))          # capacity
        elif isinstance(k, api.OutScalar):
            out.append(_u64(1 if v else NULL_LEN))
        elif isinstance(k, (api.InBuffer, api.CString)):
            out.append(_blob(v))
        elif isinstance(k, api.BuildOptions):
            opts, files = (v, []) if not isinstance(v, tuple) else v     # (options, [(i, path, data)])
            out.append(_blob(opts) + _u64(len(files))
                       + b"".join(_u64(i) + _blob(p) + _blob(d) for i, p, d in files))
        elif isinstance(k, api.Strings):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(_blob(s) for s in v))
        elif isinstance(k, api.Properties):
            out.append(_u64(NULL_LEN) if v is None else
                       _u64(len(v)) + b"".join(_u64(x) for pair in v for x in pair))
        elif isinstance(k, api.InArray):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(map(_u64, v)))
        elif isinstance(k, api.EventOut):
            out.append(_u64(v or 0))                                  # guest-assigned id
        elif isinstance(k, api.KernelArg):
            tag, value = v                                            # (KARG_*, bytes | id | size)
            if tag == api.KARG_BYTES:
                out.append(_u64(len(value)) + _u64(tag) + _blob(value))
            elif tag == api.KARG_LOCAL:
                out.append(_u64(value) + _u64(tag))
            else:
                out.append(_u64(8) + _u64(tag) + _u64(value))
        elif isinstance(k, api.HostData):
            if v is None:
                out.append(_u64(NULL_LEN))
            elif v[0] == api.HOSTDATA_RANGE:
                out.append(_u64(v[0]) + _u64(v[1]) + _u64(v[2]))      # (mode, addr, len)
            else:
                out.append(_u64(v[0]) + _u64(v[1]) + _u64(v[2]))      # (mode, table, count)
        elif isinstance(k, api.Callback):
            out.append(_u64(v or 0))                 # 1: user_data without a function
        elif isinstance(k, (api.UserData, api.ErrcodeRet)):
            pass
        elif isinstance(k, api.FixedArray):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(map(_u64, v)))
        elif isinstance(k, api.Binaries):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(_blob(b) for b in v))
        elif isinstance(k, api.CStrings):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(_blob(b) for b in v))
        elif isinstance(k, api.NewHandles):
            out.append(_u64(NULL_LEN) if v is None else _u64(len(v)) + b"".join(map(_u64, v)))
        elif isinstance(k, (api.HostRect, api.HostImage)):
            out.append(_u64(NULL_LEN) if v is None else b"".join(map(_u64, v)))  # (mode, addr, len)
        elif isinstance(k, api.InStruct):
            # a dict of fields (missing ones 0) or a raw list of u64 values
            if v is None:
                out.append(_u64(NULL_LEN))
            else:
                vals = v if isinstance(v, list) else [v.get(f, 0) for f, _ in k.fields]
                out.append(_u64(len(vals)) + b"".join(map(_u64, vals)))
        elif isinstance(k, (api.FixedBytes, api.ImageHostPtr)):
            out.append(_blob(v))
        else:
            raise TypeError(k)
    return b"".join(out)


def decode(fn: api.Function, reply: bytes, **requested: Any) -> tuple[int, dict[str, Any]]:
    """Outputs come back only for arguments the call asked for (non-NULL)."""
    status = struct.unpack_from("<q", reply, 0)[0]
    pos = 8
    outs: dict[str, Any] = {}

    def u64() -> int:
        nonlocal pos
        v = int(struct.unpack_from("<Q", reply, pos)[0])
        pos += 8
        return v

    if len(reply) == 8:
        return status, outs
    for arg in fn.args:
        k = arg.kind
        if requested.get(arg.name) is None:
            continue
        if isinstance(k, api.OutHandles):
            n = u64()
            outs[arg.name] = [u64() for _ in range(n)]
        elif isinstance(k, api.NewHandles):
            outs[arg.name] = u64()                   # slots filled
        elif isinstance(k, api.OutBuffer):
            n = u64()
            outs[arg.name] = reply[pos:pos + n]
            pos += (n + 7) & ~7
        elif isinstance(k, api.OutScalar):
            outs[arg.name] = u64()
    return status, outs
