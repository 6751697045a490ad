"""Sizes as people write them: ``64M``, ``1.5G``, ``4096`` (powers of 1024).

One parser for the command line (``--device-memory``) and the manager's
configuration (``memory = "2G"``), so both accept exactly the same spellings.
"""

from __future__ import annotations

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes; raises ValueError naming the text (callers add which option or key)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in SIZE_SUFFIXES else ""
    try:
        value = float(raw[:len(raw) - len(unit)])
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or with K, M, G or T)") from None
    size = int(value * SIZE_SUFFIXES[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be more than 0")
    return size
