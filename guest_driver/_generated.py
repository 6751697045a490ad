"""Writing generated files, or checking them: what both generators (``gen_abi``,
``gen_icd``) do with the text they render."""

from __future__ import annotations

import os
import sys


def sync(outputs: dict[str, str], check: bool, command: str) -> int:
    """Write each path's text where it differs (or, with ``check``, write nothing and
    name each stale file).  Returns 1 when ``check`` found a stale file, else 0."""
    stale = 0
    for path, text in outputs.items():
        try:
            with open(path) as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if check:
            print(f"{path} is stale: run `{command}`", file=sys.stderr)
            stale = 1
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {path}")
    return stale
