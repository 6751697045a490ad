"""The ava-vdev device ABI as the guest sees it through BAR0.

BAR0 holds control registers only (identity, version, features, status, a
scratch register, interrupt status, a doorbell).  Offsets are derived from the
``Bar0`` declaration, so the C header generated later and the server agree by
construction.
"""

from __future__ import annotations

import enum

from construct import Int32ul, Struct

VENDOR_ID = 0x4156          # unassigned in pci.ids; nothing in QEMU or Linux binds it
DEVICE_ID = 0x0C1A
SUBSYS_VENDOR_ID = 0x4156
SUBSYS_ID = 0x0001
REVISION = 0x01
CLASS_CODE = 0x120000       # processing accelerator

MAGIC = 0x44415641          # "AVAD" in little-endian bytes
ABI_MAJOR = 0
ABI_MINOR = 1
ABI_VERSION = (ABI_MAJOR << 16) | ABI_MINOR

BAR0_SIZE = 0x1000
MSIX_BAR = 2
MSIX_BAR_SIZE = 0x1000
MSIX_VECTORS = 8
MSIX_TABLE_OFFSET = 0x000
MSIX_PBA_OFFSET = 0x800


class Feature(enum.IntFlag):
    """Device feature bits (64 bits; offered in DEVICE_FEATURES, acked in DRIVER_FEATURES)."""

    INTX = 1 << 0
    MSIX = 1 << 1


DEVICE_FEATURES = Feature.INTX | Feature.MSIX


class DeviceStatus(enum.IntFlag):
    """STATUS register: 0 means reset; writing 0 resets the device."""

    ACKNOWLEDGE = 1 << 0
    DRIVER_OK = 1 << 1
    FAILED = 1 << 7


Bar0 = Struct(
    "magic" / Int32ul,              # RO
    "abi_version" / Int32ul,        # RO: major << 16 | minor
    "device_features_lo" / Int32ul, # RO
    "device_features_hi" / Int32ul, # RO
    "driver_features_lo" / Int32ul, # RW: only offered bits stick
    "driver_features_hi" / Int32ul, # RW
    "status" / Int32ul,             # RW: DeviceStatus; write 0 = reset
    "scratch" / Int32ul,            # RW: for tests
    "doorbell" / Int32ul,           # WO: queue index to wake; reads 0
    "irq_status" / Int32ul,         # RW1C: pending interrupt causes
)


def _offsets(struct: Struct) -> dict[str, int]:
    offsets, pos = {}, 0
    for sub in struct.subcons:
        offsets[sub.name] = pos
        pos += sub.sizeof()
    return offsets


class Reg(enum.IntEnum):
    """BAR0 register offsets, derived from ``Bar0``."""

    MAGIC = _offsets(Bar0)["magic"]
    ABI_VERSION = _offsets(Bar0)["abi_version"]
    DEVICE_FEATURES_LO = _offsets(Bar0)["device_features_lo"]
    DEVICE_FEATURES_HI = _offsets(Bar0)["device_features_hi"]
    DRIVER_FEATURES_LO = _offsets(Bar0)["driver_features_lo"]
    DRIVER_FEATURES_HI = _offsets(Bar0)["driver_features_hi"]
    STATUS = _offsets(Bar0)["status"]
    SCRATCH = _offsets(Bar0)["scratch"]
    DOORBELL = _offsets(Bar0)["doorbell"]
    IRQ_STATUS = _offsets(Bar0)["irq_status"]


SCRATCH_RESET = 0x5CA7C400   # scratch's reset value, so tests can see a reset happen
