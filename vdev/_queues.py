"""Queue windows in BAR0: claims, ring addresses, enable/disable/release.

This is register state only.  Whoever serves rings (the ring engine of the
current session) registers as the listener and is told about enable, disable
and release; without one, ENABLE fails with ENODEV.  All methods take a lock:
the ring engine's thread reports failures while the trio thread handles
register accesses.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from protocols import device_abi as abi
from protocols.device_abi import QReg, QueueCtrl, QueueState

from ._dma import DmaError, DmaMap
from ._windows import Windows, describe, read_window_table

log = logging.getLogger("vdev.queues")


class QueueListener(Protocol):
    dma: DmaMap     # the session's map: where LOAD_WINDOWS reads a window table

    def enable_queue(self, queue: int, ring_addr: int, slots: int, owner: int,
                     windows: Windows | None = None) -> int:
        """Start serving (inside ``windows`` when not None); return 0 or an errno."""

    def set_windows(self, queue: int, windows: Windows) -> None:
        """An enabled queue's windows change; in force when this returns."""

    def disable_queue(self, queue: int) -> None: ...

    def release_queue(self, queue: int, owner: int, last: bool) -> None:
        """``last``: no other claimed queue has this owner."""

    def fence(self, queue: int, owner: int) -> object:
        """``owner`` may no longer reach what it reached through ``queue`` (new windows,
        a disable, a release): ``settling`` says so until every command of the owner
        taken before now, and every transfer those left running, is over."""

    def settling(self, queue: int) -> bool:
        """Whether a fence of the queue is not settled yet (QueueState.SETTLING)."""


@dataclass
class QueueRegs:
    ring_lo: int = 0
    ring_hi: int = 0
    size: int = 0
    owner: int = 0
    error: int = 0
    state: int = 0
    windows_lo: int = 0
    windows_hi: int = 0
    windows: Windows | None = None     # None: not windowed (the whole DMA map)

    @property
    def ring_addr(self) -> int:
        return self.ring_hi << 32 | self.ring_lo


class QueueTable:
    def __init__(self, count: int = abi.NUM_QUEUES):
        self.count = count
        self.regs = [QueueRegs() for _ in range(count)]
        self.listener: QueueListener | None = None
        self._lock = threading.RLock()

    def alloc(self) -> int:
        """QUEUE_ALLOC read: claim the lowest free queue."""
        with self._lock:
            for q, regs in enumerate(self.regs):
                if not regs.state & QueueState.CLAIMED:
                    self.regs[q] = QueueRegs(state=QueueState.CLAIMED)
                    log.debug("queue %d claimed", q)
                    return q
        log.warning("QUEUE_ALLOC: all %d queues are claimed", self.count)
        return abi.NO_QUEUE

    def read(self, queue: int, reg: int) -> int:
        with self._lock:
            r = self.regs[queue]
            state = r.state
            if reg == QReg.CTRL and self.listener is not None and self.listener.settling(queue):
                state |= QueueState.SETTLING
            values: dict[int, int] = {
                QReg.RING_LO: r.ring_lo, QReg.RING_HI: r.ring_hi, QReg.SIZE: r.size,
                QReg.CTRL: state, QReg.OWNER: r.owner, QReg.ERROR: r.error,
                QReg.WINDOWS_LO: r.windows_lo, QReg.WINDOWS_HI: r.windows_hi}
            return values.get(reg, 0)

    def write(self, queue: int, reg: int, value: int) -> None:
        with self._lock:
            r = self.regs[queue]
            if reg == QReg.CTRL:
                self._ctrl(queue, value)
                return
            if reg == QReg.WINDOWS_LO:      # any time: only LOAD_WINDOWS reads them
                r.windows_lo = value
                return
            if reg == QReg.WINDOWS_HI:
                r.windows_hi = value
                return
            if reg not in (QReg.RING_LO, QReg.RING_HI, QReg.SIZE, QReg.OWNER):
                return
            if r.state & QueueState.ENABLED:
                log.warning("queue %d: register %#x written while enabled; ignored", queue, reg)
                return
            if reg == QReg.RING_LO:
                r.ring_lo = value
            elif reg == QReg.RING_HI:
                r.ring_hi = value
            elif reg == QReg.SIZE:
                r.size = value
            else:
                r.owner = value

    def _ctrl(self, queue: int, value: int) -> None:
        r = self.regs[queue]
        if value == QueueCtrl.ENABLE:
            if r.state & QueueState.ENABLED:
                return
            err = self._validate(queue, r)
            if not err and self.listener is not None:     # _validate says ENODEV if None
                err = self.listener.enable_queue(queue, r.ring_addr, r.size, r.owner,
                                                 r.windows)
            if err:
                r.state = (r.state | QueueState.FAILED) & ~QueueState.ENABLED
                r.error = err
                log.warning("queue %d: ENABLE failed: %s (ring %#x, %d slots, owner %d)", queue,
                            errno.errorcode.get(err, err), r.ring_addr, r.size, r.owner)
            else:
                r.state = (r.state | QueueState.ENABLED) & ~QueueState.FAILED
                r.error = 0
                log.info("queue %d enabled: ring %#x, %d slots, owner %d", queue, r.ring_addr,
                         r.size, r.owner)
        elif value == QueueCtrl.DISABLE:
            self._disable(queue)
        elif value == QueueCtrl.RELEASE:
            self.release(queue)
        elif value == QueueCtrl.LOAD_WINDOWS:
            self._load_windows(queue, r)
        else:
            log.warning("queue %d: unknown CTRL value %#x ignored", queue, value)

    def _load_windows(self, queue: int, r: QueueRegs) -> None:
        """Copy the queue's window table; a bad one leaves no window at all (fail closed)."""
        if not r.state & QueueState.CLAIMED or self.listener is None:
            r.error = errno.EPERM if self.listener is not None else errno.ENODEV
            log.warning("queue %d: LOAD_WINDOWS on a queue that is not claimed (or no "
                        "session): ignored", queue)
            return
        addr = r.windows_hi << 32 | r.windows_lo
        err = 0
        try:
            windows = read_window_table(self.listener.dma, addr)
        except DmaError as exc:
            windows, err = (), exc.errno
            log.warning("queue %d: window table at %#x refused (%s): the queue may touch no "
                        "guest memory until a good table is loaded", queue, addr, exc)
        r.windows = windows
        r.state |= QueueState.WINDOWED
        r.error = 0
        log.info("queue %d: DMA windows loaded: %s", queue, describe(windows))
        if r.state & QueueState.ENABLED:
            self.listener.set_windows(queue, windows)   # may fail the queue (EFAULT)
        # Enabled or not (a queue disabled or failed a moment ago may still run a command
        # of its owner): memory the new windows leave out is settled once the owner's
        # commands before now are over.
        self.listener.fence(queue, r.owner)
        if err:
            r.error = err       # the table's fault is the cause, whatever followed

    def _validate(self, queue: int, r: QueueRegs) -> int:
        if not r.state & QueueState.CLAIMED:
            return errno.EPERM
        if self.listener is None:
            return errno.ENODEV
        if not abi.MIN_RING_SLOTS <= r.size <= abi.MAX_RING_SLOTS or r.size & (r.size - 1):
            return errno.EINVAL
        if r.ring_addr % abi.CACHE_LINE:
            return errno.EINVAL
        return 0

    def _disable(self, queue: int) -> None:
        r = self.regs[queue]
        if r.state & QueueState.ENABLED:
            r.state &= ~QueueState.ENABLED
            if self.listener is not None:
                self.listener.disable_queue(queue)
                self.listener.fence(queue, r.owner)

    def release(self, queue: int) -> None:
        """Stop serving, drop the claim, free what the queue created."""
        with self._lock:
            if not self.regs[queue].state & QueueState.CLAIMED:
                return
            self._disable(queue)
            owner = self.regs[queue].owner
            self.regs[queue] = QueueRegs()
            if self.listener is not None:
                last = not any(r.state & QueueState.CLAIMED and r.owner == owner
                               for r in self.regs)
                self.listener.release_queue(queue, owner, last)
                self.listener.fence(queue, owner)
            log.info("queue %d released", queue)

    def fail(self, queue: int, err: int) -> None:
        """The engine gave up on a ring (bad tail, memory gone)."""
        with self._lock:
            r = self.regs[queue]
            if r.state & QueueState.ENABLED:
                r.state = (r.state & ~QueueState.ENABLED) | QueueState.FAILED
                r.error = err

    def release_all(self) -> None:
        for q in range(self.count):
            self.release(q)

    def enabled(self) -> list[int]:
        with self._lock:
            return [q for q, r in enumerate(self.regs) if r.state & QueueState.ENABLED]
