"""The guest's include directories, recreated on the host for a build.

A build's options name each directory by its path, and the implementation's
kernel cache keys on the options: a fresh temporary directory per build made
every build with ``-I`` a cache miss (910-930 ms against 66-79 ms natively for a
warm one-line build).  So the files live in a directory named by their content:
the same files give the same path, hence the same options, and the cache hits;
different files give another path, so a cached program never outlives its
headers.  Directories stay for later builds, the least recently used going past
``MAX_DIRS``; one in use by a build is never removed.

With ``root`` (the device server's kernel cache, which outlives executors) the
directories keep their paths across sessions too, so a program built in an
earlier session comes from the cache; the root then belongs to that cache and is
not removed here.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict

MAX_DIRS = 64


class IncludeStore:
    def __init__(self, root: str | None = None) -> None:
        self._lock = threading.Lock()
        self._root: str | None = None
        self._shared = root
        self._dirs: OrderedDict[str, int] = OrderedDict()   # digest -> builds using it

    def checkout(self, files: list[tuple[int, list[str], bytes]],
                 indices: set[int]) -> tuple[str, object]:
        """The directory holding ``files`` ((index, path parts, data), already checked
        to be plain relative paths) as ``<dir>/<index>/<path>``, with an empty
        ``<dir>/<index>`` for every other index in ``indices``; and the function that
        ends this build's use of it."""
        digest = hashlib.sha256()
        for index, parts, data in sorted(files):
            path = "/".join(parts).encode()
            digest.update(struct.pack("<QQQ", index, len(path), len(data)) + path + data)
        digest.update(struct.pack(f"<{len(indices)}Q", *sorted(indices)))
        key = digest.hexdigest()[:32]
        with self._lock:
            if self._root is None and self._shared:
                os.makedirs(self._shared, mode=0o700, exist_ok=True)
                self._root = self._shared
            elif self._root is None:
                self._root = tempfile.mkdtemp(prefix="ava-inc-")
                # Also when the process ends before the session closes (an executor
                # without a private /tmp leaves nothing behind).
                atexit.register(self.close)
            root = self._root
            self._dirs[key] = self._dirs.get(key, 0) + 1
            self._dirs.move_to_end(key)
            idle = [k for k, users in self._dirs.items() if not users]   # oldest first
            stale = idle[:max(0, len(self._dirs) - MAX_DIRS)]
            for k in stale:
                del self._dirs[k]
        for k in stale:
            shutil.rmtree(os.path.join(root, k), ignore_errors=True)
        final = os.path.join(root, key)
        if not os.path.isdir(final):
            # Built aside and renamed: a concurrent build of the same files sees the
            # whole directory or none of it.
            work = tempfile.mkdtemp(prefix=".new-", dir=root)
            for index, parts, data in files:
                target = os.path.join(work, str(index), *parts)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
            for index in indices:
                os.makedirs(os.path.join(work, str(index)), exist_ok=True)
            try:
                os.rename(work, final)
            except OSError:            # another build made it first
                shutil.rmtree(work, ignore_errors=True)

        def done() -> None:
            with self._lock:
                if key in self._dirs:
                    self._dirs[key] -= 1
        return final, done

    def close(self) -> None:
        with self._lock:
            root, self._root = self._root, None
            self._dirs.clear()
        if root and root != self._shared:
            atexit.unregister(self.close)
            shutil.rmtree(root, ignore_errors=True)
