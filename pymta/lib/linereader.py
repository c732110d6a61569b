"""Bounded line reading for the protocol machines (SMTP, POP3).

h11's receive-buffer rules: a search never rescans bytes already known to
hold no line end, and an incomplete line is never kept past ``cap`` bytes
-- the rest of an over-long line is thrown away as it arrives (qmail
CVE-2005-1513: every buffer has a limit).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal


class LineReader:
    """Mixin over ``self._buf`` (a bytearray the machine appends input to)."""

    _buf: bytearray  # the machine's own
    _skipping = False  # throwing away the rest of an over-long line
    _scanned = 0  # bytes of _buf already known to hold no LF

    def _read_line(self, cap: int) -> bytes | Literal[False] | None:
        """Next line (terminator included), None if incomplete, False if longer than ``cap``."""
        buf = self._buf
        if self._skipping:
            i = buf.find(b"\n")
            if i < 0:
                buf.clear()
                return None
            del buf[: i + 1]
            self._skipping = False
            self._scanned = 0
        i = buf.find(b"\n", self._scanned)
        if i < 0:
            if len(buf) >= cap:  # not even the terminator would fit
                buf.clear()
                self._skipping = True
                self._scanned = 0
                return False
            self._scanned = len(buf)
            return None
        line = bytes(buf[: i + 1])
        del buf[: i + 1]
        self._scanned = 0
        return line if i < cap else False
