"""Conformance-style checks per API area: invalid arguments, run once natively and
once through the device (loopback), and every status compared line by line."""

import glob
import os
import subprocess

import pytest
from test_opencl_e2e import native, through_device
from test_oversubscription import device_server, next_summary, summaries

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance")
AREAS = sorted(os.path.basename(p)[:-2] for p in glob.glob(os.path.join(HERE, "*.c")))


def executor_deaths(log):
    """The server log's lines on executors that died (a status diff after one is the
    executor's death, not the call's answer)."""
    if log is None:
        return []
    with open(log) as f:
        return [line.strip() for line in f if "executor pid" in line and " ended " in line]


def same_as_native(area, shim, socket, tmp_path, env=None, log=None):
    exe = tmp_path / area
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(exe),
                    os.path.join(HERE, f"{area}.c"), "-lOpenCL", "-lpthread"], check=True)
    theirs = native([str(exe)])
    assert theirs.returncode == 0, theirs.stderr
    ours = through_device(shim, socket, [str(exe)], env=env)
    assert ours.returncode == 0, ours.stderr
    assert len(theirs.stdout.splitlines()) >= 10
    assert ours.stdout.splitlines() == theirs.stdout.splitlines(), executor_deaths(log)


@pytest.fixture(scope="module")
def logged_server():
    """A server whose log a failure can quote (an executor's death, say)."""
    with device_server("-q") as server:
        yield server


@pytest.mark.parametrize("area", AREAS)
def test_same_status_codes_as_native(area, shim, logged_server, tmp_path):
    sock, log = logged_server
    same_as_native(area, shim, sock, tmp_path, log=log)


@pytest.mark.parametrize("area", AREAS)
def test_same_status_codes_as_native_without_posting(area, shim, logged_server, tmp_path):
    """AVA_ICD_SYNC=1: every call waits for the host's answer (nothing posted)."""
    sock, log = logged_server
    same_as_native(area, shim, sock, tmp_path, env={"AVA_ICD_SYNC": "1"}, log=log)


@pytest.fixture(scope="module")
def evicting_server():
    """512 bytes of device memory: any second memory object alive evicts the first."""
    with device_server("--device-memory", "512") as server:
        yield server


@pytest.mark.parametrize("area", AREAS)
def test_same_status_codes_as_native_while_evicting(area, shim, evicting_server, tmp_path):
    sock, log = evicting_server
    before = len(summaries(log))
    same_as_native(area, shim, sock, tmp_path, log=log)
    if area in ("images", "readback", "map_rect_callbacks"):       # these keep several
        figures = next_summary(log, before)
        # How many come back depends on which commands are still in flight when room
        # is needed; that some leave is the point (restores: tests/test_device_memory.py).
        assert figures["evictions"] > 0, figures
