"""KVM or TCG: decided by a short test boot, never by the presence of /dev/kvm.

/dev/kvm can exist and still fail (a nested hypervisor that breaks on BMI2 or
cmpxchg16b). The test boot runs Python in a lab guest under KVM with no
device; only a correct answer counts. The verdict is cached in the lab
directory together with what it depends on (host kernel, CPU model, QEMU and
guest kernel versions) and is redone when any of those changes.
"""

from __future__ import annotations

import io
import json
import os
import platform
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import trio

from ._errors import LabError
from ._lab import Lab

KVM_DEVICE = "/dev/kvm"
PROBE_COMMAND = ("python3", "-c", "print(6 * 7)")
PROBE_EXPECT = b"42\n"
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Verdict:
    accel: str       # "kvm" or "tcg"
    reason: str
    key: str = ""

    def describe(self) -> str:
        if self.accel == "kvm":
            return f"KVM works ({self.reason})"
        return f"TCG: {self.reason}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def verdict_key(lab: Lab) -> str:
    """What a verdict depends on; a changed key means probe again."""
    return json.dumps({"host_kernel": os.uname().release, "cpu": _cpu_model(),
                       "qemu": lab.package_version("qemu-system-x86"),
                       "guest_kernel": lab.kernel_version(),
                       "kvm_device": os.path.exists(KVM_DEVICE)}, sort_keys=True)


def cached_verdict(lab: Lab) -> Verdict | None:
    try:
        data = json.loads(lab.accel_cache.read_text())
        verdict = Verdict(**data)
    except (OSError, ValueError, TypeError):
        return None
    return verdict if verdict.key == verdict_key(lab) else None


def save_verdict(lab: Lab, verdict: Verdict) -> None:
    tmp = lab.accel_cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(verdict)))
    tmp.replace(lab.accel_cache)


def kvm_usable_device() -> str | None:
    """Why KVM cannot even be tried (None when /dev/kvm opens read-write)."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} does not exist"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open {KVM_DEVICE}: {exc.strerror}"
    os.close(fd)
    return None


async def probe_kvm(lab: Lab) -> Verdict:
    """Boot a lab guest under KVM (no device) and check that it runs Python correctly."""
    from ._machine import LabMachine, run_in_guest

    key = verdict_key(lab)
    why_not = kvm_usable_device()
    if why_not:
        return Verdict("tcg", why_not, key)
    out, err = io.BytesIO(), io.BytesIO()
    machine = LabMachine(lab, PROBE_COMMAND, accel="kvm", device=False, memory=512 << 20,
                         cpus=1, hugepages=0, stdout=out, stderr=err,
                         keep_on_failure=False)
    try:
        result = await run_in_guest(machine, timeout=PROBE_TIMEOUT, handle_signals=False)
    except LabError as exc:
        first = str(exc).splitlines()[0]
        return Verdict("tcg", f"the KVM test boot failed: {first}", key)
    if result.status != 0 or out.getvalue() != PROBE_EXPECT:
        return Verdict("tcg", f"the KVM test boot gave status {result.status}, "
                              f"output {out.getvalue()[:80]!r}", key)
    return Verdict("kvm", f"test boot ran a command after {result.boot_seconds or 0:.1f} s", key)


async def decide_accel(requested: str, lab: Lab,
                       probe: Callable[[Lab], Awaitable[Verdict]] = probe_kvm) -> Verdict:
    """``kvm`` and ``tcg`` are taken as asked; ``auto`` uses the cached verdict or probes."""
    if requested in ("kvm", "tcg"):
        return Verdict(requested, "asked for")
    if requested != "auto":
        raise ValueError(f"accel must be auto, kvm or tcg, not {requested!r}")
    cached = cached_verdict(lab)
    if cached is not None:
        return Verdict(cached.accel, f"cached verdict: {cached.describe()}", cached.key)
    verdict = await probe(lab)
    save_verdict(lab, verdict)
    return verdict


def kvm_verdict(lab: Lab, *, refresh: bool = False) -> Verdict:
    """The verdict for ``lab`` (cached, or from a fresh test boot); for synchronous callers."""
    if not refresh:
        cached = cached_verdict(lab)
        if cached is not None:
            return cached
    verdict = trio.run(probe_kvm, lab)
    save_verdict(lab, verdict)
    return verdict
