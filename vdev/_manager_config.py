"""The manager's configuration file (TOML, read with the standard library's tomllib).

Everything is checked before anything starts: a manager that came up with half a
configuration would give VMs the wrong share of the device, or none, and say so
only in a VM's guest.  A refusal names the file, the line and the key, says what
is wrong and what was given, and hints at the fix::

    manager.toml:7: [vm.alpha] weight: must be an integer from 1 to 10000, got -1

tomllib keeps no positions, so ``_Positions`` finds them in the text: the line
of each table's header and of each key within it.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from ._sizes import SIZE_SUFFIXES, parse_size

__all__ = ["ConfigError", "DeviceConfig", "ManagerConfig", "VmConfig", "check_device",
           "load_config", "parse_config"]

#: The tenant table's capacity (protocols.tenants.MAX_TENANTS).
MAX_VMS = 64
VM_NAME = re.compile(r"[A-Za-z0-9_-]{1,31}\Z")
MAX_WEIGHT = 10000
BACKENDS = ("opencl", "test")
SANDBOX_MODES = ("auto", "required", "off")
CLASSES = ("interactive", "batch")
DEFAULT_STATE_DIR = "/run/ava-vdev"
DEFAULT_CONTROL = "control.sock"
#: sun_path holds 108 bytes with the terminating NUL (Linux); bind() fails past it.
MAX_UNIX_PATH = 107

TABLES = ("device", "manager", "vm")
DEVICE_KEYS = ("backend", "platform", "device", "device_memory", "sandbox", "command_timeout")
MANAGER_KEYS = ("state_dir", "control", "metrics", "restart_delay")
VM_KEYS = ("socket", "weight", "class", "memory", "objects", "inflight", "rate", "compute_units")

#: A table's path in the document: ``("vm", "alpha")`` for ``[vm.alpha]``, ``()`` for the top.
Table = tuple[str, ...]
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceConfig:
    """``[device]``: which host device the VMs share, and how their servers run."""

    backend: str = "opencl"
    platform: int = 0
    device: int = 0
    device_memory: int | None = None
    sandbox: str = "auto"
    command_timeout: float = 10.0


@dataclass(frozen=True)
class VmConfig:
    """``[vm.NAME]``: one VM's socket, share of the device and quotas (None: no quota)."""

    name: str
    socket: str
    weight: int = 1
    latency_class: str = "batch"
    memory: int | None = None
    objects: int | None = None
    inflight: int | None = None
    rate: float | None = None
    compute_units: int | None = None
    #: The line of its ``[vm.NAME]`` header (of its first mention, for dotted keys or
    #: inline tables), for messages about it later; 0 where none was found.
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ManagerConfig:
    """The whole file, checked, with every path absolute."""

    path: str
    device: DeviceConfig
    state_dir: str
    control: str
    #: An absolute UNIX socket path, or a loopback (host, port), or None: no metrics.
    metrics: str | tuple[str, int] | None
    restart_delay: float
    vms: tuple[VmConfig, ...]
    #: Where each table and key was in the text, so that checks made later
    #: (``check_device``) point at the right line too.
    key_lines: Mapping[Table, int] = field(default_factory=lambda: MappingProxyType({}),
                                           compare=False, repr=False)

    def vm(self, name: str) -> VmConfig:
        """The VM of that name; KeyError if the file has none."""
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


class ConfigError(Exception):
    """A refused configuration: ``str()`` is the whole message, ``PATH:LINE: ...``."""

    def __init__(self, path: str, line: int | None, key: str | None, message: str):
        self.path, self.line, self.key, self.message = path, line, key, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickles only str(self), which __init__ cannot take back.
        return type(self), (self.path, self.line, self.key, self.message)


# --- where things are in the text ------------------------------------------------------

_KEY_PART = re.compile(r"""[ \t]*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')[ \t]*""")
_AFTER_HEADER = re.compile(r"[ \t]*(?:#.*)?\Z")


def _dotted_key(text: str, pos: int) -> tuple[Table, int] | None:
    """A TOML key (``a``, ``"a b"``, ``a . 'b'``) at pos, and where it ends; None if none."""
    parts: list[str] = []
    while True:
        match = _KEY_PART.match(text, pos)
        if match is None:
            return None
        parts.append(next(group for group in match.groups() if group is not None))
        pos = match.end()
        if not text.startswith(".", pos):
            return tuple(parts), pos
        pos += 1


def _header(line: str) -> Table | None:
    """The table a ``[table]`` or ``[[array]]`` header line opens; None for other lines."""
    stripped = line.lstrip()
    brackets = 2 if stripped.startswith("[[") else 1 if stripped.startswith("[") else 0
    if not brackets:
        return None
    found = _dotted_key(stripped, brackets)
    if found is None:
        return None
    table, end = found
    if not stripped.startswith("]" * brackets, end) or \
            not _AFTER_HEADER.match(stripped, end + brackets):
        return None
    return table


def _opens_multiline_string(text: str) -> str | None:
    """The delimiter of a multi-line string the text opens and leaves open, if any.

    Without this, a line such as ``[vm.b]`` inside a ``\"\"\"`` string would be
    taken for a header and every later line blamed on the wrong table.
    """
    starts = [(text.find(d), d) for d in ('"""', "'''") if d in text]
    if not starts:
        return None
    _, delimiter = min(starts)
    return delimiter if text.count(delimiter) % 2 else None


class _Positions:
    """The first line of every table and key path in the text (tomllib keeps none).

    A header ``[vm.alpha]`` records ``("vm", "alpha")`` (and ``("vm",)`` if not yet
    seen); ``socket = ...`` below it records ``("vm", "alpha", "socket")``; dotted
    keys record each of their prefixes, so ``vm.alpha.socket = ...`` at the top
    gives the VM a line too.
    """

    def __init__(self, text: str):
        self.lines: dict[Table, int] = {}
        table: Table = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), 1):
            if in_string is not None:
                if line.count(in_string) % 2:
                    in_string = None
                continue
            header = _header(line)
            if header is not None:
                table = header
                self._record(header, 1, number)
                continue
            found = _dotted_key(line, 0)
            if found is not None and line.startswith("=", found[1]):
                key, end = found
                self._record(table + key, len(table) + 1, number)
                in_string = _opens_multiline_string(line[end + 1:])
            else:
                in_string = _opens_multiline_string(line)

    def _record(self, path: Table, shortest: int, number: int) -> None:
        for length in range(shortest, len(path) + 1):
            self.lines.setdefault(path[:length], number)


def _line_of(lines: Mapping[Table, int], table: Table, key: str | None = None) -> int | None:
    """The key's line; failing that the table's, or the nearest enclosing table's."""
    if key is not None and table + (key,) in lines:
        return lines[table + (key,)]
    for length in range(len(table), 0, -1):
        if table[:length] in lines:
            return lines[table[:length]]
    return None


# --- how values and places are shown ---------------------------------------------------


def _table_name(table: Table) -> str:
    """``vm.alpha``, or ``vm."a b"`` where a part is not a bare TOML key."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in table)


def _show(value: Any) -> str:
    """A value as it was written in TOML (``true``, not Python's ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.date | datetime.time):
        return f"{value.isoformat()} (a date or time)"
    return repr(value)


def _human(size: int) -> str:
    """Bytes the way the file writes them: ``2G``, ``1.5G``, ``4096``."""
    for suffix in ("T", "G", "M", "K"):
        if size >= SIZE_SUFFIXES[suffix]:
            return f"{size / SIZE_SUFFIXES[suffix]:.4g}{suffix}"
    return str(size)


def _suggest(word: str, known: tuple[str, ...]) -> str:
    """``; did you mean 'weight'?`` for a near miss, else nothing."""
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _is_number(value: Any) -> bool:
    """An int or float, which TOML's true and false are not (Python's bool is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


# --- checking values -------------------------------------------------------------------


class _Checker:
    """Reads one file's values, refusing each bad one at its own line."""

    def __init__(self, text: str, path: str):
        self.file = path
        self.lines = _Positions(text).lines

    def error(self, table: Table, key: str | None, message: str) -> ConfigError:
        """``[table] key: message`` at the key's line (or the table's)."""
        where = f"[{_table_name(table)}]" if table else ""
        if key is not None:
            where = f"{where} {key}" if where else key
        return ConfigError(self.file, _line_of(self.lines, table, key), key, f"{where}: {message}")

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        """A top-level table; absent is empty (all its keys are optional)."""
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error((), name, f"must be a table ([{name}]), got {_show(value)}")
        return value

    def known(self, table: Table, values: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Refuse keys the manager does not read: a typo would otherwise be a silent default."""
        for key in values:
            if key not in keys:
                raise self.error(table, key, f"unknown key '{key}' (known: "
                                             f"{', '.join(sorted(keys))}){_suggest(key, keys)}")

    def integer(self, table: Table, values: dict[str, Any], key: str, low: int,
                high: int | None = None, hint: str = "") -> int | None:
        """An integer in range, or None if absent; TOML booleans are not integers."""
        if key not in values:
            return None
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low or \
                (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            hint = hint if _is_number(value) and value < low else ""
            raise self.error(table, key, f"must be an integer {bound}, got {_show(value)}{hint}")
        return value

    def number(self, table: Table, values: dict[str, Any], key: str, noun: str, *,
               zero: bool, hint: str = "") -> float | None:
        """A finite int or float above 0 (or at least 0 where zero is allowed), or None."""
        if key not in values:
            return None
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            bound = "of at least 0" if zero else "above 0"
            hint = hint if _is_number(value) and value <= 0 else ""
            raise self.error(table, key, f"must be {noun} {bound}, got {_show(value)}{hint}")
        return float(value)

    def choice(self, table: Table, values: dict[str, Any], key: str, default: str,
               choices: tuple[str, ...]) -> str:
        """One of a few words."""
        value = values.get(key, default)
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise self.error(table, key, f"must be one of {', '.join(map(_show, choices))}, "
                                         f"got {_show(value)}{hint}")
        return value

    def size(self, table: Table, values: dict[str, Any], key: str, hint: str = "") -> int | None:
        """Bytes: a TOML integer, or a string parse_size reads (``"2G"``); None if absent."""
        if key not in values:
            return None
        value = values[key]
        size: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            size = value if value > 0 else None
        elif isinstance(value, str):
            try:
                size = parse_size(value)
            except (ValueError, OverflowError):  # OverflowError: "inf" (float, then int)
                pass
        if size is None:
            hint = hint if _is_number(value) and value <= 0 else ""
            raise self.error(table, key, "must be a size above 0: bytes as an integer, or a string "
                                         "such as \"512M\" or \"2G\" (K, M, G, T: powers of 1024), "
                                         f"got {_show(value)}{hint}")
        return size

    def path(self, table: Table, values: dict[str, Any], key: str, base: str,
             default: str | None) -> str | None:
        """An absolute, normalized path; a relative one is taken from base."""
        value = values.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.error(table, key, f"must be a path (a non-empty string), got {_show(value)}")
        return os.path.normpath(os.path.join(base, value))

    def socket_path(self, table: Table, key: str, path: str) -> str:
        """Refuse a UNIX socket path bind() would refuse, now rather than at start."""
        length = len(os.fsencode(path))
        if length > MAX_UNIX_PATH:
            raise self.error(table, key, f"{path} is {length} bytes long, and a UNIX socket path "
                                         f"can be at most {MAX_UNIX_PATH}: choose a shorter path "
                                         "(or a shorter [manager] state_dir)")
        return path


# --- the tables ------------------------------------------------------------------------


def _check_top_level(c: _Checker, data: dict[str, Any]) -> None:
    """Only [device], [manager] and [vm.NAME]: anything else is a typo or a misplaced key."""
    known = "(known: [device], [manager], [vm.NAME])"
    for key, value in data.items():
        if key in TABLES:
            continue
        if isinstance(value, dict):
            raise c.error((), key, f"unknown table [{_table_name((key,))}] {known}"
                                   f"{_suggest(key, TABLES)}")
        raise c.error((), key, f"unknown key '{key}' at the top level, outside any table: "
                               f"keys belong in a table {known}")


def _device(c: _Checker, data: dict[str, Any]) -> DeviceConfig:
    """``[device]``; every key has a default."""
    table, values = ("device",), c.table(data, "device")
    c.known(table, values, DEVICE_KEYS)
    return DeviceConfig(
        backend=c.choice(table, values, "backend", "opencl", BACKENDS),
        platform=_default(c.integer(table, values, "platform", 0), 0),
        device=_default(c.integer(table, values, "device", 0), 0),
        device_memory=c.size(table, values, "device_memory"),
        sandbox=c.choice(table, values, "sandbox", "auto", SANDBOX_MODES),
        command_timeout=_default(c.number(table, values, "command_timeout", "a number of seconds",
                                          zero=False), 10.0))


_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\[\]]*)\]|(?P<host>[^\[\]:]*)):(?P<port>\d+)\Z")


def _loopback(text: str) -> tuple[str, int] | str:
    """(host, port) for a loopback HOST:PORT, or why not.

    Only numeric loopback addresses (and ``localhost``, as 127.0.0.1, so that no
    resolver decides) are taken: the metrics carry every VM's name and usage,
    and the manager's servers listen on nothing a network can reach.
    """
    match = _ADDRESS.match(text)
    if match is None:
        return "not HOST:PORT (an IPv6 address goes in brackets, [::1]:9464)"
    port = int(match["port"])
    if not 0 < port < 65536:
        return f"the port must be from 1 to 65535, got {port}"
    host = match["v6"] if match["v6"] is not None else match["host"]
    if match["host"] == "localhost":
        return "127.0.0.1", port
    try:
        address = ipaddress.IPv6Address(host) if match["v6"] is not None \
            else ipaddress.IPv4Address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback or getattr(address, "scope_id", None):
        return f"{host or 'an empty host'} is not a loopback address"
    return str(address), port


def _metrics(c: _Checker, values: dict[str, Any], state_dir: str) -> str | tuple[str, int] | None:
    """A UNIX socket path, or a loopback HOST:PORT: a name with a ':' and no '/' is an address."""
    table, raw = ("manager",), values.get("metrics")
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise c.error(table, "metrics", "must be a UNIX socket path or a loopback HOST:PORT such "
                                        f"as \"127.0.0.1:9464\", got {_show(raw)}")
    if "/" in raw or ":" not in raw:
        path = c.path(table, values, "metrics", state_dir, None)
        assert path is not None
        return c.socket_path(table, "metrics", path)
    address = _loopback(raw)
    if isinstance(address, str):
        raise c.error(table, "metrics", f"{_show(raw)}: {address}; the manager listens only on "
                                        "UNIX sockets and loopback: give 127.0.0.1:PORT, "
                                        "[::1]:PORT, localhost:PORT or a socket path (\"./NAME\" "
                                        "for one with a ':')")
    return address


@dataclass(frozen=True)
class _Manager:
    state_dir: str
    control: str
    metrics: str | tuple[str, int] | None
    restart_delay: float


def _manager(c: _Checker, data: dict[str, Any]) -> _Manager:
    """``[manager]``; paths are relative to the file's directory (state_dir) or to state_dir."""
    table, values = ("manager",), c.table(data, "manager")
    c.known(table, values, MANAGER_KEYS)
    state_dir = c.path(table, values, "state_dir", os.path.dirname(c.file), DEFAULT_STATE_DIR)
    assert state_dir is not None
    control = c.path(table, values, "control", state_dir, DEFAULT_CONTROL)
    assert control is not None
    c.socket_path(table, "control", control)
    metrics = _metrics(c, values, state_dir)
    if metrics == control:
        raise c.error(table, "metrics", f"{metrics} is the control socket too: give metrics a "
                                        "socket of its own")
    restart_delay = c.number(table, values, "restart_delay", "a number of seconds", zero=True)
    return _Manager(state_dir, control, metrics, _default(restart_delay, 1.0))


def _vm_tables(c: _Checker, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``[vm.NAME]`` tables: at least one, at most MAX_VMS, each a table."""
    vms = data.get("vm")
    if vms is None or vms == {}:
        raise c.error(("vm",), None, "no VMs: add one table per VM, e.g. [vm.alpha] with "
                                     "socket = \"alpha.sock\"")
    if not isinstance(vms, dict):
        raise c.error((), "vm", f"must be one table per VM ([vm.NAME], e.g. [vm.alpha]), got "
                                f"{_show(vms)}")
    for name, values in vms.items():
        if not isinstance(values, dict):
            raise c.error(("vm",), name, f"{name} = {_show(values)} is in [vm] itself, but each VM "
                                         "is a table of its own: [vm.NAME], e.g. [vm.alpha], "
                                         f"with {name} = ... below it")
    if len(vms) > MAX_VMS:
        extra = list(vms)[MAX_VMS]
        raise c.error(("vm", extra), None, f"{len(vms)} VMs: a manager serves at most {MAX_VMS} "
                                           "(the tenant table's size)")
    return vms


def _vm(c: _Checker, name: str, values: dict[str, Any], state_dir: str) -> VmConfig:
    """One ``[vm.NAME]`` table (its socket checked against the others' by the caller)."""
    table = ("vm", name)
    if not VM_NAME.match(name):
        raise c.error(table, None, f"bad VM name {name!r}: 1 to 31 letters, digits, '_' or '-' "
                                   "(it names the VM in logs, metrics and `vdev ctl`)")
    c.known(table, values, VM_KEYS)
    if "socket" not in values:
        raise c.error(table, "socket", "missing: the UNIX socket the VM's QEMU connects to, e.g. "
                                       f"socket = \"{name}.sock\" (relative to state_dir)")
    socket = c.path(table, values, "socket", state_dir, None)
    assert socket is not None

    def quota(what: str) -> str:
        return f" (leave {what} out for no quota)"

    return VmConfig(
        name=name,
        socket=c.socket_path(table, "socket", socket),
        weight=_default(c.integer(table, values, "weight", 1, MAX_WEIGHT), 1),
        latency_class=c.choice(table, values, "class", "batch", CLASSES),
        memory=c.size(table, values, "memory", quota("memory")),
        objects=c.integer(table, values, "objects", 1, hint=quota("objects")),
        inflight=c.integer(table, values, "inflight", 1, hint=quota("inflight")),
        rate=c.number(table, values, "rate", "a number of commands per second", zero=False,
                      hint=quota("rate")),
        compute_units=c.integer(table, values, "compute_units", 1,
                                hint=" (leave compute_units out to share the whole device)"),
        line=_default(_line_of(c.lines, table), 0))


def _check_sockets(c: _Checker, manager: _Manager, vms: list[VmConfig]) -> None:
    """Every VM on a socket of its own: two servers cannot listen on one path, and the
    second would unlink the first's (or the manager's) socket at start."""
    owners: dict[str, VmConfig] = {}
    for vm in vms:
        table = ("vm", vm.name)
        if vm.socket == manager.control:
            raise c.error(table, "socket", f"{vm.socket} is the manager's control socket too "
                                           "([manager] control): give the VM a socket of its own")
        if vm.socket == manager.metrics:
            raise c.error(table, "socket", f"{vm.socket} is the manager's metrics socket too "
                                           "([manager] metrics): give the VM a socket of its own")
        first = owners.setdefault(vm.socket, vm)
        if first is not vm:
            at = f" (line {first.line})" if first.line else ""
            raise c.error(table, "socket", f"{vm.socket} is also VM '{first.name}''s socket{at}: "
                                           "each VM needs a socket of its own")


# --- the entry points ------------------------------------------------------------------


def _toml(text: str, path: str) -> dict[str, Any]:
    """The document, or a ConfigError at the line tomllib names in its message."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:
            found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line = int(found.group(1)) if found else None
        raise ConfigError(path, line, None, f"not valid TOML: {exc}") from None


def parse_config(text: str, path: str) -> ManagerConfig:
    """Check a whole configuration; path is where it came from (relative paths start at
    its directory) and what every message names.  Raises ConfigError."""
    path = os.path.abspath(path)
    data = _toml(text, path)
    c = _Checker(text, path)
    _check_top_level(c, data)
    device = _device(c, data)
    manager = _manager(c, data)
    vms = [_vm(c, name, values, manager.state_dir) for name, values in _vm_tables(c, data).items()]
    _check_sockets(c, manager, vms)
    return ManagerConfig(path=path, device=device, state_dir=manager.state_dir,
                         control=manager.control, metrics=manager.metrics,
                         restart_delay=manager.restart_delay, vms=tuple(vms),
                         key_lines=MappingProxyType(dict(c.lines)))


def load_config(path: str) -> ManagerConfig:
    """Read and check the file; one that cannot be read is refused like a bad one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(os.path.abspath(path), None, None,
                          f"cannot read the configuration: {exc}") from None
    return parse_config(text, path)


def check_device(cfg: ManagerConfig, *, compute_units: int, global_mem_size: int) -> list[str]:
    """The VMs' slices against the device the manager found; returns warnings.

    A partition with more compute units than the device has, or a memory quota
    past its memory, could never be honoured, so it is refused.  Memory quotas
    that only add up past the device's are allowed (VMs rarely fill their quotas
    at once, and objects past the device memory wait in the host store) but said.
    """
    def refuse(vm: VmConfig, key: str, message: str) -> ConfigError:
        line = _line_of(cfg.key_lines, ("vm", vm.name), key) or vm.line or None
        return ConfigError(cfg.path, line, key, f"[vm.{vm.name}] {key}: {message}")

    for vm in cfg.vms:
        if vm.compute_units is not None and vm.compute_units > compute_units:
            raise refuse(vm, "compute_units",
                         f"{vm.compute_units} compute units asked, the device has {compute_units} "
                         "(ask at most that, or leave compute_units out to share the whole device)")
        if vm.memory is not None and vm.memory > global_mem_size:
            raise refuse(vm, "memory",
                         f"a quota of {_human(vm.memory)} ({vm.memory} bytes) asked, the device "
                         f"has {_human(global_mem_size)} ({global_mem_size} bytes)")
    warnings = []
    capacity = global_mem_size
    limit = cfg.device.device_memory
    if limit is not None:
        if limit > global_mem_size:
            line = _line_of(cfg.key_lines, ("device",), "device_memory")
            where = f"{cfg.path}:{line}" if line else cfg.path
            warnings.append(f"{where}: [device] device_memory: {_human(limit)} is more "
                            f"than the device's {_human(global_mem_size)}; it is cut to that")
        capacity = min(limit, global_mem_size)
    total = sum(vm.memory or 0 for vm in cfg.vms)
    if total > capacity:
        warnings.append(f"{cfg.path}: the VMs' memory quotas add up to {_human(total)}, more than "
                        f"the device memory's {_human(capacity)}: allowed, but a VM may find the "
                        "device full before its quota (objects past it wait in the host store)")
    return warnings
