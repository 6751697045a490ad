"""The vocabulary of the OpenCL spec (``opencl_api``): what kinds of arguments cross
the device, how each is encoded, and the ``Function`` record an entry is.

The wire format of each kind is described in ``opencl_api``'s docstring; the
encoders (guest, generated C) and decoders (host) implement exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

OPCODE_BASE = 0x100
NULL_LEN = 0xFFFFFFFFFFFFFFFF

#: OpenCL object types that travel as ids.
OBJECT_TYPES = ("cl_platform_id", "cl_device_id", "cl_context", "cl_command_queue", "cl_mem",
                "cl_program", "cl_kernel", "cl_event", "cl_sampler")

#: C integer types used by scalars, with their width in bytes and signedness.
SCALAR_TYPES = {
    "cl_uint": (4, False), "cl_int": (4, True), "cl_bool": (4, False), "size_t": (8, False),
    "cl_ulong": (8, False), "cl_bitfield": (8, False), "cl_device_type": (8, False),
    "cl_mem_flags": (8, False), "cl_command_queue_properties": (8, False),
    "cl_platform_info": (4, False), "cl_device_info": (4, False), "cl_context_info": (4, False),
    "cl_command_queue_info": (4, False), "cl_mem_info": (4, False),
    "cl_program_info": (4, False), "cl_program_build_info": (4, False),
    "cl_kernel_info": (4, False), "cl_kernel_work_group_info": (4, False),
    "cl_event_info": (4, False), "cl_profiling_info": (4, False),
    "cl_context_properties": (8, True), "cl_queue_properties": (8, False),
    "cl_kernel_arg_info": (4, False), "cl_buffer_create_type": (4, False),
    "cl_mem_migration_flags": (8, False),
    "cl_addressing_mode": (4, False), "cl_filter_mode": (4, False), "cl_sampler_info": (4, False),
    "cl_image_info": (4, False), "cl_mem_object_type": (4, False),
    "cl_device_partition_property": (8, True),
    "cl_sampler_properties": (8, False), "cl_mem_properties": (8, False),
    "cl_pipe_properties": (8, True), "cl_pipe_info": (4, False),
    "cl_kernel_sub_group_info": (4, False),
}


# -- argument kinds -------------------------------------------------------------------

@dataclass(frozen=True)
class Scalar:
    ctype: str


@dataclass(frozen=True)
class Handle:
    obj: str
    nullable: bool = False


@dataclass(frozen=True)
class Handles:
    """An input array of handles; ``count`` names the scalar argument holding its length."""
    obj: str
    count: str


@dataclass(frozen=True)
class OutHandles:
    """An output array of existing objects (enumeration): ids are assigned by the host."""
    obj: str
    count: str


@dataclass(frozen=True)
class InBuffer:
    """Bytes the function reads; ``size`` names the scalar argument holding its length."""
    size: str
    ctype: str = "void"
    const: bool = True       # cl.h declares clCreateBuffer's host_ptr without const


@dataclass(frozen=True)
class CString:
    """A NUL-terminated string: the guest sends strlen + 1 bytes (NULL_LEN for NULL);
    the host refuses one whose last byte is not NUL."""
    nullable: bool = True


@dataclass(frozen=True)
class BuildOptions:
    """Program build options whose ``-I DIR`` name guest directories the host cannot
    see.  The guest rewrites each such DIR to ``@AVA_INC<n>@`` and ships the files
    under it: u64 options length (NULL_LEN = NULL) + bytes (NUL-terminated), then
    u64 file count and per file: u64 directory index, u64 path length + relative
    path, u64 data length + data (each padded to 8).  The host recreates them in a
    private temporary directory for the duration of the call."""


INCLUDE_MARKER = "@AVA_INC{}@"
MAX_INCLUDE_FILES = 4096
MAX_INCLUDE_BYTES = 16 << 20


@dataclass(frozen=True)
class OutBuffer:
    """Bytes the function writes (info queries).  ``handle_params`` maps a param_name
    value to the object type the result holds, so the host turns pointers into ids.
    ``property_params`` maps a param_name value to the property list kind its result
    is (the list the object was created with): the host turns the values of its
    handle keys into ids, the guest turns them back into its own objects."""
    size: str
    param: str | None = None
    handle_params: dict[int, str] = field(default_factory=dict, hash=False, compare=False)
    property_params: dict[int, Properties] = field(default_factory=dict, hash=False,
                                                     compare=False)
    elem: int = 1            # bytes per unit of ``size`` (an array of structs)
    ctype: str = "void"      # the C element type of the parameter
    hidden_params: frozenset[int] = frozenset()   # param values whose result is a host pointer
    filled_on: frozenset[int] = frozenset({0})    # the statuses after which it holds a result
    # Params whose value never changes for the object: the guest keeps the first
    # answer and gives it again without a round trip (guest_driver/icd/icd_objects.c).
    immutable: frozenset[int] = frozenset()


@dataclass(frozen=True)
class OutScalar:
    ctype: str


@dataclass(frozen=True)
class Strings:
    """``count`` strings with optional ``lengths`` (clCreateProgramWithSource)."""
    count: str
    lengths: str


@dataclass(frozen=True)
class Properties:
    """A 0-terminated list of key/value pairs; ``handle_keys`` maps keys whose value is
    a handle to its object type.  ``refused`` lists (key, bits, status): a value of
    that key with any of those bits set gets that status from the host before the
    implementation sees it (PoCL ends its process on some)."""
    ctype: str
    handle_keys: dict[int, str] = field(default_factory=dict, hash=False, compare=False)
    refused: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class Callback:
    """A notification function pointer.  It stays in the guest: the guest calls it on
    its callback thread when the host's call returns (``guest_wrap`` functions) or
    never (context error notifications, which the host implementation does not
    raise for valid use).  The wire carries one u64: 1 when ``user_data`` is
    non-NULL but the function is NULL, which the spec makes CL_INVALID_VALUE."""
    ctype: str
    user_data: str


@dataclass(frozen=True)
class UserData:
    """The ``user_data`` of a Callback: guest-only, nothing on the wire."""


@dataclass(frozen=True)
class MemFlags(Scalar):
    """``cl_mem_flags`` of a creating call with a host pointer.  Guest memory cannot
    back a host allocation, so the host turns CL_MEM_USE_HOST_PTR into
    CL_MEM_COPY_HOST_PTR and the guest keeps the application's pointer (map and
    ``CL_MEM_HOST_PTR`` answer with it)."""
    ctype: str = "cl_mem_flags"


CL_MEM_USE_HOST_PTR = 1 << 3
CL_MEM_COPY_HOST_PTR = 1 << 5


@dataclass(frozen=True)
class FixedArray:
    """Exactly ``n`` scalars (origins and regions): u64 n (NULL_LEN = NULL) then values."""
    ctype: str
    n: int = 3


@dataclass(frozen=True)
class Binaries:
    """``count`` program binaries with their ``lengths``: u64 count (NULL_LEN when
    either array is NULL), then per binary u64 length (NULL_LEN = NULL) + bytes."""
    count: str
    lengths: str


@dataclass(frozen=True)
class CStrings:
    """``count`` NUL-terminated strings (header include names): u64 count (NULL_LEN =
    NULL array), then per string as CString."""
    count: str


@dataclass(frozen=True)
class NewHandles:
    """An output array of objects the call creates (clCreateKernelsInProgram,
    clCreateSubDevices): the guest sends u64 capacity (NULL_LEN = NULL) then one
    fresh id per slot; the reply is u64 count of slots filled (in order)."""
    obj: str
    count: str


@dataclass(frozen=True)
class ErrcodeRet:
    pass


@dataclass(frozen=True)
class InArray:
    """``count`` scalars of ``ctype`` (work sizes); u64 count (NULL_LEN = NULL) then values."""
    ctype: str
    count: str


@dataclass(frozen=True)
class EventOut:
    """``cl_event *event`` of an enqueue: the guest assigns the new event's id (0 = NULL),
    so an enqueue needs no round trip to learn it."""


@dataclass(frozen=True)
class KernelArg:
    """``arg_size`` + ``arg_value`` of clSetKernelArg: u64 tag, then per tag:
    KARG_BYTES blob (length = arg_size) | KARG_MEM/KARG_SAMPLER u64 id | KARG_LOCAL
    nothing (NULL value: local memory of arg_size bytes)."""
    size: str


KARG_BYTES, KARG_MEM, KARG_SAMPLER, KARG_LOCAL = 0, 1, 2, 3


@dataclass(frozen=True)
class HostData:
    """Application memory an enqueue reads (``out=False``) or writes (``out=True``),
    passed by reference to guest memory: u64 mode (NULL_LEN = NULL pointer), then
    HOSTDATA_RANGE u64 address + u64 length, or HOSTDATA_SG u64 table address + u64
    entry count.  The length must equal the ``size`` argument."""
    size: str
    out: bool
    blocking: str | None = None      # the argument that makes the call block


HOSTDATA_RANGE, HOSTDATA_SG = 0, 1


@dataclass(frozen=True)
class HostRect:
    """Application memory of a rectangular transfer, passed like HostData.  Its
    length is the span the rectangle touches, computed the same way on both ends:
    origin[2]*slice + origin[1]*row + origin[0] + (region[2]-1)*slice +
    (region[1]-1)*row + region[0], with row = region[0] and slice = region[1]*row
    when the pitch is 0.  A read stages the whole span in and out, so the bytes
    between rows keep the application's values."""
    origin: str
    region: str
    row_pitch: str
    slice_pitch: str
    out: bool
    blocking: str


def rect_span(origin: Sequence[int], region: Sequence[int], row_pitch: int,
              slice_pitch: int) -> int:
    """Bytes from the rectangle's base pointer to one past its last byte (0 when the
    region is empty, which the implementation rejects)."""
    if not region or 0 in region:
        return 0
    row = row_pitch or region[0]
    slice_ = slice_pitch or region[1] * row
    return (origin[2] * slice_ + origin[1] * row + origin[0] +
            (region[2] - 1) * slice_ + (region[1] - 1) * row + region[0])


@dataclass(frozen=True)
class InStruct:
    """A struct the function reads (``const T *``), sent field by field so no guest
    layout or pointer crosses: u64 field count (NULL_LEN = NULL), then each field in
    ``fields`` order as u64.  A field named in ``handles`` holds an object, sent as
    its id; an id that is not a live object of that type gets ``bad_handle``, and so
    does a non-zero value in a field of ``zero_fields`` (which the spec requires to be
    0 and which some implementations abort on)."""
    ctype: str
    fields: tuple[tuple[str, str], ...]    # ((field name, scalar ctype), ...)
    handles: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    bad_handle: int | None = None
    zero_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FixedBytes:
    """Exactly ``n`` bytes the function reads through a ``const void *`` (a fill
    colour): u64 length (NULL_LEN = NULL) + bytes padded; the length must be ``n``."""
    n: int


@dataclass(frozen=True)
class ImageHostPtr:
    """``host_ptr`` of clCreateImage, sent inline like InBuffer.  Its length is what
    the image reads from it when ``flags`` has CL_MEM_COPY/USE_HOST_PTR (0 otherwise),
    ``image_host_size`` of the ``format`` and ``desc`` arguments, computed the same
    way on both ends; the host refuses a host pointer whose size it cannot compute."""
    flags: str
    format: str
    desc: str


@dataclass(frozen=True)
class HostImage:
    """Application memory of an image transfer, passed like HostData.  Its length is
    ``image_span`` of the image's type and element size (the host asks the real image,
    the guest cached them at creation), ``region`` and the pitches.  A read stages the
    span in and out like HostRect, so bytes between rows keep their values."""
    image: str
    region: str
    row_pitch: str
    slice_pitch: str
    out: bool
    blocking: str


@dataclass(frozen=True)
class Arg:
    name: str
    kind: object


@dataclass(frozen=True)
class Function:
    name: str
    index: int                       # position in the ICD dispatch table
    args: tuple[Arg, ...]
    returns: str = "cl_int"          # or the object type a creating function returns
    creates: str | None = None
    releases: str | None = None
    retains: str | None = None
    blocking: bool = False
    guest_wrap: bool = False         # the guest's entry point (guest_driver/icd/) wraps the
                                     # generated forwarder ava_fwd_<name>
    # The guest may post it without waiting for the reply: when its argument is a
    # live guest object of the right type its status is CL_SUCCESS, so the caller
    # sees what a round trip would show (release, flush).  Not retain: a retain
    # overtaken by another thread's release would revive a destroyed object.
    async_ok: bool = False
    # The guest posts it when an identical call already succeeded by round trip
    # (guest_driver/icd/icd_predict.c).  "custom": identical as ava_predict_<name>
    # decides (the same classes of values: kernel arguments, launches); "payload":
    # the same encoded arguments (object ids included), without a wait list.  Only
    # calls whose outputs are the status alone (and a guest-assigned event).
    predicted: str = ""

    @property
    def opcode(self) -> int:
        return OPCODE_BASE + self.index
