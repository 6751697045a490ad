"""Unmodified OpenCL programs on the host through the whole device stack
(loopback transport): clinfo, a C sample, pyopencl's own examples, each compared
with or checked like the native run."""

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from clinfo_caps import as_the_device_reports, unexplained_differences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "tests", "samples")


@contextlib.contextmanager
def device_server(*options):
    """An OpenCL device server with extra options; yields (socket path, log path)."""
    d = tempfile.mkdtemp(prefix="ava-e2e-", dir="/tmp")
    path, log = os.path.join(d, "s.sock"), os.path.join(d, "server.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path,
                                 "--backend", "opencl", *options], cwd=ROOT, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert proc.poll() is None, open(log).read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield path, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cl_server():
    with device_server("-q") as (path, _):
        yield path


def through_device(shim, socket, argv, timeout=300, cwd=None, env=None):
    lib, vendors = shim
    env = dict(os.environ, AVA_VDEV_SOCKET=socket, OCL_ICD_VENDORS=str(vendors),
               OCL_ICD_FILENAMES=str(lib), PYOPENCL_CTX="0", MPLBACKEND="Agg", **(env or {}))
    time.sleep(0.05)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def native(argv, timeout=300, cwd=None):
    env = dict(os.environ, PYOPENCL_CTX="0", MPLBACKEND="Agg")
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_clinfo_matches_native(shim, cl_server):
    ours = through_device(shim, cl_server, ["clinfo"])
    assert ours.returncode == 0, ours.stderr
    assert re.search(r"Number of platforms\s+1\n", ours.stdout)
    theirs = native(["clinfo"])
    # Identical, but for the capabilities the device does not forward (SVM, hidden
    # extensions and their blocks): those read as absent, and nothing else differs.
    assert unexplained_differences(ours.stdout, theirs.stdout) == []
    assert "Fine-grained buffer sharing                   No" in ours.stdout
    assert "cl_khr_command_buffer" not in ours.stdout


def test_c_sample(shim, cl_server, tmp_path):
    exe = tmp_path / "vadd"
    subprocess.run(["gcc", "-o", str(exe), os.path.join(SAMPLES, "vadd.c"), "-lOpenCL"], check=True)
    res = through_device(shim, cl_server, [str(exe)])
    assert res.returncode == 0, res.stderr
    assert "1048576 elements correct" in res.stdout


def test_large_and_odd_transfers(shim, cl_server, tmp_path):
    """Transfers of application memory, byte for byte, natively and through the device
    (over loopback the application's memory is copied through staging; a map's memory
    is the DMA arena, which the host writes in place): tests/samples/zero_copy.c.  In
    a VM, as root, the same program's transfers go in place (test_vm_opencl)."""
    exe = tmp_path / "zero_copy"
    subprocess.run(["gcc", "-O2", "-o", str(exe), os.path.join(SAMPLES, "zero_copy.c"),
                    "-lOpenCL"], check=True)
    theirs = native([str(exe)])
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    ours = through_device(shim, cl_server, [str(exe)], env={"AVA_ICD_DEBUG": "1"})
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stdout == theirs.stdout
    # Every round trip, traced with its status and time.
    assert re.search(r"ava-vdev ICD: clEnqueueReadBuffer -> 0 \(\d+\.\d us\)", ours.stderr), \
        ours.stderr[-2000:]
    lent = re.findall(r"(\d+) bytes at \S+ lent in place", ours.stderr)
    # The map's read and the unmap's write, and nothing else.
    assert lent == ["8388608", "8388608"], ours.stderr
    assert "are copied, not lent: zero-copy is for root's processes in a VM, and other " \
           "users' where ava-vdevd has the ava_vdev_pin module (this one: loopback" in ours.stderr
    # 48 MiB of DMA memory (an ordinary user's in a VM has 32 by default): the 64 MiB
    # transfers go in 12 MiB pieces, and so does the 16 MiB non-blocking pair (its
    # staging stays until the read is seen over); everything reads the same.
    small = through_device(shim, cl_server, [str(exe)], env={"AVA_VDEV_MEM": "48M"})
    assert small.returncode == 0, small.stdout + small.stderr
    assert small.stdout == theirs.stdout


def pyopencl_examples():
    from qemu import Lab
    return os.path.join(str(Lab().path), "root", "usr", "share", "doc", "python-pyopencl-doc",
                        "examples")


@pytest.mark.parametrize("example", [
    "demo.py", "demo_array.py", "demo_elementwise.py", "demo_elementwise_complex.py",
    "demo_meta_template.py", "demo-struct-reduce.py", "narray.py", "pi-monte-carlo.py",
    "n-body.py",
])
def test_pyopencl_example(shim, cl_server, example):
    examples = pyopencl_examples()
    assert os.path.isdir(examples), f"pyopencl's examples come from the lab root: {examples} " \
                                    "(run `make lab`)"
    res = through_device(shim, cl_server, [sys.executable, example], cwd=examples)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]


def test_dump_properties_matches_native(shim, cl_server):
    examples = pyopencl_examples()
    ours = through_device(shim, cl_server, [sys.executable, "dump-properties.py"], cwd=examples)
    theirs = native([sys.executable, "dump-properties.py"], cwd=examples)
    assert ours.returncode == 0, ours.stderr[-3000:]
    # Object addresses differ run to run, and PoCL 3.1 reports 4 bytes for the 8-byte
    # DEVICE_ENQUEUE_CAPABILITIES, so natively its upper half is whatever was in memory.
    def strip(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if " at 0x" not in line and not line.startswith("DEVICE_ENQUEUE_CAPABILITIES")]

    # What the device does not forward reads as absent (SVM, hidden extensions).
    assert strip(ours.stdout) == [as_the_device_reports(line) for line in strip(theirs.stdout)]
    assert "SVM_CAPABILITIES: 0" in ours.stdout


def test_posted_releases_all_reach_the_host(shim, cl_server, tmp_path):
    """Releases are posted without waiting (spec: async_ok); 70,000 user events made
    and released one by one exceed the session's 65,536-object limit unless every
    posted release ran.  The synchronous path (AVA_ICD_SYNC=1) gives the same."""
    exe = tmp_path / "release_storm"
    subprocess.run(["gcc", "-O2", "-o", str(exe), os.path.join(ROOT, "tests", "samples",
                                                                "release_storm.c"), "-lOpenCL"],
                   check=True)
    posted = through_device(shim, cl_server, [str(exe), "70000"])
    assert posted.returncode == 0, posted.stderr
    assert "70000 create/release pairs" in posted.stdout and "context refs 1" in posted.stdout
    os.environ["AVA_ICD_SYNC"] = "1"
    try:
        sync = through_device(shim, cl_server, [str(exe), "20000"])
    finally:
        del os.environ["AVA_ICD_SYNC"]
    assert sync.returncode == 0, sync.stderr
    print("posted:", posted.stdout.strip(), "| synchronous:", sync.stdout.strip())


def _posted_line(log: str) -> tuple[tuple[int, int] | None, str]:
    """The session's posted-call figures from the server's log, once the session is
    over (its summary comes after the client went), and the log."""
    deadline = time.monotonic() + 20
    while True:
        text = Path(log).read_text()
        if "queues, DMA maps and IRQ fds released" in text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.5)                 # the executor's summary, logged as it ends
    text = Path(log).read_text()
    m = re.search(r"posted calls: (\d+) .*mispredicted: (\d+)", text)
    return ((int(m.group(1)), int(m.group(2))) if m else None), text


def test_kernel_arguments_and_launches_are_posted_with_native_statuses(shim, tmp_path):
    """tests/conformance/posted.c repeats every case, so its later rounds are posted:
    the statuses match native (test_conformance) and here the host saw them arrive as
    posted, none answered differently than the guest predicted; with AVA_ICD_SYNC=1
    nothing is posted."""
    exe = tmp_path / "posted"
    subprocess.run(["gcc", "-std=gnu11", "-o", str(exe), os.path.join(
        ROOT, "tests", "conformance", "posted.c"), "-lOpenCL", "-lpthread"], check=True)
    theirs = native([str(exe)])
    assert theirs.returncode == 0, theirs.stderr
    for env, expect_posted in (({}, True), ({"AVA_ICD_SYNC": "1"}, False)):
        with device_server() as (sock, log):
            ours = through_device(shim, sock, [str(exe)], env=dict(env, AVA_ICD_DEBUG="1"))
            counts, text = _posted_line(log)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout.splitlines() == theirs.stdout.splitlines()
        # A kernel argument set again to the value it holds is not sent at all.
        in_place = ours.stderr.count("clSetKernelArg -> 0 (in place: the same value is set)")
        if expect_posted:
            # Rounds two and three of every successful set and launch (80 or so),
            # plus the releases: posted, or not sent where the argument holds the value.
            assert counts is not None and counts[1] == 0, text[-3000:]
            assert counts[0] + in_place >= 60 and in_place >= 10, (counts, in_place)
        else:
            assert counts is None and in_place == 0, text[-3000:]


def test_status_lists_what_the_device_turns_off_and_why(shim, cl_server, tmp_path):
    lib, _ = shim
    res = through_device(shim, cl_server, [sys.executable, "-m", "guest_driver", "status",
                                           "--out", str(lib.parent)], cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "via loopback" in res.stdout
    assert "zero-copy:  no: transfers are copied" in res.stdout
    assert "CL_DEVICE_SVM_CAPABILITIES = 0: shared virtual memory is not forwarded" in res.stdout
    assert re.search(r"device extensions reported:\n(  cl_\w+: .+\n)+", res.stdout), res.stdout
    assert "cl_khr_fp64: kernel language only" in res.stdout
    assert "cl_khr_command_buffer" not in res.stdout


BUILD_WITH_HEADER = r"""
import sys, pyopencl as cl
ctx = cl.create_some_context(interactive=False)
src = '#include "scale.h"\n__kernel void k(__global int *a) { a[0] = SCALE; }'
prg = cl.Program(ctx, src).build(options=["-I", sys.argv[1]], cache_dir=False)
print("built", prg.k.function_name)
"""


def _server_pid(sock: str) -> int:
    """The device server serving ``sock`` (started by this test, found by its command line)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and sock.encode() in argv:
                return int(entry)
    raise AssertionError(f"no server process for {sock}")


def _tree(root: str) -> set[str]:
    """The files under root, but the implementation's scratch files."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
            for f in files if not f.startswith("tempfile")}


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_kernel_cache_outlives_sessions_and_goes_with_the_server(shim, tmp_path, sandbox):
    """A program built in one session (guest process) comes from the server's kernel
    cache in the next: nothing new is compiled into the cache, and the include
    directory keeps its path.  Sandboxed executors (a root server) share a tmpfs in
    the server's own mount namespace (seen here through /proc/PID/root); executors
    that are not (``--sandbox off``, or a server that is not root) share a private
    directory.  Either is gone with the server."""
    (tmp_path / "scale.h").write_text("#define SCALE 3\n")
    script = tmp_path / "build.py"
    script.write_text(BUILD_WITH_HEADER)
    with device_server("--sandbox", sandbox) as (sock, log):
        deadline = time.monotonic() + 10
        while "kernel cache for this server" not in Path(log).read_text():
            assert time.monotonic() < deadline, Path(log).read_text()
            time.sleep(0.05)
        path = re.search(r"kernel cache for this server's executors: (\S+)",
                         Path(log).read_text()).group(1)
        server_pid = _server_pid(sock)
        seen = []
        for _ in range(2):
            res = through_device(shim, sock, [sys.executable, str(script), str(tmp_path)])
            assert res.returncode == 0 and "built k" in res.stdout, res.stderr[-2000:]
            seen.append(_tree(f"/proc/{server_pid}/root{path}"))
        assert seen[0] and seen[0] == seen[1], (seen, "the second build added entries")
        assert any(p.startswith("includes/") and p.endswith("scale.h") for p in seen[0])
        assert any(not p.startswith("includes/") for p in seen[0]), "the compiled program"
        if sandbox == "auto":
            assert path not in Path("/proc/mounts").read_text(), "not in the host's namespace"
        else:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, "the server's user's alone"
    deadline = time.monotonic() + 5
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), "the empty mount point is removed at exit"
