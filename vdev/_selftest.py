"""The built-in ``test`` backend: echo, fill, sleep and fail, for tests and benchmarks."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from protocols.device_abi import CmdFlags, SelftestOp

from ._backend import CommandContext, scatter, total_len

MAX_SLEEP_US = 10_000_000
_SG_FLAGS = int(CmdFlags.PAYLOAD_SG | CmdFlags.REPLY_SG)


class SelftestBackend:
    name = "test"
    blocking_opcodes: frozenset[int] = frozenset({SelftestOp.SLEEP})

    def __init__(self) -> None:
        self.released: list[int] = []
        self.executed = 0
        self._table: dict[int, Callable[[CommandContext], tuple[int, int]]] = {
            SelftestOp.NOP: self._nop,
            SelftestOp.ECHO: self._echo,
            SelftestOp.FILL: self._fill,
            SelftestOp.SLEEP: self._sleep,
            SelftestOp.FAIL: self._fail,
        }

    def execute(self, ctx: CommandContext) -> tuple[int, int]:
        handler = self._table.get(ctx.opcode)
        if handler is None:
            return -errno.ENOSYS, 0
        self.executed += 1
        return handler(ctx)

    @staticmethod
    def _nop(ctx: CommandContext) -> tuple[int, int]:
        return 0, 0

    @staticmethod
    def _echo(ctx: CommandContext) -> tuple[int, int]:
        if not ctx.flags & _SG_FLAGS:           # the common case, without lists
            n = ctx.payload_len
            dst = ctx.dma.translate(ctx.reply_addr, ctx.reply_len, write=True)
            src = ctx.dma.translate(ctx.payload_addr, n)
            if n > ctx.reply_len:
                return -errno.EMSGSIZE, 0
            dst[:n] = src
            return 0, n
        srcs, dsts = ctx.payload(), ctx.reply()
        if total_len(srcs) > total_len(dsts):
            return -errno.EMSGSIZE, 0
        return 0, scatter(dsts, srcs)

    @staticmethod
    def _fill(ctx: CommandContext) -> tuple[int, int]:
        byte = bytes([ctx.arg0 & 0xFF])
        n = 0
        for view in ctx.reply():
            view[:] = byte * view.nbytes
            n += view.nbytes
        return 0, n

    @staticmethod
    def _sleep(ctx: CommandContext) -> tuple[int, int]:
        if ctx.arg0 > MAX_SLEEP_US:
            return -errno.EINVAL, 0
        time.sleep(ctx.arg0 / 1e6)
        return 0, 0

    @staticmethod
    def _fail(ctx: CommandContext) -> tuple[int, int]:
        if not 1 <= ctx.arg0 < 4096:
            return -errno.EINVAL, 0
        return -ctx.arg0, 0

    def release_queue(self, queue: int, owner: int = 0, last: bool = True) -> None:
        self.released.append(queue)

    def close(self) -> None:
        pass
