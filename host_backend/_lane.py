"""The lane: plain info queries run from the ring in C (``_lane.c``), before Python.

The C side answers exactly what ``InfoQuery`` answers, from the same shapes, and hands
every other command back to the ring engine's Python path at the first one it does
not take.  This module builds and loads it, and describes to it what Python knows:

- the queries' shapes (each ``InfoQuery`` of the backend, so the spec stays the one
  source), and the ring layout (``protocols.device_abi``);
- a mirror of the handle table, which ``HandleTable``'s mutators keep (``mirror``);
- per ring, the DMA ranges its queue may reach (``LaneRing``).

The library is compiled once per source (cached by its digest beside the guest
runtime's build).  An executor cannot see that cache from its sandbox: the server
hands it the library in a sealed memfd, named by ``LANE_ENV``, as it hands the
prepared OpenCL declarations.  No compiler, or a library that will not load: the
lane is off (logged), and every call takes the Python path as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cffi import FFI

from protocols import device_abi as abi
from protocols.executor import LANE_ENV

from ._cl import address

if TYPE_CHECKING:
    from ._fastpath import InfoQuery

log = logging.getLogger("host_backend.lane")

SOURCE = Path(__file__).with_name("_lane.c")
#: ``AVA_HOST_LANE=0`` turns the lane off (every call takes the Python path).
LANE_OFF_ENV = "AVA_HOST_LANE"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread"]

_CDEF = """
struct lane_fn {
    void *cfunc;
    uint32_t nwords, param_at, size_at, out_at, size_ret_at;
    uint32_t nhandles, nscalars, nexcluded, nhooked, nfilled;
    uint32_t handle_at[4], handle_type[4];
    uint32_t scalar_at[4];
    uint64_t scalar_limit[4];
    uint64_t excluded[64];
    uint64_t hooked[4];
    int32_t filled_on[8];
};
struct lane_interval { uint64_t start, end; uint8_t *host; uint32_t readable, writable; };
struct lane_ring {
    uint8_t *ring;
    uint64_t slots, owner, owner_tag;
    uint32_t queue, nintervals;
    struct lane_interval *intervals;
    uint8_t *status_cell;
    uint32_t stop;
    uint32_t pad;
};
struct lane_layout {
    uint32_t tail_at, head_at, armed_at, header_size, command_size, completion_size;
};
struct lane;
struct lane *lane_new(const struct lane_layout *layout);
void lane_free(struct lane *L);
void lane_set_fn(struct lane *L, uint32_t opcode, const struct lane_fn *fn);
int64_t lane_inflight(struct lane *L);
uint64_t lane_entries(struct lane *L);
int lane_put(struct lane *L, uint64_t handle, uint64_t tag, uint32_t type, uint64_t owner,
             uint32_t shared, void *ptr);
void lane_drop(struct lane *L, uint64_t handle, uint64_t tag);
uint64_t lane_run(struct lane *L, const struct lane_ring *R, uint64_t head, uint64_t tail,
                  uint32_t counts_adjusted, uint64_t spin_ns);
"""

#: The object types a plain info query names (``InfoQuery.plain``: never a memory
#: object); the mirror keeps these only.
TYPES = {name: code for code, name in enumerate(
    ("cl_platform_id", "cl_device_id", "cl_context", "cl_command_queue", "cl_program",
     "cl_kernel", "cl_event", "cl_sampler"), start=1)}
_U64 = (1 << 64) - 1
SPIN_NS = 5_000

ffi = FFI()
ffi.cdef(_CDEF)


class LaneUnavailable(Exception):
    pass


def _cache_dir() -> Path:
    env = os.environ.get("AVA_BUILD_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "ava-vdev" / "build") / "lane"


def library_path() -> Path:
    """The compiled lane for this source (built now if it is not cached)."""
    source = SOURCE.read_bytes()
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(" ".join([cc, *CFLAGS]).encode() + source).hexdigest()[:16]
    out = _cache_dir() / f"libava_lane-{digest}.so"
    if out.exists():
        return out
    if shutil.which(cc) is None:
        raise LaneUnavailable(f"no C compiler ({cc}); install gcc and libc6-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        pass
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp.name, str(SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaneUnavailable(f"{cc} failed on {SOURCE.name}:\n{proc.stderr.strip()}")
        os.replace(tmp.name, out)          # whole, or not there: servers start together
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return out


_lib: Any = None


def load() -> Any:
    """The lane library: the server's (``LANE_ENV``) in an executor, else built here."""
    global _lib
    if _lib is None:
        path = os.environ.get(LANE_ENV) or str(library_path())
        try:
            _lib = ffi.dlopen(path)
        except OSError as exc:
            raise LaneUnavailable(f"cannot load the lane {path}: {exc}") from exc
    return _lib


class Lane:
    """One backend's lane: the query table, the handle mirror, the rings' views."""

    def __init__(self, lib: Any, queries: list[InfoQuery], cl: Any, cl_ffi: Any):
        self.lib = lib
        layout = ffi.new("struct lane_layout *", dict(
            tail_at=abi.RING_TAIL, head_at=abi.RING_HEAD, armed_at=abi.RING_IRQ_ARMED,
            header_size=abi.RING_HEADER_SIZE, command_size=abi.COMMAND_SIZE,
            completion_size=abi.COMPLETION_SIZE))
        self._lane = ffi.gc(lib.lane_new(layout), lib.lane_free)
        if self._lane == ffi.NULL:
            raise LaneUnavailable("out of memory")
        self._fns = [self._describe(q, cl, cl_ffi) for q in queries]
        for query, fn in zip(queries, self._fns, strict=True):
            lib.lane_set_fn(self._lane, query.fn.opcode, fn)
        self.broken = False
        #: How long the lane waits for a ring's next command after its last one: a
        #: program's next query, a microsecond or two after its reply, is then answered
        #: without the Python loop (which serves the other rings meanwhile, so short).
        self.spin_ns = SPIN_NS
        self._run = lib.lane_run
        #: The opcodes the lane may take: the ring engine reads a command's opcode and
        #: asks the lane only for these.
        self.opcodes = frozenset(q.fn.opcode for q in queries)

    @staticmethod
    def _describe(q: InfoQuery, cl: Any, cl_ffi: Any) -> Any:
        fn = ffi.new("struct lane_fn *")
        fn.cfunc = ffi.cast("void *", int(cl_ffi.cast("uintptr_t", getattr(cl, q.fn.name))))
        fn.nwords = len(q.fn.args)
        fn.param_at, fn.size_at, fn.out_at, fn.size_ret_at = (
            q._param_at, q._size_at, q._out_at, q._size_ret_at)
        fn.nhandles = len(q._handles)
        for i, (at, obj) in enumerate(q._handles):
            fn.handle_at[i], fn.handle_type[i] = at, TYPES[obj]
        fn.nscalars = len(q._scalars)
        for i, (at, limit) in enumerate(q._scalars):
            fn.scalar_at[i], fn.scalar_limit[i] = at, limit
        fn.nexcluded = len(q._excluded)
        for i, param in enumerate(sorted(q._excluded)):
            fn.excluded[i] = param
        fn.nhooked = len(q._hooked)
        for i, param in enumerate(sorted(q._hooked)):
            fn.hooked[i] = param
        fn.nfilled = len(q._filled_on)
        for i, status in enumerate(sorted(q._filled_on)):
            fn.filled_on[i] = status
        return fn

    # -- the handle table's mirror (HandleTable calls these under its owner's rules) ----

    def put(self, key: int, obj_type: str, ptr: Any, owner: int | None) -> None:
        code = TYPES.get(obj_type)
        if code is None:
            return
        if owner is not None and not 0 <= owner <= _U64:
            self.drop(key)
            return
        if self.lib.lane_put(self._lane, key & _U64, key >> 64, code, owner or 0,
                             owner is None, ffi.cast("void *", address(ptr))) != 0:
            self.broken = True          # an incomplete mirror: the lane stays off
            log.error("the lane's handle mirror is out of memory: the lane is off")

    def drop(self, key: int) -> None:
        self.lib.lane_drop(self._lane, key & _U64, key >> 64)

    @property
    def inflight(self) -> int:
        """Calls that looked their handles up and have not returned."""
        return int(self.lib.lane_inflight(self._lane))

    @property
    def entries(self) -> int:
        return int(self.lib.lane_entries(self._lane))

    # -- running -------------------------------------------------------------------------

    def run(self, ring: LaneRing, head: int, tail: int, counts_adjusted: bool) -> tuple[int, bool]:
        """Run the commands from ``head`` the lane takes (those to ``tail``, and those
        published within ``spin_ns`` of the last); (how many, whether to raise the
        queue's interrupt after the last)."""
        answer = self._run(self._lane, ring.c, head, tail, counts_adjusted, self.spin_ns)
        return answer >> 1, bool(answer & 1)


class LaneRing:
    """What the lane reads of one ring: its memory and the guest ranges its commands
    may name (the DMA map inside the queue's windows).  The buffers it points into
    are held here, so that a mapping stays while the lane may read it; the ring engine
    makes a new one whenever the map, the windows or the ring's view change."""

    def __init__(self, queue: int, owner: int, slots: int, ring_view: memoryview,
                 intervals: list[tuple[int, int, Any, int, bool, bool]],
                 status_cell: tuple[Any, int] | None):
        self._keep: list[Any] = []
        c = self.c = ffi.new("struct lane_ring *")
        ring = ffi.from_buffer(ring_view)
        self._keep.append(ring)
        c.ring = ffi.cast("uint8_t *", ring)
        c.slots = slots
        c.owner = owner
        c.owner_tag = (owner & 0xFFFFFFFF) + 1
        c.queue = queue
        cells = ffi.new("struct lane_interval[]", max(len(intervals), 1))
        self._keep.append(cells)
        for i, (start, end, buffer, offset, readable, writable) in enumerate(intervals):
            base = ffi.from_buffer(buffer)
            self._keep.append(base)
            cells[i].start, cells[i].end = start, end
            cells[i].host = ffi.cast("uint8_t *", base) + offset
            cells[i].readable, cells[i].writable = readable, writable
        c.nintervals = len(intervals)
        c.intervals = cells
        if status_cell is not None:
            page = ffi.from_buffer(status_cell[0])
            self._keep.append(page)
            c.status_cell = ffi.cast("uint8_t *", page) + status_cell[1]
        else:
            c.status_cell = ffi.NULL

    def stop(self) -> None:
        """The queue is disabled: a lane run on it returns (at its next command)."""
        self.c.stop = 1
