"""No value a guest can read holds a host pointer.

Every info parameter that <CL/cl.h> declares, of every info query the device
forwards, is asked of one object of each kind (a context made with a platform
property, a queue with properties, buffers, a sub-buffer, images, a pipe, a sampler
with properties, a built program, its kernel, events).  The parameters come from the
header, grouped as it groups them (``/* cl_context_info */`` ...), so one that a
new OpenCL version adds is asked too, without anyone listing it here.  Each answer
is searched for the host address of any object the host knows, and for any word
that looks like a host address at all.
"""

from __future__ import annotations

import re
import struct

from test_opencl_backend import Guest, backend, ids  # noqa: F401 (fixture)

from protocols import opencl_api as api

CL_H = "/usr/include/CL/cl.h"
#: The header's group -> the query that answers it.
GROUPS = {
    "cl_platform_info": "clGetPlatformInfo", "cl_device_info": "clGetDeviceInfo",
    "cl_context_info": "clGetContextInfo", "cl_command_queue_info": "clGetCommandQueueInfo",
    "cl_mem_info": "clGetMemObjectInfo", "cl_image_info": "clGetImageInfo",
    "cl_pipe_info": "clGetPipeInfo", "cl_sampler_info": "clGetSamplerInfo",
    "cl_program_info": "clGetProgramInfo", "cl_program_build_info": "clGetProgramBuildInfo",
    "cl_kernel_info": "clGetKernelInfo", "cl_kernel_arg_info": "clGetKernelArgInfo",
    "cl_kernel_work_group_info": "clGetKernelWorkGroupInfo",
    "cl_event_info": "clGetEventInfo", "cl_profiling_info": "clGetEventProfilingInfo",
}
#: Where a host address lives on x86-64 Linux: the heap and executables
#: (0x55..-0x56..) and mappings (0x7f..); nothing an info value means lies there.
ADDRESS_RANGE = (0x5000_0000_0000, 0x8000_0000_0000)


def header_params() -> dict[str, dict[str, int]]:
    """{group: {CL_NAME: value}} for every info group of cl.h."""
    groups: dict[str, dict[str, int]] = {}
    current = None
    with open(CL_H) as header:
        lines = header.read().splitlines()
    for line in lines:
        m = re.match(r"/\* (cl_\w+) \*/", line.strip())
        if m:
            current = m.group(1) if m.group(1) in GROUPS else None
            continue
        m = re.match(r"#define\s+(CL_\w+)\s+(0x[0-9A-Fa-f]+)\b", line)
        if m and current:
            groups.setdefault(current, {})[m.group(1)] = int(m.group(2), 16)
        elif not line.strip() or line.startswith(("#endif", "/*")):
            pass
        elif not line.startswith(("#define", "#if", "#ifdef", "#else")):
            current = None
    return groups


def test_the_header_groups_cover_every_forwarded_info_query():
    groups = header_params()
    assert set(groups) == set(GROUPS), set(GROUPS) ^ set(groups)
    assert groups["cl_context_info"]["CL_CONTEXT_PROPERTIES"] == api.CL_CONTEXT_PROPERTIES
    assert sum(map(len, groups.values())) > 200
    for fn in GROUPS.values():
        assert fn in api.BY_NAME, f"{fn} is not forwarded"


def _objects(g: Guest) -> dict[str, list[tuple[int, ...]]]:
    """One object of each kind, made the way programs make them: the selector
    arguments of each info query that reaches it."""
    platform, dev = g.platform(), g.device()
    ctx = next(ids)
    assert g.call("clCreateContext", ctx, properties=[(api.CL_CONTEXT_PLATFORM, platform)],
                  num_devices=1, devices=[dev])[0] == 0
    queue = next(ids)
    CL_QUEUE_PROFILING_ENABLE = 2
    assert g.call("clCreateCommandQueueWithProperties", queue, context=ctx, device=dev,
                  properties=[(api.CL_QUEUE_PROPERTIES, CL_QUEUE_PROFILING_ENABLE)])[0] == 0
    buf, sub, pipe, smp = next(ids), next(ids), next(ids), next(ids)
    # PoCL has no pipes (CL_INVALID_OPERATION); where an implementation has them, the
    # pipe is asked too.
    has_pipe = g.call("clCreatePipe", pipe, context=ctx, flags=0, pipe_packet_size=4,
                      pipe_max_packets=16, properties=None)[0] == 0
    assert g.call("clCreateBufferWithProperties", buf, context=ctx, properties=[], flags=1,
                  size=4096)[0] == 0
    assert g.call("clCreateSubBuffer", sub, buffer=buf, flags=0, buffer_create_type=0x1220,
                  buffer_create_info=struct.pack("<QQ", 0, 128))[0] == 0
    CL_SAMPLER_NORMALIZED_COORDS = 0x1152
    assert g.call("clCreateSamplerWithProperties", smp, context=ctx,
                  sampler_properties=[(CL_SAMPLER_NORMALIZED_COORDS, 1)])[0] == 0
    rgba8 = {"image_channel_order": 0x10B5, "image_channel_data_type": 0x10D2}
    images = []
    for desc in ({"image_type": api.CL_MEM_OBJECT_IMAGE2D, "image_width": 8, "image_height": 8},
                 {"image_type": api.CL_MEM_OBJECT_IMAGE1D_BUFFER, "image_width": 64,
                  "buffer": buf}):
        img = next(ids)
        assert g.call("clCreateImage", img, context=ctx, flags=1, image_format=rgba8,
                      image_desc=desc)[0] == 0
        images.append(img)
    prog, kern = next(ids), next(ids)
    src = b"__kernel void k(__global int *a, sampler_t s) { a[get_global_id(0)] = 1; }"
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev])[0] == 0
    assert g.call("clCreateKernel", kern, program=prog, kernel_name=b"k\0")[0] == 0
    user, marker = next(ids), next(ids)
    assert g.call("clCreateUserEvent", user, context=ctx)[0] == 0
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue,
                  num_events_in_wait_list=0, event=marker)[0] == 0
    assert g.call("clFinish", command_queue=queue)[0] == 0
    pipes = [(pipe,)] if has_pipe else []
    mems = [(buf,), (sub,)] + pipes + [(i,) for i in images]
    return {
        "clGetPlatformInfo": [(platform,)], "clGetDeviceInfo": [(dev,)],
        "clGetContextInfo": [(ctx,)], "clGetCommandQueueInfo": [(queue,)],
        "clGetMemObjectInfo": mems, "clGetImageInfo": [(i,) for i in images],
        "clGetPipeInfo": pipes, "clGetSamplerInfo": [(smp,)],
        "clGetProgramInfo": [(prog,)], "clGetProgramBuildInfo": [(prog, dev)],
        "clGetKernelInfo": [(kern,)], "clGetKernelArgInfo": [(kern, 0), (kern, 1)],
        "clGetKernelWorkGroupInfo": [(kern, dev)],
        "clGetEventInfo": [(user,), (marker,)], "clGetEventProfilingInfo": [(marker,)],
    }


def _ask(g: Guest, fn: api.Function, selectors: tuple[int, ...], param: int):
    extra = {a.name: v for a, v in zip(fn.args[1:], selectors[1:], strict=False)}
    status, out = g.call(fn.name, object=selectors[0], **extra, param_name=param,
                         param_value_size=0, param_value=None, param_value_size_ret=True)
    if status != 0:
        return None
    size = out["param_value_size_ret"]
    status, out = g.call(fn.name, object=selectors[0], **extra, param_name=param,
                         param_value_size=size, param_value=size)
    return out["param_value"] if status == 0 else None


def _is_text(word: int) -> bool:
    """Eight bytes of text (a name inside a cl_name_version, a string): printable
    characters and NULs only, which no user-space address of this range is."""
    return all(c == 0 or 32 <= c < 127 for c in word.to_bytes(8, "little"))


def test_no_answer_holds_a_host_pointer(backend):  # noqa: F811
    g = Guest(backend)
    objects = _objects(g)
    known = backend.handles.addresses()
    assert len(known) > 10
    asked = answered = 0
    leaks = []
    for group, params in header_params().items():
        fn = api.BY_NAME[GROUPS[group]]
        for selectors in objects[fn.name]:
            for name, param in params.items():
                asked += 1
                value = _ask(g, fn, selectors, param)
                if value is None:
                    continue
                answered += 1
                words = struct.unpack(f"<{len(value) // 8}Q", value[:len(value) // 8 * 8])
                for w in words:
                    if w in known or (ADDRESS_RANGE[0] <= w < ADDRESS_RANGE[1]
                                      and not _is_text(w)):
                        leaks.append(f"{fn.name}({name}) on {selectors}: {w:#x}")
    assert answered > 150, (asked, answered)
    assert not leaks, leaks


def test_property_lists_come_back_with_guest_ids(backend):  # noqa: F811
    g = Guest(backend)
    platform = g.platform()
    objects = _objects(g)
    (ctx,), = objects["clGetContextInfo"]
    value = _ask(g, api.BY_NAME["clGetContextInfo"], (ctx,), api.CL_CONTEXT_PROPERTIES)
    assert struct.unpack("<3Q", value) == (api.CL_CONTEXT_PLATFORM, platform, 0)
    # A buffer cut short keeps the status the implementation gives it, and no pointer.
    status, _ = g.call("clGetContextInfo", object=ctx, param_name=api.CL_CONTEXT_PROPERTIES,
                       param_value_size=16, param_value=16)
    assert status == -30
