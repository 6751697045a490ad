"""The annotated spec agrees with the Khronos headers: C signatures and ICD indices."""

import re
import subprocess

import pytest

from protocols import opencl_api as api

CL_ICD_H = "/usr/include/CL/cl_icd.h"


def test_signatures_match_cl_h(tmp_path):
    """Redeclaring every function after <CL/cl.h> compiles only if the types agree."""
    src = tmp_path / "sig.c"
    body = "\n".join(
        f"CL_API_ENTRY {api.c_declaration(fn)}" for fn in api.FUNCTIONS)
    src.write_text("#define CL_TARGET_OPENCL_VERSION 300\n#include <CL/cl.h>\n"
                   "typedef void (*ava_context_notify)(const char *, const void *, size_t, void *);\n"
                   "typedef void (*ava_program_notify)(cl_program, void *);\n" + body + "\n")
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-fsyntax-only", str(src)], check=True)


def test_icd_indices_match_the_dispatch_table():
    with open(CL_ICD_H) as f:
        text = f.read()
    struct = text[text.index("typedef struct _cl_icd_dispatch"):]
    struct = struct[:struct.index("} cl_icd_dispatch;")]
    order = re.findall(r"(?:cl_api_\w+|void\s*\*)\s+(\w+)\s*;", struct)
    assert order[:2] == ["clGetPlatformIDs", "clGetPlatformInfo"]
    for fn in api.FUNCTIONS:
        assert order[fn.index] == fn.name, f"{fn.name} is at {order.index(fn.name)}, spec says {fn.index}"


def test_spec_validation_refuses_inconsistencies(monkeypatch):
    bad = api.Function("clBogus", 0, (api.Arg("x", api.Handles("cl_mem", "missing")),))
    monkeypatch.setattr(api, "FUNCTIONS", api.FUNCTIONS + (bad,))
    with pytest.raises(ValueError, match=r"share ICD index|unknown argument"):
        api.validate()


def test_generated_icd_stubs_are_fresh():
    from guest_driver import gen_icd
    assert gen_icd.main(["--check"]) == 0, "run `python -m guest_driver.gen_icd` and commit"


def test_icd_sources_compile_cleanly(tmp_path):
    import glob
    import os

    from guest_driver import gen_icd
    for src in sorted(glob.glob(os.path.join(gen_icd.ICD_DIR, "*.c"))):
        subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                        "-fPIC", "-I", gen_icd.ICD_DIR, "-I",
                        os.path.join(os.path.dirname(gen_icd.ICD_DIR), "runtime"), "-c", "-o",
                        str(tmp_path / (os.path.basename(src) + ".o")), src], check=True)


def test_dispatch_table_data_matches_the_header():
    from protocols.opencl_icd_table import DISPATCH
    with open(CL_ICD_H) as f:
        text = f.read()
    struct = text[text.index("typedef struct _cl_icd_dispatch"):]
    struct = struct[:struct.index("} cl_icd_dispatch;")]
    order = re.findall(r"(?:cl_api_\w+|void\s*\*)\s+(\w+)\s*;", struct)
    assert tuple(order[:len(DISPATCH)]) == DISPATCH


#: The info query that reads back the objects a creating function makes.
INFO_OF = {"cl_context": ("clGetContextInfo",), "cl_command_queue": ("clGetCommandQueueInfo",),
           "cl_mem": ("clGetMemObjectInfo", "clGetPipeInfo"), "cl_sampler": ("clGetSamplerInfo",),
           "cl_device_id": ("clGetDeviceInfo",)}


def test_every_property_list_given_is_read_back_with_the_same_handle_keys():
    """A property list with handles in it (a context's platform) comes back from an
    info query as ids the guest turns back into its objects: each list a function
    takes is declared, by the same object, on the query that returns it, so a new
    creating function cannot forget its read-back (pipes: clGetPipeInfo too)."""
    read_back = {}
    for fn in api.FUNCTIONS:
        for a in fn.args:
            if isinstance(a.kind, api.OutBuffer):
                for props in a.kind.property_params.values():
                    read_back.setdefault(fn.name, []).append(props)
    for fn in api.FUNCTIONS:
        lists = [a.kind for a in fn.args if isinstance(a.kind, api.Properties)]
        if not lists:
            continue
        made = fn.creates or next(a.kind.obj for a in fn.args
                                  if isinstance(a.kind, api.NewHandles))
        for props in lists:
            assert any(p is props for info in INFO_OF[made] for p in read_back.get(info, [])), \
                f"{fn.name}: its {props.ctype} list is not read back by {INFO_OF[made]}"
    assert api.BY_NAME["clGetContextInfo"].args[3].kind.property_params[
        api.CL_CONTEXT_PROPERTIES].handle_keys == {api.CL_CONTEXT_PLATFORM: "cl_platform_id"}
