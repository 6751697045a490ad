"""PCI configuration space emulation: write masks, BAR sizing, live status bits.

Writes are applied byte by byte through a write mask (as QEMU's own PCI core
does), so BAR sizing falls out naturally: writing all-ones to a BAR reads back
``~(size - 1)`` plus its type bits.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from protocols import pci
from protocols.pci import BarSpec, Capability, CapId, Cmd, ConfigReg, Status

log = logging.getLogger("vdev.config")


class ConfigSpace:
    def __init__(self, *, vendor_id: int, device_id: int, class_code: int, revision: int,
                 subsys_vendor: int, subsys_id: int, bars: list[BarSpec], int_pin: int,
                 caps: list[Capability], on_command: Callable[[int, int], None] = lambda o, n: None,
                 intx_level: Callable[[], bool] = lambda: False):
        self._initial = pci.build_config_space(
            vendor_id=vendor_id, device_id=device_id, class_code=class_code, revision=revision,
            subsys_vendor=subsys_vendor, subsys_id=subsys_id, bars=bars, int_pin=int_pin, caps=caps)
        self.bars = bars
        self.space = bytearray(self._initial)
        self.wmask = self._build_wmask()
        self._on_command = on_command
        self._intx_level = intx_level

    @property
    def size(self) -> int:
        return len(self.space)

    def _build_wmask(self) -> bytearray:
        m = bytearray(len(self.space))

        def put(off: int, fmt: str, value: int) -> None:
            struct.pack_into("<" + fmt, m, off, value)

        put(ConfigReg.COMMAND, "H", Cmd.IO | Cmd.MEMORY | Cmd.MASTER | Cmd.SERR | Cmd.INTX_DISABLE)
        m[ConfigReg.CACHE_LINE] = 0xFF
        m[ConfigReg.LATENCY] = 0xFF
        m[ConfigReg.INT_LINE] = 0xFF
        i = 0
        while i < 6:
            bar = self.bars[i]
            off = ConfigReg.BAR0 + 4 * i
            if bar.size:
                low_bits = 0x3 if bar.flags & pci.BarFlags.IO else 0xF
                mask = ~(bar.size - 1) & ~low_bits & 0xFFFFFFFF
                put(off, "I", mask)
                if bar.flags & pci.BarFlags.MEM_64:
                    put(off + 4, "I", (~(bar.size - 1) >> 32) & 0xFFFFFFFF)
                    i += 1
            i += 1
        for off, cap_id in pci.walk_capabilities(self.space):
            if cap_id == CapId.MSI:
                put(off + 2, "H", 0x0071)          # enable + multiple message enable
                put(off + 4, "I", 0xFFFFFFFC)      # address low
                put(off + 8, "I", 0xFFFFFFFF)      # address high
                put(off + 12, "H", 0xFFFF)         # data
            elif cap_id == CapId.MSIX:
                put(off + 2, "H", 0xC000)          # enable + function mask
        return m

    def reset(self) -> None:
        self.space[:] = self._initial

    def read(self, offset: int, count: int) -> bytes:
        data = bytearray(self.space[offset:offset + count])
        status_lo = ConfigReg.STATUS
        if offset <= status_lo < offset + count and self._intx_level():
            data[status_lo - offset] |= Status.INTX
        return bytes(data)

    def write(self, offset: int, data: bytes) -> None:
        old_cmd = self.command
        for i, b in enumerate(data):
            pos = offset + i
            mask = self.wmask[pos]
            self.space[pos] = (self.space[pos] & ~mask) | (b & mask)
        if self.command != old_cmd:
            self._on_command(old_cmd, self.command)

    @property
    def command(self) -> int:
        return int(struct.unpack_from("<H", self.space, ConfigReg.COMMAND)[0])

    def cap_offset(self, cap_id: int) -> int | None:
        for off, cid in pci.walk_capabilities(self.space):
            if cid == cap_id:
                return off
        return None

    def bar_address(self, index: int) -> int:
        return int(struct.unpack_from("<I", self.space, ConfigReg.BAR0 + 4 * index)[0]) & ~0xF
