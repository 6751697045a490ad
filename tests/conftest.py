"""Shared fixtures: a real server on a real UNIX socket, and a client for it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import trio

from vdev import Server
from vdev.client import GuestMemory, VfioUserClient

# PoCL derives CL_DEVICE_GLOBAL_MEM_SIZE from the host's memory when a process starts,
# and from it the max allocation size and several image limits: two processes started
# a minute apart (the device server, then a native clinfo) can disagree by gigabytes,
# and the allocation and image limits jump by powers of two.  Every process the suite
# starts (servers, native baselines, lab guests' servers) inherits this cap, so both
# sides read the same figure and the comparisons stay exact.  1 GiB is far below what
# PoCL detects on any machine that runs the suite (4.5-8 GiB measured on a 24 GiB one),
# so the cap, not the load, decides the figure; tests allocate at most 64 MiB.
os.environ.setdefault("POCL_MEMORY_LIMIT", "1")


def open_fds() -> set[int]:
    """This process's open fds (the in-process server's included)."""
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def sock_dir():
    # Short path: AF_UNIX paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="ava-t-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(nursery, sock_dir):
    srv = Server(os.path.join(sock_dir, "vdev.sock"), stall_timeout=0.5, in_process=True)
    srv.busy_wait = 0.2
    await nursery.start(srv.serve)
    yield srv
    nursery.cancel_scope.cancel()


async def wait_for_idle(srv: Server, timeout: float = 2.0) -> None:
    """Until the server has no session (it noticed the last client leave)."""
    with trio.fail_after(timeout):
        while srv.session is not None:
            await trio.sleep(0.005)


@pytest.fixture
async def client(server):
    cli = await VfioUserClient.connect(server.path)
    await cli.negotiate()
    yield cli
    await cli.aclose()


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    """The built ICD and a vendors directory naming only it (Debian 12's ocl-icd
    predates OCL_ICD_FILENAMES)."""
    from guest_driver import _build
    out = tmp_path_factory.mktemp("icd")
    lib = _build.build(out / "build")
    vendors = out / "vendors"
    vendors.mkdir()
    (vendors / "ava.icd").write_text(f"{lib}\n")
    return lib, vendors


@pytest.fixture
def guest_ram():
    with GuestMemory(4 << 20) as mem:
        yield mem


# ---- qemu lab: in-VM test helpers (owned by qemu/, issue 3) --------------------
# The `lab` fixture checks once per session that the lab is built and boots; a
# missing or broken lab FAILS every in-VM test with the reason (never skips).
# `lab_run(*args, timeout=...)` runs `python -m qemu run ARGS` and records the
# launcher's child processes (server, QEMU) so a test can check none is left.

import subprocess as _subprocess
import sys as _sys
import threading as _threading
import time as _time
from dataclasses import dataclass as _dataclass
from dataclasses import field as _field


@_dataclass
class LabRunResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    children: dict[int, str] = _field(default_factory=dict)  # pid -> cmdline

    def leftovers(self) -> dict[int, str]:
        """The recorded children still alive (zombies count as gone)."""
        alive = {}
        for pid, cmd in self.children.items():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive[pid] = cmd
        return alive


def _children_of(ppid: int) -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != ppid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry)] = cmd
    return found


def _lab_run(*args: str, timeout: float = 180.0, during=None) -> LabRunResult:
    """Run ``python -m qemu run ARGS``; ``during(children)`` is called once both children run."""
    t0 = _time.monotonic()
    proc = _subprocess.Popen([_sys.executable, "-m", "qemu", "run", *args],
                             stdin=_subprocess.DEVNULL, stdout=_subprocess.PIPE,
                             stderr=_subprocess.PIPE, text=True, errors="replace")
    children: dict[int, str] = {}
    stop = _threading.Event()

    def watch() -> None:
        called = False
        while not stop.is_set():
            now = _children_of(proc.pid)
            children.update(now)
            if during is not None and not called and len(now) >= 2:
                called = True
                during(dict(now))
            stop.wait(0.1)

    watcher = _threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except _subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"`python -m qemu run {' '.join(args)}` hung for {timeout} s:\n{err}")
    finally:
        stop.set()
        watcher.join()
    return LabRunResult(proc.returncode, out, err, _time.monotonic() - t0, children)


@pytest.fixture(scope="session")
def lab():
    """The built lab, checked once: it must exist and boot a guest."""
    from qemu import Lab, LabNotReady

    lab = Lab()
    try:
        lab.check_ready()
    except LabNotReady as exc:
        pytest.fail(f"in-VM tests need the lab: {exc}", pytrace=False)
    res = _lab_run("--timeout", "180", "--", "true")
    if res.returncode != 0:
        pytest.fail(f"the lab at {lab.path} cannot boot a guest (exit code {res.returncode}):\n"
                    f"{res.stderr}", pytrace=False)
    return lab


@pytest.fixture
def lab_run(lab):
    return _lab_run
# ---- end of the qemu lab section ------------------------------------------------
