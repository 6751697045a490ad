"""clinfo through the device against clinfo run natively: equal, except for what
protocols/opencl_caps.py hides, and exactly that.

clinfo prints a capability block only when the extension is reported, so hiding an
extension removes its block too; the blocks clinfo prints for the hidden extensions
PoCL reports are named here.
"""

from __future__ import annotations

import difflib
import re

from protocols import opencl_caps as caps

#: clinfo's headings of the blocks it prints only for an extension.
EXTENSION_BLOCKS = {"cl_khr_command_buffer": "Command buffer"}
#: clinfo's lines for CL_DEVICE_SVM_CAPABILITIES, which the device answers with 0.
SVM_LINES = ("Coarse-grained buffer sharing", "Fine-grained buffer sharing", "Atomics")


def _hidden_names(text: str) -> set[str]:
    return {w for w in re.findall(r"\bcl_\w+", text) if not caps.extension_reason(w)[0]}


def _without(line: str, hidden: set[str]) -> str:
    return " ".join(w for w in line.split() if w not in hidden)


def unexplained_differences(device: str, native: str) -> list[str]:
    """The lines in which the device's clinfo differs from native for a reason other
    than a capability the device hides (an empty list: the two agree)."""
    hidden = _hidden_names(native)
    bad = []
    a, b = native.splitlines(), device.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        theirs, ours = a[i1:i2], b[j1:j2]
        expected = {_without(line, hidden) for line in theirs}
        shown = {_without(line, set()) for line in ours}
        in_block = False
        for line in theirs:
            block = any(line.strip().startswith(EXTENSION_BLOCKS[n]) for n in hidden
                        if n in EXTENSION_BLOCKS)
            in_block = block or (in_block and line.startswith("    "))
            if not (in_block or hidden & set(line.split()) or _without(line, hidden) in shown
                    or line.strip().startswith(SVM_LINES)):
                bad.append(f"native only: {line}")
        for line in ours:
            svm_off = line.strip().startswith(SVM_LINES) and line.rstrip().endswith("No")
            if not (svm_off or _without(line, set()) in expected):
                bad.append(f"device only: {line}")
    return bad


def explained(key: str, guest_value: str, native_value: str) -> bool:
    """Whether a property (clinfo's label, the guest's and the native value; "(not
    shown)" for a side that lacks it) differs only by what the device hides: an
    extension list less the hidden names, or the block of a hidden extension."""
    hidden = _hidden_names(native_value)
    if hidden and guest_value == _without(native_value, hidden):
        return True
    return guest_value == "(not shown)" and any(
        key.startswith(heading) for name, heading in EXTENSION_BLOCKS.items()
        if not caps.extension_reason(name)[0])


def as_the_device_reports(line: str) -> str:
    """A native ``NAME: value`` line (pyopencl's dump-properties) as the device
    reports it: fixed capabilities at their value, extension lists less the hidden."""
    name, sep, value = line.partition(": ")
    fixed = {f.name.removeprefix("CL_DEVICE_"): f.value for f in caps.FIXED_DEVICE_INFO.values()}
    if sep and name in fixed:
        return f"{name}: {fixed[name]}"
    if sep and name == "EXTENSIONS":
        return f"{name}: {_without(value, _hidden_names(value))}"
    return line
