"""Per-session handle tables: guest ids to real OpenCL objects, never the reverse leak.

Guest-assigned ids (created objects) live below ``HOST_ID_BASE``; ids the host
hands out for enumerated objects (platforms, devices) live above it, so the
two never collide.  Each owner (a guest process, by its queue's owner tag) has
an id space of its own: the table's key for a created object is the owner and
the id together (``key``), so an id another owner uses answers exactly like an
id nobody uses, whatever one process tries (looking it up, creating with it,
taking the id another is about to use).  The argument decoder turns every id
it reads into its key at once; ids go back to the guest through ``guest_id``.
A mirror of the user-visible reference count decides when an id dies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

HOST_ID_BASE = 1 << 63
_ID_MASK = (1 << 64) - 1


def key(handle: int, owner: int) -> int:
    """The table's key for ``handle`` as ``owner`` names it: enumerated ids (and NULL)
    are the same for everyone; a guest-assigned id is the owner's own."""
    if handle >= HOST_ID_BASE or handle == 0:
        return handle
    return ((owner & 0xFFFFFFFF) + 1) << 64 | handle


def guest_id(handle_key: int) -> int:
    """The id the guest knows for a key."""
    return handle_key & _ID_MASK


class Mirror(Protocol):
    def put(self, key: int, obj_type: str, ptr: object, owner: int | None) -> None: ...

    def drop(self, key: int) -> None: ...


class LimitExceeded(Exception):
    pass


@dataclass
class Entry:
    obj_type: str
    ptr: object          # cffi pointer
    owner: int | None    # None: shared (platforms, devices)
    refs: int = 1
    nbytes: int = 0


class HandleTable:
    def __init__(self, *, max_objects: int = 65536, max_bytes: int = 8 << 30):
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._entries: dict[int, Entry] = {}
        self._by_ptr: dict[tuple[str, int], int] = {}     # (type, real address) -> id
        self._next_host_id = itertools.count(HOST_ID_BASE + 1)
        self._shared = 0
        #: What else keeps a copy of the entries (the lane's, in C): told of every
        #: change here, the one place entries change.
        self.mirror: Mirror | None = None

    def set_mirror(self, mirror: Mirror) -> None:
        """Keep ``mirror`` up to date from now on, starting with every entry."""
        self.mirror = mirror
        for handle, entry in self._entries.items():
            mirror.put(handle, entry.obj_type, entry.ptr, entry.owner)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, handle: int) -> bool:
        return handle in self._entries

    def lookup(self, obj_type: str, handle: int, owner: int):
        """The real pointer for ``handle``, or None if it is not a live object of that
        type visible to ``owner``."""
        entry = self._entries.get(handle)
        if entry is None or entry.obj_type != obj_type:
            return None
        if entry.owner is not None and entry.owner != owner:
            return None
        return entry.ptr

    def id_for_shared(self, obj_type: str, ptr, address: int) -> int:
        """A stable host id for an enumerated object (platform, device)."""
        key = (obj_type, address)
        handle = self._by_ptr.get(key)
        if handle is None:
            handle = next(self._next_host_id)
            self._by_ptr[key] = handle
            self._entries[handle] = Entry(obj_type, ptr, None)
            self._shared += 1
            if self.mirror is not None:
                self.mirror.put(handle, obj_type, ptr, None)
        return handle

    def alias_shared(self, handle: int, obj_type: str, ptr) -> None:
        """An enumerated id now stands for ``ptr`` (a compute partition's sub-device),
        which also reads back as that id; the original object still does too."""
        self._entries[handle].ptr = ptr
        self._by_ptr[(obj_type, _address(ptr))] = handle
        if self.mirror is not None:
            self.mirror.put(handle, obj_type, ptr, None)

    @property
    def created(self) -> int:
        """Live objects the guest created (enumerated platforms and devices aside)."""
        return len(self._entries) - self._shared

    def id_for_existing(self, obj_type: str, address: int) -> int | None:
        """The id of a known object by its real address (for info results)."""
        return self._by_ptr.get((obj_type, address))

    def addresses(self) -> set[int]:
        """The host address of every object known: none of them may reach a guest."""
        return {address for _, address in self._by_ptr}

    def check_new(self, handle: int) -> str | None:
        """Why a guest-assigned id (its key) cannot be used for a new object (None if
        it can)."""
        if not 0 < guest_id(handle) < HOST_ID_BASE or handle < HOST_ID_BASE:
            return f"id {guest_id(handle):#x} is outside the guest range"
        if handle in self._entries:
            return f"id {guest_id(handle):#x} is already in use"
        if self.created >= self.max_objects:
            return f"object limit {self.max_objects} reached"
        return None

    def over_cap(self, nbytes: int) -> bool:
        """Whether a new object of ``nbytes`` would pass the memory limit (its own bytes
        counted: checked once the object exists and its size is known)."""
        return nbytes > 0 and self.bytes_used + nbytes > self.max_bytes

    def add(self, handle: int, obj_type: str, ptr, owner: int, nbytes: int = 0) -> None:
        self._entries[handle] = Entry(obj_type, ptr, owner, 1, nbytes)
        self._by_ptr[(obj_type, _address(ptr))] = handle
        self.bytes_used += nbytes
        if self.mirror is not None:
            self.mirror.put(handle, obj_type, ptr, owner)

    def replace(self, handle: int, ptr) -> None:
        """A live id now stands for another real object (one made again after
        eviction), or for none while it waits in the host store (NULL).  An id the
        guest let go of (a parent its sub-buffers keep) has nothing to update."""
        entry = self._entries.get(handle)
        if entry is None:
            return
        old = (entry.obj_type, _address(entry.ptr))
        if self._by_ptr.get(old) == handle:
            del self._by_ptr[old]
        entry.ptr = ptr
        if _address(ptr):
            self._by_ptr[(entry.obj_type, _address(ptr))] = handle
        if self.mirror is not None:
            self.mirror.put(handle, entry.obj_type, ptr, entry.owner)

    def entry(self, handle: int) -> Entry | None:
        return self._entries.get(handle)

    def retain(self, entry: Entry) -> None:
        """One more user reference on ``entry`` (the one the call's handle named when it
        began: if its owner's teardown took it off the table meanwhile, the teardown
        releases one more)."""
        if entry.owner is not None:
            entry.refs += 1

    def release(self, handle: int, entry: Entry) -> bool:
        """Drop one user reference; True when the id died.  An entry already off the
        table (its owner's teardown holds it) only counts down: the teardown releases
        the references left."""
        if entry.owner is None:
            return False
        entry.refs -= 1
        if entry.refs > 0 or self._entries.get(handle) is not entry:
            return False
        self.forget(handle)
        return True

    def owned_by(self, owner: int) -> list[tuple[int, Entry]]:
        return [(h, e) for h, e in self._entries.items() if e.owner == owner]

    def forget(self, handle: int) -> Entry | None:
        entry = self._entries.pop(handle, None)
        if entry is not None:
            if self.mirror is not None:
                self.mirror.drop(handle)
            self.bytes_used -= entry.nbytes
            key = (entry.obj_type, _address(entry.ptr))
            if self._by_ptr.get(key) == handle:
                del self._by_ptr[key]
        return entry


def _address(ptr) -> int:
    from ._cl import address
    return address(ptr)
