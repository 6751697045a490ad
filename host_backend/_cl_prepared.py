"""The OpenCL declarations of the spec, as C text, and prepared ahead: parsed once into
a Python module (cffi's out-of-line ABI mode) that an executor loads instead of
parsing them (60-70 ms of its start).  The server makes that module for its
executors (a sealed memfd, named by ``protocols.executor.PREPARED_ENV``); this
module parses nothing when imported, so the server, which never loads OpenCL, pays
for one parse only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile

from protocols import opencl_api as api

PREPARED_NAME = "ava_cl_declarations"


def declarations() -> str:
    """The C declarations of every function in the spec, with their types."""
    return api.C_TYPEDEFS + "\n".join(api.c_declaration(fn) for fn in api.FUNCTIONS)


def digest(text: str) -> str:
    """What a prepared module records of the declarations it was made from."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepared_source() -> str:
    """The declarations parsed into a Python module (the parsed types, serialised),
    for an executor to load instead of parsing them.  It carries the digest of the
    declarations it was made from, so a stale one is never used."""
    from cffi import FFI
    text = declarations()
    out = FFI()
    out.set_source(PREPARED_NAME, None)
    out.cdef(text)
    with tempfile.TemporaryDirectory(prefix="ava-cl-prepared-") as directory:
        path = os.path.join(directory, PREPARED_NAME + ".py")
        with contextlib.redirect_stdout(io.StringIO()):     # cffi says "generating <path>"
            out.emit_python_code(path)
        with open(path) as f:
            return f.read() + f"\nDIGEST = {digest(text)!r}\n"
