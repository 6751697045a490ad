"""One client connection: version negotiation, then a single dispatch table.

Every handler validates, then acts; a failure raises ``VfioUserError`` with
an errno and a message naming the field, and the dispatcher turns it into an
error reply (or only a log line, for NO_REPLY messages).  Handlers are plain
synchronous functions that never block, so no reply is ever late.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import trio
from construct import ConstructError

from protocols import vfio_user as vu
from protocols.vfio_user import Command, HeaderFlags, MsgType

from ._backend import Backend
from ._device import NUM_REGIONS, AcceleratorDevice, RegionError
from ._dma import DmaError, DmaMap
from ._executor import ExecutorConfig, ExecutorProcess, IsolatedEngine
from ._irq import IrqError
from ._rings import RingEngine
from ._transport import ConnectionLost, FramingError, Message, MessageStream

log = logging.getLogger("vdev.session")
msglog = logging.getLogger("vdev.msg")

MAX_MSG_FDS = 8
MAX_DATA_XFER = 1 << 20
#: Largest message we accept: a full-size region write plus slack for headers.
MAX_MESSAGE = MAX_DATA_XFER + 4096


class VfioUserError(Exception):
    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_


def _peer_pid(sock: trio.socket.SocketType) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])
    except OSError:
        return None


def _soon(token: trio.lowlevel.TrioToken, fn: Callable[[int], None]) -> Callable[[int], None]:
    """``fn`` made callable from any thread: it runs on the session's trio thread."""
    def call(arg: int) -> None:
        try:
            token.run_sync_soon(fn, arg)
        except trio.RunFinishedError:
            pass
    return call


class Session:
    """Serves one vfio-user client until it disconnects.

    The rings are served by an executor process (``executor``: the normal case,
    see ``_executor``) or, for white-box tests of the ring engine, by a
    ``RingEngine`` in this process running ``backend``."""

    #: Commands that may carry file descriptors, and how many at most.
    FD_LIMITS: ClassVar[dict[Command, int]] = {Command.DMA_MAP: 1, Command.DEVICE_SET_IRQS: MAX_MSG_FDS}

    def __init__(self, device: AcceleratorDevice, sock: trio.socket.SocketType, *,
                 name: str, backend: Backend | None = None,
                 executor: ExecutorConfig | None = None, stall_timeout: float = 5.0,
                 standby: Callable[[], ExecutorProcess | None] | None = None):
        if (backend is None) == (executor is None):
            raise ValueError("a session needs a backend (in process) or an executor config")
        self.device = device
        self.backend = backend
        self.executor = executor
        #: Hands over the server's standby executor, if it has one (see IsolatedEngine).
        self.standby = standby
        self.engine: RingEngine | IsolatedEngine | None = None
        self.name = name
        self.stream = MessageStream(sock, max_size=MAX_MESSAGE, stall_timeout=stall_timeout)
        self.dma = DmaMap(keep_fds=executor is not None)
        self.negotiated = False
        self.client_caps: dict[str, Any] = {}
        self.messages = 0
        self._handlers: dict[int, Callable[[Message], bytes | None]] = {
            Command.VERSION: self.handle_version,
            Command.DMA_MAP: self.handle_dma_map,
            Command.DMA_UNMAP: self.handle_dma_unmap,
            Command.DEVICE_GET_INFO: self.handle_get_info,
            Command.DEVICE_GET_REGION_INFO: self.handle_region_info,
            Command.DEVICE_GET_IRQ_INFO: self.handle_irq_info,
            Command.DEVICE_SET_IRQS: self.handle_set_irqs,
            Command.REGION_READ: self.handle_region_read,
            Command.REGION_WRITE: self.handle_region_write,
            Command.DEVICE_RESET: self.handle_reset,
        }

    # -- the loop ------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self.executor.backend if self.executor else self.backend.name  # type: ignore[union-attr]

    async def run(self) -> None:
        log.info("%s: connected (backend %s%s)", self.name, self.backend_name,
                 ", in an executor process" if self.executor else ", in process")
        device = self.device
        try:
            async with trio.open_nursery() as nursery:
                device.irq.attach_nursery(nursery)
                engine: RingEngine | IsolatedEngine
                if self.executor is not None:
                    engine = IsolatedEngine(self.dma, device.queues, self.executor,
                                            name=self.name, raise_irq=device.raise_irq,
                                            on_give_up=device.fail, standby=self.standby)
                    await nursery.start(engine.run)
                else:
                    assert self.backend is not None
                    token = trio.lowlevel.current_trio_token()
                    engine = RingEngine(self.dma, self.backend,
                                        raise_irq=_soon(token, device.raise_irq),
                                        fail_queue=device.queues.fail)
                    nursery.start_soon(partial(trio.to_thread.run_sync, engine.run))
                self.engine = engine
                device.queues.listener = engine
                device.on_doorbell = engine.kick
                try:
                    await self._loop()
                finally:
                    if isinstance(engine, IsolatedEngine):
                        engine.close()
                    else:
                        engine.stop()
                    nursery.cancel_scope.cancel()
        finally:
            device.on_doorbell = None
            device.queues.release_all()
            device.queues.listener = None
            device.irq.attach_nursery(None)
            device.irq.close()
            self.dma.clear()
            if self.backend is not None:
                try:
                    self.backend.close()
                except Exception:
                    log.exception("%s: backend %s failed to close", self.name, self.backend.name)
            log.info("%s: closed after %d messages; queues, DMA maps and IRQ fds released",
                     self.name, self.messages)

    async def _loop(self) -> None:
        while True:
            try:
                msg = await self.stream.receive()
            except ConnectionLost as exc:
                log.warning("%s: closing: %s", self.name, exc)
                return
            except FramingError as exc:
                log.warning("%s: closing: bad header (msg_id %d, command %d): %s", self.name,
                            exc.header.msg_id, exc.header.command, exc)
                await self._send_quietly(vu.build_error_reply(exc.header.msg_id, exc.header.command,
                                                              exc.errno))
                return
            except (trio.BrokenResourceError, ConnectionResetError, OSError) as exc:
                log.warning("%s: connection error: %s", self.name, exc)
                return
            if msg is None:
                return
            self.messages += 1
            try:
                await self._dispatch(msg)
            finally:
                msg.close_fds()

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except (trio.BrokenResourceError, OSError) as exc:
            log.warning("%s: could not send reply: %s", self.name, exc)

    async def _dispatch(self, msg: Message) -> None:
        no_reply = bool(msg.flags & HeaderFlags.NO_REPLY)
        if msglog.isEnabledFor(logging.DEBUG):
            msglog.debug("%s <- id=%d %s%s%s", self.name, msg.msg_id,
                         vu.describe(msg.command, msg.payload),
                         f" fds={len(msg.fds)}" if msg.fds else "", " (no reply)" if no_reply else "")
        if int(msg.flags & HeaderFlags.TYPE_MASK) != MsgType.COMMAND:
            log.warning("%s: dropping unexpected reply id=%d command=%d (no request outstanding)",
                        self.name, msg.msg_id, msg.command)
            return
        try:
            reply = self._handle(msg)
        except VfioUserError as exc:
            msg.close_fds()     # before replying: the client may count its fds then
            log.warning("%s: %s id=%d failed: %s (%s)", self.name, _cmd_name(msg.command),
                        msg.msg_id, exc, errno.errorcode.get(exc.errno, exc.errno))
            if not no_reply:
                await self._send_quietly(vu.build_error_reply(msg.msg_id, msg.command, exc.errno))
            return
        msg.close_fds()
        if no_reply:
            return
        data = vu.build_message(msg.msg_id, msg.command, reply or b"", flags=MsgType.REPLY)
        if msglog.isEnabledFor(logging.DEBUG):
            msglog.debug("%s -> id=%d %s reply (%d bytes)", self.name, msg.msg_id,
                         _cmd_name(msg.command), len(data))
        await self._send_quietly(data)

    def _handle(self, msg: Message) -> bytes | None:
        try:
            cmd = Command(msg.command)
        except ValueError:
            raise VfioUserError(errno.EINVAL, f"unsupported command {msg.command}") from None
        handler = self._handlers.get(cmd)
        if handler is None:
            raise VfioUserError(errno.EINVAL, f"unsupported command {msg.command}")
        if msg.fds_truncated:
            raise VfioUserError(errno.EINVAL, f"more than {MAX_MSG_FDS} fds attached; some were dropped")
        limit = self.FD_LIMITS.get(cmd, 0)
        if len(msg.fds) > limit:
            raise VfioUserError(errno.EINVAL, f"{len(msg.fds)} fds attached to {cmd.name} (at most {limit})")
        if not self.negotiated and cmd != Command.VERSION:
            raise VfioUserError(errno.EINVAL, f"{cmd.name} before VERSION negotiation")
        need = vu.REQUEST_MIN_SIZE[cmd]
        if len(msg.payload) < need:
            raise VfioUserError(errno.EINVAL, f"{cmd.name} payload is {len(msg.payload)} bytes, needs {need}")
        try:
            return handler(msg)
        except (DmaError, IrqError, RegionError) as exc:
            raise VfioUserError(exc.errno, str(exc)) from exc
        except ConstructError as exc:
            raise VfioUserError(errno.EINVAL, f"malformed {cmd.name}: {exc}") from exc

    # -- handlers ---------------------------------------------------------------------

    def handle_version(self, msg: Message) -> bytes:
        if self.negotiated:
            raise VfioUserError(errno.EINVAL, "VERSION sent twice")
        req = vu.Version.parse(msg.payload)
        if req.major != 0:
            raise VfioUserError(errno.ENOTSUP, f"protocol major {req.major} unsupported (we speak 0.0)")
        try:
            self.client_caps = vu.decode_caps(req.json)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VfioUserError(errno.EINVAL, f"VERSION capabilities are not valid JSON: {exc}") from exc
        self.negotiated = True
        log.info("%s: negotiated vfio-user 0.0; client capabilities %s", self.name, self.client_caps)
        return bytes(vu.Version.build(dict(major=0, minor=0, json=vu.encode_caps(
            {"max_msg_fds": MAX_MSG_FDS, "max_data_xfer_size": MAX_DATA_XFER}))))

    @staticmethod
    def _check_argsz(name: str, argsz: int, low: int, high: int) -> None:
        if not low <= argsz <= high:
            raise VfioUserError(errno.EINVAL, f"{name} argsz {argsz} (expected {low}..{high})")

    def handle_dma_map(self, msg: Message) -> bytes | None:
        req = vu.DmaMap.parse(msg.payload)
        self._check_argsz("DMA_MAP", req.argsz, vu.DMA_MAP_SIZE, vu.DMA_MAP_SIZE)
        fds = msg.take_fds()
        rng = self.dma.add(req.address, req.size, req.flags, req.offset, fds[0] if fds else None)
        log.debug("%s: mapped %#x+%#x flags %#x %s", self.name, req.address, req.size, req.flags,
                  "with fd" if fds else "message-only")
        if isinstance(self.engine, IsolatedEngine):
            self.engine.dma_added(rng, rng.file.fd if rng.file else None)
        if self.engine is not None:
            self.engine.dma_changed()
        return None

    def handle_dma_unmap(self, msg: Message) -> bytes:
        req = vu.DmaUnmap.parse(msg.payload)
        self._check_argsz("DMA_UNMAP", req.argsz, vu.DMA_UNMAP_SIZE, vu.DMA_UNMAP_SIZE)
        if req.flags & ~int(vu.DmaUnmapFlags.ALL):
            raise VfioUserError(errno.EINVAL, f"DMA_UNMAP flags {req.flags:#x} unsupported")
        if req.flags & vu.DmaUnmapFlags.ALL:
            if req.address or req.size:
                raise VfioUserError(errno.EINVAL, "UNMAP_ALL needs address 0 and size 0")
            self.dma.clear()
            if isinstance(self.engine, IsolatedEngine):
                self.engine.dma_cleared()
        else:
            self.dma.remove(req.address, req.size)
            if isinstance(self.engine, IsolatedEngine):
                self.engine.dma_removed(req.address, req.size)
        if self.engine is not None:
            self.engine.dma_changed()
        return msg.payload[:vu.DMA_UNMAP_SIZE]

    def handle_get_info(self, msg: Message) -> bytes:
        req = vu.DeviceInfo.parse(msg.payload)
        self._check_argsz("DEVICE_GET_INFO", req.argsz, vu.DEVICE_INFO_SIZE, 1 << 16)
        return bytes(vu.DeviceInfo.build(dict(
            argsz=vu.DEVICE_INFO_SIZE, flags=vu.DeviceFlags.RESET | vu.DeviceFlags.PCI,
            num_regions=NUM_REGIONS, num_irqs=self.device.irq.num_irqs)))

    def handle_region_info(self, msg: Message) -> bytes:
        req = vu.RegionInfo.parse(msg.payload)
        self._check_argsz("GET_REGION_INFO", req.argsz, vu.REGION_INFO_SIZE, 1 << 16)
        desc = self.device.region(req.index)
        return bytes(vu.RegionInfo.build(dict(argsz=vu.REGION_INFO_SIZE, flags=desc.flags,
                                              index=desc.index, cap_offset=0, size=desc.size,
                                              offset=0)))

    def handle_irq_info(self, msg: Message) -> bytes:
        req = vu.IrqInfo.parse(msg.payload)
        self._check_argsz("GET_IRQ_INFO", req.argsz, vu.IRQ_INFO_SIZE, 1 << 16)
        flags, count = self.device.irq.info(req.index)
        return bytes(vu.IrqInfo.build(dict(argsz=vu.IRQ_INFO_SIZE, flags=flags, index=req.index,
                                           count=count)))

    def handle_set_irqs(self, msg: Message) -> None:
        req = vu.IrqSet.parse(msg.payload)
        self._check_argsz("SET_IRQS", req.argsz, vu.IRQ_SET_SIZE, len(msg.payload))
        self.device.irq.set_irqs(req.index, req.flags, req.start, req.count, req.data, msg.take_fds())
        return None

    def _check_xfer(self, req: Any) -> None:       # a parsed RegionAccess
        if req.count > MAX_DATA_XFER:
            raise VfioUserError(errno.E2BIG, f"access of {req.count} bytes exceeds max_data_xfer_size")

    def handle_region_read(self, msg: Message) -> bytes:
        req = vu.RegionAccess.parse(msg.payload)
        if req.data:
            raise VfioUserError(errno.EINVAL, f"REGION_READ carries {len(req.data)} stray data bytes")
        self._check_xfer(req)
        data = self.device.read_region(req.region, req.offset, req.count)
        return msg.payload[:vu.REGION_ACCESS_SIZE] + data

    def handle_region_write(self, msg: Message) -> bytes:
        req = vu.RegionAccess.parse(msg.payload)
        self._check_xfer(req)
        if len(req.data) != req.count:
            raise VfioUserError(errno.EINVAL,
                                f"REGION_WRITE count {req.count} but {len(req.data)} data bytes")
        self.device.write_region(req.region, req.offset, req.data)
        return msg.payload[:vu.REGION_ACCESS_SIZE]

    def handle_reset(self, msg: Message) -> None:
        log.info("%s: DEVICE_RESET", self.name)
        self.device.reset()
        return None


def _cmd_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"


def session_name(serial: int, sock: trio.socket.SocketType) -> str:
    pid = _peer_pid(sock)
    return f"client#{serial}" + (f" (pid {pid})" if pid else "")


__all__ = ["MAX_DATA_XFER", "MAX_MSG_FDS", "Session", "VfioUserError", "session_name"]
