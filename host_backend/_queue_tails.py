"""The last command of each in-order queue, where it is one the host holds an event
for (a launch, or a small blocking transfer that ended): a ``clFinish``, or the next
small blocking transfer, asks that event instead of enqueueing a marker.

A finish the guest sends after a launch is answered on the ring poller when the
queue has nothing left to run (``OpenClBackend.execute_settled``).  To tell, the
host used to enqueue a marker and wait for it to end; PoCL ends a marker only once
its scheduler thread has run it, about 25 us later even on an idle queue, and a
finish of an idle queue costs native OpenCL almost nothing.  On an in-order queue
the last command ends after every command before it, so its event says the same:
the launch fast path (``_fastpath.LaunchCall``) holds an event for every launch it
runs, and records it here as the queue's tail.  So does a small blocking transfer
the ring poller ran (``_fastpath.SmallTransferCall``): it ended, so the queue is
idle, and a program that writes or reads a little at a time pays no marker per
transfer.

Every other command that goes onto a queue (the interpreter's enqueues, from any
thread) first forgets the queue's tail, and again once it is enqueued; a command
is recorded only if nothing else was enqueued or recorded since it read ``epoch``,
so a recorded tail is always the newest command of its queue.  Out-of-order queues
are never recorded.  Every method runs under the backend's lock.
"""

from __future__ import annotations

from typing import Any

from ._cl import address, ffi, lib


class QueueTails:
    def __init__(self) -> None:
        #: queue address -> (the queue's pointer object, the last command's event, ours)
        self._tails: dict[int, tuple[Any, Any]] = {}
        #: Counts the enqueues that forget a tail: a launch that saw another number
        #: before it was enqueued may not be the newest command (``launched``).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._tails)

    def record(self, queue, event, epoch: int, in_order: bool) -> None:
        """A command was enqueued on ``queue`` with ``event`` (NULL: none the host
        holds); ``epoch`` is what ``self.epoch`` read before it was enqueued.  A
        record moves the epoch too: of two commands enqueued side by side, the one
        recorded second may be the older."""
        if not in_order or event == ffi.NULL or epoch != self.epoch:
            self.forget(queue)
            return
        lib().clRetainEvent(event)
        at = address(queue)
        self._drop(self._tails.get(at))
        self._tails[at] = (queue, event)
        self.epoch += 1

    def forget(self, queue) -> None:
        """Another command goes (or went) onto ``queue``, or the queue is gone."""
        self.epoch += 1
        self._drop(self._tails.pop(address(queue), None))

    def take(self, queue) -> Any:
        """The event of ``queue``'s last command, with a reference of the caller's to
        release; None when it is not known."""
        tail = self._tails.get(address(queue))
        if tail is None or tail[0] is not queue:
            return None         # (a queue made since at the address of one gone)
        lib().clRetainEvent(tail[1])
        return tail[1]

    def close(self) -> None:
        for tail in self._tails.values():
            self._drop(tail)
        self._tails.clear()

    @staticmethod
    def _drop(tail: tuple[Any, Any] | None) -> None:
        if tail is not None:
            lib().clReleaseEvent(tail[1])
