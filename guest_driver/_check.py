"""``check BINARY...``: which OpenCL functions a program or library imports, and
which of them the shim forwards (read with pyelftools from the dynamic symbols)."""

from __future__ import annotations

from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from protocols import opencl_api as api

#: Answered inside the guest ICD without a device round trip.
LOCAL = {"clGetExtensionFunctionAddress", "clGetExtensionFunctionAddressForPlatform",
         "clIcdGetPlatformIDsKHR", *api.GUEST_COMPOSED}


@dataclass
class CheckResult:
    path: str
    needed: list[str]
    imported: list[str]

    @property
    def forwarded(self) -> list[str]:
        return [f for f in self.imported if f in api.BY_NAME or f in LOCAL]

    @property
    def missing(self) -> list[str]:
        return [f for f in self.imported if f not in api.BY_NAME and f not in LOCAL]


def opencl_imports(path: str) -> CheckResult:
    """Undefined ``cl*`` function symbols of an ELF file (what it needs from libOpenCL)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            needed: list[str] = []
            imported: set[str] = set()
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    # pyelftools gives a DT_NEEDED tag its `needed` name at parse time.
                    needed += [t.needed for t in section.iter_tags()  # type: ignore[attr-defined]
                               if t.entry.d_tag == "DT_NEEDED"]
                if isinstance(section, SymbolTableSection) and section.name == ".dynsym":
                    for sym in section.iter_symbols():
                        if (sym.name.startswith("cl") and sym["st_shndx"] == "SHN_UNDEF"
                                and sym["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE")):
                            imported.add(sym.name)
    except ELFError as exc:
        raise ValueError(f"{path}: not an ELF file ({exc})") from exc
    return CheckResult(path, needed, sorted(imported))


def report(result: CheckResult) -> str:
    lines = [f"{result.path}: imports {len(result.imported)} OpenCL functions "
             f"({len(result.forwarded)} forwarded, {len(result.missing)} not yet)"]
    if not any(n.startswith("libOpenCL") for n in result.needed) and result.imported:
        lines.append("  note: it does not link libOpenCL directly (DT_NEEDED: "
                     f"{', '.join(result.needed) or 'none'})")
    for name in result.imported:
        if name in result.forwarded:
            lines.append(f"  forwarded  {name}")
        else:
            why = api.NOT_YET.get(name, "not in the spec yet")
            lines.append(f"  MISSING    {name}  ({why})")
    return "\n".join(lines)
