"""Structured random calls against the OpenCL backend, as a hostile guest would make
them: every spec function, with arguments of the right kinds but values drawn from
what breaks implementations (NULL and foreign handles, zero and huge counts,
truncated strings, forged kernel arguments).  Run by test_opencl_backend in a child
process, so that a crash of the host's OpenCL shows as a failure, not a dead test
run:  python tests/backend_fuzz.py SEED CALLS [DEVICE_MEMORY]  (prints "done" at the end,
and "EXC" for any exception other than a refused encoding; with DEVICE_MEMORY bytes of
device memory, memory objects are evicted and restored under the hostile calls)."""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clwire import FakeDma, encode
from test_opencl_backend import Guest, ids

from host_backend import OpenClBackend
from host_backend._wire import WireError
from protocols import opencl_api as api

seed = int(sys.argv[1]); N = int(sys.argv[2])
rng = random.Random(seed)
b = OpenClBackend(device_memory=int(sys.argv[3])) if len(sys.argv) > 3 else OpenClBackend()
g = Guest(b, owner=1)
ctx, dev = g.context()
q = next(ids); g.call("clCreateCommandQueue", q, context=ctx, device=dev)
buf = next(ids); g.call("clCreateBuffer", buf, context=ctx, flags=1, size=4096)
prog = next(ids); g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[b"__kernel void k(__global int *a, int n) { a[0] = n; }"])
g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev])
kern = next(ids); g.call("clCreateKernel", kern, program=prog, kernel_name=b"k\0")
plat = g.platform()
handles = {"cl_context": ctx, "cl_device_id": dev, "cl_command_queue": q, "cl_mem": buf,
           "cl_program": prog, "cl_kernel": kern, "cl_platform_id": plat}
dma = FakeDma(1 << 22)
mems = [buf]          # with little device memory: several, which evict one another


def new_buffer():
    m = next(ids)
    if g.call("clCreateBuffer", m, context=ctx, flags=1 | (1 << 5), size=2048,
              host_ptr=bytes(rng.getrandbits(8) for _ in range(2048)))[0] == 0:
        mems.append(m)
if len(sys.argv) > 3:
    for _ in range(5):
        new_buffer()
    sub = next(ids)
    if g.call("clCreateSubBuffer", sub, buffer=mems[1], flags=1, buffer_create_type=0x1220,
              buffer_create_info_size=16, buffer_create_info=bytes(8) + (1024).to_bytes(8, "little"))[0] == 0:
        mems.append(sub)
small = [0, 1, 2, 3, 4, 7, 8, 16, 64, 100, 4096, 1 << 31, 1 << 32, 1 << 62, api.NULL_LEN]
def val(): return rng.choice(small) if rng.random() < 0.8 else rng.getrandbits(64)
def rand_args(fn):
    v = {}
    for a in fn.args:
        k = a.kind
        if isinstance(k, api.Scalar):
            w = api.SCALAR_TYPES[k.ctype][0]
            x = val()
            v[a.name] = x & ((1 << (8*w)) - 1) if rng.random() < 0.9 else x
        elif isinstance(k, api.Handle) and k.obj == "cl_mem":
            v[a.name] = rng.choice([0, rng.choice(mems), 12345, rng.choice(mems)])
        elif isinstance(k, api.Handle):
            v[a.name] = rng.choice([0, handles.get(k.obj, 0), 12345, handles.get(k.obj, 0)])
        elif isinstance(k, api.Handles):
            v[a.name] = None if rng.random() < 0.2 else [rng.choice([handles.get(k.obj, 0), 0, 999]) for _ in range(rng.randint(0, 3))]
        elif isinstance(k, (api.OutHandles, api.OutBuffer)):
            v[a.name] = None if rng.random() < 0.2 else rng.choice([0, 1, 4, 8, 64, 4096])
        elif isinstance(k, api.OutScalar):
            v[a.name] = rng.random() < 0.5
        elif isinstance(k, (api.InBuffer, api.CString)):
            v[a.name] = None if rng.random() < 0.2 else bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 4, 8, 16, 24]))) + (b"\0" if isinstance(k, api.CString) and rng.random() < 0.7 else b"")
        elif isinstance(k, api.BuildOptions):
            v[a.name] = rng.choice([None, b"\0", b"-DX=1\0", b"-I @AVA_INC0@\0"])
        elif isinstance(k, api.Strings):
            v[a.name] = [b"__kernel void z() {}"] * rng.randint(0, 2)
        elif isinstance(k, api.Properties):
            v[a.name] = None if rng.random() < 0.3 else [(rng.choice([0x1084, 0x1004, 0x1090, 0x1152, 1, 2, 3, val()]), val()) for _ in range(rng.randint(0, 3))]
        elif isinstance(k, (api.InArray, api.FixedArray)):
            # sizes and origins stay small: a huge NDRange is a legitimately long kernel,
            # and the clFinish after it would only wait
            v[a.name] = None if rng.random() < 0.2 else [rng.choice(small[:9]) for _ in range(rng.choice([1, 2, 3]))]
        elif isinstance(k, (api.EventOut,)):
            v[a.name] = rng.choice([0, next(ids), ctx])
        elif isinstance(k, api.KernelArg):
            v[a.name] = rng.choice([(api.KARG_BYTES, b"\1\0\0\0"), (api.KARG_MEM, rng.choice(mems)), (api.KARG_LOCAL, 16), (api.KARG_MEM, 777), (api.KARG_BYTES, b"12345678")])
        elif isinstance(k, (api.HostData, api.HostRect, api.HostImage)):
            v[a.name] = None if rng.random() < 0.2 else (api.HOSTDATA_RANGE, rng.choice([0, 8192]), rng.choice([0, 4, 64, 4096, 1 << 20]))
        elif isinstance(k, api.Callback):
            v[a.name] = rng.choice([0, 0, 1])
        elif isinstance(k, (api.Binaries, api.CStrings)):
            v[a.name] = None if rng.random() < 0.3 else [rng.choice([b"x\0", b"abc", b""]) for _ in range(rng.randint(0, 2))]
        elif isinstance(k, api.NewHandles):
            v[a.name] = None if rng.random() < 0.3 else [next(ids) for _ in range(rng.randint(0, 3))]
        elif isinstance(k, api.InStruct):
            v[a.name] = None if rng.random() < 0.2 else [rng.choice(small) for _ in range(len(k.fields))]
        elif isinstance(k, (api.FixedBytes, api.ImageHostPtr)):
            v[a.name] = None if rng.random() < 0.3 else bytes(rng.choice([0, 4, 16, 64]))
    return v
skip = {"clReleaseContext", "clReleaseCommandQueue", "clReleaseMemObject", "clReleaseProgram", "clReleaseKernel", "clReleaseDevice", "clUnloadCompiler", "clUnloadPlatformCompiler"}
fns = [f for f in api.FUNCTIONS if f.name not in skip]
seen = set()
for i in range(N):
    if len(sys.argv) > 3 and i % 100 == 99 and len(mems) < 40:
        new_buffer()
    fn = rng.choice(fns)
    vals = rand_args(fn)
    try:
        payload = encode(fn, next(ids) if fn.creates else None, **vals)
    except Exception:
        continue
    if os.environ.get("FUZZ_TRACE"):
        print(f"{i} {fn.name} {payload.hex()[:120]}", file=sys.stderr, flush=True)
    try:
        b.call(fn, payload, 1, dma)
    except (WireError, ValueError):
        pass
    except Exception as exc:
        key = (fn.name, type(exc).__name__)
        if key not in seen:
            seen.add(key)
            print("EXC", fn.name, repr(exc)[:200], payload.hex()[:200], flush=True)
print("memory", b.memory.stats.line())
print("done", seed, len(seen))
