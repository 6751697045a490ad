"""The ava-vdev lab: QEMU 11 in a Debian trixie root, a guest booted from that root
with the vfio-user device attached, and one command run inside it.

``python -m qemu lab build`` builds the lab (``_lab``), ``python -m qemu run -- CMD``
launches the device server and a guest together (``_machine``) and returns CMD's
exit status. This module only re-exports.
"""

from ._accel import Verdict as Verdict
from ._accel import decide_accel as decide_accel
from ._errors import ChildFailure as ChildFailure
from ._errors import GuestFailure as GuestFailure
from ._errors import GuestTimeout as GuestTimeout
from ._errors import LabError as LabError
from ._errors import LabNotReady as LabNotReady
from ._errors import LaunchFailure as LaunchFailure
from ._errors import ServerDied as ServerDied
from ._lab import Lab as Lab
from ._machine import Interrupted as Interrupted
from ._machine import LabMachine as LabMachine
from ._machine import RunResult as RunResult
from ._machine import run_in_guest as run_in_guest
