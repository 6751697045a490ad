"""OpenCL calls through the whole device path: ring, DMA, engine, backend, real OpenCL."""

import errno
import os

import pytest

from clwire import decode, encode
from conftest import wait_for_idle
from protocols import opencl_api as api
from ringutil import Allocator, PyRing, connect_guest
from vdev import Server
from vdev.client import GuestMemory

F = api.BY_NAME


@pytest.fixture
async def cl_server(nursery, sock_dir):
    srv = Server(os.path.join(sock_dir, "cl.sock"), backend="opencl", stall_timeout=0.5)
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
    status, out = await remote(cl_ring, "clGetPlatformIDs", num_entries=1, platforms=1)
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
