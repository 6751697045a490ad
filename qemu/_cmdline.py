"""QEMU command lines: the lab's, and the one a user runs with their own QEMU."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from . import _guest as g

QEMU_BINARY = "qemu-system-x86_64"

_SIZE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``1GiB`` or plain bytes -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"bad size {text!r} (examples: 512M, 2G)")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    value = int(m.group(1)) * scale
    if value % (1 << 20):
        raise ValueError(f"size {text!r} is not a whole number of MiB")
    return value


def qemu_size(nbytes: int) -> str:
    """Bytes -> QEMU's ``2048M`` notation."""
    return f"{nbytes >> 20}M"


def vfio_user_device(socket_path: str) -> str:
    """The ``-device`` argument (JSON syntax) attaching the vfio-user device at ``socket_path``."""
    return json.dumps({"driver": "vfio-user-pci",
                       "socket": {"type": "unix", "path": socket_path}},
                      separators=(",", ":"))


def memory_args(nbytes: int) -> list[str]:
    """Guest RAM the server can map: a shared memfd backend."""
    size = qemu_size(nbytes)
    return ["-m", size,
            "-object", f"memory-backend-memfd,id=mem,size={size},share=on",
            "-machine", "q35,memory-backend=mem"]


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ValueError(f"accel must be kvm or tcg, not {accel!r}")


def kernel_cmdline(hugepages: int, extra: str = "") -> str:
    parts = ["console=ttyS0", "quiet", "panic=-1", "oops=panic", "nokaslr",
             "tsc=reliable", "no_timer_check", "8250.nr_uarts=1"]
    if hugepages:
        parts += ["hugepagesz=2M", f"hugepages={hugepages}"]
    if extra:
        parts.append(extra)
    return " ".join(parts)


@dataclass(frozen=True)
class LabQemuConfig:
    """Everything the lab's QEMU command line depends on (paths as seen inside the root)."""

    accel: str = "tcg"
    memory: int = 2 << 30
    cpus: int = 2
    hugepages: int = 64
    kernel: str = "/run/ava/boot/vmlinuz"
    initrd: str = "/run/ava/boot/initrd.img"
    console_log: str = "/run/ava/console.log"
    root_export: str = "/srv/ava-root"
    src_export: str = "/run/ava/src"
    scratch_export: str = "/run/ava/scratch"
    device_socket: str | None = "/run/ava/vdev.sock"
    ctl_fd: int = 3
    out_fd: int = 4
    err_fd: int = 5
    append: str = ""


def _fsdev(ident: str, path: str, tag: str, readonly: bool) -> list[str]:
    opts = f"local,id={ident},path={path},security_model=none,multidevs=remap"
    if readonly:
        opts += ",readonly=on"
    return ["-fsdev", opts, "-device", f"virtio-9p-pci,fsdev={ident},mount_tag={tag}"]


def _port(ident: str, fd: int, name: str) -> list[str]:
    return ["-chardev", f"socket,id={ident},fd={fd}",
            "-device", f"virtserialport,bus=vser.0,chardev={ident},name={name}"]


def lab_qemu_argv(cfg: LabQemuConfig) -> list[str]:
    """The lab's QEMU command line: direct kernel boot, 9p root, virtio-serial I/O, the device."""
    argv = [QEMU_BINARY, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-name", "ava-lab"]
    argv += accel_args(cfg.accel)
    argv += ["-smp", str(cfg.cpus)]
    argv += memory_args(cfg.memory)
    argv += ["-kernel", cfg.kernel, "-initrd", cfg.initrd,
             "-append", kernel_cmdline(cfg.hugepages, cfg.append)]
    argv += ["-chardev", f"file,id=con,path={cfg.console_log}", "-serial", "chardev:con"]
    argv += _fsdev("fsroot", cfg.root_export, g.MOUNT_TAG_ROOT, readonly=True)
    argv += _fsdev("fssrc", cfg.src_export, g.MOUNT_TAG_SRC, readonly=True)
    argv += _fsdev("fsscratch", cfg.scratch_export, g.MOUNT_TAG_SCRATCH, readonly=False)
    argv += ["-device", "virtio-serial-pci,id=vser"]
    argv += _port("ctl", cfg.ctl_fd, g.PORT_CTL)
    argv += _port("out", cfg.out_fd, g.PORT_OUT)
    argv += _port("err", cfg.err_fd, g.PORT_ERR)
    if cfg.device_socket is not None:
        argv += ["-device", vfio_user_device(cfg.device_socket)]
    return argv


def user_cmdline(socket_path: str, *, memory: int = 2 << 30, accel: str = "kvm",
                 qemu: str = QEMU_BINARY) -> str:
    """What a user runs with their own QEMU (>= 10.1), as shell text for the README."""
    argv = [qemu] + accel_args(accel) + memory_args(memory) + [
        "-device", vfio_user_device(socket_path)]
    text = " \\\n    ".join(shlex.join(argv[i:i + 2]) if argv[i].startswith("-") else argv[i]
                            for i in _pair_starts(argv))
    return text + " \\\n    ...  # your disk, kernel and console options"


def _pair_starts(argv: list[str]) -> list[int]:
    starts, i = [], 0
    while i < len(argv):
        starts.append(i)
        i += 2 if argv[i].startswith("-") and i + 1 < len(argv) else 1
    return starts
