"""What the ring engine hands decoded commands to.

A backend sees one command at a time through a ``CommandContext``: the
opcode, flags, three scalar arguments, and lazily resolved views of the
payload and the reply (plain ranges or scatter lists in guest memory, every
element bounds-checked through the DMA map).  It returns ``(status,
result_len)``.  Opcodes listed in ``blocking_opcodes`` run on a worker thread
of their own queue, so they never hold up another queue.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any, Protocol

from protocols import device_abi as abi
from protocols.device_abi import CmdFlags

from ._dma import DmaError, DmaMap
from ._windows import WindowedDma

_PAYLOAD_SG, _REPLY_SG = int(CmdFlags.PAYLOAD_SG), int(CmdFlags.REPLY_SG)
_SG = struct.Struct("<QII")
#: Total bytes one command may reference (payload or reply).
MAX_TRANSFER = 1 << 32


#: What a backend's ``execute_settled`` may return for a command it started on the
#: ring poller that turned out to wait after all (a transfer that found another
#: thread's command in front of it on its queue): the rest of the command, which a
#: worker thread runs, waiting and answering as the blocking command's execution
#: would.  So the poller never waits for what only a later command of its own can end
#: (a user event that another guest thread sets).
Unfinished = Callable[[], tuple[int, int]]


class Backend(Protocol):
    name: str
    blocking_opcodes: frozenset[int]

    def execute(self, ctx: CommandContext) -> tuple[int, int]:
        """Run one command; return (status: 0 or -errno, reply bytes written)."""

    def release_queue(self, queue: int, owner: int, last: bool) -> None:
        """``queue`` is gone; ``last`` says no other queue of its ``owner`` (a guest
        process) is left, so everything that owner created can be freed."""

    def close(self) -> None:
        """Free everything (the session ended)."""


class CommandContext:
    """One command's arguments and guest buffers; reused per queue (no per-command churn)."""

    __slots__ = (
        "arg0",
        "arg1",
        "arg2",
        "dma",
        "flags",
        "opcode",
        "owner",
        "payload_addr",
        "payload_len",
        "queue",
        "reply_addr",
        "reply_len",
    )
    # Set by the ring engine for each command (the slot's fields).
    opcode: int
    flags: int
    payload_addr: int
    payload_len: int
    reply_addr: int
    reply_len: int
    arg0: int
    arg1: int
    arg2: int

    def __init__(self, dma: DmaMap | WindowedDma, queue: int, owner: int = 0):
        self.dma = dma      # the queue's view: the DMA map, or the map inside its windows
        self.queue = queue
        self.owner = owner      # the queue's OWNER register: which guest process

    def _views(self, addr: int, length: int, is_sg: bool, write: bool) -> list[memoryview]:
        if not is_sg:
            return [self.dma.translate(addr, length, write=write)] if length else []
        if length > abi.MAX_SG_ENTRIES:
            raise DmaError(errno.E2BIG, f"{length} scatter entries (limit {abi.MAX_SG_ENTRIES})")
        table = bytes(self.dma.translate(addr, length * abi.SG_ENTRY_SIZE))   # copied once
        views, total = [], 0
        for ent_addr, ent_len, _ in _SG.iter_unpack(table):
            total += ent_len
            if total > MAX_TRANSFER:
                raise DmaError(errno.E2BIG, "scatter list longer than 4 GiB")
            if ent_len:
                views.append(self.dma.translate(ent_addr, ent_len, write=write))
        return views

    def payload(self) -> list[memoryview]:
        return self._views(self.payload_addr, self.payload_len,
                           bool(self.flags & _PAYLOAD_SG), write=False)

    def reply(self) -> list[memoryview]:
        return self._views(self.reply_addr, self.reply_len,
                           bool(self.flags & _REPLY_SG), write=True)

    def read_payload(self) -> bytes:
        if not self.flags & _PAYLOAD_SG:       # the common case, without the lists
            n = self.payload_len
            return self.dma.read(self.payload_addr, n) if n else b""
        views = self.payload()
        return bytes(views[0]) if len(views) == 1 else b"".join(views)

    def write_reply(self, data: bytes | memoryview) -> int:
        """Scatter ``data`` into the reply; -EMSGSIZE-worthy if it does not fit."""
        if not self.flags & _REPLY_SG:
            n, cap = len(data), self.reply_len
            if n > cap:
                raise DmaError(errno.EMSGSIZE, f"reply buffer holds {cap} bytes, need {n}")
            if cap:
                self.dma.write(self.reply_addr, cap, data)
            return n
        return scatter(self.reply(), [memoryview(data)])


def total_len(views: list[memoryview]) -> int:
    return sum(v.nbytes for v in views)


def scatter(dst: list[memoryview], src: list[memoryview]) -> int:
    """Copy the concatenation of ``src`` into ``dst``; raises if it does not fit."""
    need = total_len(src)
    if need > total_len(dst):
        raise DmaError(errno.EMSGSIZE, f"reply buffer holds {total_len(dst)} bytes, need {need}")
    di, doff = 0, 0
    for s in src:
        soff, n = 0, s.nbytes
        while soff < n:
            d = dst[di]
            chunk = min(n - soff, d.nbytes - doff)
            d[doff:doff + chunk] = s[soff:soff + chunk]
            soff += chunk
            doff += chunk
            if doff == d.nbytes:
                di, doff = di + 1, 0
    return need


BackendFactory = Callable[[], Backend]


class WithDiagnostics:
    """A backend plus the diagnostic opcodes (below DIAG_OPCODE_LIMIT) of another."""

    def __init__(self, primary: Backend, diag: Backend):
        self.primary = primary
        self.diag = diag
        self.name = primary.name
        self.blocking_opcodes = frozenset(primary.blocking_opcodes | diag.blocking_opcodes)

    def execute(self, ctx: CommandContext) -> tuple[int, int]:
        if ctx.opcode < abi.DIAG_OPCODE_LIMIT:
            return self.diag.execute(ctx)
        return self.primary.execute(ctx)

    def release_queue(self, queue: int, owner: int, last: bool) -> None:
        self.diag.release_queue(queue, owner, last)
        self.primary.release_queue(queue, owner, last)

    def close(self) -> None:
        self.diag.close()
        self.primary.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.primary, name)      # e.g. the OpenCL backend's handle table

    @property
    def meter(self) -> Any:
        """A manager's scheduler for the VM: the real backend charges its commands."""
        return getattr(self.primary, "meter", None)

    @meter.setter
    def meter(self, value: Any) -> None:
        self.primary.meter = value     # type: ignore[attr-defined]
