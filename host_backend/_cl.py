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
