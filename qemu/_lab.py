"""The lab: a Debian trixie root with QEMU 11 (from trixie-backports), a kernel and an initramfs.

Layout of the lab directory (default ``~/.cache/ava-vdev/lab``, or
``$AVA_LAB_DIR``, or ``--dir``)::

    root/            the trixie root: QEMU runs chrooted here, and the guest
                     boots from it (read-only over 9p, tmpfs overlay on top)
    boot/vmlinuz     the guest kernel (copied from root/boot)
    boot/initrd.img  our initramfs
    stamps/STEP.json one per finished build step: its input hash and duration
    accel.json       the cached KVM verdict
    .lock            held while ``lab build`` runs

``lab build`` runs the steps in order; a step whose stamp matches its inputs is
skipped, so a second run is near-instant and an interrupted one resumes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ._chroot import ChrootSpec, chroot_argv
from ._errors import LabNotReady, StepFailed
from ._guest import init_script, stage2_script
from ._initramfs import build_initramfs

SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://security.debian.org/debian-security"

# QEMU and its firmware come from trixie-backports (QEMU >= 10.1 has vfio-user-pci).
BACKPORTED_SOURCES = ("qemu", "seabios")
LAB_PACKAGES = (
    "qemu-system-x86",      # pinned to trixie-backports
    "linux-image-amd64",    # the guest kernel
    "busybox-static",       # the initramfs, and `busybox poweroff -f` in the guest
    "kmod",                 # modprobe in the guest
)
GUEST_PACKAGES = (
    "python3", "python3-pyopencl", "python3-numpy", "ocl-icd-libopencl1",
    "ocl-icd-opencl-dev", "opencl-c-headers", "clinfo", "pciutils", "gcc", "make",
    "libc6-dev", "python3-imageio", "python3-pil", "python-pyopencl-doc",
    # the guest driver's own Python side (protocols/ and `check`), and mako for
    # pyopencl's templated examples
    "python3-construct", "python3-pyelftools", "python3-mako",
    # kbuild for the guest kernel: `guest_driver build` makes ava-vdev-pin.ko, which lets
    # ordinary users lend their own pages to transfers (zero-copy)
    "linux-headers-amd64",
)
# dpkg leaves these out of the root (smaller, faster): manuals and translations.
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")

OPENCL_VENDORS = "/etc/OpenCL/vendors"
OPENCL_VENDORS_DISABLED = "/etc/OpenCL/vendors.disabled"
POCL_ICD = "pocl.icd"

# Mount points inside the root used by the launcher (see _machine.py).
ROOT_VIEW = "/srv/ava-root"
RUN_MOUNT = "/run/ava"

STEP_VERSION = 1  # bump to force every step to run again


def default_lab_dir() -> Path:
    env = os.environ.get("AVA_LAB_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ava-vdev" / "lab"


def mirror() -> str:
    return os.environ.get("AVA_LAB_MIRROR", DEFAULT_MIRROR).rstrip("/")


def apt_sources(mirror_url: str) -> list[str]:
    return [f"deb {mirror_url} {SUITE} main",
            f"deb {mirror_url} {SUITE}-updates main",
            f"deb {mirror_url} {SUITE}-backports main",
            f"deb {SECURITY_MIRROR} {SUITE}-security main"]


def apt_pin() -> str:
    sources = " ".join(f"src:{s}" for s in BACKPORTED_SOURCES)
    return (f"# written by `python -m qemu lab build`: QEMU >= 10.1 (vfio-user-pci)\n"
            f"Package: {sources}\nPin: release n={SUITE}-backports\nPin-Priority: 990\n")


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps([STEP_VERSION, *parts], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


@dataclass
class Step:
    name: str
    what: str
    inputs: Callable[[], str]
    run: Callable[[], None]
    output: Callable[[], Path]   # must exist for the step to count as done


class Lab:
    """The lab directory: paths, the build steps, and what ``status`` reports."""

    def __init__(self, path: Path | str | None = None, *, log: TextIO | None = None) -> None:
        self.path = Path(path).expanduser().resolve() if path else default_lab_dir().resolve()
        self.log = log if log is not None else sys.stdout

    # -- paths ---------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def boot(self) -> Path:
        return self.path / "boot"

    @property
    def kernel(self) -> Path:
        return self.boot / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.boot / "initrd.img"

    @property
    def stamps(self) -> Path:
        return self.path / "stamps"

    @property
    def accel_cache(self) -> Path:
        return self.path / "accel.json"

    def _say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    # -- the steps -------------------------------------------------------------
    def steps(self) -> list[Step]:
        return [
            Step("root", f"Debian {SUITE} minbase root (mmdebstrap)",
                 lambda: _hash("root", SUITE, mirror(), DPKG_EXCLUDES), self._step_root,
                 lambda: self.root / "etc/debian_version"),
            Step("packages", "QEMU (trixie-backports), kernel, guest packages",
                 lambda: _hash("packages", self._stamp_hash("root"), apt_pin(),
                               LAB_PACKAGES, GUEST_PACKAGES), self._step_packages,
                 lambda: self.root / "usr/bin/qemu-system-x86_64"),
            Step("setup", "check vfio-user-pci, unregister PoCL, mount points",
                 lambda: _hash("setup", self._stamp_hash("packages"), ROOT_VIEW, RUN_MOUNT),
                 self._step_setup,
                 lambda: self.root / OPENCL_VENDORS_DISABLED.lstrip("/") / POCL_ICD),
            Step("kernel", "guest kernel",
                 lambda: _hash("kernel", self._stamp_hash("setup")), self._step_kernel,
                 lambda: self.kernel),
            Step("initramfs", "initramfs (busybox, 9p, overlay)",
                 lambda: _hash("initramfs", self._stamp_hash("kernel"), init_script(),
                               stage2_script()), self._step_initramfs,
                 lambda: self.initrd),
        ]

    def _stamp_file(self, name: str) -> Path:
        return self.stamps / f"{name}.json"

    def _stamp(self, name: str) -> dict[str, object] | None:
        """The step's stamp, or None if missing or if the step's output is gone."""
        step = next((s for s in self.steps() if s.name == name), None)
        if step is not None and not step.output().exists():
            return None
        try:
            data = json.loads(self._stamp_file(name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stamp_hash(self, name: str) -> str:
        """Identifies one run of step ``name``: a rerun invalidates the steps after it."""
        stamp = self._stamp(name)
        return f"{stamp.get('hash')}@{stamp.get('finished')}" if stamp else "missing"

    def step_states(self) -> list[tuple[Step, str]]:
        """Each step with ``done``, ``stale`` (inputs changed) or ``missing``."""
        states = []
        for step in self.steps():
            stamp = self._stamp(step.name)
            if stamp is None:
                states.append((step, "missing"))
            elif stamp.get("hash") != step.inputs():
                states.append((step, "stale"))
            else:
                states.append((step, "done"))
        return states

    def check_ready(self) -> None:
        """Raise :class:`LabNotReady` unless every step is done."""
        if os.geteuid() != 0:
            raise LabNotReady("the lab runs QEMU chrooted in a private mount namespace: "
                              "run it as root")
        if not self.root.is_dir():
            raise LabNotReady(f"no lab at {self.path}: run `python -m qemu lab build`"
                              " (or `make lab`)")
        bad = [f"{step.name} ({state})" for step, state in self.step_states() if state != "done"]
        if bad:
            raise LabNotReady(f"the lab at {self.path} is incomplete or out of date: "
                              f"{', '.join(bad)}; run `python -m qemu lab build` (or `make lab`)")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._say(f"waiting for another `lab build` on {self.path} ...")
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def build(self, *, force: Sequence[str] = (), probe: bool = True,
              reprobe: bool = False) -> None:
        """Build or refresh the lab; ``force`` names steps to redo."""
        t0 = time.monotonic()
        with self._locked():
            self._say(f"lab: {self.path}")
            self._ensure_host_tools()
            steps = self.steps()
            unknown = set(force) - {step.name for step in steps}
            if unknown:
                raise StepFailed(f"no such step: {', '.join(sorted(unknown))} (steps: "
                                 f"{', '.join(step.name for step in steps)})")
            # A forced or changed step invalidates the ones after it (their inputs chain).
            for i, step in enumerate(steps, start=1):
                head = f"[{i}/{len(steps)}] {step.name}: {step.what}"
                inputs = step.inputs()
                stamp = self._stamp(step.name)
                if step.name not in force and stamp and stamp.get("hash") == inputs:
                    self._say(f"{head}: up to date")
                    continue
                self._say(f"{head} ...")
                t = time.monotonic()
                self._stamp_file(step.name).unlink(missing_ok=True)
                step.run()
                took = time.monotonic() - t
                self.stamps.mkdir(parents=True, exist_ok=True)
                tmp = self._stamp_file(step.name).with_suffix(".tmp")
                tmp.write_text(json.dumps({"hash": step.inputs(), "seconds": round(took, 1),
                                           "finished": time.time()}))
                tmp.replace(self._stamp_file(step.name))
                self._say(f"{head}: done in {took:.1f} s")
        if probe:
            from ._accel import cached_verdict, kvm_verdict
            cached = None if reprobe else cached_verdict(self)
            if cached is not None:
                self._say(f"[accel] cached verdict: {cached.describe()}")
            else:
                t = time.monotonic()
                self._say("[accel] deciding KVM or TCG with a test boot under KVM ...")
                verdict = kvm_verdict(self, refresh=True)
                self._say(f"[accel] {verdict.describe()} ({time.monotonic() - t:.1f} s)")
        self._say(f"lab ready in {time.monotonic() - t0:.1f} s")

    # -- helpers -------------------------------------------------------------
    def _run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
             what: str) -> None:
        """Run a build command, its output indented under the step's line."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
        tail: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-30:]
                if self._verbose_line(line):
                    self._say("    " + line.rstrip())
            rc = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): stop the child too, then re-raise.
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
        finally:
            proc.stdout.close()
        if rc != 0:
            raise StepFailed(f"{what} failed (exit code {rc}); last output:\n"
                             + "\n".join("    | " + t for t in tail))

    @staticmethod
    def _verbose_line(line: str) -> bool:
        # Keep the progress readable: mmdebstrap's own steps, apt's summary and errors.
        return (line.startswith(("I: ", "E: ", "W: ", "Err:"))
                or "newly installed" in line or "error" in line.lower())

    def chroot(self, argv: Sequence[str], *, what: str, sys_: bool = False) -> None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", INITRD="No",
                   LC_ALL="C.UTF-8", LANG="C.UTF-8")
        env.pop("LANGUAGE", None)
        self._run(chroot_argv(ChrootSpec(self.root, sys=sys_), argv), env=env, what=what)

    def _ensure_host_tools(self) -> None:
        if os.geteuid() != 0:
            raise StepFailed("the lab is built as root (mmdebstrap, chroot and mount need it)")
        missing = [t for t in ("unshare", "chroot", "mount") if shutil.which(t) is None]
        if missing:
            raise StepFailed(f"host tools missing: {', '.join(missing)} (util-linux, coreutils)")
        if shutil.which("mmdebstrap") is None:
            self._say("[host] installing mmdebstrap from the host's apt ...")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            self._run(["apt-get", "update", "-q"], env=env, what="apt-get update")
            self._run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"],
                      env=env, what="apt-get install mmdebstrap")

    def mounts_under(self, path: Path) -> list[str]:
        """Mount points under ``path`` in this mount namespace (there should be none)."""
        prefix = str(path) + "/"
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point == str(path) or point.startswith(prefix):
                    found.append(point)
        return found

    def _step_root(self) -> None:
        tmp = self.path / "root.partial"
        for p in (tmp, self.root):
            if p.exists():
                mounted = self.mounts_under(p)
                if mounted:
                    raise StepFailed(f"refusing to delete {p}: mounted below it: "
                                     + ", ".join(mounted))
                shutil.rmtree(p)
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
                *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
                "--dpkgopt=path-include=/usr/share/locale/locale.alias",
                SUITE, str(tmp), *apt_sources(mirror())]
        self._run(argv, what="mmdebstrap")
        tmp.rename(self.root)

    def _step_packages(self) -> None:
        prefs = self.root / "etc/apt/preferences.d/ava-lab"
        prefs.parent.mkdir(parents=True, exist_ok=True)
        prefs.write_text(apt_pin())
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # Finish whatever an interrupted earlier run left half-configured.
        self.chroot(["dpkg", "--configure", "-a"], what="dpkg --configure -a (in the root)")
        self.chroot(["apt-get", "update", "-q"], what="apt-get update (in the root)")
        self.chroot(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                     "-o", "Dpkg::Use-Pty=0", *LAB_PACKAGES, *GUEST_PACKAGES],
                    what="apt-get install (in the root)")
        self.chroot(["apt-get", "clean"], what="apt-get clean")
        for lists in (self.root / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()

    def _step_setup(self) -> None:
        probe = subprocess.run(
            ["chroot", str(self.root), "qemu-system-x86_64", "-device", "vfio-user-pci,help"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        if probe.returncode != 0 or "vfio-user-pci options" not in probe.stdout:
            raise StepFailed(
                "the root's QEMU has no vfio-user-pci device (needs QEMU >= 10.1 from "
                f"{SUITE}-backports): `qemu-system-x86_64 -device vfio-user-pci,help` said:\n"
                + (probe.stdout + probe.stderr).strip())
        vendors = self.root / OPENCL_VENDORS.lstrip("/")
        disabled = self.root / OPENCL_VENDORS_DISABLED.lstrip("/")
        disabled.mkdir(parents=True, exist_ok=True)
        vendors.mkdir(parents=True, exist_ok=True)
        for icd in vendors.glob("*.icd"):
            icd.rename(disabled / icd.name)
        if not (disabled / POCL_ICD).exists():
            raise StepFailed(f"PoCL's {POCL_ICD} not found in the root")
        for mount_point in (ROOT_VIEW, RUN_MOUNT, "/mnt/ava", "/mnt/scratch"):
            (self.root / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (self.root / "etc/hostname").write_text("ava-guest\n")

    def kernel_version(self) -> str | None:
        try:
            return (self.boot / "kernel-version").read_text().strip()
        except OSError:
            return None

    def _step_kernel(self) -> None:
        modules = sorted((self.root / "usr/lib/modules").iterdir(),
                         key=lambda p: [int(x) if x.isdigit() else x
                                        for x in p.name.replace("-", ".").split(".")])
        if not modules:
            raise StepFailed("no kernel modules in the root")
        version = modules[-1].name
        image = self.root / "boot" / f"vmlinuz-{version}"
        if not image.exists():
            raise StepFailed(f"{image} is missing")
        self.boot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, self.kernel)
        (self.boot / "kernel-version").write_text(version + "\n")

    def _step_initramfs(self) -> None:
        version = self.kernel_version()
        if version is None:
            raise StepFailed("kernel step did not record a version")
        busybox = self.root / "usr/bin/busybox"
        data = build_initramfs(busybox, self.root / "usr/lib/modules" / version)
        tmp = self.initrd.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.initrd)

    # -- status --------------------------------------------------------------
    def package_version(self, name: str) -> str | None:
        try:
            text = (self.root / "var/lib/dpkg/status").read_text(errors="replace")
        except OSError:
            return None
        for block in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines()
                          if ": " in line and not line.startswith(" "))
            if fields.get("Package") == name and "installed" in fields.get("Status", ""):
                return fields.get("Version")
        return None

    def debian_version(self) -> str | None:
        try:
            return (self.root / "etc/debian_version").read_text().strip()
        except OSError:
            return None

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def status_lines(self) -> list[str]:
        from ._accel import cached_verdict

        lines = [f"lab directory: {self.path}"]
        if not self.path.exists():
            return lines + ["  not built: run `python -m qemu lab build` (or `make lab`)"]
        for step, state in self.step_states():
            stamp = self._stamp(step.name) or {}
            took = f" ({stamp.get('seconds')} s)" if state == "done" else ""
            lines.append(f"  step {step.name:<10} {state}{took}")
        lines.append(f"  QEMU:    {self.package_version('qemu-system-x86') or '-'}")
        lines.append(f"  kernel:  {self.kernel_version() or '-'}")
        lines.append(f"  Debian:  {self.debian_version() or '-'}")
        lines.append(f"  size:    {self.size_bytes() / 2**20:.0f} MiB")
        verdict = cached_verdict(self)
        lines.append(f"  accel:   {verdict.describe() if verdict else 'not decided yet'}")
        return lines
