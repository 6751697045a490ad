"""The device as a guest sees it: PCI ids, class, BARs, and BAR0 registers (one boot)."""

from __future__ import annotations

import json

import pytest

from protocols.device_abi import DEVICE_ID, MAGIC, VENDOR_ID, Reg
from qemu._demo import GUEST_REGS_SCRIPT

pytestmark = pytest.mark.vm

# Runs in the guest: describe the device from sysfs as JSON on one line.
SYSFS_SCRIPT = f"""
import glob, json, os
dev = [d for d in sorted(glob.glob("/sys/bus/pci/devices/*"))
       if open(d + "/vendor").read().strip() == "{VENDOR_ID:#06x}"
       and open(d + "/device").read().strip() == "{DEVICE_ID:#06x}"]
assert len(dev) == 1, dev
d = dev[0]
bars = []
for line in open(d + "/resource").read().splitlines()[:6]:
    start, end, flags = (int(x, 16) for x in line.split())
    bars.append({{"size": end - start + 1 if end else 0, "flags": flags}})
print(json.dumps({{"slot": os.path.basename(d), "class": open(d + "/class").read().strip(),
                   "interrupt_pin": open(d + "/config", "rb").read()[0x3D], "bars": bars}}))
"""


def test_device_in_guest(lab_run):
    script = (
        f'set -e; echo "== lspci"; lspci -nn -d {VENDOR_ID:04x}:{DEVICE_ID:04x}; echo "== lspci -v"; '
        f'lspci -v -d {VENDOR_ID:04x}:{DEVICE_ID:04x}; echo "== sysfs"; python3 -c "$1"; echo "== regs"; '
        'python3 -c "$2"')
    res = lab_run("--timeout", "180", "--", "sh", "-c", script, "test",
                  SYSFS_SCRIPT, GUEST_REGS_SCRIPT)
    assert res.returncode == 0, res.stdout + res.stderr
    sections = dict(part.split("\n", 1) for part in res.stdout.split("== ")[1:])

    lspci = sections["lspci"]
    assert "Processing accelerators [1200]" in lspci and "[4156:0c1a]" in lspci, lspci
    assert "Memory at" in sections["lspci -v"] and "MSI-X" in sections["lspci -v"], \
        sections["lspci -v"]

    info = json.loads(sections["sysfs"])
    assert info["class"] == "0x120000"
    assert info["interrupt_pin"] == 1, "INTx pin A"
    bars = info["bars"]
    IORESOURCE_MEM = 0x200
    assert bars[0]["size"] == 4096 and bars[0]["flags"] & IORESOURCE_MEM, bars
    assert bars[2]["size"] == 4096 and bars[2]["flags"] & IORESOURCE_MEM, bars

    regs = sections["regs"]
    assert f"magic   = {MAGIC:#010x} ok" in regs, regs
    assert f"BAR0[{int(Reg.SCRATCH):#04x}] scratch: wrote 0x12345678, read back 0x12345678 ok" \
        in regs, regs
    assert "register round trip: ok" in regs
    assert res.leftovers() == {}
