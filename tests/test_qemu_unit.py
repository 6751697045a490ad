"""The lab launcher without a VM: command lines, the accel decision, argument
parsing, the initramfs writer, and the launcher's cleanup paths driven with
fake server and QEMU processes."""

from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import shutil
import signal
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

import qemu
from qemu import _accel, _cli, _cmdline, _guest
from qemu._chroot import Bind, ChrootSpec, chroot_argv, namespace_script
from qemu._errors import GuestFailure, GuestTimeout, LaunchFailure, ServerDied
from qemu._initramfs import Entry, cpio_newc
from qemu._lab import Lab, apt_pin
from qemu._machine import LabMachine, command_script, run_in_guest

# -- exports -------------------------------------------------------------------

def test_exports_are_pinned():
    public = sorted(n for n in dir(qemu) if not n.startswith("_"))
    assert public == sorted([
        "ChildFailure", "GuestFailure", "GuestTimeout", "Interrupted", "Lab", "LabError",
        "LabMachine", "LabNotReady", "LaunchFailure", "RunResult", "ServerDied", "Verdict",
        "decide_accel", "run_in_guest"])


# -- command lines -------------------------------------------------------------

def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_parse_size():
    assert _cmdline.parse_size("2G") == 2 << 30
    assert _cmdline.parse_size("512M") == 512 << 20
    assert _cmdline.parse_size("1GiB") == 1 << 30
    assert _cmdline.parse_size(str(64 << 20)) == 64 << 20
    for bad in ("", "2X", "-1G", "1.5G", "1000"):
        with pytest.raises(ValueError):
            _cmdline.parse_size(bad)


def test_lab_qemu_argv_memory_device_and_ports():
    cfg = _cmdline.LabQemuConfig(accel="tcg", memory=1 << 30, cpus=3, hugepages=32,
                                 device_socket="/run/ava/vdev.sock", ctl_fd=7, out_fd=8,
                                 err_fd=9)
    argv = _cmdline.lab_qemu_argv(cfg)
    assert argv[0] == "qemu-system-x86_64"
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in _opt(argv, "-object")
    assert "q35,memory-backend=mem" in _opt(argv, "-machine")
    assert _opt(argv, "-m") == ["1024M"]
    assert _opt(argv, "-smp") == ["3"]
    assert _opt(argv, "-accel") == ["tcg,thread=multi"]
    assert "-no-reboot" in argv and "-nodefaults" in argv
    append = _opt(argv, "-append")[0]
    assert "hugepagesz=2M hugepages=32" in append and "console=ttyS0" in append
    devices = _opt(argv, "-device")
    vfio = [json.loads(d) for d in devices if d.startswith("{")]
    assert vfio == [{"driver": "vfio-user-pci",
                     "socket": {"type": "unix", "path": "/run/ava/vdev.sock"}}]
    chardevs = _opt(argv, "-chardev")
    assert "socket,id=ctl,fd=7" in chardevs and "socket,id=err,fd=9" in chardevs
    assert any(f"name={_guest.PORT_OUT}" in d for d in devices)
    fsdevs = _opt(argv, "-fsdev")
    assert sum("readonly=on" in f for f in fsdevs) == 2   # the root and the checkout
    assert any(f"mount_tag={_guest.MOUNT_TAG_SCRATCH}" in d for d in devices)


def test_lab_qemu_argv_without_device_and_with_kvm():
    argv = _cmdline.lab_qemu_argv(_cmdline.LabQemuConfig(accel="kvm", device_socket=None,
                                                         hugepages=0))
    assert not any("vfio-user-pci" in a for a in argv)
    assert _opt(argv, "-accel") == ["kvm"] and _opt(argv, "-cpu") == ["host"]
    assert "hugepages" not in _opt(argv, "-append")[0]
    with pytest.raises(ValueError):
        _cmdline.accel_args("xen")


def test_user_cmdline_is_shell_text_with_the_socket():
    text = _cmdline.user_cmdline("/tmp/my dir/vm.sock", memory=1 << 30)
    argv = shlex.split(text.replace("\\\n", " ").split("...")[0])
    dev = json.loads(_opt(argv, "-device")[0])
    assert dev["socket"]["path"] == "/tmp/my dir/vm.sock"
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in _opt(argv, "-object")


def test_namespace_script_quotes_and_orders_mounts():
    spec = ChrootSpec(Path("/lab dir/root"), self_view="/srv/view",
                      binds=(Bind(Path("/tmp/run x"), "/run/ava"),
                             Bind(Path("/src"), "/run/ava/src", readonly=True)))
    script = namespace_script(spec)
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert "mount --bind '/lab dir/root' '/lab dir/root/srv/view'" in lines
    # The root's own view is bound before anything is mounted under the root.
    assert lines.index("mount --bind '/lab dir/root' '/lab dir/root/srv/view'") < \
        lines.index("mount -t proc proc '/lab dir/root/proc'")
    assert "mount -o remount,bind,ro '/lab dir/root/run/ava/src'" in lines
    assert lines[-1] == "exec chroot '/lab dir/root' \"$@\""
    argv = chroot_argv(spec, ["qemu-system-x86_64", "-a b"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-2:] == ["qemu-system-x86_64", "-a b"]


def test_command_script():
    text = command_script(["sh", "-c", "echo 'hi'; exit 3"], native_pocl=False)
    assert text.splitlines()[-1] == "exec sh -c 'echo '\"'\"'hi'\"'\"'; exit 3'"
    assert "pocl" not in text
    pocl = command_script(["clinfo"], native_pocl=True)
    assert "cp /etc/OpenCL/vendors.disabled/pocl.icd /etc/OpenCL/vendors/pocl.icd" in pocl


def test_guest_scripts_are_filled():
    for script in (_guest.init_script(), _guest.stage2_script()):
        assert "@" not in script.replace("$@", "")
    assert "insmod /lib/modules/$m.ko" in _guest.init_script()
    assert "busybox poweroff -f" in _guest.stage2_script()


def test_apt_pin_selects_backports_qemu():
    pin = apt_pin()
    assert "src:qemu" in pin and "n=trixie-backports" in pin and "990" in pin


# -- the initramfs writer --------------------------------------------------------

def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out[name] = (mode, body)


def test_cpio_newc_round_trip():
    entries = [Entry("bin", stat.S_IFDIR | 0o755),
               Entry("bin/x", stat.S_IFREG | 0o755, b"12345"),
               Entry("bin/sh", stat.S_IFLNK | 0o777, b"x"),
               Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    data = cpio_newc(entries)
    assert len(data) % 4 == 0
    members = _read_newc(data)
    assert members["bin/x"] == (stat.S_IFREG | 0o755, b"12345")
    assert members["bin/sh"][1] == b"x"
    assert stat.S_ISCHR(members["dev/console"][0])
    assert cpio_newc(entries) == data  # deterministic


def test_build_initramfs_with_fake_root(tmp_path):
    import lzma

    from qemu._initramfs import build_initramfs
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF static busybox")
    mods = tmp_path / "modules"
    lines = []
    for name in _guest.INITRAMFS_MODULES:
        rel = f"kernel/x/{name}.ko.xz"
        (mods / "kernel/x").mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(lzma.compress(f"module {name}".encode()))
        lines.append(f"{rel}:")
    (mods / "modules.dep").write_text("\n".join(lines) + "\n")
    members = _read_newc(gzip.decompress(build_initramfs(busybox, mods)))
    assert members["lib/modules/9p.ko"][1] == b"module 9p"
    assert members["init"][1].decode() == _guest.init_script()
    assert members["stage2"][1].decode() == _guest.stage2_script()


# -- argument parsing ------------------------------------------------------------

def test_split_command_and_run_options():
    opts, cmd = _cli.split_command(["run", "--timeout", "9", "--server-arg=-v",
                                    "--server-arg", "x", "--", "sh", "-c", "exit 3", "--"])
    assert cmd == ["sh", "-c", "exit 3", "--"]
    args = _cli.build_parser().parse_args(opts)
    assert args.command == "run" and args.timeout == 9.0
    assert args.server_arg == ["-v", "x"]
    assert args.accel == "auto" and args.memory == 2 << 30 and args.hugepages == 64
    assert args.device is True and args.native_pocl is False


def test_run_option_errors(capsys):
    parser = _cli.build_parser()
    for bad in (["run", "--memory", "lots"], ["run", "--cpus", "0"],
                ["run", "--accel", "hvf"], ["run", "--hugepages", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(SystemExit):
        _cli.main(["run", "--accel", "tcg"])  # no command
    assert "no command given" in capsys.readouterr().err


def test_lab_dir_from_env_and_option(monkeypatch, tmp_path):
    monkeypatch.setenv("AVA_LAB_DIR", str(tmp_path / "env"))
    assert Lab().path == (tmp_path / "env").resolve()
    args = _cli.build_parser().parse_args(["lab", "status", "--dir", str(tmp_path / "opt")])
    assert Lab(args.dir).path == (tmp_path / "opt").resolve()


def test_run_fails_with_reason_when_lab_missing(tmp_path, capsys):
    rc = _cli.main(["run", "--dir", str(tmp_path / "none"), "--", "true"])
    assert rc == _cli.EXIT_LAB_FAILURE
    assert "lab build" in capsys.readouterr().err


def test_lab_status_of_missing_lab(tmp_path, capsys):
    assert _cli.main(["lab", "status", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step root" in out and "missing" in out


def test_print_cmdline(capsys):
    assert _cli.main(["print-cmdline", "--socket", "/run/x.sock"]) == 0
    out = capsys.readouterr().out
    assert "python -m vdev serve --socket /run/x.sock" in out
    assert '"path":"/run/x.sock"' in out


# -- the accel decision ------------------------------------------------------------

async def test_accel_explicit_choices_never_probe(tmp_path):
    async def probe(lab):  # pragma: no cover - must not run
        raise AssertionError("probed")

    lab = Lab(tmp_path)
    assert (await _accel.decide_accel("kvm", lab, probe)).accel == "kvm"
    assert (await _accel.decide_accel("tcg", lab, probe)).accel == "tcg"
    with pytest.raises(ValueError):
        await _accel.decide_accel("hax", lab, probe)


async def test_accel_auto_probes_once_then_uses_cache(tmp_path):
    lab = Lab(tmp_path)
    calls = []

    async def probe(lab):
        calls.append(1)
        return _accel.Verdict("tcg", "test boot failed", _accel.verdict_key(lab))

    first = await _accel.decide_accel("auto", lab, probe)
    second = await _accel.decide_accel("auto", lab, probe)
    assert first.accel == second.accel == "tcg" and len(calls) == 1
    assert "cached" in second.reason
    # A verdict taken under other conditions (another QEMU, host kernel...) is redone.
    data = json.loads(lab.accel_cache.read_text())
    data["key"] = data["key"].replace("host_kernel", "host_kernel_old")
    lab.accel_cache.write_text(json.dumps(data))
    assert _accel.cached_verdict(lab) is None
    await _accel.decide_accel("auto", lab, probe)
    assert len(calls) == 2


async def test_kvm_probe_without_device_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_accel, "KVM_DEVICE", str(tmp_path / "no-kvm"))
    verdict = await _accel.probe_kvm(Lab(tmp_path))
    assert verdict.accel == "tcg" and "does not exist" in verdict.reason


# -- the launcher with fake children ---------------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import socket, sys, time
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "no-socket":
        print("fake server: giving up", flush=True); sys.exit(4)
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen()
    print("fake server: listening", flush=True)
    if mode == "die":
        time.sleep(0.5); print("fake server: crashing", flush=True); sys.exit(9)
    time.sleep(3600)
""")

FAKE_QEMU = textwrap.dedent("""
    import os, signal, sys, time
    ctl, out, err = (int(x) for x in sys.argv[1:4])
    mode = sys.argv[4]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "kvm-error":
        print("KVM internal error. Suberror: 1", flush=True)
    if mode in ("hang", "stubborn", "kvm-error"):
        time.sleep(3600)
    if mode == "crash":
        sys.exit(1)
    os.write(ctl, b"start 3.5\\n")
    os.write(out, b"to stdout\\n")
    os.write(err, b"to stderr\\n")
    os.write(ctl, b"exit 7\\n")
    assert os.read(ctl, 100) == b"bye\\n"
""")


class FakeMachine(LabMachine):
    """LabMachine with python scripts standing in for the server and QEMU."""

    qemu_grace = 0.5
    server_grace = 0.5
    server_ready_timeout = 5.0

    def __init__(self, tmp_path: Path, *, server_mode: str = "ok", qemu_mode: str = "ok",
                 device: bool = True, keep_on_failure: bool = False, **kw):
        self.out, self.err = io.BytesIO(), io.BytesIO()
        super().__init__(Lab(tmp_path / "lab"), ["true"], device=device, stdout=self.out,
                         stderr=self.err, keep_on_failure=keep_on_failure, **kw)
        self.server_mode, self.qemu_mode = server_mode, qemu_mode
        self.pids: list[int] = []

    def server_argv(self):
        return [sys.executable, "-c", FAKE_SERVER, str(self.socket_path), self.server_mode]

    def qemu_argv(self, fds):
        return [sys.executable, "-c", FAKE_QEMU, *map(str, fds), self.qemu_mode]


def _gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _run(machine: FakeMachine, timeout: float | None = 20):
    try:
        return await run_in_guest(machine, timeout=timeout, handle_signals=False)
    finally:
        for child in (machine.server, machine.qemu):
            assert child is None or _gone(child.pid), f"{child.name} left running"


async def test_fake_run_streams_output_and_returns_status(tmp_path):
    m = FakeMachine(tmp_path)
    result = await _run(m)
    assert result.status == 7
    assert m.out.getvalue() == b"to stdout\n" and m.err.getvalue() == b"to stderr\n"
    assert result.guest_uptime_at_start == 3.5 and result.boot_seconds is not None
    assert not result.run_dir.exists(), "run directory removed after success"
    assert m.server.returncode == 0 or m.server.returncode == -signal.SIGTERM


async def test_fake_run_writes_command_file(tmp_path):
    scratch = tmp_path / "scratch"
    m = FakeMachine(tmp_path, device=False, scratch=scratch, keep_logs=True)
    result = await _run(m)
    assert result.status == 7
    assert (result.run_dir / "qemu.log").exists() and scratch.is_dir()
    assert not (scratch / _guest.CONTROL_DIR).exists(), "control files removed from scratch"
    shutil.rmtree(result.run_dir)


async def test_server_death_stops_qemu(tmp_path):
    m = FakeMachine(tmp_path, server_mode="die", qemu_mode="hang", keep_on_failure=True)
    # The fake QEMU never exits by itself: without the watch this would hang, so the
    # bound is a hang detector (30 s, against 0.5 s when healthy), not a timing.
    with trio.fail_after(30), pytest.raises(ServerDied) as info:
        await _run(m)
    exc = info.value
    assert exc.returncode == 9 and "fake server: crashing" in exc.log_tail
    assert exc.argv == m.server_argv()
    assert "exit code: 9" in str(exc)
    assert m.kept_run_dir is not None, "run directory kept after a failure"
    assert (m.kept_run_dir / "server.log").exists()
    shutil.rmtree(m.kept_run_dir)
    assert m.qemu.returncode == -signal.SIGTERM


async def test_server_that_never_listens_is_a_launch_failure(tmp_path):
    m = FakeMachine(tmp_path, server_mode="no-socket")
    with pytest.raises(LaunchFailure) as info:
        await _run(m)
    assert info.value.returncode == 4 and "giving up" in info.value.log_tail
    assert m.qemu is None, "QEMU never started"


async def test_timeout_stops_everything(tmp_path):
    m = FakeMachine(tmp_path, qemu_mode="hang")
    with trio.fail_after(30), pytest.raises(GuestTimeout):     # a hang detector, as above
        await _run(m, timeout=1.0)


async def test_stubborn_qemu_is_killed(tmp_path):
    m = FakeMachine(tmp_path, qemu_mode="stubborn")
    with pytest.raises(GuestTimeout):
        await _run(m, timeout=1.0)
    assert m.qemu.killed and m.qemu.returncode == -signal.SIGKILL


async def test_qemu_exit_without_status_is_a_guest_failure(tmp_path):
    m = FakeMachine(tmp_path, qemu_mode="crash")
    with pytest.raises(GuestFailure) as info:
        await _run(m)
    assert info.value.returncode == 1
    assert "before the guest started the command" in str(info.value)
    assert m.kept_run_dir is None, "removed: keep_on_failure=False"


async def test_kvm_internal_error_fails_fast(tmp_path):
    m = FakeMachine(tmp_path, device=False, qemu_mode="kvm-error")
    # Failing fast means not waiting for the guest timeout (600 s): 120 s apart is
    # no figure that drifts with load.
    with trio.fail_after(120), pytest.raises(GuestFailure) as info:
        await _run(m, timeout=600)
    assert "KVM internal error" in str(info.value)


async def test_cancellation_cleans_up(tmp_path):
    m = FakeMachine(tmp_path, qemu_mode="hang")
    with trio.move_on_after(1.0):
        await _run(m, timeout=None)
    assert _gone(m.qemu.pid) and _gone(m.server.pid)


def test_sigterm_to_launcher_stops_children(tmp_path):
    """A real ``python -m qemu``-like launcher process, stopped with SIGTERM."""
    script = textwrap.dedent(f"""
        import sys, trio
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_qemu_unit import FakeMachine
        from qemu._machine import run_in_guest, Interrupted
        from pathlib import Path
        m = FakeMachine(Path({str(tmp_path)!r}), qemu_mode="hang")
        async def main():
            try:
                await run_in_guest(m)
            except Interrupted as exc:
                print("interrupted", exc.signum, m.qemu.pid, m.server.pid, flush=True)
        trio.run(main)
    """)
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    word, signum, qpid, spid = out.split()
    assert word == "interrupted" and int(signum) == signal.SIGTERM
    assert _gone(int(qpid)) and _gone(int(spid))


def test_print_cmdline_lab(capsys):
    assert _cli.main(["print-cmdline", "--lab"]) == 0
    out = capsys.readouterr().out
    assert "-m vdev serve --socket" in out and "exec chroot" in out
    assert "-chardev socket,id=ctl,fd=3" in out


# -- lab build steps: stamps, skipping, invalidation -------------------------------

class FakeStepsLab(Lab):
    """A lab whose steps only write files, so the step machinery runs without apt."""

    def __init__(self, path: Path):
        super().__init__(path, log=io.StringIO())
        self.ran: list[str] = []
        self.version = "1"

    def _ensure_host_tools(self):
        pass

    def steps(self):
        from qemu._lab import Step

        def make(name, upstream):
            def run():
                self.ran.append(name)
                (self.path / name).write_text(self.version)
            inputs = (lambda: f"{name}:{self.version}") if upstream is None else \
                (lambda: f"{name}:{self._stamp_hash(upstream)}")
            return Step(name, f"fake {name}", inputs, run, lambda: self.path / name)

        return [make("a", None), make("b", "a"), make("c", "b")]


def test_lab_steps_skip_resume_and_invalidate(tmp_path):
    lab = FakeStepsLab(tmp_path)
    lab.build(probe=False)
    assert lab.ran == ["a", "b", "c"]
    assert [state for _, state in lab.step_states()] == ["done"] * 3
    lab.ran.clear()
    lab.build(probe=False)
    assert lab.ran == [], "a second build is a no-op"
    lab.build(probe=False, force=["b"])
    assert lab.ran == ["b", "c"], "a rerun step invalidates the steps after it"
    lab.ran.clear()
    (tmp_path / "c").unlink()
    assert [state for _, state in lab.step_states()] == ["done", "done", "missing"]
    lab.build(probe=False)
    assert lab.ran == ["c"], "a step whose output vanished runs again"
    lab.ran.clear()
    lab.version = "2"
    assert next(state for _, state in lab.step_states()) == "stale"
    lab.build(probe=False)
    assert lab.ran == ["a", "b", "c"]
    assert "up to date" in lab.log.getvalue() and "done in" in lab.log.getvalue()


def test_demo_verdicts_compare_each_programs_result():
    """`make demo` closes with one verdict per program, from both transcripts."""
    from qemu import _demo
    native = "\n".join([
        "$ clinfo -l", "Platform #0: PoCL",
        _demo.HEADER_CLINFO, "  Device Name     cpu", "  Max compute units   2",
        _demo.HEADER_VADD, "device: cpu", "vadd: 1048576 elements correct, kernel 2.5 ms",
        _demo.HEADER_DEMO, "Error:", "[0. 0.]", "Norm: 0.0000000000000000e+00"])
    guest = "\n".join([
        "$ lspci -nn", "00:03.0 Processing accelerators",
        _demo.HEADER_CLINFO, "  Device Name  cpu", "  Max compute units  2", "",
        _demo.HEADER_VADD + "     # a plain C sample", "device: cpu",
        "vadd: 1048576 elements correct, kernel 9.1 ms",
        _demo.HEADER_DEMO + "   # unmodified", "Error:", "[0. 0.]",
        "Norm: 0.0000000000000000e+00"])
    lines, same = _demo.verdict_lines(native, guest)
    assert same and len(lines) == 3, lines
    assert all("same result natively and through the device" in line for line in lines)
    lines, same = _demo.verdict_lines(native, guest.replace("Norm: 0.0", "Norm: 1.0"))
    assert not same
    assert "verdict: demo.py: DIFFERENT" in lines[2] and "Norm: 1.0" in lines[2]
    lines, same = _demo.verdict_lines(native, guest.split(_demo.HEADER_VADD)[0])
    assert not same and "(no output)" in lines[1], "a program that printed nothing differs"
    assert _demo.HEADER_CLINFO in _demo.GUEST_OPENCL_SCRIPT, "both sides print the headers"


def test_lab_examples_names_the_directory_or_says_how_to_get_it(tmp_path, capsys):
    assert _cli.main(["lab", "examples", "--dir", str(tmp_path)]) == 1
    assert "run `make lab`" in capsys.readouterr().err
    examples = tmp_path / "root" / "usr" / "share" / "doc" / "python-pyopencl-doc" / "examples"
    examples.mkdir(parents=True)
    assert _cli.main(["lab", "examples", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(examples.resolve())


@pytest.mark.parametrize("command", [["run", "--device-socket", "/run/x.sock"], ["demo"]])
def test_run_and_demo_reach_the_machine_with_every_option(monkeypatch, tmp_path, command):
    """``make demo`` goes through ``run_command`` as ``run`` does: an option only ``run``
    had (--device-socket) once made the demo end in an AttributeError after its host
    half.  Up to the machine, with the lab, the accelerator test and the guest faked."""
    from types import SimpleNamespace

    seen = {}

    class FakeMachine:
        def __init__(self, lab, cmd, **options):
            seen.update(options, command=cmd)

    async def fake_accel(accel, lab):
        return SimpleNamespace(accel="tcg", reason="faked")

    async def fake_run(machine, timeout):
        return SimpleNamespace(status=7)

    monkeypatch.setattr(_cli.Lab, "check_ready", lambda self: None)
    monkeypatch.setattr(_cli, "decide_accel", fake_accel)
    monkeypatch.setattr(_cli, "LabMachine", FakeMachine)
    monkeypatch.setattr(_cli, "run_in_guest", fake_run)
    args = _cli.build_parser().parse_args([*command, "--dir", str(tmp_path)])
    assert _cli.run_command(args, ["true"]) == 7
    assert seen["command"] == ["true"] and seen["accel"] == "tcg"
    expected = Path("/run/x.sock") if command[0] == "run" else None
    assert seen["device_socket"] == expected
