"""The guest side for real (one boot, TCG-safe): the shim is built and installed in
the guest, the runtime does 10,000 verified echo round trips over uio, two
processes share the device, a killed process's queue is reclaimed by the next, and
unmodified OpenCL programs (clinfo, a C sample compiled in the guest, a pyopencl
example) run on the host's OpenCL through the device."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from protocols import device_abi as abi

pytestmark = pytest.mark.vm

# Lists claimed queues straight from BAR0 (no runtime, which would reclaim first).
QUEUE_OWNERS = f"""
import glob, mmap, os
for d in glob.glob("/sys/bus/pci/devices/*"):
    if open(d + "/vendor").read().strip() == "{abi.VENDOR_ID:#06x}":
        fd = os.open(d + "/resource0", os.O_RDWR | os.O_SYNC)
        regs = memoryview(mmap.mmap(fd, {abi.BAR0_SIZE})).cast("I")
        for q in range({abi.NUM_QUEUES}):
            if regs[{abi.queue_reg(0, abi.QReg.CTRL)} // 4 + q * {abi.QUEUE_WINDOW_SIZE // 4}] & 1:
                owner = regs[{abi.queue_reg(0, abi.QReg.OWNER)} // 4 + q * {abi.QUEUE_WINDOW_SIZE // 4}]
                print("queue %d owner pid %d" % (q, owner))
"""

GUEST_SCRIPT = r"""
set -e
cd /mnt/ava
echo "== build"; python3 -m guest_driver build --out /tmp/b | tail -1
echo "== echo"; /tmp/b/ava-echo --iters 10000 --size 1024
echo "== procs"; export AVA_VDEV_MEM=8M
/tmp/b/ava-echo --iters 3000 --size 512 & A=$!; /tmp/b/ava-echo --iters 3000 --size 512 & B=$!
wait $A; wait $B; echo "both processes done"
echo "== reclaim"; /tmp/b/ava-echo --sleep-us 3000000 & P=$!; sleep 1; kill -9 $P; wait $P || true
echo "victim $P"; python3 -c "$QUEUE_OWNERS"
/tmp/b/ava-echo --iters 200 | tail -1
echo "after:"; python3 -c "$QUEUE_OWNERS"
unset AVA_VDEV_MEM
echo "== install"; python3 -m guest_driver install --out /tmp/b
echo "== status"; python3 -m guest_driver status --out /tmp/b
echo "== clinfo"; clinfo
echo "== vadd"; gcc -o /tmp/vadd tests/samples/vadd.c -lOpenCL; /tmp/vadd
for area in $CONFORMANCE; do
  echo "== conformance $area"; gcc -std=gnu11 -o /tmp/$area tests/conformance/$area.c -lOpenCL; /tmp/$area
done
echo "== demo"; cd /usr/share/doc/python-pyopencl-doc/examples; PYOPENCL_CTX=0 python3 demo.py
echo "== examples"; cp -r . /tmp/ex; cd /tmp/ex
for ex in $EXAMPLES; do
  PYOPENCL_CTX=0 MPLBACKEND=Agg python3 $ex > /tmp/$ex.log 2>&1 && echo "$ex ok" || { echo "$ex FAILED"; tail -5 /tmp/$ex.log; }
done
echo "== done"
"""


# Map/unmap, rectangles, callbacks on the runtime thread, binaries, compile/link and
# sub-devices, compiled in the guest and compared with the same program run natively.
CONFORMANCE = ("map_rect_callbacks", "programs_devices")

EXAMPLES = ("demo.py demo_array.py demo_elementwise.py demo_elementwise_complex.py "
            "demo_meta_template.py demo-struct-reduce.py dump-properties.py narray.py "
            "pi-monte-carlo.py n-body.py median-filter.py")


def properties(clinfo_text: str) -> dict[str, str]:
    """Device property name -> value, from clinfo's human-readable output."""
    props = {}
    section = clinfo_text.split("Number of devices", 1)[-1].split("NULL platform behavior")[0]
    for line in section.splitlines():
        m = re.match(r"  (\S.*?)\s{2,}(\S.*)$", line)
        if m:
            props.setdefault(m.group(1), m.group(2).strip())
    return props


def server_warnings(stderr: str) -> str:
    """The server's warnings from a run kept with --keep-logs (then removed)."""
    m = re.search(r"run directory(?: kept)?: (\S+)", stderr)
    if not m:
        return "(no run directory reported)"
    run_dir = m.group(1)
    try:
        lines, keep = [], False
        with open(os.path.join(run_dir, "server.log"), errors="replace") as f:
            for line in f:
                if re.match(r"\d{4}-\d\d-\d\d ", line):     # a new log record
                    keep = " WARNING: " in line or " ERROR: " in line
                if keep:                                  # with its traceback, if any
                    lines.append(line)
        return "server warnings:\n" + "".join(lines[-80:])
    except OSError as exc:
        return f"(server log unreadable: {exc})"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


HERE = os.path.dirname(os.path.abspath(__file__))


def test_opencl_programs_in_the_guest(lab_run, tmp_path):
    res = lab_run("--timeout", "600", "--keep-logs", "--server-arg=--backend",
                  "--server-arg=opencl", "--", "env", f"QUEUE_OWNERS={QUEUE_OWNERS}",
                  f"EXAMPLES={EXAMPLES}", f"CONFORMANCE={' '.join(CONFORMANCE)}", "sh", "-c",
                  GUEST_SCRIPT, timeout=660)
    out = res.stdout
    warnings = server_warnings(res.stderr)
    assert res.returncode == 0, out[-4000:] + res.stderr[-4000:] + warnings
    sections = dict(part.split("\n", 1) for part in out.split("== ")[1:])
    assert "10000 verified round trips" in sections["echo"] and "over uio: ok" in sections["echo"]
    assert "via uio" in sections["status"] and "ABI:        0.1" in sections["status"]
    assert sections["procs"].count("verified round trips") == 2
    assert "FAILED" not in sections["procs"] and "both processes done" in sections["procs"]
    victim = re.search(r"victim (\d+)", sections["reclaim"]).group(1)
    before, after = sections["reclaim"].split("after:")
    assert f"owner pid {victim}" in before, "the killed process still held its queue"
    assert f"owner pid {victim}" not in after, "the next process reclaimed it"
    guest = sections["clinfo"]
    assert re.search(r"Number of platforms\s+1\n", guest), "exactly one platform: ours"
    host = subprocess.run(["clinfo"], capture_output=True, text=True, check=True).stdout
    ours, native = properties(guest), properties(host)
    shared = set(ours) & set(native)
    assert len(shared) > 50, sorted(shared)
    differing = {k: (ours[k], native[k]) for k in shared if ours[k] != native[k]}
    assert not differing, differing
    assert "1048576 elements correct" in sections["vadd"]
    for area in CONFORMANCE:
        exe = os.path.join(str(tmp_path), area)
        subprocess.run(["gcc", "-std=gnu11", "-o", exe, os.path.join(HERE, "conformance",
                                                                     f"{area}.c"), "-lOpenCL"],
                       check=True)
        native = subprocess.run([exe], capture_output=True, text=True, timeout=120)
        assert native.returncode == 0, native.stderr
        assert sections[f"conformance {area}"].splitlines() == native.stdout.splitlines()
    assert re.search(r"Norm: 0\.0+e\+00", sections["demo"])
    # pyopencl's own examples, unmodified (some build with -I guest paths: the
    # header files travel with the build)
    for example in EXAMPLES.split():
        assert f"{example} ok" in sections["examples"], sections["examples"]
