"""Mailbox names: modified UTF-7 (or UTF-8) on the wire, Maildir++ folders on disk.

Wire names (RFC 3501 5.1.3) use ``/`` as the hierarchy delimiter and
modified UTF-7 for non-ASCII; a session that enabled IMAP4rev2 (RFC 9051
5.1) or UTF8=ACCEPT (RFC 6855 3) sends and gets them in UTF-8 instead
(``utf8=True`` below: no ``&`` decoding, names in Unicode NFC).  On disk a name ``a/b`` is the Maildir++
folder ``.a.b`` beside the INBOX's new/cur/tmp; each component is kept in
modified UTF-7 (pure ASCII, no ``/``), and a ``.`` inside a component is
written ``&AC4-`` (the modified UTF-7 form of ".") so it cannot be taken for
the hierarchy separator.  Names that could leave the user's mail home --
empty components, ``.``/``..``, control characters, absolute paths,
backslashes -- raise ``BadName``.
"""

from __future__ import annotations

import base64

DELIM = "/"
MAX_NAME = 512
MAX_DEPTH = 16


class BadName(ValueError):
    pass


def _b64enc(text: str) -> str:
    raw = text.encode("utf-16-be")
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode_mutf7(name: str) -> str:
    out = []
    pending: list[str] = []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            if pending:
                out.append("&" + _b64enc("".join(pending)) + "-")
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append("&" + _b64enc("".join(pending)) + "-")
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Modified UTF-7 -> str; raises BadName on malformed input."""
    out = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if ch != "&":
            if not 0x20 <= ord(ch) <= 0x7E:
                raise BadName("8-bit or control character in mailbox name")
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise BadName("unterminated &-sequence")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                raw = base64.b64decode(b64, validate=True)
                text = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise BadName("bad modified UTF-7") from None
            if len(raw) % 2:
                raise BadName("bad modified UTF-7")
            out.append(text)
        i = end + 1
    return "".join(out)


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def from_wire(wire: str, utf8: bool = False) -> str:
    """A name or LIST pattern as the client sent it -> Unicode (no checks beyond the encoding)."""
    if not utf8:
        return decode_mutf7(wire)
    if not wire.isascii():
        import unicodedata  # noqa: PLC0415 lazy: only for non-ASCII UTF-8 names

        if not unicodedata.is_normalized("NFC", wire):  # RFC 9051 5.1: Net-Unicode (RFC 5198)
            raise BadName("not in Unicode NFC")
    return wire


def normalize(wire: str, utf8: bool = False) -> str:
    """Wire name -> canonical Unicode name ("INBOX" in any case becomes "INBOX").

    Raises BadName for names that are malformed or unsafe.
    """
    if len(wire) > MAX_NAME:
        raise BadName("mailbox name too long")
    name = from_wire(wire, utf8)
    if is_inbox(name):
        return "INBOX"
    if name.upper().startswith("INBOX/"):
        name = "INBOX" + name[5:]
    check(name)
    return name


def check(name: str) -> None:
    if not name:
        raise BadName("empty mailbox name")
    if name.startswith(DELIM) or name.startswith("~") or "\\" in name:
        raise BadName("mailbox name must be relative")
    parts = name.split(DELIM)
    if len(parts) > MAX_DEPTH:
        raise BadName("mailbox hierarchy too deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadName("empty, . or .. component in mailbox name")
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in part):  # RFC 6855 3
            raise BadName("control character in mailbox name")
        if part.startswith(".") and part.strip("."):
            pass  # ".hidden" is harmless: it becomes "&AC4-hidden" on disk


def to_wire(name: str, utf8: bool = False) -> str:
    return name if utf8 else encode_mutf7(name)


def to_dir(name: str) -> str:
    """Canonical name -> Maildir++ directory name ("" for INBOX)."""
    if name == "INBOX":
        return ""
    check(name)
    parts = [encode_mutf7(p).replace(".", "&AC4-") for p in name.split(DELIM)]
    return "." + ".".join(parts)


def from_dir(dirname: str) -> str | None:
    """Maildir++ directory name -> canonical name, or None if it is not a folder name."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    parts = dirname[1:].split(".")
    try:
        name = DELIM.join(decode_mutf7(p) for p in parts)
        check(name)
    except BadName:
        return None
    if is_inbox(name):
        return None
    return name
