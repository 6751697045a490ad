"""What the device tells a guest it can do: only what works through it.

The host answers device and platform queries with the implementation's values,
except the ones below: a capability the device does not forward reads as absent,
so a program that checks before it uses a feature takes its fallback path instead
of failing later (a device that reported SVM and returned NULL from clSVMAlloc
broke exactly such programs).  Both ends read this table: the host filters with it,
``python3 -m guest_driver status`` prints it with each reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

CL_PLATFORM_EXTENSIONS = 0x0904
CL_PLATFORM_EXTENSIONS_WITH_VERSION = 0x0907
CL_DEVICE_EXTENSIONS = 0x1030
CL_DEVICE_EXTENSIONS_WITH_VERSION = 0x1060
CL_DEVICE_OPENCL_C_FEATURES = 0x106F

NO_DEVICE_QUEUES = ("device-side enqueue needs an on-device queue, and the device refuses "
                    "CL_QUEUE_ON_DEVICE (PoCL ends its process on one)")
NO_SVM = "shared virtual memory is not forwarded: the guest cannot share the host's address space"


@dataclass(frozen=True)
class FixedValue:
    """A device query answered with ``value`` (at the implementation's width)."""
    param: int
    name: str
    value: int
    why: str


#: Device queries the device answers with a fixed value, whatever the implementation says.
FIXED_DEVICE_INFO = {f.param: f for f in (
    FixedValue(0x1053, "CL_DEVICE_SVM_CAPABILITIES", 0, NO_SVM),
    FixedValue(0x1070, "CL_DEVICE_DEVICE_ENQUEUE_CAPABILITIES", 0, NO_DEVICE_QUEUES),
    FixedValue(0x104E, "CL_DEVICE_QUEUE_ON_DEVICE_PROPERTIES", 0, NO_DEVICE_QUEUES),
    FixedValue(0x104F, "CL_DEVICE_QUEUE_ON_DEVICE_PREFERRED_SIZE", 0, NO_DEVICE_QUEUES),
    FixedValue(0x1050, "CL_DEVICE_QUEUE_ON_DEVICE_MAX_SIZE", 0, NO_DEVICE_QUEUES),
    FixedValue(0x1051, "CL_DEVICE_MAX_ON_DEVICE_QUEUES", 0, NO_DEVICE_QUEUES),
    FixedValue(0x1052, "CL_DEVICE_MAX_ON_DEVICE_EVENTS", 0, NO_DEVICE_QUEUES),
)}

#: OpenCL C features (CL_DEVICE_OPENCL_C_FEATURES) the device hides, with the reason.
HIDDEN_C_FEATURES = {"__opencl_c_device_enqueue": NO_DEVICE_QUEUES}

LANGUAGE = "kernel language only: the compiler on the host does it"
QUERY = "adds only queries or property values, which the device forwards"

#: Extensions the device reports when the implementation does.  Each adds no entry
#: point (tests/test_opencl_caps.py checks that against the system's CL headers), so
#: everything it brings crosses the device like core OpenCL.
FORWARDED_EXTENSIONS = {
    "cl_khr_icd": "the guest's ICD implements the loader contract itself",
    "cl_khr_spir": "SPIR binaries load through clCreateProgramWithBinary, which is forwarded",
    **{name: LANGUAGE for name in (
        "cl_khr_byte_addressable_store", "cl_khr_global_int32_base_atomics",
        "cl_khr_global_int32_extended_atomics", "cl_khr_local_int32_base_atomics",
        "cl_khr_local_int32_extended_atomics", "cl_khr_int64_base_atomics",
        "cl_khr_int64_extended_atomics", "cl_khr_3d_image_writes", "cl_khr_fp64",
        "cl_khr_fp16", "cl_khr_depth_images", "cl_khr_image2d_from_buffer",
        "cl_khr_mipmap_image", "cl_khr_mipmap_image_writes", "cl_khr_srgb_image_writes",
        "cl_khr_select_fprounding_mode", "cl_khr_subgroup_extended_types",
        "cl_khr_subgroup_non_uniform_vote", "cl_khr_subgroup_ballot",
        "cl_khr_subgroup_non_uniform_arithmetic", "cl_khr_subgroup_shuffle",
        "cl_khr_subgroup_shuffle_relative", "cl_khr_subgroup_clustered_reduce",
        "cl_khr_subgroup_rotate", "cl_khr_expect_assume", "cl_khr_extended_bit_ops",
        "cl_khr_integer_dot_product", "cl_khr_kernel_clock",
        "cl_khr_work_group_uniform_arithmetic", "cl_khr_spirv_no_integer_wrap_decoration",
        "cl_khr_spirv_linkonce_odr", "cl_khr_extended_async_copies", "cl_ext_float_atomics",
        "cl_ext_cxx_for_opencl", "cl_intel_subgroups", "cl_intel_subgroups_short",
        "cl_intel_subgroups_char", "cl_intel_subgroups_long", "cl_intel_required_subgroup_size",
        "cl_nv_pragma_unroll", "cl_nv_compiler_options", "cl_amd_media_ops",
        "cl_amd_media_ops2", "cl_amd_printf", "cl_amd_fp64")},
    **{name: QUERY for name in (
        "cl_khr_device_uuid", "cl_khr_pci_bus_info", "cl_khr_extended_versioning",
        "cl_khr_priority_hints", "cl_khr_throttle_hints", "cl_intel_device_attribute_query",
        "cl_nv_device_attribute_query", "cl_amd_device_attribute_query")},
}

NOT_FORWARDED = ("its entry points (or what it shares with the host: GL, D3D, EGL, external "
                 "memory, SVM) are not forwarded by the device, or it is unknown to the device")


def extension_reason(name: str) -> tuple[bool, str]:
    """Whether the device reports extension ``name``, and why."""
    why = FORWARDED_EXTENSIONS.get(name)
    return (True, why) if why else (False, NOT_FORWARDED)


def filter_names(value: bytes) -> bytes:
    """A space-separated extension list (NUL-terminated), less what is not forwarded."""
    names = value.split(b"\0", 1)[0].decode("ascii", "replace").split()
    kept = [n for n in names if extension_reason(n)[0]]
    return " ".join(kept).encode() + b"\0"


NAME_VERSION = struct.Struct("<I64s")     # cl_name_version: cl_version, char name[64]


def filter_name_versions(value: bytes, hidden: dict[str, str] | None = None) -> bytes:
    """A cl_name_version array, less the extensions (or, with ``hidden``, the named
    OpenCL C features) that are not forwarded."""
    kept = []
    for i in range(len(value) // NAME_VERSION.size):
        entry = value[i * NAME_VERSION.size:(i + 1) * NAME_VERSION.size]
        name = NAME_VERSION.unpack(entry)[1].split(b"\0", 1)[0].decode("ascii", "replace")
        keep = name not in hidden if hidden is not None else extension_reason(name)[0]
        if keep:
            kept.append(entry)
    return b"".join(kept)


def filter_c_features(value: bytes) -> bytes:
    return filter_name_versions(value, HIDDEN_C_FEATURES)


def fixed(value: int) -> Callable[[bytes], bytes]:
    """The answer ``value``, at the width the implementation answers with."""
    return lambda raw: value.to_bytes(len(raw), "little")


#: Queries whose answer the host filters: param -> filter of the implementation's bytes.
FILTERED_PLATFORM_INFO: dict[int, Callable[[bytes], bytes]] = {
    CL_PLATFORM_EXTENSIONS: filter_names,
    CL_PLATFORM_EXTENSIONS_WITH_VERSION: filter_name_versions,
}
FILTERED_DEVICE_INFO: dict[int, Callable[[bytes], bytes]] = {
    CL_DEVICE_EXTENSIONS: filter_names,
    CL_DEVICE_EXTENSIONS_WITH_VERSION: filter_name_versions,
    CL_DEVICE_OPENCL_C_FEATURES: filter_c_features,
    **{p: fixed(f.value) for p, f in FIXED_DEVICE_INFO.items()},
}
FILTERED = {"clGetPlatformInfo": FILTERED_PLATFORM_INFO, "clGetDeviceInfo": FILTERED_DEVICE_INFO}
