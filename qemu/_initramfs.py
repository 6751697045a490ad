"""Building the guest's initramfs: a gzipped ``newc`` cpio archive, written in Python.

Deterministic (fixed mtimes and inode numbers): the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import lzma
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._errors import StepFailed
from ._guest import INITRAMFS_MODULES, init_script, stage2_script


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink or a device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """Serialise ``entries`` (parents before children) as a ``newc`` archive."""
    out = bytearray()

    def member(ino: int, e: Entry) -> None:
        name = e.name.encode() + b"\0"
        fields = (ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data),
                  0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.extend(header + name + _pad4(len(header) + len(name)))
        out.extend(e.data + _pad4(len(e.data)))

    for ino, e in enumerate(entries, start=1):
        member(ino, e)
    member(0, Entry("TRAILER!!!", 0))
    return bytes(out)


def find_modules(modules_dir: Path, names: Iterable[str]) -> dict[str, Path]:
    """Map each module name to its file under ``modules_dir`` (``/lib/modules/VERSION``)."""
    found: dict[str, Path] = {}
    dep = modules_dir / "modules.dep"
    for line in dep.read_text().splitlines():
        path = line.split(":", 1)[0]
        base = path.rsplit("/", 1)[-1]
        for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
            if base.endswith(suffix):
                found[base[: -len(suffix)]] = modules_dir / path
    missing = [n for n in names if n not in found]
    if missing:
        raise StepFailed(f"kernel modules not found in {dep}: {', '.join(missing)}")
    return {n: found[n] for n in names}


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise StepFailed(f"{path}: zstd-compressed modules are not supported")
    return data


def build_initramfs(busybox: Path, modules_dir: Path) -> bytes:
    """The gzipped initramfs: static busybox, ``/init``, the second stage and the modules."""
    if b"ld-linux" in busybox.read_bytes()[:4096]:
        raise StepFailed(f"{busybox} is not statically linked")
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [Entry(name, d) for name in
               ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "run", "sys", "tmp")]
    entries += [
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        Entry("bin/busybox", x, busybox.read_bytes()),
        Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        Entry("init", x, init_script().encode()),
        Entry("stage2", x, stage2_script().encode()),
    ]
    for name, path in find_modules(modules_dir, INITRAMFS_MODULES).items():
        entries.append(Entry(f"lib/modules/{name}.ko", f, _module_bytes(path)))
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)
