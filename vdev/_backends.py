"""Backends by name: what ``--backend`` chooses.  Each session (or executor) gets a
fresh instance; real backends live in host_backend/ and are imported only when
chosen, so the device server's parent process never loads OpenCL."""

from __future__ import annotations

import importlib

from ._backend import Backend, WithDiagnostics
from ._selftest import SelftestBackend

BACKENDS: dict[str, type[SelftestBackend] | str] = {
    "test": SelftestBackend, "opencl": "host_backend:OpenClBackend"}


def make_backend(name: str) -> Backend:
    factory = BACKENDS[name]
    if not isinstance(factory, str):
        return factory()
    module, _, attr = factory.partition(":")
    return WithDiagnostics(getattr(importlib.import_module(module), attr)(), SelftestBackend())
