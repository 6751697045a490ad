"""A short, bounded fuzzing campaign against one long-lived server (`python -m vdev.fuzz`
runs long ones): mutated vfio-user connect sequences and random ring commands, with
the server checked alive, serving and not leaking after every batch."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_fuzz_campaign_leaves_the_server_serving():
    res = subprocess.run([sys.executable, "-m", "vdev.fuzz", "--messages", "1500",
                          "--commands", "1500", "--seed", "7", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1500 vfio-user messages and 1500 ring commands" in res.stdout, res.stdout
    assert "0 crashes, 0 hangs, 0 leaks" in res.stdout


def test_fuzz_reports_a_dead_server():
    """The harness is real: a server that dies mid-campaign (here SIGKILLed, by PID,
    from inside the first batch) is reported, with exit status 1."""
    script = """
import os, signal, sys, vdev.fuzz as f
async def killer(path, mem, rng, n, camp):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == os.getpid():
                os.kill(int(pid), signal.SIGKILL)
f.message_batch = killer
sys.exit(f.main(["--messages", "10", "--commands", "0", "--backend", "test", "-q"]))
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED" in res.stderr and "exited with status -9" in res.stderr, res.stderr
