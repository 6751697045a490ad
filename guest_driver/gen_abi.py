"""Generate the C headers the guest runtime shares with the host, from ``protocols/``.

``runtime/ava_abi.h`` comes from ``protocols.device_abi`` (registers, rings,
commands) and ``runtime/vfio_user_wire.h`` from ``protocols.vfio_user`` (the
messages the loopback transport sends), ``runtime/ava_daemon.h`` from
``protocols.guest_daemon`` and ``runtime/ava_pin.h`` from ``protocols.guest_pin`` (what
the runtime, the daemon and the guest kernel module say; that one is included by the
module too, so it uses the kernel's ``__u64`` types).

One source of truth: the construct declarations.  Structs become packed-free C
structs of fixed-width types (every field is naturally aligned by design, and
the header asserts each size), enums become ``#define``s.  Output is
deterministic; ``--check`` exits 1 when the committed header is stale.

    python -m guest_driver.gen_abi [--check]
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import inspect
import json
import os
import sys

from construct import Bytes, FormatField, GreedyBytes, Renamed, Struct

from guest_driver._generated import sync
from protocols import device_abi as abi
from protocols import guest_daemon as gd
from protocols import guest_pin as gp
from protocols import vfio_user as vu

RUNTIME_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")

#: (C name, declaration) for every struct the guest shares with the host.
ABI_STRUCTS = [
    ("ava_ring_header", abi.RingHeader),
    ("ava_command", abi.Command),
    ("ava_completion", abi.Completion),
    ("ava_sg_entry", abi.SgEntry),
    ("ava_queue_window", abi.QueueWindow),
    ("ava_window_table_header", abi.WindowTableHeader),
    ("ava_window_entry", abi.WindowEntry),
    ("ava_bar0", abi.Bar0),
]

#: (prefix, enum) rendered as #defines.
ABI_ENUMS = [
    ("AVA_REG_", abi.Reg),
    ("AVA_QREG_", abi.QReg),
    ("AVA_QUEUE_CTRL_", abi.QueueCtrl),
    ("AVA_QUEUE_STATE_", abi.QueueState),
    ("AVA_RING_STATUS_", abi.RingStatus),
    ("AVA_CMD_FLAG_", abi.CmdFlags),
    ("AVA_SELFTEST_OP_", abi.SelftestOp),
    ("AVA_FEATURE_", abi.Feature),
    ("AVA_DEVICE_STATUS_", abi.DeviceStatus),
]

ABI_CONSTANTS = [
    "VENDOR_ID", "DEVICE_ID", "CLASS_CODE", "MAGIC", "ABI_MAJOR", "ABI_MINOR", "ABI_VERSION",
    "BAR0_SIZE", "SCRATCH_RESET", "NUM_QUEUES", "NO_QUEUE", "QUEUE_WINDOW_BASE",
    "QUEUE_WINDOW_SIZE", "MIN_RING_SLOTS", "MAX_RING_SLOTS", "CACHE_LINE", "RING_HEADER_SIZE",
    "COMMAND_SIZE", "COMPLETION_SIZE", "SG_ENTRY_SIZE", "MAX_SG_ENTRIES", "MSIX_VECTORS",
    "MAX_WINDOWS", "WINDOW_TABLE_HEADER_SIZE", "WINDOW_ENTRY_SIZE",
]

VU_STRUCTS = [
    ("vfu_header", vu.Header),
    ("vfu_version", vu.Version),
    ("vfu_dma_map", vu.DmaMap),
    ("vfu_dma_unmap", vu.DmaUnmap),
    ("vfu_irq_set", vu.IrqSet),
    ("vfu_region_access", vu.RegionAccess),
]
VU_ENUMS = [
    ("VFU_CMD_", vu.Command),
    ("VFU_FLAG_", vu.HeaderFlags),
    ("VFU_DMA_", vu.DmaMapFlags),
    ("VFU_IRQ_INDEX_", vu.IrqIndex),
    ("VFU_IRQ_SET_", vu.IrqSetFlags),
    ("VFU_REGION_", vu.RegionIndex),
]


DAEMON_STRUCTS = [
    ("ava_daemon_request", gd.Request),
    ("ava_daemon_reply", gd.Reply),
]
DAEMON_ENUMS = [
    ("AVA_DAEMON_OP_", gd.DaemonOp),
    ("AVA_DAEMON_FLAG_", gd.DaemonFlags),
    ("AVA_DAEMON_HELLO_", gd.HelloFeatures),
]
DAEMON_CONSTANTS = ["DAEMON_PROTOCOL", "MAX_CLIENT_MEMORY", "CHUNK_SIZE", "REQUEST_SIZE",
                    "REPLY_SIZE", "MAX_REPLY", "MAX_PIN_RUNS"]
DAEMON_STRINGS = ["DEFAULT_SOCKET", "DEFAULT_GROUP"]


PIN_STRUCTS = [
    ("ava_pin_request", gp.PinRequest),
    ("ava_pin_runs", gp.PinRuns),
    ("ava_pin_run", gp.PinRun),
]
PIN_CONSTANTS = ["MAX_PIN_BYTES", "IOCTL_TYPE", "PIN_REQUEST_SIZE", "PIN_RUNS_SIZE",
                 "PIN_RUN_SIZE", "IOC_PIN", "IOC_RUNS"]
PIN_STRINGS = ["DEVICE_NAME", "MODULE_NAME", "PIN_FD_NAME"]


class Output:
    def __init__(self, filename: str, guard: str, module, structs, enums, constants,
                 const_prefix: str, strings: list[str] | None = None, *,
                 kernel: bool = False):
        self.path = os.path.join(RUNTIME_DIR, filename)
        self.guard = guard
        self.module = module
        self.structs = structs
        self.enums = enums
        self.constants = constants
        self.const_prefix = const_prefix
        self.strings = strings or []
        #: Included by a kernel module as well as by userspace: <linux/types.h> types.
        self.kernel = kernel


OUTPUTS = [
    Output("ava_abi.h", "AVA_ABI_H", abi, ABI_STRUCTS, ABI_ENUMS, ABI_CONSTANTS, "AVA_"),
    Output("vfio_user_wire.h", "VFIO_USER_WIRE_H", vu, VU_STRUCTS, VU_ENUMS, ["HEADER_SIZE"], "VFU_"),
    Output("ava_daemon.h", "AVA_DAEMON_H", gd, DAEMON_STRUCTS, DAEMON_ENUMS, DAEMON_CONSTANTS,
           "AVA_", DAEMON_STRINGS),
    Output("ava_pin.h", "AVA_PIN_H", gp, PIN_STRUCTS, [], PIN_CONSTANTS, "AVA_PIN_",
           PIN_STRINGS, kernel=True),
]

_C_TYPES = {("<", 1, False): "uint8_t", ("<", 2, False): "uint16_t", ("<", 4, False): "uint32_t",
            ("<", 8, False): "uint64_t", ("<", 4, True): "int32_t", ("<", 8, True): "int64_t"}


def c_field(sub, kernel: bool = False) -> tuple[str, str]:
    """(C type, declarator suffix) for one construct field."""
    inner = sub.subcon if isinstance(sub, Renamed) else sub
    if isinstance(inner, FormatField):
        signed = inner.fmtstr[1].islower()
        ctype = _C_TYPES[("<", inner.length, signed)]
        if kernel:      # uint64_t -> __u64, int32_t -> __s32
            ctype = ("__s" if signed else "__u") + ctype.removesuffix("_t").lstrip("uint")
        return ctype, ""
    if isinstance(inner, Bytes):
        return "uint8_t", f"[{inner.length}]"
    if inner is GreedyBytes:
        return "uint8_t", "[]"
    raise TypeError(f"field {sub.name!r}: no C rendering for {inner!r}")


def field_layout(struct: Struct) -> list[tuple[str, int, int]]:
    """[(name, offset, size)] computed from the declaration alone."""
    out, pos = [], 0
    for sub in struct.subcons:
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if inner is GreedyBytes:        # flexible array member: at the end, size 0
            out.append((sub.name, pos, 0))
            continue
        size = sub.sizeof()
        out.append((sub.name, pos, size))
        pos += size
    return out


def struct_size(struct: Struct) -> int:
    return sum(size for _, _, size in field_layout(struct))


def spec_hash(module) -> str:
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


def render(out: Output) -> str:
    src = os.path.relpath(str(inspect.getsourcefile(out.module)),
                          os.path.dirname(RUNTIME_DIR) + "/..")
    lines = [
        f"/* AUTOGENERATED by guest_driver/gen_abi.py from {src} (spec {spec_hash(out.module)}).",
        " * Do not edit: change the declarations and run `python -m guest_driver.gen_abi`. */",
        f"#ifndef {out.guard}",
        f"#define {out.guard}",
        "",
        *(["#include <linux/types.h>"] if out.kernel else
          ["#include <stdint.h>", "#include <stddef.h>"]),
        "",
    ]
    offsetof = "__builtin_offsetof" if out.kernel else "offsetof"
    for name in out.constants:
        lines.append(f"#define {out.const_prefix}{name} {int(getattr(out.module, name)):#x}u")
    for name in out.strings:
        lines.append(f"#define {out.const_prefix}{name} {json.dumps(getattr(out.module, name))}")
    lines.append("")
    for prefix, en in out.enums:
        for member in en:
            if isinstance(member, enum.Flag) and member.value == 0:
                continue
            lines.append(f"#define {prefix}{member.name} {int(member.value):#x}u")
        lines.append("")
    for cname, struct in out.structs:
        lines.append(f"struct {cname} {{")
        for sub in struct.subcons:
            ctype, suffix = c_field(sub, out.kernel)
            lines.append(f"    {ctype} {sub.name}{suffix};")
        lines.append("};")
        lines.append(f"_Static_assert(sizeof(struct {cname}) == {struct_size(struct)}, "
                     f"\"{cname} size\");")
        for fname, off, _ in field_layout(struct):
            lines.append(f"_Static_assert({offsetof}(struct {cname}, {fname}) == {off}, "
                         f"\"{cname}.{fname} offset\");")
        lines.append("")
    lines.append(f"#endif /* {out.guard} */")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guest_driver.gen_abi",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated header on disk is stale")
    args = parser.parse_args(argv)
    return sync({out.path: render(out) for out in OUTPUTS}, args.check,
                "python -m guest_driver.gen_abi")


if __name__ == "__main__":
    sys.exit(main())
