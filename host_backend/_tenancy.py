"""A VM's slice of the device, as the OpenCL backend enforces it under a manager.

- **Compute partition.**  The named device is split with ``clCreateSubDevices``
  (by counts) and the sub-device stands in for it under the same guest id: the
  VM's contexts, queues and builds run on its compute units, and every device
  query answers for it (``CL_DEVICE_MAX_COMPUTE_UNITS`` is the partition).  What
  would tell the guest it holds a sub-device is asked of the whole device
  instead (its parent, partition type and reference count), and retaining or
  releasing it is the no-op it is on a root device, so the guest cannot free it.
- **Device time.**  Every device command gets an event (a private one when the
  guest asked none), and its completion callback charges the time between
  ``CL_PROFILING_COMMAND_START`` and ``END`` to the VM's scheduler.  Every queue
  is therefore made with ``CL_QUEUE_PROFILING_ENABLE``; where the guest did not
  ask for it, the queue's properties read as the guest gave them and its events'
  profiling answers ``CL_PROFILING_INFO_NOT_AVAILABLE``, as they would natively.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from protocols.tenants import CallClass

from ._args import CL_SUCCESS, CallError
from ._cl import ffi, lib, platforms_and_devices

log = logging.getLogger("host_backend.tenancy")

CL_DEVICE_PARENT_DEVICE = 0x1042
CL_DEVICE_PARTITION_TYPE = 0x1046
CL_DEVICE_REFERENCE_COUNT = 0x1047
CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002
CL_DEVICE_PARTITION_BY_COUNTS = 0x1087
CL_DEVICE_PARTITION_BY_COUNTS_LIST_END = 0
CL_QUEUE_PROPERTIES = 0x1093
CL_QUEUE_PROPERTIES_ARRAY = 0x1098
CL_QUEUE_PROFILING_ENABLE = 1 << 1
CL_EVENT_COMMAND_QUEUE = 0x11D0
CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3
CL_PROFILING_INFO_NOT_AVAILABLE = -7
CL_PROFILING_COMMAND_START = 0x1282
CL_PROFILING_COMMAND_END = 0x1283
CL_COMPLETE = 0
CL_CONTEXT_PLATFORM = 0x1084
CL_INVALID_VALUE = -30

#: Device queries a partition answers as the whole device would.
AS_ROOT = frozenset({CL_DEVICE_PARENT_DEVICE, CL_DEVICE_PARTITION_TYPE,
                     CL_DEVICE_REFERENCE_COUNT})
#: Commands whose device time is charged, and which are admitted in turn.
DEVICE_COMMANDS = frozenset({
    "clEnqueueNDRangeKernel", "clEnqueueTask",
    "clEnqueueReadBuffer", "clEnqueueWriteBuffer", "clEnqueueCopyBuffer", "clEnqueueFillBuffer",
    "clEnqueueReadBufferRect", "clEnqueueWriteBufferRect", "clEnqueueCopyBufferRect",
    "clEnqueueReadImage", "clEnqueueWriteImage", "clEnqueueCopyImage", "clEnqueueFillImage",
    "clEnqueueCopyImageToBuffer", "clEnqueueCopyBufferToImage", "clEnqueueMigrateMemObjects"})


def call_class(fn) -> CallClass:
    """The latency histogram a function's calls land in."""
    if fn.name.startswith("clGet") and fn.name.endswith("Info"):
        return CallClass.INFO
    if fn.blocking and fn.name not in ("clReleaseCommandQueue", "clCreateContextFromType",
                                       "clCreateProgramWithIL", "clBuildProgram",
                                       "clCompileProgram", "clLinkProgram"):
        return CallClass.SYNC
    if fn.name.startswith("clEnqueue"):
        return CallClass.ENQUEUE
    return CallClass.OTHER


class _Completions:
    """Device commands issued and not yet charged, looked at when the scheduler
    decides (each admission, each wait, each watchdog tick) rather than in a
    completion callback: a callback runs on the implementation's thread before it
    wakes the clFinish that waits for the same command, and taking the GIL there
    cost a launch-and-finish loop 15 % of its speed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, Any, int, int]] = []  # event, meter, estimate, t0
        self._state = ffi.new("cl_int *")
        self._times = ffi.new("cl_ulong[2]")

    def watch(self, event, meter, estimate: int) -> None:
        lib().clRetainEvent(event)
        with self._lock:
            self._pending.append((event, meter, estimate, time.monotonic_ns()))

    def reap(self) -> int:
        """Charge every command that finished; returns how many are still out."""
        if not self._pending:
            return 0
        cl = lib()
        done = []
        with self._lock:
            still = []
            for entry in self._pending:
                status = cl.clGetEventInfo(entry[0], CL_EVENT_COMMAND_EXECUTION_STATUS, 4,
                                           self._state, ffi.NULL)
                if status == CL_SUCCESS and self._state[0] > 0:
                    still.append(entry)
                else:
                    done.append((entry, status == CL_SUCCESS and self._state[0] == CL_COMPLETE))
            self._pending = still
            charges = []
            for (event, meter, estimate, t0), ok in done:
                cell = self._times
                profiled = ok and cl.clGetEventProfilingInfo(
                    event, CL_PROFILING_COMMAND_START, 8, cell, ffi.NULL) == CL_SUCCESS and \
                    cl.clGetEventProfilingInfo(event, CL_PROFILING_COMMAND_END, 8, cell + 1,
                                               ffi.NULL) == CL_SUCCESS and cell[1] >= cell[0]
                device_ns = int(cell[1] - cell[0]) if profiled else time.monotonic_ns() - t0
                cl.clReleaseEvent(event)
                charges.append((meter, device_ns, estimate))
            left = len(still)
        for meter, device_ns, estimate in charges:
            try:
                meter.completed(device_ns, estimate)
            except Exception:
                log.exception("charging a command's device time failed")
        return left


class Tenancy:
    """What the backend does differently for a VM under a manager (module docstring)."""

    def __init__(self, backend, *, compute_units: int | None = None, platform: int = 0,
                 device: int = 0):
        self.backend = backend
        self.compute_units = compute_units
        self.platform_index = platform
        self.device_index = device
        self.root = None            # the partitioned device (its guest id stands for sub)
        self.sub = None
        #: queue address -> (the guest's CL_QUEUE_PROPERTIES, its properties array or None)
        self.forced: dict[int, tuple[int, list[int] | None]] = {}
        self.completions = _Completions()

    # -- the partition ------------------------------------------------------------------

    def prepare(self) -> None:
        """Split the named device (after the backend gave the devices their ids)."""
        if not self.compute_units:
            return
        found = platforms_and_devices()
        try:
            root = found[self.platform_index][1][self.device_index]
        except IndexError:
            raise RuntimeError(f"no OpenCL device {self.device_index} on platform "
                               f"{self.platform_index} to partition") from None
        props = ffi.new("cl_device_partition_property[]", [
            CL_DEVICE_PARTITION_BY_COUNTS, self.compute_units,
            CL_DEVICE_PARTITION_BY_COUNTS_LIST_END, 0])
        sub = ffi.new("cl_device_id[1]")
        count = ffi.new("cl_uint *")
        status = lib().clCreateSubDevices(root, props, 1, sub, count)
        if status != CL_SUCCESS or count[0] != 1:
            raise RuntimeError(f"cannot partition the device into {self.compute_units} "
                               f"compute units (clCreateSubDevices: {status})")
        self.root, self.sub = root, sub[0]
        handles = self.backend.handles
        guest_id = handles.id_for_existing("cl_device_id", _address(root))
        handles.alias_shared(guest_id, "cl_device_id", self.sub)
        log.info("compute partition: %d compute units of the device", self.compute_units)

    # -- before and after a call ----------------------------------------------------------

    def before(self, fn, cargs, call, *, metered: bool) -> None:
        """Under the backend's lock, before the real call (``metered``: under a
        manager's scheduler, which needs every queue profiled)."""
        name = fn.name
        if self.sub is not None:
            if name in ("clRetainDevice", "clReleaseDevice") and _same(cargs[0], self.sub):
                call.skip_real = True           # a root device's count does not move
            elif name == "clGetDeviceInfo" and _same(cargs[0], self.sub) and cargs[1] in AS_ROOT:
                cargs[0] = self.root
            elif name == "clCreateContextFromType":
                call.replacement = self._context_from_type(cargs)
        if not metered:
            return
        if name == "clCreateCommandQueue":
            call.forced_profiling = (int(cargs[2]), None)
            cargs[2] = int(cargs[2]) | CL_QUEUE_PROFILING_ENABLE
        elif name == "clCreateCommandQueueWithProperties":
            cargs[2], call.forced_profiling = _with_profiling(cargs[2])
        elif name == "clGetEventProfilingInfo" and cargs[0] != ffi.NULL:
            queue = ffi.new("cl_command_queue *")
            if lib().clGetEventInfo(cargs[0], CL_EVENT_COMMAND_QUEUE, ffi.sizeof(queue[0]),
                                    queue, ffi.NULL) == CL_SUCCESS:
                guest = self.forced.get(_address(queue[0]))
                if guest is not None and not guest[0] & CL_QUEUE_PROFILING_ENABLE:
                    raise CallError(CL_PROFILING_INFO_NOT_AVAILABLE,
                                    "the guest's queue is not profiled")

    def _context_from_type(self, cargs):
        """clCreateContextFromType on the partition's platform: the devices of that
        type, the partition in place of its device, through clCreateContext (the
        implementation's own version would take the whole device).  Its errors are
        the implementation's: clGetDeviceIDs answers an unknown type or no device
        with what clCreateContextFromType would."""
        props, device_type, pfn, user_data, errcode = cargs

        def create():
            asked = dict(_pairs(props)).get(CL_CONTEXT_PLATFORM)
            platform = ffi.NULL if asked is None else ffi.cast("cl_platform_id", asked)
            found = platforms_and_devices()
            ours = found[self.platform_index][0]
            if platform != ffi.NULL and not _same(platform, ours):
                return lib().clCreateContextFromType(*cargs)
            count = ffi.new("cl_uint *")
            status = lib().clGetDeviceIDs(ours, device_type, 0, ffi.NULL, count)
            devices = ffi.new("cl_device_id[]", max(count[0], 1))
            if status == CL_SUCCESS:
                status = lib().clGetDeviceIDs(ours, device_type, count[0], devices, ffi.NULL)
            if status != CL_SUCCESS:
                if errcode != ffi.NULL:
                    errcode[0] = status
                return ffi.NULL
            for j in range(count[0]):
                if _same(devices[j], self.root):
                    devices[j] = self.sub
            return lib().clCreateContext(props, count[0], devices, pfn, user_data, errcode)
        return create

    def created_queue(self, queue, call) -> None:
        forced = getattr(call, "forced_profiling", None)
        if forced is not None:
            self.forced[_address(queue)] = forced

    def queue_gone(self, queue) -> None:
        self.forced.pop(_address(queue), None)

    def queue_info(self, status: int, cargs) -> int:
        """clGetCommandQueueInfo: the properties as the guest gave them."""
        queue, param, size, out, size_ret = cargs
        if status != CL_SUCCESS or param not in (CL_QUEUE_PROPERTIES, CL_QUEUE_PROPERTIES_ARRAY):
            return status
        guest = self.forced.get(_address(queue))
        if guest is None:
            return status
        if param == CL_QUEUE_PROPERTIES:
            if out != ffi.NULL:
                ffi.cast("cl_command_queue_properties *", out)[0] = guest[0]
            return status
        values = guest[1] or []
        nbytes = 8 * len(values)
        if out != ffi.NULL:
            if size < nbytes:
                return CL_INVALID_VALUE
            ffi.memmove(out, ffi.new("cl_queue_properties[]", values or [0]), nbytes)
        if size_ret != ffi.NULL:
            size_ret[0] = nbytes
        return status

    # -- device time ---------------------------------------------------------------------

    def issued(self, event, meter, nbytes: int) -> None:
        """A device command reached the implementation: charge it once it completes."""
        estimate = meter.pending_estimate()
        meter.issued(nbytes)
        if event == ffi.NULL:
            meter.completed(0, estimate)
        else:
            self.completions.watch(event, meter, estimate)


def _pairs(props) -> list[tuple[int, int]]:
    """A 0-terminated property list's (key, value) pairs (none for NULL)."""
    pairs = []
    i = 0
    while props != ffi.NULL and props[i] != 0:
        pairs.append((int(props[i]), int(props[i + 1])))
        i += 2
    return pairs


def _with_profiling(props):
    """A queue properties list with profiling on, and what the guest asked."""
    pairs = _pairs(props)
    asked = dict(pairs).get(CL_QUEUE_PROPERTIES)
    new = [(k, v | CL_QUEUE_PROFILING_ENABLE if k == CL_QUEUE_PROPERTIES else v)
           for k, v in pairs]
    if asked is None:
        new.append((CL_QUEUE_PROPERTIES, CL_QUEUE_PROFILING_ENABLE))
    flat = [x for pair in new for x in pair]
    guest_array = [x for pair in pairs for x in pair] + [0] if props != ffi.NULL else None
    return ffi.new("cl_queue_properties[]", flat + [0, 0]), (asked or 0, guest_array)


def _address(ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _same(a, b) -> bool:
    return a != ffi.NULL and _address(a) == _address(b)
