"""``python -m vdev serve`` as a user runs it: a real process, signals, its socket."""

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import trio

from protocols.device_abi import Reg
from vdev.client import VfioUserClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(path, *extra):
    return subprocess.Popen([sys.executable, "-m", "vdev", "serve", "--socket", path, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_socket(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return          # listening (the server refuses this probe as a second client)
        except OSError:
            pass
        finally:
            probe.close()
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("server socket did not appear")


def stop(proc):
    """SIGTERM, and the server must exit 0 promptly (cleanly)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"server ignored SIGTERM: {err}") from None
    return proc.returncode, err


@pytest.fixture
def server_proc(sock_dir):
    procs = []

    def launch(*extra, path=None):
        path = path or os.path.join(sock_dir, "cli.sock")
        proc = start_server(path, *extra)
        procs.append(proc)
        wait_for_socket(path, proc)
        return proc, path

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "vdev", "serve", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for option in ("--socket", "--verbose", "--quiet", "--stall-timeout", "vfio-user-pci", "0600"):
        assert option in out
    assert "(default: opencl)" in " ".join(out.split()), "users come for OpenCL: the default"


def test_default_backend_is_opencl():
    from vdev._cli import build_parser
    assert build_parser().parse_args(["serve", "--socket", "s"]).backend == "opencl"


def test_serve_creates_private_socket_and_cleans_up(server_proc):
    proc, path = server_proc()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    rc, err = stop(proc)
    assert rc == 0, err
    assert not os.path.exists(path), "socket removed on exit"
    assert "shutting down" in err


def test_refuses_to_clobber_a_live_socket(server_proc):
    proc, path = server_proc()
    second = start_server(path)
    _, err = second.communicate(timeout=10)
    assert second.returncode == 2 and "another server is listening" in err
    assert os.path.exists(path)
    assert stop(proc)[0] == 0


def test_removes_a_stale_socket(server_proc, sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()               # bound, never listening: stale
    proc, _ = server_proc(path=path)
    assert "removing stale socket" in stop(proc)[1]


def test_refuses_a_path_that_is_not_a_socket(sock_dir):
    path = os.path.join(sock_dir, "precious.txt")
    with open(path, "w") as f:
        f.write("keep me")
    proc = start_server(path)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2 and "is not a socket" in err
    with open(path) as f:
        assert f.read() == "keep me"


def test_verbose_logs_every_message_decoded(server_proc):
    proc, path = server_proc("-v")

    async def talk():
        async with await VfioUserClient.connect(path) as cli:
            await cli.negotiate()
            await cli.write32(Reg.SCRATCH, 0x1234)
            assert await cli.read32(Reg.SCRATCH) == 0x1234

    trio.run(talk)
    rc, err = stop(proc)
    assert rc == 0
    assert "VERSION major=0 minor=0" in err and "max_msg_fds" in err
    assert "REGION_WRITE offset=0x1c region=0 count=4" in err
    assert "REGION_READ offset=0x1c region=0 count=4" in err


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_server_burns_no_cpu(server_proc):
    """A guest connected with an enabled ring and nothing to do: the server sleeps.  Its
    CPU time is taken over three 2 s windows and the least counts, under 5 % of a core
    (it uses 1-2 % here; a poller that spins, or wakes every few milliseconds, uses
    tens of percent): the machine's other load inflates a window, not all three."""
    from ringutil import Allocator, PyRing, connect_guest

    from protocols.device_abi import SelftestOp
    from vdev.client import GuestMemory

    proc, path = server_proc()
    used = {}

    async def idle_guest():
        with GuestMemory(8 << 20) as mem:
            cli = await connect_guest(path, mem)
            ring = await PyRing.create(cli, mem, Allocator(mem.size))
            assert await ring.call(SelftestOp.NOP) == (0, 0)
            await trio.sleep(0.5)               # let it settle into IDLE
            windows = []
            for _ in range(3):
                before = cpu_seconds(proc.pid)
                await trio.sleep(2)
                windows.append(cpu_seconds(proc.pid) - before)
            used["cpu"] = min(windows)
            assert await ring.call(SelftestOp.NOP) == (0, 0), "still serving after idling"
            await cli.aclose()

    trio.run(idle_guest)
    assert stop(proc)[0] == 0
    assert used["cpu"] < 0.1, f"idle server used {used['cpu']:.2f} s of CPU in 2 s at least"
