"""``install`` / ``uninstall``: register the ICD with the OpenCL ICD loader."""

from __future__ import annotations

import shutil
from pathlib import Path

VENDORS = Path("/etc/OpenCL/vendors")
LIBDIR = Path("/usr/local/lib/ava-vdev")
ICD_FILE = VENDORS / "ava.icd"


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


def uninstall() -> list[Path]:
    removed = []
    for path in (ICD_FILE, LIBDIR / "libava_icd.so"):
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed
