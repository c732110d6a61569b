"""A message held while a stage looks at it (checks, milters) before it is queued.

Up to ``memory`` bytes stay in memory; past that the whole text goes to an
unlinked file (O_TMPFILE) in ``tmp_dir``, so a 50 MB message costs a few
chunks of memory, not several copies of itself.  Where the file system has
no unlinked files (or ``tmp_dir`` is None), everything stays in memory.
"""

from __future__ import annotations

import os
import threading

MEMORY = 1 << 20  # text kept in memory before the rest goes to the file
CHUNK = 1 << 16  # what ``chunks`` reads at a time


class Spool:
    def __init__(self, tmp_dir=None, memory: int = MEMORY) -> None:
        self.tmp_dir = tmp_dir
        self.memory = memory
        self._mem = bytearray()
        self._fd = -1  # -1: not spilled yet; -2: no file to spill to
        self.size = 0
        self._closing = threading.Lock()  # an abort (event loop) and a commit (a Job) may both close it

    def write(self, data: bytes) -> None:
        if self._fd == -1 and len(self._mem) + len(data) > self.memory:
            self._spill()
        self.size += len(data)
        if self._fd >= 0:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        else:
            self._mem += data

    def _spill(self) -> None:
        if self.tmp_dir is None:
            self._fd = -2
            return
        try:
            self._fd = os.open(str(self.tmp_dir), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (OSError, AttributeError):
            self._fd = -2  # keep it all in memory
            return
        if self._mem:
            held, self._mem = bytes(self._mem), bytearray()
            view = memoryview(held)
            while view:
                view = view[os.write(self._fd, view) :]

    def read(self, offset: int, count: int) -> bytes:
        """Up to ``count`` bytes from ``offset`` (fewer only at the end)."""
        count = max(0, min(count, self.size - offset))
        if self._fd < 0:
            return bytes(self._mem[offset : offset + count])
        parts, got = [], 0
        while got < count:
            chunk = os.pread(self._fd, count - got, offset + got)
            if not chunk:
                raise OSError("spool file cut short")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def chunks(self, start: int = 0, size: int = CHUNK):
        """The text from ``start`` on, ``size`` bytes at a time."""
        for offset in range(start, self.size, size):
            yield self.read(offset, size)

    def getvalue(self) -> bytes:
        """The whole text (in memory: for a stage that needs it whole)."""
        return self.read(0, self.size)

    def close(self) -> None:
        """Give the memory and the file back (safe to call from two threads)."""
        with self._closing:
            fd, self._fd = self._fd, -1
            self._mem = bytearray()
            self.size = 0
        if fd >= 0:
            os.close(fd)
