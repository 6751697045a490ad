"""The deployment files: the manager's systemd unit and example configuration, and the
libvirt domain that attaches the device.

Nothing here starts a service or a VM.  The files are parsed and checked against what
they must agree with: the unit against the sandboxing it promises (and against
``systemd-analyze verify`` where that exists), the example configuration against
tomllib and the manager's own loader, and the domain XML against what
``python -m qemu print-cmdline`` prints for the same socket and memory size.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "vdev" / "deploy" / "ava-vdev-manager.service"
TOML = REPO / "vdev" / "deploy" / "ava-vdev-manager.toml"
DOMAIN = REPO / "qemu" / "libvirt" / "ava-vdev-domain.xml"

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
SOCKET = "/run/ava-vdev/alpha.sock"
MEMORY = "2G"


# -- the libvirt domain -------------------------------------------------------------------

def _domain() -> ET.Element:
    return ET.parse(DOMAIN).getroot()


def _commandline_args(root: ET.Element) -> list[str]:
    lines = root.findall(f"{{{QEMU_NS}}}commandline")
    assert len(lines) == 1, f"{DOMAIN}: expected one <qemu:commandline>, found {len(lines)}"
    return [arg.attrib["value"] for arg in lines[0].findall(f"{{{QEMU_NS}}}arg")]


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    """``-opt value`` pairs (every option print-cmdline prints takes one value)."""
    assert len(argv) % 2 == 0 and all(a.startswith("-") for a in argv[::2]), \
        f"not a list of -option value pairs: {argv}"
    return list(zip(argv[::2], argv[1::2], strict=True))


def _mib(element: ET.Element) -> int:
    scale = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
    unit = element.get("unit", "KiB").lower()     # libvirt's default unit is KiB
    assert unit in scale, f"<{element.tag} unit={unit!r}>: a unit this test does not know"
    nbytes = int((element.text or "").strip()) * scale[unit]
    assert nbytes % (1 << 20) == 0, f"<{element.tag}> is not a whole number of MiB"
    return nbytes >> 20


def _options(text: str) -> tuple[str, dict[str, str]]:
    """QEMU's ``type,key=value,...`` -> ("type", {key: value})."""
    first, *rest = text.split(",")
    return first, dict(part.split("=", 1) for part in rest)


def domain_as_qemu_args(root: ET.Element) -> list[tuple[str, str]]:
    """The QEMU arguments the domain stands for, in print-cmdline's own notation.

    libvirt writes the machine, memory, accelerator and CPU options itself (from
    <os>, <memory>, <memoryBacking>, the domain type and <cpu>); those are translated
    back here, naming the RAM backend "mem" as print-cmdline does (libvirt's own id is
    pc.ram).  What <qemu:commandline> holds is taken verbatim."""
    pairs: list[tuple[str, str]] = []
    if root.get("type") == "kvm":
        pairs.append(("-accel", "kvm"))
    cpu = root.find("cpu")
    if cpu is not None and cpu.get("mode") == "host-passthrough":
        pairs.append(("-cpu", "host"))
    memory = root.find("memory")
    assert memory is not None, f"{DOMAIN}: no <memory>"
    size = f"{_mib(memory)}M"
    pairs.append(("-m", size))
    backing = root.find("memoryBacking")
    if backing is not None:
        source = backing.find("source")
        access = backing.find("access")
        kind = source.get("type") if source is not None else "ram"
        share = "on" if access is not None and access.get("mode") == "shared" else "off"
        pairs.append(("-object", f"memory-backend-{kind},id=mem,size={size},share={share}"))
    os_type = root.find("os/type")
    assert os_type is not None, f"{DOMAIN}: no <os><type>"
    machine = os_type.get("machine", "")
    pairs.append(("-machine", f"{machine},memory-backend=mem" if backing is not None else machine))
    return pairs + _pairs(_commandline_args(root))


@pytest.fixture(scope="module")
def printed() -> list[str]:
    """What ``python -m qemu print-cmdline`` prints for QEMU, as an argv."""
    proc = subprocess.run(
        [sys.executable, "-m", "qemu", "print-cmdline", "--socket", SOCKET, "--memory", MEMORY],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"print-cmdline failed ({proc.returncode}): {proc.stderr}"
    lines = proc.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("qemu-system-")), None)
    assert start is not None, f"no QEMU command line in print-cmdline's output:\n{proc.stdout}"
    text = "\n".join(lines[start:]).replace("\\\n", " ")
    argv = shlex.split(text, comments=True)
    assert argv[-1] == "...", f"print-cmdline's QEMU line no longer ends in '...': {argv}"
    return argv[1:-1]


def test_domain_xml_is_a_libvirt_domain_with_the_qemu_namespace() -> None:
    root = _domain()
    assert root.tag == "domain", f"{DOMAIN}: the root element is <{root.tag}>, not <domain>"
    assert root.get("type") in ("kvm", "qemu")
    namespaces = [ns for _event, ns in ET.iterparse(DOMAIN, events=("start-ns",))]
    assert ("qemu", QEMU_NS) in namespaces, \
        f"{DOMAIN}: xmlns:qemu='{QEMU_NS}' is not declared (declared: {namespaces})"
    for tag in ("name", "memory", "vcpu", "os/type", "devices", "devices/disk"):
        assert root.find(tag) is not None, f"{DOMAIN}: no <{tag}>"
    assert root.find("os/type").text == "hvm"
    # vfio-user needs guest RAM the server can map: a shared memfd.
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    assert _commandline_args(root), f"{DOMAIN}: <qemu:commandline> passes no arguments"


def test_domain_xml_matches_print_cmdline(printed: list[str]) -> None:
    expected = _pairs(printed)
    got = domain_as_qemu_args(_domain())
    missing = [p for p in expected if p not in got]
    extra = [p for p in got if p not in expected]
    assert not missing and not extra, (
        f"{DOMAIN} and `python -m qemu print-cmdline --socket {SOCKET} --memory {MEMORY}` "
        "disagree:\n"
        + "".join(f"  only print-cmdline: {shlex.join(p)}\n" for p in missing)
        + "".join(f"  only the domain:    {shlex.join(p)}\n" for p in extra))


def test_qemu_commandline_holds_exactly_the_device(printed: list[str]) -> None:
    """The device goes through <qemu:commandline> verbatim; what libvirt generates itself
    (-m, -machine, the RAM backend, -accel, -cpu) must not be repeated there: a second
    -machine would be merged into libvirt's and replace its machine type and RAM."""
    devices = [p for p in _pairs(printed) if p[0] == "-device"]
    assert devices, f"print-cmdline printed no -device: {printed}"
    got = _pairs(_commandline_args(_domain()))
    assert got == devices, (
        f"{DOMAIN}: <qemu:commandline> should pass exactly print-cmdline's device "
        f"arguments\n  print-cmdline: {[shlex.join(p) for p in devices]}\n"
        f"  the domain:    {[shlex.join(p) for p in got]}")
    backend, opts = _options(next(v for k, v in _pairs(printed) if k == "-object"))
    assert backend == "memory-backend-memfd" and opts.get("share") == "on", \
        f"print-cmdline's RAM is no longer a shared memfd ({backend}, {opts}): update the domain"


def test_domain_uses_the_example_configuration_socket() -> None:
    config = tomllib.loads(TOML.read_text())
    name = _domain().findtext("name")
    (device,) = [v for k, v in _pairs(_commandline_args(_domain())) if k == "-device"]
    assert name in config["vm"], f"{DOMAIN}: VM {name!r} is not in {TOML}"
    assert f'"path":"{config["vm"][name]["socket"]}"' in device, \
        f"{DOMAIN}'s device socket is not [vm.{name}]'s socket in {TOML}: {device}"


# -- the systemd unit ---------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file -> {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(io.StringIO(text), 1):
        line = pending + raw.rstrip("\n")
        pending = ""
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.endswith("\\"):
            pending = stripped[:-1] + " "
            continue
        if stripped.startswith("["):
            assert stripped.endswith("]"), f"line {number}: bad section header {stripped!r}"
            current = sections.setdefault(stripped[1:-1], {})
            continue
        assert current is not None, f"line {number}: {stripped!r} before any section"
        key, sep, value = stripped.partition("=")
        assert sep, f"line {number}: not KEY=VALUE: {stripped!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "the file ends in a continuation line"
    return sections


#: [Service] directive -> its intended value (sets: space-separated, any order).
SANDBOXING: dict[str, str | frozenset[str]] = {
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": frozenset({"AF_UNIX"}),
    "IPAddressDeny": "any",
    "IPAddressAllow": "localhost",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "NoNewPrivileges": "yes",
    "RestrictNamespaces": frozenset({"mnt", "net", "ipc", "uts"}),
    "CapabilityBoundingSet": frozenset({"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_SETUID",
                                        "CAP_SETGID", "CAP_KILL"}),
    "DevicePolicy": "closed",
}
#: Directives left out on purpose; the unit must say why in a comment.
NOT_USED = ("MemoryDenyWriteExecute", "PrivateUsers", "PrivateDevices", "ProcSubset",
            "SystemCallFilter")


def _service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def _one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{UNIT}: [Service] has no {key}="
    assert len(values) == 1, f"{UNIT}: [Service] sets {key}= {len(values)} times: {values}"
    return values[0]


def test_unit_file_structure() -> None:
    sections = parse_unit(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(sections), f"{UNIT}: sections {list(sections)}"
    service = sections["Service"]
    assert _one(service, "Type") == "simple"
    start = shlex.split(_one(service, "ExecStart"))
    assert start[0] == "/opt/ava-vdev/.venv/bin/ava-vdev", start
    assert start[1:] == ["manager", "--config", "/etc/ava-vdev/manager.toml"], start
    reload = shlex.split(_one(service, "ExecReload"))
    assert os.path.basename(reload[0]) == "kill" and "$MAINPID" in reload, reload
    assert "-HUP" in reload or "-SIGHUP" in reload, reload
    assert _one(service, "KillMode") == "mixed"
    assert _one(service, "Restart") == "on-failure"
    assert _one(service, "RuntimeDirectory") == "ava-vdev"
    mode = int(_one(service, "RuntimeDirectoryMode"), 8)
    # The executor sandbox refuses a state directory that others can write to.
    assert not mode & 0o022, f"RuntimeDirectoryMode={mode:o} is group- or world-writable"
    # QEMU, running as another user, must reach the sockets in it.
    assert mode & 0o001, f"RuntimeDirectoryMode={mode:o}: others cannot traverse it"
    assert "UMask" not in service, "a UMask would make the sandbox's root untraversable"
    assert "User" not in service and "DynamicUser" not in service, \
        "the executor sandbox needs the manager to run as root"
    assert sections["Install"].get("WantedBy") == ["multi-user.target"]


def test_unit_file_sandboxing() -> None:
    service = _service()
    wrong = []
    for key, want in SANDBOXING.items():
        values = service.get(key)
        if not values:
            wrong.append(f"{key}= missing (want {want})")
            continue
        if isinstance(want, frozenset):
            got: str | frozenset[str] = frozenset(" ".join(values).split())
        else:
            got = values[-1]
        if got != want:
            wrong.append(f"{key}={' '.join(values)} (want {want})")
    assert "/run/ava-vdev" in " ".join(service.get("ReadWritePaths", [])).split()
    assert not wrong, f"{UNIT}:\n  " + "\n  ".join(wrong)


def test_unit_file_explains_what_it_leaves_out() -> None:
    service = _service()
    text = UNIT.read_text()
    for key in NOT_USED:
        assert key not in service, f"{UNIT}: {key}= is set, but the manager cannot have it"
        explained = re.search(rf"^#\s*{key}=.*(\n#.+)*", text, re.MULTILINE)
        assert explained, f"{UNIT}: no comment says why {key}= is not used"
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "PoCL" in comments and "JIT" in comments      # MemoryDenyWriteExecute
    for device in ("/dev/nvidia", "char-drm"):            # GPU nodes, commented out
        assert re.search(rf"^#DeviceAllow={device}", text, re.MULTILINE), device


def test_unit_file_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    """``systemd-analyze verify`` where the machine has it; the structural checks above
    run everywhere."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed: the unit was checked structurally only")
        return
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(),
                           flags=re.MULTILINE))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=120, check=False)
    # verify exits 0 on unknown keys and bad values too, and only warns: any line about
    # our file is a failure.
    about_ours = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if str(copy) in line or UNIT.name in line]
    assert proc.returncode == 0 and not about_ours, \
        f"systemd-analyze verify ({proc.returncode}):\n{proc.stdout}{proc.stderr}"


# -- the example configuration ------------------------------------------------------------

def test_example_configuration_parses() -> None:
    config = tomllib.loads(TOML.read_text())
    assert config["device"]["backend"] == "opencl"
    state_dir = config["manager"]["state_dir"]
    runtime = "/run/" + _one(_service(), "RuntimeDirectory")
    assert state_dir == runtime, f"state_dir {state_dir} is not the unit's {runtime}"
    assert set(config["vm"]) == {"alpha", "beta"}
    for name, vm in config["vm"].items():
        socket = vm["socket"]
        assert socket.startswith(runtime + "/"), \
            f"[vm.{name}] socket {socket} is outside {runtime}, which is all the unit lets " \
            "the manager write to"
    assert config["vm"]["alpha"]["class"] == "interactive"
    assert config["vm"]["beta"]["class"] == "batch"
    metrics = config["manager"].get("metrics", "")
    if re.search(r":\d+\Z", metrics) and "/" not in metrics:
        families = " ".join(_service()["RestrictAddressFamilies"]).split()
        assert "AF_INET" in families, "metrics on a TCP port needs AF_INET in the unit"
    else:
        assert metrics.startswith(runtime + "/"), metrics


def test_example_configuration_loads_with_the_manager() -> None:
    from vdev._manager_config import load_config

    cfg = load_config(str(TOML))
    assert [vm.name for vm in cfg.vms] == ["alpha", "beta"]
    assert cfg.vm("alpha").socket == "/run/ava-vdev/alpha.sock"
    assert cfg.vm("beta").socket == "/run/ava-vdev/beta.sock"
    assert cfg.vm("alpha").weight == 3 and cfg.vm("alpha").latency_class == "interactive"
    assert cfg.vm("beta").memory == 4 << 30
    assert cfg.metrics == "/run/ava-vdev/metrics.sock"
