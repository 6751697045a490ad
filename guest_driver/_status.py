"""``status``: the device as the runtime sees it (through the built library)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from protocols import device_abi as abi
from protocols import opencl_caps as caps
from protocols.device_abi import QReg, QueueState, Reg

from ._daemon import OWNER_BASE  # ava-vdevd's owner tags lie above any pid

CL_DEVICE_TYPE_ALL = 0xFFFFFFFF


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
                owner = reg(abi.queue_reg(q, QReg.OWNER))
                who = f"owner tag {owner:#x} (ava-vdevd)" if owner >= OWNER_BASE else \
                    f"owner pid {owner}"
                used.append(f"  queue {q}: {QueueState(state)!s}, {reg(abi.queue_reg(q, QReg.SIZE))} "
                            f"slots, {who}")
        lib.ava_zero_copy.argtypes = [ctypes.c_void_p]
        lib.ava_zero_copy_min.argtypes = [ctypes.c_void_p]
        lib.ava_zero_copy_min.restype = ctypes.c_size_t
        lines.append("zero-copy:  " + (
            f"yes: blocking transfers of {lib.ava_zero_copy_min(dev) >> 10} KiB or more lend "
            "the application's pages"
            if lib.ava_zero_copy(dev) else
            "no: transfers are copied through DMA memory (zero-copy is for processes in a "
            "VM: root's, and other users' where ava-vdevd has the ava_vdev_pin module)"))
        lines.append(f"queues:     {len(used)} of {n} claimed"
                     + (" (through ava-vdevd: this process's own)"
                        if lib.ava_transport_name(dev) == b"daemon" else ""))
        lines += used
    finally:
        lib.ava_close(dev)
    return "\n".join(lines + capabilities(lib))


def _info_string(query, obj, param: int) -> str:
    size = ctypes.c_size_t()
    if query(obj, param, 0, None, ctypes.byref(size)) != 0:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    if query(obj, param, size.value, buf, None) != 0:
        return ""
    return buf.value.decode("ascii", "replace")


def capabilities(lib) -> list[str]:
    """What the device reports it can do, and why each capability is on or off
    (protocols/opencl_caps.py): asked through the built library, as a program would."""
    platform, device = ctypes.c_void_p(), ctypes.c_void_p()
    if (lib.ava_clGetPlatformIDs(1, ctypes.byref(platform), None) != 0 or
            lib.ava_clGetDeviceIDs(platform, ctypes.c_uint64(CL_DEVICE_TYPE_ALL), 1,
                                   ctypes.byref(device), None) != 0):
        return ["capabilities: unknown (the device answers no platform or device)"]
    query = ctypes.c_uint32
    lib.ava_clGetPlatformInfo.argtypes = lib.ava_clGetDeviceInfo.argtypes = [
        ctypes.c_void_p, query, ctypes.c_size_t, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t)]
    lines = ["capabilities the device turns off (whatever the host's OpenCL reports):"]
    for fixed in caps.FIXED_DEVICE_INFO.values():
        lines.append(f"  {fixed.name} = {fixed.value}: {fixed.why}")
    for feature, why in caps.HIDDEN_C_FEATURES.items():
        lines.append(f"  OpenCL C feature {feature}: off, {why}")
    reported = {
        "platform": _info_string(lib.ava_clGetPlatformInfo, platform, caps.CL_PLATFORM_EXTENSIONS),
        "device": _info_string(lib.ava_clGetDeviceInfo, device, caps.CL_DEVICE_EXTENSIONS),
    }
    for where, names in reported.items():
        lines.append(f"{where} extensions reported:")
        for name in names.split():
            lines.append(f"  {name}: {caps.extension_reason(name)[1]}")
    lines.append(f"any other extension: off, {caps.NOT_FORWARDED}")
    return lines
