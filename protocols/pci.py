"""PCI configuration space: the type-0 header and the capabilities we expose.

Declarations plus two pure helpers (``build_config_space`` lays out a header
and a capability chain in 256 bytes; ``walk_capabilities`` follows a chain with
loop and bounds protection).  Layouts follow the PCI Local Bus 3.0 spec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from construct import Array, Int8ul, Int16ul, Int32ul, Struct

CONFIG_SPACE_SIZE = 256
CAP_POINTER_OFFSET = 0x34


class ConfigReg(enum.IntEnum):
    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION = 0x08
    CLASS_PROG = 0x09
    CACHE_LINE = 0x0C
    LATENCY = 0x0D
    HEADER_TYPE = 0x0E
    BAR0 = 0x10
    SUBSYS_VENDOR = 0x2C
    SUBSYS_ID = 0x2E
    ROM_BAR = 0x30
    CAP_PTR = 0x34
    INT_LINE = 0x3C
    INT_PIN = 0x3D


class Cmd(enum.IntFlag):
    IO = 1 << 0
    MEMORY = 1 << 1
    MASTER = 1 << 2
    SERR = 1 << 8
    INTX_DISABLE = 1 << 10


class Status(enum.IntFlag):
    INTX = 1 << 3
    CAP_LIST = 1 << 4


class BarFlags(enum.IntFlag):
    IO = 1 << 0
    MEM_64 = 2 << 1
    PREFETCH = 1 << 3


class CapId(enum.IntEnum):
    PM = 0x01
    MSI = 0x05
    VENDOR = 0x09
    EXP = 0x10
    MSIX = 0x11


Type0Header = Struct(
    "vendor_id" / Int16ul,
    "device_id" / Int16ul,
    "command" / Int16ul,
    "status" / Int16ul,
    "revision" / Int8ul,
    "prog_if" / Int8ul,
    "subclass" / Int8ul,
    "class_code" / Int8ul,
    "cache_line" / Int8ul,
    "latency" / Int8ul,
    "header_type" / Int8ul,
    "bist" / Int8ul,
    "bars" / Array(6, Int32ul),
    "cardbus_cis" / Int32ul,
    "subsys_vendor" / Int16ul,
    "subsys_id" / Int16ul,
    "rom_bar" / Int32ul,
    "cap_ptr" / Int8ul,
    "reserved" / Array(7, Int8ul),
    "int_line" / Int8ul,
    "int_pin" / Int8ul,
    "min_gnt" / Int8ul,
    "max_lat" / Int8ul,
)
TYPE0_HEADER_SIZE = 64


class MsiCtrl(enum.IntFlag):
    ENABLE = 1 << 0
    MMC_SHIFT = 1  # multiple message capable, 3 bits
    MME_SHIFT = 4  # multiple message enable, 3 bits
    ADDR64 = 1 << 7
    PER_VECTOR_MASK = 1 << 8


# 64-bit MSI without per-vector masking (14 bytes; 16 with padding).
MsiCap = Struct(
    "cap_id" / Int8ul,
    "next" / Int8ul,
    "control" / Int16ul,
    "address_lo" / Int32ul,
    "address_hi" / Int32ul,
    "data" / Int16ul,
    "reserved" / Int16ul,
)
MSI_CAP_SIZE = 16


class MsixCtrl(enum.IntFlag):
    TABLE_SIZE_MASK = 0x7FF  # N-1
    FUNCTION_MASK = 1 << 14
    ENABLE = 1 << 15


MsixCap = Struct(
    "cap_id" / Int8ul,
    "next" / Int8ul,
    "control" / Int16ul,
    "table" / Int32ul,  # BIR in bits 0..2, offset in the rest
    "pba" / Int32ul,
)
MSIX_CAP_SIZE = 12
MSIX_ENTRY_SIZE = 16

PmCap = Struct(
    "cap_id" / Int8ul,
    "next" / Int8ul,
    "pmc" / Int16ul,
    "pmcsr" / Int16ul,
    "bridge" / Int8ul,
    "data" / Int8ul,
)
PM_CAP_SIZE = 8


@dataclass(frozen=True)
class Capability:
    """A capability to place: its declaration's built bytes (``next`` is patched)."""

    cap_id: int
    body: bytes


@dataclass(frozen=True)
class BarSpec:
    """One BAR as the guest sees it: size (power of two, 0 = absent) and type bits."""

    size: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        if self.size and (self.size & (self.size - 1) or self.size < 16):
            raise ValueError(f"BAR size {self.size:#x} is not a power of two >= 16")


def build_config_space(*, vendor_id: int, device_id: int, class_code: int, revision: int,
                       subsys_vendor: int, subsys_id: int, bars: list[BarSpec],
                       int_pin: int, caps: list[Capability], first_cap: int = 0x40) -> bytearray:
    """Lay out a type-0 header and chain ``caps`` from ``first_cap`` on, dword-aligned."""
    if len(bars) != 6:
        raise ValueError("exactly 6 BAR specs are needed")
    header = Type0Header.build(dict(
        vendor_id=vendor_id, device_id=device_id, command=0,
        status=Status.CAP_LIST if caps else 0,
        revision=revision, prog_if=class_code & 0xFF, subclass=(class_code >> 8) & 0xFF,
        class_code=(class_code >> 16) & 0xFF, cache_line=0, latency=0, header_type=0, bist=0,
        bars=[b.flags if b.size else 0 for b in bars], cardbus_cis=0,
        subsys_vendor=subsys_vendor, subsys_id=subsys_id, rom_bar=0,
        cap_ptr=first_cap if caps else 0, reserved=[0] * 7, int_line=0, int_pin=int_pin,
        min_gnt=0, max_lat=0))
    space = bytearray(CONFIG_SPACE_SIZE)
    space[:TYPE0_HEADER_SIZE] = header
    offset = first_cap
    for i, cap in enumerate(caps):
        end = offset + len(cap.body)
        if offset < TYPE0_HEADER_SIZE or end > CONFIG_SPACE_SIZE:
            raise ValueError(f"capability {cap.cap_id:#x} does not fit at {offset:#x}")
        nxt = (end + 3) & ~3 if i + 1 < len(caps) else 0
        space[offset:end] = cap.body
        space[offset] = cap.cap_id
        space[offset + 1] = nxt
        offset = nxt
    return space


def walk_capabilities(space: bytes | bytearray) -> list[tuple[int, int]]:
    """Return ``[(offset, cap_id), ...]`` following the chain; stops on loops or bad pointers."""
    result: list[tuple[int, int]] = []
    if not Int16ul.parse(space[ConfigReg.STATUS:ConfigReg.STATUS + 2]) & Status.CAP_LIST:
        return result
    ptr = space[CAP_POINTER_OFFSET] & ~3
    seen: set[int] = set()
    while ptr and TYPE0_HEADER_SIZE <= ptr <= len(space) - 2 and ptr not in seen:
        seen.add(ptr)
        result.append((ptr, space[ptr]))
        ptr = space[ptr + 1] & ~3
    return result
