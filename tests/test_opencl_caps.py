"""What the device reports it can do (protocols/opencl_caps.py): only what works
through it, checked against the system's CL headers and the host's own answers."""

import re
import struct

import pytest
from test_opencl_backend import Guest, backend  # noqa: F401 (fixture)

from protocols import opencl_caps as caps

HEADERS = ("cl_ext.h", "cl_gl.h", "cl_egl.h", "cl_ext_intel.h", "cl_layer.h",
           "cl_va_api_media_sharing_intel.h", "cl_dx9_media_sharing.h", "cl_d3d10.h",
           "cl_d3d11.h")


def entry_points() -> dict[str, set[str]]:
    """{extension: the functions the headers declare for it}."""
    found: dict[str, set[str]] = {}
    for name in HEADERS:
        current = None
        with open(f"/usr/include/CL/{name}") as header:
            for line in header:
                m = re.match(r"#define\s+(cl_[a-z0-9_]+)\s+1\b", line)
                if m:
                    current = m.group(1)
                    found.setdefault(current, set())
                elif current:
                    found[current] |= set(re.findall(r"\b(cl[A-Z]\w+)\s*\(", line))
    return found


def test_no_forwarded_extension_has_entry_points_the_device_lacks():
    declared = entry_points()
    assert "clCreateCommandBufferKHR" in declared["cl_khr_command_buffer"]
    for name, why in caps.FORWARDED_EXTENSIONS.items():
        if name == "cl_khr_icd":       # answered by the guest's ICD itself
            continue
        assert not declared.get(name), f"{name} ({why}) declares {declared[name]}"
    assert caps.extension_reason("cl_khr_fp64") == (True, caps.LANGUAGE)
    assert caps.extension_reason("cl_khr_command_buffer")[0] is False
    assert caps.extension_reason("cl_vendor_unknown")[0] is False


def test_filters():
    assert caps.filter_names(b"cl_khr_fp64  cl_khr_command_buffer cl_khr_icd\0") == \
        b"cl_khr_fp64 cl_khr_icd\0"
    assert caps.filter_names(b"\0") == b"\0"
    entries = [struct.pack("<I64s", 1 << 22, n) for n in (b"cl_khr_fp64", b"cl_khr_semaphore")]
    assert caps.filter_name_versions(b"".join(entries)) == entries[0]
    features = [struct.pack("<I64s", 3 << 22, n) for n in (b"__opencl_c_images",
                                                           b"__opencl_c_device_enqueue")]
    assert caps.FILTERED_DEVICE_INFO[caps.CL_DEVICE_OPENCL_C_FEATURES](b"".join(features)) == \
        features[0]
    assert caps.FILTERED_DEVICE_INFO[0x1053](b"\x0b" + bytes(7)) == bytes(8)


def _info(g, fn, obj, param, size):
    return g.call(fn, object=obj, param_name=param, param_value_size=size,
                  param_value=size if size else None, param_value_size_ret=True)


@pytest.mark.parametrize("param", sorted(caps.FIXED_DEVICE_INFO))
def test_fixed_capabilities_read_as_absent(backend, param):  # noqa: F811
    g = Guest(backend)
    dev = g.device()
    status, out = _info(g, "clGetDeviceInfo", dev, param, 0)
    assert status == 0
    size = out["param_value_size_ret"]
    assert size in (4, 8)
    status, out = _info(g, "clGetDeviceInfo", dev, param, size)
    assert status == 0 and out["param_value"] == bytes(size)
    assert _info(g, "clGetDeviceInfo", dev, param, size - 1)[0] == -30


@pytest.mark.parametrize("fn, param", [("clGetDeviceInfo", caps.CL_DEVICE_EXTENSIONS),
                                       ("clGetPlatformInfo", caps.CL_PLATFORM_EXTENSIONS)])
def test_extension_lists_hold_only_what_is_forwarded(backend, fn, param):  # noqa: F811
    g = Guest(backend)
    obj = g.device() if fn == "clGetDeviceInfo" else g.platform()
    status, out = _info(g, fn, obj, param, 0)
    size = out["param_value_size_ret"]
    status, out = _info(g, fn, obj, param, size)
    assert status == 0 and len(out["param_value"]) == size == out["param_value_size_ret"]
    names = out["param_value"].rstrip(b"\0").decode().split()
    assert names and all(caps.extension_reason(n)[0] for n in names)
    # Sized by the filtered list: one byte short is refused, as natively.
    assert _info(g, fn, obj, param, size - 1)[0] == -30
