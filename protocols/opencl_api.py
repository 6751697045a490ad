"""The annotated OpenCL API: one entry per function, the single source for both ends.

Each entry declares, per argument, what kind of thing crosses the device:
a scalar, a handle of a given object type, an array of handles, an input or
output buffer with its size expression, a string list, a property list, an
output scalar (``size_t *param_value_size_ret``) or the ``errcode_ret`` of a
creating function.  Per function it declares whether it creates or releases
objects and whether it may block (then the host runs it off the poller).

The opcode of a function is ``OPCODE_BASE`` plus its index in the Khronos ICD
dispatch table (``cl_icd.h``), so numbering is stable and standard.

Wire format (little-endian, every field 8-byte aligned), inputs in argument
order: Scalar u64 | Handle u64 id (0 = NULL) | Handles/OutHandles u64 count
(NULL_LEN = absent) then ids | InBuffer, CString u64 length (NULL_LEN = NULL)
then the bytes padded to 8 | OutBuffer, OutScalar u64 capacity (NULL_LEN = NULL
pointer) | Strings u64 count, then per string u64 length + bytes padded |
Properties u64 pair count (NULL_LEN = NULL) then key/value pairs | InStruct u64
field count (NULL_LEN = NULL) then each field as u64 (handles as ids) | FixedBytes,
ImageHostPtr as InBuffer | HostData, HostRect, HostImage by reference.  A creating
function's first input is the guest-assigned id of the new object.  The reply
is i64 status (the return value, or ``*errcode_ret``), then for each output
argument in order: OutBuffer u64 length written + bytes padded, OutScalar u64
value, OutHandles u64 count + ids.
"""

from __future__ import annotations

# One namespace for both ends: every kind, wire constant and size rule is api.X.
from collections.abc import Collection
from typing import Any

from .opencl_images import *  # noqa: F403
from .opencl_kinds import *  # noqa: F403


def _fn(name: str, index: int, *args: tuple[str, object], **kw: Any) -> Function:
    return Function(name, index, tuple(Arg(n, k) for n, k in args), **kw)


# Param names whose results hold handles (cl.h values).
CL_DEVICE_PLATFORM = 0x1031
CL_DEVICE_PARENT_DEVICE = 0x1042
CL_CONTEXT_DEVICES = 0x1081
CL_CONTEXT_PLATFORM = 0x1084
CL_QUEUE_CONTEXT = 0x1090
CL_QUEUE_DEVICE = 0x1091
CL_QUEUE_PROPERTIES = 0x1093
CL_QUEUE_DEVICE_DEFAULT = 0x1095
CL_QUEUE_ON_DEVICE = 1 << 2
CL_QUEUE_ON_DEVICE_DEFAULT = 1 << 3
CL_INVALID_QUEUE_PROPERTIES = -35
CL_MEM_CONTEXT = 0x1106
CL_MEM_ASSOCIATED_MEMOBJECT = 0x1107
CL_PROGRAM_CONTEXT = 0x1161
CL_PROGRAM_DEVICES = 0x1163
CL_KERNEL_CONTEXT = 0x1193
CL_KERNEL_PROGRAM = 0x1194
CL_EVENT_COMMAND_QUEUE = 0x11D0
CL_EVENT_CONTEXT = 0x11D4
CL_SAMPLER_CONTEXT = 0x1151
CL_IMAGE_BUFFER = 0x1118
CL_MEM_HOST_PTR = 0x1103
CL_INVALID_BINARY = -42
CL_PROGRAM_BINARY_SIZES = 0x1165
CL_PROGRAM_BINARIES = 0x1166
#: A query the guest makes instead of CL_PROGRAM_BINARIES (whose value is an array
#: of guest pointers): clGetProgramInfo(program, AVA_PROGRAM_BINARY + i, ...) gives
#: the binary of the program's i-th device.
AVA_PROGRAM_BINARY = 0x41560000
AVA_PROGRAM_BINARY_MAX = 0x100


# Param names whose results are the property lists an object was created with.
CL_CONTEXT_PROPERTIES = 0x1082
CL_QUEUE_PROPERTIES_ARRAY = 0x1098
CL_MEM_PROPERTIES = 0x110A
CL_PIPE_PROPERTIES = 0x1122
CL_SAMPLER_PROPERTIES = 0x1158
CL_DEVICE_PARTITION_TYPE = 0x1046

# Each property list kind is declared once: the creating function encodes it, and the
# info query that returns it decodes it with the same handle keys (a platform inside
# a context's properties is an id on the wire, the guest's own object to the caller).
CONTEXT_PROPERTIES = Properties("cl_context_properties", {CL_CONTEXT_PLATFORM: "cl_platform_id"})
# A device-side queue: PoCL prints "Device side queue is unimplemented" and ends its
# process; the spec's answer for an unsupported property is this one.
QUEUE_PROPERTIES = Properties("cl_queue_properties", refused=(
    (CL_QUEUE_PROPERTIES, CL_QUEUE_ON_DEVICE | CL_QUEUE_ON_DEVICE_DEFAULT,
     CL_INVALID_QUEUE_PROPERTIES),))
MEM_PROPERTIES = Properties("cl_mem_properties")
PIPE_PROPERTIES = Properties("cl_pipe_properties")
SAMPLER_PROPERTIES = Properties("cl_sampler_properties")
PARTITION_PROPERTIES = Properties("cl_device_partition_property")


# What an object's info query answers the same way for as long as the object lives
# (OpenCL 3.0, the tables of each clGet*Info).  Left out, and asked of the host every
# time: reference counts, map counts, event status, everything about a program that
# a build changes, CL_KERNEL_LOCAL_MEM_SIZE (it counts local memory arguments),
# CL_DEVICE_AVAILABLE, CL_QUEUE_DEVICE_DEFAULT, and object-valued results (the guest
# frees an object when its last visible reference goes, before a holder might), but
# for CL_DEVICE_PLATFORM (platforms live as long as the process).  Extension params
# are not listed: their meaning is not known here.
IMMUTABLE = {
    "clGetPlatformInfo": frozenset(range(0x0900, 0x0908)) | {0x0920},
    "clGetDeviceInfo": frozenset(range(0x1000, 0x1073)) - {0x1027, 0x1042, 0x1047},
    "clGetContextInfo": frozenset({0x1083}),
    "clGetCommandQueueInfo": frozenset({0x1093, 0x1094, 0x1098}),
    "clGetMemObjectInfo": frozenset({0x1100, 0x1101, 0x1102, 0x1108, 0x1109, 0x110A}),
    "clGetImageInfo": frozenset(range(0x1110, 0x111B)) - {0x1118},
    "clGetPipeInfo": frozenset({0x1120, 0x1121, 0x1122}),
    "clGetSamplerInfo": frozenset({0x1152, 0x1153, 0x1154, 0x1155, 0x1156, 0x1157, 0x1158}),
    "clGetProgramInfo": frozenset({0x1162, 0x1164, 0x1169}),
    "clGetKernelInfo": frozenset({0x1190, 0x1191, 0x1195}),
    "clGetKernelArgInfo": frozenset({0x1196, 0x1197, 0x1198, 0x1199, 0x119A}),
    "clGetKernelWorkGroupInfo": frozenset({0x11B0, 0x11B1, 0x11B3, 0x11B4, 0x11B5}),
    "clGetEventInfo": frozenset({0x11D1}),
}


def _info(name: str, index: int, obj: str, info_type: str,
          handle_params: dict[int, str] | None = None, blocking: bool = False,
          extra: tuple[tuple[str, object], ...] = (), hidden: Collection[int] = frozenset(),
          guest_wrap: bool = False,
          property_params: dict[int, Properties] | None = None) -> Function:
    """An info query: object, [extra selector args], param_name, size, value, size_ret."""
    handle_params = handle_params or {}
    return _fn(name, index,
               ("object", Handle(obj)),
               *extra,
               ("param_name", Scalar(info_type)),
               ("param_value_size", Scalar("size_t")),
               ("param_value", OutBuffer("param_value_size", "param_name", handle_params,
                                         property_params=property_params or {},
                                         hidden_params=frozenset(hidden),
                                         immutable=IMMUTABLE.get(name, frozenset()))),
               ("param_value_size_ret", OutScalar("size_t")),
               blocking=blocking, guest_wrap=guest_wrap)


_WAIT = (("num_events_in_wait_list", Scalar("cl_uint")),
         ("event_wait_list", Handles("cl_event", "num_events_in_wait_list")),
         ("event", EventOut()))
_QUEUE = ("command_queue", Handle("cl_command_queue"))
# What an image is made of, after its context (and properties).
_IMAGE = (("flags", MemFlags()),
          ("image_format", IMAGE_FORMAT),
          ("image_desc", IMAGE_DESC),
          ("host_ptr", ImageHostPtr("flags", "image_format", "image_desc")),
          ("errcode_ret", ErrcodeRet()))
_RECT_BUFFER = (("buffer_origin", FixedArray("size_t")),
                ("host_origin", FixedArray("size_t")),
                ("region", FixedArray("size_t")),
                ("buffer_row_pitch", Scalar("size_t")),
                ("buffer_slice_pitch", Scalar("size_t")),
                ("host_row_pitch", Scalar("size_t")),
                ("host_slice_pitch", Scalar("size_t")))

FUNCTIONS: tuple[Function, ...] = (
    _fn("clGetPlatformIDs", 0,
        ("num_entries", Scalar("cl_uint")),
        ("platforms", OutHandles("cl_platform_id", "num_entries")),
        ("num_platforms", OutScalar("cl_uint"))),
    _info("clGetPlatformInfo", 1, "cl_platform_id", "cl_platform_info"),
    _fn("clGetDeviceIDs", 2,
        ("platform", Handle("cl_platform_id", nullable=True)),
        ("device_type", Scalar("cl_device_type")),
        ("num_entries", Scalar("cl_uint")),
        ("devices", OutHandles("cl_device_id", "num_entries")),
        ("num_devices", OutScalar("cl_uint"))),
    _info("clGetDeviceInfo", 3, "cl_device_id", "cl_device_info",
          {CL_DEVICE_PLATFORM: "cl_platform_id", CL_DEVICE_PARENT_DEVICE: "cl_device_id"},
          property_params={CL_DEVICE_PARTITION_TYPE: PARTITION_PROPERTIES}),
    _fn("clCreateContext", 4,
        ("properties", CONTEXT_PROPERTIES),
        ("num_devices", Scalar("cl_uint")),
        ("devices", Handles("cl_device_id", "num_devices")),
        ("pfn_notify", Callback("ava_context_notify", "user_data")),
        ("user_data", UserData()),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_context", creates="cl_context"),
    _fn("clCreateContextFromType", 5,
        ("properties", CONTEXT_PROPERTIES),
        ("device_type", Scalar("cl_device_type")),
        ("pfn_notify", Callback("ava_context_notify", "user_data")),
        ("user_data", UserData()),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_context", creates="cl_context", blocking=True),
    _fn("clRetainContext", 6, ("context", Handle("cl_context")), retains="cl_context"),
    _fn("clReleaseContext", 7, ("context", Handle("cl_context")), releases="cl_context", async_ok=True),
    _info("clGetContextInfo", 8, "cl_context", "cl_context_info",
          {CL_CONTEXT_DEVICES: "cl_device_id"},
          property_params={CL_CONTEXT_PROPERTIES: CONTEXT_PROPERTIES}),
    _fn("clCreateCommandQueue", 9,
        ("context", Handle("cl_context")),
        ("device", Handle("cl_device_id")),
        ("properties", Scalar("cl_command_queue_properties")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_command_queue", creates="cl_command_queue"),
    _fn("clRetainCommandQueue", 10, ("command_queue", Handle("cl_command_queue")),
        retains="cl_command_queue"),
    _fn("clReleaseCommandQueue", 11, ("command_queue", Handle("cl_command_queue")),
        releases="cl_command_queue", blocking=True, async_ok=True),
    _info("clGetCommandQueueInfo", 12, "cl_command_queue", "cl_command_queue_info",
          {CL_QUEUE_CONTEXT: "cl_context", CL_QUEUE_DEVICE: "cl_device_id",
           CL_QUEUE_DEVICE_DEFAULT: "cl_command_queue"},
          property_params={CL_QUEUE_PROPERTIES_ARRAY: QUEUE_PROPERTIES}),
    _fn("clCreateBuffer", 14,
        ("context", Handle("cl_context")),
        ("flags", MemFlags()),
        ("size", Scalar("size_t")),
        ("host_ptr", InBuffer("size", const=False)),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_mem", creates="cl_mem", guest_wrap=True),
    _fn("clRetainMemObject", 17, ("memobj", Handle("cl_mem")), retains="cl_mem"),
    _fn("clReleaseMemObject", 18, ("memobj", Handle("cl_mem")), releases="cl_mem", async_ok=True),
    _info("clGetMemObjectInfo", 20, "cl_mem", "cl_mem_info",
          {CL_MEM_CONTEXT: "cl_context", CL_MEM_ASSOCIATED_MEMOBJECT: "cl_mem"},
          hidden={CL_MEM_HOST_PTR}, guest_wrap=True,
          property_params={CL_MEM_PROPERTIES: MEM_PROPERTIES}),
    _info("clGetImageInfo", 21, "cl_mem", "cl_image_info", {CL_IMAGE_BUFFER: "cl_mem"}),
    _fn("clCreateImage", 96, ("context", Handle("cl_context")), *_IMAGE,
        returns="cl_mem", creates="cl_mem", guest_wrap=True),
    _fn("clCreateImageWithProperties", 147,
        ("context", Handle("cl_context")), ("properties", MEM_PROPERTIES), *_IMAGE,
        returns="cl_mem", creates="cl_mem", guest_wrap=True),
    _fn("clEnqueueReadImage", 51, _QUEUE,
        ("image", Handle("cl_mem")),
        ("blocking_read", Scalar("cl_bool")),
        ("origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        ("row_pitch", Scalar("size_t")),
        ("slice_pitch", Scalar("size_t")),
        ("ptr", HostImage("image", "region", "row_pitch", "slice_pitch", out=True,
                          blocking="blocking_read")),
        *_WAIT, blocking=True),
    _fn("clEnqueueWriteImage", 52, _QUEUE,
        ("image", Handle("cl_mem")),
        ("blocking_write", Scalar("cl_bool")),
        ("origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        ("input_row_pitch", Scalar("size_t")),
        ("input_slice_pitch", Scalar("size_t")),
        ("ptr", HostImage("image", "region", "input_row_pitch", "input_slice_pitch",
                          out=False, blocking="blocking_write")),
        *_WAIT, blocking=True),
    _fn("clEnqueueCopyImage", 53, _QUEUE,
        ("src_image", Handle("cl_mem")),
        ("dst_image", Handle("cl_mem")),
        ("src_origin", FixedArray("size_t")),
        ("dst_origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        *_WAIT),
    _fn("clEnqueueCopyImageToBuffer", 54, _QUEUE,
        ("src_image", Handle("cl_mem")),
        ("dst_buffer", Handle("cl_mem")),
        ("src_origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        ("dst_offset", Scalar("size_t")),
        *_WAIT),
    _fn("clEnqueueCopyBufferToImage", 55, _QUEUE,
        ("src_buffer", Handle("cl_mem")),
        ("dst_image", Handle("cl_mem")),
        ("src_offset", Scalar("size_t")),
        ("dst_origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        *_WAIT),
    _fn("clEnqueueFillImage", 103, _QUEUE,
        ("image", Handle("cl_mem")),
        ("fill_color", FixedBytes(16)),
        ("origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        *_WAIT),
    _fn("clGetSupportedImageFormats", 19,
        ("context", Handle("cl_context")),
        ("flags", Scalar("cl_mem_flags")),
        ("image_type", Scalar("cl_mem_object_type")),
        ("num_entries", Scalar("cl_uint")),
        ("image_formats", OutBuffer("num_entries", elem=8, ctype="cl_image_format")),
        ("num_image_formats", OutScalar("cl_uint"))),
    _fn("clCreateSampler", 22,
        ("context", Handle("cl_context")),
        ("normalized_coords", Scalar("cl_bool")),
        ("addressing_mode", Scalar("cl_addressing_mode")),
        ("filter_mode", Scalar("cl_filter_mode")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_sampler", creates="cl_sampler"),
    _fn("clRetainSampler", 23, ("sampler", Handle("cl_sampler")), retains="cl_sampler"),
    _fn("clReleaseSampler", 24, ("sampler", Handle("cl_sampler")), releases="cl_sampler", async_ok=True),
    _info("clGetSamplerInfo", 25, "cl_sampler", "cl_sampler_info",
          {CL_SAMPLER_CONTEXT: "cl_context"},
          property_params={CL_SAMPLER_PROPERTIES: SAMPLER_PROPERTIES}),
    _fn("clCreateProgramWithSource", 26,
        ("context", Handle("cl_context")),
        ("count", Scalar("cl_uint")),
        ("strings", Strings("count", "lengths")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_program", creates="cl_program"),
    _fn("clRetainProgram", 28, ("program", Handle("cl_program")), retains="cl_program"),
    _fn("clReleaseProgram", 29, ("program", Handle("cl_program")), releases="cl_program", async_ok=True),
    _fn("clBuildProgram", 30,
        ("program", Handle("cl_program")),
        ("num_devices", Scalar("cl_uint")),
        ("device_list", Handles("cl_device_id", "num_devices")),
        ("options", BuildOptions()),
        ("pfn_notify", Callback("ava_program_notify", "user_data")),
        ("user_data", UserData()),
        blocking=True, guest_wrap=True),
    _info("clGetProgramInfo", 32, "cl_program", "cl_program_info",
          {CL_PROGRAM_CONTEXT: "cl_context", CL_PROGRAM_DEVICES: "cl_device_id"},
          guest_wrap=True),
    _fn("clCreateProgramWithBinary", 27,
        ("context", Handle("cl_context")),
        ("num_devices", Scalar("cl_uint")),
        ("device_list", Handles("cl_device_id", "num_devices")),
        ("binaries", Binaries("num_devices", "lengths")),
        ("binary_status", OutBuffer("num_devices", elem=4, ctype="cl_int",
                                    filled_on=frozenset({0, CL_INVALID_BINARY}))),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_program", creates="cl_program"),
    _fn("clCreateProgramWithBuiltInKernels", 97,
        ("context", Handle("cl_context")),
        ("num_devices", Scalar("cl_uint")),
        ("device_list", Handles("cl_device_id", "num_devices")),
        ("kernel_names", CString()),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_program", creates="cl_program"),
    _fn("clCompileProgram", 98,
        ("program", Handle("cl_program")),
        ("num_devices", Scalar("cl_uint")),
        ("device_list", Handles("cl_device_id", "num_devices")),
        ("options", BuildOptions()),
        ("num_input_headers", Scalar("cl_uint")),
        ("input_headers", Handles("cl_program", "num_input_headers")),
        ("header_include_names", CStrings("num_input_headers")),
        ("pfn_notify", Callback("ava_program_notify", "user_data")),
        ("user_data", UserData()),
        blocking=True, guest_wrap=True),
    _fn("clLinkProgram", 99,
        ("context", Handle("cl_context")),
        ("num_devices", Scalar("cl_uint")),
        ("device_list", Handles("cl_device_id", "num_devices")),
        ("options", CString()),
        ("num_input_programs", Scalar("cl_uint")),
        ("input_programs", Handles("cl_program", "num_input_programs")),
        ("pfn_notify", Callback("ava_program_notify", "user_data")),
        ("user_data", UserData()),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_program", creates="cl_program", blocking=True, guest_wrap=True),
    _fn("clCreateKernelsInProgram", 35,
        ("program", Handle("cl_program")),
        ("num_kernels", Scalar("cl_uint")),
        ("kernels", NewHandles("cl_kernel", "num_kernels")),
        ("num_kernels_ret", OutScalar("cl_uint"))),
    _fn("clCreateSubDevices", 93,
        ("in_device", Handle("cl_device_id")),
        ("properties", PARTITION_PROPERTIES),
        ("num_devices", Scalar("cl_uint")),
        ("out_devices", NewHandles("cl_device_id", "num_devices")),
        ("num_devices_ret", OutScalar("cl_uint"))),
    _info("clGetProgramBuildInfo", 33, "cl_program", "cl_program_build_info",
          extra=(("device", Handle("cl_device_id")),)),
    _fn("clCreateKernel", 34,
        ("program", Handle("cl_program")),
        ("kernel_name", CString(nullable=False)),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_kernel", creates="cl_kernel"),
    _fn("clUnloadCompiler", 31),
    _fn("clRetainKernel", 36, ("kernel", Handle("cl_kernel")), retains="cl_kernel"),
    _fn("clReleaseKernel", 37, ("kernel", Handle("cl_kernel")), releases="cl_kernel", async_ok=True),
    _info("clGetKernelInfo", 39, "cl_kernel", "cl_kernel_info",
          {CL_KERNEL_CONTEXT: "cl_context", CL_KERNEL_PROGRAM: "cl_program"}),
    # Wrapped: a wait, a finish and a status query are where the guest learns that a
    # non-blocking transfer is over (guest_driver/icd/icd_deferred.c).
    _fn("clWaitForEvents", 41,
        ("num_events", Scalar("cl_uint")),
        ("event_list", Handles("cl_event", "num_events")),
        blocking=True, guest_wrap=True),
    _info("clGetEventInfo", 42, "cl_event", "cl_event_info",
          {CL_EVENT_COMMAND_QUEUE: "cl_command_queue", CL_EVENT_CONTEXT: "cl_context"},
          guest_wrap=True),
    _fn("clRetainEvent", 43, ("event", Handle("cl_event")), retains="cl_event"),
    _fn("clReleaseEvent", 44, ("event", Handle("cl_event")), releases="cl_event", async_ok=True),
    _fn("clFlush", 46, ("command_queue", Handle("cl_command_queue")), async_ok=True),
    _fn("clFinish", 47, ("command_queue", Handle("cl_command_queue")), blocking=True,
        guest_wrap=True),
    _fn("clSetKernelArg", 38,
        ("kernel", Handle("cl_kernel")),
        ("arg_index", Scalar("cl_uint")),
        ("arg_value", KernelArg("arg_size")), predicted="custom"),
    _info("clGetKernelWorkGroupInfo", 40, "cl_kernel", "cl_kernel_work_group_info",
          extra=(("device", Handle("cl_device_id", nullable=True)),)),
    _info("clGetEventProfilingInfo", 45, "cl_event", "cl_profiling_info"),
    # Wrapped: a transfer larger than the guest's DMA memory can stage at once goes in
    # pieces (guest_driver/icd/icd_transfer.c).
    _fn("clEnqueueReadBuffer", 48, _QUEUE,
        ("buffer", Handle("cl_mem")),
        ("blocking_read", Scalar("cl_bool")),
        ("offset", Scalar("size_t")),
        ("size", Scalar("size_t")),
        ("ptr", HostData("size", out=True, blocking="blocking_read")),
        *_WAIT, blocking=True, guest_wrap=True),
    _fn("clEnqueueWriteBuffer", 49, _QUEUE,
        ("buffer", Handle("cl_mem")),
        ("blocking_write", Scalar("cl_bool")),
        ("offset", Scalar("size_t")),
        ("size", Scalar("size_t")),
        ("ptr", HostData("size", out=False, blocking="blocking_write")),
        *_WAIT, blocking=True, guest_wrap=True),
    _fn("clEnqueueCopyBuffer", 50, _QUEUE,
        ("src_buffer", Handle("cl_mem")),
        ("dst_buffer", Handle("cl_mem")),
        ("src_offset", Scalar("size_t")),
        ("dst_offset", Scalar("size_t")),
        ("size", Scalar("size_t")),
        *_WAIT, predicted="payload"),
    _fn("clEnqueueReadBufferRect", 86, _QUEUE,
        ("buffer", Handle("cl_mem")),
        ("blocking_read", Scalar("cl_bool")),
        *_RECT_BUFFER,
        ("ptr", HostRect("host_origin", "region", "host_row_pitch", "host_slice_pitch",
                         out=True, blocking="blocking_read")),
        *_WAIT, blocking=True),
    _fn("clEnqueueWriteBufferRect", 87, _QUEUE,
        ("buffer", Handle("cl_mem")),
        ("blocking_write", Scalar("cl_bool")),
        *_RECT_BUFFER,
        ("ptr", HostRect("host_origin", "region", "host_row_pitch", "host_slice_pitch",
                         out=False, blocking="blocking_write")),
        *_WAIT, blocking=True),
    _fn("clEnqueueCopyBufferRect", 88, _QUEUE,
        ("src_buffer", Handle("cl_mem")),
        ("dst_buffer", Handle("cl_mem")),
        ("src_origin", FixedArray("size_t")),
        ("dst_origin", FixedArray("size_t")),
        ("region", FixedArray("size_t")),
        ("src_row_pitch", Scalar("size_t")),
        ("src_slice_pitch", Scalar("size_t")),
        ("dst_row_pitch", Scalar("size_t")),
        ("dst_slice_pitch", Scalar("size_t")),
        *_WAIT),
    _fn("clEnqueueNDRangeKernel", 59, _QUEUE,
        ("kernel", Handle("cl_kernel")),
        ("work_dim", Scalar("cl_uint")),
        ("global_work_offset", InArray("size_t", "work_dim")),
        ("global_work_size", InArray("size_t", "work_dim")),
        ("local_work_size", InArray("size_t", "work_dim")),
        *_WAIT, predicted="custom"),
    _fn("clEnqueueTask", 60, _QUEUE, ("kernel", Handle("cl_kernel")), *_WAIT,
        predicted="custom"),
    _fn("clEnqueueMarker", 62, _QUEUE, ("event", EventOut()), predicted="payload"),
    _fn("clEnqueueBarrier", 64, _QUEUE, predicted="payload"),
    _fn("clCreateSubBuffer", 82,
        ("buffer", Handle("cl_mem")),
        ("flags", Scalar("cl_mem_flags")),
        ("buffer_create_type", Scalar("cl_buffer_create_type")),
        ("buffer_create_info", InBuffer("buffer_create_info_size")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_mem", creates="cl_mem", guest_wrap=True),
    _fn("clRetainDevice", 94, ("device", Handle("cl_device_id")), retains="cl_device_id"),
    _fn("clReleaseDevice", 95, ("device", Handle("cl_device_id")), releases="cl_device_id", async_ok=True),
    _fn("clUnloadPlatformCompiler", 100, ("platform", Handle("cl_platform_id"))),
    _fn("clCreateUserEvent", 84,
        ("context", Handle("cl_context")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_event", creates="cl_event"),
    _fn("clSetUserEventStatus", 85,
        ("event", Handle("cl_event")),
        ("execution_status", Scalar("cl_int"))),
    _info("clGetKernelArgInfo", 101, "cl_kernel", "cl_kernel_arg_info",
          extra=(("arg_index", Scalar("cl_uint")),)),
    _fn("clEnqueueFillBuffer", 102, _QUEUE,
        ("buffer", Handle("cl_mem")),
        ("pattern", InBuffer("pattern_size")),
        ("pattern_size", Scalar("size_t")),
        ("offset", Scalar("size_t")),
        ("size", Scalar("size_t")),
        *_WAIT, predicted="payload"),
    _fn("clEnqueueMigrateMemObjects", 104, _QUEUE,
        ("num_mem_objects", Scalar("cl_uint")),
        ("mem_objects", Handles("cl_mem", "num_mem_objects")),
        ("flags", Scalar("cl_mem_migration_flags")),
        *_WAIT),
    _fn("clEnqueueMarkerWithWaitList", 105, _QUEUE, *_WAIT, predicted="payload"),
    _fn("clEnqueueBarrierWithWaitList", 106, _QUEUE, *_WAIT, predicted="payload"),
    # -- OpenCL 2.x / 3.0 entry points the host implementation may answer -------------
    _fn("clCreatePipe", 124,
        ("context", Handle("cl_context")),
        ("flags", Scalar("cl_mem_flags")),
        ("pipe_packet_size", Scalar("cl_uint")),
        ("pipe_max_packets", Scalar("cl_uint")),
        ("properties", PIPE_PROPERTIES),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_mem", creates="cl_mem"),
    _info("clGetPipeInfo", 125, "cl_mem", "cl_pipe_info",
          property_params={CL_PIPE_PROPERTIES: PIPE_PROPERTIES}),
    _fn("clCreateSamplerWithProperties", 133,
        ("context", Handle("cl_context")),
        ("sampler_properties", SAMPLER_PROPERTIES),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_sampler", creates="cl_sampler"),
    _fn("clCloneKernel", 137,
        ("source_kernel", Handle("cl_kernel")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_kernel", creates="cl_kernel"),
    _fn("clCreateProgramWithIL", 138,
        ("context", Handle("cl_context")),
        ("il", InBuffer("length")),
        ("length", Scalar("size_t")),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_program", creates="cl_program", blocking=True),
    _fn("clGetDeviceAndHostTimer", 140,
        ("device", Handle("cl_device_id")),
        ("device_timestamp", OutScalar("cl_ulong")),
        ("host_timestamp", OutScalar("cl_ulong"))),
    _fn("clGetHostTimer", 141,
        ("device", Handle("cl_device_id")),
        ("host_timestamp", OutScalar("cl_ulong"))),
    _fn("clGetKernelSubGroupInfo", 142,
        ("object", Handle("cl_kernel")),
        ("device", Handle("cl_device_id", nullable=True)),
        ("param_name", Scalar("cl_kernel_sub_group_info")),
        ("input_value_size", Scalar("size_t")),
        ("input_value", InBuffer("input_value_size")),
        ("param_value_size", Scalar("size_t")),
        ("param_value", OutBuffer("param_value_size", "param_name")),
        ("param_value_size_ret", OutScalar("size_t"))),
    _fn("clSetDefaultDeviceCommandQueue", 143,
        ("context", Handle("cl_context")),
        ("device", Handle("cl_device_id")),
        # NULL goes through: a device without replaceable default on-device queues
        # answers CL_INVALID_OPERATION first (PoCL does, as the spec lists it).
        ("command_queue", Handle("cl_command_queue", nullable=True))),
    _fn("clSetProgramSpecializationConstant", 145,
        ("program", Handle("cl_program")),
        ("spec_id", Scalar("cl_uint")),
        ("spec_size", Scalar("size_t")),
        ("spec_value", InBuffer("spec_size"))),
    _fn("clCreateBufferWithProperties", 146,
        ("context", Handle("cl_context")),
        ("properties", MEM_PROPERTIES),
        ("flags", MemFlags()),
        ("size", Scalar("size_t")),
        ("host_ptr", InBuffer("size", const=False)),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_mem", creates="cl_mem", guest_wrap=True),
    _fn("clCreateCommandQueueWithProperties", 123,
        ("context", Handle("cl_context")),
        ("device", Handle("cl_device_id")),
        ("properties", QUEUE_PROPERTIES),
        ("errcode_ret", ErrcodeRet()),
        returns="cl_command_queue", creates="cl_command_queue"),
)

BY_NAME = {f.name: f for f in FUNCTIONS}
BY_OPCODE = {f.opcode: f for f in FUNCTIONS}

#: Functions of OpenCL 1.2 not forwarded yet, with the reason (the guest returns
#: the error the spec prescribes for an unsupported operation).
NOT_YET = {
    "clGetExtensionFunctionAddress": "answered in the guest (ICD loader contract)",
    **{name: "shared virtual memory: a host address space the guest cannot share"
       for name in ("clSVMAlloc", "clSVMFree", "clEnqueueSVMFree", "clEnqueueSVMMemcpy",
                    "clEnqueueSVMMemFill", "clEnqueueSVMMap", "clEnqueueSVMUnmap",
                    "clSetKernelArgSVMPointer", "clEnqueueSVMMigrateMem")},
    "clSetKernelExecInfo": "its parameters are SVM pointers",
    "clSetProgramReleaseCallback": "deprecated; implementations answer CL_INVALID_OPERATION",
    "clSetCommandQueueProperty": "OpenCL 1.0 only",
}

#: Functions the guest composes from forwarded ones instead of forwarding them
#: (guest_driver/icd/icd_mem.c, icd_callbacks.c, icd_programs.c,
#: icd_native.c), with what they are built from.
GUEST_COMPOSED = {
    "clEnqueueMapBuffer": "a blocking clEnqueueReadBuffer into guest memory (or a marker "
                          "for CL_MAP_WRITE_INVALIDATE_REGION)",
    "clEnqueueUnmapMemObject": "clEnqueueWriteBuffer of a written mapping, else a marker",
    "clSetEventCallback": "the guest's callback thread polls the event's status",
    "clSetMemObjectDestructorCallback": "called when the guest's last reference goes",
    "clEnqueueMapImage": "a blocking clEnqueueReadImage into guest memory with pitches the "
                         "guest picks (or a marker for CL_MAP_WRITE_INVALIDATE_REGION)",
    "clCreateImage2D": "clCreateImage with the equivalent cl_image_desc (as OpenCL 1.2 "
                       "defines the 1.x entry points)",
    "clCreateImage3D": "clCreateImage with the equivalent cl_image_desc",
    "clEnqueueNativeKernel": "the guest function runs in the guest on mapped buffers, after "
                             "the commands before it",
    "clSetContextDestructorCallback": "called when the guest's last reference goes",
    "clEnqueueWaitForEvents": "clEnqueueBarrierWithWaitList, which it is in OpenCL 1.2 terms "
                              "(PoCL aborts the process on the 1.1 call)",
}


def c_params(fn: Function) -> list[str]:
    """The C parameter declarations of ``fn``, in order (as cl.h declares them)."""
    out = []
    for a in fn.args:
        k, n = a.kind, a.name
        if isinstance(k, Scalar):
            out.append(f"{k.ctype} {n}")
        elif isinstance(k, Handle):
            out.append(f"{k.obj} {n}")
        elif isinstance(k, Handles):
            out.append(f"const {k.obj} *{n}")
        elif isinstance(k, OutHandles):
            out.append(f"{k.obj} *{n}")
        elif isinstance(k, InBuffer):
            out.append(f"{'const ' if k.const else ''}{k.ctype} *{n}")
        elif isinstance(k, (CString, BuildOptions)):
            out.append(f"const char *{n}")
        elif isinstance(k, OutBuffer):
            out.append(f"{k.ctype} *{n}")
        elif isinstance(k, OutScalar):
            out.append(f"{k.ctype} *{n}")
        elif isinstance(k, Strings):
            out += [f"const char **{n}", f"const size_t *{k.lengths}"]
        elif isinstance(k, Properties):
            out.append(f"const {k.ctype} *{n}")
        elif isinstance(k, Callback):
            out.append(f"{k.ctype} {n}")
        elif isinstance(k, UserData):
            out.append(f"void *{n}")
        elif isinstance(k, FixedArray):
            out.append(f"const {k.ctype} *{n}")
        elif isinstance(k, Binaries):
            out += [f"const size_t *{k.lengths}", f"const unsigned char **{n}"]
        elif isinstance(k, CStrings):
            out.append(f"const char **{n}")
        elif isinstance(k, NewHandles):
            out.append(f"{k.obj} *{n}")
        elif isinstance(k, HostRect):
            out.append(f"{'' if k.out else 'const '}void *{n}")
        elif isinstance(k, ErrcodeRet):
            out.append(f"cl_int *{n}")
        elif isinstance(k, InArray):
            out.append(f"const {k.ctype} *{n}")
        elif isinstance(k, EventOut):
            out.append(f"cl_event *{n}")
        elif isinstance(k, KernelArg):
            out += [f"size_t {k.size}", f"const void *{n}"]
        elif isinstance(k, (HostData, HostImage)):
            out.append(f"{'' if k.out else 'const '}void *{n}")
        elif isinstance(k, InStruct):
            out.append(f"const {k.ctype} *{n}")
        elif isinstance(k, FixedBytes):
            out.append(f"const void *{n}")
        elif isinstance(k, ImageHostPtr):
            out.append(f"void *{n}")
        else:
            raise TypeError(f"{fn.name}.{n}: unknown kind {k!r}")
    return out


def c_declaration(fn: Function) -> str:
    return f"{fn.returns} {fn.name}({', '.join(c_params(fn))});"


#: C typedefs that make the declarations above self-contained (for cffi).
C_TYPEDEFS = """
typedef int32_t cl_int; typedef uint32_t cl_uint; typedef uint64_t cl_ulong;
typedef cl_uint cl_bool; typedef cl_ulong cl_bitfield; typedef cl_bitfield cl_device_type;
typedef cl_bitfield cl_mem_flags; typedef cl_bitfield cl_command_queue_properties;
typedef cl_ulong cl_queue_properties; typedef intptr_t cl_context_properties;
typedef cl_uint cl_platform_info; typedef cl_uint cl_device_info; typedef cl_uint cl_context_info;
typedef cl_uint cl_command_queue_info; typedef cl_uint cl_mem_info; typedef cl_uint cl_program_info;
typedef cl_uint cl_program_build_info; typedef cl_uint cl_kernel_info;
typedef cl_uint cl_kernel_work_group_info; typedef cl_uint cl_event_info;
typedef cl_uint cl_profiling_info; typedef cl_uint cl_kernel_arg_info;
typedef cl_uint cl_buffer_create_type; typedef cl_bitfield cl_mem_migration_flags;
typedef cl_uint cl_addressing_mode; typedef cl_uint cl_filter_mode; typedef cl_uint cl_sampler_info;
typedef cl_uint cl_image_info; typedef cl_uint cl_mem_object_type;
typedef intptr_t cl_device_partition_property;
typedef cl_ulong cl_sampler_properties; typedef cl_ulong cl_mem_properties;
typedef intptr_t cl_pipe_properties; typedef cl_uint cl_pipe_info;
typedef cl_uint cl_kernel_sub_group_info;
typedef struct { cl_uint image_channel_order; cl_uint image_channel_data_type; } cl_image_format;
typedef struct { cl_mem_object_type image_type; size_t image_width; size_t image_height;
    size_t image_depth; size_t image_array_size; size_t image_row_pitch; size_t image_slice_pitch;
    cl_uint num_mip_levels; cl_uint num_samples; void *buffer; } cl_image_desc;
""" + "".join(f"typedef struct _{t} *{t};\n" for t in OBJECT_TYPES) + """
typedef void (*ava_context_notify)(const char *, const void *, size_t, void *);
typedef void (*ava_program_notify)(cl_program, void *);
"""


def validate() -> None:
    """Refuse an inconsistent spec: duplicate indices, dangling size/count names."""
    seen: dict[int, str] = {}
    for fn in FUNCTIONS:
        if fn.index in seen:
            raise ValueError(f"{fn.name} and {seen[fn.index]} share ICD index {fn.index}")
        seen[fn.index] = fn.name
        names = {a.name for a in fn.args}
        for a in fn.args:
            k = a.kind
            ref = getattr(k, "count", None) or getattr(k, "size", None)
            implicit = isinstance(k, KernelArg) or fn.name == "clCreateSubBuffer"
            if ref is not None and ref not in names and not implicit:
                raise ValueError(f"{fn.name}.{a.name} refers to unknown argument {ref!r}")
            for t in (getattr(k, "obj", None),):
                if t is not None and t not in OBJECT_TYPES:
                    raise ValueError(f"{fn.name}.{a.name}: unknown object type {t}")
            if isinstance(k, Scalar) and k.ctype not in SCALAR_TYPES:
                raise ValueError(f"{fn.name}.{a.name}: unknown scalar type {k.ctype}")
        if fn.creates and fn.returns != fn.creates:
            raise ValueError(f"{fn.name} creates {fn.creates} but returns {fn.returns}")
        if fn.async_ok and (len(fn.args) != 1 or not isinstance(fn.args[0].kind, Handle)):
            raise ValueError(f"{fn.name}: only a call on one object can be posted unanswered")
        if fn.predicted not in ("", "custom", "payload"):
            raise ValueError(f"{fn.name}: predicted={fn.predicted!r}")
        if fn.predicted and (fn.creates or fn.blocking or fn.async_ok or any(
                isinstance(a.kind, (OutBuffer, OutScalar, OutHandles, NewHandles, HostData))
                for a in fn.args)):
            raise ValueError(f"{fn.name}: a predicted call returns its status and nothing else")


validate()
