"""FETCH data items (RFC 3501 6.4.5, 7.4.2): parsing the request, rendering the answer."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pyimap.formats import format_internaldate
from pyimap.parser import Atom, ParseError, tokenize
from pymta.lib.sansio import Stream

if TYPE_CHECKING:
    from pyimap.message import Part

MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "MODSEQ"}
_SECTION = re.compile(
    r"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<([0-9]{1,20})\.([0-9]{1,20})>)?$",
    re.DOTALL | re.IGNORECASE,
)
_PATH = re.compile(r"^([0-9]{1,10}(?:\.[0-9]{1,10})*)(?:\.(.*))?$", re.DOTALL)
STREAM_ABOVE = 256 * 1024
_ENV_CACHE: dict = {}
_ENV_CACHE_MAX = 200_000


def parse_items(token) -> list[tuple]:
    if isinstance(token, list):
        atoms = token
        if not atoms:
            raise ParseError("Empty FETCH item list")
    else:
        atoms = [token]
        if isinstance(token, Atom) and token.upper() in MACROS:
            return [(x,) for x in MACROS[token.upper()]]
    items: list[tuple] = []
    for a in atoms:
        if not isinstance(a, Atom):
            raise ParseError("Bad FETCH item")
        up = a.upper()
        if up in SIMPLE:
            items.append((up,))
        elif up == "RFC822":
            items.append(("RFC822", False))
        elif up == "RFC822.TEXT":
            items.append(("RFC822.TEXT", False))
        elif up == "RFC822.HEADER":
            items.append(("RFC822.HEADER", True))
        else:
            items.append(_section_item(str(a)))
    return items


def _section_item(text: str) -> tuple:
    m = _SECTION.match(text)
    if not m:
        raise ParseError(f"Unknown FETCH item {text[:40]}")
    which = m.group(1).upper()
    peek = which in ("BODY.PEEK", "BINARY.PEEK")
    binary = which.startswith("BINARY")
    spec = m.group(2)
    partial = (int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
    path: list[int] = []
    rest = spec
    pm = _PATH.match(spec)
    if pm:
        path = [int(x) for x in pm.group(1).split(".")]
        if any(n == 0 for n in path):
            raise ParseError("Section part numbers start at 1")
        rest = pm.group(2) or ""
    kind = ""
    fields: list[str] = []
    up = rest.upper()
    if up == "":
        kind = ""
    elif up in ("HEADER", "TEXT", "MIME"):
        kind = up
        if kind == "MIME" and not path:
            raise ParseError("MIME needs a part number")
    elif up.startswith("HEADER.FIELDS"):
        kind, _, listing = rest.partition(" ")
        kind = kind.upper()
        if kind not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            raise ParseError("Bad section")
        toks = tokenize([listing.encode("utf-8")])
        if len(toks) != 1 or not isinstance(toks[0], list) or not toks[0]:
            raise ParseError("HEADER.FIELDS needs a list of field names")
        for t in toks[0]:
            if isinstance(t, list):
                raise ParseError("Bad header field name")
            name = t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
            if not name or any(ord(c) <= 32 or c == ":" for c in name):
                raise ParseError("Bad header field name")
            fields.append(name)
    else:
        raise ParseError("Bad section")
    section = ".".join(str(n) for n in path)
    if kind:
        section = f"{section}.{kind}" if section else kind
    if kind.startswith("HEADER.FIELDS"):
        section += " (" + " ".join(_field_out(f) for f in fields) + ")"
    if which == "BINARY.SIZE":
        # RFC 3516: BINARY.SIZE[section], no partial
        if partial is not None:
            raise ParseError("BINARY.SIZE takes no partial range")
        return ("BINARY.SIZE", f"BINARY.SIZE[{section}]".encode(), path, kind, fields)
    label = f"{'BINARY' if binary else 'BODY'}[{section}]"
    if partial is not None:
        label += f"<{partial[0]}>"
    # BINARY of a header (Dovecot allows it) is the header as BODY gives it
    return (
        "BINARY[]" if binary and kind in ("", "TEXT") else "BODY[]",
        label.encode("utf-8"),
        path,
        kind,
        fields,
        partial,
        peek,
    )


def _field_out(name: str) -> str:
    if re.match(r"^[!#-'*+\-.0-9A-Z^-~]+$", name, re.IGNORECASE) and name.upper() != "NIL":
        return name.upper()
    return '"' + name.upper().replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


class _Loader:
    """Reads a message file at most once per FETCH response."""

    def __init__(self, folder: str, e) -> None:
        self._where = (folder, e)
        self._path: str | None = None
        self._full: bytes | None = None
        self._part: Part | None = None
        self._header: bytes | None = None

    @property
    def path(self) -> str:
        """The message file, named when first needed (a FETCH of index items reads none)."""
        if self._path is None:
            folder, e = self._where
            self._path = f"{folder}/{e.sub}/{e.name}"
        return self._path

    def full(self) -> bytes:
        if self._full is None:
            from pyimap.message import read_crlf  # noqa: PLC0415 lazy

            self._full = read_crlf(self.path)
        return self._full

    def header(self) -> bytes:
        if self._header is None:
            if self._full is not None:
                from pyimap.message import split_header  # noqa: PLC0415 lazy

                self._header = split_header(self._full)[0]
            else:
                from pyimap.message import read_header  # noqa: PLC0415 lazy

                self._header = read_header(self.path)
        return self._header

    def part(self):
        if self._part is None:
            from pyimap.message import Part  # noqa: PLC0415 lazy

            self._part = Part(self.full())
        return self._part


def _envelope(sel, e, loader) -> bytes:
    key = (sel.index.dir, e.base)
    env = _ENV_CACHE.get(key)
    if env is None:
        from pyimap.message import Headers, cached_headers, envelope  # noqa: PLC0415 lazy

        if loader._full is not None:
            env = envelope(Headers(loader.header()))
        else:
            env = envelope(cached_headers(key, loader.path))
        if len(_ENV_CACHE) >= _ENV_CACHE_MAX:
            _ENV_CACHE.clear()
        _ENV_CACHE[key] = env
    return env


def _count_crlf_size(fh) -> int:
    size = 0
    last = b""
    while chunk := fh.read(1 << 16):
        size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
        if last == b"\r" and chunk[:1] == b"\n":
            size -= 1
        last = chunk[-1:]
    fh.seek(0)
    return size


def _stream(fh):
    from pyimap.message import to_crlf  # noqa: PLC0415 lazy
    from pymta.lib.lineends import converted_chunks  # noqa: PLC0415 lazy

    try:
        yield from converted_chunks(fh, to_crlf)
    finally:
        fh.close()


_FROM_INDEX = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})


def _from_index(name: str, e, uid: int, flags: str) -> bytes:
    """A FETCH item the index entry answers alone (no message file read)."""
    if name == "UID":
        return b"UID %d" % uid
    if name == "FLAGS":
        return b"FLAGS " + flags.encode("utf-8")
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + format_internaldate(e.idate)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % e.size
    return b"MODSEQ (%d)" % e.modseq


def render_message(sel, e, uid: int, seq: int, items, flags: str | None = None) -> list:
    """The ``* n FETCH (...)`` response of one message, as a list of actions.

    ``flags`` is the message's FLAGS list (``pyimap.formats.flags_text``),
    needed when ``items`` asks for FLAGS."""
    loader = _Loader(sel.index.dir, e)
    out: list = []
    buf = [b"* %d FETCH (" % seq]
    first = True
    for item in items:
        name = item[0]
        if not first:
            buf.append(b" ")
        first = False
        if name in _FROM_INDEX:
            assert flags is not None or name != "FLAGS"  # given when items ask for FLAGS
            buf.append(_from_index(name, e, uid, flags or ""))
        elif name == "ENVELOPE":
            buf.append(b"ENVELOPE " + _envelope(sel, e, loader))
        elif name == "BODYSTRUCTURE":
            buf.append(b"BODYSTRUCTURE " + loader.part().structure(True))
        elif name == "BODY":
            buf.append(b"BODY " + loader.part().structure(False))
        elif name in ("RFC822", "RFC822.TEXT", "RFC822.HEADER") or (
            name == "BODY[]" and not item[2] and not item[3] and item[5] is None
        ):
            label = name.encode() if name != "BODY[]" else item[1]
            if name in ("RFC822", "BODY[]") and e.size > STREAM_ABOVE and loader._full is None:
                fh = open(loader.path, "rb")
                size = _count_crlf_size(fh)
                buf.append(label + b" {%d}\r\n" % size)
                out.append(b"".join(buf))
                out.append(Stream(_stream(fh), reads_disk=True))
                buf = []
                continue
            if name == "RFC822.HEADER":
                data = loader.header()
            elif name == "RFC822.TEXT":
                from pyimap.message import split_header  # noqa: PLC0415 lazy

                data = split_header(loader.full())[1]
            else:
                data = loader.full()
            buf.append(label + b" " + _literal(data))
        elif name == "BODY[]":
            _, label, spath, kind, fields, partial, _peek = item
            if kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT") and not spath:
                from pyimap.message import Headers, section_bytes  # noqa: PLC0415 lazy; header only: no need to read the body

                hdr = loader.header()
                if kind == "HEADER":
                    data = hdr
                else:
                    want = {f.lower() for f in fields}
                    keep = kind == "HEADER.FIELDS"
                    data = b"".join(raw for n, raw in Headers(hdr).lines if (n in want) == keep) + b"\r\n"
            else:
                from pyimap.message import section_bytes  # noqa: PLC0415 lazy

                section = section_bytes(loader.part(), spath, kind, fields)
                data = section if section is not None else b""  # no such section: empty
            if partial is not None:
                start, count = partial
                data = data[start : start + count]
            buf.append(label + b" " + _literal(data))
        elif name == "BINARY[]":
            _, label, spath, kind, _fields, partial, _peek = item
            data, literal8 = _binary(loader, spath, kind, buf)
            if partial is not None:
                start, count = partial
                data = data[start : start + count]
            buf.append(label + (b" ~{%d}\r\n" if literal8 else b" {%d}\r\n") % len(data) + data)
        elif name == "BINARY.SIZE":
            if item[3] in ("", "TEXT"):
                data, _literal8 = _binary(loader, item[2], item[3], buf)
            else:  # of a header: as BODY[] gives it
                from pyimap.message import section_bytes  # noqa: PLC0415 lazy

                data = section_bytes(loader.part(), item[2], item[3], item[4]) or b""
            buf.append(item[1] + b" %d" % len(data))
    buf.append(b")\r\n")
    out.append(b"".join(buf))
    return out


class FetchFailed(Exception):
    """A message's FETCH response cannot be completed (RFC 3516 UNKNOWN-CTE, invalid
    encoded data): ``code`` and ``text`` for the tagged NO, ``done`` the items given
    before the failure (``* n FETCH (done)`` is sent, as Dovecot does)."""

    def __init__(self, code: str, text: str, done: bytes) -> None:
        super().__init__(text)
        self.code, self.text, self.done = code, text, done


def _binary(loader: _Loader, path: list[int], kind: str, buf: list) -> tuple[bytes, bool]:
    from pyimap.message import BinaryError, binary_section  # noqa: PLC0415 lazy

    try:
        return binary_section(loader.part(), path, kind)
    except BinaryError as exc:
        done = b"".join(buf)
        if done.startswith(b"* "):
            done = done.partition(b" FETCH (")[2]
        raise FetchFailed(exc.code, str(exc), done.rstrip(b" ")) from None


_NIL_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
_EMPTY_BODY = b'("text" "plain" NIL NIL NIL "7bit" 0 0'


def render_expunged(sel, e, uid: int, seq: int, items, flags: str) -> list:
    """The FETCH response for a message expunged by another session that this
    one has not been told of (RFC 2180 4.1.2): what the index entry ``e`` still
    says (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ, a cached ENVELOPE),
    NIL for the message text, an empty text/plain structure (as Dovecot)."""
    buf = []
    for item in items:
        name = item[0]
        if name in _FROM_INDEX:
            buf.append(_from_index(name, e, uid, flags))
        elif name == "ENVELOPE":
            buf.append(b"ENVELOPE " + _ENV_CACHE.get((sel.index.dir, e.base), _NIL_ENVELOPE))
        elif name == "BODYSTRUCTURE":
            buf.append(b"BODYSTRUCTURE " + _EMPTY_BODY + b" NIL NIL NIL NIL)")
        elif name == "BODY":
            buf.append(b"BODY " + _EMPTY_BODY + b")")
        elif name in ("RFC822", "RFC822.TEXT", "RFC822.HEADER"):
            buf.append(name.encode() + b" NIL")
        elif name == "BINARY.SIZE":
            buf.append(item[1] + b" 0")
        else:  # BODY[...], BINARY[...]
            buf.append(item[1] + b" NIL")
    return [b"* %d FETCH (" % seq + b" ".join(buf) + b")\r\n"]
