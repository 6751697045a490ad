"""Everything that runs in the guest: the driver shim and its command line.

- ``runtime/``: the C runtime (device discovery, BAR0 mapping, DMA memory, rings
  and waits, over uio in a VM or over the loopback transport on the host);
- ``icd/``: the OpenCL ICD, its entry points generated from ``protocols.opencl_api``
  by ``gen_icd`` (the ABI header by ``gen_abi``), plus the hand-written calls the
  guest composes itself;
- ``python3 -m guest_driver``: ``build``, ``install`` (register the ICD with the
  loader), ``check`` (which OpenCL calls a program uses and whether they are
  forwarded) and ``status`` (the device as the runtime sees it).

It runs on the guest's own Python and compiler, so it imports nothing from the
host side (``vdev``, ``host_backend``), only the declarations in ``protocols``.
"""
