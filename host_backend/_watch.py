"""How long each kernel has been running: what bounds a guest's device time.

Every kernel launch's event is kept (the backend asks for one even when the guest
did not, and holds its own reference).  ``sample`` asks the implementation for
each event's status: a finished one is dropped, a running one is timed from the
first sample that saw it running.  A kernel that waits (behind others, or for a
user event) is not running and is not timed; a kernel that spins for ever is.
The executor writes the oldest running kernel into its status page, and the
device server resets the executor when that passes the limit.
"""

from __future__ import annotations

import threading

from ._cl import ffi, lib

CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3
CL_RUNNING = 1
#: Events tracked at most; past it the oldest finished ones are dropped first, then
#: new launches go untracked (logged by the caller) rather than growing without bound.
MAX_TRACKED = 65536


class KernelWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # event pointer address -> [event, owner, opcode, running since (ns) or 0]
        self._events: dict[int, list] = {}
        self._cell = ffi.new("cl_int *")

    def __len__(self) -> int:
        return len(self._events)

    def track(self, event, owner: int, opcode: int, *, retain: bool) -> bool:
        """Watch ``event`` (a reference of its own is taken when ``retain``; else the
        watch owns the reference it is given).  False when the watch is full."""
        with self._lock:
            if len(self._events) >= MAX_TRACKED:
                if not retain:
                    lib().clReleaseEvent(event)
                return False
            if retain:
                lib().clRetainEvent(event)
            self._events[int(ffi.cast("uintptr_t", event))] = [event, owner, opcode, 0]
        return True

    def sample(self, now_ns: int) -> tuple[int, int, int]:
        """(running since, owner, opcode) of the longest-running kernel; since 0: none."""
        oldest = (0, 0, 0)
        get = lib().clGetEventInfo
        with self._lock:
            done = []
            for key, entry in self._events.items():
                if get(entry[0], CL_EVENT_COMMAND_EXECUTION_STATUS, 4, self._cell,
                       ffi.NULL) != 0 or self._cell[0] <= 0:
                    done.append(key)            # complete, failed, or no longer valid
                    continue
                if self._cell[0] == CL_RUNNING:
                    if not entry[3]:
                        entry[3] = now_ns
                    if not oldest[0] or entry[3] < oldest[0]:
                        oldest = (entry[3], entry[1], entry[2])
            for key in done:
                lib().clReleaseEvent(self._events.pop(key)[0])
        return oldest
