"""The tenant table: what the manager and every VM's executor share, in one file.

The manager (``vdev manager``) creates the table in its state directory and writes
each VM's configuration into a slot: weight, latency class, quotas.  Each VM's
executor maps the same file (the fd is inherited from its server) and writes only
its own slot's scheduler state and statistics.  Admission reads the others' slots
straight from memory, as HAMi's shared counters are read: no message and no round
trip per command.  Everything is a naturally aligned 64-bit (or 32-bit) word, so
one word is never seen half written; a reader may see one slot's fields from two
moments, which the scheduler tolerates (it re-reads every time it decides).

Times are CLOCK_MONOTONIC nanoseconds (one clock for every process on the host).
Virtual time is device nanoseconds divided by the weight: the VM whose virtual
time is lowest is the one furthest behind its share.
"""

from __future__ import annotations

import enum

from construct import Array, Const, Float64l, Int32ul, Int64ul, PaddedString, Struct

from .device_abi import _offsets

TABLE_MAGIC = 0x54564156        # "VAVT"
TABLE_VERSION = 1
MAX_TENANTS = 64
HEADER_SIZE = 64
SLOT_SIZE = 2048


class LatencyClass(enum.IntEnum):
    BATCH = 0
    INTERACTIVE = 1


class CallClass(enum.IntEnum):
    """What a call's latency histogram it lands in (``vdev stats``, Prometheus)."""

    INFO = 0        # clGet*Info and other answers from the implementation
    ENQUEUE = 1     # a command for the device (kernel, transfer, fill, marker)
    SYNC = 2        # a call that waits (clFinish, clWaitForEvents, blocking transfers)
    OTHER = 3       # creation, release, build, diagnostics


#: Histogram bucket upper bounds in microseconds: 1, 2, 4, ... 2**26 (67 s), then +Inf.
HISTOGRAM_BUCKETS = 28
BUCKET_BOUNDS_US = tuple(1 << i for i in range(HISTOGRAM_BUCKETS - 1))

Header = Struct(
    "magic" / Const(TABLE_MAGIC, Int32ul),
    "version" / Const(TABLE_VERSION, Int32ul),
    "slots" / Int32ul,
    "slot_size" / Int32ul,
    "epoch" / Int64ul,              # bumped by the manager at each configuration change
)

#: One VM.  The first block is the manager's (written when the configuration is
#: loaded or changed); the rest is its executor's.
Slot = Struct(
    # -- configuration (manager) ---------------------------------------------------
    "name" / PaddedString(32, "ascii"),
    "in_use" / Int32ul,
    "generation" / Int32ul,         # bumped at each change of this VM's configuration
    "weight" / Int32ul,
    "latency_class" / Int32ul,      # LatencyClass
    "memory_quota" / Int64ul,       # bytes of live memory objects; 0: no quota
    "objects_quota" / Int64ul,      # live objects; 0: no quota
    "inflight_quota" / Int64ul,     # device commands admitted and not finished; 0: none
    "rate_quota" / Float64l,        # commands per second; 0: none
    "compute_units" / Int32ul,      # 0: the whole device
    "restarts" / Int32ul,           # the manager's count of this VM's server restarts
    # -- scheduler state (executor) ------------------------------------------------
    "vtime" / Float64l,             # virtual device time (ns / weight)
    "device_ns" / Int64ul,          # device time charged, from event profiling
    "outstanding" / Int64ul,        # device commands admitted and not finished
    "waiting" / Int64ul,            # 1 while a command waits for admission
    "active_until" / Int64ul,       # counts as having work until then (monotonic ns)
    "executor_pid" / Int64ul,
    "estimate_ns" / Int64ul,        # running mean of a device command's time
    # -- statistics (executor) -----------------------------------------------------
    "calls" / Int64ul,              # every command the rings carried
    "commands" / Int64ul,           # device commands (kernels, transfers, ...)
    "bytes_moved" / Int64ul,        # bytes written to and read from the device
    "live_objects" / Int64ul,
    "live_bytes" / Int64ul,
    "refused_memory" / Int64ul,     # allocations refused by the memory quota
    "refused_objects" / Int64ul,    # creations refused by the object quota
    "throttled_inflight" / Int64ul,  # commands that waited for the in-flight quota
    "throttled_rate" / Int64ul,     # commands slowed to the command rate
    "admission_wait_ns" / Int64ul,  # time commands waited for their turn
    "mispredicted" / Int64ul,       # posted calls whose host status was not CL_SUCCESS
    "latency_sum_ns" / Array(len(CallClass), Int64ul),
    "latency_buckets" / Array(len(CallClass) * HISTOGRAM_BUCKETS, Int64ul),
)

HEADER_OFFSETS = _offsets(Header)
SLOT_OFFSETS = _offsets(Slot)
TABLE_SIZE = HEADER_SIZE + MAX_TENANTS * SLOT_SIZE
#: Where the executor-written block starts: a new executor zeroes its scheduler state.
SCHED_FIELDS = ("vtime", "device_ns", "outstanding", "waiting", "active_until",
                "executor_pid", "estimate_ns")
STAT_FIELDS = ("calls", "commands", "bytes_moved", "live_objects", "live_bytes",
               "refused_memory", "refused_objects", "throttled_inflight", "throttled_rate",
               "admission_wait_ns", "mispredicted")
assert Header.sizeof() <= HEADER_SIZE and Slot.sizeof() <= SLOT_SIZE
assert all(off % 4 == 0 for off in SLOT_OFFSETS.values())
assert all(SLOT_OFFSETS[f] % 8 == 0 for f in (*SCHED_FIELDS, *STAT_FIELDS, "memory_quota",
                                             "rate_quota", "latency_sum_ns", "latency_buckets"))


def slot_offset(index: int) -> int:
    return HEADER_SIZE + index * SLOT_SIZE


def bucket_of(latency_ns: int) -> int:
    """The histogram bucket of a latency: the first bound it does not exceed."""
    us = (latency_ns + 999) // 1000
    return min((us - 1).bit_length() if us > 1 else 0, HISTOGRAM_BUCKETS - 1)


__all__ = ["BUCKET_BOUNDS_US", "HEADER_OFFSETS", "HEADER_SIZE", "HISTOGRAM_BUCKETS",
           "MAX_TENANTS", "SCHED_FIELDS", "SLOT_OFFSETS", "SLOT_SIZE", "STAT_FIELDS",
           "TABLE_SIZE", "CallClass", "Header", "LatencyClass", "Slot", "bucket_of",
           "slot_offset"]
