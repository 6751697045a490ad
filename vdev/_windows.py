"""Per-queue DMA windows: the software IOMMU a guest daemon sets for each queue.

The guest has no IOMMU, so without windows a queue's commands may name any
guest-physical address, and one guest process could read or overwrite another's
memory through the device.  The guest daemon (which alone reaches BAR0) loads a
table of windows for each queue (``QueueCtrl.LOAD_WINDOWS``); from then on every
address the host touches for that queue (its ring, payloads, replies, scatter
lists and their entries) must lie inside one window.

``read_window_table`` copies and checks a table out of guest memory;
``WindowedDma`` is the queue's view of the DMA map: the same ``translate`` as
``DmaMap``, refusing anything outside the windows with ``EFAULT``.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import struct

from protocols import device_abi as abi

from ._dma import DmaError, DmaMap

_HEADER = struct.Struct("<II")
_ENTRY = struct.Struct("<QQ")
assert _HEADER.size == abi.WINDOW_TABLE_HEADER_SIZE and _ENTRY.size == abi.WINDOW_ENTRY_SIZE

#: (start, end) pairs, sorted, non-overlapping, adjacent ones merged.
Windows = tuple[tuple[int, int], ...]


def normalize(pairs: list[tuple[int, int]]) -> Windows:
    """Sort and merge ``(addr, size)`` pairs into disjoint ``(start, end)`` windows."""
    spans = sorted((addr, addr + size) for addr, size in pairs if size)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def read_window_table(dma: DmaMap, addr: int) -> Windows:
    """The windows described by the table at guest-physical ``addr``.

    Raises DmaError: EFAULT when the table is not in mapped memory, EINVAL for a
    count over ``MAX_WINDOWS`` or an entry that wraps past 2**64."""
    count, _ = _HEADER.unpack(bytes(dma.translate(addr, _HEADER.size)))
    if count > abi.MAX_WINDOWS:
        raise DmaError(errno.EINVAL, f"window table at {addr:#x} has {count} entries "
                       f"(at most {abi.MAX_WINDOWS})")
    raw = bytes(dma.translate(addr + _HEADER.size, count * _ENTRY.size)) if count else b""
    pairs = list(_ENTRY.iter_unpack(raw))
    for i, (start, size) in enumerate(pairs):
        if start + size > 1 << 64:
            raise DmaError(errno.EINVAL, f"window {i} ({start:#x}+{size:#x}) wraps past 2**64")
    return normalize(pairs)


def describe(windows: Windows | None) -> str:
    if windows is None:
        return "no windows (the whole DMA map)"
    total = sum(e - s for s, e in windows)
    if total >= 1 << 63:        # a guest daemon's window for a root process (zero-copy)
        return f"{len(windows)} windows, all guest memory"
    return f"{len(windows)} windows, {total} bytes"


class WindowedDma:
    """One queue's view of guest memory: ``DmaMap.translate`` inside its windows only."""

    __slots__ = ("_ends", "_hi", "_lo", "_starts", "dma", "queue", "windows")

    def __init__(self, dma: DmaMap, queue: int, windows: Windows):
        self.dma = dma
        self.queue = queue
        self.windows = windows
        self._starts = [s for s, _ in windows]
        self._ends = [e for _, e in windows]
        self._lo, self._hi = windows[0] if windows else (0, 0)   # the last window hit

    @property
    def generation(self) -> int:
        return self.dma.generation

    def host_intervals(self) -> list[tuple[int, int, mmap.mmap, int, bool, bool]]:
        """``DmaMap.host_intervals`` cut to the windows."""
        cut = []
        for start, end, mm, offset, readable, writable in self.dma.host_intervals():
            for lo, hi in self.windows:
                a, b = max(start, lo), min(end, hi)
                if a < b:
                    cut.append((a, b, mm, offset + (a - start), readable, writable))
        return cut

    def allows(self, iova: int, length: int) -> bool:
        i = bisect.bisect_right(self._starts, iova) - 1
        return i >= 0 and iova + length <= self._ends[i]

    def translate(self, iova: int, length: int, *, write: bool = False) -> memoryview:
        self._check(iova, length)
        return self.dma.translate(iova, length, write=write)

    def read(self, iova: int, length: int) -> bytes:
        self._check(iova, length)
        return self.dma.read(iova, length)

    def write(self, iova: int, length: int, data: bytes | memoryview) -> None:
        self._check(iova, length)
        self.dma.write(iova, length, data)

    def _check(self, iova: int, length: int) -> None:
        # Hot path: the window the last access hit (rings and staging repeat).
        if not (self._lo <= iova and iova + length <= self._hi and length >= 0):
            i = bisect.bisect_right(self._starts, iova) - 1
            if iova < 0 or length < 0 or i < 0 or iova + length > self._ends[i]:
                raise DmaError(errno.EFAULT, f"queue {self.queue}: DMA access "
                               f"{iova:#x}+{length:#x} is outside the queue's DMA windows")
            self._lo, self._hi = self._starts[i], self._ends[i]


def queue_view(dma: DmaMap, queue: int, windows: Windows | None) -> DmaMap | WindowedDma:
    """What a queue's commands translate through: the map, or the map inside windows."""
    return dma if windows is None else WindowedDma(dma, queue, windows)
