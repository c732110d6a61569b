"""SEARCH keys (RFC 3501 6.4.4, 9 ``search-key``; RFC 7162 MODSEQ) compiled to predicates.

``compile_keys(tokens, charset)`` turns the tokenized arguments into a
function of a ``Candidate`` (one message as the session sees it), which
loads headers or text only if a key needs them.  Text keys are
case-insensitive substring matches over decoded (RFC 2047) header values
(for FROM/TO/CC/BCC also over the addresses as ENVELOPE parses them), and
over the text parts of the body, decoded (``message.search_texts``).
"""

from __future__ import annotations

import calendar

from pyimap.message import Headers, cached_headers, decoded_lower, known_headers, read_crlf, read_header, search_texts
from pyimap.parser import Atom, ParseError, is_number, parse_sequence_set, seq_contains

MONTHS = {
    m: i for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)
}
MAX_KEYS = 1000


def parse_date(token) -> int:
    """``1-Feb-1994`` -> epoch seconds of that day's midnight UTC."""
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    if not isinstance(token, str):
        raise ParseError("Bad date")
    parts = token.split("-")
    if len(parts) != 3 or not is_number(parts[0]) or not is_number(parts[2]) or parts[1].upper() not in MONTHS:
        raise ParseError("Bad date")
    day, month, year = int(parts[0]), MONTHS[parts[1].upper()], int(parts[2])
    if not (1 <= day <= 31 and 1000 <= year <= 9999):
        raise ParseError("Bad date")
    return calendar.timegm((year, month, day, 0, 0, 0))


def day_of(ts: int) -> int:
    return ts - ts % 86400


def sent_date(value: bytes | None) -> int | None:
    if not value:
        return None
    from email.utils import parsedate_tz  # noqa: PLC0415 lazy

    try:
        t = parsedate_tz(value.decode("ascii", "replace"))
        if t is None:
            return None
        ts = calendar.timegm(t[:6] + (0, 0, 0))
        return day_of(ts)  # the date as written, ignoring the zone (RFC 3501)
    except (ValueError, OverflowError, TypeError):
        return None


FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
}

ADDRESS_HEADERS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
# whose value is also matched as ENVELOPE parses it (display names, mailbox@host)
PARSED_ADDRESSES = frozenset(("from", "to", "cc", "bcc"))


class Compiler:
    def __init__(self, tokens: list, charset: str = "UTF-8", saved: frozenset = frozenset()) -> None:
        self.saved = saved  # RFC 5182: the UIDs ``$`` names
        self.tokens = tokens
        self.pos = 0
        self.charset = charset
        self.count = 0
        self.needs_text = False
        self.needs_headers = False
        self.uses_modseq = False

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def take(self):
        if self.pos >= len(self.tokens):
            raise ParseError("Missing search argument")
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def string(self) -> str:
        t = self.take()
        if isinstance(t, list):
            raise ParseError("Expected a string")
        if isinstance(t, bytes):
            try:
                return t.decode(self.charset)
            except (UnicodeDecodeError, LookupError):
                raise ParseError("String not in the given charset") from None
        return str(t)

    def number(self) -> int:
        t = self.take()
        if not isinstance(t, Atom) or not is_number(t):
            raise ParseError("Expected a number")
        return int(t)

    def all(self):
        preds = []
        while self.more():
            preds.append(self.key(0))
        if not preds:
            raise ParseError("Missing search key")
        return _and(preds)

    def key(self, depth: int):
        self.count += 1
        if self.count > MAX_KEYS or depth > 40:
            raise ParseError("Search too complex")
        t = self.take()
        if isinstance(t, list):
            if not t:
                raise ParseError("Empty parenthesised search key")
            sub = Compiler(t, self.charset)
            sub.count = self.count
            preds = []
            while sub.more():
                preds.append(sub.key(depth + 1))
            self.count = sub.count
            self.needs_text |= sub.needs_text
            self.needs_headers |= sub.needs_headers
            self.uses_modseq |= sub.uses_modseq
            return _and(preds)
        if isinstance(t, bytes) or not isinstance(t, Atom):
            raise ParseError("Bad search key")
        k = t.upper()
        if k == "ALL":
            return lambda m: True
        if k in FLAG_KEYS:
            flag, want = FLAG_KEYS[k]
            return lambda m: (flag in m.flags) == want
        if k == "KEYWORD" or k == "UNKEYWORD":
            kw = str(self.take())
            want = k == "KEYWORD"
            kwl = kw.lower()
            return lambda m: any(f.lower() == kwl for f in m.flags) == want
        if k == "NEW":
            return lambda m: m.recent and "\\Seen" not in m.flags
        if k == "OLD":
            return lambda m: not m.recent
        if k == "RECENT":
            return lambda m: m.recent
        if k in ("BEFORE", "ON", "SINCE"):
            d = parse_date(self.take())
            if k == "BEFORE":
                return lambda m: day_of(m.idate) < d
            if k == "ON":
                return lambda m: day_of(m.idate) == d
            return lambda m: day_of(m.idate) >= d
        if k in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            d = parse_date(self.take())
            self.needs_headers = True

            def sent(m, k=k, d=d):
                s = sent_date(m.headers().get("date"))
                if s is None:
                    s = day_of(m.idate)
                return s < d if k == "SENTBEFORE" else s == d if k == "SENTON" else s >= d

            return sent
        if k == "LARGER":
            n = self.number()
            return lambda m: m.size > n
        if k == "SMALLER":
            n = self.number()
            return lambda m: m.size < n
        if k in ADDRESS_HEADERS:
            name = ADDRESS_HEADERS[k]
            return self._header(name, self.string(), addresses=name in PARSED_ADDRESSES)
        if k == "HEADER":
            name = self.string()
            return self._header(name.lower(), self.string())
        if k == "BODY":
            needle = self.string().lower()
            self.needs_text = True
            return lambda m: needle in m.texts()[0]
        if k == "TEXT":
            needle = self.string().lower()
            self.needs_text = True
            return lambda m: needle in m.header_text_lower() or needle in m.texts()[1]
        if k == "NOT":
            p = self.key(depth + 1)
            return lambda m: not p(m)
        if k == "OR":
            a = self.key(depth + 1)
            b = self.key(depth + 1)
            return lambda m: a(m) or b(m)
        if k == "$" and isinstance(t, Atom):
            saved = self.saved
            return lambda m: m.uid in saved
        if k == "UID":
            t2 = self.take()
            if isinstance(t2, Atom) and str(t2) == "$":
                saved = self.saved
                return lambda m: m.uid in saved
            ranges = parse_sequence_set(str(t2))
            return lambda m: seq_contains(ranges, m.uid, m.max_uid)
        if k == "MODSEQ":
            # MODSEQ [entry-name entry-type] value
            t2 = self.take()
            if isinstance(t2, bytes) or (isinstance(t2, Atom) and not is_number(t2)):
                self.take()
                t2 = self.take()
            if not isinstance(t2, Atom) or not is_number(t2):
                raise ParseError("Bad MODSEQ")
            n = int(t2)
            self.uses_modseq = True
            return lambda m: m.modseq >= n
        if k[:1].isdigit() or k[:1] == "*":
            ranges = parse_sequence_set(str(t))
            return lambda m: seq_contains(ranges, m.seq, m.max_seq)
        raise ParseError(f"Unknown search key {t[:40]}")

    def _header(self, name: str, needle: str, addresses: bool = False):
        self.needs_headers = True
        needle = needle.lower()

        def match(m):
            headers = m.headers()
            values = headers.search_values(name)
            if not values:
                return False
            if not needle:
                return True
            for v in values:  # a loop, not any(): this runs once per message of the folder
                if needle in v:
                    return True
            # "FROM user@host" finds <user (comment)@ (comment) host> too (RFC 3501 6.4.4:
            # the string is looked for in the envelope's address field)
            return addresses and any(needle in v for v in headers.search_addresses(name))

        return match


def _and(preds):
    if len(preds) == 1:
        return preds[0]
    return lambda m: all(p(m) for p in preds)


class Candidate:
    """One message as SEARCH sees it; headers and text loaded on demand.

    ``path``: the message file, or None to name it from ``entry`` (an index
    entry) and ``key`` (folder, base name) only when a key reads the file:
    most searches over a big folder look at flags alone."""

    __slots__ = (
        "seq",
        "uid",
        "flags",
        "recent",
        "size",
        "idate",
        "modseq",
        "max_seq",
        "max_uid",
        "_path",
        "_headers",
        "_body",
        "_htext",
        "_key",
        "_entry",
    )

    def __init__(self, seq, uid, flags, recent, size, idate, modseq, max_seq, max_uid, path, key=None, entry=None):
        self._key = key
        self.seq, self.uid, self.flags, self.recent = seq, uid, flags, recent
        self.size, self.idate, self.modseq = size, idate, modseq
        self.max_seq, self.max_uid = max_seq, max_uid
        self._path = path
        self._entry = entry
        self._headers = self._body = self._htext = None

    @property
    def path(self) -> str:
        if self._path is None:
            e = self._entry
            self._path = f"{self._key[0]}/{e.sub}/{e.name}"
        return self._path

    def headers(self):
        if self._headers is None:
            try:
                if self._key is not None:
                    self._headers = known_headers(self._key) or cached_headers(self._key, self.path)
                else:
                    self._headers = Headers(read_header(self.path))
            except FileNotFoundError:
                raise  # renamed meanwhile: the caller looks it up again
            except OSError:
                self._headers = Headers(b"")
        return self._headers

    def texts(self) -> tuple[str, str]:
        """(what BODY searches, what TEXT searches besides the header): ``message.search_texts``."""
        if self._body is None:
            try:
                self._body = search_texts(read_crlf(self.path))
            except FileNotFoundError:
                raise
            except OSError:
                self._body = ("", "")
        return self._body

    def header_text_lower(self) -> str:
        if self._htext is None:
            self._htext = "\n".join(decoded_lower(line) for _n, line in self.headers().lines)
        return self._htext


def compile_keys(tokens: list, charset: str = "UTF-8", saved: frozenset = frozenset()):
    c = Compiler(tokens, charset, saved)
    pred = c.all()
    return pred, c
