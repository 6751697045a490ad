"""Reading and writing the OpenCL call encoding (see protocols.opencl_api)."""

from __future__ import annotations

import struct

from protocols.opencl_api import NULL_LEN

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class WireError(Exception):
    """The guest's encoding is malformed (truncated, oversized)."""


class Decoder:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def u64(self) -> int:
        if self.pos + 8 > len(self.buf):
            raise WireError(f"truncated at byte {self.pos}")
        value = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return value

    def u64s(self, n: int) -> list[int]:
        if n > (len(self.buf) - self.pos) // 8:
            raise WireError(f"{n} values do not fit in the remaining {len(self.buf) - self.pos} bytes")
        values = list(struct.unpack_from(f"<{n}Q", self.buf, self.pos))
        self.pos += 8 * n
        return values

    def blob(self) -> bytes | None:
        """u64 length (NULL_LEN = None) then the bytes, padded to 8."""
        n = self.u64()
        if n == NULL_LEN:
            return None
        if n > len(self.buf) - self.pos:
            raise WireError(f"blob of {n} bytes does not fit in the remaining {len(self.buf) - self.pos}")
        data = self.buf[self.pos:self.pos + n]
        self.pos += (n + 7) & ~7
        return bytes(data)

    def done(self) -> None:
        if self.pos != len(self.buf) and any(self.buf[self.pos:]):
            raise WireError(f"{len(self.buf) - self.pos} stray bytes after the arguments")


class Encoder:
    __slots__ = ("parts",)

    def __init__(self, status: int = 0):
        self.parts = [_I64.pack(status)]

    def set_status(self, status: int) -> None:
        self.parts[0] = _I64.pack(status)

    def u64(self, value: int) -> None:
        self.parts.append(_U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def u64s(self, values) -> None:
        self.parts.append(struct.pack(f"<{len(values)}Q", *values))

    def blob(self, data: bytes) -> None:
        self.u64(len(data))
        self.parts.append(bytes(data) + bytes(-len(data) % 8))

    def bytes(self) -> bytes:
        return b"".join(self.parts)
