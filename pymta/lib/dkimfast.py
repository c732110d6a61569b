"""Faster stand-ins for dkimpy's hottest helpers, equal in output.

A listening smtpd verifies every message it gets, and dkimpy spends much of
that time in small regular-expression passes: a module-level ``re.sub`` per
header field to unfold and compress white space, a regex with nested
optional groups to blank the b= tag (about 27 us for a 2048-bit signature),
and a parse that splits the whole body into lines only to join them again.
Each stand-in here returns exactly what the original returns -- it takes a
shortcut when the input shows the original would change nothing, and calls
the original otherwise.  ``tests/unit/test_dkimfast.py`` compares them on
random input.  ``install(dkim)`` puts them in place once per process.
"""

from __future__ import annotations

import re

# RFC 6376 FWS as dkimpy writes it, (?:(?:\s*\r?\n)?\s+)?, matches exactly
# the strings \s* matches; written so, the b= regex no longer backtracks.
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")

ORIGINALS: dict = {}  # dkimpy's own, once installed (the tests compare against them)


def install(dkim) -> None:
    """Put the stand-ins into the dkim package (idempotent; plain attribute
    writes, safe from several check threads at once)."""
    if ORIGINALS:
        return
    from dkim import canonicalization  # noqa: PLC0415 lazy

    originals = {
        "compress": canonicalization.compress_whitespace,
        "unfold": canonicalization.unfold_header_value,
        "strip": canonicalization.strip_trailing_whitespace,
        "parse": dkim.rfc822_parse,
        "btag": dkim.RE_BTAG,
    }

    def compress_whitespace(content: bytes) -> bytes:
        if b"\t" not in content and b"  " not in content:
            return content  # nothing to compress
        return originals["compress"](content)

    def unfold_header_value(content: bytes) -> bytes:
        # re.sub(b"\r?\n", b"", content): every LF goes, with a CR just before it
        return content.replace(b"\r\n", b"").replace(b"\n", b"")

    def strip_trailing_whitespace(content: bytes) -> bytes:
        if b" \r\n" not in content and b"\t\r\n" not in content:
            return content  # no line ends in white space
        return originals["strip"](content)

    def rfc822_parse(message: bytes):
        return _parse(message, originals["parse"])

    canonicalization.compress_whitespace = compress_whitespace
    canonicalization.unfold_header_value = unfold_header_value
    canonicalization.strip_trailing_whitespace = strip_trailing_whitespace
    dkim.rfc822_parse = rfc822_parse
    dkim.RE_BTAG = RE_BTAG
    ORIGINALS.update(originals)


def _parse(message: bytes, original):
    """dkimpy's rfc822_parse for a message whose header lines all end in
    CRLF, each a field or a continuation, and whose body has no bare LF: the
    body is then the text after the blank line as it is.  Anything else goes
    to ``original``, which knows its own errors."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or message.startswith((b" ", b"\t")):
        return original(message)
    head = message[: end + 2]
    body = message[end + 4 :]
    if head.count(b"\n") != head.count(b"\r\n") or body.count(b"\n") != body.count(b"\r\n"):
        return original(message)
    headers: list[list[bytes]] = []
    match = _FIELD_NAME.match
    for line in head[:-2].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1][1] += line + b"\r\n"
            continue
        found = match(line)
        if found is None or found.end() != line.find(b":") + 1:
            return original(message)  # "From " lines, bad names: as dkimpy does
        headers.append([found.group(1), line[found.end() :] + b"\r\n"])
    return headers, body
