"""``status``: the device as the runtime sees it (through the built library)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from protocols import device_abi as abi
from protocols.device_abi import QReg, QueueState, Reg


def status(lib_path: Path) -> str:
    lib = ctypes.CDLL(str(lib_path))
    lib.ava_open.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.ava_last_error.restype = ctypes.c_char_p
    lib.ava_read_reg.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.ava_read_reg.restype = ctypes.c_uint32
    lib.ava_transport_name.argtypes = [ctypes.c_void_p]
    lib.ava_transport_name.restype = ctypes.c_char_p
    lib.ava_close.argtypes = [ctypes.c_void_p]
    dev = ctypes.c_void_p()
    if lib.ava_open(ctypes.byref(dev)) != 0:
        raise RuntimeError(lib.ava_last_error().decode())
    try:
        reg = lambda off: lib.ava_read_reg(dev, off)   # noqa: E731
        version = reg(Reg.ABI_VERSION)
        features = reg(Reg.DEVICE_FEATURES_HI) << 32 | reg(Reg.DEVICE_FEATURES_LO)
        acked = reg(Reg.DRIVER_FEATURES_HI) << 32 | reg(Reg.DRIVER_FEATURES_LO)
        lines = [
            f"device:     ava-vdev {abi.VENDOR_ID:04x}:{abi.DEVICE_ID:04x} via "
            f"{lib.ava_transport_name(dev).decode()}",
            f"magic:      {reg(Reg.MAGIC):#010x}",
            f"ABI:        {version >> 16}.{version & 0xFFFF}",
            f"features:   offered {abi.Feature(features)!s} ({features:#x}), driver {acked:#x}",
            f"status:     {abi.DeviceStatus(reg(Reg.STATUS))!s}",
        ]
        n = reg(Reg.NUM_QUEUES)
        used = []
        for q in range(min(n, abi.NUM_QUEUES)):
            state = reg(abi.queue_reg(q, QReg.CTRL))
            if state & QueueState.CLAIMED:
                used.append(f"  queue {q}: {QueueState(state)!s}, {reg(abi.queue_reg(q, QReg.SIZE))} "
                            f"slots, owner pid {reg(abi.queue_reg(q, QReg.OWNER))}")
        lines.append(f"queues:     {len(used)} of {n} claimed")
        return "\n".join(lines + used)
    finally:
        lib.ava_close(dev)
