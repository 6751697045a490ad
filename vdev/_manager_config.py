"""The manager's configuration file (TOML, read with the standard library's tomllib).

Everything is checked before anything starts, and a refusal names the file, the
line and the key, says what is wrong and what was given, and hints at the fix.
tomllib keeps no positions, so ``_Lines`` finds them in the text: the line of a
table's header, and of a key within it.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ._sizes import parse_size

MAX_VMS = 64
VM_NAME = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")
BACKENDS = ("opencl", "test")
SANDBOX_MODES = ("auto", "required", "off")
CLASSES = ("interactive", "batch")
DEFAULT_STATE_DIR = "/run/ava-vdev"
MAX_WEIGHT = 10000

DEVICE_KEYS = ("backend", "platform", "device", "device_memory", "sandbox", "command_timeout")
MANAGER_KEYS = ("state_dir", "control", "metrics", "restart_delay")
VM_KEYS = ("socket", "weight", "class", "memory", "objects", "inflight", "rate",
           "compute_units")


@dataclass(frozen=True)
class DeviceConfig:
    backend: str = "opencl"
    platform: int = 0
    device: int = 0
    device_memory: int | None = None
    sandbox: str = "auto"
    command_timeout: float = 10.0


@dataclass(frozen=True)
class VmConfig:
    name: str
    socket: str
    weight: int = 1
    latency_class: str = "batch"
    memory: int | None = None
    objects: int | None = None
    inflight: int | None = None
    rate: float | None = None
    compute_units: int | None = None
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ManagerConfig:
    path: str
    device: DeviceConfig
    state_dir: str
    control: str
    metrics: str | tuple[str, int] | None
    restart_delay: float
    vms: tuple[VmConfig, ...]

    def vm(self, name: str) -> VmConfig:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


class ConfigError(Exception):
    def __init__(self, path: str, line: int | None, key: str | None, message: str):
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


class _Lines:
    """Where tables and keys are in the text (tomllib says nothing of positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r'^\s*("?)([A-Za-z0-9_.-]+)\1\s*=')

    def __init__(self, text: str):
        self.headers: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = ".".join(p.strip().strip('"').strip("'")
                                 for p in header.group(1).split("."))
                self.headers.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(2)), number)

    def of(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if table in self.headers:
            return self.headers[table]
        nested = [line for name, line in self.headers.items() if name.startswith(table + ".")]
        return min(nested) if nested and table else None


class _Reader:
    """Checks one file's values, raising ConfigError at the right line."""

    def __init__(self, text: str, path: str):
        self.path = path
        self.lines = _Lines(text)
        self.base = os.path.dirname(path)

    def fail(self, table: str, key: str | None, message: str) -> ConfigError:
        where = f"[{table}] {key}" if key and table else (key or f"[{table}]")
        return ConfigError(self.path, self.lines.of(table, key), key, f"{where}: {message}")

    def known(self, table: str, values: dict[str, Any], keys: tuple[str, ...]) -> None:
        for key in values:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.fail(table, key, f"unknown key '{key}' (known: "
                                            f"{', '.join(sorted(keys))}){hint}")

    def integer(self, table: str, values: dict[str, Any], key: str, default: int | None,
                low: int, high: int | None = None) -> int | None:
        if key not in values:
            return default
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low or \
                (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise self.fail(table, key, f"must be an integer {bound}, got {value!r}")
        return value

    def number(self, table: str, values: dict[str, Any], key: str, default: float | None,
               *, positive: bool) -> float | None:
        if key not in values:
            return default
        value = values[key]
        ok = not isinstance(value, bool) and isinstance(value, int | float) and \
            math.isfinite(value) and (value > 0 if positive else value >= 0)
        if not ok:
            raise self.fail(table, key, f"must be a number {'above' if positive else 'of at least'}"
                                        f" 0, got {value!r}")
        return float(value)

    def choice(self, table: str, values: dict[str, Any], key: str, default: str,
               choices: tuple[str, ...]) -> str:
        value = values.get(key, default)
        if value not in choices:
            raise self.fail(table, key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def size(self, table: str, values: dict[str, Any], key: str) -> int | None:
        if key not in values:
            return None
        value = values[key]
        if isinstance(value, bool):
            value = None
        if isinstance(value, int):
            if value > 0:
                return value
        elif isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError as exc:
                raise self.fail(table, key, str(exc)) from None
        raise self.fail(table, key, f"must be a size above 0 (bytes, or a string such as "
                                    f"\"2G\"), got {values[key]!r}")

    def location(self, table: str, values: dict[str, Any], key: str, base: str,
             default: str | None) -> str | None:
        value = values.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.fail(table, key, f"must be a path, got {value!r}")
        return os.path.normpath(os.path.join(base, value))

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(self.path, self.lines.of("", name), name,
                              f"{name} must be a table ([{name}]), got {value!r}")
        return value


def _loopback(text: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[([0-9a-fA-F:]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        return None
    if host == "localhost":
        return "127.0.0.1", port
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host, port
    except ValueError:
        pass
    return None


def parse_config(text: str, path: str) -> ManagerConfig:
    path = os.path.abspath(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, int(found.group(1)) if found else None, None,
                          f"not valid TOML: {exc}") from None
    r = _Reader(text, path)
    for key, value in data.items():
        if key not in ("device", "manager", "vm"):
            what = "table" if isinstance(value, dict) else "key"
            raise ConfigError(path, r.lines.of(key) or r.lines.of("", key), key,
                              f"unknown {what} '{key}' (known: [device], [manager], "
                              "[vm.NAME])")
    dev = r.table(data, "device")
    r.known("device", dev, DEVICE_KEYS)
    device = DeviceConfig(
        backend=r.choice("device", dev, "backend", "opencl", BACKENDS),
        platform=r.integer("device", dev, "platform", 0, 0) or 0,
        device=r.integer("device", dev, "device", 0, 0) or 0,
        device_memory=r.size("device", dev, "device_memory"),
        sandbox=r.choice("device", dev, "sandbox", "auto", SANDBOX_MODES),
        command_timeout=r.number("device", dev, "command_timeout", 10.0, positive=True) or 10.0)
    man = r.table(data, "manager")
    r.known("manager", man, MANAGER_KEYS)
    state_dir = r.location("manager", man, "state_dir", r.base, DEFAULT_STATE_DIR)
    assert state_dir is not None
    control = r.location("manager", man, "control", state_dir, "control.sock")
    assert control is not None
    metrics: str | tuple[str, int] | None = None
    raw_metrics = man.get("metrics")
    if raw_metrics is not None:
        if not isinstance(raw_metrics, str) or not raw_metrics:
            raise r.fail("manager", "metrics", f"must be a UNIX socket path or HOST:PORT on "
                                               f"loopback, got {raw_metrics!r}")
        if "/" in raw_metrics or not re.search(r":\d+\Z", raw_metrics):
            metrics = r.location("manager", man, "metrics", state_dir, None)
        else:
            metrics = _loopback(raw_metrics)
            if metrics is None:
                raise r.fail("manager", "metrics", f"{raw_metrics!r} is not a loopback "
                                                   "address (servers listen on UNIX sockets "
                                                   "or loopback only: 127.0.0.1:PORT, "
                                                   "[::1]:PORT, localhost:PORT, or a path)")
    restart_delay = r.number("manager", man, "restart_delay", 1.0, positive=False)
    vms_table = data.get("vm")
    if vms_table is None or vms_table == {}:
        raise ConfigError(path, r.lines.of("vm"), "vm", "no VMs: add a table per VM, e.g. "
                                                        "[vm.alpha] with socket = \"alpha.sock\"")
    if not isinstance(vms_table, dict):
        raise ConfigError(path, r.lines.of("", "vm"), "vm", "vm must hold one table per VM "
                                                            "([vm.NAME])")
    vms: list[VmConfig] = []
    sockets: dict[str, str] = {}
    for name, values in vms_table.items():
        table = f"vm.{name}"
        if not isinstance(values, dict):
            raise ConfigError(path, r.lines.of("vm", name), name,
                              f"[vm] {name}: each VM is a table of its own ([vm.NAME]), got "
                              f"{values!r}")
        if not VM_NAME.match(name):
            raise r.fail(table, None, f"the VM name {name!r} must be 1 to 31 letters, digits, "
                                      "'_' or '-'")
        r.known(table, values, VM_KEYS)
        if "socket" not in values:
            raise r.fail(table, None, "needs a socket (socket = \"PATH\": where the VM's "
                                      "QEMU connects)")
        sock = r.location(table, values, "socket", state_dir, None)
        assert sock is not None
        for what, other in (("the control socket", control), ("the metrics socket", metrics)):
            if sock == other:
                raise r.fail(table, "socket", f"{sock} is {what} too")
        if sock in sockets:
            raise r.fail(table, "socket", f"{sock} is also VM {sockets[sock]!r}'s socket: each "
                                          "VM needs its own")
        sockets[sock] = name
        vms.append(VmConfig(
            name=name, socket=sock,
            weight=r.integer(table, values, "weight", 1, 1, MAX_WEIGHT) or 1,
            latency_class=r.choice(table, values, "class", "batch", CLASSES),
            memory=r.size(table, values, "memory"),
            objects=r.integer(table, values, "objects", None, 1),
            inflight=r.integer(table, values, "inflight", None, 1),
            rate=r.number(table, values, "rate", None, positive=True),
            compute_units=r.integer(table, values, "compute_units", None, 1),
            line=r.lines.of(table)))
        if len(vms) > MAX_VMS:
            raise r.fail(table, None, f"more than {MAX_VMS} VMs: one manager serves at most "
                                      f"{MAX_VMS}")
    return ManagerConfig(path=path, device=device, state_dir=state_dir, control=control,
                         metrics=metrics, restart_delay=restart_delay or 0.0, vms=tuple(vms))


def load_config(path: str) -> ManagerConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(os.path.abspath(path), None, None,
                          f"cannot read the configuration: {exc}") from None
    return parse_config(text, path)


def check_device(cfg: ManagerConfig, *, compute_units: int, global_mem_size: int) -> list[str]:
    """The VMs' slices against the device: a partition larger than the device, or a
    memory quota past its memory, is refused; quotas that add up past it are
    allowed (not every VM uses its whole quota) but said."""
    for vm in cfg.vms:
        if vm.compute_units and vm.compute_units > compute_units:
            raise _at(cfg, vm, "compute_units",
                      f"{vm.compute_units} compute units asked, the device has "
                      f"{compute_units}")
        if vm.memory and vm.memory > global_mem_size:
            raise _at(cfg, vm, "memory",
                      f"{vm.memory} bytes asked, the device has {global_mem_size}")
    warnings = []
    total = sum(vm.memory or 0 for vm in cfg.vms)
    if total > global_mem_size:
        warnings.append(f"{cfg.path}: the VMs' memory quotas add up to {total} bytes, more than "
                        f"the device's {global_mem_size}: a VM may find the device full before "
                        "its quota")
    return warnings


def _at(cfg: ManagerConfig, vm: VmConfig, key: str, message: str) -> ConfigError:
    try:
        with open(cfg.path, encoding="utf-8") as f:
            lines = _Lines(f.read())
        line = lines.of(f"vm.{vm.name}", key)
    except OSError:
        line = vm.line
    return ConfigError(cfg.path, line, key, f"[vm.{vm.name}] {key}: {message}")
