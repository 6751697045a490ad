"""Hostile clients: every class of bad input ends in an error reply or a closed
connection with a log line saying why; the server serves the next client and
no fd is leaked."""

import errno
import os

import pytest
import trio
from conftest import open_fds, wait_for_idle

from protocols import vfio_user as vu
from protocols.device_abi import Reg
from protocols.vfio_user import Command, IrqIndex, IrqSetFlags, RegionIndex
from vdev._session import MAX_DATA_XFER
from vdev.client import VfioUserClient, VfioUserClientError


async def msg(cli, command, payload=b"", fds=(), expect=0):
    """Send one command; assert the reply's errno (0 = success). Returns the payload."""
    try:
        reply = await cli.request(command, payload, list(fds))
    except VfioUserClientError as exc:
        assert exc.errno == expect, f"expected {errno.errorcode.get(expect)}, got {exc}"
        return None
    assert expect == 0, f"expected {errno.errorcode.get(expect)}, got success"
    return reply.payload


async def still_serving(server):
    """The current client went away; a new one negotiates and reads a register."""
    await wait_for_idle(server)
    async with await VfioUserClient.connect(server.path) as cli:
        await cli.negotiate()
        assert await cli.read32(Reg.MAGIC) == 0x44415641
    await wait_for_idle(server)


@pytest.fixture
async def fds_before(server):
    """Open fds once trio and the server are up (sync fixtures run before trio starts)."""
    return open_fds()


@pytest.fixture
async def client_fds(client):
    """Open fds once the client (and the server's end of it) are connected."""
    return open_fds()


async def raw_client(server):
    cli = await VfioUserClient.connect(server.path)
    return cli


# -- framing ---------------------------------------------------------------------

async def test_truncated_header_then_disconnect(server, caplog, fds_before):
    cli = await raw_client(server)
    await cli.send_raw(b"\x01\x00\x01\x00\x40\x00")
    await cli.aclose()
    await still_serving(server)
    assert "disconnected mid-header" in caplog.text
    assert open_fds() == fds_before


async def test_truncated_header_then_stall(server, caplog, fds_before):
    cli = await raw_client(server)
    await cli.send_raw(b"\x01\x00\x01\x00")
    assert await cli.receive() is None     # the server cut us off after its stall timeout
    await cli.aclose()
    assert "stalled" in caplog.text and "mid-header" in caplog.text
    await still_serving(server)
    assert open_fds() == fds_before


async def test_size_field_smaller_than_header(server, caplog, fds_before):
    cli = await raw_client(server)
    await cli.send_raw(vu.Header.build(dict(msg_id=9, command=1, size=8, flags=0, error=0)))
    reply = await cli.receive()
    assert reply.flags & vu.HeaderFlags.ERROR and reply.error == errno.EINVAL and reply.msg_id == 9
    assert await cli.receive() is None
    await cli.aclose()
    assert "smaller than the header" in caplog.text
    await still_serving(server)
    assert open_fds() == fds_before


async def test_size_field_over_the_limit(server, caplog, fds_before):
    cli = await raw_client(server)
    await cli.send_raw(vu.Header.build(dict(msg_id=3, command=10, size=64 << 20, flags=0, error=0)))
    reply = await cli.receive()
    assert reply.flags & vu.HeaderFlags.ERROR and reply.error == errno.E2BIG
    await cli.aclose()
    assert "exceeds the limit" in caplog.text
    await still_serving(server)
    assert open_fds() == fds_before


async def test_size_field_larger_than_message(server, caplog, fds_before):
    cli = await raw_client(server)
    await cli.negotiate()
    # Claims 64 bytes, sends 16 of payload, waits for an answer.
    await cli.send_raw(vu.Header.build(dict(msg_id=5, command=9, size=64, flags=0, error=0))
                       + b"\0" * 16)
    assert await cli.receive() is None
    await cli.aclose()
    assert "mid-body" in caplog.text
    await still_serving(server)
    assert open_fds() == fds_before


async def test_size_field_smaller_than_message(server, caplog, fds_before):
    async with await raw_client(server) as cli:
        await cli.negotiate()
        body = vu.DmaMap.build(dict(argsz=32, flags=3, offset=0, address=0, size=4096))
        await cli.send_raw(vu.Header.build(dict(msg_id=6, command=Command.DMA_MAP, size=16,
                                                flags=0, error=0)) + body)
        first = await cli.receive()
        assert first.msg_id == 6 and first.error == errno.EINVAL
        # The stray body is then read as a header, which cannot be trusted: closed.
        try:
            while (nxt := await cli.receive()) is not None:
                assert nxt.flags & vu.HeaderFlags.ERROR
        except ConnectionResetError:
            pass    # closed with our unread bytes still queued
    assert "smaller than the header" in caplog.text
    await still_serving(server)
    assert open_fds() == fds_before


async def test_disconnect_mid_message(server, caplog, fds_before, guest_ram):
    cli = await raw_client(server)
    await cli.negotiate()
    payload = vu.DmaMap.build(dict(argsz=32, flags=3, offset=0, address=0, size=4096))
    raw = vu.build_message(2, Command.DMA_MAP, payload)
    await cli.send_raw(raw[:24], [guest_ram.fd])   # fd rides on the partial message
    await cli.aclose()
    await still_serving(server)
    assert "disconnected mid-body" in caplog.text
    assert open_fds() == fds_before


# -- commands ------------------------------------------------------------------------

async def test_command_before_version(server, fds_before):
    async with await raw_client(server) as cli:
        await msg(cli, Command.DEVICE_GET_INFO, vu.DeviceInfo.build(dict(
            argsz=16, flags=0, num_regions=0, num_irqs=0)), expect=errno.EINVAL)
        await cli.negotiate()
        await msg(cli, Command.VERSION, vu.Version.build(dict(major=0, minor=0, json=b"{}\0")),
                  expect=errno.EINVAL)   # twice
    await still_serving(server)
    assert open_fds() == fds_before


@pytest.mark.parametrize("body,err", [
    (b"\0", errno.EINVAL),                                         # too short
    (vu.Version.build(dict(major=1, minor=0, json=b"{}\0")), errno.ENOTSUP),
    (vu.Version.build(dict(major=0, minor=0, json=b"{nope\0")), errno.EINVAL),
    (vu.Version.build(dict(major=0, minor=0, json=b'{"capabilities":[]}\0')), errno.EINVAL),
])
async def test_bad_version(server, body, err):
    async with await raw_client(server) as cli:
        await msg(cli, Command.VERSION, body, expect=err)
    await still_serving(server)


@pytest.mark.parametrize("command", [0, 6, 14, 15, 16, 17, 18, 999])
async def test_unknown_or_unsupported_command(client, command, caplog):
    await msg(client, command, b"\0" * 8, expect=errno.EINVAL)
    assert "unsupported command" in caplog.text
    assert await client.read32(Reg.MAGIC) == 0x44415641


@pytest.mark.parametrize("command,payload", [
    (Command.DMA_MAP, vu.DmaMap.build(dict(argsz=16, flags=3, offset=0, address=0, size=4096))),
    (Command.DMA_MAP, vu.DmaMap.build(dict(argsz=40, flags=3, offset=0, address=0, size=4096))),
    (Command.DMA_UNMAP, vu.DmaUnmap.build(dict(argsz=8, flags=0, address=0, size=4096))),
    (Command.DEVICE_GET_INFO, vu.DeviceInfo.build(dict(argsz=4, flags=0, num_regions=0, num_irqs=0))),
    (Command.DEVICE_GET_REGION_INFO, vu.RegionInfo.build(dict(argsz=16, flags=0, index=0,
                                                              cap_offset=0, size=0, offset=0))),
    (Command.DEVICE_GET_IRQ_INFO, vu.IrqInfo.build(dict(argsz=0, flags=0, index=0, count=0))),
    (Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(argsz=400, flags=0x21, index=0, start=0,
                                                   count=0, data=b""))),
])
async def test_wrong_argsz(client, command, payload, caplog):
    await msg(client, command, payload, expect=errno.EINVAL)
    assert "argsz" in caplog.text


@pytest.mark.parametrize("command", [Command.DMA_MAP, Command.REGION_READ, Command.DEVICE_SET_IRQS,
                                     Command.DEVICE_GET_REGION_INFO])
async def test_payload_shorter_than_fixed_part(client, command):
    await msg(client, command, b"\0" * 10, expect=errno.EINVAL)


async def test_region_index_out_of_range(client):
    await msg(client, Command.DEVICE_GET_REGION_INFO, vu.RegionInfo.build(dict(
        argsz=32, flags=0, index=9, cap_offset=0, size=0, offset=0)), expect=errno.EINVAL)
    for region in (9, 1000, 0xFFFFFFFF):
        with pytest.raises(VfioUserClientError) as exc:
            await client.region_read(region, 0, 4)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(VfioUserClientError):       # a zero-size BAR
        await client.region_read(RegionIndex.BAR1, 0, 4)


@pytest.mark.parametrize("region,offset,count", [
    (RegionIndex.BAR0, 0x1000, 4),                 # at the end
    (RegionIndex.BAR0, 0xFFC, 8),                  # straddles the end
    (RegionIndex.BAR0, 0xFFFFFFFFFFFFFFF8, 8),     # wraps
    (RegionIndex.CONFIG, 250, 8),
    (RegionIndex.CONFIG, 256, 1),
])
async def test_access_beyond_region(client, region, offset, count):
    with pytest.raises(VfioUserClientError) as exc:
        await client.region_read(region, offset, count)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(VfioUserClientError):
        await client.region_write(region, offset, b"\0" * count)


@pytest.mark.parametrize("offset,count", [(2, 4), (4, 8), (1, 2), (0, 3), (0, 16), (0, 0)])
async def test_unaligned_or_odd_sized_bar_access(client, offset, count):
    with pytest.raises(VfioUserClientError) as exc:
        await client.region_read(RegionIndex.BAR0, offset, count)
    assert exc.value.errno == errno.EINVAL


async def test_oversized_access(client):
    with pytest.raises(VfioUserClientError) as exc:
        await client.region_read(RegionIndex.CONFIG, 0, MAX_DATA_XFER + 1)
    assert exc.value.errno == errno.E2BIG


async def test_write_count_disagrees_with_data(client):
    payload = vu.RegionAccess.build(dict(offset=0x1C, region=0, count=4, data=b"\1\2"))
    await msg(client, Command.REGION_WRITE, payload, expect=errno.EINVAL)
    payload = vu.RegionAccess.build(dict(offset=0x1C, region=0, count=4, data=b"\1\2\3\4\5\6\7\0"))
    await msg(client, Command.REGION_READ, payload, expect=errno.EINVAL)


async def test_dma_map_overlap(client, guest_ram):
    await client.dma_map(0x100000, 0x200000, fd=guest_ram.fd)
    client_fds = open_fds()     # the server now holds one mapping of the memfd
    for iova, size in ((0x100000, 0x100000), (0x0, 0x101000), (0x2FF000, 0x2000), (0x0, 0x1000000)):
        dup = os.dup(guest_ram.fd)
        with pytest.raises(VfioUserClientError) as exc:
            await client.dma_map(iova, size, fd=dup)
        os.close(dup)
        assert exc.value.errno == errno.EEXIST
    assert open_fds() == client_fds


@pytest.mark.parametrize("iova,size,offset,flags,err", [
    (0x1000, 0, 0, 3, errno.EINVAL),                   # empty
    (0x1001, 0x1000, 0, 3, errno.EINVAL),              # unaligned
    (0xFFFFFFFFFFFFF000, 0x2000, 0, 3, errno.EINVAL),  # wraps
    (0x0, 0x1000, 0, 0x10, errno.EINVAL),              # unknown flag
    (0x0, 8 << 20, 0, 3, errno.EINVAL),                # beyond the file
])
async def test_bad_dma_map(client, guest_ram, iova, size, offset, flags, err, client_fds):
    dup = os.dup(guest_ram.fd)
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_map(iova, size, fd=dup, offset=offset, flags=flags)
    os.close(dup)
    assert exc.value.errno == err
    assert open_fds() == client_fds


async def test_dma_map_of_unmappable_fd(client):
    r, w = os.pipe()
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_map(0, 0x1000, fd=r)
    assert exc.value.errno == errno.EINVAL
    os.close(r)
    os.close(w)


async def test_dma_unmap_of_something_not_mapped(client, guest_ram):
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_unmap(0x100000, 0x1000)
    assert exc.value.errno == errno.ENOENT
    await client.dma_map(0x100000, 0x2000, fd=os.dup(guest_ram.fd))
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_unmap(0x100000, 0x1000)     # partial: not allowed
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_unmap(0x100000, 0x2000, flags=vu.DmaUnmapFlags.ALL)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(VfioUserClientError) as exc:
        await client.dma_unmap(0x100000, 0x2000, flags=vu.DmaUnmapFlags.GET_DIRTY_PAGE_INFO)
    assert exc.value.errno == errno.EINVAL


async def test_translate_read_and_write_refuse_anything_outside_one_range(client, server, guest_ram):
    from vdev import DmaError
    await client.dma_map(0x100000, 0x100000, fd=os.dup(guest_ram.fd))
    await client.dma_map(0x200000, 0x100000, fd=os.dup(guest_ram.fd), offset=0x100000)
    await client.dma_map(0x400000, 0x1000, flags=vu.DmaMapFlags.READ)       # fd-less
    await client.dma_map(0x500000, 0x1000, fd=os.dup(guest_ram.fd), offset=0x300000,
                         flags=vu.DmaMapFlags.READ)
    dma = server.session.dma
    for iova, length, write in ((0x0, 4, False), (0x1FFFFC, 8, False), (0x300000, 1, False),
                                (0x400000, 4, False), (0x500000, 4, True), (-1, 4, False),
                                (0x100000, -1, False), (0xFFFFFFFFFFFFFFFF, 2, False)):
        with pytest.raises(DmaError):
            dma.translate(iova, length, write=write)
        # A command's payload and reply go through read and write: the same refusals.
        with pytest.raises(DmaError):
            if write:
                dma.write(iova, length, b"x")
            else:
                dma.read(iova, length)
    assert len(dma.translate(0x1FFFFC, 4)) == 4
    dma.write(0x1FFFFC, 4, b"ab")
    assert dma.read(0x1FFFFC, 4)[:2] == b"ab"
    with pytest.raises(DmaError):
        dma.write(0x1FFFFC, 2, b"abc")      # more than the checked length


async def test_more_fds_than_negotiated(client, caplog, client_fds):
    fds = [os.eventfd(0) for _ in range(9)]
    await msg(client, Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
        argsz=20, flags=IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
        index=IrqIndex.MSIX, start=0, count=8, data=b"")), fds, expect=errno.EINVAL)
    for fd in fds:
        os.close(fd)
    assert "fds attached" in caplog.text
    assert open_fds() == client_fds


async def test_fds_on_a_command_that_takes_none(client, client_fds):
    efd = os.eventfd(0)
    await msg(client, Command.REGION_READ, vu.RegionAccess.build(dict(
        offset=0, region=0, count=4, data=b"")), [efd], expect=errno.EINVAL)
    os.close(efd)
    assert open_fds() == client_fds


async def test_fd_flood_is_closed(server, fds_before):
    cli = await raw_client(server)
    await cli.negotiate()
    fds = [os.eventfd(0) for _ in range(200)]
    raw = vu.build_message(1, Command.DEVICE_GET_INFO, vu.DeviceInfo.build(dict(
        argsz=16, flags=0, num_regions=0, num_irqs=0)))
    try:
        await cli.send_raw(raw, fds[:250])
        reply = await cli.receive()
        assert reply.error == errno.EINVAL
    except OSError:
        pass        # the kernel itself may refuse that many (SCM_MAX_FD)
    for fd in fds:
        os.close(fd)
    await cli.aclose()
    await still_serving(server)
    assert open_fds() == fds_before


@pytest.mark.parametrize("flags,index,start,count,nfds,data", [
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, IrqIndex.MSIX, 62, 4, 0, b""),
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, IrqIndex.MSIX, 0, 2, 1, b""),
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 7, 0, 1, 1, b""),
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, IrqIndex.REQ, 0, 1, 1, b""),
    (IrqSetFlags.DATA_NONE | IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1, 0, b""),
    (IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER | IrqSetFlags.ACTION_MASK, 0, 0, 1, 0, b""),
    (IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_TRIGGER, IrqIndex.MSIX, 0, 2, 0, b"\1"),
    (IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, IrqIndex.MSIX, 0, 1, 1, b""),
    (0x100 | IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, IrqIndex.MSIX, 0, 0, 0, b""),
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK, IrqIndex.MSIX, 0, 1, 1, b""),
])
async def test_bad_set_irqs(client, flags, index, start, count, nfds, data, client_fds):
    fds = [os.eventfd(0) for _ in range(nfds)]
    await msg(client, Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
        argsz=20, flags=flags, index=index, start=start, count=count, data=data)),
        fds, expect=errno.EINVAL)
    for fd in fds:
        os.close(fd)
    assert open_fds() == client_fds


async def test_failed_no_reply_message_gets_no_reply(client, caplog):
    raw = vu.build_message(77, Command.REGION_WRITE, vu.RegionAccess.build(dict(
        offset=0x2000, region=0, count=4, data=b"\0" * 4)), flags=vu.HeaderFlags.NO_REPLY)
    await client.send_raw(raw)
    # The next reply we get must be for the next request, not for id 77.
    assert await client.read32(Reg.MAGIC) == 0x44415641
    assert "beyond region" in caplog.text


async def test_unsolicited_reply_is_dropped(client, caplog):
    await client.send_raw(vu.build_message(500, Command.DMA_READ, b"\0" * 16, flags=vu.MsgType.REPLY))
    assert await client.read32(Reg.MAGIC) == 0x44415641
    assert "unexpected reply" in caplog.text


async def test_garbage_stream_never_kills_the_server(server, fds_before):
    rng = __import__("random").Random(1234)
    for _ in range(20):
        cli = await raw_client(server)
        await cli.negotiate()
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        await cli.send_raw(blob)
        await trio.sleep(0.01)
        await cli.aclose()
        await wait_for_idle(server, timeout=3)
    await still_serving(server)
    assert open_fds() == fds_before


@pytest.mark.parametrize("make_fd", ["regular file", "pipe", "memfd"])
async def test_set_irqs_with_an_fd_that_is_not_an_eventfd(client, server, make_fd, tmp_path,
                                                          client_fds):
    """The server writes 8 bytes to a trigger fd and polls a resample fd: anything but an
    eventfd is refused (a file would be written to; epoll refuses /dev/null or a memfd)."""
    if make_fd == "regular file":
        path = tmp_path / "victim"
        path.write_bytes(b"host data")
        fds = [os.open(path, os.O_RDWR)]
    elif make_fd == "pipe":
        fds = list(os.pipe())
    else:
        fds = [os.memfd_create("not-an-eventfd")]
    trigger = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER
    await msg(client, Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
        argsz=20, flags=trigger, index=IrqIndex.MSIX, start=0, count=1, data=b"")),
        fds[:1], expect=errno.EINVAL)
    await msg(client, Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
        argsz=20, flags=IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK,
        index=IrqIndex.INTX, start=0, count=1, data=b"")), fds[:1], expect=errno.EINVAL)
    if make_fd == "regular file":
        assert (tmp_path / "victim").read_bytes() == b"host data"
    for fd in fds:
        os.close(fd)
    assert open_fds() == client_fds, "the server closed the fds it refused"
    assert await client.read32(Reg.MAGIC) == 0x44415641, "the session goes on"


async def test_dma_map_of_a_memfd_that_can_shrink(client):
    """A client that truncates mapped guest memory would kill the server with SIGBUS:
    memory not sealed with F_SEAL_SHRINK is refused (QEMU's memfd backend seals)."""
    import fcntl
    fd = os.memfd_create("unsealed", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 20)
    try:
        with pytest.raises(VfioUserClientError) as exc:
            await client.dma_map(0, 1 << 20, fd=fd)
        assert exc.value.errno == errno.EINVAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        await client.dma_map(0, 1 << 20, fd=fd)              # sealed: accepted
    finally:
        os.close(fd)
