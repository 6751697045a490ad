"""ava-vdev's vfio-user device server.

The public face is small: ``Server`` (listening socket and sessions),
``AcceleratorDevice`` (the PCI device model), ``DmaMap`` and the client in
``vdev.client``.  Everything else lives in private modules, one concern each.
"""

from ._device import AcceleratorDevice as AcceleratorDevice
from ._dma import DmaError as DmaError
from ._dma import DmaMap as DmaMap
from ._server import Server as Server
from ._server import SocketInUse as SocketInUse
from ._session import Session as Session
from ._session import VfioUserError as VfioUserError
