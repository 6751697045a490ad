"""The manager's configuration loader: what it reads, and how it refuses.

Every refusal must name the file, the line and the key, so most tests check
``exc.line`` and ``exc.key`` as well as the message.
"""

from __future__ import annotations

import os
import pickle

import pytest

from vdev._manager_config import (
    ConfigError,
    DeviceConfig,
    ManagerConfig,
    VmConfig,
    check_device,
    load_config,
    parse_config,
)

PATH = "/etc/ava-vdev/manager.toml"
MINIMAL = '[vm.alpha]\nsocket = "alpha.sock"\n'

FULL = """\
# a comment
[device]
backend = "test"
platform = 1
device = 2
device_memory = "8G"
sandbox = "required"
command_timeout = 2.5

[manager]
state_dir = "state"
control = "ctl/control.sock"
metrics = "127.0.0.1:9464"
restart_delay = 0

[vm.alpha]
socket = "alpha.sock"
weight = 3
class = "interactive"
memory = "2G"
objects = 4096
inflight = 64
rate = 5000
compute_units = 1

[vm.beta]
socket = "/var/run/beta.sock"
memory = 1048576
rate = 0.5
"""


def refused(text: str, path: str = PATH) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return info.value


# --- what is read ----------------------------------------------------------------------


def test_full_configuration_reads_every_field_and_resolves_paths():
    cfg = parse_config(FULL, PATH)
    assert cfg.path == PATH
    assert cfg.device == DeviceConfig(backend="test", platform=1, device=2, device_memory=8 << 30,
                                      sandbox="required", command_timeout=2.5)
    assert cfg.state_dir == "/etc/ava-vdev/state"
    assert cfg.control == "/etc/ava-vdev/state/ctl/control.sock"
    assert cfg.metrics == ("127.0.0.1", 9464)
    assert cfg.restart_delay == 0.0 and isinstance(cfg.restart_delay, float)
    assert [vm.name for vm in cfg.vms] == ["alpha", "beta"]
    assert cfg.vm("alpha") == VmConfig(name="alpha", socket="/etc/ava-vdev/state/alpha.sock",
                                       weight=3, latency_class="interactive", memory=2 << 30,
                                       objects=4096, inflight=64, rate=5000.0, compute_units=1)
    assert cfg.vm("alpha").line == 16 and cfg.vm("beta").line == 26
    beta = cfg.vm("beta")
    assert (beta.socket, beta.weight, beta.latency_class, beta.memory, beta.rate) == \
        ("/var/run/beta.sock", 1, "batch", 1 << 20, 0.5)
    assert (beta.objects, beta.inflight, beta.compute_units) == (None, None, None)
    with pytest.raises(KeyError):
        cfg.vm("gamma")


def test_minimal_configuration_takes_the_defaults():
    cfg = parse_config(MINIMAL, "relative/manager.toml")
    assert cfg.path == os.path.abspath("relative/manager.toml")
    assert cfg.device == DeviceConfig("opencl", 0, 0, None, "auto", 10.0)
    assert cfg.state_dir == "/run/ava-vdev"
    assert cfg.control == "/run/ava-vdev/control.sock"
    assert cfg.metrics is None and cfg.restart_delay == 1.0
    assert cfg.vms == (VmConfig("alpha", "/run/ava-vdev/alpha.sock", 1, "batch",
                                None, None, None, None, None),)
    assert cfg.vms[0].line == 1


def test_configurations_compare_by_value_not_by_line():
    moved = parse_config("\n\n" + MINIMAL, PATH)
    assert moved == parse_config(MINIMAL, PATH) and moved.vms[0].line == 3
    assert hash(moved) == hash(parse_config(MINIMAL, PATH))


def test_vms_keep_file_order():
    text = "".join(f'[vm.{n}]\nsocket = "{n}.sock"\n' for n in ("zeta", "alpha", "mu"))
    assert [vm.name for vm in parse_config(text, PATH).vms] == ["zeta", "alpha", "mu"]


@pytest.mark.parametrize("header", ['[ vm . "alpha" ]', "[vm.'alpha']", "[vm.alpha]  # the VM",
                                    '["vm".alpha]'])
def test_header_spellings_are_found(header):
    cfg = parse_config(f'# x\n{header}\nsocket = "a.sock"\n', PATH)
    assert cfg.vm("alpha").line == 2
    exc = refused(f'# x\n{header}\nsocket = "a.sock"\n\nweight = 0\n')
    assert exc.line == 5 and exc.key == "weight"


def test_dotted_keys_and_inline_tables_have_lines():
    cfg = parse_config('\nvm.alpha.socket = "a.sock"\n', PATH)
    assert cfg.vm("alpha").line == 2
    assert refused('\nvm.alpha.socket = "a.sock"\nvm.alpha.weight = 0\n').line == 3
    exc = refused('\n\nvm = { alpha = { socket = "a.sock", weight = 0 } }\n')
    assert exc.line == 3 and exc.key == "weight"


def test_a_header_inside_a_multiline_string_is_not_a_header():
    exc = refused('[vm.a]\nsocket = """\n[vm.b]\nweight = 3\n"""\nweight = 0\n')
    assert exc.line == 6 and "[vm.a] weight" in str(exc)


@pytest.mark.parametrize(("metrics", "want"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("127.8.9.10:1", ("127.8.9.10", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:65535", ("127.0.0.1", 65535)),
    ("metrics.sock", "/srv/vdev/metrics.sock"),
    ("/run/m/metrics.sock", "/run/m/metrics.sock"),
    ("./odd:name", "/srv/vdev/odd:name"),
])
def test_metrics_is_a_socket_path_or_a_loopback_address(metrics, want):
    cfg = parse_config(f'[manager]\nstate_dir = "/srv/vdev"\nmetrics = "{metrics}"\n' + MINIMAL,
                       PATH)
    assert cfg.metrics == want


def test_load_config_reads_the_file_relative_to_its_directory(tmp_path):
    (tmp_path / "m.toml").write_text('[manager]\nstate_dir = "s"\n' + MINIMAL)
    cfg = load_config(str(tmp_path / "m.toml"))
    assert cfg.path == str(tmp_path / "m.toml")
    assert cfg.vm("alpha").socket == str(tmp_path / "s" / "alpha.sock")


# --- the message format ----------------------------------------------------------------


def test_message_names_file_line_table_key_and_value():
    exc = refused(MINIMAL + "weight = -1\n")
    assert str(exc) == f"{PATH}:3: [vm.alpha] weight: must be an integer from 1 to 10000, got -1"
    assert (exc.path, exc.line, exc.key) == (PATH, 3, "weight")


def test_errors_survive_pickling():
    exc = refused(MINIMAL + "weight = -1\n")
    back = pickle.loads(pickle.dumps(exc))
    assert (str(back), back.path, back.line, back.key) == (str(exc), PATH, 3, "weight")


def test_toml_syntax_error_has_its_line():
    exc = refused('[vm.alpha]\nsocket = "a.sock"\nweight == 3\n')
    assert exc.line == 3 and exc.key is None
    assert str(exc).startswith(f"{PATH}:3: not valid TOML: ")


@pytest.mark.parametrize("make", [lambda p: p / "absent.toml", lambda p: p])
def test_unreadable_file_is_refused(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.path == str(path) and info.value.line is None
    assert "cannot read the configuration" in str(info.value)


def test_file_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "m.toml").write_bytes(b'[vm.alpha]\nsocket = "\xff.sock"\n')
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(str(tmp_path / "m.toml"))


# --- unknown keys and tables -----------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "key", "says"), [
    (MINIMAL + "wieght = 2\n", 3, "wieght",
     "[vm.alpha] wieght: unknown key 'wieght' (known: class, compute_units, inflight, memory, "
     "objects, rate, socket, weight); did you mean 'weight'?"),
    ('[device]\nbackend = "test"\nplatfrom = 1\n' + MINIMAL, 3, "platfrom",
     "[device] platfrom: unknown key 'platfrom' (known: backend, command_timeout, device, "
     "device_memory, platform, sandbox); did you mean 'platform'?"),
    ("[manager]\nxyzzy = 1\n" + MINIMAL, 2, "xyzzy",
     "[manager] xyzzy: unknown key 'xyzzy' (known: control, metrics, restart_delay, state_dir)"),
    (MINIMAL + '\n[vms.beta]\nsocket = "b.sock"\n', 4, "vms",
     "vms: unknown table [vms] (known: [device], [manager], [vm.NAME]); did you mean 'vm'?"),
    ("debug = true\n" + MINIMAL, 1, "debug", "debug: unknown key 'debug' at the top level"),
    (MINIMAL + "[device.extra]\nx = 1\n", 3, "extra", "[device] extra: unknown key 'extra'"),
])
def test_unknown_keys_and_tables_are_refused(text, line, key, says):
    exc = refused(text)
    assert (exc.line, exc.key) == (line, key)
    assert says in str(exc)
    assert str(exc).startswith(f"{PATH}:{line}: ")


def test_unknown_key_without_a_near_miss_gets_no_suggestion():
    assert "did you mean" not in str(refused(MINIMAL + "banana = 1\n"))


# --- wrong values ----------------------------------------------------------------------


@pytest.mark.parametrize(("table", "setting", "says"), [
    ("vm", "weight = 0", "weight: must be an integer from 1 to 10000, got 0"),
    ("vm", "weight = 10001", "must be an integer from 1 to 10000, got 10001"),
    ("vm", "weight = true", "must be an integer from 1 to 10000, got true"),
    ("vm", 'weight = "2"', 'must be an integer from 1 to 10000, got "2"'),
    ("vm", "weight = 1.5", "must be an integer from 1 to 10000, got 1.5"),
    ("vm", 'class = "fast"', "class: must be one of \"interactive\", \"batch\", got \"fast\""),
    ("vm", 'class = "Batch"', "did you mean 'batch'?"),
    ("vm", "class = 1", "got 1"),
    ("vm", "memory = 0", "memory: must be a size above 0"),
    ("vm", "memory = -5", "got -5 (leave memory out for no quota)"),
    ("vm", "memory = '0'", 'got "0"'),
    ("vm", 'memory = "2X"', 'got "2X"'),
    ("vm", 'memory = "inf"', 'got "inf"'),
    ("vm", 'memory = ""', 'got ""'),
    ("vm", "memory = 1.5", "got 1.5"),
    ("vm", "memory = true", "got true"),
    ("vm", "objects = 0", "objects: must be an integer of at least 1, got 0 (leave objects out"),
    ("vm", "inflight = -3", "inflight: must be an integer of at least 1, got -3"),
    ("vm", "inflight = false", "got false"),
    ("vm", "rate = 0", "rate: must be a number of commands per second above 0, got 0"),
    ("vm", "rate = -1.5", "got -1.5"),
    ("vm", "rate = nan", "got nan"),
    ("vm", "rate = inf", "got inf"),
    ("vm", "rate = true", "got true"),
    ("vm", "compute_units = 0", "compute_units: must be an integer of at least 1, got 0"),
    ("vm", "compute_units = [1]", "got an array"),
    ("device", 'backend = "cuda"', 'backend: must be one of "opencl", "test", got "cuda"'),
    ("device", "platform = -1", "platform: must be an integer of at least 0, got -1"),
    ("device", 'device = "0"', 'device: must be an integer of at least 0, got "0"'),
    ("device", 'sandbox = "on"', 'sandbox: must be one of "auto", "required", "off", got "on"'),
    ("device", "sandbox = false", "got false"),
    ("device", "command_timeout = 0", "command_timeout: must be a number of seconds above 0"),
    ("device", 'command_timeout = "10s"', 'got "10s"'),
    ("device", 'device_memory = "lots"', 'device_memory: must be a size above 0'),
    ("device", "device_memory = 1979-05-27", "got 1979-05-27 (a date or time)"),
    ("manager", "restart_delay = -1", "restart_delay: must be a number of seconds of at least 0"),
    ("manager", "state_dir = 1", "state_dir: must be a path (a non-empty string), got 1"),
    ("manager", 'state_dir = ""', 'got ""'),
    ("manager", 'control = "a\\u0000b"', "control: must be a path"),
    ("manager", "control = {}", "got a table"),
])
def test_wrong_values_are_refused(table, setting, says):
    if table == "vm":
        text, line, where = MINIMAL + setting + "\n", 3, "[vm.alpha]"
    else:
        text, line, where = f"[{table}]\n\n{setting}\n" + MINIMAL, 3, f"[{table}]"
    exc = refused(text)
    key = setting.split(" =")[0]
    assert (exc.line, exc.key) == (line, key)
    assert str(exc).startswith(f"{PATH}:{line}: {where} {key}: ")
    assert says in str(exc)


def test_a_table_given_as_a_value_is_refused():
    exc = refused('device = "opencl"\n' + MINIMAL)
    assert (exc.line, exc.key) == (1, "device")
    assert 'device: must be a table ([device]), got "opencl"' in str(exc)


def test_a_socket_path_too_long_for_bind_is_refused():
    exc = refused(f'[vm.alpha]\nsocket = "{"x" * 120}.sock"\n')
    assert (exc.line, exc.key) == (2, "socket") and "a UNIX socket path can be at most 107" in str(exc)


# --- VMs -------------------------------------------------------------------------------


def test_two_vms_on_one_socket_are_refused_after_normalizing():
    exc = refused('[manager]\nstate_dir = "/s"\n[vm.a]\nsocket = "a.sock"\n\n'
                  '[vm.b]\nsocket = "./x/../a.sock"\n')
    assert (exc.line, exc.key) == (7, "socket")
    assert str(exc) == (f"{PATH}:7: [vm.b] socket: /s/a.sock is also VM 'a''s socket (line 3): "
                        "each VM needs a socket of its own")
    exc = refused('[manager]\nstate_dir = "/s"\n[vm.a]\nsocket = "/s/a.sock"\n'
                  '[vm.b]\nsocket = "b.sock"\n[vm.c]\nsocket = "a.sock"\n')
    assert exc.line == 8 and "[vm.c] socket" in str(exc) and "VM 'a'" in str(exc)


@pytest.mark.parametrize(("manager", "says"), [
    ('control = "alpha.sock"', "is the manager's control socket too"),
    ('control = "/run/ava-vdev/alpha.sock"', "is the manager's control socket too"),
    ('metrics = "alpha.sock"', "is the manager's metrics socket too"),
])
def test_a_vm_on_the_control_or_metrics_socket_is_refused(manager, says):
    exc = refused(f"[manager]\n{manager}\n" + MINIMAL)
    assert (exc.line, exc.key) == (4, "socket")
    assert str(exc).startswith(f"{PATH}:4: [vm.alpha] socket: /run/ava-vdev/alpha.sock {says}")


def test_metrics_on_the_control_socket_is_refused():
    exc = refused('[manager]\nmetrics = "control.sock"\n' + MINIMAL)
    assert (exc.line, exc.key) == (2, "metrics") and "is the control socket too" in str(exc)


@pytest.mark.parametrize("name", ['"a b"', '"x "', "a" * 32, '""', '"ä"', '"a.b"'])
def test_bad_vm_names_are_refused(name):
    exc = refused(f'\n[vm.{name}]\nsocket = "a.sock"\n')
    assert exc.line == 2 and exc.key is None
    assert "bad VM name" in str(exc) and "1 to 31 letters, digits, '_' or '-'" in str(exc)


def test_a_31_character_name_with_dashes_and_underscores_is_good():
    name = "A-b_9" + "x" * 26
    assert parse_config(f'[vm.{name}]\nsocket = "a.sock"\n', PATH).vm(name).name == name


@pytest.mark.parametrize(("text", "line"), [("", None), ('[device]\nbackend = "test"\n', None),
                                             ("# VMs\n\n[vm]\n", 3)])
def test_no_vms_is_refused(text, line):
    exc = refused(text)
    assert (exc.line, exc.key) == (line, None)
    assert "[vm]: no VMs: add one table per VM, e.g. [vm.alpha]" in str(exc)


def test_more_than_64_vms_is_refused_and_64_are_good():
    def vms(n):
        return "".join(f'[vm.v{i}]\nsocket = "v{i}.sock"\n' for i in range(n))
    assert len(parse_config(vms(64), PATH).vms) == 64
    exc = refused(vms(65))
    assert exc.line == 129 and "[vm.v64]: 65 VMs: a manager serves at most 64" in str(exc)


def test_a_missing_socket_is_refused_at_the_vm_header():
    exc = refused('[vm.alpha]\nweight = 2\n\n[vm.beta]\nweight = 3\n')
    assert (exc.line, exc.key) == (1, "socket")
    assert 'socket: missing: the UNIX socket the VM\'s QEMU connects to, e.g. socket = ' \
        '"alpha.sock"' in str(exc)


def test_vm_used_as_a_plain_table_is_refused():
    exc = refused('[vm]\nsocket = "alpha.sock"\nweight = 2\n')
    assert (exc.line, exc.key) == (2, "socket")
    assert str(exc).startswith(f'{PATH}:2: [vm] socket: socket = "alpha.sock" is in [vm] itself, '
                               "but each VM is a table of its own: [vm.NAME]")


@pytest.mark.parametrize(("text", "line"), [('[[vm]]\nsocket = "a.sock"\n', 1), ("vm = 3\n", 1)])
def test_vm_that_is_not_tables_of_vms_is_refused(text, line):
    exc = refused(text)
    assert (exc.line, exc.key) == (line, "vm") and "must be one table per VM" in str(exc)


# --- metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize(("metrics", "says"), [
    ('"0.0.0.0:9464"', "0.0.0.0 is not a loopback address"),
    ('"10.1.2.3:9464"', "10.1.2.3 is not a loopback address"),
    ('"example.com:9464"', "example.com is not a loopback address"),
    ('"[::]:9464"', ":: is not a loopback address"),
    ('"[::ffff:127.0.0.1]:9464"', "is not a loopback address"),
    ('"[::1%lo]:9464"', "is not a loopback address"),
    ('"[127.0.0.1]:9464"', "is not a loopback address"),
    ('":9464"', "an empty host is not a loopback address"),
    ('"::1:9464"', "an IPv6 address goes in brackets"),
    ('"127.0.0.1:http"', "not HOST:PORT"),
    ('"127.0.0.1:0"', "the port must be from 1 to 65535, got 0"),
    ('"127.0.0.1:70000"', "the port must be from 1 to 65535, got 70000"),
    ("9464", "must be a UNIX socket path or a loopback HOST:PORT"),
    ('""', "must be a UNIX socket path or a loopback HOST:PORT"),
])
def test_a_metrics_address_that_is_not_loopback_is_refused(metrics, says):
    exc = refused(f"[manager]\nmetrics = {metrics}\n" + MINIMAL)
    assert (exc.line, exc.key) == (2, "metrics")
    assert str(exc).startswith(f"{PATH}:2: [manager] metrics: ")
    assert says in str(exc)


# --- against the device ----------------------------------------------------------------

DEVICE_TEXT = """\
[vm.alpha]
socket = "alpha.sock"
memory = "2G"
compute_units = 2

[vm.beta]
socket = "beta.sock"
memory = "3G"
"""


def test_check_device_accepts_what_fits():
    cfg = parse_config(DEVICE_TEXT, PATH)
    assert check_device(cfg, compute_units=4, global_mem_size=8 << 30) == []
    assert check_device(cfg, compute_units=2, global_mem_size=5 << 30) == []


def test_check_device_refuses_more_compute_units_than_the_device_has():
    cfg = parse_config(DEVICE_TEXT, PATH)
    with pytest.raises(ConfigError) as info:
        check_device(cfg, compute_units=1, global_mem_size=8 << 30)
    assert (info.value.line, info.value.key) == (4, "compute_units")
    assert str(info.value).startswith(
        f"{PATH}:4: [vm.alpha] compute_units: 2 compute units asked, the device has 1")


def test_check_device_refuses_a_memory_quota_past_the_device_memory():
    cfg = parse_config(DEVICE_TEXT, PATH)
    with pytest.raises(ConfigError) as info:
        check_device(cfg, compute_units=4, global_mem_size=(5 << 30) // 2)
    assert (info.value.line, info.value.key) == (8, "memory")
    assert str(info.value) == (f"{PATH}:8: [vm.beta] memory: a quota of 3G (3221225472 bytes) "
                               "asked, the device has 2.5G (2684354560 bytes)")


def test_check_device_warns_when_quotas_add_up_past_the_device_memory():
    cfg = parse_config(DEVICE_TEXT, PATH)
    warnings = check_device(cfg, compute_units=4, global_mem_size=4 << 30)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{PATH}: the VMs' memory quotas add up to 5G, more than the "
                                  "device memory's 4G: allowed")


def test_check_device_counts_device_memory_as_the_capacity_and_warns_past_the_device():
    cfg = parse_config('[device]\ndevice_memory = "4G"\n' + DEVICE_TEXT, PATH)
    assert check_device(cfg, compute_units=4, global_mem_size=8 << 30) == [
        f"{PATH}: the VMs' memory quotas add up to 5G, more than the device memory's 4G: "
        "allowed, but a VM may find the device full before its quota (objects past it wait in "
        "the host store)"]
    cfg = parse_config('[device]\ndevice_memory = "16G"\n' + MINIMAL, PATH)
    assert check_device(cfg, compute_units=4, global_mem_size=8 << 30) == [
        f"{PATH}:2: [device] device_memory: 16G is more than the device's 8G; it is cut to that"]


def test_check_device_lines_survive_a_changed_file(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(DEVICE_TEXT)
    cfg = load_config(str(path))
    path.write_text("\n\n\n" + DEVICE_TEXT)
    with pytest.raises(ConfigError) as info:
        check_device(cfg, compute_units=1, global_mem_size=8 << 30)
    assert info.value.line == 4


def test_manager_config_is_the_type_returned():
    assert isinstance(parse_config(MINIMAL, PATH), ManagerConfig)


@pytest.mark.parametrize("setting", ['memory = "2X"', "objects = true", 'rate = "fast"'])
def test_the_no_quota_hint_is_only_for_zero_or_less(setting):
    assert "no quota" not in str(refused(MINIMAL + setting + "\n"))
