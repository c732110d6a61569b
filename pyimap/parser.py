"""IMAP command reader and tokenizer (RFC 3501 section 9, RFC 7888 LITERAL+).

Two layers, both bounded:

* ``Reader`` cuts the byte stream into commands.  A command is a list of
  text segments and literals; a line ending in ``{n}`` / ``{n+}`` announces
  a literal.  The literal's size is checked against the caps *before* any
  of its bytes are read; a synchronizing literal gets the ``+`` continuation
  only once accepted.  A big literal goes to a *sink* (the APPEND spool file)
  as it arrives instead of into memory.
* ``tokenize`` turns one command into atoms, strings and nested lists, with
  a cap on nesting.

Every malformed input raises ``ParseError`` (the peer misbehaved); nothing
else escapes, which the fuzz tests check.
"""

from __future__ import annotations

import bisect
import re
from typing import Any


class ParseError(Exception):
    """The command is malformed; answer BAD."""


class Atom(str):
    """An IMAP atom (as opposed to a string)."""

    __slots__ = ()


class Literal:
    """A literal kept in memory."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other) -> bool:
        return isinstance(other, Literal) and other.data == self.data

    def __repr__(self) -> str:
        return f"Literal({self.data[:40]!r})"


class LiteralBytes(bytes):
    """A literal's bytes after ``tokenize`` (a quoted string stays plain bytes): APPEND
    tells a message from a date-time by it."""

    __slots__ = ()


class Literal8:
    """A literal8 (``~{n}``, RFC 3516, RFC 4466; RFC 6855's ``UTF8 (~{n}...)``): its value
    (bytes, or the sink it went to).  Only APPEND takes one; anywhere else it is not a
    string, so the command is BAD."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Literal8({self.value!r:.50})"


_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}$")
_TAG_RE = re.compile(rb"^([^\x00-\x20\x7f-\xff(){%*\"\\+]+) ")

# Reader events.  FATAL: answer, then close the connection (the input cannot be resynchronised).
COMMAND, CONTINUE, ERROR, FATAL = "command", "continue", "error", "fatal"


class Reader:
    """Cuts input into commands.

    ``sink_for(segments, size)`` is asked, for each literal, where its bytes
    go: it returns a sink (``write(bytes)``) to stream them, None to keep
    them in memory (allowed up to ``max_mem_literal``), or a string: the
    error to answer without reading the literal.
    """

    def __init__(
        self,
        *,
        max_line: int = 65536,
        max_literal: int = 64 << 20,
        max_mem_literal: int = 65536,
        max_command: int = 1 << 20,
        sink_for=None,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_mem_literal = max_mem_literal
        self.max_command = max_command
        self.sink_for = sink_for or (lambda segments, size: None)
        self.buf = bytearray()
        self.parts: list = []
        self.size = 0  # bytes of the command held in memory
        self.lit_left = 0
        self.lit_target: Any = None  # bytearray (memory), sink, or "discard"
        self.lit_sink = None
        self.skip_line = False
        self.pending_error: tuple[str, str] | None = None

    def reset(self) -> None:
        """Forget everything (after STARTTLS)."""
        self._abort_sink()
        self.buf.clear()
        self.parts = []
        self.size = 0
        self.lit_left = 0
        self.lit_target = None
        self.skip_line = False
        self.pending_error = None

    def _abort_sink(self) -> None:
        for part in self.parts:
            if hasattr(part, "abort"):
                part.abort()
        if self.lit_sink is not None and hasattr(self.lit_sink, "abort"):
            self.lit_sink.abort()
        self.lit_sink = None

    def feed(self, data: bytes) -> None:
        if self.lit_left and not self.buf:
            # Fast path: literal bytes go straight to where they belong.
            data = self._eat_literal(memoryview(data))
            if not data:
                return
        self.buf += data

    def _eat_literal(self, view):
        take = min(self.lit_left, len(view))
        if take:
            chunk = view[:take]
            target = self.lit_target
            if isinstance(target, bytearray):
                target += chunk
            elif target != "discard":
                target.write(bytes(chunk))
            self.lit_left -= take
            if self.lit_left == 0:
                self._literal_done()
        return bytes(view[take:])

    def _literal_done(self) -> None:
        target = self.lit_target
        if isinstance(target, bytearray):
            self.parts.append(Literal(bytes(target)))
        elif target == "discard":
            self.parts.append(Literal(b""))
        else:
            self.parts.append(target)
            self.lit_sink = None
        self.lit_target = None

    def _tag_of(self, first: bytes) -> str:
        m = _TAG_RE.match(first)
        return m.group(1).decode("ascii", "replace") if m else "*"

    def next_event(self):
        """(COMMAND, parts) | (CONTINUE, text) | (ERROR, tag, text) | None (need more input)."""
        while True:
            if self.lit_left:
                if not self.buf:
                    return None
                rest = self._eat_literal(memoryview(bytes(self.buf)))
                self.buf = bytearray(rest)
                if self.lit_left:
                    return None
                continue
            idx = self.buf.find(b"\n")
            if idx < 0:
                if len(self.buf) > self.max_line:
                    if not self.skip_line:
                        tag = self._tag_of(
                            bytes(self.parts[0])
                            if self.parts and isinstance(self.parts[0], bytes)
                            else bytes(self.buf[:100])
                        )
                        self._abort_sink()
                        self.parts, self.size = [], 0
                        self.skip_line = True
                        self.buf.clear()
                        return (ERROR, tag, "BAD Line too long")
                    self.buf.clear()
                return None
            line = bytes(self.buf[:idx])
            del self.buf[: idx + 1]
            if self.skip_line:
                self.skip_line = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                tag = self._tag_of(bytes(self.parts[0]) if self.parts else line[:100])
                self._abort_sink()
                self.parts, self.size = [], 0
                return (ERROR, tag, "BAD Line too long")
            m = _LITERAL_AT_END.search(line)
            if m is None:
                self.parts.append(line)
                parts, self.parts, self.size = self.parts, [], 0
                if self.pending_error is not None:
                    tag, text = self.pending_error
                    self.pending_error = None
                    for p in parts:
                        if hasattr(p, "abort"):
                            p.abort()
                    return (ERROR, tag, text)
                return (COMMAND, parts)
            size = int(m.group(1))
            plus = bool(m.group(2))
            segment = line[: m.start()]
            self.parts.append(segment)
            self.size += len(segment)
            first = self.parts[0] if isinstance(self.parts[0], bytes) else b""
            tag = self._tag_of(first)
            error = None
            target = None
            if self.pending_error is not None:
                error = self.pending_error[1]
            elif size > self.max_literal:
                error = "NO [TOOBIG] Literal too big"
            else:
                sink = self.sink_for(self.parts, size)
                if isinstance(sink, str):
                    error = sink
                elif sink is not None:
                    target = sink
                    self.lit_sink = sink
                elif size > self.max_mem_literal or self.size + size > self.max_command:
                    error = "NO [TOOBIG] Literal too big"
                else:
                    target = bytearray()
                    self.size += size
            if error is not None:
                if plus and size > self.max_literal:
                    # A non-synchronizing literal no command may have: draining
                    # gigabytes to find the next command helps nobody.
                    self._abort_sink()
                    self.parts, self.size, self.pending_error = [], 0, None
                    self.buf.clear()
                    return (FATAL, tag, "BAD [TOOBIG] Literal too big")
                if plus:
                    # The client sends it anyway: read and throw it away, then
                    # answer once at the end of the command.
                    self.pending_error = (tag, error)
                    self.lit_left, self.lit_target = size, "discard"
                    if size == 0:
                        self._literal_done()
                    continue
                self._abort_sink()
                self.parts, self.size, self.pending_error = [], 0, None
                return (ERROR, tag, error)
            self.lit_left, self.lit_target = size, target
            if size == 0:
                self._literal_done()
            if not plus:
                return (CONTINUE, "Ready for literal data")


# -- tokenizer ---------------------------------------------------------------------

_ATOM_STOP = frozenset(b' ()"{\r\n')
# The atoms after which "[" opens a section (RFC 3501 9 fetch-att, RFC 3516).
_SECTION_HEADS = frozenset((b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"))
MAX_DEPTH = 32


def tokenize(parts: list, max_depth: int = MAX_DEPTH) -> list:
    """Command parts -> nested list of Atom / bytes (strings) / list / sink objects."""
    top: list = []
    stack = [top]
    literal8 = False  # the segment ended with "~": the literal that follows is a literal8
    for i, part in enumerate(parts):
        if not isinstance(part, (bytes, bytearray)):
            value = LiteralBytes(part.data) if isinstance(part, Literal) else part
            stack[-1].append(Literal8(value) if literal8 else value)
            literal8 = False
            continue
        data = part
        n = len(data)
        pos = 0
        while pos < n:
            c = data[pos]
            if c == 0x20:
                pos += 1
            elif c == 0x28:  # (
                if len(stack) > max_depth:
                    raise ParseError("Too deeply nested")
                new: list = []
                stack[-1].append(new)
                stack.append(new)
                pos += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("Unbalanced parenthesis")
                stack.pop()
                pos += 1
            elif c == 0x22:  # "
                out = bytearray()
                pos += 1
                while True:
                    if pos >= n:
                        raise ParseError("Unterminated quoted string")
                    ch = data[pos]
                    if ch == 0x5C:
                        if pos + 1 >= n or data[pos + 1] not in (0x5C, 0x22):
                            raise ParseError("Bad escape in quoted string")
                        out.append(data[pos + 1])
                        pos += 2
                        continue
                    if ch == 0x22:
                        pos += 1
                        break
                    if ch in (0, 0x0A, 0x0D):
                        raise ParseError("Bad character in quoted string")
                    out.append(ch)
                    pos += 1
                stack[-1].append(bytes(out))
            elif c == 0x7B:  # { not at the end of a segment
                raise ParseError("Misplaced literal")
            else:
                start = pos
                while pos < n:
                    ch = data[pos]
                    if ch == 0x5B and bytes(data[start:pos]).upper() in _SECTION_HEADS:  # [
                        # BODY[...] and friends: the section may hold spaces and
                        # parentheses (HEADER.FIELDS (A B)); elsewhere [ and ] are
                        # plain atom characters (RFC 3501 9: ASTRING-CHAR has "]").
                        close = data.find(b"]", pos, n)
                        if close >= 0:
                            if any(c in (0, 0x0A, 0x0D, 0x7F) for c in data[pos:close]):
                                raise ParseError("Control character in command")
                            pos = close + 1
                            continue
                    if ch in _ATOM_STOP:
                        break
                    if ch in (0, 0x0A, 0x0D) or ch == 0x7F:
                        raise ParseError("Control character in command")
                    pos += 1
                if pos == start:
                    raise ParseError("Unexpected character in command")
                raw = data[start:pos]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ParseError("8-bit characters in atom") from None
                if any(ord(ch) < 0x20 for ch in text):
                    raise ParseError("Control character in command")
                if text == "~" and pos == n and i + 1 < len(parts):
                    literal8 = True  # ~{n}: the Reader cut the segment before the {n}
                    continue
                stack[-1].append(Atom(text))
    if len(stack) != 1:
        raise ParseError("Unbalanced parenthesis")
    return top


# -- sequence sets -----------------------------------------------------------------

_SEQ_RE = re.compile(r"^([0-9]+|\*)(?::([0-9]+|\*))?$")
MAX_SEQ_RANGES = 10000


def is_number(text) -> bool:
    """ASCII digits, at most 20 (a 63-bit mod-sequence).  ``str.isdigit`` alone is not
    enough: it accepts "\u00b2", which ``int`` refuses, and ``int`` refuses over 4300 digits."""
    return isinstance(text, str) and 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def parse_sequence_set(text) -> list[tuple[int | None, int | None]]:
    """``1:3,5,7:*`` -> [(1, 3), (5, 5), (7, None)]; None stands for ``*``."""
    if not isinstance(text, str) or not text:
        raise ParseError("Bad sequence set")
    out = []
    for item in text.split(","):
        m = _SEQ_RE.match(item)
        if not m:
            raise ParseError("Bad sequence set")
        if len(m.group(1)) > 10 or len(m.group(2) or "") > 10:  # beyond 4294967295 (and int's digit limit)
            raise ParseError("Bad sequence number")
        lo = None if m.group(1) == "*" else int(m.group(1))
        hi_s = m.group(2) if m.group(2) is not None else m.group(1)
        hi = None if hi_s == "*" else int(hi_s)
        if lo == 0 or hi == 0 or (lo is not None and lo > 0xFFFFFFFF) or (hi is not None and hi > 0xFFFFFFFF):
            raise ParseError("Bad sequence number")
        out.append((lo, hi))
        if len(out) > MAX_SEQ_RANGES:
            raise ParseError("Sequence set too long")
    return out


def seq_contains(ranges, n: int, star: int) -> bool:
    for lo, hi in ranges:
        a = star if lo is None else lo
        b = star if hi is None else hi
        if a > b:
            a, b = b, a
        if a <= n <= b:
            return True
    return False


def expand(ranges, values: list[int], star: int) -> list[int]:
    """The members of sorted ``values`` that the set names (``*`` = star)."""
    picked: set[int] = set()
    for lo, hi in ranges:
        a = star if lo is None else lo
        b = star if hi is None else hi
        if a > b:
            a, b = b, a
        i = bisect.bisect_left(values, a)
        j = bisect.bisect_right(values, b)
        if j - i == len(values) and not picked:
            picked = set(values)
            continue
        picked.update(values[i:j])
    return sorted(picked)


# -- output helpers ----------------------------------------------------------------

_SAFE_QUOTED = re.compile(rb"^[\x20-\x7e]*$")


_UTF8_QUOTED = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")


def quote(value, utf8: bool = False) -> bytes:
    """A string as an IMAP quoted string, or a literal when it must be; with ``utf8``
    (the client enabled UTF8=ACCEPT or IMAP4rev2) UTF-8 text may be quoted (RFC 6855 3)."""
    if value is None:
        return b"NIL"
    text = value if utf8 and isinstance(value, str) else ""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) < 1024 and (_SAFE_QUOTED.match(value) or (text and _UTF8_QUOTED.match(text))):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value) -> bytes:
    return b"NIL" if value is None else quote(value)
