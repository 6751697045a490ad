"""Executing the guest's API calls on a real API on the host.

``OpenClBackend`` runs OpenCL calls described by ``protocols.opencl_api`` on
the host's OpenCL, with a per-session handle table and limits.
"""

from ._opencl import OpenClBackend as OpenClBackend
