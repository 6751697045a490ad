"""Raw OpenCL entry points through cffi, declared from the spec.

Raw calls keep exact semantics (status codes, output sizes) that a
higher-level wrapper would translate.  The library is the host's ICD loader
(``libOpenCL.so.1``), or ``AVA_HOST_OPENCL`` to name another.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from protocols.executor import PREPARED_ENV

from ._cl_prepared import PREPARED_NAME, declarations, digest

log = logging.getLogger("host_backend.opencl")


def _load_ffi() -> Any:
    """The declarations the server prepared (``_cl_prepared``), else parsed here."""
    text = declarations()
    path = os.environ.get(PREPARED_ENV)
    if path:
        try:
            with open(path) as f:       # (a memfd's path has no .py for importlib)
                source = f.read()
            module: dict[str, Any] = {"__name__": PREPARED_NAME}
            exec(compile(source, path, "exec"), module)
            if module.get("DIGEST") == digest(text):
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


_UINTPTR = ffi.typeof("uintptr_t")


def address(ptr) -> int:
    """An OpenCL object's address (what tables key it by; it never reaches a guest)."""
    return int(ffi.cast(_UINTPTR, ptr))


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
