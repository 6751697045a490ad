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
from collections.abc import Iterator
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
#: How long a waiting command sleeps between looks at the table.
POLL_S = 100e-6
_EPOCH = tp.HEADER_OFFSETS["epoch"] // 8


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
        self._fields: dict[str, tuple[memoryview, int]] = {}
        floats = {sub.name for sub in tp.Slot.subcons
                  if getattr(sub.subcon, "fmtstr", "").endswith("d")}
        for sub in tp.Slot.subcons:
            if sub.name in ("name", "latency_sum_ns", "latency_buckets"):
                continue
            kind = "d" if sub.name in floats else {8: "Q", 4: "I"}[sub.sizeof()]
            view = {"Q": self._q, "I": self._i, "d": self._d}[kind]
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

    def add_latency(self, klass: int, latency_ns: int) -> None:
        self._q[self._sums + klass] += latency_ns
        self._q[self._buckets + klass * tp.HISTOGRAM_BUCKETS + tp.bucket_of(latency_ns)] += 1

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
        self._lock = threading.Condition()
        self._local = threading.local()
        self._rate_at = 0.0            # the command rate's virtual clock (monotonic s)
        self._last_progress = time.monotonic_ns()
        self.kernel_running = False    # the watchdog's last sample
        for key in (*tp.SCHED_FIELDS, "live_objects", "live_bytes"):
            self.me[key] = 0
        self.me["executor_pid"] = os.getpid()
        self._others = [table.slot(i) for i in range(tp.MAX_TENANTS) if i != index]

    @property
    def settings(self) -> TenantSettings:
        return self.me.settings()

    def lower_priority_if_batch(self) -> None:
        """A batch VM's executor yields the host's cores to everyone else's.

        On a device whose compute units are the host's cores (PoCL), the OS
        scheduler is the one thing that can preempt a running kernel: with its
        threads at SCHED_BATCH and nice 19, a batch VM's kernels run in the time
        interactive VMs leave (about 1.5 % of a core while they want it all).  On
        a GPU it only touches the executor's own host threads.  It applies to
        the executor started after a class change (a thread cannot raise its own
        priority back without privileges)."""
        if self.me["latency_class"] != LatencyClass.BATCH:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        except OSError as exc:
            log.warning("cannot lower a batch VM's CPU priority: %s", exc)

    # -- admission (ring threads) --------------------------------------------------------

    def admit_call(self) -> None:
        """Every command: the command rate.  Slows the caller, never fails it."""
        rate = self.me["rate_quota"]
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
        me = self.me
        started = time.monotonic_ns()
        waited = False
        interactive = me["latency_class"] == LatencyClass.INTERACTIVE
        while True:
            now = time.monotonic_ns()
            with self._lock:
                verdict = self._verdict(now, interactive)
                if verdict is None:
                    estimate = me["estimate_ns"]
                    me["outstanding"] += 1
                    me["vtime"] += estimate / max(me["weight"], 1)
                    me["active_until"] = now + ACTIVE_NS
                    if waited:
                        me["waiting"] = 0
                        me["admission_wait_ns"] += now - started
                    self._local.pending = estimate
                    return
                if not waited:
                    waited = True
                    if verdict == "inflight":
                        me["throttled_inflight"] += 1
                    me["waiting"] = 1
                    me["active_until"] = now + ACTIVE_NS
                if verdict in ("inflight", "bound"):
                    self._lock.wait(0.01)     # a completion of our own ends it early
                    continue
            time.sleep(POLL_S)

    def _verdict(self, now: int, interactive: bool) -> str | None:
        """None: admit now; else what it waits for (called under the lock)."""
        me = self.me
        outstanding = me["outstanding"]
        stalled = outstanding and now - self._last_progress > STALL_NS and \
            not self.kernel_running
        quota = me["inflight_quota"]
        if quota and outstanding >= quota and not stalled:
            return "inflight"
        vtime = me["vtime"]
        lowest = None
        interactive_busy = interactive_waiting = False
        for other in self._others:
            if not other["in_use"] or other["active_until"] <= now:
                continue
            if other["latency_class"] == LatencyClass.INTERACTIVE:
                interactive_busy = True
                interactive_waiting = interactive_waiting or bool(other["waiting"])
            v = other["vtime"]
            lowest = v if lowest is None or v < lowest else lowest
        if lowest is None:
            return None                 # alone: work-conserving, nothing to wait for
        if me["active_until"] <= now and vtime < lowest - SLACK_NS:
            # Back from idle: no credit for the time away.
            me["vtime"] = vtime = lowest - SLACK_NS
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
        me = self.me
        me["commands"] += 1
        if nbytes:
            me["bytes_moved"] += nbytes

    def settle(self) -> None:
        """After a device command ran: one that never reached the implementation
        (an error status) gives its admission back."""
        estimate = getattr(self._local, "pending", None)
        if estimate is None:
            return
        self._local.pending = None
        with self._lock:
            me = self.me
            me["outstanding"] = max(me["outstanding"] - 1, 0)
            me["vtime"] -= estimate / max(me["weight"], 1)
            self._lock.notify_all()

    def completed(self, device_ns: int, estimate_ns: int) -> None:
        """A device command finished after ``device_ns`` on the device (charged at
        ``estimate_ns`` when it was admitted)."""
        now = time.monotonic_ns()
        with self._lock:
            me = self.me
            me["outstanding"] = max(me["outstanding"] - 1, 0)
            me["device_ns"] += device_ns
            me["vtime"] += (device_ns - estimate_ns) / max(me["weight"], 1)
            # A running mean over about the last 8 commands.
            me["estimate_ns"] = (me["estimate_ns"] * 7 + device_ns) // 8
            me["active_until"] = now + ACTIVE_NS
            self._last_progress = now
            self._lock.notify_all()

    def pending_estimate(self) -> int:
        """What the command being issued on this thread was charged at admission."""
        return int(getattr(self._local, "pending", 0) or 0)

    # -- statistics -------------------------------------------------------------------

    def record(self, klass: int, latency_ns: int) -> None:
        with self._lock:
            self.me["calls"] += 1
            self.me.add_latency(klass, latency_ns)

    def tick(self, kernel_running: bool, objects: int, nbytes: int) -> None:
        """The watchdog's beat: a VM whose kernel is running still has work."""
        self.kernel_running = kernel_running
        me = self.me
        if kernel_running and me["outstanding"]:
            me["active_until"] = time.monotonic_ns() + ACTIVE_NS
        me["live_objects"] = objects
        me["live_bytes"] = nbytes

    def refused(self, which: str) -> None:
        key = {"memory": "refused_memory", "objects": "refused_objects"}[which]
        with self._lock:
            self.me[key] += 1
