"""The executor's sandbox: what a process that runs guest-supplied code may reach.

OpenCL on a CPU runs guest kernels as native code in the process that calls it,
so that process (the executor) is treated as hostile.  ``enter`` turns the
calling process into a sandboxed one, in this order:

1. new mount, network, IPC and UTS namespaces (root only): the network namespace
   has nothing but a loopback interface that is down, so no socket can reach the
   host or anything else, and abstract UNIX sockets of the host are not visible;
2. a root filesystem of its own: a tmpfs holding read-only bind mounts of what
   Python and the OpenCL implementation need (``/usr``, the interpreter's prefix,
   the project's packages, ``/etc/OpenCL``, ``/etc/ld.so.cache``, ``/sys``),
   ``/proc`` mounted with ``hidepid=invisible``, a ``/dev`` with only ``null``,
   ``zero``, ``full``, ``random`` and ``urandom`` (plus ``extra_binds``, for a
   GPU's device nodes), and a private, size-limited ``/tmp``;
3. ``chroot`` into it, then the credentials of an unprivileged user (``nobody``
   unless told otherwise) with no supplementary groups, and ``no_new_privs``;
4. resource limits: no core dumps, a cap on private memory (``RLIMIT_DATA``:
   guest RAM is a shared file mapping and does not count), on processes and
   threads of the user, and on open files.

Nothing here is a Python-level policy the sandboxed code could undo: the
namespaces, the root and the credentials are the kernel's.  A server that does
not run as root cannot create the namespaces or change users; it then runs the
executor with the limits of step 4 only, and says so (``mode`` "limits-only"),
or refuses to start when the sandbox is required.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import pwd
import resource
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

log = logging.getLogger("vdev.sandbox")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4

#: Device nodes every executor gets (character devices, bound from the host).
DEVICE_NODES = ("null", "zero", "full", "random", "urandom")
#: Host files and directories bound read-only when they exist.
SYSTEM_PATHS = ("/usr", "/etc/OpenCL", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d", "/etc/localtime", "/sys")
#: Top-level names that are symlinks into /usr on merged-/usr systems.
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxError(Exception):
    pass


#: The empty directory every executor mounts its root on.  Each does so in its own
#: mount namespace, so one directory serves every executor of every server, and
#: nothing is left behind by a server that was killed.
SANDBOX_ROOT = "/run/ava-vdev/executor-root"


def sandbox_root_dir() -> str:
    """SANDBOX_ROOT, created if needed (root only: it lives in /run), and checked to be
    a real directory that only root can change."""
    os.makedirs(SANDBOX_ROOT, mode=0o700, exist_ok=True)
    for path in (os.path.dirname(SANDBOX_ROOT), SANDBOX_ROOT):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise SandboxError(f"{path} must be a directory owned by root and writable by "
                               "root only (it is where executors mount their root)")
    return SANDBOX_ROOT


@dataclass
class SandboxConfig:
    """How to confine an executor.  ``mode``: "auto" (full sandbox when root, limits
    only otherwise), "required" (full sandbox or fail), "off" (limits only)."""

    mode: str = "auto"
    user: str = "nobody"
    root_dir: str = ""                 # an empty directory to build the root on
    memory_bytes: int = 32 << 30       # RLIMIT_DATA
    max_tasks: int = 4096              # RLIMIT_NPROC (the user's processes and threads)
    max_files: int = 4096              # RLIMIT_NOFILE
    tmp_bytes: int = 1 << 30           # size of the private /tmp
    extra_binds: list[str] = field(default_factory=list)   # read-write, e.g. /dev/nvidia0
    read_only_paths: list[str] = field(default_factory=list)
    #: The server's kernel cache (``server_kernel_cache``), kept across executors.
    kernel_cache: str = ""

    def as_args(self) -> list[str]:
        args = ["--sandbox", self.mode, "--sandbox-user", self.user, "--sandbox-root",
                self.root_dir, "--memory", str(self.memory_bytes), "--max-tasks",
                str(self.max_tasks), "--max-files", str(self.max_files), "--tmp-bytes",
                str(self.tmp_bytes)]
        for path in self.extra_binds:
            args += ["--bind", path]
        for path in self.read_only_paths:
            args += ["--bind-ro", path]
        if self.kernel_cache:
            args += ["--kernel-cache", self.kernel_cache]
        return args

    def full_sandbox(self) -> bool:
        """Whether ``enter`` will build namespaces (else it only sets limits)."""
        if self.mode == "off":
            return False
        if os.geteuid() != 0:
            if self.mode == "required":
                raise SandboxError("the executor sandbox needs the server to run as root "
                                   "(namespaces, chroot, a change of user); run as root or "
                                   "pass --sandbox auto/off")
            return False
        return True


def _load_libc() -> ctypes.CDLL:
    # glibc's soname first: ``find_library`` runs ldconfig in a subprocess (13 ms of
    # every executor's start).
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_libc = _load_libc()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None
           ) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {source} on {target}")


def _bind(host: str, root: str, *, writable: bool = False) -> None:
    """Bind ``host`` at the same path under ``root`` (read-only unless ``writable``)."""
    target = root + host
    st = os.stat(host)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(target, mode=0o755, exist_ok=True)
    elif not os.path.exists(target):
        with open(target, "w"):
            pass
    _mount(host, target, None, MS_BIND | MS_REC)
    if not writable:
        _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_REC)


def python_paths() -> list[str]:
    """What the interpreter and this project's packages need, as host paths."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.realpath(sys.executable))}
    checkouts = set()                      # where the packages live: not bound whole
    for name in ("vdev", "protocols", "host_backend"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        if module.__file__:
            package = os.path.dirname(os.path.realpath(module.__file__))
            paths.add(package)
            checkouts.add(os.path.dirname(package))
    for entry in sys.path:                 # site-packages and editable installs
        if entry and os.path.isdir(entry) and os.path.realpath(entry) not in checkouts:
            paths.add(os.path.realpath(entry))
    # Only the outermost of nested paths (a bind of /x covers /x/y).
    out: list[str] = []
    for path in sorted(paths):
        if path in ("/", "/usr") or path.startswith("/usr/"):
            continue
        if not any(path.startswith(p + "/") for p in out):
            out.append(path)
    return out


def environment_paths() -> list[str]:
    """Host paths the environment points the OpenCL loader at (a vendors directory,
    a library named by AVA_HOST_OPENCL): visible, read-only, if they exist."""
    paths = []
    for var in ("OCL_ICD_VENDORS", "OCL_ICD_FILENAMES", "AVA_HOST_OPENCL"):
        for entry in os.environ.get(var, "").split(":"):
            if os.path.isabs(entry) and os.path.exists(entry):
                paths.append(os.path.realpath(entry))
    return paths


def _build_root(cfg: SandboxConfig, uid: int, gid: int) -> None:
    root = cfg.root_dir
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("ava-executor", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    for name in TOP_LEVEL:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), root + host)
        elif os.path.isdir(host):
            _bind(host, root)
    # /tmp first: binds of host paths under /tmp (a checkout there) go on top of it.
    os.makedirs(root + "/tmp", mode=0o1777, exist_ok=True)
    _mount("ava-tmp", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"mode=1777,size={cfg.tmp_bytes},uid={uid},gid={gid}")
    bound: list[str] = []
    for host in (*SYSTEM_PATHS, *python_paths(), *environment_paths(), *cfg.read_only_paths):
        if os.path.exists(host) and not any(host == b or host.startswith(b + "/") for b in bound):
            _bind(host, root)
            bound.append(host)
    os.makedirs(root + "/proc", mode=0o555)
    try:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "hidepid=invisible")
    except SandboxError:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    os.makedirs(root + "/dev", mode=0o755)
    _mount("ava-dev", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for node in DEVICE_NODES:
        _bind("/dev/" + node, root, writable=True)
    os.makedirs(root + "/dev/shm", mode=0o1777)
    for path in cfg.extra_binds:
        _bind(path, root, writable=True)
    # The new root itself becomes read-only: the executor writes to /tmp only.
    _mount("none", root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limits(cfg: SandboxConfig) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for which, value in ((resource.RLIMIT_DATA, cfg.memory_bytes),
                         (resource.RLIMIT_NPROC, cfg.max_tasks),
                         (resource.RLIMIT_NOFILE, cfg.max_files)):
        _soft, hard = resource.getrlimit(which)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (cap, cap))


class KernelCache:
    """The implementation's kernel cache of one device server, shared by its
    executors: a program a guest built once builds from the cache in the next
    session too (and after an executor was replaced), as it does natively.  A
    size-limited tmpfs owned by the executor user, mounted in a mount namespace of
    the server's own, so it goes away with the server whatever ends it, and no other
    VM's executors (other servers) can see or poison it.  Without a full sandbox (a
    server that is not root, or ``--sandbox off``) the executors run as the server's
    own user, with no namespace to hide a mount in: the cache is then a private
    directory (mode 0700) the server removes when it ends.  ``path`` is "" when there
    is none."""

    def __init__(self, cfg: SandboxConfig, size: int):
        self.path = ""
        self._mounted = False
        if not cfg.full_sandbox():
            try:
                self.path = tempfile.mkdtemp(prefix="ava-kernel-cache-")
            except OSError as exc:
                log.warning("no kernel cache shared across sessions (%s): each executor "
                            "builds every program anew", exc)
                return
            log.info("kernel cache for this server's executors: %s (a private directory: "
                     "the executors are not sandboxed)", self.path)
            return
        try:
            entry = pwd.getpwnam(cfg.user)
        except KeyError:
            return                       # enter() reports the missing user
        path = tempfile.mkdtemp(prefix="ava-kernel-cache-")
        try:
            # Before any thread exists: the namespace is the process's, not a thread's.
            _check(_libc.unshare(CLONE_NEWNS), "unshare")
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            _mount("ava-kernel-cache", path, "tmpfs", MS_NOSUID | MS_NODEV,
                   f"mode=0700,size={size},uid={entry.pw_uid},gid={entry.pw_gid}")
        except SandboxError as exc:
            os.rmdir(path)
            log.warning("no kernel cache shared across sessions (%s): each executor keeps "
                        "its own", exc)
            return
        self.path = path
        self._mounted = True
        log.info("kernel cache for this server's executors: %s (tmpfs, %d MiB)", path,
                 size >> 20)

    def close(self) -> None:
        """Unmount and remove it (a server killed outright leaves the empty directory:
        its namespace, and so the tmpfs, went with it)."""
        if not self.path:
            return
        if not self._mounted:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = ""
            return
        if _libc.umount2(self.path.encode(), MNT_DETACH) != 0:
            log.warning("cannot unmount the kernel cache %s: %s", self.path,
                        os.strerror(ctypes.get_errno()))
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
        self.path = ""


def enter(cfg: SandboxConfig) -> str:
    """Confine the calling process (an executor, before it loads any OpenCL);
    returns the mode it got: "full" or "limits-only"."""
    full = cfg.full_sandbox()
    if full:
        try:
            entry = pwd.getpwnam(cfg.user)
        except KeyError:
            raise SandboxError(f"executor user {cfg.user!r} does not exist (--executor-user)"
                               ) from None
        uid, gid = entry.pw_uid, entry.pw_gid
        if not cfg.root_dir or not os.path.isdir(cfg.root_dir):
            raise SandboxError(f"no directory to build the executor's root on ({cfg.root_dir!r})")
        if uid == 0:
            raise SandboxError(f"executor user {cfg.user!r} is root")
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
               "unshare")
        _build_root(cfg, uid, gid)
        os.chroot(cfg.root_dir)
        os.chdir("/")
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SandboxError("still root after changing user")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    _limits(cfg)
    if full:
        os.environ["HOME"] = os.environ["TMPDIR"] = "/tmp"
    return "full" if full else "limits-only"


def _read(path: str) -> None:
    with open(path, "rb"):
        pass


def probe(paths: Sequence[str] = ()) -> dict[str, object]:
    """What a process can reach (run inside the sandbox by the tests and by
    ``python -m vdev._executor_child --probe``)."""
    import socket
    result: dict[str, object] = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            result[what] = "allowed"
        except OSError as exc:
            result[what] = errno.errorcode.get(exc.errno or 0, str(exc))

    def tcp(host: str) -> None:
        with socket.create_connection((host, 22), timeout=1):
            pass

    def unix(path: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)

    attempt("read /etc/shadow", lambda: open("/etc/shadow").close())
    attempt("read /etc/passwd", lambda: open("/etc/passwd").close())
    for path in paths:
        attempt(f"read {path}", partial(_read, path))
    attempt("list /root", lambda: os.listdir("/root"))
    attempt("write /usr", lambda: open("/usr/ava-probe", "w").close())
    attempt("connect tcp 127.0.0.1", lambda: tcp("127.0.0.1"))
    attempt("connect tcp 8.8.8.8", lambda: tcp("8.8.8.8"))
    attempt("connect unix /run/systemd/private", lambda: unix("/run/systemd/private"))
    attempt("write /tmp", lambda: open("/tmp/ava-probe", "w").close())
    result["pids visible"] = sum(1 for n in os.listdir("/proc") if n.isdigit())
    result["core limit"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
    return result
