"""ava-vdev's vfio-user device server.

The public face is small: ``Server`` (listening socket and sessions),
``AcceleratorDevice`` (the PCI device model), ``DmaMap`` and the client in
``vdev.client``.  Everything else lives in private modules, one concern each.

The names are imported when first used (PEP 562): an executor process, which runs
``vdev._executor_child`` and none of the server, then starts without trio and the
vfio-user machinery, so a client waits less for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "AcceleratorDevice": "._device",
    "DmaError": "._dma",
    "DmaMap": "._dma",
    "Server": "._server",
    "SocketInUse": "._server",
    "Session": "._session",
    "VfioUserError": "._session",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from ._device import AcceleratorDevice as AcceleratorDevice
    from ._dma import DmaError as DmaError
    from ._dma import DmaMap as DmaMap
    from ._server import Server as Server
    from ._server import SocketInUse as SocketInUse
    from ._session import Session as Session
    from ._session import VfioUserError as VfioUserError


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vdev' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
