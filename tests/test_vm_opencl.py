"""The guest side for real (one boot, TCG-safe): the shim is built and installed in
the guest, the runtime does 10,000 verified echo round trips over uio, and
unmodified OpenCL programs (clinfo, a C sample compiled in the guest, a pyopencl
example) run on the host's OpenCL through the device."""

from __future__ import annotations

import re
import subprocess

import pytest

pytestmark = pytest.mark.vm

GUEST_SCRIPT = r"""
set -e
cd /mnt/ava
echo "== build"; python3 -m guest_driver build --out /tmp/b | tail -1
echo "== echo"; /tmp/b/ava-echo --iters 10000 --size 1024
echo "== install"; python3 -m guest_driver install --out /tmp/b
echo "== status"; python3 -m guest_driver status --out /tmp/b
echo "== clinfo"; clinfo
echo "== vadd"; gcc -o /tmp/vadd tests/samples/vadd.c -lOpenCL; /tmp/vadd
echo "== demo"; cd /usr/share/doc/python-pyopencl-doc/examples; PYOPENCL_CTX=0 python3 demo.py
echo "== done"
"""


def properties(clinfo_text: str) -> dict[str, str]:
    """Device property name -> value, from clinfo's human-readable output."""
    props = {}
    section = clinfo_text.split("Number of devices", 1)[-1].split("NULL platform behavior")[0]
    for line in section.splitlines():
        m = re.match(r"  (\S.*?)\s{2,}(\S.*)$", line)
        if m:
            props.setdefault(m.group(1), m.group(2).strip())
    return props


def test_opencl_programs_in_the_guest(lab_run):
    res = lab_run("--timeout", "600", "--server-arg=--backend", "--server-arg=opencl", "--",
                  "sh", "-c", GUEST_SCRIPT, timeout=660)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-4000:]
    sections = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert "10000 verified round trips" in sections["echo"] and "over uio: ok" in sections["echo"]
    assert "via uio" in sections["status"] and "ABI:        0.1" in sections["status"]
    guest = sections["clinfo"]
    assert re.search(r"Number of platforms\s+1\n", guest), "exactly one platform: ours"
    host = subprocess.run(["clinfo"], capture_output=True, text=True, check=True).stdout
    ours, native = properties(guest), properties(host)
    shared = set(ours) & set(native)
    assert len(shared) > 50, sorted(shared)
    differing = {k: (ours[k], native[k]) for k in shared if ours[k] != native[k]}
    assert not differing, differing
    assert "1048576 elements correct" in sections["vadd"]
    assert re.search(r"Norm: 0\.0+e\+00", sections["demo"])
