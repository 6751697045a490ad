"""Images through the backend with a hostile guest: the struct arguments, the sizes
of image data in both directions, and forged or mistyped objects end in an OpenCL
status or a malformed-call error, never in the host touching memory it should not."""

import itertools

import pytest
from clwire import FakeDma, decode, encode

from host_backend import OpenClBackend
from host_backend._wire import WireError
from protocols import opencl_api as api

F = api.BY_NAME
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
CL_MEM_READ_WRITE = 1
CL_MEM_COPY_HOST_PTR = 1 << 5
CL_MEM_USE_HOST_PTR = 1 << 3
RGBA8 = {"image_channel_order": 0x10B5, "image_channel_data_type": 0x10D2}
IMAGE2D = api.CL_MEM_OBJECT_IMAGE2D

ids = itertools.count(1 << 20)


class Guest:
    def __init__(self, backend, owner=77):
        self.backend, self.owner, self.dma = backend, owner, FakeDma()

    def call(self, name, new_id=None, **values):
        fn = F[name]
        return decode(fn, self.backend.call(fn, encode(fn, new_id, **values), self.owner,
                                            self.dma), **values)

    def setup(self):
        status, out = self.call("clGetPlatformIDs", num_entries=1, platforms=1)
        assert status == 0
        status, out = self.call("clGetDeviceIDs", platform=out["platforms"][0],
                                device_type=CL_DEVICE_TYPE_ALL, num_entries=1, devices=1)
        assert status == 0
        dev = out["devices"][0]
        self.ctx, self.queue = next(ids), next(ids)
        assert self.call("clCreateContext", self.ctx, num_devices=1, devices=[dev])[0] == 0
        assert self.call("clCreateCommandQueue", self.queue, context=self.ctx, device=dev)[0] == 0
        return self

    def image(self, width=16, height=8, host=None, flags=CL_MEM_READ_WRITE, **desc):
        img = next(ids)
        desc = dict(image_type=IMAGE2D, image_width=width, image_height=height, **desc)
        status, _ = self.call("clCreateImage", img, context=self.ctx, flags=flags,
                              image_format=RGBA8, image_desc=desc, host_ptr=host)
        return status, img


@pytest.fixture
def guest():
    b = OpenClBackend()
    yield Guest(b).setup()
    b.close()


def test_spans_agree_with_the_spec_rules():
    assert api.image_span(IMAGE2D, 4, [5, 3, 1], 40, 0) == 2 * 40 + 20
    assert api.image_span(IMAGE2D, 4, [5, 3, 2], 40, 0) == 0, "a 2D image has no depth"
    arr = api.CL_MEM_OBJECT_IMAGE1D_ARRAY
    assert api.image_span(arr, 4, [7, 2, 1], 0, 64) == 64 + 28, "slices are region[1]"
    assert api.image_span(arr, 4, [7, 2, 1], 0, 0) == 28 + 28
    assert api.image_span(api.CL_MEM_OBJECT_IMAGE3D, 4, [6, 2, 2], 32, 100) == 100 + 32 + 24
    fmt, desc = RGBA8, dict(image_type=IMAGE2D, image_width=16, image_height=8,
                            image_depth=0, image_array_size=0, image_row_pitch=0,
                            image_slice_pitch=0)
    assert api.image_host_size(fmt, desc) == (16 * 8 * 4, 0)
    assert api.image_host_size({**fmt, "image_channel_order": 0x7777}, desc)[1] == -39


def test_create_with_host_data_of_exactly_the_image_size(guest):
    data = bytes(range(256)) * 2
    assert guest.image(host=data, flags=CL_MEM_COPY_HOST_PTR)[0] == 0
    assert guest.image(host=data, flags=CL_MEM_USE_HOST_PTR)[0] == 0, "USE becomes COPY"
    with pytest.raises(WireError):
        guest.image(host=data[:-1], flags=CL_MEM_COPY_HOST_PTR)
    with pytest.raises(WireError):
        guest.image(host=data + bytes(8), flags=CL_MEM_COPY_HOST_PTR)
    # A row pitch far smaller than a row: refused before the implementation sees it.
    status, _ = guest.image(width=1 << 25, height=1, host=bytes(8), flags=CL_MEM_COPY_HOST_PTR,
                            image_row_pitch=8)
    assert status == api.CL_INVALID_IMAGE_DESCRIPTOR


def test_unknown_format_with_host_data_is_refused(guest):
    img = next(ids)
    status, _ = guest.call("clCreateImage", img, context=guest.ctx, flags=CL_MEM_COPY_HOST_PTR,
                           image_format={**RGBA8, "image_channel_order": 0x10BA},   # CL_Rx
                           image_desc=dict(image_type=IMAGE2D, image_width=4, image_height=4),
                           host_ptr=b"")
    assert status == api.CL_INVALID_IMAGE_FORMAT_DESCRIPTOR


def test_struct_arguments_are_checked(guest):
    fn_args = dict(context=guest.ctx, flags=CL_MEM_READ_WRITE, image_format=RGBA8)
    with pytest.raises(WireError):          # wrong field count
        guest.call("clCreateImage", next(ids), image_desc=[IMAGE2D, 4, 4], **fn_args)
    with pytest.raises(WireError):          # a cl_uint field wider than 32 bits
        guest.call("clCreateImage", next(ids), image_desc={"image_type": 1 << 40}, **fn_args)
    desc = dict(image_type=api.CL_MEM_OBJECT_IMAGE1D_BUFFER, image_width=16, buffer=424242)
    status, _ = guest.call("clCreateImage", next(ids), image_desc=desc, **fn_args)
    assert status == api.CL_INVALID_IMAGE_DESCRIPTOR, "a forged buffer id in the descriptor"
    desc["buffer"] = guest.queue
    status, _ = guest.call("clCreateImage", next(ids), image_desc=desc, **fn_args)
    assert status == api.CL_INVALID_IMAGE_DESCRIPTOR, "a queue is not a buffer"


def test_transfers_must_cover_exactly_the_span(guest):
    status, img = guest.image()
    assert status == 0
    guest.dma.ram[:512] = bytes(range(256)) * 2
    args = dict(command_queue=guest.queue, image=img, blocking_write=1, origin=[0, 0, 0],
                region=[16, 8, 1], input_row_pitch=0, input_slice_pitch=0)
    assert guest.call("clEnqueueWriteImage", ptr=(api.HOSTDATA_RANGE, 0, 512), **args)[0] == 0
    for bad in (511, 513):
        with pytest.raises(WireError):
            guest.call("clEnqueueWriteImage", ptr=(api.HOSTDATA_RANGE, 0, bad), **args)
    with pytest.raises(ValueError):
        guest.call("clEnqueueWriteImage", ptr=(api.HOSTDATA_RANGE, (1 << 20) - 8, 512), **args)
    # Extent the image type does not have: refused, whatever length is claimed.
    status, _ = guest.call("clEnqueueWriteImage", ptr=(api.HOSTDATA_RANGE, 0, 0),
                           **dict(args, region=[16, 8, 4]))
    assert status == -30
    # Read back 5x3 pixels at a 40-byte pitch: bytes between rows keep their values.
    span = api.image_span(IMAGE2D, 4, [5, 3, 1], 40, 0)
    guest.dma.ram[4096:4096 + span] = b"\xee" * span
    status, _ = guest.call("clEnqueueReadImage", command_queue=guest.queue, image=img,
                           blocking_read=1, origin=[2, 1, 0], region=[5, 3, 1], row_pitch=40,
                           slice_pitch=0, ptr=(api.HOSTDATA_RANGE, 4096, span))
    assert status == 0
    got = guest.dma.ram[4096:4096 + span]
    assert got[:20] == bytes(range(64 + 8, 64 + 28)) and got[20:40] == b"\xee" * 20


def test_wrong_or_forged_objects(guest):
    buf = next(ids)
    assert guest.call("clCreateBuffer", buf, context=guest.ctx, flags=CL_MEM_READ_WRITE,
                      size=4096)[0] == 0
    args = dict(command_queue=guest.queue, blocking_read=1, origin=[0, 0, 0], region=[4, 4, 1],
                row_pitch=0, slice_pitch=0, ptr=(api.HOSTDATA_RANGE, 0, 0))
    assert guest.call("clEnqueueReadImage", image=buf, **args)[0] == -38
    assert guest.call("clEnqueueReadImage", image=999999, **args)[0] == -38
    assert guest.call("clEnqueueReadImage", image=guest.ctx, **args)[0] == -38
    status, img = guest.image()
    assert status == 0
    fill = dict(command_queue=guest.queue, image=img, origin=[0, 0, 0], region=[4, 4, 1])
    assert guest.call("clEnqueueFillImage", fill_color=bytes(16), **fill)[0] == 0
    with pytest.raises(WireError):
        guest.call("clEnqueueFillImage", fill_color=bytes(8), **fill)
    assert guest.call("clEnqueueCopyImage", command_queue=guest.queue, src_image=img,
                      dst_image=777777, src_origin=[0, 0, 0], dst_origin=[0, 0, 0],
                      region=[1, 1, 1])[0] == -38


def test_images_count_against_the_memory_limit():
    b = OpenClBackend(max_bytes=1 << 20)
    try:
        g = Guest(b).setup()
        assert g.image(width=256, height=256)[0] == 0          # 256 KiB
        assert b.handles.bytes_used >= 256 * 256 * 4
        statuses = [g.image(width=256, height=256)[0] for _ in range(6)]
        # Exactly four 256 KiB images fit in 1 MiB: the cap counts the new image too.
        assert statuses == [0, 0, 0, -4, -4, -4], "CL_MEM_OBJECT_ALLOCATION_FAILURE past the cap"
        assert b.handles.bytes_used <= 1 << 20
    finally:
        b.close()
