"""The C guest runtime against the real server over the loopback transport:
verified echo from many threads, a 256 MiB scatter-list echo, asynchronous
commands, and a process killed mid-command."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    from guest_driver import _build
    _build.build(out)
    return out


@pytest.fixture
def loopback_server(sock_dir):
    """A real server process with the test backend; yields its socket path."""
    path = os.path.join(sock_dir, "rt.sock")
    proc = subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path, "-q"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def run_tool(build_dir, socket, *args, timeout=300):
    env = dict(os.environ, AVA_VDEV_SOCKET=socket)
    return subprocess.run([str(build_dir / args[0]), *args[1:]], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_eight_threads_ten_thousand_verified_echoes_each(build_dir, loopback_server):
    res = run_tool(build_dir, loopback_server[0], "ava-echo", "--threads", "8", "--iters", "10000",
                   "--size", "2048")
    assert res.returncode == 0, res.stderr
    assert "8 threads x 10000 verified round trips" in res.stdout and ": ok," in res.stdout


def test_payload_far_larger_than_the_ring(build_dir, loopback_server):
    res = run_tool(build_dir, loopback_server[0], "ava-echo", "--big", str(256 << 20))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "256 MiB echo" in res.stdout and ": ok" in res.stdout


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_full_ring_waits_for_room_without_burning_a_core(build_dir, loopback_server):
    """600 commands behind a 2 s SLEEP: the ring (256 slots) fills, and the process
    waits for room by napping, where it used to yield in a loop for as long as the ring
    stayed full (a core's worth, which a 2-core machine's host poller needed).  Every
    command still runs, in order, once the SLEEP ends."""
    env = dict(os.environ, AVA_VDEV_SOCKET=loopback_server[0])
    start = time.monotonic()
    guest = subprocess.Popen([str(build_dir / "ava-echo"), "--sleep-us", "2000000", "--fill",
                              "600"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert "sleeping" in guest.stdout.readline()
        time.sleep(0.5)                 # the ring is full by now
        before = _cpu_seconds(guest.pid)
        time.sleep(1.0)
        waited = _cpu_seconds(guest.pid) - before
        out, err = guest.communicate(timeout=60)
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.communicate()
    assert guest.returncode == 0, err
    assert "600 commands behind the sleep: ok" in out
    assert time.monotonic() - start >= 2.0
    # Napping costs a few ms a second; a yield loop, most of a second (a generous line).
    assert waited < 0.3, f"the process used {waited:.2f} s of CPU in 1 s waiting for room"


def test_a_full_ring_notices_a_server_that_is_gone(build_dir, loopback_server):
    """Waiting for room in a full ring, the process checks that the device still answers:
    the server killed meanwhile fails the call instead of waiting for ever."""
    path, server = loopback_server
    env = dict(os.environ, AVA_VDEV_SOCKET=path)
    guest = subprocess.Popen([str(build_dir / "ava-echo"), "--sleep-us", "10000000", "--fill",
                              "600"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert "sleeping" in guest.stdout.readline()
        time.sleep(0.5)
        server.kill()
        server.wait()
        try:
            out, err = guest.communicate(timeout=60)    # a hang detector (about 0.5 s)
        except subprocess.TimeoutExpired:
            pytest.fail("the process waited for room in a ring of a device that is gone")
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.communicate()
    assert guest.returncode != 0
    assert "commands behind the sleep: ok" not in out
    assert "stopped answering" in err or "dropped by the device" in err, err


def test_bench_runs_and_reports_figures(build_dir, loopback_server):
    import json
    res = run_tool(build_dir, loopback_server[0], "ava-bench", "--quick")
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout)
    assert figures["transport"] == "loopback"
    assert figures["null_rt_us"]["median"] > 0 and figures["async_cmds_per_s"] > 0
    assert all(e["bytes_per_s"] > 0 for e in figures["echo"]), "every echo completed with status 0"


def test_killed_process_mid_command_leaves_the_server_serving(build_dir, loopback_server):
    path, server = loopback_server
    env = dict(os.environ, AVA_VDEV_SOCKET=path)
    victim = subprocess.Popen([str(build_dir / "ava-echo"), "--sleep-us", "3000000"], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert "sleeping" in victim.stdout.readline()
    time.sleep(0.3)                      # the SLEEP is in flight on the device
    victim.kill()
    victim.wait()
    victim.stdout.close()
    res = run_tool(build_dir, path, "ava-echo", "--iters", "500", timeout=60)
    assert res.returncode == 0, res.stderr
    assert server.poll() is None


def test_no_server_is_a_clear_error(build_dir, sock_dir):
    res = run_tool(build_dir, os.path.join(sock_dir, "nothing.sock"), "ava-echo", timeout=30)
    assert res.returncode == 1
    assert "cannot connect to the device server" in res.stderr and "vdev serve" in res.stderr


def test_build_is_incremental_and_prints_the_icd_path(build_dir):
    res = subprocess.run([sys.executable, "-m", "guest_driver", "build", "--out", str(build_dir)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == str(build_dir / "libava_icd.so")
    assert "cc " not in res.stdout, "nothing changed: nothing rebuilt"


def test_runtime_recovers_from_a_device_reset(build_dir, loopback_server):
    res = run_tool(build_dir, loopback_server[0], "ava-echo", "--iters", "300", "--reset-at", "100",
                   timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "in-flight call failed" in res.stdout and "dropped by the device" in res.stdout
    assert "recovered from the reset" in res.stdout and ": ok," in res.stdout


def test_server_gone_mid_command_fails_the_call_instead_of_hanging(build_dir, loopback_server):
    """The server is killed while a call waits: the call fails and the process exits
    (its queue teardown does not wait for commands that can no longer finish)."""
    path, server = loopback_server
    env = dict(os.environ, AVA_VDEV_SOCKET=path)
    guest = subprocess.Popen([str(build_dir / "ava-echo"), "--sleep-us", "10000000"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "sleeping" in guest.stdout.readline()
    time.sleep(0.3)
    server.kill()
    server.wait()
    # The command (10 s, the longest SLEEP) can never complete now: a guest still
    # waiting after 60 s waits for a device that is gone (a hang detector).
    try:
        _, err = guest.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        guest.kill()
        guest.communicate()
        pytest.fail("the guest waited for a device that is gone")
    assert guest.returncode != 0
    assert "stopped answering" in err or "dropped by the device" in err, err


def test_a_stopped_server_fails_the_call_with_the_cause(build_dir, loopback_server):
    """A server that stops answering (SIGSTOP: hung, not gone) does not hang the
    application: every reply is bounded (AVA_VDEV_TIMEOUT_MS), and the error names
    the cause rather than claiming that queues are in use."""
    path, server = loopback_server
    env = dict(os.environ, AVA_VDEV_SOCKET=path, AVA_VDEV_TIMEOUT_MS="1000")
    guest = subprocess.Popen([str(build_dir / "ava-echo"), "--sleep-us", "10000000"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "sleeping" in guest.stdout.readline()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            _, err = guest.communicate(timeout=60)     # a hang detector (1 s expected)
        except subprocess.TimeoutExpired:
            guest.kill()
            _, err = guest.communicate()
            pytest.fail(f"the application hung on a stopped server: {err}")
        assert guest.returncode != 0
        assert "stopped answering" in err, (guest.returncode, err)
        assert "in use" not in err, err
        late = run_tool(build_dir, path, "ava-echo", "--iters", "1", timeout=60)
        assert late.returncode != 0
        assert "did not answer" in late.stderr or "stopped answering" in late.stderr, late.stderr
        assert "in use" not in late.stderr, late.stderr
    finally:
        os.kill(server.pid, signal.SIGCONT)
        if guest.poll() is None:
            guest.kill()
            guest.communicate()
