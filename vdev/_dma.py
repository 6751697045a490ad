"""The DMA map table: guest-physical ranges the client shared with us.

Each fd-backed file is mmapped once (deduplicated on ``(st_dev, st_ino)``, as
libvfio-user's fd cache does) and every range is a window into it.  Ranges
that came without an fd are recorded but cannot be translated: the server
never uses message-based DMA for its own work.  ``translate`` is the only way
to reach guest memory and refuses anything that leaves a single range.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import mmap
import os
import threading
from dataclasses import dataclass

from protocols.vfio_user import DmaMapFlags

log = logging.getLogger("vdev.dma")

PAGE_SIZE = mmap.PAGESIZE



def _check_sealed(fd: int) -> None:
    """Refuse guest memory whose file can shrink.  The server reads and writes that
    memory through a mapping; if the client truncated the file, the next access to a
    page past the end would kill the server with SIGBUS, which no Python code can
    catch.  A seal against shrinking (F_SEAL_SHRINK) makes truncation impossible, and
    it cannot be removed.  QEMU's memory-backend-memfd seals its memfd by default
    (seal=on), and the guest runtime's loopback transport seals its own."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0           # a file that cannot be sealed (tmpfs, hugetlbfs, ...)
    if not seals & fcntl.F_SEAL_SHRINK:
        raise DmaError(errno.EINVAL,
                       "DMA_MAP fd is not sealed against shrinking (F_SEAL_SHRINK): a client "
                       "that truncated it would crash the server. Hint: give QEMU "
                       "memory-backend-memfd (seal=on, its default); a memfd made with "
                       "MFD_ALLOW_SEALING is sealed with fcntl(F_ADD_SEALS, F_SEAL_SHRINK)")

class DmaError(Exception):
    """A DMA request was refused; ``errno`` is what the reply carries."""

    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_


class _MappedFile:
    """One mmap of a whole file, shared by every range that points into it."""

    def __init__(self, key: tuple[int, int], mm: mmap.mmap, size: int, writable: bool,
                 fd: int | None = None):
        self.key = key
        self.fd = fd            # kept open only when the map hands its files on
        self.mm = mm
        self.size = size
        self.writable = writable
        self.view = memoryview(mm)
        self.view_ro = self.view.toreadonly()
        self.users = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.view_ro.release()
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            # Someone still holds a view (a ring engine mid-command, say); the
            # mapping goes away with the last view instead.
            log.debug("mapping of file %s still has exported views; left to the GC", self.key)


@dataclass
class DmaRange:
    iova: int
    size: int
    flags: int
    offset: int
    file: _MappedFile | None   # None: message access only

    @property
    def end(self) -> int:
        return self.iova + self.size


class DmaMap:
    """Guest-physical address ranges and their host mappings."""

    def __init__(self, max_ranges: int = 65535, *, keep_fds: bool = False):
        """``keep_fds``: keep each mapped file's fd open, so that ``snapshot`` can hand
        the whole map to another process (the device server's executor)."""
        self.max_ranges = max_ranges
        self.keep_fds = keep_fds
        self._ranges: list[DmaRange] = []    # sorted by iova, non-overlapping
        self._starts: list[int] = []
        self._files: dict[tuple[int, int], _MappedFile] = {}
        # The ring engine translates from its own thread while the session maps.
        self._lock = threading.RLock()
        self._last: DmaRange | None = None     # translate's one-entry cache
        #: Moves on at every change of the ranges (views made from them are stale).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def ranges(self) -> list[DmaRange]:
        return list(self._ranges)

    @property
    def mapped_files(self) -> int:
        return len(self._files)

    # -- map / unmap ---------------------------------------------------------

    def add(self, iova: int, size: int, flags: int, offset: int, fd: int | None) -> DmaRange:
        """Record a range; takes ownership of ``fd`` (closed whatever happens)."""
        try:
            with self._lock:
                return self._add(iova, size, flags, offset, fd)
        finally:
            if fd is not None:
                os.close(fd)

    def _add(self, iova: int, size: int, flags: int, offset: int, fd: int | None) -> DmaRange:
        unknown = flags & ~int(DmaMapFlags.READ | DmaMapFlags.WRITE)
        if unknown:
            raise DmaError(errno.EINVAL, f"unknown DMA_MAP flag bits {unknown:#x}")
        if size == 0:
            raise DmaError(errno.EINVAL, "DMA_MAP of size 0")
        if iova + size > 1 << 64 or offset + size > 1 << 64:
            raise DmaError(errno.EINVAL, f"range {iova:#x}+{size:#x} (offset {offset:#x}) wraps")
        if iova % PAGE_SIZE or size % PAGE_SIZE:
            raise DmaError(errno.EINVAL, f"range {iova:#x}+{size:#x} is not page-aligned")
        i = bisect.bisect_right(self._starts, iova) - 1
        # Identical re-map (QEMU does this while firmware reshuffles low memory).
        if i >= 0 and self._ranges[i].iova == iova and self._ranges[i].size == size:
            old = self._ranges[i]
            if old.flags == flags and old.offset == offset and (old.file is None) == (fd is None):
                if fd is None or (old.file is not None and self._file_key(fd) == old.file.key):
                    return old
        for cand in self._ranges[max(i, 0): i + 2]:
            if cand.iova < iova + size and iova < cand.end:
                raise DmaError(errno.EEXIST,
                               f"range {iova:#x}+{size:#x} overlaps mapped {cand.iova:#x}+{cand.size:#x}")
        if len(self._ranges) >= self.max_ranges:
            raise DmaError(errno.ENOSPC, f"too many DMA ranges (limit {self.max_ranges})")
        mfile = self._map_file(fd, offset, size, flags) if fd is not None else None
        rng = DmaRange(iova, size, flags, offset, mfile)
        if mfile:
            mfile.users += 1
        pos = bisect.bisect_left(self._starts, iova)
        self._ranges.insert(pos, rng)
        self._starts.insert(pos, iova)
        self.generation += 1
        return rng

    @staticmethod
    def _file_key(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def _map_file(self, fd: int, offset: int, size: int, flags: int) -> _MappedFile:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise DmaError(errno.EBADF, f"DMA_MAP fd is unusable: {exc}") from exc
        key = (st.st_dev, st.st_ino)
        mfile = self._files.get(key)
        if mfile is None:
            if st.st_size <= 0:
                raise DmaError(errno.EINVAL, "DMA_MAP fd is not a sized file (memfd, hugetlbfs, tmpfs)")
            _check_sealed(fd)
            try:
                mm, writable = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE), True
            except PermissionError:
                try:
                    mm, writable = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ), False
                except OSError as exc:
                    raise DmaError(errno.EACCES, f"cannot mmap DMA_MAP fd: {exc}") from exc
            except (OSError, ValueError) as exc:
                raise DmaError(errno.EINVAL, f"cannot mmap DMA_MAP fd: {exc}") from exc
            mfile = _MappedFile(key, mm, st.st_size, writable,
                                os.dup(fd) if self.keep_fds else None)
            self._files[key] = mfile
        if offset + size > mfile.size:
            if not mfile.users:
                self._drop_file(mfile)
            raise DmaError(errno.EINVAL,
                           f"range offset {offset:#x}+{size:#x} exceeds the file ({mfile.size:#x} bytes)")
        if flags & DmaMapFlags.WRITE and not mfile.writable:
            if not mfile.users:
                self._drop_file(mfile)
            raise DmaError(errno.EACCES, "writable DMA_MAP of a read-only fd")
        return mfile

    def _drop_file(self, mfile: _MappedFile) -> None:
        self._files.pop(mfile.key, None)
        mfile.close()

    def remove(self, iova: int, size: int) -> DmaRange:
        """Remove the range that matches exactly (the spec allows nothing else)."""
        with self._lock:
            return self._remove(iova, size)

    def _remove(self, iova: int, size: int) -> DmaRange:
        self._last = None
        i = bisect.bisect_left(self._starts, iova)
        if i == len(self._ranges) or self._ranges[i].iova != iova or self._ranges[i].size != size:
            raise DmaError(errno.ENOENT, f"no DMA range {iova:#x}+{size:#x} to unmap")
        rng = self._ranges.pop(i)
        self._starts.pop(i)
        self.generation += 1
        self._release(rng)
        return rng

    def clear(self) -> None:
        """Drop every range and close every mapping (UNMAP_ALL, disconnect)."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._last = None
        self.generation += 1
        for rng in self._ranges:
            self._release(rng)
        self._ranges.clear()
        self._starts.clear()
        for mfile in list(self._files.values()):
            self._drop_file(mfile)

    def _release(self, rng: DmaRange) -> None:
        if rng.file is not None:
            rng.file.users -= 1
            if rng.file.users == 0:
                self._drop_file(rng.file)

    def snapshot(self) -> list[tuple[DmaRange, int | None]]:
        """Every range with its file's fd (still owned by the map; None: no fd)."""
        with self._lock:
            return [(rng, rng.file.fd if rng.file else None) for rng in self._ranges]

    def host_intervals(self) -> list[tuple[int, int, mmap.mmap, int, bool, bool]]:
        """Every fd-backed range as (start, end, its file's mapping, the offset of
        start in it, readable, writable): what code outside Python (the OpenCL
        backend's lane) may reach, checked as ``translate`` checks."""
        with self._lock:
            return [(r.iova, r.end, r.file.mm, r.offset, bool(r.flags & DmaMapFlags.READ),
                     bool(r.flags & DmaMapFlags.WRITE) and r.file.writable)
                    for r in self._ranges if r.file is not None]

    # -- access ------------------------------------------------------------------

    def translate(self, iova: int, length: int, *, write: bool = False) -> memoryview:
        """A view of guest memory ``[iova, iova+length)`` inside one fd-backed range.

        Raises DmaError (EFAULT) for anything unmapped, crossing a range's end,
        message-only, negative, or not permitted by the range's flags.
        """
        mfile, start = self._place(iova, length, write)
        return (mfile.view if write else mfile.view_ro)[start:start + length]

    def read(self, iova: int, length: int) -> bytes:
        """A copy of guest memory ``[iova, iova+length)``, checked as ``translate``
        checks (a command's payload: one copy, without a view between)."""
        mfile, start = self._place(iova, length, False)
        return mfile.mm[start:start + length]

    def write(self, iova: int, length: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``iova``, into ``[iova, iova+length)`` checked as
        ``translate`` checks for writing (a command's reply buffer, of which ``data``
        fills the start)."""
        if len(data) > length:
            raise DmaError(errno.EMSGSIZE, f"{len(data)} bytes do not fit {length}")
        mfile, start = self._place(iova, length, True)
        mfile.mm[start:start + len(data)] = data

    def _place(self, iova: int, length: int, write: bool) -> tuple[_MappedFile, int]:
        """The mapped file and offset of ``[iova, iova+length)`` (see ``translate``)."""
        if iova < 0 or length < 0:
            raise DmaError(errno.EFAULT, f"bad DMA access {iova:#x}+{length:#x}")
        # Hot path: the range the last access hit (rings and staging repeat).
        rng = self._last
        if rng is not None and rng.iova <= iova and iova + length <= rng.iova + rng.size \
                and rng.file is not None and rng.flags & (2 if write else 1):
            return rng.file, rng.offset + (iova - rng.iova)
        with self._lock:
            return self._place_slow(iova, length, write)

    def _place_slow(self, iova: int, length: int, write: bool) -> tuple[_MappedFile, int]:
        i = bisect.bisect_right(self._starts, iova) - 1
        if i < 0:
            raise DmaError(errno.EFAULT, f"DMA address {iova:#x} is not mapped")
        rng = self._ranges[i]
        if iova + length > rng.end or iova >= rng.end:
            raise DmaError(errno.EFAULT,
                           f"DMA access {iova:#x}+{length:#x} leaves range {rng.iova:#x}+{rng.size:#x}")
        if rng.file is None:
            raise DmaError(errno.EFAULT, f"DMA range {rng.iova:#x} has no fd (message access only)")
        needed = DmaMapFlags.WRITE if write else DmaMapFlags.READ
        if not rng.flags & needed:
            raise DmaError(errno.EFAULT, f"DMA range {rng.iova:#x} does not permit "
                           f"{'writes' if write else 'reads'}")
        self._last = rng
        return rng.file, rng.offset + (iova - rng.iova)
