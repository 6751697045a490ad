"""What an application's runtime and the guest daemon (``ava-vdevd``) say to each other.

In a guest shared by several users, the daemon alone owns the device: it binds it,
maps BAR0 and sets up each process's queues, their owner tags and their DMA
windows.  An application connects to the daemon's UNIX socket (SOCK_SEQPACKET: one
record a message) and sees a *virtual BAR0*: the same registers, but only its own
queues' windows, through the daemon, which decides what each access may do
(``guest_driver/_daemon.py`` says what each register does there).  Its rings,
completions and staging are memory the daemon gives it (a memfd passed with
``SCM_RIGHTS``), so the hot path needs no daemon hop; a doorbell is a posted
register write.

Every request is one ``Request`` record.  ``HELLO`` is answered with a ``Reply``
followed by ``count`` 64-bit guest-physical addresses (one per 2 MiB chunk of the
memory) and the memfd; ``READ32`` with a ``Reply`` whose ``value`` is the
register; ``WRITE32`` with a ``Reply`` unless ``flags`` has ``POSTED``;
``IRQ_FD`` with a ``Reply`` and an eventfd that is signalled when the device
interrupts; ``LEND`` with a ``Reply``; ``PIN`` with a ``Reply`` followed by ``count``
``PinRun`` records; ``RETURN`` gets none.  ``status`` is 0 or a negative errno.
"""

from __future__ import annotations

import enum

from construct import Int32sl, Int32ul, Int64ul, Struct

#: A PIN's reply carries the runs as the module gave them (guest_pin.PinRun).
from .guest_pin import PIN_RUN_SIZE as PIN_RUN_SIZE
from .guest_pin import PinRun as PinRun

#: The version a runtime sends in HELLO (``arg0``); the daemon refuses others.
DAEMON_PROTOCOL = 1
#: Where the daemon listens unless told otherwise (``AVA_VDEV_DAEMON`` in the runtime).
DEFAULT_SOCKET = "/run/ava-vdev/daemon.sock"
#: The group whose members may use the device (the socket's group).
DEFAULT_GROUP = "ava"
#: The memory a HELLO may ask for (the daemon may be configured lower).
MAX_CLIENT_MEMORY = 1 << 30
CHUNK_SIZE = 2 << 20
#: The most physically contiguous runs one PIN may have (its reply's records); a
#: range more scattered than that is copied instead.
MAX_PIN_RUNS = 1024


class DaemonOp(enum.IntEnum):
    HELLO = 1      # arg0: DAEMON_PROTOCOL; arg1: bytes of DMA memory wanted
    READ32 = 2     # arg0: BAR0 offset
    WRITE32 = 3    # arg0: BAR0 offset; arg1: the value
    IRQ_FD = 4     # arg0: one of the caller's queues
    # Zero-copy (only where HELLO's value has HelloFeatures.LEND): arg0 is the fd, in
    # the caller, of an io_uring whose buffer registration pins the application pages
    # a transfer lends the device; arg1 a token of the caller's.  The daemon takes a
    # dup of it (pidfd_getfd: the kernel passes no io_uring fd over a socket) and
    # holds it until RETURN (posted), or, if the process dies first, until its queues
    # are released and the quarantine is over: the pages cannot be reused while the
    # host may still write to them.
    LEND = 5
    RETURN = 6     # arg1: a LEND's or a PIN's token (posted)
    # Zero-copy for ordinary users (only where HELLO's value has HelloFeatures.PIN): the
    # request carries, with SCM_RIGHTS, a pin made by the ava_vdev_pin module
    # (protocols/guest_pin.py) of the caller's own pages; arg1 is a token of the
    # caller's.  The daemon reads the pin's frames from the kernel, adds them to the DMA
    # windows of every queue of the caller, and answers the scatter list; it keeps the
    # fd (so the pages stay pinned) until RETURN, which first removes those windows.
    PIN = 7


class HelloFeatures(enum.IntFlag):
    """HELLO's ``value``: what this client may do beyond the basics."""

    LEND = 1 << 0      # lend its own pages to transfers (root, in a VM): LEND, RETURN
    PIN = 1 << 1       # the same for an ordinary user, through the module: PIN, RETURN


class DaemonFlags(enum.IntFlag):
    POSTED = 1 << 0    # WRITE32: no reply (a doorbell)


Request = Struct(
    "op" / Int32ul,       # DaemonOp
    "flags" / Int32ul,    # DaemonFlags
    "arg0" / Int32ul,
    "reserved" / Int32ul,
    "arg1" / Int64ul,
)
REQUEST_SIZE = 24

Reply = Struct(
    "status" / Int32sl,   # 0 or -errno
    "value" / Int32ul,    # READ32: the register; HELLO: HelloFeatures
    "owner" / Int32ul,    # HELLO: the owner tag of this connection's queues
    "count" / Int32ul,    # HELLO: chunk addresses that follow
    "size" / Int64ul,     # HELLO: bytes of memory in the memfd
)
REPLY_SIZE = 24


#: Largest reply: HELLO's header and one address per chunk, or a PIN's and its runs.
MAX_REPLY = REPLY_SIZE + max(8 * (MAX_CLIENT_MEMORY // CHUNK_SIZE), PIN_RUN_SIZE * MAX_PIN_RUNS)

assert Request.sizeof() == REQUEST_SIZE and Reply.sizeof() == REPLY_SIZE
assert PIN_RUN_SIZE * MAX_PIN_RUNS <= MAX_REPLY - REPLY_SIZE
