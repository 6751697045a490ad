"""The tenant table and the admission rules, without OpenCL: two or three VMs'
schedulers on one table in this process, with device time charged by hand."""

from __future__ import annotations

import threading
import time

import pytest

from protocols import tenants as tp
from protocols.tenants import CallClass, LatencyClass
from vdev import _metrics
from vdev import _tenants as tn
from vdev._tenants import TenantScheduler, TenantSettings, TenantTable


@pytest.fixture
def table(tmp_path):
    t = TenantTable.create(str(tmp_path / "tenants"))
    yield t


def open_scheduler(table: TenantTable, slot: int) -> TenantScheduler:
    return TenantScheduler(TenantTable.open(table_path(table)), slot)


def table_path(table: TenantTable) -> str:
    import os
    return os.readlink(f"/proc/self/fd/{table.fd}")


def test_layout_is_aligned_and_fits():
    assert tp.Slot.sizeof() <= tp.SLOT_SIZE
    assert tp.TABLE_SIZE == tp.HEADER_SIZE + tp.MAX_TENANTS * tp.SLOT_SIZE
    for name in (*tp.SCHED_FIELDS, *tp.STAT_FIELDS):
        assert tp.SLOT_OFFSETS[name] % 8 == 0, name


def test_bucket_bounds():
    assert tp.bucket_of(0) == 0
    assert tp.bucket_of(1000) == 0          # 1 us: the first bucket (le 1 us)
    assert tp.bucket_of(1001) == 1          # just over: le 2 us
    assert tp.bucket_of(4000) == 2
    assert tp.bucket_of(4001) == 3
    assert tp.bucket_of(10**12) == tp.HISTOGRAM_BUCKETS - 1


def test_configuration_reaches_another_mapping(table):
    table.configure(3, TenantSettings("alpha", weight=7, latency_class=LatencyClass.INTERACTIVE,
                                      memory_quota=1 << 30, objects_quota=10,
                                      inflight_quota=4, rate_quota=2.5, compute_units=1))
    other = TenantTable.open(table_path(table))
    got = other.slot(3).settings()
    assert got == TenantSettings("alpha", 7, LatencyClass.INTERACTIVE, 1 << 30, 10, 4, 2.5, 1)
    generation = other.slot(3)["generation"]
    table.configure(3, TenantSettings("alpha", weight=2))
    assert other.slot(3)["weight"] == 2 and other.slot(3)["generation"] == generation + 1
    assert [s.name for s in other.slots_in_use()] == ["alpha"]


def test_a_bad_table_is_refused(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * tp.TABLE_SIZE)
    import construct
    with pytest.raises((ValueError, construct.ConstructError)):
        TenantTable.open(str(path))


def test_alone_is_admitted_at_once(table):
    table.configure(0, TenantSettings("a"))
    a = open_scheduler(table, 0)
    t0 = time.monotonic()
    for _ in range(100):
        a.admit_device()
        a.issued(0)
        a.completed(10_000_000, 0)
    assert time.monotonic() - t0 < 1.0
    assert a.me["device_ns"] == 100 * 10_000_000 and a.me["outstanding"] == 0
    assert a.me["commands"] == 100


def _busy(s: TenantScheduler) -> None:
    """Make ``s`` count as a VM with work (a command of its own outstanding)."""
    s.me["active_until"] = time.monotonic_ns() + 10**10
    s.me["outstanding"] = 1


def test_a_vm_ahead_of_its_share_waits_for_the_one_behind(table):
    table.configure(0, TenantSettings("a", weight=1))
    table.configure(1, TenantSettings("b", weight=1))
    a, b = open_scheduler(table, 0), open_scheduler(table, 1)
    _busy(b)
    a.me["vtime"] = b.me["vtime"] + tn.SLACK_NS * 3      # a is well ahead
    admitted = threading.Event()

    def go():
        a.admit_device()
        admitted.set()
    t = threading.Thread(target=go)
    t.start()
    assert not admitted.wait(0.2), "a VM ahead of its share was admitted"
    assert a.me["waiting"] == 1
    b.me["vtime"] = a.me["vtime"]                         # b catches up
    assert admitted.wait(2.0)
    t.join()
    assert a.me["waiting"] == 0 and a.me["admission_wait_ns"] >= 150_000_000


def test_an_idle_vm_holds_nobody_back_and_banks_no_credit(table):
    table.configure(0, TenantSettings("a"))
    table.configure(1, TenantSettings("b"))
    a, b = open_scheduler(table, 0), open_scheduler(table, 1)
    a.me["vtime"] = 10**12              # far ahead of b, but b has no work: work-conserving
    t0 = time.monotonic()
    a.admit_device()
    assert time.monotonic() - t0 < 0.1
    a.settle()
    # b comes back after idling: its virtual time is brought up to a's, less the slack.
    _busy(a)
    b.admit_device()
    assert b.me["vtime"] >= a.me["vtime"] - tn.SLACK_NS


def test_weights_split_device_time(table):
    """Two VMs charging equal commands as fast as admitted: device time follows 1:3."""
    table.configure(0, TenantSettings("a", weight=1))
    table.configure(1, TenantSettings("b", weight=3))
    scheds = [open_scheduler(table, 0), open_scheduler(table, 1)]
    stop = time.monotonic() + 1.5

    def run(s):
        while time.monotonic() < stop:
            s.admit_device()
            s.issued(0)
            time.sleep(0.001)                       # the "kernel"
            s.completed(2_000_000, s.me["estimate_ns"])
    threads = [threading.Thread(target=run, args=(s,)) for s in scheds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = (s.me["device_ns"] for s in scheds)
    assert abs(a / (a + b) - 0.25) < 0.05, (a, b)


def test_batch_waits_while_interactive_waits_and_is_bounded(table):
    table.configure(0, TenantSettings("i", latency_class=LatencyClass.INTERACTIVE))
    table.configure(1, TenantSettings("b", latency_class=LatencyClass.BATCH))
    i, b = open_scheduler(table, 0), open_scheduler(table, 1)
    i.me["active_until"] = time.monotonic_ns() + 10**10
    i.me["waiting"] = 1
    assert b._verdict(time.monotonic_ns(), False) == "interactive"
    i.me["waiting"] = 0
    b.me["outstanding"] = 1
    b._last_progress = time.monotonic_ns()
    assert b._verdict(time.monotonic_ns(), False) == "bound"
    # Its outstanding command makes no progress: it holds nothing back (no deadlock
    # behind a command that waits for a user event a later call sets).
    b._last_progress = time.monotonic_ns() - 2 * tn.STALL_NS
    assert b._verdict(time.monotonic_ns(), False) is None
    # The interactive one is never held by the batch bound.
    _busy(b)
    assert i._verdict(time.monotonic_ns(), True) is None


def test_inflight_quota_waits_for_a_completion(table):
    table.configure(0, TenantSettings("a", inflight_quota=2))
    a = open_scheduler(table, 0)
    a.admit_device()
    a.issued(0)
    a.admit_device()
    a.issued(0)
    done = threading.Event()

    def third():
        a.admit_device()
        done.set()
    t = threading.Thread(target=third)
    t.start()
    assert not done.wait(0.05)
    a.completed(1000, 0)
    assert done.wait(1.0)
    t.join()
    assert a.me["throttled_inflight"] == 1 and a.me["outstanding"] == 2


def test_command_rate_slows_not_fails(table):
    table.configure(0, TenantSettings("a", rate_quota=200.0))
    a = open_scheduler(table, 0)
    t0 = time.monotonic()
    for _ in range(60):
        a.admit_call()
    took = time.monotonic() - t0
    # 60 commands at 200/s with a 20 ms burst: at least ~0.27 s.
    assert took >= 0.25, took
    assert a.me["throttled_rate"] > 0


def test_a_refused_admission_gives_it_back(table):
    table.configure(0, TenantSettings("a", weight=2))
    a = open_scheduler(table, 0)
    a.me["estimate_ns"] = 1_000_000
    a.admit_device()
    assert a.me["outstanding"] == 1 and a.me["vtime"] == 500_000
    a.settle()                                  # the command failed: nothing was issued
    assert a.me["outstanding"] == 0 and a.me["vtime"] == 0


def test_statistics_and_metrics(table):
    table.configure(0, TenantSettings("a", memory_quota=1 << 20))
    a = open_scheduler(table, 0)
    for ns in (500, 1500, 3_000_000):
        a.record(int(CallClass.ENQUEUE), ns)
    a.record(int(CallClass.SYNC), 2_000_000)
    a.refused("memory")
    a.mispredicted()
    snap = dict(a.me.snapshot(), vm="a", up=True, restarts=0, compute_units=0)
    snap["histograms"] = {k: {"buckets": v[0], "sum_ns": v[1]}
                          for k, v in snap["histograms"].items()}
    assert snap["calls"] == 4 and snap["refused_memory"] == 1
    text = _metrics.render([snap])
    assert 'ava_vdev_vm_calls_total{vm="a"} 4' in text
    assert 'ava_vdev_vm_mispredicted_calls_total{vm="a"} 1' in text
    assert 'ava_vdev_vm_quota{vm="a",quota="memory_bytes"} 1048576' in text
    assert 'ava_vdev_vm_quota_refusals_total{vm="a",quota="memory"} 1' in text
    assert 'ava_vdev_vm_call_duration_seconds_count{vm="a",class="enqueue"} 3' in text
    assert 'ava_vdev_vm_call_duration_seconds_bucket{vm="a",class="enqueue",le="1e-06"} 1' in text
    assert 'ava_vdev_vm_call_duration_seconds_bucket{vm="a",class="enqueue",le="+Inf"} 3' in text
    # Every sample line is NAME{labels} VALUE, and every family has HELP and TYPE.
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            families.add(line.split()[2])
        elif not line.startswith("#"):
            name = line.split("{")[0]
            assert any(name == f or name.startswith(f + "_") for f in families), line
            float(line.rsplit(" ", 1)[1])
    table_text = _metrics.table([snap])
    assert table_text.splitlines()[0].split()[:3] == ["VM", "CLASS", "W"]
    assert table_text.splitlines()[1].split()[0] == "a"
