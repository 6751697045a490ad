"""``python -m qemu demo``: boot a lab guest with the device and show it working.

The host side runs the same programs natively first; then one guest boot shows
the device (``lspci -nn``, a BAR0 register round trip through sysfs), builds and
installs the driver shim, and runs clinfo, a C sample compiled in the guest and
a pyopencl example, all executing on the host's OpenCL through the device.  It
ends with one verdict line per program: the same result natively and through the
device, or not (then the demo exits 1).
"""

from __future__ import annotations

import re
from typing import BinaryIO

from protocols.device_abi import DEVICE_ID, MAGIC, VENDOR_ID, Reg

REG_MAGIC = int(Reg.MAGIC)
REG_VERSION = int(Reg.ABI_VERSION)
REG_SCRATCH = int(Reg.SCRATCH)

# Runs in the guest (python3, as root). Finds the device, enables it, maps BAR0
# and does 32-bit accesses through a memoryview cast (one load or store each).
GUEST_REGS_SCRIPT = f"""\
import glob, mmap, os, sys
VENDOR, DEVICE = {VENDOR_ID:#06x}, {DEVICE_ID:#06x}
for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
    if (int(open(dev + "/vendor").read(), 16), int(open(dev + "/device").read(), 16)) == (VENDOR, DEVICE):
        break
else:
    sys.exit("ava device %04x:%04x not found" % (VENDOR, DEVICE))
print("device", os.path.basename(dev), "class", open(dev + "/class").read().strip())
with open(dev + "/enable", "w") as f:
    f.write("1")
fd = os.open(dev + "/resource0", os.O_RDWR | os.O_SYNC)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
regs = memoryview(m).cast("I")
ok = True
magic = regs[{REG_MAGIC} // 4]
print("BAR0[{REG_MAGIC:#04x}] magic   = %#010x %s" % (magic, "ok" if magic == {MAGIC:#x} else "WRONG"))
ok &= magic == {MAGIC:#x}
print("BAR0[{REG_VERSION:#04x}] version = %#010x" % regs[{REG_VERSION} // 4])
for value in (0xA5A55A5A, 0x12345678, 0):
    regs[{REG_SCRATCH} // 4] = value
    back = regs[{REG_SCRATCH} // 4]
    print("BAR0[{REG_SCRATCH:#04x}] scratch: wrote %#010x, read back %#010x %s"
          % (value, back, "ok" if back == value else "MISMATCH"))
    ok &= back == value
regs.release()
m.close()
os.close(fd)
print("register round trip:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
"""

# The programs run on both sides, each under the same "$ ..." header so that
# ``verdict_lines`` can find its output in either transcript.  clinfo shows the
# properties that do not change with the host's free memory (PoCL derives the
# memory sizes from it when a process starts, so the server's reading and a later
# native one may differ; the test suite pins them, the demo shows the device as is).
CLINFO_KEYS = "Device Name|Device Version|Max compute units|Max work group size"
HEADER_CLINFO = f"$ clinfo | grep -E '{CLINFO_KEYS}'"
HEADER_VADD = "$ gcc vadd.c -lOpenCL && ./vadd"
HEADER_DEMO = "$ python3 demo.py"

# Runs in the guest after the register demo: the OpenCL part.
GUEST_OPENCL_SCRIPT = r"""
set -e
cd /mnt/ava
echo; echo "$ python3 -m guest_driver install       # build the ICD in the guest, register it"
python3 -m guest_driver install --out /tmp/ava-build
echo; echo "$ ls /etc/OpenCL/vendors; clinfo -l"
ls /etc/OpenCL/vendors; clinfo -l
echo; echo "@HEADER_CLINFO@"
clinfo | grep -E '@CLINFO_KEYS@'
echo; echo "@HEADER_VADD@               # a plain C sample, compiled in the guest"
gcc -o /tmp/vadd tests/samples/vadd.c -lOpenCL && /tmp/vadd
echo; echo "@HEADER_DEMO@                            # pyopencl's own example, unmodified"
cd /usr/share/doc/python-pyopencl-doc/examples
PYOPENCL_CTX=0 python3 demo.py 2>&1 | grep -v Warning | tail -3
""".replace("@HEADER_CLINFO@", HEADER_CLINFO).replace("@CLINFO_KEYS@", CLINFO_KEYS) \
   .replace("@HEADER_VADD@", HEADER_VADD).replace("@HEADER_DEMO@", HEADER_DEMO)

DEMO_COMMAND = [
    "sh", "-c",
    'echo "$ lspci -nn"; lspci -nn; echo; '
    'echo "$ python3 (map BAR0 through sysfs, read and write registers)"; '
    'python3 -c "$1" && exec sh -c "$2"',
    "demo", GUEST_REGS_SCRIPT, GUEST_OPENCL_SCRIPT,
]


def host_native_outputs(repo: str, examples: str) -> str:
    """The same programs run natively on the host, for comparison."""
    import os
    import subprocess
    import sys
    import tempfile

    def run(argv, **kw):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
            return (res.stdout + res.stderr).strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"({' '.join(argv)} failed: {exc})"

    out = ["$ clinfo -l", run(["clinfo", "-l"]), HEADER_CLINFO,
           "\n".join(line for line in run(["clinfo"]).splitlines()
                     if re.search(CLINFO_KEYS, line))]
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "vadd")
        out += [HEADER_VADD,
                run(["gcc", "-o", exe, os.path.join(repo, "tests", "samples", "vadd.c"), "-lOpenCL"])
                or run([exe])]
    out += [HEADER_DEMO,
            "\n".join(run([sys.executable, "demo.py"], cwd=examples,
                           env=dict(os.environ, PYOPENCL_CTX="0")).splitlines()[-3:])]
    return "\n".join(out)


def _blocks(transcript: str) -> dict[str, list[str]]:
    """The output lines under each known header (a header line starts a block; any
    other ``$ `` line ends one)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in transcript.splitlines():
        if line.startswith("$ "):
            header = next((h for h in (HEADER_CLINFO, HEADER_VADD, HEADER_DEMO)
                           if line.startswith(h)), None)
            current = blocks.setdefault(header, []) if header else None
        elif current is not None and line.strip():
            current.append(line)
    return blocks


def _clinfo_result(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines]


def _vadd_result(lines: list[str]) -> list[str]:
    # "vadd: 1048576 elements correct, kernel 2.497 ms": the kernel time is no result.
    return [line.split(", kernel")[0] for line in lines]


def _demo_result(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Norm:")]


#: What each program's result is, as the verdict compares it.
PROGRAMS = (
    ("clinfo", HEADER_CLINFO, _clinfo_result, "device name, version, compute units, "
                                              "work-group size"),
    ("vadd", HEADER_VADD, _vadd_result, "elements verified"),
    ("demo.py", HEADER_DEMO, _demo_result, "the error norm"),
)


def verdict_lines(native: str, guest: str) -> tuple[list[str], bool]:
    """One line per program: the same result natively and through the device, or not
    (with both results).  Returns the lines and whether every program agreed."""
    ours, theirs = _blocks(guest), _blocks(native)
    lines, all_same = [], True
    for name, header, result, what in PROGRAMS:
        device, host = result(ours.get(header, [])), result(theirs.get(header, []))
        if device and device == host:
            lines.append(f"verdict: {name}: same result natively and through the device "
                         f"({what})")
            continue
        all_same = False
        lines.append(f"verdict: {name}: DIFFERENT natively and through the device ({what}): "
                     f"native {host or '(no output)'}, device {device or '(no output)'}")
    return lines, all_same


class Tee:
    """The guest's stdout shown live and kept for the verdicts."""

    def __init__(self, dest: BinaryIO) -> None:
        self.dest = dest
        self.kept = bytearray()

    def write(self, data: bytes) -> int:
        self.kept += data
        return self.dest.write(data)

    def flush(self) -> None:
        self.dest.flush()

    def text(self) -> str:
        return self.kept.decode(errors="replace")
