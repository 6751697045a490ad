"""Running a command chrooted in the lab's trixie root, inside a private mount namespace.

Every mount made for the chroot (``/proc``, ``/dev``, bind mounts of the run
directory and of the checkout) lives in a mount namespace of its own, created
by ``unshare --mount --propagation private``: the mounts vanish with the last
process in it, so nothing is left mounted on the host whatever happens to the
launcher. ``unshare`` and ``sh`` ``exec`` into ``chroot``, which ``exec``s the
command: the PID the launcher holds is the command's own (signals reach it
directly).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Bind:
    """Bind-mount host path ``source`` at ``target`` (a path inside the root)."""

    source: Path
    target: str
    readonly: bool = False
    recursive: bool = False


@dataclass(frozen=True)
class ChrootSpec:
    """What to mount before ``chroot``-ing into ``root``."""

    root: Path
    proc: bool = True
    dev: bool = True
    sys: bool = False
    binds: Sequence[Bind] = field(default_factory=tuple)
    # Bind the root (non-recursively, read-only) onto this directory inside
    # itself: a view of the root with none of the mounts above, which QEMU
    # exports to the guest over 9p.
    self_view: str | None = None


def _inside(root: Path, target: str) -> str:
    return str(root) + "/" + target.lstrip("/")


def namespace_script(spec: ChrootSpec) -> str:
    """The ``sh`` script that mounts what ``spec`` asks for; the command follows as ``"$@"``."""
    q = shlex.quote
    root = spec.root
    lines = ["set -e"]
    if spec.self_view:
        view = _inside(root, spec.self_view)
        lines += [f"mkdir -p {q(view)}",
                  f"mount --bind {q(str(root))} {q(view)}",
                  f"mount -o remount,bind,ro {q(view)}"]
    if spec.proc:
        lines.append(f"mount -t proc proc {q(_inside(root, '/proc'))}")
    if spec.sys:
        lines.append(f"mount -t sysfs sysfs {q(_inside(root, '/sys'))}")
    if spec.dev:
        lines.append(f"mount --bind /dev {q(_inside(root, '/dev'))}")
    for b in spec.binds:
        target = _inside(root, b.target)
        flag = "--rbind" if b.recursive else "--bind"
        lines += [f"mkdir -p {q(target)}", f"mount {flag} {q(str(b.source))} {q(target)}"]
        if b.readonly:
            lines.append(f"mount -o remount,bind,ro {q(target)}")
    lines.append(f'exec chroot {q(str(root))} "$@"')
    return "\n".join(lines)


def chroot_argv(spec: ChrootSpec, argv: Sequence[str]) -> list[str]:
    """The host command line that runs ``argv`` (paths as seen inside the root)."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", namespace_script(spec), "ava-chroot", *argv]
