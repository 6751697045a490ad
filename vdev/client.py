"""A small vfio-user client (trio), the counterpart tests and tools drive the server with.

It speaks the same wire format as QEMU's vfio-user-pci: negotiate, share a
memfd as "guest RAM" with DMA_MAP, query regions and IRQs, read and write
regions, attach eventfds.  ``send_raw``/``receive`` let tests forge anything.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from protocols import vfio_user as vu
from protocols.device_abi import Reg
from protocols.vfio_user import Command, HeaderFlags, MsgType, RegionIndex

from ._transport import Message, MessageStream

#: What QEMU 11.1's client offers in VERSION (shared/notes/vfio-user.md section 2).
QEMU_CAPS = {"max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096,
             "max_dma_maps": 65535, "write_multiple": True,
             "migration": {"pgsize": 4096, "max_bitmap_size": 268435456}}


class VfioUserClientError(Exception):
    """The server answered with an error reply."""

    def __init__(self, command: int, errno_: int):
        name = vu.Command(command).name if command in vu.Command._value2member_map_ else command
        super().__init__(f"{name}"
                         f" failed: {errno.errorcode.get(errno_, errno_)}")
        self.command = command
        self.errno = errno_


@dataclass
class Reply:
    payload: bytes
    fds: list[int]


class GuestMemory:
    """A memfd standing in for guest RAM, mapped here and shareable by fd."""

    def __init__(self, size: int, name: str = "ava-guest-ram"):
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            # Sealed as QEMU seals guest RAM: the server maps nothing that can shrink.
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VfioUserClient:
    def __init__(self, sock: trio.socket.SocketType, *, timeout: float = 5.0):
        self.sock = sock
        self.stream = MessageStream(sock, max_size=64 << 20, stall_timeout=timeout)
        self.timeout = timeout
        self.server_caps: dict[str, Any] = {}
        self._next_id = 1

    @classmethod
    async def connect(cls, path: str, *, timeout: float = 5.0) -> VfioUserClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout=timeout)

    async def aclose(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> VfioUserClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- raw messages ------------------------------------------------------------

    def next_id(self) -> int:
        msg_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFF
        return msg_id

    async def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        await self.stream.send(data, fds)

    async def receive(self) -> Message | None:
        with trio.fail_after(self.timeout):
            return await self.stream.receive()

    async def request(self, command: int, payload: bytes = b"",
                      fds: Sequence[int] = (), *, no_reply: bool = False) -> Reply | None:
        """Send a command and wait for its reply; raises VfioUserClientError on an error reply."""
        msg_id = self.next_id()
        flags = HeaderFlags.NO_REPLY if no_reply else 0
        await self.send_raw(vu.build_message(msg_id, command, payload, flags=flags), fds)
        if no_reply:
            return None
        msg = await self.receive()
        if msg is None:
            raise ConnectionError("server closed the connection")
        if msg.msg_id != msg_id or msg.command != command:
            msg.close_fds()
            raise ConnectionError(f"reply id={msg.msg_id} cmd={msg.command} does not match "
                                  f"request id={msg_id} cmd={command}")
        if int(msg.flags & HeaderFlags.TYPE_MASK) != MsgType.REPLY:
            raise ConnectionError(f"expected a reply, got flags {msg.flags:#x}")
        if msg.flags & HeaderFlags.ERROR:
            msg.close_fds()
            raise VfioUserClientError(command, msg.error)
        return Reply(msg.payload, msg.take_fds())

    async def call(self, command: int, payload: bytes = b"", fds: Sequence[int] = ()) -> Reply:
        """``request`` for a command that is answered (every one but a NO_REPLY)."""
        reply = await self.request(command, payload, fds)
        assert reply is not None
        return reply

    # -- commands ----------------------------------------------------------------------

    async def negotiate(self, caps: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = vu.Version.build(dict(major=0, minor=0,
                                        json=vu.encode_caps(QEMU_CAPS if caps is None else caps)))
        reply = await self.call(Command.VERSION, payload)
        parsed = vu.Version.parse(reply.payload)
        self.server_caps = vu.decode_caps(parsed.json)
        return self.server_caps

    async def dma_map(self, iova: int, size: int, *, fd: int | None = None, offset: int = 0,
                      flags: int = vu.DmaMapFlags.READ | vu.DmaMapFlags.WRITE) -> None:
        payload = vu.DmaMap.build(dict(argsz=vu.DMA_MAP_SIZE, flags=flags, offset=offset,
                                       address=iova, size=size))
        await self.request(Command.DMA_MAP, payload, [fd] if fd is not None else [])

    async def dma_unmap(self, iova: int, size: int, *, flags: int = 0) -> None:
        await self.request(Command.DMA_UNMAP, vu.DmaUnmap.build(dict(
            argsz=vu.DMA_UNMAP_SIZE, flags=flags, address=iova, size=size)))

    async def get_info(self) -> Any:           # a parsed vu.DeviceInfo
        reply = await self.call(Command.DEVICE_GET_INFO, vu.DeviceInfo.build(dict(
            argsz=vu.DEVICE_INFO_SIZE, flags=0, num_regions=0, num_irqs=0)))
        return vu.DeviceInfo.parse(reply.payload)

    async def region_info(self, index: int, argsz: int = vu.REGION_INFO_SIZE) -> Any:
        reply = await self.call(Command.DEVICE_GET_REGION_INFO, vu.RegionInfo.build(dict(
            argsz=argsz, flags=0, index=index, cap_offset=0, size=0, offset=0)))
        for fd in reply.fds:
            os.close(fd)
        return vu.RegionInfo.parse(reply.payload)

    async def irq_info(self, index: int) -> Any:
        reply = await self.call(Command.DEVICE_GET_IRQ_INFO, vu.IrqInfo.build(dict(
            argsz=vu.IRQ_INFO_SIZE, flags=0, index=index, count=0)))
        return vu.IrqInfo.parse(reply.payload)

    async def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 0,
                       fds: Sequence[int] = (), data: bytes = b"") -> None:
        await self.request(Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
            argsz=vu.IRQ_SET_SIZE, flags=flags, index=index, start=start, count=count,
            data=data)), list(fds))

    async def region_read(self, region: int, offset: int, count: int) -> bytes:
        reply = await self.call(Command.REGION_READ, vu.RegionAccess.build(dict(
            offset=offset, region=region, count=count, data=b"")))
        parsed = vu.RegionAccess.parse(reply.payload)
        if parsed.count != len(parsed.data) or parsed.count > count:
            raise ConnectionError(f"REGION_READ reply count {parsed.count} with "
                                  f"{len(parsed.data)} bytes")
        return bytes(parsed.data)

    async def region_write(self, region: int, offset: int, data: bytes, *,
                           posted: bool = False) -> None:
        await self.request(Command.REGION_WRITE, vu.RegionAccess.build(dict(
            offset=offset, region=region, count=len(data), data=data)), no_reply=posted)

    async def reset(self) -> None:
        await self.request(Command.DEVICE_RESET)

    async def read32(self, reg: int, region: int = RegionIndex.BAR0) -> int:
        return int.from_bytes(await self.region_read(region, reg, 4), "little")

    async def write32(self, reg: int, value: int, region: int = RegionIndex.BAR0, *,
                      posted: bool = False) -> None:
        await self.region_write(region, reg, value.to_bytes(4, "little"), posted=posted)


__all__ = ["QEMU_CAPS", "GuestMemory", "Reg", "VfioUserClient", "VfioUserClientError"]
