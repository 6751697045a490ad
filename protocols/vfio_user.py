"""vfio-user wire format, as QEMU 11's ``vfio-user-pci`` client speaks it.

Declarations only: no sockets, no state.  Every struct is little-endian with
C natural alignment, as in QEMU's ``hw/vfio-user/protocol.h``.  Payload
structs describe what follows the 16-byte header.

Where QEMU's 10.1 client deviates from the spec (DMA_READ/WRITE's ``count``
is 32 bits there), both layouts are declared and named after their origin.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from construct import (
    Bytes,
    GreedyBytes,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
    this,
)

HEADER_SIZE = 16


class Command(enum.IntEnum):
    """vfio-user command numbers (spec section "Commands")."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


class MsgType(enum.IntEnum):
    COMMAND = 0
    REPLY = 1


class HeaderFlags(enum.IntFlag):
    TYPE_MASK = 0xF
    NO_REPLY = 0x10
    ERROR = 0x20


Header = Struct(
    "msg_id" / Int16ul,
    "command" / Int16ul,
    "size" / Int32ul,
    "flags" / Int32ul,
    "error" / Int32ul,
)

# --- VERSION -----------------------------------------------------------------

VersionFixed = Struct(
    "major" / Int16ul,
    "minor" / Int16ul,
)
VERSION_FIXED_SIZE = 4

Version = Struct(
    "major" / Int16ul,
    "minor" / Int16ul,
    "json" / GreedyBytes,  # NUL-terminated JSON capabilities
)


def encode_caps(caps: dict[str, Any]) -> bytes:
    """JSON capabilities as QEMU 10.1 requires them: compact, NUL-terminated."""
    return json.dumps({"capabilities": caps}, separators=(",", ":")).encode() + b"\0"


def decode_caps(raw: bytes) -> dict[str, Any]:
    """Parse a VERSION JSON body; raises ValueError on anything malformed."""
    body = raw.split(b"\0", 1)[0] if raw else b""
    if not body:
        return {}
    doc = json.loads(body.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("version JSON is not an object")
    caps = doc.get("capabilities", {})
    if not isinstance(caps, dict):
        raise ValueError("'capabilities' is not an object")
    return caps


# --- DMA -----------------------------------------------------------------------


class DmaMapFlags(enum.IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1


class DmaUnmapFlags(enum.IntFlag):
    GET_DIRTY_PAGE_INFO = 1 << 0
    ALL = 1 << 1


DmaMap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "offset" / Int64ul,
    "address" / Int64ul,
    "size" / Int64ul,
)
DMA_MAP_SIZE = 32

DmaUnmap = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "address" / Int64ul,
    "size" / Int64ul,
)
DMA_UNMAP_SIZE = 24

# Server-to-client DMA, spec layout (count is 64 bits; data follows at 16).
DmaRwSpec = Struct(
    "address" / Int64ul,
    "count" / Int64ul,
    "data" / GreedyBytes,
)
# QEMU 10.1 client layout (count is 32 bits; data at 12).
DmaRwQemu101 = Struct(
    "address" / Int64ul,
    "count" / Int32ul,
    "data" / GreedyBytes,
)

# --- device info ----------------------------------------------------------------


class DeviceFlags(enum.IntFlag):
    RESET = 1 << 0
    PCI = 1 << 1


DeviceInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "num_regions" / Int32ul,
    "num_irqs" / Int32ul,
)
DEVICE_INFO_SIZE = 16


class RegionIndex(enum.IntEnum):
    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


class RegionFlags(enum.IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1
    MMAP = 1 << 2
    CAPS = 1 << 3


RegionInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "cap_offset" / Int32ul,
    "size" / Int64ul,
    "offset" / Int64ul,
)
REGION_INFO_SIZE = 32

CAP_SPARSE_MMAP = 1

CapHeader = Struct(
    "id" / Int16ul,
    "version" / Int16ul,
    "next" / Int32ul,
)

SparseMmapArea = Struct(
    "offset" / Int64ul,
    "size" / Int64ul,
)

SparseMmapCap = Struct(
    "header" / CapHeader,
    "nr_areas" / Int32ul,
    Padding(4),
    "areas" / SparseMmapArea[this.nr_areas],
)


class IrqIndex(enum.IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


class IrqInfoFlags(enum.IntFlag):
    EVENTFD = 1 << 0
    MASKABLE = 1 << 1
    AUTOMASKED = 1 << 2
    NORESIZE = 1 << 3


IrqInfo = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "count" / Int32ul,
)
IRQ_INFO_SIZE = 16


class IrqSetFlags(enum.IntFlag):
    DATA_NONE = 1 << 0
    DATA_BOOL = 1 << 1
    DATA_EVENTFD = 1 << 2
    ACTION_MASK = 1 << 3
    ACTION_UNMASK = 1 << 4
    ACTION_TRIGGER = 1 << 5

    DATA_TYPE_MASK = DATA_NONE | DATA_BOOL | DATA_EVENTFD
    ACTION_TYPE_MASK = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER


IrqSet = Struct(
    "argsz" / Int32ul,
    "flags" / Int32ul,
    "index" / Int32ul,
    "start" / Int32ul,
    "count" / Int32ul,
    "data" / GreedyBytes,  # one byte per vector with DATA_BOOL
)
IRQ_SET_SIZE = 20

# --- region access -----------------------------------------------------------------

RegionAccess = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / GreedyBytes,
)
REGION_ACCESS_SIZE = 16

WriteMultiEntry = Struct(
    "offset" / Int64ul,
    "region" / Int32ul,
    "count" / Int32ul,
    "data" / Bytes(8),
)

RegionWriteMulti = Struct(
    "wr_cnt" / Int64ul,
    "entries" / WriteMultiEntry[this.wr_cnt],
)

#: Payload declarations per command, for decoding and for ``-v`` logging.
#: DMA_READ/WRITE are keyed to the spec layout; the server never sends them.
REQUEST_PAYLOADS = {
    Command.VERSION: Version,
    Command.DMA_MAP: DmaMap,
    Command.DMA_UNMAP: DmaUnmap,
    Command.DEVICE_GET_INFO: DeviceInfo,
    Command.DEVICE_GET_REGION_INFO: RegionInfo,
    Command.DEVICE_GET_IRQ_INFO: IrqInfo,
    Command.DEVICE_SET_IRQS: IrqSet,
    Command.REGION_READ: RegionAccess,
    Command.REGION_WRITE: RegionAccess,
    Command.DMA_READ: DmaRwSpec,
    Command.DMA_WRITE: DmaRwSpec,
    Command.REGION_WRITE_MULTI: RegionWriteMulti,
}

#: The fixed part each request must carry, in bytes.
REQUEST_MIN_SIZE = {
    Command.VERSION: VERSION_FIXED_SIZE,
    Command.DMA_MAP: DMA_MAP_SIZE,
    Command.DMA_UNMAP: DMA_UNMAP_SIZE,
    Command.DEVICE_GET_INFO: DEVICE_INFO_SIZE,
    Command.DEVICE_GET_REGION_INFO: REGION_INFO_SIZE,
    Command.DEVICE_GET_IRQ_INFO: IRQ_INFO_SIZE,
    Command.DEVICE_SET_IRQS: IRQ_SET_SIZE,
    Command.REGION_READ: REGION_ACCESS_SIZE,
    Command.REGION_WRITE: REGION_ACCESS_SIZE,
    Command.DEVICE_RESET: 0,
}


def build_message(msg_id: int, command: int, payload: bytes = b"", *, flags: int = 0,
                  error: int = 0) -> bytes:
    """Header plus payload as one buffer (one ``sendmsg``)."""
    header = Header.build(dict(msg_id=msg_id, command=command,
                               size=HEADER_SIZE + len(payload), flags=flags, error=error))
    return bytes(header) + payload


def build_error_reply(msg_id: int, command: int, errno_: int) -> bytes:
    """An error reply is the header alone with REPLY|ERROR set."""
    return build_message(msg_id, command, flags=MsgType.REPLY | HeaderFlags.ERROR,
                         error=errno_)


def describe(command: int, payload: bytes) -> str:
    """One-line decoded view of a payload, for ``-v`` logging; never raises."""
    try:
        cmd = Command(command)
    except ValueError:
        return f"unknown command {command} ({len(payload)} payload bytes)"
    decl = REQUEST_PAYLOADS.get(cmd)
    if decl is None or not payload:
        return f"{cmd.name} ({len(payload)} payload bytes)"
    try:
        parsed = decl.parse(payload)
    except Exception as exc:  # a log line must never fail
        return f"{cmd.name} undecodable ({len(payload)} bytes: {exc.__class__.__name__})"
    fields = []
    for key, value in parsed.items():
        if key.startswith("_"):
            continue
        if isinstance(value, bytes):
            if cmd is Command.VERSION:
                value = value.rstrip(b"\0").decode("utf-8", "replace")
            else:
                value = value[:16].hex() + ("..." if len(value) > 16 else "")
        elif isinstance(value, int) and key in ("offset", "address", "size", "flags"):
            value = hex(value)
        fields.append(f"{key}={value}")
    return f"{cmd.name} " + " ".join(fields)
