"""Per-VM statistics for people (``vdev stats``) and for Prometheus.

Both read the manager's snapshot (``Manager.snapshot``).  The Prometheus names
follow node-exporter's conventions: an ``ava_vdev_`` namespace, base units in
the name (``_seconds``, ``_bytes``), ``_total`` on counters, one label set per
VM (``vm``), and histograms with cumulative ``le`` buckets in seconds.
"""

from __future__ import annotations

from typing import Any

from protocols.tenants import BUCKET_BOUNDS_US

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (metric, type, help, snapshot key, scale to base units)
_SIMPLE = (
    ("vm_up", "gauge", "Whether the VM's device server is running.", "up", 1),
    ("vm_weight", "gauge", "The VM's share weight.", "weight", 1),
    ("vm_server_restarts_total", "counter", "Restarts of the VM's device server.",
     "restarts", 1),
    ("vm_calls_total", "counter", "Commands the VM's rings carried.", "calls", 1),
    ("vm_device_commands_total", "counter", "Device commands (kernels, transfers) issued.",
     "commands", 1),
    ("vm_device_seconds_total", "counter", "Device time charged, from event profiling.",
     "device_ns", 1e-9),
    ("vm_moved_bytes_total", "counter", "Bytes written to and read from device buffers.",
     "bytes_moved", 1),
    ("vm_live_objects", "gauge", "Live OpenCL objects the VM created.", "live_objects", 1),
    ("vm_live_memory_bytes", "gauge", "Bytes of the VM's live memory objects.", "live_bytes", 1),
    ("vm_admission_wait_seconds_total", "counter",
     "Time the VM's device commands waited for their turn.", "admission_wait_ns", 1e-9),
    ("vm_mispredicted_calls_total", "counter",
     "Posted calls whose host status differed from the guest's (a bug: see the log).",
     "mispredicted", 1),
    ("vm_compute_units", "gauge", "The VM's compute partition (0: the whole device).",
     "compute_units", 1),
)
_QUOTAS = (("memory_bytes", "memory_quota"), ("objects", "objects_quota"),
           ("inflight_commands", "inflight_quota"), ("commands_per_second", "rate_quota"))
_REFUSALS = (("memory", "refused_memory"), ("objects", "refused_objects"))
_THROTTLES = (("inflight", "throttled_inflight"), ("rate", "throttled_rate"))


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(vms: list[dict[str, Any]]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP ava_vdev_{name} {text}")
        lines.append(f"# TYPE ava_vdev_{name} {kind}")

    family("vm_info", "gauge", "A VM under the manager, with its latency class.")
    for vm in vms:
        lines.append(f'ava_vdev_vm_info{{vm="{_label(vm["vm"])}",class="{vm["latency_class"]}"}} 1')
    for name, kind, text, key, scale in _SIMPLE:
        family(name, kind, text)
        for vm in vms:
            value = float(vm[key]) * scale if scale != 1 else int(vm[key] or 0)
            lines.append(f'ava_vdev_{name}{{vm="{_label(vm["vm"])}"}} {_num(value)}')
    family("vm_quota", "gauge", "The VM's quotas (absent: none).")
    for vm in vms:
        for quota, key in _QUOTAS:
            if vm[key]:
                lines.append(f'ava_vdev_vm_quota{{vm="{_label(vm["vm"])}",quota="{quota}"}} '
                             f"{_num(vm[key])}")
    family("vm_quota_refusals_total", "counter", "Creations a quota refused.")
    for vm in vms:
        for quota, key in _REFUSALS:
            lines.append(f'ava_vdev_vm_quota_refusals_total{{vm="{_label(vm["vm"])}",'
                         f'quota="{quota}"}} {int(vm[key])}')
    family("vm_throttled_total", "counter", "Commands a quota slowed.")
    for vm in vms:
        for quota, key in _THROTTLES:
            lines.append(f'ava_vdev_vm_throttled_total{{vm="{_label(vm["vm"])}",'
                         f'quota="{quota}"}} {int(vm[key])}')
    family("vm_call_duration_seconds", "histogram",
           "Host-side latency of the VM's calls, by call class.")
    for vm in vms:
        for klass, hist in vm["histograms"].items():
            labels = f'vm="{_label(vm["vm"])}",class="{klass}"'
            total = 0
            for bound, count in zip((*BUCKET_BOUNDS_US, None), hist["buckets"], strict=True):
                total += count
                le = "+Inf" if bound is None else repr(bound / 1e6)
                lines.append(f'ava_vdev_vm_call_duration_seconds_bucket{{{labels},le="{le}"}} '
                             f"{total}")
            lines.append(f"ava_vdev_vm_call_duration_seconds_sum{{{labels}}} "
                         f"{hist['sum_ns'] / 1e9!r}")
            lines.append(f"ava_vdev_vm_call_duration_seconds_count{{{labels}}} {total}")
    return "\n".join(lines) + "\n"


def quantile_us(buckets: list[int], q: float) -> float | None:
    """The upper bound (µs) of the bucket holding quantile ``q`` (None: no calls)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for bound, count in zip((*BUCKET_BOUNDS_US, float("inf")), buckets, strict=True):
        seen += count
        if seen >= q * total:
            return float(bound)
    return float("inf")


def table(vms: list[dict[str, Any]]) -> str:
    """``vdev stats``: one row per VM."""
    device_total = sum(vm["device_ns"] for vm in vms) or 1
    head = ("VM", "CLASS", "W", "UP", "RESTARTS", "CALLS", "CMDS", "DEVICE_S", "SHARE",
            "MOVED_MIB", "OBJECTS", "LIVE_MIB", "REFUSED", "THROTTLED", "ENQ_P50", "ENQ_P99",
            "SYNC_P99")
    rows = [head]
    for vm in vms:
        enq = vm["histograms"]["enqueue"]["buckets"]
        sync = vm["histograms"]["sync"]["buckets"]

        def us(value: float | None) -> str:
            if value is None:
                return "-"
            return f"<{value / 1000:g}ms" if value >= 1000 else f"<{value:g}us"
        rows.append((vm["vm"], vm["latency_class"], str(vm["weight"]),
                     "yes" if vm["up"] else "no", str(vm["restarts"]), str(vm["calls"]),
                     str(vm["commands"]), f"{vm['device_ns'] / 1e9:.3f}",
                     f"{100 * vm['device_ns'] / device_total:.1f}%",
                     f"{vm['bytes_moved'] / (1 << 20):.1f}", str(vm["live_objects"]),
                     f"{vm['live_bytes'] / (1 << 20):.1f}",
                     str(vm["refused_memory"] + vm["refused_objects"]),
                     str(vm["throttled_inflight"] + vm["throttled_rate"]),
                     us(quantile_us(enq, 0.5)), us(quantile_us(enq, 0.99)),
                     us(quantile_us(sync, 0.99))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows) + "\n"
