"""``python -m vdev._device_probe``: the host's OpenCL devices, as JSON on stdout.

The manager checks its configuration against the device (compute partitions,
memory quotas) without loading an OpenCL implementation into its own process:
one that aborts on a bad driver state must not take the manager with it.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def describe() -> list[dict[str, object]]:
    from host_backend._cl import ffi, lib, platforms_and_devices

    def query(device: Any, param: int, ctype: str) -> int:
        cell = ffi.new(f"{ctype} *")
        cl = lib()      # type: ignore[no-untyped-call]
        status = cl.clGetDeviceInfo(device, param, ffi.sizeof(ctype), cell, ffi.NULL)
        return int(cell[0]) if status == 0 else 0

    def name(device: Any) -> str:
        buf = ffi.new("char[256]")
        lib().clGetDeviceInfo(device, 0x102B, 256, buf, ffi.NULL)  # type: ignore[no-untyped-call]
        return str(ffi.string(buf).decode("utf-8", "replace"))

    found = []
    for p, (_platform, devices) in enumerate(platforms_and_devices()):
        for d, device in enumerate(devices):
            found.append(dict(platform=p, device=d, name=name(device),
                              compute_units=query(device, 0x1002, "cl_uint"),
                              global_mem_size=query(device, 0x101F, "cl_ulong"),
                              max_mem_alloc_size=query(device, 0x1010, "cl_ulong")))
    return found


def main() -> int:
    try:
        print(json.dumps(describe()))
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
