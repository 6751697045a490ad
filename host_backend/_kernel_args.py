"""Kernel arguments a guest may not forge, and the argument metadata that tells.

``clSetKernelArg`` takes the argument's bytes as they are.  Where the kernel
expects a memory object, an image or a sampler, an implementation reads those
bytes as a pointer to one of its own objects: eight bytes of the guest's choice
there would make the host dereference an address the guest picked.  So the host
checks such arguments against the kernel's metadata (address qualifier and type
name), which it asks every program build for by adding ``-cl-kernel-arg-info``.
What the application sees stays as native: ``clGetKernelArgInfo`` answers
``CL_KERNEL_ARG_INFO_NOT_AVAILABLE`` unless the guest asked for the metadata
itself, and ``CL_PROGRAM_BUILD_OPTIONS`` shows the options the guest gave.
"""

from __future__ import annotations

import threading

from ._cl import ffi, lib

ARG_INFO_OPTION = "-cl-kernel-arg-info"
ADDED_OPTION = " " + ARG_INFO_OPTION           # what the host appends to build options

CL_SUCCESS = 0
CL_KERNEL_ARG_INFO_NOT_AVAILABLE = -19
CL_INVALID_SAMPLER = -41
CL_INVALID_MEM_OBJECT = -38
CL_KERNEL_ARG_ADDRESS_QUALIFIER = 0x1196
CL_KERNEL_ARG_TYPE_NAME = 0x1198
CL_KERNEL_PROGRAM = 0x1194
CL_PROGRAM_BUILD_OPTIONS = 0x1182
ADDRESS_GLOBAL, ADDRESS_LOCAL, ADDRESS_CONSTANT = 0x119B, 0x119C, 0x119D

#: Argument classes: what bytes may stand for.
MEMORY, SAMPLER, LOCAL, VALUE, UNKNOWN = "memory", "sampler", "local", "value", "unknown"


def with_arg_info(options: str) -> tuple[str, bool]:
    """(the options to build with, whether the guest asked for argument metadata)."""
    asked = ARG_INFO_OPTION in options.split()
    return (options if asked else options + ADDED_OPTION), asked


def strip_added_option(text: bytes) -> bytes:
    """Build options as the guest gave them (``text`` without its NUL)."""
    suffix = ADDED_OPTION.encode()
    return text[:-len(suffix)] if text.endswith(suffix) else text


class KernelArgGuard:
    """Classifies kernel arguments (cached per kernel id and index) and refuses raw
    bytes where the implementation would read an object pointer."""

    MAX_CACHED = 1 << 16

    def __init__(self) -> None:
        self._classes: dict[tuple[int, int], str] = {}
        self._asked: dict[int, bool] = {}       # program id -> guest asked for arg info
        self._lock = threading.Lock()

    # -- argument metadata visibility -----------------------------------------------------

    def program_built(self, program_id: int, asked: bool) -> None:
        with self._lock:
            if len(self._asked) > self.MAX_CACHED:
                self._asked.clear()
            self._asked[program_id] = asked

    def hides_arg_info(self, program_id: int | None) -> bool:
        """Whether clGetKernelArgInfo must answer NOT_AVAILABLE for kernels of it."""
        with self._lock:
            return program_id is None or not self._asked.get(program_id, False)

    @staticmethod
    def kernel_program(kernel) -> int:
        """The real address of a kernel's program."""
        cell = ffi.new("cl_program *")
        if lib().clGetKernelInfo(kernel, CL_KERNEL_PROGRAM, ffi.sizeof("cl_program"), cell,
                                 ffi.NULL) != CL_SUCCESS:
            return 0
        return int(ffi.cast("uintptr_t", cell[0]))

    # -- argument checks ---------------------------------------------------------------------

    def check(self, kernel, kernel_id: int, index: int, tag: str, data: bytes | None) -> int:
        """CL_SUCCESS, or the status that refuses an argument: ``tag`` is "bytes"
        (with ``data``), "memory" or "sampler" (an object the guest named)."""
        if tag == "bytes" and len(data or b"") != ffi.sizeof("void *"):
            return CL_SUCCESS            # not pointer-sized: the implementation refuses it
        cls = self.classify(kernel, kernel_id, index)
        if tag == "bytes":
            if cls == SAMPLER:
                return CL_INVALID_SAMPLER
            if cls == MEMORY and any(data or b""):          # zero bytes: a NULL buffer
                return CL_INVALID_MEM_OBJECT
        elif tag == "memory" and cls == SAMPLER:
            return CL_INVALID_SAMPLER
        elif tag == "sampler" and cls == MEMORY:
            return CL_INVALID_MEM_OBJECT
        return CL_SUCCESS

    def classify(self, kernel, kernel_id: int, index: int) -> str:
        key = (kernel_id, index)
        with self._lock:
            cls = self._classes.get(key)
        if cls is None:
            cls = self._classify(kernel, index)
            with self._lock:
                if len(self._classes) > self.MAX_CACHED:
                    self._classes.clear()
                self._classes[key] = cls
        return cls

    @staticmethod
    def _classify(kernel, index: int) -> str:
        cl = lib()
        qualifier = ffi.new("cl_uint *")
        if cl.clGetKernelArgInfo(kernel, index, CL_KERNEL_ARG_ADDRESS_QUALIFIER, 4, qualifier,
                                 ffi.NULL) != CL_SUCCESS:
            return _probe(kernel, index)
        if qualifier[0] in (ADDRESS_GLOBAL, ADDRESS_CONSTANT):
            return MEMORY
        if qualifier[0] == ADDRESS_LOCAL:
            return LOCAL
        name = ffi.new("char[256]")
        if cl.clGetKernelArgInfo(kernel, index, CL_KERNEL_ARG_TYPE_NAME, 256, name,
                                 ffi.NULL) != CL_SUCCESS:
            return _probe(kernel, index)
        type_name = ffi.string(name).decode("ascii", "replace")
        if "sampler_t" in type_name:
            return SAMPLER
        if any(word in type_name for word in ("image", "pipe", "queue_t", "event_t")):
            return MEMORY
        return VALUE


def _probe(kernel, index: int) -> str:
    """Without metadata (programs from binaries or IL): a NULL value of pointer size is
    accepted for a buffer or local argument and refused for one passed by value.  It
    cannot tell a sampler or an image from a 64-bit scalar (the argument is set to
    NULL meanwhile; the caller's own call follows)."""
    status = lib().clSetKernelArg(kernel, index, ffi.sizeof("void *"), ffi.NULL)
    return MEMORY if status == CL_SUCCESS else UNKNOWN
