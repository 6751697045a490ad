"""``python -m vdev manager``: one device, many VMs.

The manager starts one device server (``python -m vdev serve``) per VM, on the
VM's socket, so each VM's OpenCL objects and guest-supplied kernels live in that
VM's processes alone; a VM that crashes its server or executor takes no other VM
with it.  It writes every VM's weight, latency class and quotas into the tenant
table (``_tenants``), which the VMs' executors read at each decision: a change
(``vdev ctl set``, or SIGHUP to reload the file) takes effect within the
executors' next tick (0.1 s) without restarting anything.

It supervises the servers: one that exits is logged with its exit cause and
started again after ``restart_delay`` (doubling while it keeps dying at once, up
to a minute), ready for the VM's next QEMU.  On SIGTERM or SIGINT it stops every
server (SIGTERM, then SIGKILL after a grace period), and removes the VMs'
sockets, its control and metrics sockets and the table.

The control socket speaks one JSON object per line each way (``vdev ctl``,
``vdev stats``); the metrics endpoint answers any HTTP GET with the Prometheus
text format (``_metrics``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from protocols.tenants import MAX_TENANTS, LatencyClass

from . import _metrics
from ._executor import describe_exit
from ._manager_config import ConfigError, ManagerConfig, VmConfig, check_device, load_config
from ._sizes import parse_size
from ._tenants import TenantSettings, TenantTable

log = logging.getLogger("vdev.manager")

#: How long a server that was asked to stop may take before it is killed.
STOP_GRACE_S = 5.0
#: Restart back-off cap, and how long a server must live to reset the back-off.
MAX_RESTART_DELAY_S = 60.0
HEALTHY_S = 10.0
#: The longest control request (one JSON line).
MAX_REQUEST = 65536
#: What ``vdev ctl set`` may change at runtime, and how each value is read.
SETTABLE = ("weight", "class", "memory", "objects", "inflight", "rate")


class ManagerError(Exception):
    pass


def settings_of(vm: VmConfig) -> TenantSettings:
    return TenantSettings(
        name=vm.name, weight=vm.weight,
        latency_class=LatencyClass[vm.latency_class.upper()],
        memory_quota=vm.memory or 0, objects_quota=vm.objects or 0,
        inflight_quota=vm.inflight or 0, rate_quota=float(vm.rate or 0),
        compute_units=vm.compute_units or 0)


def probe_device(cfg: ManagerConfig) -> dict[str, Any] | None:
    """The configured device's figures, asked in a child process (None: test backend)."""
    if cfg.device.backend != "opencl":
        return None
    try:
        out = subprocess.run([sys.executable, "-m", "vdev._device_probe"], capture_output=True,
                             text=True, timeout=60, check=False)
        found = json.loads(out.stdout or "null")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise ManagerError(f"cannot ask the host's OpenCL for its devices: {exc}") from exc
    if not isinstance(found, list):
        why = found.get("error") if isinstance(found, dict) else out.stderr.strip()
        raise ManagerError(f"cannot ask the host's OpenCL for its devices: {why}")
    for dev in found:
        if dev["platform"] == cfg.device.platform and dev["device"] == cfg.device.device:
            return dict(dev)
    have = ", ".join(f"{d['platform']}:{d['device']} {d['name']}" for d in found) or "none"
    raise ManagerError(f"{cfg.path}: [device] platform {cfg.device.platform} device "
                       f"{cfg.device.device}: no such OpenCL device (the host has {have})")


def validated(path: str) -> tuple[ManagerConfig, dict[str, Any] | None]:
    """Load and check a configuration against the device; raises ConfigError."""
    cfg = load_config(path)
    device = probe_device(cfg)
    if device is not None:
        for warning in check_device(cfg, compute_units=int(device["compute_units"]),
                                    global_mem_size=int(device["global_mem_size"])):
            log.warning("%s", warning)
    return cfg, device


@dataclass
class VmServer:
    """One VM's server process, as the manager supervises it."""

    vm: VmConfig
    slot: int
    proc: trio.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = 0.0
    up: bool = False
    stopping: bool = False
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


class Manager:
    def __init__(self, cfg: ManagerConfig, *, verbose: int = 0, quiet: bool = False):
        self.cfg = cfg
        self.verbose = verbose
        self.quiet = quiet
        self.table_path = os.path.join(cfg.state_dir, "tenants")
        self.table: TenantTable | None = None
        self.servers: dict[str, VmServer] = {}
        self._nursery: trio.Nursery | None = None
        self._listeners: list[tuple[str, trio.socket.SocketType]] = []
        self.reloads = 0

    # -- start and stop ------------------------------------------------------------------

    def prepare(self) -> None:
        """The state directory, the table, and the control and metrics sockets: any
        failure here is a plain error before anything runs."""
        os.makedirs(self.cfg.state_dir, mode=0o755, exist_ok=True)
        for vm in self.cfg.vms:
            _refuse_live_socket(vm.socket, f"[vm.{vm.name}] socket")
        self.table = TenantTable.create(self.table_path)
        self._listeners.append((self.cfg.control, _unix_listener(self.cfg.control)))
        metrics = self.cfg.metrics
        if isinstance(metrics, str):
            self._listeners.append((metrics, _unix_listener(metrics)))
        elif metrics is not None:
            host, port = metrics
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
            self._listeners.append(("", trio.socket.from_stdlib_socket(sock)))
        for slot, vm in enumerate(self.cfg.vms):
            self.table.configure(slot, settings_of(vm))
            self.servers[vm.name] = VmServer(vm, slot)

    async def run(self, *, task_status: trio.TaskStatus[Manager] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.prepare()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                control, *metrics = [sock for _, sock in self._listeners]
                nursery.start_soon(self._serve_control, control)
                for sock in metrics:
                    nursery.start_soon(self._serve_metrics, sock)
                for server in self.servers.values():
                    nursery.start_soon(self._supervise, server)
                log.info("managing %d VMs (%s); control socket %s", len(self.servers),
                         ", ".join(self.servers), self.cfg.control)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_all()
            self._cleanup()

    async def _stop_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for server in list(self.servers.values()):
                nursery.start_soon(self._stop_server, server)

    def _cleanup(self) -> None:
        for path, sock in self._listeners:
            sock.close()
            if path:
                _unlink(path)
        self._listeners.clear()
        for server in self.servers.values():
            _unlink(server.vm.socket)
        if self.table is not None:
            self.table.close()
            self.table = None
            _unlink(self.table_path)
        log.info("stopped; sockets removed")

    # -- the VM servers --------------------------------------------------------------------

    def server_argv(self, server: VmServer) -> list[str]:
        vm, dev = server.vm, self.cfg.device
        argv = [sys.executable, "-m", "vdev", "serve", "--socket", vm.socket,
                "--backend", dev.backend, "--vm-name", vm.name,
                "--tenant-table", self.table_path, "--tenant-slot", str(server.slot),
                "--sandbox", dev.sandbox, "--command-timeout", str(dev.command_timeout)]
        if dev.device_memory:
            argv += ["--device-memory", str(dev.device_memory)]
        if vm.compute_units:
            argv += ["--compute-units", str(vm.compute_units),
                     "--opencl-device", f"{dev.platform}:{dev.device}"]
        if self.verbose:
            argv.append("-" + "v" * self.verbose)
        elif self.quiet:
            argv.append("-q")
        return argv

    async def _supervise(self, server: VmServer) -> None:
        with server.cancel:
            while not server.stopping:
                server.proc = await trio.lowlevel.open_process(
                    self.server_argv(server), stdin=subprocess.DEVNULL)
                server.started_at = time.monotonic()
                server.up = True
                log.info("vm %s: server started (pid %d) on %s", server.vm.name,
                         server.proc.pid, server.vm.socket)
                code = await server.proc.wait()
                server.up = False
                if server.stopping:
                    break
                lived = time.monotonic() - server.started_at
                server.delay = self.cfg.restart_delay if lived >= HEALTHY_S or not \
                    server.delay else min(server.delay * 2, MAX_RESTART_DELAY_S)
                server.restarts += 1
                if self.table is not None:
                    self.table.slot(server.slot)["restarts"] = server.restarts
                log.error("vm %s: server (pid %d) %s after %.1f s; restarting it in %.1f s "
                          "(restart %d); the other VMs are not affected", server.vm.name,
                          server.proc.pid, describe_exit(code), lived, server.delay,
                          server.restarts)
                _unlink_stale(server.vm.socket)
                await trio.sleep(server.delay)

    async def _stop_server(self, server: VmServer) -> None:
        server.stopping = True
        proc = server.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE_S):
                await proc.wait()
            if proc.returncode is None:
                log.warning("vm %s: server (pid %d) did not stop in %.0f s; killing it",
                            server.vm.name, proc.pid, STOP_GRACE_S)
                proc.kill()
                await proc.wait()
        server.cancel.cancel()
        server.up = False

    # -- runtime changes ---------------------------------------------------------------------

    async def reload(self) -> str:
        """Read the file again (SIGHUP, ``vdev ctl reload``): a bad file changes nothing."""
        try:
            cfg, _device = await trio.to_thread.run_sync(validated, self.cfg.path)
        except (ConfigError, ManagerError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            raise
        if (cfg.state_dir, cfg.control, cfg.metrics, cfg.device) != \
                (self.cfg.state_dir, self.cfg.control, self.cfg.metrics, self.cfg.device):
            log.warning("reload: [device] and [manager] changes take effect at the next start")
        changes = []
        new = {vm.name: vm for vm in cfg.vms}
        for name in [n for n in self.servers if n not in new]:
            server = self.servers.pop(name)
            await self._stop_server(server)
            _unlink(server.vm.socket)
            assert self.table is not None
            self.table.free(server.slot)
            changes.append(f"removed {name}")
        used = {s.slot for s in self.servers.values()}
        for vm in cfg.vms:
            known = self.servers.get(vm.name)
            if known is None:
                slot = min(set(range(MAX_TENANTS)) - used)
                used.add(slot)
                server = self.servers[vm.name] = VmServer(vm, slot)
                self._configure(server, vm)
                assert self._nursery is not None
                self._nursery.start_soon(self._supervise, server)
                changes.append(f"added {vm.name}")
                continue
            server = known
            restart = (vm.socket, vm.compute_units) != (server.vm.socket,
                                                        server.vm.compute_units)
            if vm != server.vm:
                old_socket = server.vm.socket
                self._configure(server, vm)
                changes.append(f"changed {vm.name}")
                if restart:
                    await self._stop_server(server)
                    _unlink(old_socket)
                    server.stopping = False
                    server.cancel = trio.CancelScope()
                    assert self._nursery is not None
                    self._nursery.start_soon(self._supervise, server)
                    changes.append(f"restarted {vm.name} (socket or compute partition)")
        self.cfg = replace(cfg, state_dir=self.cfg.state_dir, control=self.cfg.control,
                           metrics=self.cfg.metrics, device=self.cfg.device)
        self.reloads += 1
        summary = "; ".join(changes) or "no changes"
        log.info("reloaded %s: %s", cfg.path, summary)
        return summary

    def _configure(self, server: VmServer, vm: VmConfig) -> None:
        server.vm = vm
        assert self.table is not None
        self.table.configure(server.slot, settings_of(vm))

    def set_values(self, name: str, values: dict[str, Any]) -> VmConfig:
        """``vdev ctl set VM key=value ...``: weights and quotas, in force at once."""
        server = self.servers.get(name)
        if server is None:
            raise ManagerError(f"no VM {name!r} (VMs: {', '.join(self.servers)})")
        vm = server.vm
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in SETTABLE:
                raise ManagerError(f"{key!r} cannot be set at runtime (settable: "
                                   f"{', '.join(SETTABLE)}; the socket and compute partition "
                                   "change by editing the file and reloading)")
            changes.update(_parse_setting(key, raw))
        vm = replace(vm, **changes)
        self._configure(server, vm)
        log.info("vm %s: set %s", name, ", ".join(f"{k}={v}" for k, v in values.items()))
        return vm

    # -- what the manager tells ------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every VM's configuration, state and statistics."""
        out = []
        assert self.table is not None
        for name, server in self.servers.items():
            slot = self.table.slot(server.slot).snapshot()
            slot.update(vm=name, socket=server.vm.socket, up=server.up,
                        pid=server.proc.pid if server.proc and server.up else None,
                        restarts=server.restarts, compute_units=server.vm.compute_units or 0)
            slot["histograms"] = {k: {"buckets": v[0], "sum_ns": v[1]}
                                  for k, v in slot["histograms"].items()}
            out.append(slot)
        return out

    async def _serve_control(self, listener: trio.socket.SocketType) -> None:
        await _serve_each(listener, self._control_connection, "control")

    async def _control_connection(self, stream: trio.SocketStream) -> None:
        buf = b""
        with trio.move_on_after(10):
            while b"\n" not in buf and len(buf) <= MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        try:
            if len(line) > MAX_REQUEST:
                raise ManagerError(f"malformed request: longer than {MAX_REQUEST} bytes")
            request = json.loads(line or b"{}")
            reply = await self._control(request if isinstance(request, dict) else {})
        except (ManagerError, ConfigError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, TypeError, AttributeError) as exc:
            reply = {"ok": False, "error": f"malformed request: {exc}"}
        await stream.send_all(json.dumps(reply).encode() + b"\n")
        await _finish(stream)

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "stats":
            return {"ok": True, "vms": self.snapshot()}
        if op == "set":
            vm = self.set_values(str(request.get("vm")), dict(request.get("values") or {}))
            return {"ok": True, "vm": vm.name}
        if op == "reload":
            return {"ok": True, "changes": await self.reload()}
        raise ManagerError(f"unknown request {op!r} (stats, set, reload)")

    async def _serve_metrics(self, listener: trio.socket.SocketType) -> None:
        await _serve_each(listener, self._metrics_connection, "metrics")

    async def _metrics_connection(self, stream: trio.SocketStream) -> None:
        request = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in request and b"\n\n" not in request \
                    and len(request) < 8192:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                request += chunk
        method = request.split(b"\n", 1)[0].split()[:1]
        if method not in ([b"GET"], [b"HEAD"]):
            body, status = b"only GET\n", "405 Method Not Allowed"
        else:
            body, status = _metrics.render(self.snapshot()).encode(), "200 OK"
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {_metrics.CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        await stream.send_all(head + (body if method != [b"HEAD"] else b""))
        await _finish(stream)


async def _finish(stream: trio.SocketStream) -> None:
    """End a reply: read what the client sent past its request first (for a second
    at most), since closing with unread data resets the connection, and the client
    could lose the reply."""
    await stream.send_eof()
    with trio.move_on_after(1):
        drained = 0
        while drained < 16 * MAX_REQUEST and (chunk := await stream.receive_some(65536)):
            drained += len(chunk)


async def _serve_each(listener: trio.socket.SocketType, handler: Any, what: str) -> None:
    """Accept for ever; each connection on its own task, whose failure is logged and
    ends that connection only: a client can never take the manager down."""
    async def one(conn: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(conn)
        try:
            await handler(stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("%s connection: %s", what, exc)
        except Exception:
            log.exception("%s connection failed", what)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(one, conn)


def _parse_setting(key: str, raw: Any) -> dict[str, Any]:
    text = str(raw).strip()
    try:
        if key == "class":
            if text not in ("interactive", "batch"):
                raise ValueError("must be interactive or batch")
            return {"latency_class": text}
        if key == "memory":
            return {"memory": None if text in ("none", "0") else parse_size(text)}
        if key == "rate":
            value = float(text)
            if value < 0:
                raise ValueError("must be more than 0 (or 0: no quota)")
            return {"rate": value or None}
        value = int(text)
        if key == "weight" and not 1 <= value <= 10000:
            raise ValueError("must be an integer from 1 to 10000")
        if value < 0:
            raise ValueError("must be a positive integer (or 0: no quota)")
        return {key: value or None} if key != "weight" else {"weight": value}
    except ValueError as exc:
        raise ManagerError(f"{key}={raw}: {exc}") from None


def _unix_listener(path: str) -> trio.socket.SocketType:
    _refuse_live_socket(path, "socket")
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return trio.socket.from_stdlib_socket(sock)


def _refuse_live_socket(path: str, what: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return
    finally:
        probe.close()
    raise ManagerError(f"{what} {path}: something is listening there already (another "
                       "manager or server?); stop it or choose another path")


def _unlink_stale(path: str) -> None:
    """A killed server leaves its socket: the next one would call it stale anyway."""
    try:
        _refuse_live_socket(path, "socket")
    except ManagerError:
        return
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


async def run_manager(path: str, *, verbose: int = 0, quiet: bool = False) -> int:
    try:
        cfg, device = await trio.to_thread.run_sync(validated, path)
    except (ConfigError, ManagerError) as exc:
        log.error("%s", exc)
        return 2
    if device is not None:
        log.info("device %s: %d compute units, %d MiB", device["name"], device["compute_units"],
                 int(device["global_mem_size"]) >> 20)
    manager = Manager(cfg, verbose=verbose, quiet=quiet)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(manager.run)

                async def on_signals() -> None:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            try:
                                await manager.reload()
                            except (ConfigError, ManagerError):
                                pass
                            continue
                        log.info("received %s; stopping every VM server",
                                 signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                nursery.start_soon(on_signals)
        except (ManagerError, OSError) as exc:
            log.error("%s", exc)
            return 1
    return 0


def request(control: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request to a running manager (``vdev ctl``, ``vdev stats``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(control)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ManagerError(f"cannot reach the manager at {control}: {exc} (is `python -m vdev "
                           "manager` running, and is this its control socket?)") from exc
    finally:
        sock.close()
    reply = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise ManagerError(str(reply.get("error", "the manager gave no answer")))
    return dict(reply)


def check_only(path: str) -> int:
    """``manager --check``: the configuration's verdict, then exit."""
    try:
        cfg, device = validated(path)
    except (ConfigError, ManagerError) as exc:
        log.error("%s", exc)
        return 2
    where = f" on {device['name']}" if device else ""
    log.info("%s: %d VMs (%s)%s: good", cfg.path, len(cfg.vms),
             ", ".join(vm.name for vm in cfg.vms), where)
    return 0
