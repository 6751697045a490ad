"""Image formats and sizes: how many bytes of application memory an image creation
or transfer touches.  Both ends compute these the same way (the host from the real
image, the guest from what it kept at creation), so a mismatch is a malformed call.
"""

from __future__ import annotations

from collections.abc import Sequence

from .opencl_kinds import InStruct

# Image constants (cl.h) and element sizes: both ends size image data from these.
CL_MEM_OBJECT_BUFFER = 0x10F0
CL_MEM_OBJECT_IMAGE2D, CL_MEM_OBJECT_IMAGE3D = 0x10F1, 0x10F2
CL_MEM_OBJECT_IMAGE2D_ARRAY, CL_MEM_OBJECT_IMAGE1D = 0x10F3, 0x10F4
CL_MEM_OBJECT_IMAGE1D_ARRAY, CL_MEM_OBJECT_IMAGE1D_BUFFER = 0x10F5, 0x10F6
IMAGE_TYPES = frozenset(range(CL_MEM_OBJECT_IMAGE2D, CL_MEM_OBJECT_IMAGE1D_BUFFER + 1))
CL_IMAGE_ELEMENT_SIZE = 0x1111
CL_MEM_TYPE = 0x1100
CL_INVALID_MEM_OBJECT = -38
CL_INVALID_IMAGE_FORMAT_DESCRIPTOR = -39
CL_INVALID_IMAGE_SIZE = -40
CL_INVALID_IMAGE_DESCRIPTOR = -65
#: Channels per channel order.  Orders with padding channels (CL_Rx, ...) are left
#: out on purpose: implementations disagree on their size, and an unknown format
#: with a host pointer is refused rather than guessed.
CHANNELS = {0x10B0: 1, 0x10B1: 1, 0x10B2: 2, 0x10B3: 2, 0x10B4: 3, 0x10B5: 4, 0x10B6: 4,
            0x10B7: 4, 0x10B8: 1, 0x10B9: 1, 0x10BD: 1, 0x10BF: 3, 0x10C1: 4, 0x10C2: 4,
            0x10C3: 4}
#: Bytes per channel of each channel data type.
CHANNEL_BYTES = {0x10D0: 1, 0x10D1: 2, 0x10D2: 1, 0x10D3: 2, 0x10D7: 1, 0x10D8: 2,
                 0x10D9: 4, 0x10DA: 1, 0x10DB: 2, 0x10DC: 4, 0x10DD: 2, 0x10DE: 4}
#: Packed data types: bytes per element whatever the order.
PACKED_BYTES = {0x10D4: 2, 0x10D5: 2, 0x10D6: 4, 0x10DF: 4, 0x10E0: 4}
#: Image data a guest may send inline at creation.
MAX_IMAGE_HOST_BYTES = 1 << 40

IMAGE_FORMAT = InStruct("cl_image_format", (("image_channel_order", "cl_uint"),
                                            ("image_channel_data_type", "cl_uint")))
IMAGE_DESC = InStruct("cl_image_desc", (
    ("image_type", "cl_mem_object_type"), ("image_width", "size_t"),
    ("image_height", "size_t"), ("image_depth", "size_t"), ("image_array_size", "size_t"),
    ("image_row_pitch", "size_t"), ("image_slice_pitch", "size_t"),
    ("num_mip_levels", "cl_uint"), ("num_samples", "cl_uint"), ("buffer", "size_t")),
    handles={"buffer": "cl_mem"}, bad_handle=CL_INVALID_IMAGE_DESCRIPTOR,
    zero_fields=("num_mip_levels", "num_samples"))    # PoCL aborts the process on these


def image_element_size(order: int, data_type: int) -> int:
    """Bytes per pixel of a format (0 when unknown)."""
    if data_type in PACKED_BYTES:
        return PACKED_BYTES[data_type]
    return CHANNELS.get(order, 0) * CHANNEL_BYTES.get(data_type, 0)


def image_host_size(fmt: dict[str, int], desc: dict[str, int]) -> tuple[int, int]:
    """(bytes an image reads from its host pointer, 0) or (0, the status when it
    cannot be known).  The spec's minimum: row pitch x height, slice pitch x depth
    or array size, with the pitches' defaults when 0."""
    elem = image_element_size(fmt["image_channel_order"], fmt["image_channel_data_type"])
    if not elem:
        return 0, CL_INVALID_IMAGE_FORMAT_DESCRIPTOR
    t = desc["image_type"]
    row = desc["image_row_pitch"] or desc["image_width"] * elem
    if t in (CL_MEM_OBJECT_IMAGE1D, CL_MEM_OBJECT_IMAGE1D_BUFFER):
        size = row
    elif t == CL_MEM_OBJECT_IMAGE2D:
        size = row * desc["image_height"]
    elif t == CL_MEM_OBJECT_IMAGE1D_ARRAY:
        size = (desc["image_slice_pitch"] or row) * desc["image_array_size"]
    elif t in (CL_MEM_OBJECT_IMAGE2D_ARRAY, CL_MEM_OBJECT_IMAGE3D):
        slice_ = desc["image_slice_pitch"] or row * desc["image_height"]
        size = slice_ * (desc["image_depth"] if t == CL_MEM_OBJECT_IMAGE3D
                         else desc["image_array_size"])
    else:
        return 0, CL_INVALID_IMAGE_DESCRIPTOR
    if not 0 < size <= MAX_IMAGE_HOST_BYTES:
        return 0, CL_INVALID_IMAGE_SIZE
    return size, 0


def image_read_bound(fmt: dict[str, int], desc: dict[str, int]) -> int:
    """One past the furthest host byte a well-behaved implementation could read for
    an image whose size ``image_host_size`` knows: rows of width x element size at
    the given pitches (the host pads its copy to this; capped at the size limit)."""
    elem = image_element_size(fmt["image_channel_order"], fmt["image_channel_data_type"])
    t, w = desc["image_type"], desc["image_width"] * elem
    row = desc["image_row_pitch"] or w
    rows, slices, slice_ = 1, 1, 0
    if t == CL_MEM_OBJECT_IMAGE2D:
        rows = desc["image_height"]
    elif t == CL_MEM_OBJECT_IMAGE1D_ARRAY:
        slices, slice_ = desc["image_array_size"], desc["image_slice_pitch"] or row
    elif t in (CL_MEM_OBJECT_IMAGE2D_ARRAY, CL_MEM_OBJECT_IMAGE3D):
        rows = desc["image_height"]
        slices = desc["image_depth"] if t == CL_MEM_OBJECT_IMAGE3D else desc["image_array_size"]
        slice_ = desc["image_slice_pitch"] or row * rows
    bound = max(slices - 1, 0) * slice_ + max(rows - 1, 0) * row + w
    return min(bound, MAX_IMAGE_HOST_BYTES)


def image_span(image_type: int, elem: int, region: Sequence[int], row_pitch: int, slice_pitch: int) -> int:
    """Bytes of application memory an image transfer of ``region`` touches: the last
    row ends at (slices-1)*slice + (rows-1)*row + region[0]*elem.  A 1D image array's
    slices are region[1] (its slice pitch defaults to the row pitch).  0 when the
    region is empty or has extent where the image type has none (the
    implementation rejects those), or the object is not an image."""
    if not elem or not region or 0 in region:
        return 0
    w, h, d = region
    row = row_pitch or w * elem
    if image_type in (CL_MEM_OBJECT_IMAGE1D, CL_MEM_OBJECT_IMAGE1D_BUFFER):
        rows, slices, slice_ = 1, 1, 0
        ok = h == d == 1
    elif image_type == CL_MEM_OBJECT_IMAGE2D:
        rows, slices, slice_ = h, 1, 0
        ok = d == 1
    elif image_type == CL_MEM_OBJECT_IMAGE1D_ARRAY:
        rows, slices, slice_ = 1, h, slice_pitch or row
        ok = d == 1
    elif image_type in (CL_MEM_OBJECT_IMAGE2D_ARRAY, CL_MEM_OBJECT_IMAGE3D):
        rows, slices, slice_ = h, d, slice_pitch or row * h
        ok = True
    else:
        return 0
    return (slices - 1) * slice_ + (rows - 1) * row + w * elem if ok else 0
