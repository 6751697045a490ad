"""``guest_driver check``: OpenCL imports of real binaries, read with pyelftools."""

import subprocess

import pytest

from guest_driver._check import opencl_imports, report


def test_lists_what_a_c_sample_imports(tmp_path):
    src = tmp_path / "s.c"
    src.write_text("#define CL_TARGET_OPENCL_VERSION 200\n#include <CL/cl.h>\n"
                   "int main(void) { cl_uint n; cl_platform_id p; clGetPlatformIDs(1, &p, &n);"
                   " clEnqueueNativeKernel(0, 0, 0, 0, 0, 0, 0, 0, 0, 0);"
                   " clSVMAlloc(0, 0, 0, 0); return 0; }\n")
    exe = tmp_path / "s"
    subprocess.run(["gcc", "-o", str(exe), str(src), "-lOpenCL"], check=True)
    result = opencl_imports(str(exe))
    assert result.imported == ["clEnqueueNativeKernel", "clGetPlatformIDs", "clSVMAlloc"]
    assert result.forwarded == ["clEnqueueNativeKernel", "clGetPlatformIDs"], "composed counts"
    assert result.missing == ["clSVMAlloc"]
    text = report(result)
    assert "forwarded  clGetPlatformIDs" in text and "MISSING    clSVMAlloc" in text


def test_refuses_a_non_elf_file(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not an ELF"):
        opencl_imports(str(path))
