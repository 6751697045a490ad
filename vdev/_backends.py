"""Backends by name: what ``--backend`` chooses.  Each session (or executor) gets a
fresh instance; real backends live in host_backend/ and are imported only when
chosen, so the device server's parent process never loads OpenCL."""

from __future__ import annotations

import importlib
from typing import Any

from ._backend import Backend, WithDiagnostics
from ._selftest import SelftestBackend

BACKENDS: dict[str, type[SelftestBackend] | str] = {
    "test": SelftestBackend, "opencl": "host_backend:OpenClBackend"}


def make_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """A fresh backend; ``options`` are the real backend's keyword arguments (the test
    backend takes none)."""
    factory = BACKENDS[name]
    if not isinstance(factory, str):
        return factory()
    module, _, attr = factory.partition(":")
    real = getattr(importlib.import_module(module), attr)(**(options or {}))
    return WithDiagnostics(real, SelftestBackend())
