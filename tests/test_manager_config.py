"""The manager's configuration: what it accepts, and that every refusal names the
file, the line and the key."""

from __future__ import annotations

import os

import pytest

from vdev._manager_config import ConfigError, check_device, load_config, parse_config

PATH = "/etc/ava-vdev/manager.toml"

FULL = """\
[device]
backend = "opencl"
platform = 0
device = 0
device_memory = "8G"
sandbox = "required"
command_timeout = 20

[manager]
state_dir = "/run/ava"
control = "ctl.sock"
metrics = "127.0.0.1:9464"
restart_delay = 0.5

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
socket = "/srv/beta.sock"
memory = 1073741824
"""


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return info.value


def test_a_full_configuration():
    cfg = parse_config(FULL, PATH)
    assert cfg.path == PATH
    d = cfg.device
    assert (d.backend, d.platform, d.device, d.device_memory, d.sandbox, d.command_timeout) == \
        ("opencl", 0, 0, 8 << 30, "required", 20.0)
    assert cfg.state_dir == "/run/ava" and cfg.control == "/run/ava/ctl.sock"
    assert cfg.metrics == ("127.0.0.1", 9464) and cfg.restart_delay == 0.5
    alpha, beta = cfg.vms
    assert (alpha.name, alpha.socket, alpha.weight, alpha.latency_class, alpha.memory,
            alpha.objects, alpha.inflight, alpha.rate, alpha.compute_units) == \
        ("alpha", "/run/ava/alpha.sock", 3, "interactive", 2 << 30, 4096, 64, 5000.0, 1)
    assert alpha.line == 15
    assert (beta.socket, beta.weight, beta.latency_class, beta.memory, beta.objects) == \
        ("/srv/beta.sock", 1, "batch", 1 << 30, None)
    assert cfg.vm("beta") is beta
    with pytest.raises(KeyError):
        cfg.vm("gamma")


def test_defaults_and_paths():
    cfg = parse_config('[vm.a]\nsocket = "a.sock"\n', PATH)
    assert cfg.device.backend == "opencl" and cfg.device.sandbox == "auto"
    assert cfg.state_dir == "/run/ava-vdev" and cfg.control == "/run/ava-vdev/control.sock"
    assert cfg.metrics is None
    assert cfg.vms[0].socket == "/run/ava-vdev/a.sock" and cfg.vms[0].weight == 1
    cfg = parse_config('[manager]\nstate_dir = "state"\nmetrics = "m.sock"\n'
                       '[vm.a]\nsocket = "a.sock"\n', PATH)
    assert cfg.state_dir == "/etc/ava-vdev/state"      # beside the file
    assert cfg.metrics == "/etc/ava-vdev/state/m.sock"
    assert parse_config('[manager]\nmetrics = "[::1]:9000"\n[vm.a]\nsocket = "a"\n',
                        PATH).metrics == ("::1", 9000)
    assert parse_config('[manager]\nmetrics = "localhost:9000"\n[vm.a]\nsocket = "a"\n',
                        PATH).metrics == ("127.0.0.1", 9000)


@pytest.mark.parametrize("text, line, key, words", [
    ('[vm.a]\nsocket = "a.sock"\nwieght = 3\n', 3, "wieght",
     ["[vm.a] wieght: unknown key 'wieght'", "did you mean 'weight'?"]),
    ('[device]\nbackend = "cuda"\n[vm.a]\nsocket = "a"\n', 2, "backend",
     ["must be one of opencl, test", "'cuda'"]),
    ('[device]\nbakend = "opencl"\n[vm.a]\nsocket = "a"\n', 2, "bakend", ["did you mean"]),
    ('[manager]\nstate = "/x"\n[vm.a]\nsocket = "a"\n', 2, "state", ["unknown key"]),
    ('[vms.a]\nsocket = "a"\n', 1, "vms", ["unknown table 'vms'"]),
    ('name = "x"\n[vm.a]\nsocket = "a"\n', 1, "name", ["unknown key 'name'"]),
    ('[vm.a]\nsocket = "a"\nweight = 0\n', 3, "weight", ["from 1 to 10000", "got 0"]),
    ('[vm.a]\nsocket = "a"\nweight = -2\n', 3, "weight", ["got -2"]),
    ('[vm.a]\nsocket = "a"\nweight = true\n', 3, "weight", ["got True"]),
    ('[vm.a]\nsocket = "a"\nweight = 1.5\n', 3, "weight", ["must be an integer"]),
    ('[vm.a]\nsocket = "a"\nmemory = 0\n', 3, "memory", ["must be a size above 0"]),
    ('[vm.a]\nsocket = "a"\nmemory = "-1G"\n', 3, "memory", ["must be more than 0"]),
    ('[vm.a]\nsocket = "a"\nmemory = "lots"\n', 3, "memory", ["is not a size"]),
    ('[vm.a]\nsocket = "a"\nobjects = 0\n', 3, "objects", ["of at least 1"]),
    ('[vm.a]\nsocket = "a"\ninflight = -1\n', 3, "inflight", ["of at least 1"]),
    ('[vm.a]\nsocket = "a"\nrate = 0\n', 3, "rate", ["above 0"]),
    ('[vm.a]\nsocket = "a"\ncompute_units = 0\n', 3, "compute_units", ["of at least 1"]),
    ('[vm.a]\nsocket = "a"\nclass = "realtime"\n', 3, "class",
     ["must be one of interactive, batch"]),
    ('[vm.a]\nsocket = "a.sock"\n\n[vm.b]\nsocket = "a.sock"\n', 5, "socket",
     ["[vm.b] socket", "also VM 'a''s socket"]),
    ('[manager]\ncontrol = "c.sock"\n[vm.a]\nsocket = "c.sock"\n', 4, "socket",
     ["is the control socket too"]),
    ('[manager]\nmetrics = "10.0.0.1:9464"\n[vm.a]\nsocket = "a"\n', 2, "metrics",
     ["not a loopback address"]),
    ('[manager]\nmetrics = "0.0.0.0:9464"\n[vm.a]\nsocket = "a"\n', 2, "metrics",
     ["not a loopback address"]),
    ('[vm."bad name"]\nsocket = "a"\n', 1, None, ["must be 1 to 31 letters"]),
    ('[vm.a]\nweight = 2\n', 1, None, ["needs a socket"]),
    ('[vm]\nsocket = "a"\n', 2, "socket", ["each VM is a table of its own"]),
    ('[device]\n', None, "vm", ["no VMs"]),
    ('[vm.a\nsocket = "a"\n', 1, None, ["not valid TOML"]),
])
def test_bad_configuration_names_file_line_and_key(text, line, key, words):
    err = refused(text)
    assert err.path == PATH and err.line == line and err.key == key, str(err)
    where = f"{PATH}:{line}: " if line else f"{PATH}: "
    assert str(err).startswith(where), str(err)
    for word in words:
        assert word in str(err), str(err)


def test_at_most_64_vms():
    text = "".join(f'[vm.v{i}]\nsocket = "v{i}.sock"\n' for i in range(65))
    err = refused(text)
    assert "more than 64 VMs" in str(err) and err.line == 129


def test_the_device_decides_partitions_and_quotas(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[vm.a]\nsocket = "a"\n\n[vm.b]\nsocket = "b"\ncompute_units = 9\n'
                    'memory = "1G"\n')
    cfg = load_config(str(path))
    with pytest.raises(ConfigError) as info:
        check_device(cfg, compute_units=8, global_mem_size=4 << 30)
    assert str(info.value).startswith(f"{path}:6: [vm.b] compute_units: 9 compute units "
                                      "asked, the device has 8")
    with pytest.raises(ConfigError) as info:
        check_device(cfg, compute_units=16, global_mem_size=512 << 20)
    assert str(info.value).startswith(f"{path}:7: [vm.b] memory:")
    path.write_text('[vm.a]\nsocket = "a"\nmemory = "3G"\n[vm.b]\nsocket = "b"\n'
                    'memory = "3G"\n')
    warnings = check_device(load_config(str(path)), compute_units=2, global_mem_size=4 << 30)
    assert len(warnings) == 1 and "add up to" in warnings[0]


def test_an_unreadable_file(tmp_path):
    missing = os.path.join(tmp_path, "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value).startswith(f"{missing}: cannot read the configuration")
