"""Many VMs under one manager, over the loopback transport (issue: sharing the device).

One manager serves three VMs for the whole module:

- alpha: interactive, a 256 MiB memory quota, a compute partition of 1 unit;
- beta: batch, a 512 MiB quota and an object quota;
- gamma: batch, no quotas.

Each VM is a real ``vdev serve`` process the manager started; guest programs reach
them through the ICD over the loopback transport, as a VM's would through its ring.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from test_opencl_e2e import ROOT, SAMPLES, through_device

from vdev._manager import request
from vdev._tenants import TenantTable

CL_MEM_OBJECT_ALLOCATION_FAILURE = -4
CL_INVALID_BUFFER_SIZE = -61
QUOTAS = {"alpha": 256 << 20, "beta": 512 << 20}

CONFIG = """\
[device]
backend = "opencl"

[manager]
state_dir = "{state}"
metrics = "metrics.sock"
restart_delay = 0.5

[vm.alpha]
socket = "alpha.sock"
class = "interactive"
memory = "256M"
compute_units = 1

[vm.beta]
socket = "beta.sock"
memory = "512M"
objects = 500

[vm.gamma]
socket = "gamma.sock"
"""


class Managed:
    def __init__(self, state: str, proc: subprocess.Popen, log: str):
        self.state, self.proc, self.log = state, proc, log
        self.control = os.path.join(state, "control.sock")
        self.config = os.path.join(state, "manager.toml")

    def socket(self, vm: str) -> str:
        return os.path.join(self.state, f"{vm}.sock")

    def stats(self) -> dict[str, dict]:
        return {vm["vm"]: vm for vm in request(self.control, {"op": "stats"})["vms"]}

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vdev", "ctl", *args, "--control",
                               self.control], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)

    def log_text(self) -> str:
        with open(self.log) as f:
            return f.read()

    def wait_up(self, vm: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()[vm]["up"] and os.path.exists(self.socket(vm)):
                return
            time.sleep(0.05)
        raise AssertionError(f"{vm} is not up: {self.log_text()[-3000:]}")


@pytest.fixture(scope="module")
def managed():
    state = tempfile.mkdtemp(prefix="ava-manager-", dir="/tmp")
    config = os.path.join(state, "manager.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state))
    log = os.path.join(state, "manager.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vdev", "manager", "--config", config],
                                cwd=ROOT, stderr=out, stdout=out)
    m = Managed(state, proc, log)
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(m.socket(vm)) for vm in ("alpha", "beta", "gamma")):
            assert proc.poll() is None, m.log_text()
            assert time.monotonic() < deadline, m.log_text()
            time.sleep(0.05)
        yield m
    finally:
        servers = [vm["pid"] for vm in m.stats().values() if vm["pid"]] \
            if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # SIGTERM: every server stopped, every socket and the table removed.
        left = sorted(os.listdir(state))
        alive = [pid for pid in servers if os.path.exists(f"/proc/{pid}")]
        text = m.log_text()
        if proc.returncode == 0 and not alive:
            subprocess.run(["rm", "-rf", state], check=False)
        assert proc.returncode == 0, text[-3000:]
        assert left == ["manager.log", "manager.toml"], left
        assert not alive, f"servers left running: {alive}"


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    out = tmp_path_factory.mktemp("tenant-tools")
    exes = {}
    for name in ("tenant_stats", "tenant_load"):
        exes[name] = str(out / name)
        subprocess.run(["gcc", "-O2", "-o", exes[name], os.path.join(SAMPLES, f"{name}.c"),
                        "-lOpenCL"], check=True)
    return exes


def clinfo_figures(text: str) -> dict[str, int]:
    found = {}
    for key, label in (("units", "Max compute units"), ("global", "Global memory size"),
                       ("alloc", "Max memory allocation")):
        m = re.search(rf"^\s*{label}\s+(\d+)", text, re.M)
        assert m, f"no {label!r} in clinfo's output:\n{text[-2000:]}"
        found[key] = int(m.group(1))
    return found


def native_device() -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "vdev._device_probe"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    dev = json.loads(out)[0]
    return {"units": dev["compute_units"], "alloc": dev["max_mem_alloc_size"]}


def test_each_vm_sees_its_slice(managed, shim):
    native = native_device()
    seen = {}
    for vm in ("alpha", "beta", "gamma"):
        res = through_device(shim, managed.socket(vm), ["clinfo"], timeout=120)
        assert res.returncode == 0, res.stderr
        seen[vm] = clinfo_figures(res.stdout)
    assert seen["alpha"] == {"units": 1, "global": QUOTAS["alpha"], "alloc": QUOTAS["alpha"]}
    assert seen["beta"] == {"units": native["units"], "global": QUOTAS["beta"],
                            "alloc": min(QUOTAS["beta"], native["alloc"])}
    assert seen["gamma"]["units"] == native["units"]
    assert seen["gamma"]["alloc"] == native["alloc"]
    assert seen["gamma"]["global"] not in QUOTAS.values()


def test_programs_run_on_their_slice(managed, shim, tools):
    res = through_device(shim, managed.socket("alpha"), [tools["tenant_stats"], "10", "1024"])
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got == {"big_status": 0, "right": 1, "global_mem_size": QUOTAS["alpha"],
                   "max_mem_alloc_size": QUOTAS["alpha"], "compute_units": 1}


def test_allocation_past_a_quota_gets_the_native_error_and_a_log_line(managed, shim, tools):
    quota = QUOTAS["alpha"]        # within the device's own largest allocation
    before = managed.stats()["alpha"]["refused_memory"]
    # Past the largest allocation the device reports: what an implementation answers
    # for a buffer over CL_DEVICE_MAX_MEM_ALLOC_SIZE.
    res = through_device(shim, managed.socket("alpha"), [tools["tenant_stats"], "1",
                                                         str(quota + 1)])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["big_status"] == CL_INVALID_BUFFER_SIZE
    # Within the largest allocation, but past the quota with the 4 KiB buffer live.
    res = through_device(shim, managed.socket("alpha"), [tools["tenant_stats"], "1",
                                                         str(quota)])
    assert json.loads(res.stdout)["big_status"] == CL_MEM_OBJECT_ALLOCATION_FAILURE, \
        managed.log_text()[-3000:]
    pattern = (rf"vm=alpha .*clCreateBuffer refused by the memory quota: {quota} bytes asked, "
               rf"4096 of {quota} in use: 4096 bytes over")
    deadline = time.monotonic() + 5
    while not re.search(pattern, managed.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(pattern, managed.log_text()), managed.log_text()[-3000:]
    assert managed.stats()["alpha"]["refused_memory"] >= before + 1


def test_stats_match_the_calls_made(managed, shim, tools):
    before = managed.stats()["gamma"]
    res = through_device(shim, managed.socket("gamma"), [tools["tenant_stats"], "25", "4096"])
    assert res.returncode == 0 and json.loads(res.stdout)["right"] == 1, res.stderr
    deadline = time.monotonic() + 10
    while managed.stats()["gamma"]["live_objects"] and time.monotonic() < deadline:
        time.sleep(0.05)            # the session's end zeroes the live figures
    after = managed.stats()["gamma"]
    # One write, 25 launches, one read: 27 device commands; 2 x 4 KiB moved.
    assert after["commands"] - before["commands"] == 27
    assert after["bytes_moved"] - before["bytes_moved"] == 2 * 4096
    assert after["device_ns"] > before["device_ns"]
    calls = after["calls"] - before["calls"]
    hist_calls = sum(sum(h["buckets"]) for h in after["histograms"].values()) - \
        sum(sum(h["buckets"]) for h in before["histograms"].values())
    assert calls == hist_calls and calls >= 27 + 10
    enqueued = sum(after["histograms"]["enqueue"]["buckets"]) - \
        sum(before["histograms"]["enqueue"]["buckets"])
    assert enqueued >= 25
    assert after["live_objects"] == 0 and after["live_bytes"] == 0
    # The same figures for a person and for Prometheus.
    table = subprocess.run([sys.executable, "-m", "vdev", "stats", "--control",
                            managed.control], capture_output=True, text=True, cwd=ROOT)
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("gamma"))
    assert row[5] == str(after["calls"]) and row[6] == str(after["commands"])
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.path.join(managed.state, "metrics.sock"))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = b""
        while chunk := s.recv(65536):
            body += chunk
    head, _, text = body.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and "text/plain; version=0.0.4" in head
    assert f'ava_vdev_vm_device_commands_total{{vm="gamma"}} {after["commands"]}' in text
    assert f'ava_vdev_vm_moved_bytes_total{{vm="gamma"}} {after["bytes_moved"]}' in text


def test_a_killed_vm_server_is_restarted_and_the_others_keep_serving(managed, shim):
    stats = managed.stats()
    victim = stats["gamma"]["pid"]
    restarts = stats["gamma"]["restarts"]
    os.kill(victim, signal.SIGKILL)
    # The others serve while gamma's server is down and coming back.
    for vm in ("alpha", "beta"):
        res = through_device(shim, managed.socket(vm), ["clinfo", "-l"], timeout=60)
        assert res.returncode == 0 and "Device #0" in res.stdout, res.stderr
    managed.wait_up("gamma")
    after = managed.stats()["gamma"]
    assert after["restarts"] == restarts + 1 and after["pid"] != victim
    assert re.search(rf"vm gamma: server \(pid {victim}\) was killed by SIGKILL .*restarting",
                     managed.log_text())
    res = through_device(shim, managed.socket("gamma"), ["clinfo", "-l"], timeout=60)
    assert res.returncode == 0 and "Device #0" in res.stdout, res.stderr


def _share_windows(table: TenantTable, names: tuple[str, str], until: float,
                   period: float = 0.25) -> list[tuple[float, int, int]]:
    slots = {s.name: s for s in table.slots_in_use()}
    samples = []
    while time.monotonic() < until:
        samples.append((time.monotonic(), slots[names[0]]["device_ns"],
                        slots[names[1]]["device_ns"]))
        time.sleep(period)
    return samples


def _share(samples, start: float, end: float) -> float:
    inside = [s for s in samples if start <= s[0] <= end]
    assert len(inside) >= 2, (start, end, samples)
    (_, b0, g0), (_, b1, g1) = inside[0], inside[-1]
    return (g1 - g0) / max((g1 - g0) + (b1 - b0), 1)


def test_a_weight_changed_at_runtime_takes_effect_within_a_second(managed, shim, tools):
    table = TenantTable.open(os.path.join(managed.state, "tenants"))
    assert managed.ctl("set", "beta", "weight=1").returncode == 0
    assert managed.ctl("set", "gamma", "weight=1").returncode == 0
    jobs = []

    def load(vm: str) -> None:
        jobs.append(through_device(shim, managed.socket(vm),
                                   [tools["tenant_load"], "batch", "1500", "7"], timeout=120))
    threads = [threading.Thread(target=load, args=(vm,)) for vm in ("beta", "gamma")]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    samples: list = []
    sampler = threading.Thread(target=lambda: samples.extend(
        _share_windows(table, ("beta", "gamma"), t0 + 6.5)))
    sampler.start()
    time.sleep(3.0)
    changed = time.monotonic()
    res = managed.ctl("set", "gamma", "weight=4")
    assert res.returncode == 0, res.stderr
    sampler.join()
    for t in threads:
        t.join()
    assert all(j.returncode == 0 for j in jobs), [j.stderr for j in jobs]
    before = _share(samples, changed - 1.5, changed)
    after = _share(samples, changed + 1.0, changed + 2.5)
    assert 0.35 <= before <= 0.65, (before, samples)
    assert 0.68 <= after <= 0.92, (after, samples)
    assert managed.ctl("set", "gamma", "weight=1").returncode == 0


def test_a_vm_over_its_command_rate_is_slowed_not_failed(managed, shim, tools):
    before = managed.stats()["gamma"]
    assert managed.ctl("set", "gamma", "rate=100").returncode == 0
    try:
        t0 = time.monotonic()
        res = through_device(shim, managed.socket("gamma"), [tools["tenant_stats"], "40", "64"])
        took = time.monotonic() - t0
    finally:
        assert managed.ctl("set", "gamma", "rate=0").returncode == 0
    assert res.returncode == 0 and json.loads(res.stdout)["right"] == 1, res.stderr
    after = managed.stats()["gamma"]
    calls = after["calls"] - before["calls"]
    assert after["throttled_rate"] > before["throttled_rate"]
    assert took >= (calls - 5) / 100, (took, calls)


def test_ctl_refuses_what_it_cannot_set(managed):
    res = managed.ctl("set", "gamma", "weight=0")
    assert res.returncode == 1 and "weight=0: must be an integer from 1 to 10000" in res.stderr
    res = managed.ctl("set", "gamma", "socket=/tmp/x")
    assert res.returncode == 1 and "cannot be set at runtime" in res.stderr
    res = managed.ctl("set", "nobody", "weight=2")
    assert res.returncode == 1 and "no VM 'nobody'" in res.stderr


def test_sighup_reloads_the_file_and_a_bad_file_changes_nothing(managed):
    with open(managed.config) as f:
        good = f.read()
    try:
        with open(managed.config, "w") as f:
            f.write(good.replace('[vm.gamma]\nsocket = "gamma.sock"\n',
                                 '[vm.gamma]\nsocket = "gamma.sock"\nweight = 7\n'))
        managed.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while managed.stats()["gamma"]["weight"] != 7:
            assert time.monotonic() < deadline, managed.log_text()[-2000:]
            time.sleep(0.1)
        with open(managed.config, "w") as f:
            f.write(good + "weight = -1\n")
        managed.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload refused" not in managed.log_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert re.search(r"reload refused.*manager\.toml:\d+: \[vm\.gamma\] weight: must be an "
                         r"integer from 1 to 10000, got -1", managed.log_text())
        assert managed.stats()["gamma"]["weight"] == 7
    finally:
        with open(managed.config, "w") as f:
            f.write(good)
        managed.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while managed.stats()["gamma"]["weight"] != 1 and time.monotonic() < deadline:
            time.sleep(0.1)


PROFILING = """
import pyopencl as cl, numpy as np
ctx = cl.create_some_context(False)
dev = ctx.devices[0]
out = {}
for asked in (False, True):
    props = cl.command_queue_properties.PROFILING_ENABLE if asked else 0
    q = cl.CommandQueue(ctx, properties=props)
    buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE, 64)
    ev = cl.enqueue_fill_buffer(q, buf, np.int32(1), 0, 64)
    ev.wait()
    try:
        ev.profile.end
        profiled = True
    except cl.Error as e:
        profiled = e.code
    out[str(asked)] = [int(q.properties), profiled]
print(out)
"""


def test_the_schedulers_profiling_is_invisible(managed, shim):
    """Every queue is profiled for the scheduler; the guest sees only what it asked."""
    args = [sys.executable, "-c", PROFILING]
    res = through_device(shim, managed.socket("gamma"), args, timeout=120)
    assert res.returncode == 0, res.stderr
    native = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert native.returncode == 0, native.stderr
    assert res.stdout == native.stdout
    assert "'False': [0, -7]" in res.stdout and "'True': [2, True]" in res.stdout


def test_bad_configuration_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[vm.a]\nsocket = "a.sock"\n\n[vm.b]\nsocket = "a.sock"\n')
    res = subprocess.run([sys.executable, "-m", "vdev", "manager", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert f"{bad}:5: [vm.b] socket:" in res.stderr and "also VM 'a'" in res.stderr
    bad.write_text('[vm.a]\nsocket = "a.sock"\ncompute_units = 4096\n')
    res = subprocess.run([sys.executable, "-m", "vdev", "manager", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert f"{bad}:3: [vm.a] compute_units: 4096 compute units asked, the device has" \
        in res.stderr


def test_bad_control_requests_get_an_error_and_harm_nothing(managed):
    import socket

    def ask(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(15)
            s.connect(managed.control)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out
    for bad, words in ((b"{not json\n", "malformed request"), (b"[1, 2]\n", "unknown request"),
                       (b'{"op": "explode"}\n', "unknown request 'explode'"),
                       (b'{"op": "set", "vm": "alpha", "values": {"weight": "x"}}\n',
                        "weight=x"),
                       (b'{"op": "set", "vm": "alpha", "values": [1]}\n', "malformed"),
                       (b"\xff" * 70000, "longer than 65536 bytes"),
                       (b"\xff" * 1000 + b"\n", "malformed request")):
        reply = json.loads(ask(bad))
        assert reply["ok"] is False and words in reply["error"], (bad[:40], reply)
    assert ask(b"").startswith(b'{"ok": false')
    assert managed.proc.poll() is None
    assert set(managed.stats()) == {"alpha", "beta", "gamma"}


CONTEXT_FROM_TYPE = """
import pyopencl as cl
p = cl.get_platforms()[0]
out = []
ctx = cl.Context(dev_type=cl.device_type.ALL, properties=[(cl.context_properties.PLATFORM, p)])
q = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void k(__global int *a) { a[get_global_id(0)] = 7; }").build()
import numpy as np
a = np.zeros(64, np.int32)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
prg.k(q, a.shape, None, buf)
cl.enqueue_copy(q, a, buf)
out.append([ctx.devices[0] == p.get_devices()[0], int(a.sum())])
for t in (cl.device_type.GPU, cl.device_type.ACCELERATOR, 1 << 20):
    try:
        cl.Context(dev_type=t, properties=[(cl.context_properties.PLATFORM, p)])
        out.append("made")
    except cl.Error as e:
        out.append(e.code)
print(out, ctx.devices[0].max_compute_units)
"""


def test_a_context_from_type_stays_on_the_partition(managed, shim):
    args = [sys.executable, "-c", CONTEXT_FROM_TYPE]
    ours = through_device(shim, managed.socket("alpha"), args, timeout=120)
    assert ours.returncode == 0, ours.stderr
    native = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert native.returncode == 0, native.stderr
    answers, units = ours.stdout.rsplit(" ", 1)
    assert units.strip() == "1", ours.stdout
    assert answers == native.stdout.rsplit(" ", 1)[0], (ours.stdout, native.stdout)
    assert answers.startswith("[[True, 448]"), answers


def test_servers_do_not_outlive_a_killed_manager(tmp_path):
    """SIGKILL leaves the manager no chance to clean up: its servers notice and stop
    within a couple of seconds, removing their sockets, and a new manager starts."""
    config = tmp_path / "m.toml"
    config.write_text(f'[device]\nbackend = "test"\n[manager]\nstate_dir = "{tmp_path}"\n'
                      '[vm.a]\nsocket = "a.sock"\n[vm.b]\nsocket = "b.sock"\n')
    sockets = [tmp_path / "a.sock", tmp_path / "b.sock"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "vdev", "manager", "--config",
                                 str(config), "-q"], cwd=ROOT, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not all(s.exists() for s in sockets):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        return proc
    proc = start()
    servers = [vm["pid"] for vm in request(str(tmp_path / "control.sock"),
                                           {"op": "stats"})["vms"]]
    proc.kill()
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in servers) or \
            any(s.exists() for s in sockets):
        assert time.monotonic() < deadline, "servers outlived their manager"
        time.sleep(0.1)
    again = start()
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == 0
    again.stderr.close()
