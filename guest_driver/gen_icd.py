"""Generate the guest ICD's OpenCL entry points from ``protocols.opencl_api``.

Each spec entry becomes one C function that encodes its arguments with the
``ava_enc_*`` helpers (``icd/ava_icd.h``), makes the call through the device
(``ava_icd_invoke``) and decodes the outputs back into the caller's memory;
the dispatch table is filled from the same entries.  Nothing here is written
per function: argument kinds are rendered once each, both ends agree because
they read the same spec.

    python -m guest_driver.gen_icd [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import sys

from guest_driver._generated import sync
from protocols import opencl_api as api
from protocols import opencl_icd_table as icd_table

ICD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "icd")
OUTPUT = os.path.join(ICD_DIR, "ava_icd_stubs.c")

#: Kinds of application memory staged in DMA memory for the call.
STAGED = (api.HostData, api.HostRect, api.HostImage)

OBJ_ENUM = {t: f"AVA_OBJ_{t[3:].upper().replace('_ID', '')}" for t in api.OBJECT_TYPES}


def _spec_hash() -> str:
    """Changes whenever any part of the spec does (entries, kinds, image rules)."""
    from protocols import opencl_images, opencl_kinds
    text = "".join(inspect.getsource(m) for m in (api, opencl_kinds, opencl_images))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reply_capacity(fn: api.Function) -> str:
    """C expression for the reply bytes this call can need."""
    terms = ["8"]
    for a in fn.args:
        k = a.kind
        if isinstance(k, api.OutBuffer):
            terms.append(f"(({a.name} ? (size_t){k.size} * {k.elem} : 0) + 15)")
        elif isinstance(k, api.OutScalar):
            terms.append("8")
        elif isinstance(k, api.OutHandles):
            terms.append(f"(8 + 8 * (size_t)({a.name} ? {k.count} : 0))")
        elif isinstance(k, api.NewHandles):
            terms.append("8")
    return " + ".join(terms)


def _encode(fn: api.Function) -> list[str]:
    out = []
    # Application data goes through DMA staging: a blocking transfer copies it back
    # when the call returns, a non-blocking one once the command is seen over.
    forced = {a.kind.blocking for a in fn.args
              if isinstance(a.kind, STAGED) and a.kind.blocking}
    for a in fn.args:
        k, n = a.kind, a.name
        if isinstance(k, api.Scalar) and n in forced:
            # As asked: the staging waits for the command (icd_deferred.c); the host
            # blocks where it cannot run the transfer on the staging asynchronously.
            out.append("ava_enc_u64(&e, defer ? 0 : 1);")
        elif isinstance(k, api.Scalar):
            out.append(f"ava_enc_u64(&e, (uint64_t){n});")
        elif isinstance(k, api.Handle):
            out.append(f"ava_enc_handle(&e, {OBJ_ENUM[k.obj]}, {n});")
        elif isinstance(k, api.Handles):
            out.append(f"ava_enc_handles(&e, {OBJ_ENUM[k.obj]}, (const void *const *){n}, {k.count});")
        elif isinstance(k, api.OutHandles):
            out.append(f"ava_enc_u64(&e, {n} ? (uint64_t){k.count} : AVA_NULL_LEN);")
        elif isinstance(k, api.InBuffer):
            if k.size in {x.name for x in fn.args}:
                out.append(f"ava_enc_blob(&e, {n}, {k.size});")
            else:   # implicit size (clCreateSubBuffer's region)
                out.append(f"ava_enc_blob(&e, {n}, ava_icd_create_info_size(buffer_create_type));")
        elif isinstance(k, api.CString):
            out.append(f"ava_enc_cstring(&e, {n});")
        elif isinstance(k, api.BuildOptions):
            out.append(f"ava_enc_build_options(&e, {n});")
        elif isinstance(k, api.OutBuffer):
            out.append(f"ava_enc_u64(&e, {n} ? (uint64_t){k.size} : AVA_NULL_LEN);")
        elif isinstance(k, api.OutScalar) and _cached(fn):
            # The size always comes back: a cached answer needs it.
            out.append(f"ava_enc_u64(&e, ({n} || cacheable) ? 1 : AVA_NULL_LEN);")
        elif isinstance(k, api.OutScalar):
            out.append(f"ava_enc_u64(&e, {n} ? 1 : AVA_NULL_LEN);")
        elif isinstance(k, api.Strings):
            out.append(f"ava_enc_strings(&e, {n}, {k.lengths}, {k.count});")
        elif isinstance(k, api.Properties):
            keys = ", ".join(f"{{{key:#x}, {OBJ_ENUM[obj]}}}" for key, obj in k.handle_keys.items())
            out.append(f"{{ static const struct ava_handle_key keys[] = {{ {keys or '{0, 0}'} }};")
            out.append(f"  ava_enc_properties(&e, (const int64_t *){n}, keys, "
                       f"{len(k.handle_keys)}); }}")
        elif isinstance(k, api.Callback):
            out.append(f"ava_enc_u64(&e, (!{n} && {k.user_data}) ? 1 : 0);   "
                       "/* the callback itself stays in the guest */")
        elif isinstance(k, api.UserData):
            pass
        elif isinstance(k, api.FixedArray):
            out.append(f"ava_enc_sizes(&e, {n}, {k.n});")
        elif isinstance(k, api.Binaries):
            out.append(f"ava_enc_binaries(&e, {n}, {k.lengths}, {k.count});")
        elif isinstance(k, api.CStrings):
            out.append(f"ava_enc_cstrings(&e, {n}, {k.count});")
        elif isinstance(k, api.NewHandles):
            out.append(f"if ({n} && !(new_{n} = ava_obj_new_array({OBJ_ENUM[k.obj]}, {k.count}))) "
                       "{ status = CL_OUT_OF_HOST_MEMORY; goto done; }")
            out.append(f"ava_enc_new_array(&e, (void **)new_{n}, {n} ? {k.count} : AVA_NULL_LEN);")
        elif isinstance(k, api.HostRect):
            span = f"ava_rect_span({k.origin}, {k.region}, {k.row_pitch}, {k.slice_pitch})"
            mode = "AVA_STAGE_INOUT" if k.out else "AVA_STAGE_IN"
            out.append(f"if (ava_enc_host_data(&e, &stage_{n}, {n}, {span}, {mode})) "
                       f"{{ status = CL_OUT_OF_RESOURCES; goto done; }}")
        elif isinstance(k, api.ErrcodeRet):
            pass
        elif isinstance(k, api.InArray):
            out.append(f"ava_enc_sizes(&e, {n}, {k.count});")
        elif isinstance(k, api.EventOut):
            out.append(f"ava_enc_u64(&e, new_{n} ? ava_obj_id(new_{n}) : 0);")
        elif isinstance(k, api.KernelArg):
            out.append(f"ava_enc_kernel_arg(&e, {k.size}, {n});")
        elif isinstance(k, api.HostImage):
            span = f"ava_image_span({k.image}, {k.region}, {k.row_pitch}, {k.slice_pitch})"
            mode = "AVA_STAGE_INOUT" if k.out else "AVA_STAGE_IN"
            out.append(f"if (ava_enc_host_data(&e, &stage_{n}, {n}, {span}, {mode})) "
                       f"{{ status = CL_OUT_OF_RESOURCES; goto done; }}")
        elif isinstance(k, api.InStruct):
            out += _encode_struct(k, n)
        elif isinstance(k, api.FixedBytes):
            out.append(f"ava_enc_blob(&e, {n}, {k.n});")
        elif isinstance(k, api.ImageHostPtr):
            out.append(f"ava_enc_blob(&e, {n}, ava_image_host_size({k.flags}, {k.format}, {k.desc}));")
        elif isinstance(k, api.HostData):
            mode = "AVA_STAGE_OUT" if k.out else "AVA_STAGE_IN"
            if k.blocking:
                # A blocking transfer may lend the application's pages for the call
                # (rt_pin.c); a non-blocking one keeps its staging until it is over.
                mode = f"{mode} | (defer ? 0 : AVA_STAGE_IN_PLACE)"
            out.append(f"if (ava_enc_host_data(&e, &stage_{n}, {n}, {k.size}, {mode})) "
                       f"{{ status = CL_OUT_OF_RESOURCES; goto done; }}")
        else:
            raise TypeError(f"{fn.name}.{n}: no encoder for {k!r}")
    return out


def _encode_struct(k: api.InStruct, n: str) -> list[str]:
    """Field by field, handles as ids: the host rebuilds the struct in its own layout."""
    fields = []
    for name, _ in k.fields:
        obj = k.handles.get(name)
        fields.append(f"ava_enc_u64(&e, ava_obj_wire_id({OBJ_ENUM[obj]}, {n}->{name}));" if obj
                      else f"ava_enc_u64(&e, (uint64_t){n}->{name});")
    return [f"if (!{n}) ava_enc_u64(&e, AVA_NULL_LEN);",
            f"else {{ ava_enc_u64(&e, {len(k.fields)});"] + [f"  {f}" for f in fields] + ["}"]


def render_element_size() -> str:
    """The spec's image element sizes in C (both ends size image data from them)."""
    lines = ["size_t ava_image_element_size(cl_uint order, cl_uint data_type)", "{",
             "    size_t channels = 0, bytes = 0;", "    switch (data_type) {"]
    lines += [f"    case {t:#x}: return {b};" for t, b in sorted(api.PACKED_BYTES.items())]
    lines += [f"    case {t:#x}: bytes = {b}; break;" for t, b in sorted(api.CHANNEL_BYTES.items())]
    lines += ["    default: return 0;", "    }", "    switch (order) {"]
    lines += [f"    case {o:#x}: channels = {c}; break;" for o, c in sorted(api.CHANNELS.items())]
    lines += ["    default: return 0;", "    }", "    return channels * bytes;", "}"]
    return "\n".join(lines)


def _decode(fn: api.Function) -> list[str]:
    out = []
    for a in fn.args:
        k, n = a.kind, a.name
        if isinstance(k, api.OutBuffer):
            props = {p: pk for p, pk in k.property_params.items() if pk.handle_keys}
            if props:
                # A property list read back: its handle values come as ids.
                def keys(pk: api.Properties) -> str:
                    return ", ".join(f"{{{key:#x}, {OBJ_ENUM[o]}}}"
                                     for key, o in pk.handle_keys.items())
                cases = " ".join(
                    f"case {p:#x}: {{ static const struct ava_handle_key keys[] = "
                    f"{{ {keys(pk)} }}; pkeys = keys; npkeys = {len(pk.handle_keys)}; break; }}"
                    for p, pk in props.items())
                out.append("{ const struct ava_handle_key *pkeys = NULL; size_t npkeys = 0;")
                out.append(f"  switch ({k.param}) {{ {cases} default: break; }}")
                out.append(f"  if ({n} && pkeys) ava_dec_out_properties(&d, {n}, {k.size}, "
                           "pkeys, npkeys);")
                out.append(f"  else if ({n}) {{")
            if k.handle_params:
                cases = " ".join(f"case {p:#x}: htype = {OBJ_ENUM[o]}; break;"
                                 for p, o in k.handle_params.items())
                out.append(f"{{ int htype = 0; switch ({k.param}) {{ {cases} default: break; }}")
                out.append(f"  if ({n}) ava_dec_out_buffer(&d, {n}, {k.size}, htype); }}")
            else:
                out.append(f"if ({n}) ava_dec_out_buffer(&d, {n}, (size_t){k.size} * {k.elem}, 0);")
            if props:
                out.append("  } }")
        elif isinstance(k, api.OutScalar) and _cached(fn):
            out.append(f"if ({n} || cacheable) {{ size_got = (size_t)ava_dec_u64(&d); "
                       f"if ({n}) *{n} = size_got; }}")
            out.append(f"if (cacheable && status == CL_SUCCESS && param_value && "
                       f"size_got <= param_value_size) ava_info_store(object, {fn.opcode:#x}, "
                       "param_name, cache_key, param_value, size_got);")
        elif isinstance(k, api.OutScalar):
            out.append(f"if ({n}) *{n} = ({k.ctype})ava_dec_u64(&d);")
        elif isinstance(k, api.OutHandles):
            out.append(f"if ({n}) ava_dec_out_handles(&d, {OBJ_ENUM[k.obj]}, (void **){n}, {k.count});")
        elif isinstance(k, api.NewHandles):
            out.append(f"if ({n}) {{ ava_dec_new_array(&d, (void **)new_{n}, {k.count}, "
                       f"status == CL_SUCCESS, (void **){n}); new_{n} = NULL; }}")
    return out


def _cached(fn: api.Function) -> api.OutBuffer | None:
    """The result an info query's guest keeps for the params that never change."""
    return next((a.kind for a in fn.args if isinstance(a.kind, api.OutBuffer)
                 and a.kind.immutable), None)


def _cache_lookup(fn: api.Function, k: api.OutBuffer) -> list[str]:
    """An immutable param asked again is answered from the object's cache (exact
    sizes and errors: icd_objects.c), before anything is encoded."""
    cases = [f"case {p:#x}:" for p in sorted(k.immutable)]
    lines = ["int cacheable = 0;", f"switch ({k.param}) {{"]
    lines += ["  " + " ".join(cases[i:i + 6]) for i in range(0, len(cases), 6)]
    lines += ["    cacheable = 1; break;", "  default: break;", "}"]
    selector = fn.args[1]                  # a device or an argument index, or none
    if selector.name == k.param:
        key = "0"
    elif isinstance(selector.kind, api.Handle):
        key = f"ava_obj_wire_id({OBJ_ENUM[selector.kind.obj]}, {selector.name})"
    else:
        key = f"(uint64_t){selector.name}"
    lines += [f"uint64_t cache_key = {key};", "size_t size_got = 0;", "cl_int cached;",
              f"if (cacheable && ava_info_lookup(object, {fn.opcode:#x}, {k.param}, cache_key, "
              f"{k.size}, param_value, param_value_size_ret, &cached))",
              "    return cached;"]
    return lines


def render_function(fn: api.Function) -> str:
    """One entry point: allocate what the call creates, encode, invoke, decode, and a
    single exit path that frees whatever the call did not hand to the caller."""
    params = ", ".join(api.c_params(fn))
    creates = fn.creates
    events = [a.name for a in fn.args if isinstance(a.kind, api.EventOut)]
    stages = [a.name for a in fn.args if isinstance(a.kind, STAGED)]
    arrays = [(a.name, a.kind) for a in fn.args if isinstance(a.kind, api.NewHandles)]
    cached = _cached(fn)
    body = _cache_lookup(fn, cached) if cached else []
    body += ["struct ava_enc e;", "struct ava_dec d = {0};", "int64_t status = CL_SUCCESS;",
             "ava_enc_init(&e);"]
    if fn.predicted:
        body.append("struct ava_prediction pred;")
    # Everything the exit path looks at is declared (and initialised) before any goto.
    body += [f"struct ava_stage stage_{n} = {{0}};" for n in stages]
    # A transfer the caller asked not to block: the host runs it asynchronously and
    # the staging waits for the command (icd_deferred.c), with an event of ours when
    # the caller wants none.
    blocking = sorted({a.kind.blocking for a in fn.args
                       if isinstance(a.kind, STAGED) and a.kind.blocking})
    deferred = [n for n in stages if getattr(next(a.kind for a in fn.args if a.name == n),
                                             "blocking", None)]
    if blocking:
        body.append(f"int defer = !{blocking[0]};")
    if creates:
        body.append(f"{creates} obj = NULL;")
    body += [f"cl_event new_{n} = NULL;" for n in events]
    body += [f"{k.obj} *new_{n} = NULL;" for n, k in arrays]
    if creates:
        body.append(f"obj = ava_obj_new({OBJ_ENUM[creates]});")
        body.append("if (!obj) { status = CL_OUT_OF_HOST_MEMORY; goto done; }")
    for n in events:
        wanted = f"({n} || defer)" if blocking else n
        body.append(f"if ({wanted} && !(new_{n} = ava_obj_new({OBJ_ENUM['cl_event']}))) "
                    f"{{ status = CL_OUT_OF_HOST_MEMORY; goto done; }}")
    if creates:
        body.append("ava_enc_u64(&e, ava_obj_id(obj));")
    body += _encode(fn)
    invoke = (f"status = ava_icd_invoke({fn.opcode:#x}, \"{fn.name}\", &e, "
              f"{_reply_capacity(fn)}, &d);")
    if fn.predicted:
        if fn.predicted == "custom":
            names = [p.replace("*", " ").split()[-1] for p in api.c_params(fn)]
            predict = f"ava_predict_{fn.name}(&pred, {', '.join(names)})"
        else:
            waits = [a.name for a in fn.args if isinstance(a.kind, api.Handles)
                     and a.name == "event_wait_list"]
            wait = f"{waits[0]} != NULL || num_events_in_wait_list" if waits else "0"
            has_event = f"new_{events[0]} != NULL" if events else "0"
            predict = (f"ava_predict_payload(&pred, {fn.opcode:#x}, &e, {wait}, "
                       f"{has_event})")
        body.append(f"int posted = ava_icd_predicted({predict}, {fn.opcode:#x}, "
                    f"\"{fn.name}\", &e) == 0;")
        body.append("if (posted)")
        body.append("    status = CL_SUCCESS;   /* an identical call succeeded */")
        body.append("else")
        body.append("    " + invoke)
        body.append("ava_predict_done(&pred, status, posted);")
    elif fn.async_ok:
        first = fn.args[0]
        if not isinstance(first.kind, api.Handle):
            raise ValueError(f"{fn.name}: async_ok needs an object as its first argument")
        body.append(f"if (ava_obj_is({first.name}, {OBJ_ENUM[first.kind.obj]}) && "
                    f"ava_icd_post({fn.opcode:#x}, &e) == 0)")
        body.append("    status = CL_SUCCESS;   /* posted: a live object's status is known */")
        body.append("else")
        body.append("    " + invoke)
    else:
        body.append(invoke)
    body += _decode(fn)
    if fn.retains:
        body.append(f"if (status == CL_SUCCESS) ava_obj_retain({fn.args[0].name});")
    if fn.releases:
        body.append(f"if (status == CL_SUCCESS) ava_obj_release({fn.args[0].name});")
    if creates or events or stages or arrays:
        body.append("done:")
    if blocking:
        if len(events) != 1 or len(deferred) != 1:
            raise ValueError(f"{fn.name}: a deferred transfer needs one event and one staging")
        ev, st = events[0], deferred[0]
        body.append(f"if (defer && status == CL_SUCCESS) ava_deferred_add(command_queue, "
                    f"new_{ev}, {ev} != NULL, &stage_{st});")
        body.append("else if (status == CL_SUCCESS) ava_deferred_queue_observed(command_queue);")
    body += [f"ava_stage_finish(&stage_{n}, status == CL_SUCCESS);" for n in stages]
    body += [f"if (new_{n}) ava_dec_new_array(NULL, (void **)new_{n}, {k.count}, 0, NULL);"
             for n, k in arrays]
    for n in events:
        body.append(f"if (new_{n}) {{ if (status != CL_SUCCESS) ava_obj_free(new_{n}); "
                    f"else if ({n}) *{n} = new_{n}; }}")
    body += ["ava_dec_free(&d);", "ava_enc_free(&e);"]
    if creates:
        body.append("if (errcode_ret) *errcode_ret = (cl_int)status;")
        body.append("if (status != CL_SUCCESS) { if (obj) ava_obj_free(obj); return NULL; }")
        body.append("return obj;")
    else:
        body.append("return (cl_int)status;")
    prefix = "ava_fwd_" if fn.guest_wrap else "ava_"
    lines = [f"CL_API_ENTRY {fn.returns} CL_API_CALL", f"{prefix}{fn.name}({params})", "{"]
    lines += [("" if line.endswith(":") else "    ") + line for line in body]
    lines.append("}")
    return "\n".join(lines)


def render() -> str:
    parts = [
        f"/* AUTOGENERATED by guest_driver/gen_icd.py from protocols/opencl_api.py "
        f"(spec {_spec_hash()}).",
        " * Do not edit: change the spec and run `python -m guest_driver.gen_icd`. */",
        '#include <string.h>',
        '',
        '#include "ava_icd.h"',
        '#include "ava_icd_gen.h"',
        "",
    ]
    for fn in sorted(api.FUNCTIONS, key=lambda f: f.index):
        parts.append(render_function(fn))
        parts.append("")
    parts.append(render_element_size())
    parts.append("")
    parts.append("/* Entries not forwarded yet: a typed call through these returns")
    parts.append(" * CL_INVALID_OPERATION (or NULL), never a jump through NULL. */")
    parts.append("static cl_int ava_unsupported_status(void) { return CL_INVALID_OPERATION; }")
    parts.append("static void *ava_unsupported_null(void) { return NULL; }")
    parts.append("")
    parts.append("void ava_icd_fill_dispatch(struct _cl_icd_dispatch *t)")
    parts.append("{")
    parts.append("    void *(*p_unsupported_null)(void) = ava_unsupported_null;")
    parts.append("    cl_int (*p_unsupported_status)(void) = ava_unsupported_status;")
    forwarded = {fn.name for fn in api.FUNCTIONS} | set(api.GUEST_COMPOSED)
    for name in icd_table.DISPATCH:
        if name in forwarded:
            continue
        stub = "ava_unsupported_null" if icd_table.returns_pointer(name) else "ava_unsupported_status"
        parts.append(f"    memcpy(&t->{name}, &{stub.replace('ava_', 'p_')}, sizeof(void *));")
    for name in sorted([fn.name for fn in api.FUNCTIONS] + list(api.GUEST_COMPOSED)):
        parts.append(f"    t->{name} = ava_{name};")
    parts.append("}")
    parts.append("")
    parts.append("const char *const ava_icd_forwarded[] = {")
    for name in sorted([fn.name for fn in api.FUNCTIONS] + list(api.GUEST_COMPOSED)):
        parts.append(f'    "{name}",')
    parts.append("    NULL,")
    parts.append("};")
    return "\n".join(parts) + "\n"


def render_header() -> str:
    """Prototypes shared by the generated stubs and the hand-written entry points:
    the forwarders that wrapped functions call, and every entry point the dispatch
    table takes (so a signature that drifts from cl.h fails to compile)."""
    parts = [
        f"/* AUTOGENERATED by guest_driver/gen_icd.py from protocols/opencl_api.py "
        f"(spec {_spec_hash()}).",
        " * Do not edit: change the spec and run `python -m guest_driver.gen_icd`. */",
        "#ifndef AVA_ICD_GEN_H",
        "#define AVA_ICD_GEN_H",
        '#include "ava_icd.h"',
        "",
        f"#define AVA_PROGRAM_BINARY {api.AVA_PROGRAM_BINARY:#x}u   /* + device index */",
        f"#define AVA_PROGRAM_BINARY_MAX {api.AVA_PROGRAM_BINARY_MAX:#x}u",
        f"#define AVA_MAX_IMAGE_HOST_BYTES {api.MAX_IMAGE_HOST_BYTES:#x}ull",
        "",
        "/* Bytes per pixel of an image format, from the spec's tables (0: unknown). */",
        "size_t ava_image_element_size(cl_uint order, cl_uint data_type);",
        "",
    ]
    for fn in sorted(api.FUNCTIONS, key=lambda f: f.index):
        params = ", ".join(api.c_params(fn))
        parts.append(f"CL_API_ENTRY {fn.returns} CL_API_CALL ava_{fn.name}({params});")
        if fn.guest_wrap:
            parts.append(f"CL_API_ENTRY {fn.returns} CL_API_CALL ava_fwd_{fn.name}({params});")
    parts.append("")
    parts.append("/* Composed in the guest (guest_driver/icd/icd_*.c); their types come from cl_icd.h. */")
    for name in sorted(api.GUEST_COMPOSED):
        parts.append(f"extern __typeof__(*((struct _cl_icd_dispatch *)0)->{name}) ava_{name};")
    parts.append("")
    parts.append("#endif")
    return "\n".join(parts) + "\n"


OUTPUTS = {OUTPUT: render, os.path.join(ICD_DIR, "ava_icd_gen.h"): render_header}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guest_driver.gen_icd",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the generated file on disk is stale")
    args = parser.parse_args(argv)
    return sync({path: render_fn() for path, render_fn in OUTPUTS.items()}, args.check,
                "python -m guest_driver.gen_icd")


if __name__ == "__main__":
    sys.exit(main())
