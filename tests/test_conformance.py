"""Conformance-style checks per API area: invalid arguments, run once natively and
once through the device (loopback), and every status compared line by line."""

import glob
import os
import subprocess

import pytest
from test_opencl_e2e import cl_server, native, through_device  # noqa: F401 (fixtures)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance")
AREAS = sorted(os.path.basename(p)[:-2] for p in glob.glob(os.path.join(HERE, "*.c")))


@pytest.mark.parametrize("area", AREAS)
def test_same_status_codes_as_native(area, shim, cl_server, tmp_path):  # noqa: F811
    exe = tmp_path / area
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(exe),
                    os.path.join(HERE, f"{area}.c"), "-lOpenCL"], check=True)
    theirs = native([str(exe)])
    assert theirs.returncode == 0, theirs.stderr
    ours = through_device(shim, cl_server, [str(exe)])
    assert ours.returncode == 0, ours.stderr
    assert len(theirs.stdout.splitlines()) >= 10
    assert ours.stdout.splitlines() == theirs.stdout.splitlines()
