"""Running the guest daemon (ava-vdevd) over the loopback transport, and talking to it
as an application would, or as a hostile one might."""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import tempfile

from protocols import guest_daemon as gd
from protocols.device_abi import Reg
from vdev.bench import loopback_daemon, loopback_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def text(path: str) -> str:
    with open(path) as f:
        return f.read()


@contextlib.contextmanager
def daemon_over_loopback(backend: str = "test", group: str = "users", *daemon_args: str):
    """A device server and a daemon serving it (the benchmarks' own); yields (dir,
    daemon socket, daemon log).  The directory is made world-searchable, so unprivileged
    users reach the socket (its own mode and group decide who may connect)."""
    with tempfile.TemporaryDirectory(prefix="ava-daemon-logs-") as logs:
        server_log, daemon_log = os.path.join(logs, "server.log"), os.path.join(logs, "daemon.log")
        with open(server_log, "wb") as slog, open(daemon_log, "wb") as dlog, \
                loopback_server(backend, slog) as (server_sock, _), \
                loopback_daemon(server_sock, dlog, group=group, options=("-v", *daemon_args)
                                ) as daemon_sock:
            d = os.path.dirname(daemon_sock)
            os.chmod(d, 0o755)
            yield d, daemon_sock, daemon_log
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(daemon_sock)      # still serving: it did not die meanwhile
            except OSError as exc:
                raise AssertionError(f"the daemon died ({exc}): {text(daemon_log)}") from None
            finally:
                probe.close()


class DaemonClient:
    """One application's connection: HELLO, then registers through the daemon.  The
    interface is the vfio-user test client's (``read32``/``write32``), so ``PyRing``
    drives rings in the memory the daemon gave."""

    def __init__(self, path: str, memory: int = 8 << 20):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(path)
        reply, extra, fds = self.request(gd.DaemonOp.HELLO, gd.DAEMON_PROTOCOL, memory,
                                         maxfds=1)
        assert reply.status == 0, reply
        self.owner = reply.owner
        self.gpas = list(struct.unpack(f"<{reply.count}Q", extra[:8 * reply.count]))
        assert self.gpas == [self.gpas[0] + i * gd.CHUNK_SIZE for i in range(reply.count)]
        self.fd = fds[0]
        self.size = reply.size
        self.mm = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED)
        self.iova = self.gpas[0]          # PyRing's guest-physical base

    def request(self, op: int, arg0: int = 0, arg1: int = 0, flags: int = 0, maxfds: int = 0):
        self.sock.send(gd.Request.build(dict(op=op, flags=flags, arg0=arg0, reserved=0,
                                             arg1=arg1)))
        if flags & gd.DaemonFlags.POSTED:
            return None, b"", []
        msg, fds, _, _ = socket.recv_fds(self.sock, gd.MAX_REPLY, max(maxfds, 1))
        reply = gd.Reply.parse(msg[:gd.REPLY_SIZE])
        return reply, msg[gd.REPLY_SIZE:], fds

    async def read32(self, off: int) -> int:
        reply, _, _ = self.request(gd.DaemonOp.READ32, off)
        assert reply.status == 0
        return reply.value

    async def write32(self, off: int, value: int, *, posted: bool = False) -> None:
        """As a BAR write: what the daemon refuses is dropped (``write`` tells)."""
        self.write(off, value, posted=posted)

    def write(self, off: int, value: int, *, posted: bool = False) -> int | None:
        flags = gd.DaemonFlags.POSTED if posted else 0
        reply, _, _ = self.request(gd.DaemonOp.WRITE32, off, value, flags)
        return None if reply is None else reply.status

    def alloc_queue(self) -> int:
        reply, _, _ = self.request(gd.DaemonOp.READ32, Reg.QUEUE_ALLOC)
        return reply.value

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)
        self.sock.close()
