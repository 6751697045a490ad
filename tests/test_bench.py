"""The benchmark command runs and prints each figure beside its native baseline
(figures are reported, never asserted against targets here)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ring_benchmark_smoke():
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "ring", "--quick", "--daemon"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for row in ("null round trip, median", "asynchronous commands", "echo 4 KiB", "echo 1 MiB",
                "(memcpy)", "(call)", "targets:", "host loopback through ava-vdevd (daemon",
                "through ava-vdevd against the direct path"):
        assert row in res.stdout
    # The daemon's path beside the direct one, every figure (the verdict is the bench's).
    comparison = res.stdout.split("through ava-vdevd against the direct path")[1]
    assert comparison.count("within 5 %") + comparison.count("over 5 %") >= 5


def test_opencl_benchmark_prints_device_beside_native():
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "opencl", "--quick", "--json",
                          "--no-examples"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import json
    figures = json.loads(res.stdout)
    from vdev._opencl_bench import ROWS
    for side in ("native", "device"):
        for _, key, *_ in ROWS:
            assert figures[side][key] > 0, (side, key)
        assert figures[side]["launch4_p99_us"] >= figures[side]["launch4_median_us"]
    assert figures["native"]["device"] == figures["device"]["device"], "the same device both ways"
    assert figures["examples"] == {"skipped": "--no-examples"}
    from vdev._opencl_bench import HOST_ROWS
    for _, key, _ in HOST_ROWS:
        assert all(figures["host"][key][path] > 0 for path in ("lane", "fast", "interpreter")), key


def test_opencl_benchmark_report_names_every_figure_and_target():
    from vdev._opencl_bench import ROWS, report_opencl
    side = {key: 2.0 for _, key, *_ in ROWS} | {"device": "dev"}
    text = report_opencl({"native": side, "device": dict(side, info_query_us=0.25),
                          "examples": {"native_cold_s": 2.0, "native_warm_s": 1.0,
                                       "device_cold_s": 2.1, "device_warm_s": 1.5}})
    for label, *_ in ROWS:
        assert label in text, label
    assert "<= 0.5 us: met" in text and "<= 5 us: met" in text
    host = {"null": {"lane": 1.5, "fast": 5.0, "interpreter": 6.0},
            "set_arg": {"lane": 3.0, "fast": 3.0, "interpreter": 6.0},
            "launch": {"lane": 20.0, "fast": 20.0, "interpreter": 30.0}}
    with_host = report_opencl({"native": side, "device": side, "host": host})
    null_row = next(line for line in with_host.splitlines() if "forwarded null call" in line
                    and "<= 2 us" in line)
    assert "1.50 us" in null_row and "5.00 us" in null_row and "6.00 us" in null_row
    assert "<= 2 us: met" in null_row, "the target is the lane's figure (the path calls take)"
    host["null"]["lane"] = 2.5
    assert "<= 2 us: NOT met" in report_opencl({"native": side, "device": side, "host": host})
    assert "pyopencl examples, cold (wall)" in text and "1.50x  <= 1.1x: NOT met" in text
    # --vm: the guest's transfers (zero-copy, as root) beside native, and the copying run.
    vm = {key: 1.0 for _, key, *_ in ROWS if key.endswith("_gbs")}
    with_vm = report_opencl({"native": side, "device": side,
                             "vm": dict(vm, copied=dict(vm, write_64m_gbs=0.25))})
    row = next(line for line in with_vm.splitlines() if line.strip().startswith("write 64m"))
    assert "1.000 GB/s" in row and "2.000 GB/s" in row and "0.50x" in row
    assert "copied: 0.250 GB/s" in row


def test_oversubscription_benchmark_prints_every_ratio_and_draws_the_curve(tmp_path):
    plot = tmp_path / "oversub.png"
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "oversub", "--capacity", "8M",
                          "--ratios", "0.5,2", "--repeat", "1", "--plot", str(plot)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for row in ("sweep:", "hotcold:", "native GB/s", "evicted", "restored",
                "throughput halves at", "target (hot set fits)", "target (everything hot, 2x)"):
        assert row in out, out
    assert "WRONG" not in out and out.count("correct") == 4
    ratio_two = [line for line in out.splitlines() if line.strip().startswith("2 ")]
    assert len(ratio_two) == 2 and all(" 0 MiB" not in line.split("MiB", 1)[1] for line in ratio_two)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tenants_benchmark_reports_every_figure_and_draws_them(tmp_path):
    plot = tmp_path / "tenants.png"
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "tenants", "--quick", "--plot",
                          str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for weights in ("1:1", "1:3", "1:9"):
        assert f"share at {weights}: tenant a" in out, out
    for row in ("per 1 s window error mean", "aggregate throughput:", "interactive (shared): "
                "alone p50/p99/p99.9", "interactive (partitioned):", "scheduler cost:",
                "the scheduler's own time per device command", "targets:"):
        assert row in out, out
    assert plot.stat().st_size > 10_000


def test_the_host_cost_runs_each_call_through_the_ring_by_both_paths(monkeypatch):
    """``_host_cost``: each measured call goes through the ring engine and succeeds, by
    the fast path when it is on and by the interpreter when it is off."""
    from host_backend import OpenClBackend
    from vdev import _host_cost
    seen = []
    real_call = OpenClBackend.call

    def spy(self, fn, payload, owner, dma=None, **options):
        before = self.fast_calls
        reply = real_call(self, fn, payload, owner, dma, **options)
        seen.append((fn.name, self.fast_path, self.fast_calls > before, reply[:8]))
        return reply

    monkeypatch.setattr(OpenClBackend, "call", spy)
    figures = _host_cost.host_cost(n=20)
    assert set(figures) == {"null", "set_arg", "launch"}
    for name in ("clGetContextInfo", "clSetKernelArg", "clEnqueueNDRangeKernel"):
        runs = [(on, fast, status) for n, on, fast, status in seen if n == name]
        assert {(True, True), (False, False)} <= {(on, fast) for on, fast, _ in runs}, name
        assert all(status == bytes(8) for *_, status in runs), name


def test_daemon_comparisons_run_each_path_first_as_often_as_second():
    """Run right after the other path, a path inherits its aftermath (an executor still
    ending, a daemon starting): plain alternation made the second path 10 % slower on a
    burst of launches when both were the same.  ABBA ABBA ... cancels that."""
    from vdev.bench import alternating_runs
    order: list[str] = []

    def run(name: str):
        def one() -> dict[str, int]:
            order.append(name)
            return {"n": len(order)}
        return one
    a, b = alternating_runs(4, run("A"), run("B"))
    assert "".join(order) == "ABBAABBA"
    assert [f["n"] for f in a] == [1, 4, 5, 8] and [f["n"] for f in b] == [2, 3, 6, 7]
    order.clear()
    a, b = alternating_runs(3, run("A"), run("B"), done=[{"n": 0}])
    assert "".join(order) == "BBAAB"        # the run made already is the first A
    assert len(a) == len(b) == 3 and a[0] == {"n": 0}
