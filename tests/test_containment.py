"""Containment regressions: inputs that used to end the whole server (an unhandled
exception, a SIGBUS, a PoCL abort, a wedge) must end in an error for that client
only, with the server still serving the next one.

Whatever may kill a process runs in a child process (a server started with
``python -m vdev serve``, or a Python child driving the backend), never in pytest.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
import trio
from conftest import wait_for_idle
from ringutil import Allocator, PyRing, connect_guest
from test_opencl_backend import Guest, ids  # one guest process calling a backend

from protocols import vfio_user as vu
from protocols.device_abi import Reg
from protocols.device_abi import SelftestOp as Op
from protocols.vfio_user import Command, IrqIndex, IrqSetFlags
from vdev.client import VfioUserClient, VfioUserClientError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
SAMPLES = os.path.join(TESTS, "samples")
MAGIC = 0x44415641


# -- helpers ----------------------------------------------------------------------------

def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: by PID, never by name."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_server(sock_dir: str, backend: str, log_path: str) -> tuple[str, subprocess.Popen]:
    """A real server process; returns (socket path, process).  Its stderr goes to a file."""
    path = os.path.join(sock_dir, f"{backend}.sock")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path,
                                 "--backend", backend, "-q"], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None, f"server exited {proc.returncode}: {read(log_path)}"
            assert time.monotonic() < deadline, "server did not create its socket in 20 s"
            time.sleep(0.02)
    except BaseException:
        stop(proc)
        raise
    return path, proc


def stops_on_sigterm(server: subprocess.Popen, log: str) -> None:
    """SIGTERM ends the server cleanly within 5 s, whatever its threads are doing."""
    os.kill(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 5 s of SIGTERM: {read(log)}")
    assert server.returncode == 0, read(log)


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return ""


async def fresh_client_is_served(path: str, timeout: float = 10.0) -> None:
    """A new vfio-user client gets a VERSION reply and reads BAR0's magic (retrying while
    the server still tears down the previous session and refuses newcomers)."""
    last: BaseException | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                async with await VfioUserClient.connect(path, timeout=3.0) as cli:
                    caps = await cli.negotiate()
                    assert caps.get("max_msg_fds", 0) >= 1
                    assert await cli.read32(Reg.MAGIC) == MAGIC
                    return
            except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                last = exc
                await trio.sleep(0.05)
    pytest.fail(f"no fresh client was served within {timeout} s: {last!r}")


# -- 1. SET_IRQS INTx UNMASK with a resample fd that cannot be polled -------------------------

def _unpollable_fd(kind: str) -> int:
    if kind == "devnull":
        return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    fd = os.memfd_create("not-an-eventfd", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    return fd


@pytest.mark.parametrize("kind", ["devnull", "memfd"])
async def test_intx_unmask_with_unpollable_resample_fd_is_refused(server, client, kind):
    """epoll refuses /dev/null and a memfd (EPERM): the server used to accept the SET_IRQS
    and then die in its resample watcher.  It must answer with an error instead."""
    fd = _unpollable_fd(kind)
    try:
        with pytest.raises(VfioUserClientError) as exc:
            await client.request(Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
                argsz=vu.IRQ_SET_SIZE, flags=IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK,
                index=IrqIndex.INTX, start=0, count=1, data=b"")), [fd])
        assert exc.value.errno in (errno.EINVAL, errno.EPERM, errno.EBADF, errno.ENOTSUP)
    finally:
        os.close(fd)
    # Give a background watcher (if any) the chance to fail, then use the session again.
    await trio.sleep(0.2)
    assert await client.read32(Reg.MAGIC) == MAGIC
    # A real eventfd still works as the resample fd.
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK,
                              0, 1, [efd])
    finally:
        os.close(efd)
    await client.aclose()
    await wait_for_idle(server)
    await fresh_client_is_served(server.path, timeout=5)


async def test_interrupt_through_a_full_eventfd_does_not_block_the_server(server, client):
    """A client that fills its interrupt eventfd's counter (0xfffffffffffffffe) and
    hands over a blocking one: the server's next interrupt write must not block."""
    efd = os.eventfd(0, os.EFD_CLOEXEC)             # blocking, as a hostile client may pass
    try:
        os.eventfd_write(efd, 0xFFFFFFFFFFFFFFFE)
        await client.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                              0, 1, [efd])
        def raise_twice() -> None:
            server.device.irq.raise_vector(0)
            server.device.irq.raise_vector(0)
        with trio.fail_after(2):      # off the loop, so that a blocked write fails the test
            await trio.to_thread.run_sync(raise_twice, abandon_on_cancel=True)
        assert await client.read32(Reg.MAGIC) == MAGIC, "the session still answers"
    finally:
        os.close(efd)


# -- 2. DMA-mapped memfd shrunk by the client ---------------------------------------------------

class Memfd:
    """Guest RAM as a memfd, optionally sealed the way QEMU's memory-backend-memfd seals it."""

    def __init__(self, size: int, *, sealed: bool):
        self.size = size
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealed else 0)
        self.fd = os.memfd_create("ava-test-ram", flags)
        os.ftruncate(self.fd, size)
        if sealed:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        self.mm.close()        # munmap only: safe even after the file shrank
        os.close(self.fd)


async def test_shrunk_dma_memfd_does_not_kill_the_server(sock_dir, tmp_path):
    """A memfd the client can shrink after DMA_MAP: either the map is refused (not sealed
    with F_SEAL_SHRINK), or the server survives the shrink.  Never a SIGBUS."""
    log = str(tmp_path / "server.log")
    path, proc = start_server(sock_dir, "test", log)
    mem = Memfd(4 << 20, sealed=False)
    try:
        cli = await VfioUserClient.connect(path)
        try:
            await cli.negotiate()
            refused = False
            try:
                await cli.dma_map(0x100000000, mem.size, fd=mem.fd)
            except VfioUserClientError as exc:
                refused = True
                assert exc.errno != 0
            if not refused:
                ring = await PyRing.create(cli, mem, Allocator(mem.size))
                data = os.urandom(1000)
                src, dst = ring.put(data), ring.buffer(4096)
                assert await ring.call(Op.ECHO, payload_addr=src, payload_len=len(data),
                                       reply_addr=dst, reply_len=4096) == (0, len(data))
                assert ring.read(dst, len(data)) == data
                # From here on the test must not touch its own mapping either.
                os.ftruncate(mem.fd, 0)
                try:
                    # Wake the engine: it reads the ring's tail from the shrunk file.
                    await cli.write32(Reg.DOORBELL, ring.queue, posted=True)
                    await trio.sleep(0.5)
                    await cli.read32(Reg.MAGIC)
                except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError):
                    pass    # judged below by the server's exit status
        finally:
            await cli.aclose()
        await trio.sleep(1.0)       # session teardown touches the rings too
        assert proc.poll() is None, \
            f"server died (exit status {proc.returncode}) after the client shrank its " \
            f"DMA-mapped memfd: {read(log)}"
        await fresh_client_is_served(path)
        assert proc.poll() is None
    finally:
        mem.close()
        stop(proc)


async def test_sealed_memfd_maps_and_serves_rings(sock_dir, tmp_path):
    """QEMU's memfd backend seals its RAM against shrinking: such a map works end to end."""
    log = str(tmp_path / "server.log")
    path, proc = start_server(sock_dir, "test", log)
    mem = Memfd(4 << 20, sealed=True)
    try:
        cli = await connect_guest(path, mem)
        try:
            ring = await PyRing.create(cli, mem, Allocator(mem.size))
            for size in (1, 3000, 64 << 10):
                data = os.urandom(size)
                src, dst = ring.put(data), ring.buffer(size)
                assert await ring.call(Op.ECHO, payload_addr=src, payload_len=size,
                                       reply_addr=dst, reply_len=size) == (0, size)
                assert ring.read(dst, size) == data
            with pytest.raises(OSError):
                os.ftruncate(mem.fd, 0)         # the seal holds
        finally:
            await cli.aclose()
        await fresh_client_is_served(path)
        assert proc.poll() is None, read(log)
    finally:
        mem.close()
        stop(proc)


# -- 3. the backend's memory cap counts the new buffer ------------------------------------------

CL_MEM_READ_WRITE = 1
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
MiB = 1 << 20
LIMIT_STATUS = (-4, -5)     # CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_RESOURCES


def test_memory_cap_counts_the_buffer_being_created():
    from host_backend import OpenClBackend
    small = OpenClBackend(max_bytes=3 * MiB)
    try:
        g = Guest(small)
        ctx, _ = g.context()
        made = []
        for n in range(3):
            buf = next(ids)
            status, _ = g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE,
                               size=MiB, host_ptr=None)
            assert status == 0, f"buffer {n + 1} of 1 MiB under a 3 MiB cap: {status}"
            made.append(buf)
        status, _ = g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                           size=MiB, host_ptr=None)
        assert status in LIMIT_STATUS, \
            f"a 4th 1 MiB buffer exceeds the 3 MiB cap but got status {status} " \
            f"(bytes in use {small.handles.bytes_used})"
        assert small.handles.bytes_used <= 3 * MiB
        # Freeing one makes room for exactly one again.
        assert g.call("clReleaseMemObject", memobj=made.pop())[0] == 0
        assert g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                      size=MiB, host_ptr=None)[0] == 0
        # Another guest process of the session is still served.
        assert Guest(small, owner=2000).platform()
    finally:
        small.close()


def test_single_buffer_larger_than_the_cap_is_refused():
    from host_backend import OpenClBackend
    small = OpenClBackend(max_bytes=3 * MiB)
    try:
        g = Guest(small)
        ctx, _ = g.context()
        status, _ = g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                           size=4 * MiB, host_ptr=None)
        assert status in LIMIT_STATUS, f"a 4 MiB buffer under a 3 MiB cap got status {status}"
        assert small.handles.bytes_used == 0
        assert g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                      size=MiB, host_ptr=None)[0] == 0
    finally:
        small.close()


# -- 4. a device-side queue aborts PoCL ---------------------------------------------------------

DEVICE_QUEUE_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from host_backend import OpenClBackend
    from test_opencl_backend import Guest, ids
    backend = OpenClBackend()
    g = Guest(backend)
    ctx, dev = g.context()
    print("context ok", flush=True)
    status, _ = g.call("clCreateCommandQueueWithProperties", next(ids), context=ctx, device=dev,
                       properties=[(0x1093, (1 << 2) | (1 << 0))])
    print("device queue status", status, flush=True)
    status, _ = g.call("clCreateCommandQueueWithProperties", next(ids), context=ctx, device=dev,
                       properties=[(0x1093, 1 << 1)])
    print("profiling queue status", status, flush=True)
    backend.close()
    print("still alive", flush=True)
""")


def test_device_side_queue_is_an_error_not_an_abort(tmp_path):
    script = DEVICE_QUEUE_SCRIPT.format(root=ROOT, tests=TESTS)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    out = res.stdout
    assert "context ok" in out, res.stderr[-2000:]
    assert res.returncode == 0 and "still alive" in out, \
        f"exit status {res.returncode}; stdout: {out!r}; stderr: {res.stderr[-1500:]!r}"
    status = int(out.split("device queue status", 1)[1].split()[0])
    assert status < 0, "PoCL has no device-side queues: the call must fail"
    assert "profiling queue status 0" in out


# -- 5. an application killed while it waits on its own user event ----------------------------

WAITER_C = r"""
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static cl_context ctx;
static pthread_barrier_t started;

static void *waiter(void *arg)
{
    (void)arg;
    cl_int err;
    cl_event ev = clCreateUserEvent(ctx, &err);
    if (err != CL_SUCCESS) { fprintf(stderr, "clCreateUserEvent: %d\n", err); exit(1); }
    pthread_barrier_wait(&started);
    err = clWaitForEvents(1, &ev);
    fprintf(stderr, "clWaitForEvents returned %d\n", err);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    if ((err = clGetPlatformIDs(1, &platform, NULL)) != CL_SUCCESS) {
        fprintf(stderr, "clGetPlatformIDs: %d\n", err);
        return 1;
    }
    if ((err = clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL)) != CL_SUCCESS) {
        fprintf(stderr, "clGetDeviceIDs: %d\n", err);
        return 1;
    }
    ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        fprintf(stderr, "clCreateContext: %d\n", err);
        return 1;
    }
    if (threads <= 1) {
        cl_event ev = clCreateUserEvent(ctx, &err);
        if (err != CL_SUCCESS) return 1;
        printf("waiting\n");
        fflush(stdout);
        err = clWaitForEvents(1, &ev);
        fprintf(stderr, "clWaitForEvents returned %d\n", err);
        return 2;
    }
    pthread_barrier_init(&started, NULL, threads + 1);
    pthread_t *tids = calloc(threads, sizeof *tids);
    for (int i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, waiter, NULL);
    pthread_barrier_wait(&started);
    usleep(200000);             /* every thread is inside clWaitForEvents */
    printf("waiting\n");
    fflush(stdout);
    for (int i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 2;
}
"""


@pytest.fixture(scope="module")
def waiter_exe(tmp_path_factory):
    d = tmp_path_factory.mktemp("waiter")
    src = d / "waiter.c"
    src.write_text(WAITER_C)
    exe = d / "waiter"
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(src), "-lOpenCL"], check=True,
                   timeout=120)
    return exe


@pytest.fixture(scope="module")
def vadd_exe(tmp_path_factory):
    exe = tmp_path_factory.mktemp("vadd") / "vadd"
    subprocess.run(["gcc", "-o", str(exe), os.path.join(SAMPLES, "vadd.c"), "-lOpenCL"],
                   check=True, timeout=120)
    return exe


def device_env(shim, socket):
    lib, vendors = shim
    return dict(os.environ, AVA_VDEV_SOCKET=socket, OCL_ICD_VENDORS=str(vendors),
                OCL_ICD_FILENAMES=str(lib))


def kill_waiting_app(exe, env, threads: int) -> None:
    """Start the waiter, wait (bounded) for "waiting", let the waits reach the host, SIGKILL it."""
    app = subprocess.Popen([str(exe), str(threads)], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = []

        def read_line():
            got.append(app.stdout.readline())

        reader = threading.Thread(target=read_line, daemon=True)
        reader.start()
        reader.join(timeout=60)
        if not (got and "waiting" in got[0]):
            app.wait(timeout=10)
            pytest.fail(f"the waiter never reported 'waiting' (exit {app.returncode}): "
                        f"{got!r} {app.stderr.read()}")
        time.sleep(0.5)
        assert app.poll() is None, "the waiter's clWaitForEvents returned on its own"
    finally:
        if app.poll() is None:
            os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=10)
        app.stdout.close()
        app.stderr.close()


@pytest.fixture
def cl_server_proc(tmp_path):
    d = tempfile.mkdtemp(prefix="ava-ct-", dir="/tmp")
    log = str(tmp_path / "server.log")
    path, proc = start_server(d, "opencl", log)
    try:
        yield path, proc, log
    finally:
        stop(proc, timeout=15)
        shutil.rmtree(d, ignore_errors=True)


def served_within(argv, env, server, log, seconds: float, ok) -> subprocess.CompletedProcess:
    """Run ``argv`` through the device until ``ok(result)`` or ``seconds`` pass (the server
    may still be tearing the killed app's session down and refuse newcomers meanwhile).
    Fails at once if the server died."""
    deadline = time.monotonic() + seconds
    res = None
    while True:
        assert server.poll() is None, \
            f"server exited with status {server.returncode}: {read(log)}"
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=left,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            break
        if ok(res):
            return res
        time.sleep(0.2)
    detail = "timed out" if res is None else \
        f"exit {res.returncode}: {res.stdout[-300:]!r} {res.stderr[-800:]!r}"
    pytest.fail(f"{argv[0]} through the device did not succeed within {seconds} s ({detail}); "
                f"server exit {server.poll()}: {read(log)}")


def test_app_killed_in_wait_for_its_user_event_leaves_server_serving(shim, waiter_exe, vadd_exe,
                                                                     cl_server_proc):
    path, server, log = cl_server_proc
    env = device_env(shim, path)
    kill_waiting_app(waiter_exe, env, threads=1)
    time.sleep(2.0)
    assert server.poll() is None, \
        f"server exited with status {server.returncode} after the waiting app was killed: {read(log)}"
    res = served_within([str(vadd_exe)], env, server, log, 120,
                        lambda r: r.returncode == 0)
    assert "1048576 elements correct" in res.stdout
    assert server.poll() is None, read(log)


def test_app_killed_with_sixteen_threads_waiting_does_not_wedge_the_server(shim, waiter_exe,
                                                                           cl_server_proc):
    path, server, log = cl_server_proc
    env = device_env(shim, path)
    kill_waiting_app(waiter_exe, env, threads=16)
    served_within(["clinfo"], env, server, log, 10,
                  lambda r: r.returncode == 0 and re.search(r"Number of platforms\s+1\n", r.stdout))
    time.sleep(1.0)
    assert server.poll() is None, \
        f"server exited with status {server.returncode} after serving clinfo: {read(log)}"
    stops_on_sigterm(server, log)


SPIN_PY = """
import pyopencl as cl
ctx = cl.create_some_context(interactive=False)
q = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void spin(__global int *a) { for (;;) a[0]++; }").build()
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4)
prg.spin(q, (1,), None, buf)
q.flush()
print("spinning", flush=True)
q.finish()
"""


def test_sigterm_ends_the_server_while_a_kernel_never_ends(shim, cl_server_proc):
    """An application killed while its kernel spins for ever: the server still stops
    within 5 s of SIGTERM (nothing at exit waits for the stuck worker threads)."""
    path, server, log = cl_server_proc
    env = dict(device_env(shim, path), PYOPENCL_CTX="0")
    app = subprocess.Popen([sys.executable, "-c", SPIN_PY], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = []
        reader = threading.Thread(target=lambda: got.append(app.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert got and "spinning" in got[0], f"the kernel never started: {got!r}"
        time.sleep(0.5)
    finally:
        app.kill()
        app.wait(timeout=10)
        app.stdout.close()
        app.stderr.close()
    time.sleep(0.5)
    assert server.poll() is None, f"the server died with its application: {read(log)}"
    stops_on_sigterm(server, log)
