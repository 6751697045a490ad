"""``build``: compile the runtime, the ICD and the tools with the local compiler.

Output (default ``$AVA_BUILD_DIR`` or ``~/.cache/ava-vdev/build``; the checkout
may be read-only, as it is in the lab guest): ``libava_icd.so`` (the ICD, with
the runtime inside, so ``OCL_ICD_FILENAMES`` alone is enough), ``libava_rt.so``,
``ava-echo`` and ``ava-bench``.  Sources are hashed: an unchanged tree rebuilds
nothing.

``build_module`` makes ``kmod/ava_vdev_pin.ko`` there too, against the running
kernel's headers (``linux-headers-$(uname -r)``), the way DKMS would: the module that
lets ordinary users lend their own pages to transfers (``protocols/guest_pin.py``).
A guest without those headers keeps everything else; ordinary users' transfers are
then copied.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNTIME = HERE / "runtime"
ICD = HERE / "icd"
TOOLS = HERE / "tools"
KMOD = HERE / "kmod"
#: The module's sources: its own, and the header generated from protocols/guest_pin.py.
KMOD_SOURCES = (KMOD / "ava_vdev_pin.c", KMOD / "Kbuild", RUNTIME / "ava_pin.h")
#: Where <CL/cl.h> and <CL/cl_icd.h> live (AVA_CL_INCLUDE overrides /usr/include).
CL_INCLUDE = Path(os.environ.get("AVA_CL_INCLUDE", "/usr/include"))
CFLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-fPIC",
          f"-I{RUNTIME}", f"-I{ICD}"] + ([f"-I{CL_INCLUDE}"] if str(CL_INCLUDE) != "/usr/include" else [])


class BuildError(Exception):
    pass


def default_out() -> Path:
    env = os.environ.get("AVA_BUILD_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ava-vdev" / "build"


def _sources() -> list[Path]:
    files = []
    for pattern in ("runtime/*.c", "runtime/*.h", "icd/*.c", "icd/*.h", "tools/*.c"):
        files += sorted(Path(p) for p in glob.glob(str(HERE / pattern)))
    return files


def _digest(cc: str) -> str:
    h = hashlib.sha256(" ".join([cc] + CFLAGS).encode())
    for path in _sources():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _cc(cc: str, args: list[str]) -> None:
    proc = subprocess.run([cc, *CFLAGS, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{cc} failed ({' '.join(args[-3:])}):\n{proc.stderr.strip()}")


def build(out: Path | None = None, *, force: bool = False, verbose: bool = False) -> Path:
    """Build everything into ``out``; returns the ICD library's absolute path."""
    out = (out or default_out()).resolve()
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler ({cc}); install gcc and libc6-dev")
    if not (CL_INCLUDE / "CL" / "cl_icd.h").exists():
        raise BuildError(f"OpenCL headers missing ({CL_INCLUDE}/CL/cl_icd.h); install "
                         "opencl-c-headers or set AVA_CL_INCLUDE")
    out.mkdir(parents=True, exist_ok=True)
    icd_lib = out / "libava_icd.so"
    stamp = out / ".digest"
    digest = _digest(cc)
    if not force and icd_lib.exists() and stamp.exists() and stamp.read_text() == digest:
        return icd_lib
    # Each source is compiled once, in parallel, then linked: the runtime goes into
    # all four outputs, and under TCG in a lab guest compiling it four times over
    # one core was most of the build's two minutes.
    objs = out / "obj"
    objs.mkdir(exist_ok=True)
    sources = {src: objs / f"{src.parent.name}_{src.stem}.o"
               for src in sorted([*RUNTIME.glob("*.c"), *ICD.glob("*.c"), *TOOLS.glob("*.c")])}
    if verbose:
        print(f"cc -c: {len(sources)} sources", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done in [pool.submit(_cc, cc, ["-c", "-o", str(obj), str(src)])
                     for src, obj in sources.items()]:
            done.result()           # the first compile error, with the compiler's message
    runtime = [str(sources[p]) for p in sorted(RUNTIME.glob("*.c"))]
    icd = [str(sources[p]) for p in sorted(ICD.glob("*.c"))]
    steps = [
        (["-shared", "-o", str(out / "libava_rt.so"), *runtime], "libava_rt.so"),
        (["-shared", "-o", str(icd_lib), *icd, *runtime], "libava_icd.so"),
        (["-o", str(out / "ava-echo"), str(sources[TOOLS / "ava_echo.c"]), *runtime], "ava-echo"),
        (["-o", str(out / "ava-bench"), str(sources[TOOLS / "ava_bench.c"]), *runtime],
         "ava-bench"),
    ]
    for args, name in steps:
        if verbose:
            print(f"cc {name}", flush=True)
        _cc(cc, args)
    stamp.write_text(digest)
    return icd_lib


def kernel_headers(release: str | None = None) -> Path:
    """Where kbuild for the running kernel (or ``release``) lives."""
    return Path("/lib/modules") / (release or os.uname().release) / "build"


def build_module(out: Path | None = None, *, force: bool = False,
                 verbose: bool = False) -> tuple[Path | None, str]:
    """Build ``ava_vdev_pin.ko`` for the running kernel into ``out/kmod``: (its path,
    "") or (None, why not)."""
    out = (out or default_out()).resolve() / "kmod"
    headers = kernel_headers()
    if not (headers / "Makefile").exists():
        return None, (f"no headers for kernel {os.uname().release} ({headers}); install "
                      f"linux-headers-{os.uname().release}")
    if shutil.which("make") is None:
        return None, "no make; install make"
    ko = out / "ava_vdev_pin.ko"
    h = hashlib.sha256(os.uname().release.encode())
    for path in KMOD_SOURCES:
        h.update(path.name.encode() + path.read_bytes())
    stamp = out / ".digest"
    if not force and ko.exists() and stamp.exists() and stamp.read_text() == h.hexdigest():
        return ko, ""
    out.mkdir(parents=True, exist_ok=True)
    for path in KMOD_SOURCES:      # kbuild writes next to its sources: the checkout may be
        shutil.copyfile(path, out / path.name)      # read-only (the lab guest's is)
    if verbose:
        print(f"make -C {headers} M={out} modules", flush=True)
    proc = subprocess.run(["make", "-C", str(headers), f"M={out}", "modules"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not ko.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BuildError(f"the ava_vdev_pin module did not build:\n{tail}")
    stamp.write_text(h.hexdigest())
    return ko, ""
