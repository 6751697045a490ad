"""The Python guest-side encoder (``protocols/opencl_pywire.py``), and a stand-in
for guest RAM (FakeDma) for calls that pass data by reference."""

from __future__ import annotations

from protocols.opencl_pywire import decode, encode

__all__ = ["FakeDma", "decode", "encode"]


class FakeDma:
    """Guest RAM for calls that pass application data by reference."""

    def __init__(self, size=1 << 20):
        self.ram = bytearray(size)

    def translate(self, addr, length, write=False):
        if addr + length > len(self.ram):
            raise ValueError("outside guest memory")
        return memoryview(self.ram)[addr:addr + length]

    def read(self, addr, length):
        return bytes(self.translate(addr, length))

    def write(self, addr, length, data):
        self.translate(addr, length, write=True)[:len(data)] = data
