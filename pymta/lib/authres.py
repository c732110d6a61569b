"""Authentication-Results header fields (RFC 8601): write ours, drop forgeries.

``header`` makes the field pymail puts at the top of a message it checked;
``strip`` removes from a header block every Authentication-Results field
that claims our authserv-id (RFC 8601 5), so a sender cannot hand a
recipient a forged "pass" in our name.  Fields of other authserv-ids stay.
Both work on LF-ended text.
"""

from __future__ import annotations

import re

NAME = b"authentication-results"
_TOKEN = re.compile(r"[A-Za-z0-9\-._@+]+")  # ASCII: clean is


def _comment(text: str) -> str:
    """A reason as a comment: printable ASCII, no parentheses or backslashes."""
    if text.isascii() and text.isprintable() and "(" not in text and ")" not in text and "\\" not in text:
        clean = text  # the usual case, without a pass over each character
    else:
        clean = "".join(c for c in text if c.isascii() and c.isprintable() and c not in "()\\")
    return f" ({clean.strip()[:200]})" if clean.strip() else ""


def _value(text: str) -> str:
    """A property value: a token or a domain as is, anything else quoted."""
    clean = text
    if not (text.isascii() and text.isprintable()):
        clean = "".join(c for c in text if c.isascii() and c.isprintable())
    if _TOKEN.fullmatch(clean):  # token, or pvalue addr-spec/domain
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def result(method: str, value: str, reason: str = "", **properties: str) -> str:
    """One resinfo: ``spf=pass smtp.mailfrom=example.com``; property names
    are written ptype_property (``smtp_mailfrom``), empty values left out."""
    props = "".join(f" {key.replace('_', '.', 1)}={_value(v)}" for key, v in properties.items() if v)
    return f"{method}={value}{_comment(reason)}{props}"


def header(authserv_id: str, results: list[str]) -> bytes:
    """The whole field, folded one result a line, LF-ended."""
    if not results:
        return f"Authentication-Results: {authserv_id}; none\n".encode()
    return (f"Authentication-Results: {authserv_id};\n\t" + ";\n\t".join(results) + "\n").encode()


def _authserv_id(value: bytes) -> bytes:
    """The authserv-id of a field value: its first token, comments skipped."""
    text = value.replace(b"\n", b" ").lstrip()
    while text.startswith(b"("):  # CFWS before the id (comments do not nest deeply here)
        depth, end = 0, len(text) - 1
        for pos, c in enumerate(text):
            depth += (c == 40) - (c == 41)
            if depth == 0:
                end = pos
                break
        text = text[end + 1 :].lstrip()
    end = len(text)
    for stop in (b";", b" ", b"\t", b"("):
        pos = text.find(stop)
        if 0 <= pos < end:
            end = pos
    return text[:end].strip().lower()


def strip(block: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``block`` without the Authentication-Results fields claiming
    ``authserv_id`` (compared without case); (new block, fields removed)."""
    ours = authserv_id.lower().encode("ascii", "replace")
    fields: list[list[bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    out: list[bytes] = []
    removed = 0
    for lines in fields:
        name, colon, value = b"".join(lines).partition(b":")
        if colon and name.strip().lower() == NAME and _authserv_id(value) == ours:
            removed += 1
        else:
            out.extend(lines)
    return b"".join(out), removed


def claims(block: bytes, authserv_id: str) -> bool:
    """Whether ``block`` (a header block, LF line ends) has an
    Authentication-Results field of ``authserv_id``."""
    return strip(block, authserv_id)[1] > 0
