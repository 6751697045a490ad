"""``install`` / ``uninstall``: register the ICD with the OpenCL ICD loader, and set up
the guest daemon (ava-vdevd) so that ordinary users in its group may use the device.

The daemon runs from a copy of ``guest_driver/`` and ``protocols/`` under
``/usr/local/lib/ava-vdev/python`` (the checkout may go away).  Where the guest runs
systemd it is a unit, ``ava-vdevd.service``, enabled and started; elsewhere (a
minimal guest whose init is a script) it is started in the background with a PID
file, and ``uninstall`` stops it by that PID.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocols import guest_daemon as gd

VENDORS = Path("/etc/OpenCL/vendors")
LIBDIR = Path("/usr/local/lib/ava-vdev")
ICD_FILE = VENDORS / "ava.icd"
PYDIR = LIBDIR / "python"
UNIT_NAME = "ava-vdevd.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME
PIDFILE = Path("/run/ava-vdev/ava-vdevd.pid")
PIN_MODULE = LIBDIR / "ava_vdev_pin.ko"
DAEMON_LOG = Path("/var/log/ava-vdevd.log")
SOURCE = Path(__file__).resolve().parent.parent

UNIT = f"""\
# ava-vdevd: owns the ava-vdev accelerator so that members of the group '{{group}}'
# may run OpenCL programs without root.  Written by `python3 -m guest_driver install`.
[Unit]
Description=ava-vdev accelerator daemon (device access for the '{{group}}' group)
Documentation=file://{PYDIR}/guest_driver/_daemon.py

[Service]
Type=simple
Environment=PYTHONPATH={PYDIR} PYTHONDONTWRITEBYTECODE=1
ExecStart={{python}} -m guest_driver daemon --socket {gd.DEFAULT_SOCKET} --group {{group}}{{pin}}
Restart=on-failure
RestartSec=1
# It binds the PCI device (sysfs writes), maps BAR0, opens /dev/uioN, reads
# /proc/self/pagemap, takes dups of root processes' zero-copy pinning rings
# (pidfd_getfd, which needs CAP_SYS_PTRACE), loads the ava_vdev_pin module and reads
# ordinary users' pins (CAP_SYS_MODULE, CAP_SYS_ADMIN): root, with /sys and /dev as they are (no
# ProtectKernelTunables, no PrivateDevices, no CapabilityBoundingSet).  What it does
# not need:
NoNewPrivileges=yes
ProtectHome=yes
PrivateTmp=yes
PrivateNetwork=yes
# Each process's pins (zero-copy) are fds of the daemon's, held through a quarantine.
LimitNOFILE=65536
RuntimeDirectory=ava-vdev
RuntimeDirectoryPreserve=no

[Install]
WantedBy=multi-user.target
"""


def unit_text(group: str, python: str, pin_args: list[str]) -> str:
    """The systemd unit: ava-vdevd for ``group``, with ``--pin-module KO`` if given."""
    return UNIT.format(group=group, python=python, pin="".join(" " + a for a in pin_args))


def install(icd_lib: Path) -> Path:
    """Copy the library to a stable place and point the loader at it."""
    LIBDIR.mkdir(parents=True, exist_ok=True)
    target = LIBDIR / icd_lib.name
    tmp = target.with_suffix(".tmp")
    shutil.copy2(icd_lib, tmp)
    tmp.replace(target)
    VENDORS.mkdir(parents=True, exist_ok=True)
    ICD_FILE.write_text(f"{target}\n")
    return ICD_FILE


def ensure_group(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    try:
        subprocess.run(["groupadd", "--system", group], check=True, capture_output=True,
                       text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise RuntimeError(f"cannot create the group {group!r}: {detail}") from None
    return grp.getgrnam(group).gr_gid


def _copy_python() -> None:
    """The daemon's code, where it stays whatever happens to this checkout."""
    staging = PYDIR.with_name("python.new")
    shutil.rmtree(staging, ignore_errors=True)
    for package in ("guest_driver", "protocols"):
        shutil.copytree(SOURCE / package, staging / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.o"))
    shutil.rmtree(PYDIR, ignore_errors=True)
    staging.rename(PYDIR)


def _has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install_daemon(group: str = gd.DEFAULT_GROUP, module: Path | None = None,
                   timeout: float = 60.0) -> str:
    """Install and (re)start ava-vdevd (with ``module``, the built ava_vdev_pin.ko,
    which it loads); returns how it runs."""
    ensure_group(group)
    stop_daemon()
    _copy_python()
    pin_args: list[str] = []
    if module is not None:
        tmp = PIN_MODULE.with_suffix(".tmp")
        shutil.copy2(module, tmp)
        tmp.replace(PIN_MODULE)
        pin_args = ["--pin-module", str(PIN_MODULE)]
    proc: subprocess.Popen[bytes] | None = None
    if _has_systemd():
        UNIT_FILE.write_text(unit_text(group, sys.executable, pin_args))
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=True)
        how = f"systemd unit {UNIT_NAME}"
    else:
        PIDFILE.parent.mkdir(parents=True, exist_ok=True)
        log = open(DAEMON_LOG, "ab")        # the daemon keeps its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "guest_driver", "daemon", "--socket", gd.DEFAULT_SOCKET,
             "--group", group, *pin_args], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=dict(os.environ, PYTHONPATH=str(PYDIR), PYTHONDONTWRITEBYTECODE="1"),
            cwd="/", start_new_session=True)
        log.close()
        PIDFILE.write_text(f"{proc.pid}\n")
        how = f"pid {proc.pid} (no systemd here; log {DAEMON_LOG})"
    deadline = time.monotonic() + timeout
    while not os.path.exists(gd.DEFAULT_SOCKET):
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() > deadline:
            if proc is not None and not ended:
                proc.terminate()
                proc.wait()
            PIDFILE.unlink(missing_ok=True)
            where = "journalctl -u " + UNIT_NAME if proc is None else str(DAEMON_LOG)
            raise RuntimeError(f"ava-vdevd {'exited' if ended else 'did not start'} "
                               f"{'at once' if ended else f'within {timeout:g} s'}; from "
                               f"{where}:\n{_tail(DAEMON_LOG) if proc is not None else ''}")
        time.sleep(0.05)
    return how


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def _daemon_pid() -> int | None:
    """The PID in the PID file, if that process is still our daemon."""
    try:
        pid = int(PIDFILE.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"guest_driver\0daemon" in cmdline else None


def stop_daemon() -> bool:
    """Stop ava-vdevd however it was started; True if one was running."""
    stopped = False
    if UNIT_FILE.exists() and _has_systemd():
        stopped = subprocess.run(["systemctl", "is-active", "--quiet", UNIT_NAME]).returncode == 0
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], capture_output=True)
    pid = _daemon_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        stopped = True
    PIDFILE.unlink(missing_ok=True)
    return stopped


def uninstall() -> list[Path]:
    removed = []
    if stop_daemon():
        removed.append(Path(gd.DEFAULT_SOCKET))
    if Path("/sys/module", PIN_MODULE.stem).is_dir():
        # In use (a pin still held) it stays loaded; it holds nothing else.
        if subprocess.run(["rmmod", PIN_MODULE.stem], capture_output=True).returncode == 0:
            removed.append(Path("/sys/module", PIN_MODULE.stem))
    for path in (ICD_FILE, LIBDIR / "libava_icd.so", UNIT_FILE, PIN_MODULE):
        if path.exists():
            path.unlink()
            removed.append(path)
    if PYDIR.exists():
        shutil.rmtree(PYDIR)
        removed.append(PYDIR)
    return removed
