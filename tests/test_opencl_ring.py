"""OpenCL calls through the whole device path: ring, DMA, engine, backend, real OpenCL."""

import errno
import os

import pytest
from clwire import decode, encode
from conftest import wait_for_idle
from ringutil import Allocator, PyRing, connect_guest

from protocols import opencl_api as api
from vdev import Server
from vdev.client import GuestMemory

F = api.BY_NAME


@pytest.fixture
async def cl_server(nursery, sock_dir):
    srv = Server(os.path.join(sock_dir, "cl.sock"), backend="opencl", stall_timeout=0.5,
                 in_process=True)
    await nursery.start(srv.serve)
    yield srv
    nursery.cancel_scope.cancel()


@pytest.fixture
async def cl_ring(cl_server):
    mem = GuestMemory(16 << 20)
    cli = await connect_guest(cl_server.path, mem)
    ring = await PyRing.create(cli, mem, Allocator(mem.size))
    yield ring
    await cli.aclose()
    mem.close()


async def remote(ring, name, new_id=None, **values):
    fn = F[name]
    payload = encode(fn, new_id, **values)
    reply = ring.buffer(1 << 16)
    status, n = await ring.call(fn.opcode, payload_addr=ring.put(payload), payload_len=len(payload),
                                reply_addr=reply, reply_len=1 << 16)
    assert status == 0, f"transport error {status}"
    return decode(fn, ring.read(reply, n), **values)


async def test_platform_query_through_the_device(cl_ring):
    status, out = await remote(cl_ring, "clGetPlatformIDs", num_entries=2, platforms=2,
                               num_platforms=True)
    assert status == 0 and out["num_platforms"] >= 1
    status, out = await remote(cl_ring, "clGetPlatformInfo", object=out["platforms"][0],
                               param_name=0x0902, param_value_size=128, param_value=128)
    assert status == 0 and b"Portable Computing Language" in out["param_value"]


async def test_blocking_build_runs_off_the_poller(cl_ring):
    _, out = await remote(cl_ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(cl_ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    dev = out["devices"][0]
    assert (await remote(cl_ring, "clCreateContext", 1, properties=None, num_devices=1,
                         devices=[dev]))[0] == 0
    assert (await remote(cl_ring, "clCreateProgramWithSource", 2, context=1, count=1,
                         strings=[b"__kernel void k(__global int *a) { a[0] = 1; }"]))[0] == 0
    assert (await remote(cl_ring, "clBuildProgram", program=2, num_devices=1,
                         device_list=[dev]))[0] == 0


async def test_malformed_call_is_a_transport_error(cl_ring):
    fn = F["clGetPlatformIDs"]
    status, _ = await cl_ring.call(fn.opcode, payload_addr=cl_ring.put(b"\1"), payload_len=1,
                                   reply_addr=cl_ring.buffer(64), reply_len=64)
    assert status == -errno.EINVAL
    assert await cl_ring.call(0x7FFF) == (-errno.ENOSYS, 0)
    status, _out = await remote(cl_ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    assert status == 0, "still serving"


async def test_session_end_frees_the_guests_objects(cl_server):
    mem = GuestMemory(16 << 20)
    cli = await connect_guest(cl_server.path, mem)
    ring = await PyRing.create(cli, mem, Allocator(mem.size))
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    assert (await remote(ring, "clCreateContext", 9, properties=None, num_devices=1,
                         devices=out["devices"]))[0] == 0
    backend = cl_server.session.backend
    assert backend.handles.owned_by(os.getpid())
    await cli.aclose()
    await wait_for_idle(cl_server)
    assert not backend.handles.owned_by(os.getpid())
    mem.close()


async def test_vector_add_with_events_and_zero_copy_transfers(cl_ring):
    """A whole OpenCL program through the device: data goes by reference to guest
    memory, events are guest-assigned, results are checked."""
    import struct
    ring = cl_ring
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    dev = out["devices"][0]
    CTX, Q, A, B, C, PROG, KERN, EV_WRITE, EV_RUN, EV_READ = range(1, 11)
    assert (await remote(ring, "clCreateContext", CTX, properties=None, num_devices=1,
                         devices=[dev]))[0] == 0
    assert (await remote(ring, "clCreateCommandQueueWithProperties", Q, context=CTX, device=dev,
                         properties=[(0x1093, 2)]))[0] == 0     # CL_QUEUE_PROPERTIES: profiling
    n = 1 << 16
    a = struct.pack(f"<{n}f", *range(n))
    b = struct.pack(f"<{n}f", *(2.0 * i for i in range(n)))
    for mem in (A, B, C):
        assert (await remote(ring, "clCreateBuffer", mem, context=CTX, flags=1,
                             size=4 * n))[0] == 0
    a_gpa, b_gpa, c_gpa = ring.put(a), ring.put(b), ring.buffer(4 * n)
    assert (await remote(ring, "clEnqueueWriteBuffer", command_queue=Q, buffer=A,
                         blocking_write=0, offset=0, size=4 * n,
                         ptr=(api.HOSTDATA_RANGE, a_gpa, 4 * n), event=EV_WRITE))[0] == 0
    sg = ring.put(struct.pack("<QII", b_gpa, 2 * n, 0) + struct.pack("<QII", b_gpa + 2 * n, 2 * n, 0))
    assert (await remote(ring, "clEnqueueWriteBuffer", command_queue=Q, buffer=B,
                         blocking_write=1, offset=0, size=4 * n,
                         ptr=(api.HOSTDATA_SG, sg, 2)))[0] == 0
    src = b"__kernel void add(__global const float *a, __global const float *b, __global float *c)" \
          b" { size_t i = get_global_id(0); c[i] = a[i] + b[i]; }"
    assert (await remote(ring, "clCreateProgramWithSource", PROG, context=CTX, count=1,
                         strings=[src]))[0] == 0
    assert (await remote(ring, "clBuildProgram", program=PROG, num_devices=1, device_list=[dev],
                         options=b"\0"))[0] == 0
    assert (await remote(ring, "clCreateKernel", KERN, program=PROG, kernel_name=b"add\0"))[0] == 0
    for i, mem in enumerate((A, B, C)):
        assert (await remote(ring, "clSetKernelArg", kernel=KERN, arg_index=i,
                             arg_value=(api.KARG_MEM, mem)))[0] == 0
    assert (await remote(ring, "clSetKernelArg", kernel=KERN, arg_index=3,
                         arg_value=(api.KARG_BYTES, b"\0" * 4)))[0] == -49, "CL_INVALID_ARG_INDEX"
    assert (await remote(ring, "clEnqueueNDRangeKernel", command_queue=Q, kernel=KERN, work_dim=1,
                         global_work_offset=None, global_work_size=[n], local_work_size=None,
                         num_events_in_wait_list=1, event_wait_list=[EV_WRITE],
                         event=EV_RUN))[0] == 0
    sg_out = ring.put(struct.pack("<QII", c_gpa, 3 * n, 0) + struct.pack("<QII", c_gpa + 3 * n, n, 0))
    assert (await remote(ring, "clEnqueueReadBuffer", command_queue=Q, buffer=C, blocking_read=0,
                         offset=0, size=4 * n, ptr=(api.HOSTDATA_SG, sg_out, 2),
                         num_events_in_wait_list=1, event_wait_list=[EV_RUN],
                         event=EV_READ))[0] == 0
    assert (await remote(ring, "clWaitForEvents", num_events=1, event_list=[EV_READ]))[0] == 0
    got = struct.unpack(f"<{n}f", ring.read(c_gpa, 4 * n))
    assert got == tuple(3.0 * i for i in range(n))
    # Profiling info of the kernel's event (CL_PROFILING_COMMAND_END - START >= 0).
    _, s_ = await remote(ring, "clGetEventProfilingInfo", object=EV_RUN, param_name=0x1282,
                         param_value_size=8, param_value=8)
    _, e_ = await remote(ring, "clGetEventProfilingInfo", object=EV_RUN, param_name=0x1283,
                         param_value_size=8, param_value=8)
    assert int.from_bytes(e_["param_value"], "little") >= int.from_bytes(s_["param_value"], "little")
    for ev in (EV_WRITE, EV_RUN, EV_READ):
        assert (await remote(ring, "clReleaseEvent", event=ev))[0] == 0
    assert (await remote(ring, "clReleaseEvent", event=EV_RUN))[0] == -58
    assert (await remote(ring, "clFinish", command_queue=Q))[0] == 0


async def test_user_events_gate_commands(cl_ring):
    ring = cl_ring
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    dev = out["devices"][0]
    assert (await remote(ring, "clCreateContext", 1, properties=None, num_devices=1, devices=[dev]))[0] == 0
    assert (await remote(ring, "clCreateCommandQueue", 2, context=1, device=dev, properties=0))[0] == 0
    assert (await remote(ring, "clCreateUserEvent", 3, context=1))[0] == 0
    assert (await remote(ring, "clCreateBuffer", 4, context=1, flags=1, size=64))[0] == 0
    assert (await remote(ring, "clEnqueueFillBuffer", command_queue=2, buffer=4, pattern=b"\x5a",
                         pattern_size=1, offset=0, size=64, num_events_in_wait_list=1,
                         event_wait_list=[3], event=5))[0] == 0
    status, out = await remote(ring, "clGetEventInfo", object=5, param_name=0x11D3,
                               param_value_size=4, param_value=4)   # EXECUTION_STATUS
    assert status == 0 and int.from_bytes(out["param_value"], "little", signed=True) > 0
    assert (await remote(ring, "clSetUserEventStatus", event=3, execution_status=0))[0] == 0
    assert (await remote(ring, "clWaitForEvents", num_events=1, event_list=[5]))[0] == 0
    dst = ring.buffer(64)
    assert (await remote(ring, "clEnqueueReadBuffer", command_queue=2, buffer=4, blocking_read=1,
                         offset=0, size=64, ptr=(api.HOSTDATA_RANGE, dst, 64)))[0] == 0
    assert ring.read(dst, 64) == b"\x5a" * 64
    # Fill with a pattern whose length disagrees with pattern_size: malformed.
    fn = F["clEnqueueFillBuffer"]
    bad = encode(fn, command_queue=2, buffer=4, pattern=b"\1\2", pattern_size=1, offset=0, size=64)
    status, _ = await ring.call(fn.opcode, payload_addr=ring.put(bad), payload_len=len(bad),
                                reply_addr=ring.buffer(64), reply_len=64)
    assert status == -errno.EINVAL


async def test_handles_of_an_earlier_session_are_invalid(cl_server):
    async def session():
        mem = GuestMemory(16 << 20)
        cli = await connect_guest(cl_server.path, mem)
        return mem, cli, await PyRing.create(cli, mem, Allocator(mem.size))

    mem, cli, ring = await session()
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    assert (await remote(ring, "clCreateContext", 77, properties=None, num_devices=1,
                         devices=out["devices"]))[0] == 0
    await cli.aclose()
    mem.close()
    await wait_for_idle(cl_server)
    mem, cli, ring = await session()
    assert (await remote(ring, "clRetainContext", context=77))[0] == -34
    # Huge sizes: capped allocations on the host, the implementation's own verdict.
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    status, _ = await remote(ring, "clGetPlatformInfo", object=out["platforms"][0],
                             param_name=0x0902, param_value_size=1 << 40, param_value=1 << 40)
    assert status == 0
    fn = F["clGetPlatformIDs"]
    bad = encode(fn, num_entries=1 << 20, platforms=1 << 20)       # capacity beyond the cap
    status, _ = await ring.call(fn.opcode, payload_addr=ring.put(bad), payload_len=len(bad),
                                reply_addr=ring.buffer(64), reply_len=64)
    assert status == -errno.EINVAL
    await cli.aclose()
    mem.close()
