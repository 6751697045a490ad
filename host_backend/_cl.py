"""Raw OpenCL entry points through cffi, declared from the spec.

Raw calls keep exact semantics (status codes, output sizes) that a
higher-level wrapper would translate.  The library is the host's ICD loader
(``libOpenCL.so.1``), or ``AVA_HOST_OPENCL`` to name another.
"""

from __future__ import annotations

import os

from cffi import FFI

from protocols import opencl_api as api

ffi = FFI()
ffi.cdef(api.C_TYPEDEFS + "\n".join(api.c_declaration(fn) for fn in api.FUNCTIONS))

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
