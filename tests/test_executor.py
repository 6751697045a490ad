"""The executor process: a VM's OpenCL work runs in a sandboxed child of the device
server.  When it dies (killed, aborted, a kernel that faults, a kernel past the time
limit, a hang) the server completes what was in flight with an error, the guest
process's old contexts fail cleanly, new contexts work, and the vfio-user session
(here: the application's own loopback connection) never notices.

Everything that may die runs in a child process; pytest only watches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import trio
from ringutil import Allocator, PyRing, connect_guest
from test_containment import ROOT, device_env, read, stop, stops_on_sigterm

from protocols import executor as xp
from protocols import opencl_api as api
from protocols.device_abi import QReg, QueueCtrl, Reg

#: A guest application: a kernel that works, then a command the test breaks, then
#: what a real application does after a GPU reset (old context fails, new one works).
RESET_APP = r"""
import sys, numpy as np, pyopencl as cl
mode = sys.argv[1]
SRC = '''
__kernel void add(__global const float *a, __global const float *b, __global float *c)
{ int i = get_global_id(0); c[i] = a[i] + b[i]; }
__kernel void spin(__global int *a) { for (;;) a[0]++; }
__kernel void poke(__global int *a, ulong addr) { *(volatile __global int *)addr = a[0]; }
__kernel void trap(__global int *a) { if (a[0] != 12345) __builtin_trap(); }
'''
def vadd(ctx):
    q = cl.CommandQueue(ctx)
    prg = cl.Program(ctx, SRC).build()
    a = np.arange(4096, dtype=np.float32); b = np.ones(4096, dtype=np.float32)
    mf = cl.mem_flags
    da = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a)
    db = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=b)
    dc = cl.Buffer(ctx, mf.WRITE_ONLY, a.nbytes)
    prg.add(q, a.shape, None, da, db, dc)
    c = np.empty_like(a); cl.enqueue_copy(q, c, dc); q.finish()
    assert (c == a + b).all()
    return q, prg
platform = cl.get_platforms()[0]
device = platform.get_devices()[0]
ctx = cl.Context([device])
q, prg = vadd(ctx)
print("ok before", flush=True)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4)
if mode == "segv":
    prg.poke(q, (1,), None, buf, np.uint64(16))
elif mode == "trap":
    prg.trap(q, (1,), None, buf)
elif mode == "spin":
    prg.spin(q, (1,), None, buf)
q.flush()
print("running", flush=True)
if mode == "later":         # the next call goes out once the test broke the executor
    import time; time.sleep(2)
try:
    q.finish()
    print("finish returned normally", flush=True)
except cl.Error as exc:
    print("in flight:", exc.code, flush=True)
try:
    cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 4)
    print("old context still works", flush=True)
except cl.Error as exc:
    print("old context:", exc.code, flush=True)
ctx2 = cl.Context([device])
vadd(ctx2)
print("new context works", flush=True)
"""
CL_OUT_OF_RESOURCES = -5


def executor_of(server_pid: int, timeout: float = 30.0, not_pid: int | None = None) -> int:
    """The PID of the server's executor child (waits for one, other than ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == not_pid:
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == server_pid and b"vdev._executor_child" in cmd:
                return int(entry)
        time.sleep(0.05)
    pytest.fail(f"server {server_pid} has no executor after {timeout} s")


def executors_started(log: str) -> list[int]:
    """The PIDs of the executors that served sessions, in order (from the server's log):
    one started for a session, or a standby a session took."""
    with open(log) as f:
        return [int(a or b) for a, b in re.findall(
            r"executor started \(pid (\d+)|executor pid (\d+), started ahead, serves", f.read())]


@pytest.fixture
def cl_server(tmp_path):
    """An OpenCL device server with a 3 s command limit, in its own process."""
    d = tempfile.mkdtemp(prefix="ava-ex-", dir="/tmp")
    log = str(tmp_path / "server.log")
    path = os.path.join(d, "cl.sock")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path,
                                 "--backend", "opencl", "--command-timeout", "3"], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None, read(log)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield path, proc, log
    finally:
        stop(proc, timeout=15)
        shutil.rmtree(d, ignore_errors=True)


def run_app(env, mode: str, on_running=None, timeout: float = 180.0) -> list[str]:
    """Run RESET_APP; ``on_running()`` is called once its broken command is in flight."""
    app = subprocess.Popen([sys.executable, "-c", RESET_APP, mode], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    running = threading.Event()

    def reader() -> None:
        for line in app.stdout:
            lines.append(line.strip())
            if line.startswith("running"):
                running.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if on_running is not None:
            assert running.wait(timeout), f"the app never got going: {lines} {app.stderr.read()}"
            time.sleep(0.5)
            on_running()
        app.wait(timeout=timeout)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        t.join(timeout=10)
        app.stdout.close()
    err = app.stderr.read()
    app.stderr.close()
    assert app.returncode == 0, f"app exit {app.returncode}: {lines} {err[-2000:]}"
    return lines


def check_reset(lines: list[str], log: str, cause: str) -> None:
    assert lines[0] == "ok before", lines
    assert f"in flight: {CL_OUT_OF_RESOURCES}" in lines, lines
    assert f"old context: {CL_OUT_OF_RESOURCES}" in lines, lines
    assert lines[-1] == "new context works", lines
    text = read(log)
    assert cause in text and "a new executor starts" in text, text


@pytest.mark.parametrize("how,cause", [
    ("SIGKILL", "was killed by SIGKILL"),
    ("SIGABRT", "was killed by SIGABRT"),       # what PoCL's abort() does
    ("SIGSTOP", "stopped answering"),           # a wedged executor: reset by the heartbeat
])
def test_executor_death_is_a_device_reset_for_its_contexts(shim, cl_server, how, cause):
    path, server, log = cl_server
    env = dict(device_env(shim, path), PYOPENCL_CTX="0")
    victim: list[int] = []

    def break_it() -> None:
        victim.append(executor_of(server.pid))
        os.kill(victim[0], getattr(signal, how))
        if how == "SIGABRT":
            # LLVM (inside PoCL) catches SIGABRT to print a trace and returns, leaving the
            # default action in place; abort() then raises it again, as this does.
            time.sleep(0.2)
            os.kill(victim[0], signal.SIGABRT)

    lines = run_app(env, "later" if how == "SIGSTOP" else "spin", break_it)
    check_reset(lines, log, cause)
    assert server.poll() is None, read(log)
    started = executors_started(log)
    assert len(started) >= 2 and started[0] == victim[0] and victim[0] not in started[1:], started
    stops_on_sigterm(server, log)


@pytest.mark.parametrize("mode,signame", [("segv", "SIGSEGV"), ("trap", "SIGILL")])
def test_kernel_that_faults_resets_only_its_executor(shim, cl_server, mode, signame):
    """A kernel writing to address 16, or trapping, ends the executor inside PoCL."""
    path, server, log = cl_server
    lines = run_app(dict(device_env(shim, path), PYOPENCL_CTX="0"), mode)
    check_reset(lines, log, f"was killed by {signame}")
    assert server.poll() is None, read(log)


def test_runaway_kernel_is_stopped_at_the_command_limit(shim, cl_server):
    """for(;;) with a 3 s limit: the app's clFinish fails after about 3 s, by itself."""
    path, _server, log = cl_server
    t0 = time.monotonic()
    lines = run_app(dict(device_env(shim, path), PYOPENCL_CTX="0"), "spin")
    check_reset(lines, log, "ran for")
    assert "limit 3 s" in read(log)
    assert time.monotonic() - t0 < 120


async def test_runaway_kernel_of_a_departed_process_is_stopped_too(cl_server):
    """As in a VM: the session (QEMU's) stays, the guest process that launched a
    kernel that never ends goes away (its queue released).  The kernel does not run
    for ever: the executor is reset at the limit, and the same session's next queue
    runs OpenCL again."""
    from test_opencl_ring import remote

    from vdev.client import GuestMemory
    path, _server, log = cl_server
    mem = GuestMemory(16 << 20)
    cli = await connect_guest(path, mem)
    try:
        alloc = Allocator(mem.size)
        ring = await PyRing.create(cli, mem, alloc)
        _ctx, queue, _buf, _prog, kern = await spin_kernel(ring)
        assert (await remote(ring, "clEnqueueNDRangeKernel", command_queue=queue, kernel=kern,
                             work_dim=1, global_work_offset=None, global_work_size=[1],
                             local_work_size=None))[0] == 0
        assert (await remote(ring, "clFlush", command_queue=queue))[0] == 0
        await ring.qwrite(QReg.CTRL, QueueCtrl.RELEASE)         # its process is gone
        with trio.fail_after(30):
            while "ran for" not in read(log):
                await trio.sleep(0.1)
        fresh = await PyRing.create(cli, mem, alloc)
        with trio.fail_after(30):
            status, out = await remote(fresh, "clGetPlatformIDs", num_entries=1, platforms=1)
        assert status == 0 and out["platforms"], "the session's next queue is served"
        assert await cli.read32(Reg.MAGIC) == 0x44415641, "the session itself never noticed"
    finally:
        await cli.aclose()
        mem.close()
    assert len(executors_started(log)) == 2, read(log)


async def spin_kernel(ring):
    """A context, queue, buffer and a kernel that never ends, through raw ring calls."""
    from test_opencl_ring import remote
    _, out = await remote(ring, "clGetPlatformIDs", num_entries=1, platforms=1)
    _, out = await remote(ring, "clGetDeviceIDs", platform=out["platforms"][0],
                          device_type=0xFFFFFFFF, num_entries=1, devices=1)
    dev = out["devices"][0]
    CTX, Q, BUF, PROG, KERN = range(1, 6)
    assert (await remote(ring, "clCreateContext", CTX, properties=None, num_devices=1,
                         devices=[dev]))[0] == 0
    assert (await remote(ring, "clCreateCommandQueue", Q, context=CTX, device=dev,
                         properties=0))[0] == 0
    assert (await remote(ring, "clCreateBuffer", BUF, context=CTX, flags=1, size=4))[0] == 0
    src = b"__kernel void spin(__global int *a) { for (;;) a[0]++; }"
    assert (await remote(ring, "clCreateProgramWithSource", PROG, context=CTX, count=1,
                         strings=[src]))[0] == 0
    assert (await remote(ring, "clBuildProgram", program=PROG, num_devices=1, device_list=[dev],
                         options=b"\0"))[0] == 0
    assert (await remote(ring, "clCreateKernel", KERN, program=PROG, kernel_name=b"spin\0"))[0] == 0
    assert (await remote(ring, "clSetKernelArg", kernel=KERN, arg_index=0,
                         arg_value=(api.KARG_MEM, BUF)))[0] == 0
    return CTX, Q, BUF, PROG, KERN


# -- the standby executor ---------------------------------------------------------------------

VADD_APP = r"""
import numpy as np, pyopencl as cl
ctx = cl.Context([cl.get_platforms()[0].get_devices()[0]])
q = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void twice(__global int *a) { a[get_global_id(0)] *= 2; }").build()
a = np.arange(1024, dtype=np.int32)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
prg.twice(q, a.shape, None, buf)
out = np.empty_like(a); cl.enqueue_copy(q, out, buf); q.finish()
assert (out == 2 * a).all()
print("twice ok")
"""


def run_vadd(env) -> None:
    res = subprocess.run([sys.executable, "-c", VADD_APP], env=env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0 and res.stdout.strip() == "twice ok", res.stderr[-2000:]


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_standby_executor_serves_each_next_client(shim, cl_server):
    """``vdev serve`` starts an executor ahead, before any client: the first client's
    session takes it (its lines then name that client), and once the session is over
    the next standby starts.  It loads the OpenCL declarations the server prepared.
    Nothing is left when the server stops."""
    path, server, log = cl_server
    standby = executor_of(server.pid)
    with open(f"/proc/{standby}/environ", "rb") as f:
        environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    for name, memfd in ((xp.PREPARED_ENV, "ava-cl-declarations"), (xp.LANE_ENV, "ava-lane")):
        handed = environ.get(name.encode(), b"").decode()
        assert handed.startswith("/proc/self/fd/"), f"the server prepared {memfd}"
        fd = handed.rsplit("/", 1)[1]
        assert os.readlink(f"/proc/{standby}/fd/{fd}").startswith(f"/memfd:{memfd}")
        sealed = os.open(f"/proc/{standby}/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.write(sealed, b"import os")              # sealed: no executor changes it
        finally:
            os.close(sealed)
    env = dict(device_env(shim, path), PYOPENCL_CTX="0")
    run_vadd(env)
    text = read(log)
    assert re.search(rf"client#1 \(pid \d+\): executor pid {standby}, started ahead, serves",
                     text), text
    assert re.search(rf"\[client#1 \(pid \d+\), pid {standby}\] INFO: serving client#1", text), \
        "after the hand-over the executor's lines name the client"
    assert executors_started(log) == [standby], text
    assert "prepared declarations" not in text and "other declarations" not in text, \
        "the executor loaded what the server prepared"
    assert "lane is off" not in text, text
    deadline = time.monotonic() + 20        # (said when the session has ended)
    while not re.search(lane_line := r"of them by the fast path, [1-9]\d* of those by the C lane",
                        read(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(lane_line, read(log)), \
        "the executor's lane, loaded from the server's memfd in its sandbox, answered calls"
    nxt = executor_of(server.pid, not_pid=standby)
    assert f"started a standby executor (pid {nxt}" in read(log)
    run_vadd(env)
    assert executors_started(log) == [standby, nxt], read(log)
    assert not os.path.exists(f"/proc/{standby}"), "the first client's executor ended with it"
    third = executor_of(server.pid, not_pid=nxt)
    stops_on_sigterm(server, log)
    assert not os.path.exists(f"/proc/{third}"), "the standby ends with the server"


def thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of ``pid`` (nice is a thread's on Linux)."""
    nices = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                nices.append(int(f.read().rsplit(")", 1)[1].split()[16]))
        except OSError:
            continue        # a thread that ended meanwhile
    return nices


HOLD_APP = VADD_APP + r"""
sys.stdout.flush()
sys.stdin.readline()        # connected until told
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the server gives a standby its priority back "
                                               "only as root")
def test_when_clients_come_and_go_the_next_standby_starts_during_a_session(shim, cl_server):
    """After a short session (a host process over loopback, one of a series), a session
    that takes the standby starts the next one at once, at nice 19, so the next client
    finds it ready (it used to start when the session ended, and pyopencl's examples,
    one after another, waited about 50 ms each for it).  A session that takes it gives
    it back the server's priority, every thread of it."""
    path, server, log = cl_server
    env = dict(device_env(shim, path), PYOPENCL_CTX="0")
    first = executor_of(server.pid)
    run_vadd(env)                      # short: the next sessions churn
    serving, ended = executor_of(server.pid, not_pid=first), {first}
    for _ in range(2):                 # a standby started after a session, then during one
        app = subprocess.Popen([sys.executable, "-c", "import sys\n" + HOLD_APP], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            assert app.stdout.readline().strip() == "twice ok", app.stderr.read()
            executors = children(server.pid) - ended
            assert serving in executors and len(executors) == 2, (executors, read(log))
            (spare,) = executors - {serving}
            assert set(thread_nices(serving)) == {os.getpriority(os.PRIO_PROCESS, server.pid)}, \
                "the session's executor runs at the server's priority"
            assert set(thread_nices(spare)) == {19}, "the next standby waits at nice 19"
            assert f"started a standby executor (pid {spare}, backend opencl) for the next " \
                   "client, at nice 19 until one takes it" in read(log)
        finally:
            app.communicate("\n", timeout=60)
        assert app.returncode == 0, app.stderr[-2000:]
        ended.add(serving)
        serving = spare
    assert len(executors_started(log)) == 3, read(log)
    stops_on_sigterm(server, log)


def test_a_standby_that_died_while_it_waited_is_replaced(shim, cl_server):
    path, server, log = cl_server
    standby = executor_of(server.pid)
    os.kill(standby, signal.SIGKILL)
    run_vadd(dict(device_env(shim, path), PYOPENCL_CTX="0"))
    text = read(log)
    assert f"the standby executor (pid {standby}) was killed by SIGKILL while it waited" in text
    started = executors_started(log)
    assert len(started) == 1 and started[0] != standby, text
    assert "started ahead, serves" not in text, text


def test_no_standby_starts_an_executor_for_each_client(shim, tmp_path):
    d = tempfile.mkdtemp(prefix="ava-ex-", dir="/tmp")
    log = str(tmp_path / "server.log")
    path = os.path.join(d, "cl.sock")
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path,
                                   "--backend", "opencl", "--no-standby"], cwd=ROOT,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert server.poll() is None and time.monotonic() < deadline, read(log)
            time.sleep(0.02)
        assert not children(server.pid), "no executor before a client needs one"
        run_vadd(dict(device_env(shim, path), PYOPENCL_CTX="0"))
        text = read(log)
        assert re.search(r"client#1 \(pid \d+\): executor started \(pid", text), text
        assert "standby" not in text, text
        stops_on_sigterm(server, log)
    finally:
        stop(server, timeout=15)
        shutil.rmtree(d, ignore_errors=True)


# -- the sandbox ----------------------------------------------------------------------------

def _status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_running_executor_is_unprivileged_and_has_no_network(shim, cl_server):
    path, server, _log = cl_server
    seen: dict[str, object] = {}

    def inspect() -> None:
        pid = executor_of(server.pid)
        seen["status"] = _status_fields(pid)
        seen["ns"] = {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("net", "mnt", "ipc", "uts")}

    lines = run_app(dict(device_env(shim, path), PYOPENCL_CTX="0"), "later", inspect)
    assert "finish returned normally" in lines and lines[-1] == "new context works", lines
    status = seen["status"]
    uids = status["Uid"].split()
    assert uids[0] != "0" and all(u == uids[0] for u in uids), status["Uid"]
    assert status["Groups"].strip() == ""
    assert status["NoNewPrivs"].strip() == "1"
    assert status["CapEff"].strip() == "0000000000000000"
    for ns, link in seen["ns"].items():
        assert link != os.readlink(f"/proc/self/ns/{ns}"), f"the executor shares the {ns} namespace"
    assert os.readlink(f"/proc/{server.pid}/ns/net") == os.readlink("/proc/self/ns/net"), \
        "the parent keeps the host's view"


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox needs root")
def test_the_probe_by_hand_enters_the_full_sandbox():
    """`python -m vdev._executor_child --probe`, as the README gives it (no root
    directory named), probes the sandbox a server's executor gets."""
    res = subprocess.run([sys.executable, "-m", "vdev._executor_child", "--probe"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["mode"] == "full" and got["uid"] != 0, got
    assert got["read /etc/shadow"] != "allowed" and got["pids visible"] == 1, got


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox needs root")
def test_sandbox_cannot_read_host_files_or_connect_anywhere(tmp_path):
    """The very code the executor runs first (``_sandbox.enter``), then probes."""
    secret = tempfile.NamedTemporaryFile(dir="/tmp", prefix="ava-secret-", delete=False)
    secret.write(b"host secret")
    secret.close()
    root = tempfile.mkdtemp(prefix="ava-sbx-")
    try:
        res = subprocess.run([sys.executable, "-m", "vdev._executor_child", "--probe",
                              "--sandbox", "required", "--sandbox-root", root,
                              "--probe-path", secret.name, "--probe-path", "/etc/hostname",
                              "--probe-path", os.path.join(ROOT, "Makefile"),
                              "--probe-path", os.path.join(ROOT, "vdev", "_rings.py")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
    finally:
        os.unlink(secret.name)
        os.rmdir(root)
    assert got["mode"] == "full"
    assert got["uid"] != 0 and got["euid"] != 0
    assert got["read /etc/shadow"] == "ENOENT"
    assert got[f"read {secret.name}"] == "ENOENT"
    assert got["read /etc/hostname"] == "ENOENT"
    assert got[f"read {os.path.join(ROOT, 'Makefile')}"] == "ENOENT", "only the packages"
    assert got[f"read {os.path.join(ROOT, 'vdev', '_rings.py')}"] == "allowed"
    assert got["write /usr"] == "EROFS"
    assert got["connect tcp 127.0.0.1"] == "ENETUNREACH"
    assert got["connect tcp 8.8.8.8"] == "ENETUNREACH"
    assert got["connect unix /run/systemd/private"] == "ENOENT"
    assert got["write /tmp"] == "allowed"
    assert got["pids visible"] == 1, "other processes are hidden"
    assert got["core limit"] == 0


def test_sandbox_required_without_root_refuses_to_start(monkeypatch, caplog):
    """--sandbox required under an unprivileged user: a clear error, exit status 2,
    no socket left behind."""
    from vdev import _cli, _sandbox
    monkeypatch.setattr(_sandbox.os, "geteuid", lambda: 1000)
    sock = tempfile.mktemp(prefix="ava-nosbx-", dir="/tmp")
    assert _cli.main(["serve", "--socket", sock, "--sandbox", "required", "-q"]) == 2
    assert "needs the server to run as root" in caplog.text
    assert not os.path.exists(sock)


def test_status_page_fits_and_parses():
    blank = xp.Status.build(dict(pid=1, heartbeat=2, command_since=3, command_queue=4,
                                 command_opcode=5, commands=6, kernel_since=7, kernel_owner=8,
                                 kernel_opcode=9, teardown_since=10))
    assert len(blank) <= xp.STATUS_SIZE
    assert xp.Status.parse(blank).kernel_owner == 8
    assert xp.STATUS_OFFSETS["teardown_since"] == len(blank) - 8


def test_a_loader_pointed_at_the_guest_driver_is_not_passed_on(tmp_path, monkeypatch, caplog):
    """An OCL_ICD_VENDORS (a directory or an .icd file) or OCL_ICD_FILENAMES that names
    the guest driver, exported in the shell the server starts from, is left out of the
    executors' environment, with a warning that says why: it would give them no host
    platform.  One that names another implementation is passed on as it is."""
    from vdev._executor import executor_environment, names_guest_driver
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "ava.icd").write_text("/root/.cache/ava-vdev/build/libava_icd.so\n")
    host = tmp_path / "host"
    host.mkdir()
    (host / "pocl.icd").write_text("libpocl.so.2\n")
    cases = {
        ("OCL_ICD_VENDORS", str(guest)): True,
        ("OCL_ICD_VENDORS", str(guest / "ava.icd")): True,
        ("OCL_ICD_FILENAMES", "/opt/x/libava_icd.so"): True,
        ("OCL_ICD_VENDORS", str(host)): False,
        ("OCL_ICD_FILENAMES", "/usr/lib/x86_64-linux-gnu/libpocl.so.2"): False,
        ("OCL_ICD_VENDORS", str(tmp_path / "missing")): False,
    }
    for (var, value), guest_driver in cases.items():
        assert names_guest_driver(value) is guest_driver, (var, value)
        monkeypatch.setenv(var, value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vdev.executor"):
            env = executor_environment()
        if guest_driver:
            assert var not in env, (var, value)
            assert any("guest driver" in r.getMessage() and var in r.getMessage()
                       for r in caplog.records), "the log says why"
        else:
            assert env[var] == value
        monkeypatch.delenv(var)
