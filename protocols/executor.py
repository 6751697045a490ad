"""The device server's private protocol with its executor (the child process that
runs a VM's commands).

Three channels, all created by the parent and inherited by the child:

- the control socket (SOCK_SEQPACKET, one message per record): the parent's view
  of the session that the executor needs (DMA map changes, with the memfd as
  SCM_RIGHTS; queue enable, disable and release), in order.  Changes that must
  be in force before the parent replies to QEMU (an unmap) carry a sequence
  number, and the executor answers ``Ack`` with it on the same socket;
- the event socket (SOCK_SEQPACKET): what the executor tells the parent
  (ready, raise an interrupt for a queue, a ring failed);
- the status page (a 4 KiB memfd both map): the executor's heartbeat and what
  it is doing now, so the parent can bound a command's time and tell a hung
  executor from a busy one without asking it anything.

Doorbells travel as an eventfd write, which needs no format.  The executor is
not trusted: everything it sends is parsed with these declarations and checked
by the parent.
"""

from __future__ import annotations

import enum

from construct import (
    Array,
    Const,
    Enum,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64ul,
    PascalString,
    Struct,
    Switch,
    this,
)

from .device_abi import MAX_WINDOWS, _offsets

#: Largest control or event record (a QUEUE_WINDOWS with every window; a longer one
#: is refused).
#: The environment variable naming the OpenCL declarations a server prepared for its
#: executors (host_backend._cl.prepared_source), as a path: ``/proc/self/fd/N``.
PREPARED_ENV = "AVA_CL_PREPARED"
#: The host backend's lane library, which the server compiled (a sealed memfd's path).
LANE_ENV = "AVA_LANE_LIB"
MAX_RECORD = 32 + 16 * MAX_WINDOWS


class ControlOp(enum.IntEnum):
    DMA_ADD = 1         # a range (and its fd, when it has one) joins the map
    DMA_REMOVE = 2      # acked: the executor no longer touches the range
    DMA_CLEAR = 3       # acked: every range is gone
    QUEUE_ENABLE = 4    # start serving a ring
    QUEUE_DISABLE = 5   # acked: the ring's memory is no longer touched
    QUEUE_RELEASE = 6   # acked; a queue is gone; ``last``: its owner has no other queue
    SYNC = 7            # acked once everything before it is done
    QUEUE_WINDOWS = 8   # acked: a queue's DMA windows (in force for its next enable, and at
                        # once for an enabled queue)
    ADOPT = 9           # an executor started ahead (a standby) now serves session ``name``
    FENCE = 10          # ``owner`` no longer reaches what it reached through ``queue``:
                        # say FENCE_DONE ``fence`` once its commands taken by now, and
                        # the transfers they left running, are over


class EventOp(enum.IntEnum):
    READY = 1           # the executor is serving (sandboxed, backend loaded)
    IRQ = 2             # interrupt the guest for ``queue``
    QUEUE_FAILED = 3    # the ring of ``queue`` (enable ``generation``) failed with ``errno``
    ACK = 4             # sent on the control socket: everything up to ``seq`` is done
    FENCE_DONE = 5      # FENCE ``fence`` of ``queue`` is done


_DmaRange = Struct("iova" / Int64ul, "size" / Int64ul, "offset" / Int64ul, "flags" / Int32ul,
                   "has_fd" / Int32ul)
_Seq = Struct("seq" / Int32ul)
_Enable = Struct("queue" / Int32ul, "slots" / Int32ul, "ring" / Int64ul, "owner" / Int32ul,
                 "generation" / Int32ul)
_Queue = Struct("queue" / Int32ul)

Control = Struct(
    "op" / Enum(Int16ul, ControlOp),
    "body" / Switch(this.op, {
        ControlOp.DMA_ADD.name: _DmaRange,
        ControlOp.DMA_REMOVE.name: Struct("iova" / Int64ul, "size" / Int64ul, "seq" / Int32ul),
        ControlOp.DMA_CLEAR.name: _Seq,
        ControlOp.QUEUE_ENABLE.name: _Enable,
        ControlOp.QUEUE_DISABLE.name: Struct("queue" / Int32ul, "seq" / Int32ul),
        ControlOp.QUEUE_RELEASE.name: Struct("queue" / Int32ul, "owner" / Int32ul,
                                             "last" / Int32ul, "seq" / Int32ul),
        ControlOp.SYNC.name: _Seq,
        ControlOp.QUEUE_WINDOWS.name: Struct(
            "queue" / Int32ul, "seq" / Int32ul, "count" / Int32ul,
            "windows" / Array(this.count, Struct("start" / Int64ul, "end" / Int64ul))),
        ControlOp.ADOPT.name: Struct("name" / PascalString(Int16ul, "utf8")),
        ControlOp.FENCE.name: Struct("queue" / Int32ul, "owner" / Int32ul, "fence" / Int32ul),
    }),
)

Event = Struct(
    "op" / Enum(Int16ul, EventOp),
    "body" / Switch(this.op, {
        EventOp.READY.name: Struct("pid" / Int32ul),
        EventOp.IRQ.name: _Queue,
        EventOp.QUEUE_FAILED.name: Struct("queue" / Int32ul, "generation" / Int32ul,
                                          "errno" / Int32sl),
        EventOp.ACK.name: _Seq,
        EventOp.FENCE_DONE.name: Struct("queue" / Int32ul, "fence" / Int32ul),
    }),
)

STATUS_MAGIC = 0x58454156     # "VAEX"

#: The status page.  Times are CLOCK_MONOTONIC nanoseconds (one clock for both
#: processes); 0 means "not now".
Status = Struct(
    "magic" / Const(STATUS_MAGIC, Int32ul),
    "pid" / Int32ul,
    "heartbeat" / Int64ul,          # bumped by the executor's watchdog thread every tick
    # The command the ring poller runs inline now (since, queue, opcode); blocking
    # commands on worker threads write since = 0 (a wait may be long natively).
    "command_since" / Int64ul,
    "command_queue" / Int32ul,
    "command_opcode" / Int32ul,
    "commands" / Int64ul,           # commands started
    # The oldest kernel the implementation reports running, and since when.
    "kernel_since" / Int64ul,
    "kernel_owner" / Int32ul,
    "kernel_opcode" / Int32ul,
    # A dead owner's objects being released (which waits for its calls) since when.
    "teardown_since" / Int64ul,
)
STATUS_SIZE = 4096


STATUS_OFFSETS = _offsets(Status)
assert Status.sizeof() <= STATUS_SIZE

__all__ = ["LANE_ENV", "MAX_RECORD", "PREPARED_ENV", "STATUS_OFFSETS", "STATUS_SIZE", "Control", "ControlOp",
           "Event", "EventOp", "Status"]
