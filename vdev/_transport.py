"""Message framing over an AF_UNIX stream socket, with SCM_RIGHTS fds.

Every read goes through ``recvmsg`` so file descriptors are collected from
whichever chunk carries them (QEMU attaches them to the header bytes).  Once a
message has started, the rest must arrive within ``stall_timeout``; a peer that
stops mid-message is cut off rather than allowed to wedge the session.
"""

from __future__ import annotations

import array
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from protocols.vfio_user import HEADER_SIZE, Header

log = logging.getLogger("vdev.transport")

#: Room for this many fds per read; more than any peer may legitimately send.
FD_BUFFER = 64


class ConnectionLost(Exception):
    """The peer closed or stalled; the reason says where in the stream."""


class FramingError(Exception):
    """The header cannot be trusted to find the next message: reply, then close."""

    def __init__(self, header: Any, errno_: int, reason: str):   # a parsed construct Header
        super().__init__(reason)
        self.header = header
        self.errno = errno_


@dataclass
class Message:
    msg_id: int
    command: int
    size: int
    flags: int
    error: int
    payload: bytes
    fds: list[int] = field(default_factory=list)
    fds_truncated: bool = False

    def take_fds(self) -> list[int]:
        """Hand the fds to the caller, who now owns (and must close) them."""
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        for fd in self.take_fds():
            try:
                os.close(fd)
            except OSError:
                pass


def _fds_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


class MessageStream:
    """Reads and writes whole vfio-user messages on one connected socket."""

    def __init__(self, sock: trio.socket.SocketType, *, max_size: int,
                 stall_timeout: float = 5.0):
        self.sock = sock
        self.max_size = max_size
        self.stall_timeout = stall_timeout
        self._send_lock = trio.Lock()

    async def _read_exact(self, n: int, fds: list[int], where: str,
                          first_wait_unbounded: bool = False) -> tuple[bytes, bool]:
        buf = bytearray()
        truncated = False
        while len(buf) < n:
            unbounded = first_wait_unbounded and not buf
            with trio.move_on_after(float("inf") if unbounded else self.stall_timeout) as scope:
                data, anc, msg_flags, _ = await self.sock.recvmsg(
                    n - len(buf), socket.CMSG_SPACE(FD_BUFFER * 4))
            if scope.cancelled_caught:
                raise ConnectionLost(
                    f"peer stalled {self.stall_timeout:g}s {where} "
                    f"({len(buf)} of {n} bytes received)")
            fds.extend(_fds_from_ancdata(anc))
            truncated |= bool(msg_flags & socket.MSG_CTRUNC)
            if not data:
                if not buf and first_wait_unbounded:
                    return b"", truncated
                raise ConnectionLost(f"peer disconnected {where} ({len(buf)} of {n} bytes)")
            buf += data
        return bytes(buf), truncated

    async def receive(self) -> Message | None:
        """Next message, or None on a clean close between messages."""
        fds: list[int] = []
        try:
            raw, trunc = await self._read_exact(HEADER_SIZE, fds, "mid-header",
                                                first_wait_unbounded=True)
            if not raw:
                return None
            hdr = Header.parse(raw)
            if hdr.size < HEADER_SIZE:
                raise FramingError(hdr, 22, f"size field {hdr.size} is smaller than the header")
            if hdr.size > self.max_size:
                raise FramingError(hdr, 7, f"size field {hdr.size} exceeds the limit {self.max_size}")
            payload = b""
            if hdr.size > HEADER_SIZE:
                payload, trunc2 = await self._read_exact(hdr.size - HEADER_SIZE, fds,
                                                         f"mid-body of command {hdr.command}")
                trunc |= trunc2
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Message(hdr.msg_id, hdr.command, hdr.size, hdr.flags, hdr.error, payload,
                       fds, trunc)

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one message with a single ``sendmsg`` (fds ride on its first byte)."""
        async with self._send_lock:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            view = memoryview(data)
            sent = await self.sock.sendmsg([view], anc)
            while sent < len(view):
                sent += await self.sock.send(view[sent:])
