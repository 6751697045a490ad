"""The ava-vdev device ABI as the guest sees it through BAR0.

BAR0 holds control registers only (identity, version, features, status, a
scratch register, interrupt status, a doorbell).  Offsets are derived from the
``Bar0`` declaration, so the C header generated later and the server agree by
construction.
"""

from __future__ import annotations

import enum

from construct import Bytes, Int16ul, Int32sl, Int32ul, Int64ul, Struct

VENDOR_ID = 0x4156          # unassigned in pci.ids; nothing in QEMU or Linux binds it
DEVICE_ID = 0x0C1A
SUBSYS_VENDOR_ID = 0x4156
SUBSYS_ID = 0x0001
REVISION = 0x01
CLASS_CODE = 0x120000       # processing accelerator

MAGIC = 0x44415641          # "AVAD" in little-endian bytes
ABI_MAJOR = 0
ABI_MINOR = 3              # 2: per-queue DMA windows (Feature.DMA_WINDOWS); 3: their fence
                           # (Feature.WINDOW_FENCE, QueueState.SETTLING)
ABI_VERSION = (ABI_MAJOR << 16) | ABI_MINOR

BAR0_SIZE = 0x1000
MSIX_BAR = 2
MSIX_BAR_SIZE = 0x1000
MSIX_VECTORS = 64          # one vector per queue (queue q fires vector q)
MSIX_TABLE_OFFSET = 0x000
MSIX_PBA_OFFSET = 0x800


class Feature(enum.IntFlag):
    """Device feature bits (64 bits; offered in DEVICE_FEATURES, acked in DRIVER_FEATURES)."""

    INTX = 1 << 0
    MSIX = 1 << 1
    DMA_WINDOWS = 1 << 2    # QueueCtrl.LOAD_WINDOWS: per-queue DMA windows (a software IOMMU)
    WINDOW_FENCE = 1 << 3   # QueueState.SETTLING: when memory new windows leave out is free


DEVICE_FEATURES = Feature.INTX | Feature.MSIX | Feature.DMA_WINDOWS | Feature.WINDOW_FENCE


class DeviceStatus(enum.IntFlag):
    """STATUS register: 0 means reset; writing 0 resets the device."""

    ACKNOWLEDGE = 1 << 0
    DRIVER_OK = 1 << 1
    FAILED = 1 << 7


Bar0 = Struct(
    "magic" / Int32ul,              # RO
    "abi_version" / Int32ul,        # RO: major << 16 | minor
    "device_features_lo" / Int32ul, # RO
    "device_features_hi" / Int32ul, # RO
    "driver_features_lo" / Int32ul, # RW: only offered bits stick
    "driver_features_hi" / Int32ul, # RW
    "status" / Int32ul,             # RW: DeviceStatus; write 0 = reset
    "scratch" / Int32ul,            # RW: for tests
    "doorbell" / Int32ul,           # WO: queue index to wake; reads 0
    "irq_status" / Int32ul,         # RW1C: pending interrupt causes
    "num_queues" / Int32ul,         # RO: how many queue windows exist
    "queue_alloc" / Int32ul,        # RO, side effect: claims a free queue, returns its
                                    #   index (NO_QUEUE when none is free)
)


def _offsets(struct: Struct) -> dict[str, int]:
    offsets, pos = {}, 0
    for sub in struct.subcons:
        offsets[sub.name] = pos
        pos += sub.sizeof()
    return offsets


class Reg(enum.IntEnum):
    """BAR0 register offsets, derived from ``Bar0``."""

    MAGIC = _offsets(Bar0)["magic"]
    ABI_VERSION = _offsets(Bar0)["abi_version"]
    DEVICE_FEATURES_LO = _offsets(Bar0)["device_features_lo"]
    DEVICE_FEATURES_HI = _offsets(Bar0)["device_features_hi"]
    DRIVER_FEATURES_LO = _offsets(Bar0)["driver_features_lo"]
    DRIVER_FEATURES_HI = _offsets(Bar0)["driver_features_hi"]
    STATUS = _offsets(Bar0)["status"]
    SCRATCH = _offsets(Bar0)["scratch"]
    DOORBELL = _offsets(Bar0)["doorbell"]
    IRQ_STATUS = _offsets(Bar0)["irq_status"]
    NUM_QUEUES = _offsets(Bar0)["num_queues"]
    QUEUE_ALLOC = _offsets(Bar0)["queue_alloc"]


SCRATCH_RESET = 0x5CA7C400   # scratch's reset value, so tests can see a reset happen


# --- queues ------------------------------------------------------------------------
#
# Each queue has its own register window in BAR0 (no shared "select" register,
# so guest processes never race on one).  A guest process claims a queue by
# reading QUEUE_ALLOC (the read is atomic: the server serialises accesses),
# writes its ring's guest-physical address and size, its owner tag, then
# writes ENABLE to CTRL.  The ring itself lives in guest RAM.

NUM_QUEUES = 64
NO_QUEUE = 0xFFFFFFFF
QUEUE_WINDOW_BASE = 0x100
QUEUE_WINDOW_SIZE = 0x20

QueueWindow = Struct(
    "ring_lo" / Int32ul,    # RW: guest-physical address of the ring (low 32 bits)
    "ring_hi" / Int32ul,    # RW
    "size" / Int32ul,       # RW: number of command slots, a power of two
    "ctrl" / Int32ul,       # W: QueueCtrl command; R: QueueState
    "owner" / Int32ul,      # RW: owner tag (the guest runtime writes its pid)
    "error" / Int32ul,      # RO: errno of the last failed ENABLE or LOAD_WINDOWS, or of the failure
    "windows_lo" / Int32ul, # RW: guest-physical address of a WindowTable (low 32 bits)
    "windows_hi" / Int32ul, # RW
)


class QReg(enum.IntEnum):
    """Offsets inside one queue's window (queue q is at QUEUE_WINDOW_BASE + q * QUEUE_WINDOW_SIZE)."""

    RING_LO = _offsets(QueueWindow)["ring_lo"]
    RING_HI = _offsets(QueueWindow)["ring_hi"]
    SIZE = _offsets(QueueWindow)["size"]
    CTRL = _offsets(QueueWindow)["ctrl"]
    OWNER = _offsets(QueueWindow)["owner"]
    ERROR = _offsets(QueueWindow)["error"]
    WINDOWS_LO = _offsets(QueueWindow)["windows_lo"]
    WINDOWS_HI = _offsets(QueueWindow)["windows_hi"]


def queue_reg(queue: int, reg: int) -> int:
    return QUEUE_WINDOW_BASE + queue * QUEUE_WINDOW_SIZE + reg


class QueueCtrl(enum.IntEnum):
    """Values written to a queue's CTRL register."""

    ENABLE = 1     # validate ring address/size and start serving it
    DISABLE = 2    # stop serving; keep the claim
    RELEASE = 3    # stop serving, drop the claim, free what the queue's owner created
    LOAD_WINDOWS = 4   # read the WindowTable at WINDOWS_LO/HI: from now on (until RELEASE)
                       # the host touches only guest memory inside those windows for this
                       # queue; loading again replaces them, in force before the write's
                       # effects can be observed (read any register back to wait for it)


class QueueState(enum.IntFlag):
    """Bits read from a queue's CTRL register."""

    CLAIMED = 1 << 0
    ENABLED = 1 << 1
    FAILED = 1 << 2
    WINDOWED = 1 << 3      # DMA windows loaded: the ring and every command stay inside them
    # Set from an enabled queue's LOAD_WINDOWS until no command issued before it, nor a
    # non-blocking transfer such a command left running, may still touch memory the new
    # windows leave out.  A guest daemon waits for it to clear before it lets that
    # memory go (an ordinary user's returned pin): the new windows bind the next
    # commands at once, but one already running keeps the memory it was given.
    SETTLING = 1 << 4


MIN_RING_SLOTS = 2
MAX_RING_SLOTS = 4096

# --- DMA windows (a software IOMMU) ---------------------------------------------------
#
# The guest has no IOMMU: any guest-physical address is reachable by DMA.  A guest
# daemon that owns BAR0 (applications cannot reach it) lets each queue touch only the
# memory it was given: its ring, its staging and the application pages it pinned.  It
# writes a table of windows into guest memory of its own, points WINDOWS_LO/HI at it
# and writes LOAD_WINDOWS to CTRL.  The host copies the table at once; a table that
# cannot be read, or a bad entry, leaves the queue with no windows at all (fail closed)
# and ERROR set.  Any ring address, payload, reply or scatter-list entry (the list
# itself included) outside the windows completes with -EFAULT.

MAX_WINDOWS = 4096

WindowTableHeader = Struct(
    "count" / Int32ul,      # entries that follow (at most MAX_WINDOWS)
    "reserved" / Int32ul,
)
WindowEntry = Struct(
    "addr" / Int64ul,       # guest-physical start
    "size" / Int64ul,       # bytes (0: the entry is ignored)
)
WINDOW_TABLE_HEADER_SIZE = 8
WINDOW_ENTRY_SIZE = 16

# --- ring memory (guest RAM) ------------------------------------------------------------
#
# Venus-style: tail, head and status on separate 64-byte lines, then the
# command slots, then the completion slots.  The guest writes tail and its own
# line; the host writes head, status and completions.

CACHE_LINE = 64


class RingStatus(enum.IntFlag):
    IDLE = 1 << 0      # the host stopped polling: write DOORBELL after publishing tail
    FAILED = 1 << 1    # the host stopped serving this ring (see the queue's ERROR)


RingHeader = Struct(
    "tail" / Int64ul,                      # guest: commands published so far
    "_pad0" / Bytes(CACHE_LINE - 8),
    "head" / Int64ul,                      # host: commands completed so far
    "_pad1" / Bytes(CACHE_LINE - 8),
    "status" / Int32ul,                    # host: RingStatus
    "_pad2" / Bytes(CACHE_LINE - 4),
    "irq_armed" / Int32ul,                 # guest: 1 = about to sleep, interrupt me
    "_pad3" / Bytes(CACHE_LINE - 4),
)
RING_HEADER_SIZE = 4 * CACHE_LINE


class CmdFlags(enum.IntFlag):
    IRQ = 1 << 0          # always interrupt when this command completes
    PAYLOAD_SG = 1 << 1   # payload_addr points at payload_len SgEntry records
    REPLY_SG = 1 << 2     # reply_addr points at reply_len SgEntry records
    POSTED = 1 << 3       # the guest did not wait: it answered CL_SUCCESS itself (a
                          # different status from the host is a misprediction, logged)


Command = Struct(
    "opcode" / Int16ul,
    "flags" / Int16ul,        # CmdFlags
    "payload_len" / Int32ul,  # bytes, or SG entries with PAYLOAD_SG
    "seq" / Int64ul,          # the ring index this command was published at
    "payload_addr" / Int64ul, # guest-physical
    "reply_addr" / Int64ul,   # guest-physical
    "reply_len" / Int32ul,    # capacity in bytes, or SG entries with REPLY_SG
    "reserved" / Int32ul,
    "arg0" / Int64ul,
    "arg1" / Int64ul,
    "arg2" / Int64ul,
)
COMMAND_SIZE = 64
COMMAND_SEQ = _offsets(Command)["seq"]

Completion = Struct(
    "seq" / Int64ul,          # equals the command's seq once it is complete
    "status" / Int32sl,       # 0, or a negative errno
    "result_len" / Int32ul,   # reply bytes written
)
COMPLETION_SIZE = 16

SgEntry = Struct(
    "addr" / Int64ul,
    "len" / Int32ul,
    "reserved" / Int32ul,
)
SG_ENTRY_SIZE = 16
MAX_SG_ENTRIES = 1 << 20


def ring_bytes(slots: int) -> int:
    """Guest memory one ring of ``slots`` command slots occupies."""
    return RING_HEADER_SIZE + slots * (COMMAND_SIZE + COMPLETION_SIZE)


def command_offset(slots: int, index: int) -> int:
    return RING_HEADER_SIZE + (index & (slots - 1)) * COMMAND_SIZE


def completion_offset(slots: int, index: int) -> int:
    return RING_HEADER_SIZE + slots * COMMAND_SIZE + (index & (slots - 1)) * COMPLETION_SIZE


RING_TAIL = _offsets(RingHeader)["tail"]
RING_HEAD = _offsets(RingHeader)["head"]
RING_STATUS = _offsets(RingHeader)["status"]
RING_IRQ_ARMED = _offsets(RingHeader)["irq_armed"]


#: Opcodes below this are transport diagnostics (SelftestOp) that every backend
#: serves, so echo, status and benchmarks work whatever runs the API calls.
DIAG_OPCODE_LIMIT = 0x100


class SelftestOp(enum.IntEnum):
    """Opcodes of the built-in ``test`` backend."""

    NOP = 0      # completes with status 0
    ECHO = 1     # copies the payload into the reply
    FILL = 2     # fills reply_len bytes of the reply with the byte arg0
    SLEEP = 3    # sleeps arg0 microseconds (a blocking command), then completes
    FAIL = 4     # completes with status -arg0
