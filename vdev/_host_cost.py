"""The host's own time per forwarded call, without a guest: what the ring engine and
the OpenCL backend spend between a command's arrival in the ring and its completion.

A ring in a memfd stands for guest RAM, as the executor maps it; commands are written
into it here and ``RingEngine.poll_once`` runs them on this thread, so the figure is
the engine's and the backend's time alone: no transport, no guest stub, no other
thread to wake.  Each call is measured twice, by the backend's fast path and by its
interpreter (``OpenClBackend.fast_path`` off), the path every call took before.
``python -m vdev.bench opencl`` prints the figures beside the end-to-end ones.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from host_backend import OpenClBackend
from protocols import device_abi as abi
from protocols import opencl_api as api
from protocols.opencl_pywire import decode, encode

from ._dma import DmaMap
from ._rings import RingEngine

IOVA = 1 << 32
RAM_BYTES = 4 << 20
SLOTS = 64
PAYLOAD_AT = 1 << 20            # offsets in the RAM, past the ring
REPLY_AT = 2 << 20
OWNER = 4242
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
CL_MEM_READ_WRITE = 1
KERNEL = (b"__kernel void inc(__global int *a, __global int *b, int k, float f)"
          b" { size_t i = get_global_id(0); a[i] += k + (int)f + b[0]; }")
F = api.BY_NAME


class _Bench:
    """One backend, one ring, and the objects the measured calls name."""

    def __init__(self, backend: OpenClBackend, ram: mmap.mmap, engine: RingEngine):
        self.backend, self.ram, self.engine = backend, ram, engine
        self.ids = itertools.count(1000)
        self.index = 0

    def call(self, name: str, new_id: int | None = None, **values: Any) -> dict[str, Any]:
        fn = F[name]
        status, out = decode(fn, self.backend.call(fn, encode(fn, new_id, **values), OWNER),
                             **values)
        if status != 0:
            raise RuntimeError(f"{name} answered {status} while setting up")
        return out

    def new(self, name: str, **values: Any) -> int:
        handle = next(self.ids)
        self.call(name, handle, **values)
        return handle

    def through_ring(self, name: str, n: int, **values: Any) -> float:
        """Microseconds per call of ``n`` identical calls, each published and run alone."""
        fn = F[name]
        payload = encode(fn, **values)
        self.ram[PAYLOAD_AT:PAYLOAD_AT + len(payload)] = payload
        ring_tail = memoryview(self.ram).cast("Q")
        # Built once; each publication only numbers it (building it anew per command
        # would leave garbage whose collection lands in the measured time).
        command = bytearray(abi.Command.build(dict(
            opcode=fn.opcode, flags=0, payload_len=len(payload), seq=0,
            payload_addr=IOVA + PAYLOAD_AT, reply_addr=IOVA + REPLY_AT, reply_len=4096,
            reserved=0, arg0=0, arg1=0, arg2=0)))
        seq_at = abi.COMMAND_SEQ
        spent = 0.0
        for _ in range(n):
            index = self.index
            command[seq_at:seq_at + 8] = index.to_bytes(8, "little")
            offset = abi.command_offset(SLOTS, index)
            self.ram[offset:offset + abi.COMMAND_SIZE] = command
            ring_tail[abi.RING_TAIL // 8] = index + 1
            start = time.perf_counter()
            self.engine.poll_once()
            spent += time.perf_counter() - start
            self.index = index + 1
        done = abi.Completion.parse(self.ram[abi.completion_offset(SLOTS, self.index - 1):][:16])
        if done.seq != self.index - 1 or done.status != 0:
            raise RuntimeError(f"{name} through the ring: completion {done}")
        status = int.from_bytes(self.ram[REPLY_AT:REPLY_AT + 8], "little", signed=True)
        if status != 0:
            raise RuntimeError(f"{name} through the ring answered {status}")
        return spent / n * 1e6


@contextmanager
def _bench() -> Iterator[_Bench]:
    fd = os.memfd_create("ava-host-cost", os.MFD_ALLOW_SEALING)
    backend = OpenClBackend()
    try:
        os.ftruncate(fd, RAM_BYTES)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        ram = mmap.mmap(fd, RAM_BYTES)
        dma = DmaMap()
        dma.add(IOVA, RAM_BYTES, 3, 0, os.dup(fd))
        backend.prepare()
        if backend.lane is not None:
            # No guest publishes meanwhile: the lane's wait for a next command would be
            # counted as the host's time.
            backend.lane.spin_ns = 0
        engine = RingEngine(dma, backend, raise_irq=lambda _q: None,
                            fail_queue=lambda _q, _e: None)
        engine.enable_queue(0, IOVA, SLOTS, OWNER)
        try:
            yield _Bench(backend, ram, engine)
        finally:
            engine.disable_queue(0)
            ram.close()
    finally:
        backend.close()
        os.close(fd)


def host_cost(n: int = 3000) -> dict[str, dict[str, float]]:
    """{call: {"lane": us, "fast": us, "interpreter": us}} (the backend's C lane on,
    then its Python fast path alone, then its interpreter alone) for a forwarded null call (a context's
    reference count), a kernel argument naming a buffer, and a launch whose kernel
    names two buffers (no event asked for); each the best of three rounds of ``n``."""
    with _bench() as b:
        platform = b.call("clGetPlatformIDs", num_entries=1, platforms=1,
                          num_platforms=None)["platforms"][0]
        device = b.call("clGetDeviceIDs", platform=platform, device_type=CL_DEVICE_TYPE_ALL,
                        num_entries=1, devices=1)["devices"][0]
        ctx = b.new("clCreateContext", properties=None, num_devices=1, devices=[device])
        queue = b.new("clCreateCommandQueue", context=ctx, device=device, properties=0)
        prog = b.new("clCreateProgramWithSource", context=ctx, count=1, strings=[KERNEL])
        b.call("clBuildProgram", program=prog, num_devices=1, device_list=[device],
               options=b"\0")
        kernel = b.new("clCreateKernel", program=prog, kernel_name=b"inc\0")
        bufs = [b.new("clCreateBuffer", context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                      host_ptr=None) for _ in range(2)]
        args = [(api.KARG_MEM, bufs[0]), (api.KARG_MEM, bufs[1]),
                (api.KARG_BYTES, (1).to_bytes(4, "little")), (api.KARG_BYTES, bytes(4))]
        for index, value in enumerate(args):
            b.call("clSetKernelArg", kernel=kernel, arg_index=index, arg_value=value)
        calls: dict[str, tuple[str, dict[str, Any]]] = {
            "null": ("clGetContextInfo", dict(
                object=ctx, param_name=CL_CONTEXT_REFERENCE_COUNT, param_value_size=4,
                param_value=4, param_value_size_ret=None)),
            "set_arg": ("clSetKernelArg", dict(kernel=kernel, arg_index=0, arg_value=args[0])),
            "launch": ("clEnqueueNDRangeKernel", dict(
                command_queue=queue, kernel=kernel, work_dim=1, global_work_offset=None,
                global_work_size=[1024], local_work_size=None, num_events_in_wait_list=0,
                event_wait_list=None, event=0)),
        }
        figures: dict[str, dict[str, float]] = {}
        for key, (name, values) in calls.items():
            figures[key] = {}
            for path in ("lane", "fast", "interpreter"):
                b.backend.fast_path = path != "interpreter"
                b.backend.use_lane = path == "lane"
                best = float("inf")
                for _ in range(3):
                    best = min(best, b.through_ring(name, n, **values))
                    b.call("clFinish", command_queue=queue)     # launches end between rounds
                figures[key][path] = best
        b.backend.fast_path = b.backend.use_lane = True
        return figures
