"""The benchmark command runs and prints each figure beside its native baseline
(figures are reported, never asserted against targets here)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ring_benchmark_smoke():
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "ring", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for row in ("null round trip, median", "asynchronous commands", "echo 4 KiB", "echo 1 MiB",
                "(memcpy)", "(call)", "targets:"):
        assert row in res.stdout


def test_opencl_benchmark_prints_device_beside_native():
    res = subprocess.run([sys.executable, "-m", "vdev.bench", "opencl", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import json
    figures = json.loads(res.stdout)
    for side in ("native", "device"):
        assert figures[side]["write_64m_gbs"] > 0 and figures[side]["kernel_launch_finish_us"] > 0
    assert figures["device"]["info_query_us"] > 0 and figures["device"]["forwarded_info_us"] > 0
    assert figures["native"]["device"] == figures["device"]["device"], "the same device both ways"
