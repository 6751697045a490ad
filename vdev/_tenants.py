"""The tenant table (``protocols.tenants``) as the manager and the executors use it.

``TenantTable`` maps the file.  The manager writes each VM's configuration into a
slot and reads everything back for ``vdev stats`` and Prometheus; an executor
wraps its own slot in a ``TenantScheduler``, which admits the VM's device commands
and keeps its statistics, reading the other slots straight from shared memory.

Admission (the README's "Sharing the device among VMs" says the same for
operators).  Every device command (kernel launch, transfer, fill, copy) of a VM
is admitted before it reaches the implementation, on the thread that runs it:

- **Weighted fair share, by virtual time.**  A VM's virtual time grows by each
  command's device time (OpenCL event profiling, charged at completion; an
  estimate is charged at admission and corrected then) divided by its weight.  A
  command is admitted while its VM's virtual time is within ``SLACK_NS`` of the
  lowest among the other VMs that have work: the VM furthest behind its share
  always goes, the others wait for it to catch up.  This is start-time fair
  queueing with device time as the cost, which needs no central queue: each VM
  decides for itself from the shared counters.
- **Work-conserving.**  Only VMs with work count: commands admitted and not
  finished that are running or finishing, or a command waiting.  A VM that goes
  idle stops counting within ``ACTIVE_NS``; when it comes back its virtual time
  is brought up to the others' (less the slack), so idleness banks no credit.
- **Interactive first.**  A batch VM admits nothing while an interactive VM has a
  command waiting, and while any interactive VM has work a batch VM has at most
  one device command outstanding: an interactive command waits behind at most one
  batch kernel per batch VM (kernels cannot be preempted).
- **Quotas that slow, never fail:** commands per second (a virtual clock that
  allows ``RATE_BURST_S`` of burst) and device commands in flight.

Waits that depend on the VM's own outstanding commands (the in-flight quota, the
batch bound) end when those commands stop making progress for ``STALL_NS``: a
command enqueued behind a user event that a later call sets would otherwise wait
for ever, where natively the enqueue returns at once.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from protocols import tenants as tp
from protocols.tenants import CallClass, LatencyClass

log = logging.getLogger("vdev.tenants")

#: Virtual-time lead a VM may have over the one furthest behind (ns of device time
#: at weight 1): the scheduler's quantum.
SLACK_NS = 4_000_000
#: A VM counts as having work this long after its last admission or completion.
ACTIVE_NS = 30_000_000
#: Own outstanding commands that neither finish nor run for this long hold nothing back.
STALL_NS = 100_000_000
#: The command rate's allowance for bursts.
RATE_BURST_S = 0.02
#: A batch VM's executor's nice value (see ``set_cpu_priority``).
BATCH_NICE = 19
#: How long a waiting command sleeps between looks at the table.
POLL_S = 100e-6
_EPOCH = tp.HEADER_OFFSETS["epoch"] // 8


def _word(name: str, size: int = 8) -> int:
    """A slot field's index in the slot's 8-byte (or 4-byte) words."""
    offset = tp.SLOT_OFFSETS[name]
    assert offset % size == 0
    return offset // size


# The hot path's fields, as word indices (one aligned access each; no lookups).
_IN_USE, _WEIGHT, _CLASS = _word("in_use", 4), _word("weight", 4), _word("latency_class", 4)
_INFLIGHT, _RATE = _word("inflight_quota"), _word("rate_quota")
_VTIME, _DEVICE_NS, _OUTSTANDING = _word("vtime"), _word("device_ns"), _word("outstanding")
_WAITING, _ACTIVE, _ESTIMATE = _word("waiting"), _word("active_until"), _word("estimate_ns")
_CALLS, _COMMANDS, _MOVED = _word("calls"), _word("commands"), _word("bytes_moved")
_SUMS, _BUCKETS = _word("latency_sum_ns"), _word("latency_buckets")
_INTERACTIVE = int(LatencyClass.INTERACTIVE)


@dataclass
class TenantSettings:
    """A VM's configuration as the table holds it (0: no quota)."""

    name: str
    weight: int = 1
    latency_class: LatencyClass = LatencyClass.BATCH
    memory_quota: int = 0
    objects_quota: int = 0
    inflight_quota: int = 0
    rate_quota: float = 0.0
    compute_units: int = 0


class SlotView:
    """Typed word access to one slot: ``view["outstanding"] += 1`` is two aligned
    8-byte accesses, never a torn value."""

    def __init__(self, mm: mmap.mmap, index: int):
        base = tp.slot_offset(index)
        self.index = index
        self.raw = memoryview(mm)[base:base + tp.SLOT_SIZE]
        self._q = self.raw.cast("Q")
        self._i = self.raw.cast("I")
        self._d = self.raw.cast("d")
        self._fields: dict[str, tuple[memoryview[Any], int]] = {}
        floats = {sub.name for sub in tp.Slot.subcons
                  if getattr(sub.subcon, "fmtstr", "").endswith("d")}
        for sub in tp.Slot.subcons:
            if sub.name in ("name", "latency_sum_ns", "latency_buckets"):
                continue
            kind = "d" if sub.name in floats else {8: "Q", 4: "I"}[sub.sizeof()]
            views: dict[str, memoryview[Any]] = {"Q": self._q, "I": self._i, "d": self._d}
            view = views[kind]
            self._fields[sub.name] = (view, tp.SLOT_OFFSETS[sub.name] // view.itemsize)
        self._sums = tp.SLOT_OFFSETS["latency_sum_ns"] // 8
        self._buckets = tp.SLOT_OFFSETS["latency_buckets"] // 8

    def __getitem__(self, name: str) -> Any:
        view, at = self._fields[name]
        return view[at]

    def __setitem__(self, name: str, value: Any) -> None:
        view, at = self._fields[name]
        view[at] = value

    @property
    def name(self) -> str:
        return bytes(self.raw[:32]).rstrip(b"\0").decode("ascii", "replace")

    def set_name(self, name: str) -> None:
        self.raw[:32] = name.encode("ascii").ljust(32, b"\0")

    def histogram(self, klass: int) -> tuple[list[int], int]:
        """(counts per bucket, sum of latencies in ns) of one call class."""
        start = self._buckets + klass * tp.HISTOGRAM_BUCKETS
        return list(self._q[start:start + tp.HISTOGRAM_BUCKETS]), self._q[self._sums + klass]

    def settings(self) -> TenantSettings:
        return TenantSettings(self.name, self["weight"], LatencyClass(self["latency_class"]),
                              self["memory_quota"], self["objects_quota"],
                              self["inflight_quota"], self["rate_quota"], self["compute_units"])

    def snapshot(self) -> dict[str, Any]:
        """Every field of the slot (statistics included), for stats and metrics."""
        out: dict[str, Any] = {name: self[name] for name in self._fields}
        out["name"] = self.name
        out["latency_class"] = LatencyClass(out["latency_class"]).name.lower()
        out["histograms"] = {c.name.lower(): self.histogram(c) for c in CallClass}
        return out


class TenantTable:
    """The mapped table file (see ``protocols.tenants``)."""

    def __init__(self, fd: int, *, owner: bool = False):
        self.fd = fd
        self._mm = mmap.mmap(fd, tp.TABLE_SIZE, mmap.MAP_SHARED)
        self._head = memoryview(self._mm)[:tp.HEADER_SIZE].cast("Q")
        header = tp.Header.parse(bytes(self._mm[:tp.Header.sizeof()])) if not owner else None
        if header is not None and (header.slots != tp.MAX_TENANTS
                                   or header.slot_size != tp.SLOT_SIZE):
            raise ValueError("the tenant table's layout is not this version's")

    @classmethod
    def create(cls, path: str) -> TenantTable:
        """A fresh table at ``path`` (mode 0600), every slot free."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, tp.TABLE_SIZE)
        table = cls(fd, owner=True)
        table._mm[:tp.Header.sizeof()] = tp.Header.build(
            dict(slots=tp.MAX_TENANTS, slot_size=tp.SLOT_SIZE, epoch=0))
        return table

    @classmethod
    def open(cls, path: str) -> TenantTable:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return cls(fd)

    def slot(self, index: int) -> SlotView:
        if not 0 <= index < tp.MAX_TENANTS:
            raise ValueError(f"tenant slot {index} is not 0..{tp.MAX_TENANTS - 1}")
        return SlotView(self._mm, index)

    def slots_in_use(self) -> Iterator[SlotView]:
        for i in range(tp.MAX_TENANTS):
            view = self.slot(i)
            if view["in_use"]:
                yield view

    def configure(self, index: int, settings: TenantSettings) -> None:
        """Write a VM's configuration (the manager; at start and at each change)."""
        view = self.slot(index)
        fresh = not view["in_use"] or view.name != settings.name
        if fresh:
            view.raw[:] = bytes(tp.SLOT_SIZE)
            view.set_name(settings.name)
        for key in ("weight", "memory_quota", "objects_quota", "inflight_quota",
                    "rate_quota", "compute_units"):
            view[key] = getattr(settings, key)
        view["latency_class"] = int(settings.latency_class)
        view["generation"] += 1
        view["in_use"] = 1
        self._head[_EPOCH] += 1

    def free(self, index: int) -> None:
        self.slot(index)["in_use"] = 0
        self._head[_EPOCH] += 1

    @property
    def epoch(self) -> int:
        return int(self._head[_EPOCH])

    def close(self) -> None:
        self._head.release()
        self._mm.close()
        os.close(self.fd)


class TenantScheduler:
    """One VM's side of the table, in its executor: admission and statistics.

    Called from the executor's ring threads (``admit``, ``record``), the OpenCL
    implementation's callback threads (``issued``, ``completed``) and its
    watchdog (``tick``)."""

    def __init__(self, table: TenantTable, index: int):
        self.table = table
        self.index = index
        self.me = table.slot(index)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._rate_at = 0.0            # the command rate's virtual clock (monotonic s)
        self._last_progress = time.monotonic_ns()
        self.kernel_running = False    # the watchdog's last sample
        for key in (*tp.SCHED_FIELDS, "live_objects", "live_bytes"):
            self.me[key] = 0
        self.me["executor_pid"] = os.getpid()
        self._i, self._q, self._d = self.me._i, self.me._q, self.me._d
        self._epoch = -1
        #: The backend's: charges the device commands that finished (None: each one
        #: is charged by a call to ``completed`` on its own).
        self.reaper: Callable[[], int] | None = None
        self._peers: list[tuple[memoryview[int], memoryview[int], memoryview[float]]] = []

    @property
    def settings(self) -> TenantSettings:
        return self.me.settings()

    def set_cpu_priority(self) -> None:
        """The executor's CPU priority follows the VM's latency class.

        On a device whose compute units are the host's cores (PoCL), the OS
        scheduler is the one thing that can preempt a running kernel: a batch VM's
        executor runs at SCHED_BATCH and nice 19, so its kernels take the time that
        interactive VMs (at the server's own priority) leave.  On a GPU this
        touches only the executors' own host threads.  A class changed at runtime
        applies to the VM's next executor: a thread cannot raise its own priority
        back without privileges."""
        try:
            if self.me["latency_class"] == LatencyClass.BATCH:
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, 0, BATCH_NICE)
        except OSError as exc:
            log.info("the executor's CPU priority stays as it is: %s", exc)

    # -- admission (ring threads) --------------------------------------------------------

    def admit_call(self) -> None:
        """Every command: the command rate.  Slows the caller, never fails it."""
        rate = self._d[_RATE]
        if rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            at = max(self._rate_at, now - RATE_BURST_S) + 1.0 / rate
            self._rate_at = at
        if at > now:
            self.me["throttled_rate"] += 1
            time.sleep(at - now)

    def admit_device(self) -> None:
        """A device command: wait for this VM's turn (see the module's docstring)."""
        q, d = self._q, self._d
        started = time.monotonic_ns()
        waited = False
        interactive = self._i[_CLASS] == _INTERACTIVE
        reap = self.reaper
        while True:
            if reap is not None and q[_OUTSTANDING]:
                reap()                  # charge what finished: it may be our turn now
            now = time.monotonic_ns()
            with self._lock:
                verdict = self._verdict(now, interactive)
                if verdict is None:
                    estimate = q[_ESTIMATE]
                    q[_OUTSTANDING] += 1
                    d[_VTIME] += estimate / max(self._i[_WEIGHT], 1)
                    q[_ACTIVE] = now + ACTIVE_NS
                    if waited:
                        q[_WAITING] = 0
                        self.me["admission_wait_ns"] += now - started
                    self._local.pending = estimate
                    return
                if not waited:
                    waited = True
                    if verdict == "inflight":
                        self.me["throttled_inflight"] += 1
                    q[_WAITING] = 1
                    q[_ACTIVE] = now + ACTIVE_NS
            time.sleep(POLL_S)

    def _peer_words(self) -> list[tuple[memoryview[int], memoryview[int], memoryview[float]]]:
        """The other VMs' slots in use, as word views; looked up again only when the
        manager changed the table (its epoch)."""
        epoch = self.table.epoch
        if epoch != self._epoch:
            self._epoch = epoch
            self._peers = [(view._i, view._q, view._d) for view in
                           (self.table.slot(i) for i in range(tp.MAX_TENANTS)
                            if i != self.index) if view["in_use"]]
        return self._peers

    def _verdict(self, now: int, interactive: bool) -> str | None:
        """None: admit now; else what it waits for (called under the lock)."""
        q, d = self._q, self._d
        outstanding = q[_OUTSTANDING]
        stalled = outstanding and now - self._last_progress > STALL_NS and \
            not self.kernel_running
        quota = q[_INFLIGHT]
        if quota and outstanding >= quota and not stalled:
            return "inflight"
        lowest = None
        interactive_busy = interactive_waiting = False
        for pi, pq, pd in self._peer_words():
            if not pi[_IN_USE] or pq[_ACTIVE] <= now:
                continue
            if pi[_CLASS] == _INTERACTIVE:
                interactive_busy = True
                interactive_waiting = interactive_waiting or bool(pq[_WAITING])
            v = pd[_VTIME]
            if lowest is None or v < lowest:
                lowest = v
        if lowest is None:
            return None                 # alone: work-conserving, nothing to wait for
        vtime = d[_VTIME]
        if q[_ACTIVE] <= now and vtime < lowest - SLACK_NS:
            # Back from idle: no credit for the time away.
            d[_VTIME] = vtime = lowest - SLACK_NS
        if not interactive:
            if interactive_waiting:
                return "interactive"
            if interactive_busy and outstanding >= 1 and not stalled:
                return "bound"
        if vtime > lowest + SLACK_NS:
            return "share"
        return None

    def issued(self, nbytes: int) -> None:
        """The command reached the implementation (its completion will be charged)."""
        self._local.pending = None
        q = self._q
        with self._lock:
            q[_COMMANDS] += 1
            if nbytes:
                q[_MOVED] += nbytes

    def settle(self) -> None:
        """After a device command ran: one that never reached the implementation
        (an error status) gives its admission back."""
        estimate = getattr(self._local, "pending", None)
        if estimate is None:
            return
        self._local.pending = None
        with self._lock:
            q = self._q
            q[_OUTSTANDING] = max(q[_OUTSTANDING] - 1, 0)
            self._d[_VTIME] -= estimate / max(self._i[_WEIGHT], 1)

    def completed(self, device_ns: int, estimate_ns: int) -> None:
        """A device command finished after ``device_ns`` on the device (charged at
        ``estimate_ns`` when it was admitted)."""
        now = time.monotonic_ns()
        q = self._q
        with self._lock:
            q[_OUTSTANDING] = max(q[_OUTSTANDING] - 1, 0)
            q[_DEVICE_NS] += device_ns
            self._d[_VTIME] += (device_ns - estimate_ns) / max(self._i[_WEIGHT], 1)
            # A running mean over about the last 8 commands.
            q[_ESTIMATE] = (q[_ESTIMATE] * 7 + device_ns) // 8
            q[_ACTIVE] = now + ACTIVE_NS
            self._last_progress = now

    def pending_estimate(self) -> int:
        """What the command being issued on this thread was charged at admission."""
        return int(getattr(self._local, "pending", 0) or 0)

    # -- statistics -------------------------------------------------------------------

    def record(self, klass: int, latency_ns: int) -> None:
        q = self._q
        with self._lock:
            q[_CALLS] += 1
            q[_SUMS + klass] += latency_ns
            q[_BUCKETS + klass * tp.HISTOGRAM_BUCKETS + tp.bucket_of(latency_ns)] += 1

    def tick(self, kernel_running: bool, objects: int, nbytes: int) -> None:
        """The watchdog's beat: what finished is charged, and a VM whose kernel is
        running still has work."""
        if self.reaper is not None:
            self.reaper()
        self.kernel_running = kernel_running
        me = self.me
        if kernel_running and me["outstanding"]:
            me["active_until"] = time.monotonic_ns() + ACTIVE_NS
        me["live_objects"] = objects
        me["live_bytes"] = nbytes

    def mispredicted(self) -> None:
        with self._lock:
            self.me["mispredicted"] += 1

    def refused(self, which: str) -> None:
        key = {"memory": "refused_memory", "objects": "refused_objects"}[which]
        with self._lock:
            self.me[key] += 1
