"""The generated C headers are fresh, and C agrees with construct on every layout."""

import os
import subprocess

import pytest
from construct import FormatField, GreedyBytes, Renamed

from guest_driver import gen_abi


def test_generated_headers_are_fresh():
    assert gen_abi.main(["--check"]) == 0, "run `python -m guest_driver.gen_abi` and commit"


def test_generator_output_is_deterministic():
    for out in gen_abi.OUTPUTS:
        assert gen_abi.render(out) == gen_abi.render(out)


def construct_offsets(struct):
    """Offsets found by parsing buffers whose byte i holds i (low byte, then high byte):
    independent of the generator's arithmetic."""
    size = gen_abi.struct_size(struct)
    assert size < 1 << 16
    low = struct.parse(bytes(i & 0xFF for i in range(size)))
    high = struct.parse(bytes(i >> 8 for i in range(size)))
    offsets = {}
    for sub in struct.subcons:
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if isinstance(inner, FormatField):
            first = [v.to_bytes(inner.length, "little", signed=v < 0)[0]
                     for v in (low[sub.name], high[sub.name])]
        elif inner is GreedyBytes or not low[sub.name]:
            offsets[sub.name] = size
            continue
        else:
            first = [low[sub.name][0], high[sub.name][0]]
        offsets[sub.name] = first[0] | first[1] << 8
    return size, offsets


@pytest.mark.parametrize("out", gen_abi.OUTPUTS, ids=lambda o: os.path.basename(o.path))
def test_c_layout_matches_construct(out, tmp_path):
    body = []
    for cname, struct in out.structs:
        body.append(f'printf("{cname} sizeof %zu\\n", sizeof(struct {cname}));')
        for sub in struct.subcons:
            body.append(f'printf("{cname} {sub.name} %zu\\n", offsetof(struct {cname}, {sub.name}));')
    src = tmp_path / "layout.c"
    src.write_text(f'#include <stddef.h>\n#include <stdio.h>\n#include "{out.path}"\nint main(void) {{\n'
                   + "\n".join(body) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    printed = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        cname, field, value = line.split()
        printed[(cname, field)] = int(value)
    for cname, struct in out.structs:
        size, offsets = construct_offsets(struct)
        assert printed[(cname, "sizeof")] == size, cname
        for field, off in offsets.items():
            assert printed[(cname, field)] == off, f"{cname}.{field}"


def test_pin_ioctl_numbers_are_the_kernels(tmp_path):
    """protocols/guest_pin.py computes the ioctl numbers itself (the daemon uses them from
    Python): they must be what <linux/ioctl.h> makes of the same declarations, which is
    what the module compares against."""
    src = tmp_path / "ioctl.c"
    pin_h = next(out.path for out in gen_abi.OUTPUTS if out.path.endswith("ava_pin.h"))
    src.write_text(f'#include <linux/ioctl.h>\n#include "{pin_h}"\n'
                   "_Static_assert(AVA_PIN_IOC_PIN == _IOW(AVA_PIN_IOCTL_TYPE, 1, "
                   "struct ava_pin_request), \"PIN\");\n"
                   "_Static_assert(AVA_PIN_IOC_RUNS == _IOWR(AVA_PIN_IOCTL_TYPE, 2, "
                   "struct ava_pin_runs), \"RUNS\");\n")
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-c", "-o", str(tmp_path / "o.o"),
                    str(src)], check=True)
