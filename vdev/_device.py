"""The ava-vdev PCI device model: regions, BAR0 registers, MSI-X BAR, reset.

Region indices follow vfio (0-5 BARs, 6 ROM, 7 config, 8 VGA).  Only BAR0
(control registers), BAR2 (MSI-X table and PBA) and config space exist; the
rest report size 0.  No region is mmappable: a trapped doorbell costs a socket
message, but QEMU keeps posting BAR writes, which measured better.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from construct import Int32ul

from protocols import device_abi as abi
from protocols import pci
from protocols.device_abi import DeviceStatus, QReg, Reg
from protocols.pci import BarSpec, Capability, CapId
from protocols.vfio_user import IrqIndex, RegionFlags, RegionIndex

from ._config import ConfigSpace
from ._irq import IrqController
from ._queues import QueueTable

log = logging.getLogger("vdev.device")

NUM_REGIONS = 9
BAR_ACCESS_SIZES = (1, 2, 4, 8)


class RegionError(Exception):
    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class RegionDesc:
    index: int
    size: int
    flags: int


class Bar0Registers:
    """BAR0's 32-bit control registers; 1/2/4/8-byte accesses split per dword."""

    def __init__(self, device: AcceleratorDevice):
        self._dev = device
        self.values: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        self.values = {
            Reg.MAGIC: abi.MAGIC,
            Reg.ABI_VERSION: abi.ABI_VERSION,
            Reg.DEVICE_FEATURES_LO: int(abi.DEVICE_FEATURES) & 0xFFFFFFFF,
            Reg.DEVICE_FEATURES_HI: int(abi.DEVICE_FEATURES) >> 32,
            Reg.DRIVER_FEATURES_LO: 0,
            Reg.DRIVER_FEATURES_HI: 0,
            Reg.STATUS: 0,
            Reg.SCRATCH: abi.SCRATCH_RESET,
            Reg.DOORBELL: 0,
            Reg.IRQ_STATUS: 0,
        }

    def read(self, offset: int, count: int) -> bytes:
        out = bytearray()
        base = offset & ~3
        for dword in range(base, offset + count, 4):
            out += Int32ul.build(self._read_dword(dword))
        skip = offset - base
        return bytes(out[skip:skip + count])

    def _read_dword(self, reg: int) -> int:
        queues = self._dev.queues
        if reg >= abi.QUEUE_WINDOW_BASE:
            q, qreg = divmod(reg - abi.QUEUE_WINDOW_BASE, abi.QUEUE_WINDOW_SIZE)
            return queues.read(q, qreg) if q < queues.count else 0
        if reg == Reg.QUEUE_ALLOC:
            return queues.alloc()
        if reg == Reg.NUM_QUEUES:
            return queues.count
        if reg == Reg.DOORBELL:
            return 0
        return self.values.get(reg, 0)

    def write(self, offset: int, data: bytes) -> None:
        base = offset & ~3
        buf = bytearray(((offset + len(data) - base + 3) // 4) * 4)
        bytemask = bytearray(len(buf))
        buf[offset - base: offset - base + len(data)] = data
        bytemask[offset - base: offset - base + len(data)] = b"\xff" * len(data)
        for i in range(0, len(buf), 4):
            value = Int32ul.parse(buf[i:i + 4])
            mask = Int32ul.parse(bytemask[i:i + 4])
            self._write_dword(base + i, value, mask)

    def _write_dword(self, reg: int, value: int, mask: int) -> None:
        if reg >= abi.QUEUE_WINDOW_BASE:
            queues = self._dev.queues
            q, qreg = divmod(reg - abi.QUEUE_WINDOW_BASE, abi.QUEUE_WINDOW_SIZE)
            if q < queues.count:
                old = 0 if qreg == QReg.CTRL else queues.read(q, qreg)
                queues.write(q, qreg, (old & ~mask) | (value & mask))
            return
        old = self.values.get(reg, 0)
        merged = (old & ~mask) | (value & mask)
        if reg in (Reg.DRIVER_FEATURES_LO, Reg.DRIVER_FEATURES_HI):
            offered = self.values[Reg.DEVICE_FEATURES_LO if reg == Reg.DRIVER_FEATURES_LO
                                  else Reg.DEVICE_FEATURES_HI]
            self.values[reg] = merged & offered
        elif reg == Reg.STATUS:
            if merged == 0:
                log.info("guest wrote 0 to STATUS: device reset")
                self._dev.reset()
            else:
                self.values[reg] = merged
        elif reg == Reg.SCRATCH:
            self.values[reg] = merged
        elif reg == Reg.IRQ_STATUS:
            self.values[reg] = old & ~(value & mask)
            if not self.values[reg]:
                self._dev.irq.set_intx_level(False)
        elif reg == Reg.DOORBELL:
            self._dev.doorbell(value & mask)
        else:
            log.debug("write of %#x to read-only or undefined BAR0 offset %#x ignored", value, reg)


class MsixBar:
    """BAR2: the MSI-X table (QEMU emulates it; kept for completeness) and the PBA."""

    def __init__(self, vectors: int):
        self.vectors = vectors
        self.table = bytearray(abi.MSIX_PBA_OFFSET)
        self.reset()

    def reset(self) -> None:
        self.table[:] = bytes(len(self.table))
        for v in range(self.vectors):           # vector control: masked
            struct.pack_into("<I", self.table, v * pci.MSIX_ENTRY_SIZE + 12, 1)

    def read(self, offset: int, count: int) -> bytes:
        if offset < abi.MSIX_PBA_OFFSET:
            end = min(offset + count, abi.MSIX_PBA_OFFSET)
            return bytes(self.table[offset:end]) + bytes(count - (end - offset))
        return bytes(count)     # pending bits: QEMU tracks them itself

    def write(self, offset: int, data: bytes) -> None:
        if offset < abi.MSIX_PBA_OFFSET:
            end = min(offset + len(data), abi.MSIX_PBA_OFFSET)
            self.table[offset:end] = data[:end - offset]


class AcceleratorDevice:
    """What the guest sees: config space, BAR0, BAR2 and interrupts."""

    def __init__(self, *, on_doorbell: Callable[[int], None] | None = None):
        bars = [BarSpec()] * 6
        bars[0] = BarSpec(abi.BAR0_SIZE, 0)
        bars[abi.MSIX_BAR] = BarSpec(abi.MSIX_BAR_SIZE, 0)
        caps = [
            Capability(CapId.MSIX, pci.MsixCap.build(dict(
                cap_id=CapId.MSIX, next=0, control=abi.MSIX_VECTORS - 1,
                table=abi.MSIX_TABLE_OFFSET | abi.MSIX_BAR,
                pba=abi.MSIX_PBA_OFFSET | abi.MSIX_BAR))),
            Capability(CapId.MSI, pci.MsiCap.build(dict(
                cap_id=CapId.MSI, next=0, control=pci.MsiCtrl.ADDR64,
                address_lo=0, address_hi=0, data=0, reserved=0))),
        ]
        self.irq = IrqController(msi_vectors=1, msix_vectors=abi.MSIX_VECTORS,
                                 intx_gate=self._intx_enabled)
        self.config = ConfigSpace(
            vendor_id=abi.VENDOR_ID, device_id=abi.DEVICE_ID, class_code=abi.CLASS_CODE,
            revision=abi.REVISION, subsys_vendor=abi.SUBSYS_VENDOR_ID, subsys_id=abi.SUBSYS_ID,
            bars=bars, int_pin=1, caps=caps, on_command=self._command_written,
            intx_level=lambda: self.irq.intx_level)
        self.queues = QueueTable()
        self.regs = Bar0Registers(self)
        self.msix = MsixBar(abi.MSIX_VECTORS)
        self.on_doorbell = on_doorbell
        self.reset_hooks: list[Callable[[], None]] = []
        self.doorbells = 0
        self.resets = 0
        self._regions = {
            RegionIndex.BAR0: RegionDesc(0, abi.BAR0_SIZE, RegionFlags.READ | RegionFlags.WRITE),
            RegionIndex.BAR2: RegionDesc(2, abi.MSIX_BAR_SIZE, RegionFlags.READ | RegionFlags.WRITE),
            RegionIndex.CONFIG: RegionDesc(7, self.config.size, RegionFlags.READ | RegionFlags.WRITE),
        }

    # -- regions --------------------------------------------------------------

    def region(self, index: int) -> RegionDesc:
        if not 0 <= index < NUM_REGIONS:
            raise RegionError(errno.EINVAL,
                              f"region index {index} out of range (0..{NUM_REGIONS - 1})")
        return self._regions.get(RegionIndex(index), RegionDesc(index, 0, 0))

    def check_access(self, index: int, offset: int, count: int, write: bool) -> RegionDesc:
        """Validate a region access; raises RegionError with the offending values."""
        desc = self.region(index)
        if desc.size == 0:
            raise RegionError(errno.EINVAL, f"region {index} does not exist")
        if count == 0:
            raise RegionError(errno.EINVAL, f"zero-length access to region {index}")
        if offset >= desc.size or count > desc.size - offset:
            raise RegionError(errno.EINVAL, f"access {offset:#x}+{count} beyond region {index} "
                              f"(size {desc.size:#x})")
        if index != RegionIndex.CONFIG:
            if count not in BAR_ACCESS_SIZES:
                raise RegionError(errno.EINVAL, f"BAR{index} access of {count} bytes (1, 2, 4 or 8)")
            if offset % count:
                raise RegionError(errno.EINVAL, f"unaligned BAR{index} access {offset:#x}+{count}")
        return desc

    def read_region(self, index: int, offset: int, count: int) -> bytes:
        self.check_access(index, offset, count, write=False)
        if index == RegionIndex.CONFIG:
            return self.config.read(offset, count)
        if index == RegionIndex.BAR0:
            return self.regs.read(offset, count)
        return self.msix.read(offset, count)

    def write_region(self, index: int, offset: int, data: bytes) -> None:
        self.check_access(index, offset, len(data), write=True)
        if index == RegionIndex.CONFIG:
            self.config.write(offset, data)
        elif index == RegionIndex.BAR0:
            self.regs.write(offset, data)
        else:
            self.msix.write(offset, data)

    # -- interrupts -----------------------------------------------------------------

    def _intx_enabled(self) -> bool:
        return not self.config.command & pci.Cmd.INTX_DISABLE

    def _command_written(self, old: int, new: int) -> None:
        if (old ^ new) & pci.Cmd.INTX_DISABLE:
            self.irq.update_intx()

    def raise_irq(self, vector: int = 0) -> None:
        """Interrupt the guest: record the cause in IRQ_STATUS, then fire MSI-X/MSI
        ``vector`` if the guest enabled them, else assert INTx (level, until the
        guest clears IRQ_STATUS)."""
        if not 0 <= vector < abi.MSIX_VECTORS:
            raise ValueError(f"vector {vector} out of range")
        self.regs.values[Reg.IRQ_STATUS] |= 1 << (vector % 32)
        if self.irq.raise_vector(vector) == IrqIndex.INTX:
            self.irq.set_intx_level(True)

    # -- doorbell and reset -----------------------------------------------------------

    def doorbell(self, value: int) -> None:
        self.doorbells += 1
        if self.on_doorbell is not None:
            self.on_doorbell(value)

    def reset(self) -> None:
        """Every register back to its reset value; the INTx line drops."""
        self.resets += 1
        self.queues.release_all()
        self.regs.reset()
        self.msix.reset()
        self.config.reset()
        self.irq.set_intx_level(False)
        for hook in self.reset_hooks:
            hook()

    @property
    def status(self) -> int:
        return self.regs.values[Reg.STATUS]

    def fail(self, reason: str) -> None:
        """Mark the device FAILED (the guest sees it in STATUS)."""
        log.error("device failed: %s", reason)
        self.regs.values[Reg.STATUS] |= DeviceStatus.FAILED
