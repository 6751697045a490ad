"""Every wire declaration parses what it builds, with the sizes the spec gives."""

import json

import pytest

from protocols import pci
from protocols import vfio_user as vu


def roundtrip(struct, value, size=None):
    raw = struct.build(value)
    if size is not None:
        assert len(raw) == size
    parsed = struct.parse(raw)
    assert struct.build(parsed) == raw
    return parsed, raw


@pytest.mark.parametrize("struct,value,size", [
    (vu.Header, dict(msg_id=7, command=2, size=48, flags=0x10, error=0), vu.HEADER_SIZE),
    (vu.DmaMap, dict(argsz=32, flags=3, offset=0x1000, address=0xC0000, size=0x20000), vu.DMA_MAP_SIZE),
    (vu.DmaUnmap, dict(argsz=24, flags=2, address=0, size=0), vu.DMA_UNMAP_SIZE),
    (vu.DeviceInfo, dict(argsz=16, flags=3, num_regions=9, num_irqs=5), vu.DEVICE_INFO_SIZE),
    (vu.RegionInfo, dict(argsz=32, flags=3, index=7, cap_offset=0, size=256, offset=0),
     vu.REGION_INFO_SIZE),
    (vu.IrqInfo, dict(argsz=16, flags=7, index=0, count=1), vu.IRQ_INFO_SIZE),
    (vu.IrqSet, dict(argsz=20, flags=0x24, index=0, start=0, count=1, data=b""), vu.IRQ_SET_SIZE),
    (vu.RegionAccess, dict(offset=0x1C, region=0, count=4, data=b"\1\2\3\4"), 20),
    (vu.DmaRwSpec, dict(address=0x1000, count=3, data=b"abc"), 19),
    (vu.DmaRwQemu101, dict(address=0x1000, count=3, data=b"abc"), 15),
    (vu.SparseMmapCap, dict(header=dict(id=vu.CAP_SPARSE_MMAP, version=1, next=0), nr_areas=2,
                            areas=[dict(offset=0, size=0x1000), dict(offset=0x2000, size=0x1000)]),
     8 + 8 + 32),
    (vu.RegionWriteMulti, dict(wr_cnt=1, entries=[dict(offset=4, region=0, count=4,
                                                       data=b"\0" * 8)]), 8 + 24),
    (pci.MsixCap, dict(cap_id=0x11, next=0, control=7, table=2, pba=0x802), pci.MSIX_CAP_SIZE),
    (pci.MsiCap, dict(cap_id=5, next=0, control=0x80, address_lo=0, address_hi=0, data=0,
                      reserved=0), pci.MSI_CAP_SIZE),
])
def test_declarations_roundtrip(struct, value, size):
    parsed, _ = roundtrip(struct, value, size)
    for key, val in value.items():
        if not isinstance(val, (dict, list)):
            assert parsed[key] == val


def test_fixed_sizes_match_declarations():
    assert vu.Header.sizeof() == vu.HEADER_SIZE
    assert vu.DmaMap.sizeof() == vu.DMA_MAP_SIZE
    assert vu.DmaUnmap.sizeof() == vu.DMA_UNMAP_SIZE
    assert vu.RegionInfo.sizeof() == vu.REGION_INFO_SIZE
    assert pci.Type0Header.sizeof() == pci.TYPE0_HEADER_SIZE


def test_version_json_is_nul_terminated_and_parses_back():
    raw = vu.Version.build(dict(major=0, minor=0, json=vu.encode_caps({"max_msg_fds": 8})))
    assert raw.endswith(b"\0")
    parsed = vu.Version.parse(raw)
    assert vu.decode_caps(parsed.json) == {"max_msg_fds": 8}
    assert json.loads(parsed.json[:-1]) == {"capabilities": {"max_msg_fds": 8}}


@pytest.mark.parametrize("raw", [b"{", b"[1]\0", b'{"capabilities": 3}\0', b"\xff\0"])
def test_bad_version_json_is_rejected(raw):
    with pytest.raises((ValueError, UnicodeDecodeError)):
        vu.decode_caps(raw)


def test_error_reply_is_header_only():
    raw = vu.build_error_reply(5, vu.Command.DMA_MAP, 17)
    hdr = vu.Header.parse(raw)
    assert len(raw) == 16 and hdr.size == 16 and hdr.flags == 0x21 and hdr.error == 17


def test_describe_never_raises():
    assert vu.describe(999, b"x").startswith("unknown command")
    assert "undecodable" in vu.describe(vu.Command.DMA_MAP, b"\0" * 3)
    assert "address=0x1000" in vu.describe(vu.Command.DMA_MAP, vu.DmaMap.build(dict(
        argsz=32, flags=3, offset=0, address=0x1000, size=0x1000)))


def test_config_space_capability_chain():
    caps = [pci.Capability(pci.CapId.MSIX, pci.MsixCap.build(dict(cap_id=0x11, next=0, control=7,
                                                                  table=2, pba=0x802))),
            pci.Capability(pci.CapId.MSI, b"\x05\x00" + b"\0" * 12)]
    bars = [pci.BarSpec(0x1000)] + [pci.BarSpec()] * 5
    space = pci.build_config_space(vendor_id=0x4156, device_id=0xC1A, class_code=0x120000,
                                   revision=1, subsys_vendor=0x4156, subsys_id=1, bars=bars,
                                   int_pin=1, caps=caps)
    assert len(space) == 256
    hdr = pci.Type0Header.parse(space)
    assert (hdr.vendor_id, hdr.device_id, hdr.class_code, hdr.subclass) == (0x4156, 0xC1A, 0x12, 0)
    assert hdr.status & pci.Status.CAP_LIST and hdr.int_pin == 1
    assert pci.walk_capabilities(space) == [(0x40, 0x11), (0x4C, 0x05)]


def test_capability_walk_survives_loops_and_bad_pointers():
    space = bytearray(256)
    space[6] = pci.Status.CAP_LIST
    space[0x34] = 0x40
    space[0x40:0x42] = b"\x11\x40"         # points at itself
    assert pci.walk_capabilities(space) == [(0x40, 0x11)]
    space[0x41] = 0x10                      # into the header: stop
    assert pci.walk_capabilities(space) == [(0x40, 0x11)]


def test_bar_sizes_must_be_powers_of_two():
    with pytest.raises(ValueError):
        pci.BarSpec(0x1800)
