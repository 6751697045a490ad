"""The real server over a real socket, driven the way QEMU 11.1's client drives it."""

import errno
import os
import stat

import pytest
import trio
from conftest import open_fds, wait_for_idle

from protocols import device_abi as abi
from protocols import pci
from protocols import vfio_user as vu
from protocols.device_abi import Reg
from protocols.vfio_user import IrqIndex, IrqSetFlags, RegionIndex
from vdev.client import VfioUserClient, VfioUserClientError

RW = vu.DmaMapFlags.READ | vu.DmaMapFlags.WRITE


async def test_socket_is_private(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


async def test_qemu_connect_sequence(server, guest_ram):
    """VERSION, DMA maps (fd and fd-less), info queries, config read, IRQ setup,
    reset, BAR sizing and firmware map churn, in QEMU's order."""
    async with await VfioUserClient.connect(server.path) as cli:
        caps = await cli.negotiate()
        assert caps == {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20}
        await cli.dma_map(1 << 20, guest_ram.size, fd=guest_ram.fd)
        await cli.dma_map(0xFFFC0000, 0x40000, flags=vu.DmaMapFlags.READ)   # BIOS ROM, no fd
        info = await cli.get_info()
        assert info.flags == vu.DeviceFlags.RESET | vu.DeviceFlags.PCI
        assert 8 <= info.num_regions <= 100 and 3 <= info.num_irqs <= 50
        sizes = {}
        for index in (0, 1, 2, 3, 4, 5, 7):
            ri = await cli.region_info(index)
            assert ri.index == index and ri.argsz == vu.REGION_INFO_SIZE
            sizes[index] = ri.size
        assert sizes == {0: abi.BAR0_SIZE, 1: 0, 2: abi.MSIX_BAR_SIZE, 3: 0, 4: 0, 5: 0, 7: 256}
        err = await cli.irq_info(IrqIndex.ERR)
        assert err.count == 1
        err_fd = os.eventfd(0)
        await cli.set_irqs(IrqIndex.ERR, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                           0, 1, [err_fd])
        os.close(err_fd)
        config = await cli.region_read(RegionIndex.CONFIG, 0, 256)
        hdr = pci.Type0Header.parse(config)
        assert (hdr.vendor_id, hdr.device_id) == (abi.VENDOR_ID, abi.DEVICE_ID)
        assert (hdr.class_code << 16 | hdr.subclass << 8 | hdr.prog_if) == 0x120000
        assert hdr.int_pin == 1 and hdr.header_type == 0
        assert [cid for _, cid in pci.walk_capabilities(config)] == [pci.CapId.MSIX, pci.CapId.MSI]
        intx = await cli.irq_info(IrqIndex.INTX)
        assert intx.count == 1 and intx.flags & vu.IrqInfoFlags.AUTOMASKED
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        await cli.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                           0, 1, [efd])
        await cli.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 0)
        assert server.device.irq.attached(IrqIndex.INTX) == [None]
        await cli.reset()
        await cli.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                           0, 1, [efd])
        # BAR sizing: all-ones, read back, restore.
        for bar, size in ((0, abi.BAR0_SIZE), (2, abi.MSIX_BAR_SIZE), (1, 0)):
            off = pci.ConfigReg.BAR0 + 4 * bar
            await cli.region_write(RegionIndex.CONFIG, off, b"\xff\xff\xff\xff")
            got = int.from_bytes(await cli.region_read(RegionIndex.CONFIG, off, 4), "little")
            assert got == (~(size - 1) & 0xFFFFFFF0 if size else 0)
            await cli.region_write(RegionIndex.CONFIG, off, b"\0\0\0\0")
        # Firmware reshuffles legacy areas: fd-less map/unmap churn.
        for _ in range(20):
            await cli.dma_map(0xC0000, 0x20000, flags=vu.DmaMapFlags.READ)
            await cli.dma_unmap(0xC0000, 0x20000)
        # Identical re-map is accepted.
        await cli.dma_map(1 << 20, guest_ram.size, fd=guest_ram.fd)
        assert len(server.session.dma) == 2
        os.close(efd)


async def test_register_identity_and_scratch(client, server):
    assert await client.read32(Reg.MAGIC) == abi.MAGIC
    assert await client.read32(Reg.ABI_VERSION) == abi.ABI_VERSION
    assert await client.read32(Reg.SCRATCH) == abi.SCRATCH_RESET
    await client.write32(Reg.SCRATCH, 0xDEADBEEF)
    assert await client.read32(Reg.SCRATCH) == 0xDEADBEEF
    # Posted write (QEMU's memory-BAR writes), then sub-dword and 64-bit access.
    await client.write32(Reg.SCRATCH, 0x12345678, posted=True)
    assert await client.region_read(RegionIndex.BAR0, Reg.SCRATCH, 4) == bytes.fromhex("78563412")
    await client.region_write(RegionIndex.BAR0, Reg.SCRATCH + 2, b"\xaa\xbb")
    assert await client.read32(Reg.SCRATCH) == 0xBBAA5678
    assert await client.region_read(RegionIndex.BAR0, Reg.SCRATCH + 1, 1) == b"\x56"
    both = await client.region_read(RegionIndex.BAR0, Reg.MAGIC, 8)
    assert int.from_bytes(both, "little") == abi.ABI_VERSION << 32 | abi.MAGIC
    # Read-only registers ignore writes.
    await client.write32(Reg.MAGIC, 0)
    assert await client.read32(Reg.MAGIC) == abi.MAGIC


async def test_feature_negotiation_keeps_only_offered_bits(client):
    offered = await client.read32(Reg.DEVICE_FEATURES_LO)
    assert offered == int(abi.DEVICE_FEATURES)
    await client.write32(Reg.DRIVER_FEATURES_LO, 0xFFFFFFFF)
    assert await client.read32(Reg.DRIVER_FEATURES_LO) == offered


async def test_reset_restores_every_register(client, server):
    await client.write32(Reg.SCRATCH, 1)
    await client.write32(Reg.STATUS, abi.DeviceStatus.ACKNOWLEDGE | abi.DeviceStatus.DRIVER_OK)
    await client.write32(Reg.DRIVER_FEATURES_LO, 1)
    await client.region_write(RegionIndex.CONFIG, pci.ConfigReg.COMMAND, b"\x06\x00")
    before = server.device.resets
    await client.reset()
    assert server.device.resets == before + 1
    assert await client.read32(Reg.SCRATCH) == abi.SCRATCH_RESET
    assert await client.read32(Reg.STATUS) == 0
    assert await client.read32(Reg.DRIVER_FEATURES_LO) == 0
    assert await client.region_read(RegionIndex.CONFIG, pci.ConfigReg.COMMAND, 2) == b"\0\0"


async def test_status_write_of_zero_resets(client, server):
    await client.write32(Reg.SCRATCH, 7)
    await client.write32(Reg.STATUS, abi.DeviceStatus.DRIVER_OK)
    assert await client.read32(Reg.STATUS) == abi.DeviceStatus.DRIVER_OK
    await client.write32(Reg.STATUS, 0)
    assert await client.read32(Reg.SCRATCH) == abi.SCRATCH_RESET


async def test_dma_through_shared_memfd(client, server, guest_ram):
    await client.dma_map(0x100000, 2 << 20, fd=guest_ram.fd, offset=1 << 20)
    view = server.session.dma.translate(0x100000 + 0x10, 5, write=True)
    view[:] = b"hello"
    assert guest_ram.mm[(1 << 20) + 0x10:(1 << 20) + 0x15] == b"hello"
    guest_ram.mm[(1 << 20) + 0x100:(1 << 20) + 0x104] = b"ping"
    assert bytes(server.session.dma.translate(0x100100, 4)) == b"ping"
    view.release()


async def test_dma_maps_deduplicate_files(client, server, guest_ram):
    await client.dma_map(0, 1 << 20, fd=guest_ram.fd, offset=0)
    await client.dma_map(4 << 20, 1 << 20, fd=guest_ram.fd, offset=1 << 20)
    assert server.session.dma.mapped_files == 1
    await client.dma_unmap(0, 1 << 20)
    assert server.session.dma.mapped_files == 1
    await client.dma_unmap(4 << 20, 1 << 20)
    assert server.session.dma.mapped_files == 0


async def test_unmap_all(client, server, guest_ram):
    await client.dma_map(0, 1 << 20, fd=guest_ram.fd)
    await client.dma_map(0xFFFC0000, 0x40000, flags=vu.DmaMapFlags.READ)
    await client.dma_unmap(0, 0, flags=vu.DmaUnmapFlags.ALL)
    assert len(server.session.dma) == 0 and server.session.dma.mapped_files == 0


async def read_eventfd(fd: int, timeout: float = 1.0) -> int:
    with trio.fail_after(timeout):
        await trio.lowlevel.wait_readable(fd)
    return os.eventfd_read(fd)


def pending(fd: int) -> bool:
    try:
        os.eventfd_read(fd)
        return True
    except BlockingIOError:
        return False


async def test_msix_irq_through_eventfd(client, server):
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
    # QEMU's MSI-X sequence: vector 0 with no fd ("enabled, no vectors"), then per vector.
    await client.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1)
    for vec, fd in enumerate(fds):
        await client.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                              vec, 1, [fd])
    server.device.raise_irq(1)
    assert await read_eventfd(fds[1]) == 1
    assert not pending(fds[0])
    server.device.raise_irq(0)
    assert await read_eventfd(fds[0]) == 1
    # Disable: fds are closed on the server side, raising no longer signals.
    await client.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 0)
    assert server.device.irq.attached(IrqIndex.MSIX)[:2] == [None, None]
    for fd in fds:
        os.close(fd)


async def test_intx_is_automasked_until_unmask(client, server):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                          0, 1, [efd])
    server.device.raise_irq(0)
    assert await read_eventfd(efd) == 1
    server.device.raise_irq(0)
    assert not pending(efd), "automasked: no second signal before unmask"
    # Status register shows the line (what uio_pci_generic checks).
    status = await client.region_read(RegionIndex.CONFIG, pci.ConfigReg.STATUS, 2)
    assert int.from_bytes(status, "little") & pci.Status.INTX
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
    assert await read_eventfd(efd) == 1, "line still high: unmask re-signals"
    # The guest acknowledges (W1C), then unmask: nothing more.
    await client.write32(Reg.IRQ_STATUS, 1)
    assert await client.read32(Reg.IRQ_STATUS) == 0
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
    assert not pending(efd)
    status = await client.region_read(RegionIndex.CONFIG, pci.ConfigReg.STATUS, 2)
    assert not int.from_bytes(status, "little") & pci.Status.INTX
    os.close(efd)


async def test_intx_resample_eventfd_unmasks(client, server):
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    resample = os.eventfd(0, os.EFD_NONBLOCK)
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                          0, 1, [trigger])
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK,
                          0, 1, [os.dup(resample)])
    server.device.raise_irq(0)
    assert await read_eventfd(trigger) == 1
    os.eventfd_write(resample, 1)      # what KVM does on the guest's EOI
    assert await read_eventfd(trigger) == 1
    os.close(trigger)
    os.close(resample)


async def test_intx_disable_bit_gates_the_line(client, server):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    await client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                          0, 1, [efd])
    await client.region_write(RegionIndex.CONFIG, pci.ConfigReg.COMMAND,
                              int(pci.Cmd.INTX_DISABLE | pci.Cmd.MEMORY).to_bytes(2, "little"))
    server.device.raise_irq(0)
    assert not pending(efd)
    await client.region_write(RegionIndex.CONFIG, pci.ConfigReg.COMMAND,
                              int(pci.Cmd.MEMORY).to_bytes(2, "little"))
    assert await read_eventfd(efd) == 1
    os.close(efd)


async def test_msi_vector(client, server):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    info = await client.irq_info(IrqIndex.MSI)
    assert info.count == 1
    await client.set_irqs(IrqIndex.MSI, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                          0, 1, [efd])
    server.device.raise_irq(0)
    assert await read_eventfd(efd) == 1
    os.close(efd)


async def test_doorbell_reaches_the_device(client, server):
    seen = []
    server.device.on_doorbell = seen.append
    await client.write32(Reg.DOORBELL, 3, posted=True)
    await client.write32(Reg.DOORBELL, 5)
    assert seen == [3, 5]
    assert await client.read32(Reg.DOORBELL) == 0


async def test_disconnect_releases_maps_and_irq_fds_and_next_client_is_served(server, guest_ram):
    before = open_fds()
    cli = await VfioUserClient.connect(server.path)
    await cli.negotiate()
    await cli.dma_map(0, guest_ram.size, fd=guest_ram.fd)
    efd = os.eventfd(0)
    await cli.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1, [efd])
    os.close(efd)
    await cli.write32(Reg.SCRATCH, 42)
    await cli.aclose()
    await wait_for_idle(server)
    assert open_fds() == before
    async with await VfioUserClient.connect(server.path) as cli2:
        await cli2.negotiate()
        assert await cli2.read32(Reg.SCRATCH) == 42, "device state survives a disconnect"


async def test_second_client_is_refused_while_one_is_served(client, server):
    other = await VfioUserClient.connect(server.path)
    with pytest.raises((ConnectionError, trio.BrokenResourceError, OSError)):
        await other.negotiate()
    await other.aclose()
    assert await client.read32(Reg.MAGIC) == abi.MAGIC


async def test_unknown_irq_index_and_error_codes(client):
    with pytest.raises(VfioUserClientError) as exc:
        await client.irq_info(9)
    assert exc.value.errno == errno.EINVAL
