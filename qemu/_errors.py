"""The lab's exceptions: few, and each carries the evidence needed to debug it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


class LabError(Exception):
    """Something in the lab went wrong; the message says what and where to look."""


class LabNotReady(LabError):
    """The lab is missing or out of date: run ``python -m qemu lab build``."""


class StepFailed(LabError):
    """A ``lab build`` step failed."""


class ChildFailure(LabError):
    """A child process (the device server or QEMU) failed.

    Like QEMU's ``VMLaunchFailure``: holds the command line, the exit code and
    the tail of the child's log, so the message alone is enough to start
    debugging.
    """

    def __init__(self, what: str, *, name: str, argv: Sequence[str],
                 returncode: int | None, log: Path | None = None,
                 log_tail: str = "") -> None:
        self.what = what
        self.name = name
        self.argv = list(argv)
        self.returncode = returncode
        self.log = log
        self.log_tail = log_tail
        super().__init__(what)

    def __str__(self) -> str:
        lines = [self.what,
                 f"  {self.name} command: {shlex.join(self.argv)}",
                 f"  {self.name} exit code: {describe_returncode(self.returncode)}"]
        if self.log is not None:
            lines.append(f"  {self.name} log: {self.log}")
        if self.log_tail:
            lines.append(f"  last lines of the {self.name} log:")
            lines.extend("    | " + line for line in self.log_tail.splitlines())
        return "\n".join(lines)


class LaunchFailure(ChildFailure):
    """A child exited (or never became ready) while the machine was starting."""


class ServerDied(ChildFailure):
    """The device server exited while the guest was running."""


class GuestFailure(ChildFailure):
    """QEMU exited before the guest reported its command's exit status."""


class GuestTimeout(LabError):
    """The run went over its ``--timeout``; everything was stopped."""


def describe_returncode(returncode: int | None) -> str:
    """``0``, ``3``, ``killed by SIGKILL`` or ``still running``."""
    import signal

    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return str(returncode)
