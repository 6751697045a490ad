"""Raw OpenCL entry points through cffi, declared from the spec.

Raw calls keep exact semantics (status codes, output sizes) that a
higher-level wrapper would translate.  The library is the host's ICD loader
(``libOpenCL.so.1``), or ``AVA_HOST_OPENCL`` to name another.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from typing import Any

from protocols import opencl_api as api
from protocols.executor import PREPARED_ENV

log = logging.getLogger("host_backend.opencl")

#: A module of these declarations prepared ahead (``prepared_source``): the server
#: makes one for its executors (a sealed memfd, named by PREPARED_ENV), which then
#: start without parsing C (60-70 ms here).
_PREPARED_NAME = "ava_cl_declarations"


def declarations() -> str:
    """The C declarations of every function in the spec, with their types."""
    return api.C_TYPEDEFS + "\n".join(api.c_declaration(fn) for fn in api.FUNCTIONS)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepared_source() -> str:
    """The declarations parsed once into a Python module (cffi's out-of-line ABI mode:
    the parsed types, serialised), for an executor to load (``AVA_CL_PREPARED``)
    instead of parsing them.  It carries the digest of the declarations it was made
    from, so a stale one is never used."""
    from cffi import FFI
    text = declarations()
    out = FFI()
    out.set_source(_PREPARED_NAME, None)
    out.cdef(text)
    with tempfile.TemporaryDirectory(prefix="ava-cl-prepared-") as directory:
        path = os.path.join(directory, _PREPARED_NAME + ".py")
        with contextlib.redirect_stdout(io.StringIO()):     # cffi says "generating <path>"
            out.emit_python_code(path)
        with open(path) as f:
            return f.read() + f"\nDIGEST = {_digest(text)!r}\n"


def _load_ffi() -> Any:
    text = declarations()
    path = os.environ.get(PREPARED_ENV)
    if path:
        try:
            with open(path) as f:       # (a memfd's path has no .py for importlib)
                source = f.read()
            module: dict[str, Any] = {"__name__": _PREPARED_NAME}
            exec(compile(source, path, "exec"), module)
            if module.get("DIGEST") == _digest(text):
                return module["ffi"]
            log.warning("%s (%s) was made from other declarations; parsing them here",
                        path, PREPARED_ENV)
        except Exception as exc:        # missing, unreadable, another cffi: parse instead
            log.warning("cannot load the prepared declarations %s (%s): %s; parsing them "
                        "here", path, PREPARED_ENV, exc)
    from cffi import FFI
    parsed = FFI()
    parsed.cdef(text)
    return parsed


ffi = _load_ffi()
#: Whether ``ffi`` came from a prepared module (tests check the server's reach here).
PREPARED = type(ffi).__module__ != "cffi.api"
_lib = None
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF


def platforms_and_devices() -> list[tuple[object, list]]:
    """Every platform with its devices, in enumeration order (empty if none)."""
    cl = lib()
    count = ffi.new("cl_uint *")
    if cl.clGetPlatformIDs(0, ffi.NULL, count) != 0 or not count[0]:
        return []
    platforms = ffi.new("cl_platform_id[]", count[0])
    if cl.clGetPlatformIDs(count[0], platforms, ffi.NULL) != 0:
        return []
    found = []
    for platform in platforms:
        devices: list = []
        if cl.clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 0, ffi.NULL, count) == 0 and count[0]:
            cells = ffi.new("cl_device_id[]", count[0])
            if cl.clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, count[0], cells, ffi.NULL) == 0:
                devices = list(cells)
        found.append((platform, devices))
    return found


def lib():
    """The loaded OpenCL library (loaded on first use; raises OSError with a hint)."""
    global _lib
    if _lib is None:
        name = os.environ.get("AVA_HOST_OPENCL", "libOpenCL.so.1")
        try:
            _lib = ffi.dlopen(name)
        except OSError as exc:
            raise OSError(f"cannot load the host OpenCL library {name!r}: {exc} "
                          "(install ocl-icd-libopencl1 and an implementation such as "
                          "pocl-opencl-icd, or set AVA_HOST_OPENCL)") from exc
    return _lib
