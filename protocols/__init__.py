"""Every binary format ava-vdev speaks, declared once with ``construct``.

Declarations only, with no I/O and no state, so that both ends are derived from
one source of truth:

- ``vfio_user``: the vfio-user messages QEMU's ``vfio-user-pci`` sends and expects;
- ``pci``: PCI configuration space and the capabilities the device exposes;
- ``device_abi``: the device ABI the guest sees (BAR0 registers, rings, command and
  completion records), from which the guest's C header is generated;
- ``opencl_api`` (with ``opencl_kinds``, ``opencl_images`` and
  ``opencl_icd_table``): the annotated OpenCL API spec from which the guest's ICD
  is generated and by which the host decodes every call.

Modules are imported by name (``from protocols import device_abi``); this package
re-exports nothing.
"""
