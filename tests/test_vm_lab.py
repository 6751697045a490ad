"""The lab end to end: `python -m qemu run` boots a guest with the device and runs a command.

Few and bounded (each test is one guest boot, about 5 s under TCG).
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

pytestmark = pytest.mark.vm


def _remove_kept_run_dir(res) -> None:
    for line in res.stderr.splitlines():
        if line.startswith("ava: run directory kept: "):
            shutil.rmtree(line.split(": ", 2)[2])
            return
    pytest.fail(f"no kept run directory reported:\n{res.stderr}")


def _no_leftovers(res) -> None:
    assert res.leftovers() == {}, f"processes left behind: {res.leftovers()}"
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if "/ava-vdev/lab/root/" in line]
    assert mounts == [], f"mounts left behind: {mounts}"


def test_exit_status_and_output(lab_run):
    res = lab_run("--timeout", "120", "--", "sh", "-c",
                  "echo to-stdout; echo to-stderr >&2; echo reopened > /dev/stderr; exit 3")
    assert res.returncode == 3, res.stderr
    assert res.stdout == "to-stdout\n"
    guest_err = [line for line in res.stderr.splitlines() if not line.startswith("ava: ")]
    assert guest_err == ["to-stderr", "reopened"], res.stderr
    assert "ava: accel " in res.stderr
    _no_leftovers(res)


def test_guest_environment(lab_run, tmp_path):
    script = "; ".join([
        "id -u",
        "test -r /mnt/ava/qemu/_machine.py && echo checkout-visible",
        "touch /mnt/ava/x 2>/dev/null || echo checkout-read-only",
        "echo from-guest > /mnt/scratch/hello.txt",
        "cat /proc/sys/vm/nr_hugepages",
        "ls /etc/OpenCL/vendors | wc -l",
        "pwd",
    ])
    res = lab_run("--timeout", "120", "--hugepages", "16", "--scratch", str(tmp_path),
                  "--timing", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "checkout-visible", "checkout-read-only", "16", "0",
                                  "/mnt/scratch"]
    assert (tmp_path / "hello.txt").read_text() == "from-guest\n"
    assert not (tmp_path / ".ava").exists()
    assert "timing: boot to command" in res.stderr
    _no_leftovers(res)


def test_native_pocl_registers_pocl_for_the_run_only(lab_run):
    res = lab_run("--timeout", "120", "--native-pocl", "--no-device", "--",
                  "ls", "/etc/OpenCL/vendors")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["pocl.icd"]
    _no_leftovers(res)


def test_server_crash_fails_cleanly(lab_run):
    killed = {}

    def kill_server(children):
        for pid, cmd in children.items():
            if " -m vdev serve " in cmd:
                time.sleep(1.0)  # let the guest get going
                os.kill(pid, signal.SIGKILL)
                killed[pid] = cmd

    res = lab_run("--timeout", "120", "--", "sleep", "300", during=kill_server)
    assert killed, "the server process was not found"
    assert res.returncode == 125, res.stderr
    assert "device server exited" in res.stderr and "killed by SIGKILL" in res.stderr
    assert "run directory kept" in res.stderr      # and 125, not 124: no timeout waited
    _no_leftovers(res)
    _remove_kept_run_dir(res)


def test_timeout_kills_the_vm(lab_run):
    res = lab_run("--timeout", "10", "--", "sleep", "300")
    assert res.returncode == 124, res.stderr
    assert "longer than 10 s" in res.stderr
    assert res.seconds < 30
    _no_leftovers(res)
    _remove_kept_run_dir(res)


def test_device_is_visible(lab_run):
    res = lab_run("--timeout", "120", "--", "lspci", "-nn", "-d", "4156:0c1a")
    assert res.returncode == 0, res.stderr
    assert "[1200]" in res.stdout and "[4156:0c1a]" in res.stdout, res.stdout
    _no_leftovers(res)
