"""Running the guest daemon (ava-vdevd) over the loopback transport, and talking to it
as an application would, or as a hostile one might."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile

from protocols import guest_daemon as gd
from protocols.device_abi import Reg
from vdev.bench import loopback_daemon, loopback_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The probe is a standalone script (it runs in guests), not a package: its client is
# the one these tests use too.
sys.path.insert(0, os.path.join(ROOT, "tests", "samples"))
from isolation_probe import Connection  # noqa: E402


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


class DaemonClient(Connection):
    """One application's connection (the isolation probe's), with the interface of the
    vfio-user test client (``read32``/``write32``), so ``PyRing`` drives rings in the
    memory the daemon gave."""

    def __init__(self, path: str, memory: int = 8 << 20):
        super().__init__(path, memory, timeout=10)
        assert list(self.gpas) == [self.gpas[0] + i * gd.CHUNK_SIZE
                                   for i in range(len(self.gpas))]
        self.iova = self.gpas[0]          # PyRing's guest-physical base

    async def read32(self, off: int) -> int:
        reply, _, _ = self.request(gd.DaemonOp.READ32, off)
        assert reply.status == 0
        return reply.value

    async def write32(self, off: int, value: int, *, posted: bool = False) -> None:
        """As a BAR write: what the daemon refuses is dropped (``write`` tells)."""
        self.write(off, value, posted=posted)

    def alloc_queue(self) -> int:
        return self.read(Reg.QUEUE_ALLOC)
