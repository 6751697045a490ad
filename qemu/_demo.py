"""``python -m qemu demo``: boot a lab guest with the device and show it working.

The host side runs the same programs natively first; then one guest boot shows
the device (``lspci -nn``, a BAR0 register round trip through sysfs), builds and
installs the driver shim, and runs clinfo, a C sample compiled in the guest and
a pyopencl example, all executing on the host's OpenCL through the device.
"""

from __future__ import annotations

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

# Runs in the guest after the register demo: the OpenCL part.
GUEST_OPENCL_SCRIPT = r"""
set -e
cd /mnt/ava
echo; echo "$ python3 -m guest_driver install       # build the ICD in the guest, register it"
python3 -m guest_driver install --out /tmp/ava-build
echo; echo "$ ls /etc/OpenCL/vendors; clinfo -l"
ls /etc/OpenCL/vendors; clinfo -l
echo; echo "$ clinfo | grep -E 'Device Name|Max compute|Global memory size|Max work group size'"
clinfo | grep -E 'Device Name|Max compute units|Global memory size|Max work group size'
echo; echo "$ gcc vadd.c -lOpenCL && ./vadd               # a plain C sample, compiled in the guest"
gcc -o /tmp/vadd tests/samples/vadd.c -lOpenCL && /tmp/vadd
echo; echo "$ python3 demo.py                            # pyopencl's own example, unmodified"
cd /usr/share/doc/python-pyopencl-doc/examples && PYOPENCL_CTX=0 python3 demo.py 2>&1 | grep -v Warning | tail -3
"""

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

    out = ["$ clinfo -l", run(["clinfo", "-l"]),
           "$ clinfo | grep -E 'Device Name|Max compute|Global memory size|Max work group size'",
           "\n".join(line for line in run(["clinfo"]).splitlines()
                     if any(k in line for k in ("Device Name", "Max compute units",
                                                "Global memory size", "Max work group size")))]
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "vadd")
        out += ["$ gcc vadd.c -lOpenCL && ./vadd",
                run(["gcc", "-o", exe, os.path.join(repo, "tests", "samples", "vadd.c"), "-lOpenCL"])
                or run([exe])]
    out += ["$ python3 demo.py",
            "\n".join(run([sys.executable, "demo.py"], cwd=examples,
                           env=dict(os.environ, PYOPENCL_CTX="0")).splitlines()[-3:])]
    return "\n".join(out)
