"""Message structure for FETCH and SEARCH: headers, ENVELOPE, BODYSTRUCTURE, sections.

Messages sit in the Maildir with LF line ends; IMAP sees them with CRLF.
Everything here works on the CRLF form (``to_crlf``), so sizes, line
counts and partial ranges are the ones the client sees.  The MIME parser
is our own and bounded (Dovecot CVE-2020-12100, CVE-2024-23184): nesting
depth, part count and header count are capped; beyond a cap the rest is
treated as opaque text.  No ``email`` import: start-up cost matters.
"""

from __future__ import annotations

import base64
import binascii
import re
from itertools import islice

from pyimap.parser import nstring, quote

MAX_DEPTH = 20
MAX_PARTS = 2000
MAX_HEADERS = 2000
READ_CHUNK = 1 << 16


def to_crlf(data: bytes) -> bytes:
    if b"\n" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def read_crlf(path) -> bytes:
    with open(path, "rb") as fh:
        return to_crlf(fh.read())


def read_header(path, limit: int = 1 << 20) -> bytes:
    """Only the header block of the message file (CRLF form, with the blank line)."""
    with open(path, "rb") as fh:
        data = b""
        while len(data) < limit:
            chunk = fh.read(8192)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"\n") or data.startswith(b"\r\n"):
                break
            if b"\n\n" in data or b"\n\r\n" in data:
                break
    return split_header(to_crlf(data))[0]


_HEADER_CACHE: dict = {}
_HEADER_CACHE_MAX = 50_000


def cached_headers(key, path) -> Headers:
    """Parsed headers of a message file, cached per process by ``key`` (folder, base name).

    A Maildir message never changes once delivered (only its name does), so
    the base name is a safe key.
    """
    h = _HEADER_CACHE.get(key)
    if h is None:
        h = Headers(read_header(path))
        if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = h
    return h


def known_headers(key) -> Headers | None:
    """The headers ``cached_headers`` keeps for ``key``, or None: no file is named or read."""
    return _HEADER_CACHE.get(key)


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body)."""
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    i = data.find(b"\r\n\r\n")
    if i < 0:
        return data, b""
    return data[: i + 4], data[i + 4 :]


def header_lines(header: bytes) -> list[tuple[str, bytes]]:
    """[(lowercase field name, raw field bytes incl. continuation lines and CRLF)]."""
    out: list[tuple[str, bytes]] = []
    for line in header.split(b"\r\n")[:-1] if header.endswith(b"\r\n") else header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line + b"\r\n")
            continue
        colon = line.find(b":")
        if colon <= 0:
            continue
        if len(out) >= MAX_HEADERS:
            break
        out.append((line[:colon].strip().decode("latin-1").lower(), line + b"\r\n"))
    return out


def header_value(raw: bytes) -> bytes:
    """The unfolded value of one raw field."""
    value = raw.split(b":", 1)[1]
    value = value.replace(b"\r\n", b"")
    return value.strip(b" \t")


class Headers:
    __slots__ = ("raw", "lines", "_map", "_search")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.lines = header_lines(raw)
        self._map: dict[str, bytes] = {}
        self._search: dict[str, list[str]] | None = None
        for name, line in self.lines:
            if name not in self._map:
                self._map[name] = header_value(line)

    def search_values(self, name: str) -> list[str]:
        """Every ``name`` field decoded (RFC 2047) and lower-cased, as SEARCH
        compares them; kept with the cached headers, so repeated searches
        over a folder decode each field once."""
        if self._search is None:
            self._search = {}
        values = self._search.get(name)
        if values is None:
            values = [decoded_lower(raw) for raw in self.get_all(name)]
            self._search[name] = values
        return values

    def search_addresses(self, name: str) -> list[str]:
        """Every ``name`` address field as ENVELOPE parses it, for SEARCH FROM/TO/CC/BCC:
        ``real name <mailbox@host>, ...`` (names RFC 2047-decoded, group names kept),
        lower-cased, so that comments and folding inside an address do not hide it."""
        if self._search is None:
            self._search = {}
        key = "@" + name
        values = self._search.get(key)
        if values is None:
            values = []
            for raw in self.get_all(name):
                parts = []
                for personal, _adl, mailbox, host in parse_addresses(raw):
                    if mailbox is None:
                        continue  # end of a group
                    if host is None:
                        parts.append(decoded_lower(mailbox))  # a group's name
                        continue
                    spec = (mailbox + b"@" + host).decode("utf-8", "replace").lower()
                    parts.append(f"{decoded_lower(personal)} <{spec}>" if personal else f"<{spec}>")
                values.append(", ".join(parts))
            self._search[key] = values
        return values

    def get(self, name: str) -> bytes | None:
        return self._map.get(name)

    def get_all(self, name: str) -> list[bytes]:
        return [header_value(line) for n, line in self.lines if n == name]


# -- RFC 2047 decoding (for SEARCH) -------------------------------------------------


def decoded_lower(value: bytes) -> str:
    """A header value as SEARCH compares it: RFC 2047 words decoded, lower case."""
    if b"=?" not in value:
        return value.decode("utf-8", "replace").lower()
    return decode_words(value).lower()


def lenient_b64decode(text: bytes) -> bytes:
    """Base64 decoded as Dovecot decodes it: what is not base64 is skipped, a short end padded."""
    text = re.sub(rb"[^A-Za-z0-9+/]", b"", text)
    text = text[: len(text) - len(text) % 4 if len(text) % 4 == 1 else len(text)]
    return base64.b64decode(text + b"=" * (-len(text) % 4))


_EW = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def decode_words(value: bytes) -> str:
    def one(m):
        charset = m.group(1).decode("ascii", "replace").split("*")[0]
        enc = m.group(2).upper()
        text = m.group(3)
        try:
            if enc == b"B":
                raw = lenient_b64decode(text)
            else:
                raw = binascii.a2b_qp(text.replace(b"_", b" "), header=True)
            return raw.decode(charset, "replace").encode("utf-8")
        except (LookupError, ValueError, binascii.Error):
            return m.group(0)

    value = re.sub(rb"(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)\s+(?==\?)", rb"\1", value)
    return _EW.sub(one, value).decode("utf-8", "replace")


# -- addresses (RFC 5322 3.4, for ENVELOPE) -----------------------------------------

_SPECIALS = set(b'()<>@,;:\\".[]')
# what an address lacks, as Dovecot fills it in (a lone NIL host would read as a group start)
MISSING_MAILBOX, MISSING_DOMAIN = b"MISSING_MAILBOX", b"MISSING_DOMAIN"


def _tokens(value: bytes):
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:  # comment: its text, for an address without a display name
            depth = 0
            text = bytearray()
            while i < n:
                ch = value[i]
                if ch == 0x5C:
                    if i + 1 < n:
                        text.append(value[i + 1])
                    i += 2
                    continue
                if ch == 0x28:
                    depth += 1
                    if depth == 1:
                        i += 1
                        continue
                elif ch == 0x29:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                text.append(ch)
                i += 1
            yield ("c", b" ".join(bytes(text).split()))
        elif c == 0x22:
            out = bytearray()
            i += 1
            while i < n and value[i] != 0x22:
                if value[i] == 0x5C and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            i += 1
            yield ("q", bytes(out))
        elif c == 0x5B:
            j = value.find(b"]", i)
            j = n if j < 0 else j + 1
            yield ("a", value[i:j])
            i = j
        elif c in _SPECIALS:
            yield ("s", bytes([c]))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in b" \t\r\n":
                j += 1
            yield ("a", value[i:j])
            i = j


def parse_addresses(value: bytes) -> list:
    """-> list of (name, adl, mailbox, host); groups as (None, None, name, None) ... (None,)*4."""
    toks = list(islice(_tokens(value), 5000))  # never materialise more than the cap
    out: list = []
    i, n = 0, len(toks)
    in_group = False

    def phrase(ts):
        words = [t[1] for t in ts if t[0] in ("a", "q") or t[1] == b"."]
        joined = b""
        for t in ts:
            if t[0] == "s" and t[1] == b".":
                joined += b"."
            elif t[0] in ("a", "q"):
                joined += (b" " if joined and not joined.endswith(b".") else b"") + t[1]
        return joined if words else None

    def addr_spec(ts):
        ts = [t for t in ts if t[0] != "c"]
        at = None
        for k, t in enumerate(ts):
            if t == ("s", b"@"):
                at = k
        if at is None:
            local, dom = ts, []
        else:
            local, dom = ts[:at], ts[at + 1 :]
        lp = b"".join(t[1] if t[0] != "q" else t[1] for t in local)
        hp = b"".join(t[1] for t in dom)
        return lp or None, hp or None

    def comment_name(ts):
        # "user@host (Real Name)": the last comment names an address that has no
        # display name (RFC 5322 3.4 allows it; Dovecot and mail clients read it so)
        comments = [t[1] for t in ts if t[0] == "c"]
        return comments[-1] if comments and comments[-1] else None

    def bare(ts):
        """An address without angle brackets, None when there is none.  As Dovecot: a lone
        (dot-)atom is a mailbox without its domain; other words without an @ (a phrase, a
        quoted string) a display name without an address; what is missing is MISSING_*."""
        words = [t for t in ts if t[0] != "c"]
        if not words:
            return None
        if ("s", b"@") not in words:
            dot_atom = len(words) % 2 == 1 and all(
                t[0] == "a" if k % 2 == 0 else t == ("s", b".") for k, t in enumerate(words)
            )
            if not dot_atom:
                return (phrase(words), None, MISSING_MAILBOX, MISSING_DOMAIN)
        mb, host = addr_spec(words)
        return (comment_name(ts), None, mb or MISSING_MAILBOX, host or MISSING_DOMAIN)

    while i < n:
        collected = []
        while i < n and toks[i][0] != "s" or (i < n and toks[i][1] in (b".", b"@")):
            collected.append(toks[i])
            i += 1
        if i >= n:
            if collected and (a := bare(collected)):
                out.append(a)
            break
        t = toks[i][1]
        if t == b":" and not in_group:
            out.append((None, None, phrase(collected) or b"", None))
            in_group = True
            i += 1
        elif t == b"<":
            i += 1
            inner = []
            while i < n and toks[i] != ("s", b">"):
                if toks[i][0] != "c":
                    inner.append(toks[i])
                i += 1
            i += 1
            adl = None
            if inner and inner[0] == ("s", b"@") and ("s", b":") in inner:
                k = inner.index(("s", b":"))
                adl = b"".join(x[1] for x in inner[:k])
                inner = inner[k + 1 :]
            mb, host = addr_spec(inner)
            out.append((phrase(collected) or None, adl, mb or MISSING_MAILBOX, host or MISSING_DOMAIN))
            while i < n and toks[i][0] != "s":
                i += 1
        elif t in (b",", b";"):
            if collected and (a := bare(collected)):
                out.append(a)
            if t == b";" and in_group:
                out.append((None, None, None, None))
                in_group = False
            i += 1
        else:
            i += 1
    if in_group:
        out.append((None, None, None, None))
    return out


def _addr_list(addrs: list) -> bytes:
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(b"(" + b" ".join(_env_strings(a)) + b")" for a in addrs) + b")"


def _env_strings(address) -> list[bytes]:
    name, *rest = address
    return [nstring(_for_humans(name))] + [nstring(_no_nul(x)) for x in rest]


_REPLACEMENT = "\ufffd".encode()
_LWSP = re.compile(rb"[ \t\r\n]+")


def _no_nul(value: bytes | None) -> bytes | None:
    """No NUL in an IMAP string (RFC 3501 CHAR8): U+FFFD in its place, as Dovecot."""
    return value if value is None or b"\0" not in value else value.replace(b"\0", _REPLACEMENT)


def _for_humans(value: bytes | None) -> bytes | None:
    """A subject or display name as Dovecot shows it: each run of white space one space, none
    at either end."""
    return value if value is None else _no_nul(_LWSP.sub(b" ", value).strip(b" "))


def _last(headers: Headers, name: str) -> bytes | None:
    """The value of the last ``name`` field, unfolded, leading white space dropped (the trailing
    kept), as Dovecot's ENVELOPE takes it."""
    for n, raw in reversed(headers.lines):
        if n == name:
            return _no_nul(raw.split(b":", 1)[1].replace(b"\r\n", b"").lstrip(b" \t"))
    return None


def envelope(headers: Headers) -> bytes:
    """RFC 3501 ENVELOPE as Dovecot 2.3 writes it: of repeated fields the last Date, Subject,
    In-Reply-To and Message-ID, every address field's lists joined; Sender and Reply-To
    default to From."""

    def addresses(name: str) -> list:
        return [a for value in headers.get_all(name) for a in parse_addresses(value)]

    frm = addresses("from")
    subject = _last(headers, "subject")
    fields = [
        nstring(_last(headers, "date")),
        nstring(_for_humans(subject)),
        _addr_list(frm),
        _addr_list(addresses("sender") or frm),
        _addr_list(addresses("reply-to") or frm),
        _addr_list(addresses("to")),
        _addr_list(addresses("cc")),
        _addr_list(addresses("bcc")),
        nstring(_last(headers, "in-reply-to")),
        nstring(_last(headers, "message-id")),
    ]
    return b"(" + b" ".join(fields) + b")"


# -- MIME structure --------------------------------------------------------------------


def _parse_ctype(value: bytes | None):
    """b'text/plain; charset="x"' -> (type, subtype, [(name, value), ...])."""
    if value is None:
        return None, None, []
    main, params = _split_params(value)
    if b"/" in main:
        t, s = main.split(b"/", 1)
        t, s = t.strip(), s.strip()
        if t and s:
            return t, s, params
    return None, None, params


def _split_params(value: bytes):
    parts = []
    cur = bytearray()
    inq = False
    esc = False
    for c in value:
        if esc:
            cur.append(c)
            esc = False
            continue
        if c == 0x5C and inq:
            cur.append(c)
            esc = True
            continue
        if c == 0x22:
            inq = not inq
        if c == 0x3B and not inq:
            parts.append(bytes(cur))
            cur = bytearray()
            continue
        cur.append(c)
    parts.append(bytes(cur))
    main = parts[0].strip()
    params = []
    for p in parts[1:]:
        name, eq, val = p.partition(b"=")
        name = name.strip()
        if not eq or not name:
            continue
        val = val.strip()
        if val.startswith(b'"'):
            inner = val[1:]
            end = inner.rfind(b'"')
            inner = inner[:end] if end >= 0 else inner
            val = re.sub(rb"\\(.)", rb"\1", inner)
        params.append((name, val))
    return main, params


def _plist(params) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(quote(n) + b" " + quote(v) for n, v in params) + b")"


def _lines(body: bytes) -> int:
    # Dovecot counts line ends: an unterminated last line (the CRLF before a
    # boundary belongs to the boundary) does not count.
    return body.count(b"\n")


class Part:
    """One MIME part.  The whole tree shares the message's bytes: a part is a range
    of them (a copy per level made a 20-deep message cost 40 times its size)."""

    __slots__ = ("header", "headers", "type", "subtype", "params", "children", "message", "_data", "_start", "_end")

    def __init__(
        self,
        data: bytes,
        depth: int = 0,
        default=(b"text", b"plain"),
        counter=None,
        start: int = 0,
        end: int | None = None,
    ) -> None:
        counter = counter if counter is not None else [0]
        counter[0] += 1
        end = len(data) if end is None else end
        body_start = _header_end(data, start, end)
        self.header = data[start:body_start]  # headers of different parts never overlap
        self._data, self._start, self._end = data, body_start, end
        self.headers = Headers(self.header)
        t, s, params = _parse_ctype(self.headers.get("content-type"))
        if t is None:
            t, s = default
        if t.lower() == b"text" and not any(n.lower() == b"charset" for n, _v in params):
            params = params + [(b"charset", b"us-ascii")]  # RFC 2045 5.2 default, as Dovecot reports it
        self.type, self.subtype, self.params = t, s, params
        self.children: list[Part] = []
        self.message: Part | None = None
        lt = t.lower()
        if depth >= MAX_DEPTH or counter[0] > MAX_PARTS:
            if lt in (b"multipart", b"message"):
                self.type, self.subtype, self.params = b"application", b"octet-stream", []
            return
        if lt == b"multipart":
            boundary = None
            for n, v in params:
                if n.lower() == b"boundary":
                    boundary = v
            child_default = (b"message", b"rfc822") if s.lower() == b"digest" else (b"text", b"plain")
            for chunk_start, chunk_end in _split_multipart(data, body_start, end, boundary):
                self.children.append(Part(data, depth + 1, child_default, counter, chunk_start, chunk_end))
                if counter[0] > MAX_PARTS:
                    break
            if not self.children:
                self.children.append(Part(b"", depth + 1, child_default, counter))
        elif lt == b"message" and s.lower() in (b"rfc822", b"global"):
            self.message = Part(data, depth + 1, (b"text", b"plain"), counter, body_start, end)

    @property
    def body(self) -> bytes:
        return self._data[self._start : self._end]

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    def _ext_common(self) -> list[bytes]:
        g = self.headers.get
        disp = g("content-disposition")
        if disp is None:
            d = b"NIL"
        else:
            main, params = _split_params(disp)
            d = b"(" + quote(main) + b" " + _plist(params) + b")" if main else b"NIL"
        lang = g("content-language")
        if lang is None:
            lg = b"NIL"
        else:
            langs = [x.strip() for x in re.split(rb"[,\s]+", lang) if x.strip()]
            if not langs:
                lg = b"NIL"
            else:
                lg = b"(" + b" ".join(quote(x) for x in langs) + b")"
        return [d, lg, nstring(g("content-location"))]

    def structure(self, ext: bool = True) -> bytes:
        if self.children:
            inner = b"".join(c.structure(ext) for c in self.children)
            items = [inner + b" " + quote(self.subtype)]
            if ext:
                items += [_plist(self.params)] + self._ext_common()
            return b"(" + b" ".join(items) + b")"
        g = self.headers.get
        enc = g("content-transfer-encoding")
        fields = [
            quote(self.type),
            quote(self.subtype),
            _plist(self.params),
            nstring(g("content-id")),
            nstring(g("content-description")),
            quote(enc.strip() if enc else b"7bit"),
            str(self._end - self._start).encode(),
        ]
        lines = self._data.count(b"\n", self._start, self._end)  # as _lines(self.body), without the copy
        if self.message is not None:
            fields += [envelope(self.message.headers), self.message.structure(ext), str(lines).encode()]
        elif self.type.lower() == b"text":
            fields.append(str(lines).encode())
        if ext:
            fields += [nstring(g("content-md5"))] + self._ext_common()
        return b"(" + b" ".join(fields) + b")"

    # -- sections --

    def find(self, path: list[int]) -> Part | None:
        """The part a section number names (RFC 3501 6.4.5), from this message."""
        part = self
        message_level = True  # ``part`` is a message: its part 1 is its body when single-part
        reached_as_child = False
        for n in path:
            if message_level and not part.children:
                if n != 1:
                    return None
                message_level = False
                continue
            if not part.children and part.message is not None:
                part = part.message  # a message/rfc822 part: numbers go into the message it holds
                reached_as_child = False
                if not part.children:
                    if n != 1:
                        return None
                    message_level = False
                    continue
            if not part.children:
                # a leaf reached as a part of a multipart is its own part 1 (as Dovecot answers)
                if n == 1 and reached_as_child:
                    reached_as_child = False  # once: [1.1.1] of a leaf is no part (as Dovecot)
                    continue
                return None
            if not 0 < n <= len(part.children):
                return None
            part = part.children[n - 1]
            message_level = False
            reached_as_child = True
        return part


def _header_end(data: bytes, start: int, end: int) -> int:
    """Where the body of ``data[start:end]`` begins (as ``split_header``)."""
    if data.startswith(b"\r\n", start, end):
        return start + 2
    i = data.find(b"\r\n\r\n", start, end)
    return end if i < 0 else i + 4


def _split_multipart(data: bytes, first: int, n: int, boundary: bytes | None) -> list[tuple[int, int]]:
    """The (start, end) ranges of the body parts in the multipart body ``data[first:n]``."""
    if not boundary:
        return []
    delim = b"--" + boundary
    out: list[tuple[int, int]] = []
    pos = first
    start = None
    while pos <= n:
        # a delimiter line starts at the beginning of the body or after CRLF
        if data.startswith(delim, pos, n):
            after = pos + len(delim)
            closing = data.startswith(b"--", after, n)
            eol = data.find(b"\r\n", after, n)
            if eol < 0:
                eol = n
            if start is not None:
                end = pos - 2 if pos - first >= 2 and data.startswith(b"\r\n", pos - 2, pos) else pos
                out.append((start, max(start, end)))
                if len(out) >= MAX_PARTS:
                    return out
            if closing:
                return out
            start = min(n, eol + 2)
            pos = start
            continue
        nxt = data.find(b"\r\n" + delim, pos, n)
        if nxt < 0:
            break
        pos = nxt + 2
    if start is not None:
        out.append((start, n))
    return out


def search_texts(data: bytes) -> tuple[str, str]:
    """What SEARCH BODY and TEXT look in, as Dovecot: (the bodies of the text parts, their
    transfer encoding and charset decoded; the same with the header fields of every part and
    enclosed message, RFC 2047 decoded), in lower case.  Other parts (images, archives) are
    not text: their bytes never match.  ``data`` is a whole message in CRLF form."""
    bodies: list[str] = []
    heads: list[str] = []
    root = Part(data)
    stack = [root]
    while stack:
        part = stack.pop()
        if part is not root:
            heads.append(decoded_lower(part.header))
        if part.children:
            stack.extend(reversed(part.children))
        elif part.message is not None:
            stack.append(part.message)
        elif part.type.lower() in (b"text", b"message"):
            bodies.append(_decoded_text(part).lower())
    body = "\n".join(bodies)
    return body, "\n".join(heads) + "\n" + body


def _decoded_text(part: Part) -> str:
    raw = part.body
    enc = (part.headers.get("content-transfer-encoding") or b"").strip().lower()
    try:
        if enc == b"base64":
            raw = lenient_b64decode(raw)
        elif enc == b"quoted-printable":
            raw = binascii.a2b_qp(raw)
    except (ValueError, binascii.Error):
        pass
    charset = next((v for n, v in part.params if n.lower() == b"charset"), b"utf-8")
    try:
        return raw.decode(charset.decode("ascii", "replace").strip(), "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


def section_bytes(root: Part, path: list[int], kind: str, fields: list[str]) -> bytes | None:
    """The bytes of BODY[section]; None when the section does not exist (-> empty)."""
    part = root.find(path) if path else root
    if part is None:
        return None
    if kind == "MIME":
        return part.header if path else None
    if kind in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"):
        if path:
            if part.message is None:
                return None
            part = part.message
        if kind == "TEXT":
            return part.body
        if kind == "HEADER":
            return part.header
        want = {f.lower() for f in fields}
        keep = kind == "HEADER.FIELDS"
        lines = [raw for name, raw in part.headers.lines if (name in want) == keep]
        return b"".join(lines) + b"\r\n"
    if not path:
        return part.header + part.body
    return part.body


# -- BINARY (RFC 3516): sections with their content-transfer-encoding undone -----------


class BinaryError(Exception):
    """A BINARY fetch that cannot be answered: ``code`` is the IMAP response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


_CTE_TOKEN = re.compile(rb"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f-\xff]*")
_CTE_KINDS = {b"7bit": "", b"8bit": "", b"binary": "", b"quoted-printable": "qp", b"base64": "b64"}
_B64_SPACE = b" \t\r\n"
_QP_LINE_END = re.compile(rb"[ \t]*\r?\n")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})?")


def _cte(headers: Headers) -> str:
    """'' (no decoding), 'qp' or 'b64' from the last Content-Transfer-Encoding field, as
    Dovecot reads it (leading space and comments skipped, the first token, any case);
    an empty or unknown one raises BinaryError UNKNOWN-CTE."""
    values = headers.get_all("content-transfer-encoding")
    if not values:
        return ""
    value = values[-1]
    while True:
        value = value.lstrip(b" \t\r\n")
        if not value.startswith(b"("):
            break
        depth, i = 0, 0
        while i < len(value):
            c = value[i]
            if c == 0x5C:
                i += 2
                continue
            depth += c == 0x28
            depth -= c == 0x29
            i += 1
            if depth == 0:
                break
        value = value[i:]
    m = _CTE_TOKEN.match(value)
    kind = _CTE_KINDS.get(m.group(0).lower() if m else b"")
    if kind is None:
        raise BinaryError("UNKNOWN-CTE", "Unknown Content-Transfer-Encoding")
    return kind


def _bad_data() -> BinaryError:
    return BinaryError("PARSE", "Invalid data in MIME part")


def decode_base64(data: bytes) -> bytes:
    """Base64 as Dovecot's decoder takes it: white space skipped, anything else outside
    the alphabet, or data after the padding, is invalid; a missing final padding is
    tolerated (Dovecot 2.3 drops the connection there)."""
    text = data.translate(None, _B64_SPACE)
    if len(text) % 4 and b"=" not in text:
        if len(text) % 4 == 1:
            raise _bad_data()
        text += b"=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise _bad_data() from None


def decode_qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7) of a CRLF text: white space at line ends dropped,
    '=' at a line end joins lines, hard line breaks stay CRLF, '=' without two hex
    digits is invalid (as in Dovecot)."""
    out = bytearray()
    pos, n = 0, len(data)
    while pos < n:
        m = _QP_LINE_END.search(data, pos)
        end, nxt = (m.start(), m.end()) if m else (n, n)
        line = data[pos:end]
        if not m:
            line = line.rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        if b"=" in line:
            pieces = _QP_ESCAPE.split(line)
            # split gives text, hex-or-None, text, ...
            for i, piece in enumerate(pieces):
                if i % 2 == 0:
                    out += piece
                elif piece is None:
                    raise _bad_data()
                else:
                    out.append(int(piece, 16))
        else:
            out += line
        if m and not soft:
            out += b"\r\n"
        pos = nxt
    return bytes(out)


def _binary_header(header: bytes) -> bytes:
    """A part's header for BINARY once its body is decoded: its Content-Transfer-Encoding
    fields dropped, 'Content-Transfer-Encoding: binary' added last (as Dovecot)."""
    kept = [raw for name, raw in header_lines(header) if name != "content-transfer-encoding"]
    return b"".join(kept) + b"Content-Transfer-Encoding: binary\r\n\r\n"


def binary_bytes(part: Part, with_header: bool) -> tuple[bytes, bool]:
    """The part decoded for BINARY (RFC 3516): ``(data, literal8)``.  A multipart keeps
    its boundaries and each body part its header (rewritten where decoded); ``literal8``
    is true when something was decoded or the data holds NUL (Dovecot's choice).
    Raises BinaryError (UNKNOWN-CTE, or PARSE for invalid encoded data)."""
    out: list[bytes] = []
    flags = [False]  # decoded or NUL seen

    def add(p: Part, head: bool) -> None:
        kind = _cte(p.headers)
        data = p._data
        if b"\0" in p.header:
            flags[0] = True  # even when the header is not sent (as Dovecot)
        if head:
            out.append(_binary_header(p.header) if kind else p.header)
        if p.children and p.children[0]._data is data:  # (a multipart without parts has a stand-in)
            pos = p._start
            for child in p.children:
                child_start = child._start - len(child.header)
                out.append(data[pos:child_start])
                add(child, True)
                pos = child._end
            out.append(data[pos : p._end])
            return
        if p.message is not None:
            add(p.message, True)
            return
        body = data[p._start : p._end]
        if p.children:
            out.append(body)
            return
        if not body:
            return
        if kind == "b64":
            body = decode_base64(body)
            flags[0] = True
        elif kind == "qp":
            body = decode_qp(body)
            flags[0] = True
        elif b"\0" in body:
            flags[0] = True
        out.append(body)

    add(part, with_header)
    return b"".join(out), flags[0]


def binary_section(root: Part, path: list[int], kind: str) -> tuple[bytes, bool]:
    """BINARY[section] (``kind`` '' or TEXT; other kinds are fetched as BODY[...] is):
    (data, literal8); a part that does not exist is empty."""
    if kind == "TEXT":
        part = root.find(path) if path else root
        if part is not None and path:
            part = part.message
        if part is None:
            return b"", False
        return binary_bytes(part, False)
    if not path:
        return binary_bytes(root, True)
    part = root.find(path)
    if part is None:
        return b"", False
    return binary_bytes(part, False)
