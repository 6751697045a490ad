"""``python -m qemu demo``: boot a lab guest with the device and show it working.

For now: ``lspci -nn`` and a scratch-register round trip through the device's
BAR0 (``/sys/bus/pci/devices/*/resource0``). The OpenCL part comes later.
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

DEMO_COMMAND = [
    "sh", "-c",
    'echo "$ lspci -nn"; lspci -nn; echo; '
    'echo "$ python3 (map BAR0 through sysfs, read and write registers)"; '
    'exec python3 -c "$1"',
    "demo", GUEST_REGS_SCRIPT,
]
