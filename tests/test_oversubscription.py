"""Device memory oversubscribed, through the whole stack (loopback): unmodified
programs whose memory objects far exceed the server's --device-memory give the
native results, and the server's session summary shows that objects moved."""

import os
import re
import subprocess
import sys

import pytest
from test_opencl_e2e import device_server, native, through_device

from vdev._oversub_bench import session_summaries as summaries
from vdev._oversub_bench import session_summary as next_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "tests", "samples")


@pytest.fixture(scope="module")
def small_device():
    with device_server("--device-memory", "256K") as server:
        yield server


def compile_sample(name, tmp_path):
    exe = tmp_path / name
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(exe),
                    os.path.join(SAMPLES, f"{name}.c"), "-lOpenCL"], check=True)
    return str(exe)


def test_four_times_the_device_memory_gives_native_results(shim, small_device, tmp_path):
    """Kernels, transfers, fills, copies, maps, a rectangle, sub-buffers, images and a
    write held back by a user event, on 1 MiB of buffers and 64 KiB of images
    through 256 KiB of device memory."""
    sock, log = small_device
    exe = compile_sample("oversub", tmp_path)
    theirs = native([exe])
    assert theirs.returncode == 0, theirs.stderr
    before = len(summaries(log))
    ours = through_device(shim, sock, [exe])
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == theirs.stdout.splitlines()
    assert "buffer 15" in ours.stdout and ours.stdout.rstrip().endswith("done")
    figures = next_summary(log, before)
    assert figures["capacity"] == 256 << 10
    assert figures["evictions"] >= 16 and figures["restores"] >= 16
    assert figures["bytes_out"] >= 4 * figures["capacity"]
    assert figures["refused"] == 0


def test_past_the_host_store_allocation_fails_as_on_a_full_device(shim, tmp_path):
    exe = compile_sample("fill_store", tmp_path)
    with device_server("--device-memory", "256K", "--host-store", "512K") as (sock, log):
        res = through_device(shim, sock, [exe])
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [
            "made 12 buffers, then -4",           # 768 KiB: CL_MEM_OBJECT_ALLOCATION_FAILURE
            "after a release: 0",
            "first buffer read: 0, intact"]
        assert next_summary(log, 0)["refused"] == 1
        with open(log) as f:
            assert "clCreateBuffer refused: 65536 bytes do not fit" in f.read()
        # The same server serves the next program.
        again = through_device(shim, sock, [exe])
        assert again.stdout == res.stdout


def test_the_guest_sees_the_memory_it_is_promised(shim, tmp_path):
    """--guest-memory: CL_DEVICE_GLOBAL_MEM_SIZE may exceed the device memory."""
    with device_server("--device-memory", "1M", "--guest-memory", "3G") as (sock, _):
        res = through_device(shim, sock, ["clinfo", "--raw"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"CL_DEVICE_GLOBAL_MEM_SIZE\s+3221225472\b", res.stdout), res.stdout
    alloc = int(re.search(r"CL_DEVICE_MAX_MEM_ALLOC_SIZE\s+(\d+)", res.stdout).group(1))
    assert 0 < alloc <= 3 << 30


def test_bad_sizes_are_refused_with_the_option_named():
    res = subprocess.run([sys.executable, "-m", "vdev", "serve", "--socket", "/tmp/unused.sock",
                          "--device-memory", "lots"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert "--device-memory" in res.stderr and "'lots' is not a size" in res.stderr
    res = subprocess.run([sys.executable, "-m", "vdev", "serve", "--socket", "/tmp/unused.sock",
                          "--swap-dir", "/nonexistent/dir"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 2 and "no such directory" in res.stderr
