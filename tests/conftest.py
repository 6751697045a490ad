"""Shared fixtures: a real server on a real UNIX socket, and a client for it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import trio

from vdev import Server
from vdev.client import GuestMemory, VfioUserClient


def open_fds() -> set[int]:
    """This process's open fds (the in-process server's included)."""
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def sock_dir():
    # Short path: AF_UNIX paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="ava-t-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(nursery, sock_dir):
    srv = Server(os.path.join(sock_dir, "vdev.sock"), stall_timeout=0.5)
    srv.busy_wait = 0.2
    await nursery.start(srv.serve)
    yield srv
    nursery.cancel_scope.cancel()


async def wait_for_idle(srv: Server, timeout: float = 2.0) -> None:
    """Until the server has no session (it noticed the last client leave)."""
    with trio.fail_after(timeout):
        while srv.session is not None:
            await trio.sleep(0.005)


@pytest.fixture
async def client(server):
    cli = await VfioUserClient.connect(server.path)
    await cli.negotiate()
    yield cli
    await cli.aclose()


@pytest.fixture
def guest_ram():
    with GuestMemory(4 << 20) as mem:
        yield mem
