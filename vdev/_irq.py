"""Interrupts: the eventfds QEMU attaches through SET_IRQS and how we fire them.

INTx is level-triggered and automasked: asserting the line signals once and
masks; an UNMASK (a message, or the resample eventfd KVM signals on the
guest's EOI) re-arms it and re-signals while the line is still high.  MSI and
MSI-X vectors signal their eventfd; a masked vector remembers one pending
signal.  Masking of MSI/MSI-X is normally QEMU's job.  ERR has one vector
(QEMU attaches an eventfd to it; signalling it would stop the VM, which the
device never does); REQ has none.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from protocols.vfio_user import IrqIndex, IrqInfoFlags, IrqSetFlags

log = logging.getLogger("vdev.irq")


class IrqError(Exception):
    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_



def _check_eventfd(fd: int) -> None:
    """Refuse anything but an eventfd: the server polls and reads resample fds and
    writes 8 bytes to trigger fds, so a regular file would be written to, and epoll
    refuses files that cannot be polled (/dev/null, a memfd) with EPERM."""
    try:
        kind = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise IrqError(errno.EBADF, f"fd {fd} cannot be inspected: {exc}") from exc
    if kind != "anon_inode:[eventfd]":
        raise IrqError(errno.EINVAL, f"SET_IRQS: an fd is not an eventfd (it is {kind!r}); "
                                     "QEMU sends eventfds")
    # A write to an eventfd whose counter is full blocks: a client that filled one would
    # stop the server at its next interrupt.  Non-blocking, the write fails instead (the
    # interrupt is already pending then).  QEMU's own event notifiers are non-blocking.
    os.set_blocking(fd, False)

@dataclass
class _Vector:
    fd: int | None = None
    masked: bool = False
    pending: bool = False


def _signal(fd: int) -> bool:
    try:
        os.eventfd_write(fd, 1)
        return True
    except OSError as exc:
        log.warning("eventfd %d write failed: %s", fd, exc)
        return False


class IrqController:
    """Vectors per IRQ index, plus the INTx line model."""

    def __init__(self, *, msi_vectors: int, msix_vectors: int,
                 intx_gate: Callable[[], bool] = lambda: True):
        self._counts = {IrqIndex.INTX: 1, IrqIndex.MSI: msi_vectors,
                        IrqIndex.MSIX: msix_vectors, IrqIndex.ERR: 1, IrqIndex.REQ: 0}
        self._flags = {
            IrqIndex.INTX: IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED,
            IrqIndex.MSI: IrqInfoFlags.EVENTFD | IrqInfoFlags.NORESIZE,
            IrqIndex.MSIX: IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE,
            IrqIndex.ERR: IrqInfoFlags.EVENTFD,
            IrqIndex.REQ: IrqInfoFlags.EVENTFD,
        }
        self._vectors = {idx: [_Vector() for _ in range(n)] for idx, n in self._counts.items()}
        self._intx_gate = intx_gate     # False while the guest set COMMAND.INTX_DISABLE
        self.intx_level = False
        self.signals = 0                # eventfd writes so far, for tests and stats
        self._resample_fd: int | None = None
        self._resample_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # -- queries ---------------------------------------------------------------

    @property
    def num_irqs(self) -> int:
        return len(self._counts)

    def info(self, index: int) -> tuple[int, int]:
        if index not in self._counts:
            raise IrqError(errno.EINVAL, f"IRQ index {index} out of range (0..{len(self._counts) - 1})")
        return int(self._flags[IrqIndex(index)]), self._counts[IrqIndex(index)]

    def attached(self, index: int) -> list[int | None]:
        return [v.fd for v in self._vectors[IrqIndex(index)]]

    def active_index(self) -> IrqIndex:
        """Where ``raise_irq`` goes: MSI-X, then MSI, if any vector has an fd; else INTx."""
        for idx in (IrqIndex.MSIX, IrqIndex.MSI):
            if any(v.fd is not None for v in self._vectors[idx]):
                return idx
        return IrqIndex.INTX

    # -- SET_IRQS ------------------------------------------------------------------

    def attach_nursery(self, nursery: trio.Nursery | None) -> None:
        """Where resample-eventfd watchers run (the session's nursery)."""
        self._nursery = nursery

    def set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes,
                 fds: list[int]) -> None:
        """Apply one SET_IRQS; takes ownership of ``fds`` (closed on error)."""
        try:
            self._set_irqs(index, flags, start, count, data, fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes,
                  fds: list[int]) -> None:
        if index not in self._counts:
            raise IrqError(errno.EINVAL, f"IRQ index {index} out of range")
        idx = IrqIndex(index)
        unknown = flags & ~int(IrqSetFlags.DATA_TYPE_MASK | IrqSetFlags.ACTION_TYPE_MASK)
        data_type = flags & IrqSetFlags.DATA_TYPE_MASK
        action = flags & IrqSetFlags.ACTION_TYPE_MASK
        if unknown or bin(data_type).count("1") != 1 or bin(action).count("1") != 1:
            raise IrqError(errno.EINVAL, f"SET_IRQS flags {flags:#x}: need one data type and one action")
        vectors = self._vectors[idx]
        if start > len(vectors) or count > len(vectors) - start:
            raise IrqError(errno.EINVAL, f"SET_IRQS {idx.name} vectors {start}+{count} exceed {len(vectors)}")
        if data_type == IrqSetFlags.DATA_BOOL and len(data) != count:
            raise IrqError(errno.EINVAL, f"DATA_BOOL needs {count} bytes, got {len(data)}")
        if data_type != IrqSetFlags.DATA_BOOL and data:
            raise IrqError(errno.EINVAL, f"{len(data)} unexpected data bytes")
        if data_type != IrqSetFlags.DATA_EVENTFD and fds:
            raise IrqError(errno.EINVAL, "eventfds sent without DATA_EVENTFD")
        for fd in fds:
            _check_eventfd(fd)
        if data_type == IrqSetFlags.DATA_EVENTFD and fds and len(fds) != count:
            if not (action == IrqSetFlags.ACTION_UNMASK and idx == IrqIndex.INTX and len(fds) == 1):
                raise IrqError(errno.EINVAL, f"{len(fds)} eventfds for {count} vectors")
        selected: Sequence[int] = range(start, start + count)
        if data_type == IrqSetFlags.DATA_BOOL:
            selected = [v for v, b in zip(selected, data, strict=False) if b]

        if action == IrqSetFlags.ACTION_TRIGGER:
            if data_type == IrqSetFlags.DATA_EVENTFD:
                for n, v in enumerate(range(start, start + count)):
                    self._replace_fd(vectors[v], fds[n] if fds else None)
                fds.clear()
            elif data_type == IrqSetFlags.DATA_NONE and count == 0:
                self.disable(idx)
            else:
                for v in selected:
                    self._fire(idx, v)
        elif action == IrqSetFlags.ACTION_MASK:
            if data_type == IrqSetFlags.DATA_EVENTFD:
                raise IrqError(errno.EINVAL, "MASK with eventfds is not supported")
            for v in selected:
                vectors[v].masked = True
        else:  # UNMASK
            if data_type == IrqSetFlags.DATA_EVENTFD:
                if idx != IrqIndex.INTX:
                    raise IrqError(errno.EINVAL, "an unmask eventfd is only supported for INTx")
                self._set_resample_fd(fds.pop() if fds else None)
                return
            for v in selected:
                self._unmask(idx, v)

    def _replace_fd(self, vec: _Vector, fd: int | None) -> None:
        if vec.fd is not None:
            os.close(vec.fd)
        vec.fd = fd
        if fd is not None and vec.pending and not vec.masked:
            vec.pending = False
            self.signals += _signal(fd)

    def disable(self, idx: IrqIndex) -> None:
        for vec in self._vectors[idx]:
            self._replace_fd(vec, None)
            vec.masked = vec.pending = False
        if idx == IrqIndex.INTX:
            self._set_resample_fd(None)

    def close(self) -> None:
        """Close every eventfd (disconnect)."""
        for idx in self._vectors:
            self.disable(idx)

    # -- INTx resample -----------------------------------------------------------------

    def _set_resample_fd(self, fd: int | None) -> None:
        if self._resample_scope is not None:
            self._resample_scope.cancel()
            self._resample_scope = None
        if self._resample_fd is not None:
            trio.lowlevel.notify_closing(self._resample_fd)
            os.close(self._resample_fd)
            self._resample_fd = None
        if fd is None:
            return
        if self._nursery is None:
            os.close(fd)
            raise IrqError(errno.EINVAL, "resample eventfd given outside a session")
        self._resample_fd = fd
        scope = trio.CancelScope()
        self._resample_scope = scope
        self._nursery.start_soon(self._watch_resample, fd, scope)
        # The resample fd also means "unmask now" (QEMU sends it with UNMASK).
        self._unmask(IrqIndex.INTX, 0)

    async def _watch_resample(self, fd: int, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except OSError as exc:      # epoll refused it: checked at SET_IRQS, so a bug
                    log.warning("INTx resample eventfd cannot be watched: %s", exc)
                    return
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    log.warning("INTx resample eventfd failed: %s; no longer watched", exc)
                    return
                self._unmask(IrqIndex.INTX, 0)

    # -- firing --------------------------------------------------------------------------

    def _fire(self, idx: IrqIndex, v: int) -> None:
        vec = self._vectors[idx][v]
        if vec.masked or vec.fd is None:
            vec.pending = True
            return
        self.signals += _signal(vec.fd)
        if idx == IrqIndex.INTX:
            vec.masked = True    # automasked until unmask/resample

    def _unmask(self, idx: IrqIndex, v: int) -> None:
        vec = self._vectors[idx][v]
        vec.masked = False
        if idx == IrqIndex.INTX:
            vec.pending = False
            self.update_intx()
        elif vec.pending:
            vec.pending = False
            self._fire(idx, v)

    def set_intx_level(self, level: bool) -> None:
        self.intx_level = level
        self.update_intx()

    def update_intx(self) -> None:
        """Signal INTx if the line is high, the guest lets it through, and it is unmasked."""
        vec = self._vectors[IrqIndex.INTX][0]
        if self.intx_level and self._intx_gate() and not vec.masked and vec.fd is not None:
            self._fire(IrqIndex.INTX, 0)

    def raise_vector(self, vector: int) -> IrqIndex:
        """Fire ``vector`` on MSI-X or MSI, whichever the guest enabled (vector 0 on MSI
        if MSI-X is off).  Returns the index used; INTx is the device's business
        (it owns the line level) and is reported, not fired, here."""
        idx = self.active_index()
        if idx == IrqIndex.INTX:
            return idx
        vectors = self._vectors[idx]
        if idx == IrqIndex.MSI or vector >= len(vectors):
            vector = 0      # one MSI vector; MSI-X causes beyond the table share vector 0
        self._fire(idx, vector)
        return idx
