"""APPEND with its extensions: MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and the
literal8 of BINARY (RFC 3516).

A mixin of ``pyimap.imap_server.IMAPServer``; it runs in a Job (the core's
``IO_STORE``).  Every message of the command is spooled into tmp/ first
(big literals were spooled while they arrived, see ``core.SpoolBuffer``),
then all of them get their UIDs in one save of the mailbox's index
(``Folder.add_many``): a failure anywhere leaves none of them behind.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pyimap.core import CommandContext
from pyimap.formats import parse_date_time, parse_flags, uid_set_text
from pyimap.parser import Atom, Literal8, LiteralBytes, ParseError
from pyimap.storage import MessageSpool

# RFC 5092 IMAP URL of a message or part: /mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]
_URL_PATH = re.compile(
    r"^/(?P<mbox>[^;]*)(?:;UIDVALIDITY=(?P<uidvalidity>[0-9]{1,10}))?"
    r"/;UID=(?P<uid>[0-9]{1,10})(?P<tail>(?:/;.*)?)$",
    re.IGNORECASE | re.DOTALL,
)
_URL_RELATIVE = re.compile(r"^/?;UID=(?P<uid>[0-9]{1,10})(?P<tail>(?:/;.*)?)$", re.IGNORECASE | re.DOTALL)
_URL_TAIL = re.compile(
    r"^(?:/;SECTION=(?P<section>[^/]*))?(?:/;PARTIAL=(?P<start>[0-9]{1,10})(?:\.(?P<count>[0-9]{1,10}))?)?$",
    re.IGNORECASE | re.DOTALL,
)
COPY_CHUNK = 1 << 16


class AppendRefused(Exception):
    """The APPEND is answered NO (nothing is kept): ``text`` follows 'NO '."""


class AppendCommands(CommandContext):
    user: str | None

    def cmd_append(self, tag, args):
        assert self.store is not None  # logged in: AUTH or SELECTED
        try:
            self._append(tag, args)
        except AppendRefused as exc:
            _abort_all(args)
            self._tagged(tag, f"NO {exc}")
        except BaseException:
            _abort_all(args)
            raise

    def _append(self, tag, args) -> None:
        store = self.store
        assert store is not None
        self._need(args, 2)
        name = self._mailbox(args[0])
        messages = _parse_messages(args[1:])
        if not store.exists(name):
            raise AppendRefused("[TRYCREATE] Mailbox does not exist")
        spools: list[Any] = []
        try:
            adds = []
            for flags_tok, date_tok, data in messages:
                idate = parse_date_time(date_tok.decode("ascii", "replace")) if date_tok is not None else None
                letters, kws = parse_flags(flags_tok or [])
                spool = self._catenate(data) if isinstance(data, tuple) else self._spooled(data)
                spools.append(spool)
                path = spool.finish(mtime=idate)
                if spool.bare_lf and (isinstance(data, Literal8) or isinstance(data, tuple) and data[1]):
                    # A Maildir keeps LF line ends: that LF would be read back as CRLF
                    raise AppendRefused("[UNKNOWN-CTE] Binary data with a bare LF cannot be stored here")
                adds.append(
                    {
                        "tmp_file": path,
                        "flags": letters,
                        "keywords": kws,
                        "idate": idate if idate is not None else int(time.time()),
                        "size": spool.wsize,
                        "base": spool.base,
                    }
                )
            store.quota_check(sum(s.size for s in spools), len(spools))  # RFC 9208: NO [OVERQUOTA], nothing kept
            uidvalidity, uids = store.index(name).add_many(adds)
        except BaseException:
            for spool in spools:
                spool.abort()
            raise
        self._done(tag, "APPEND completed", code=f"[APPENDUID {uidvalidity} {uid_set_text(uids)}]")

    def _spooled(self, data) -> MessageSpool:
        """A message literal as a spool file (a big one is one already)."""
        assert self.store is not None
        if isinstance(data, Literal8):
            data = data.value
        if isinstance(data, MessageSpool):
            return data
        if not data:
            raise AppendRefused("Empty messages cannot be appended")
        spool = self.store.spool()
        spool.write(bytes(data))
        return spool

    # -- CATENATE (RFC 4469) --

    def _catenate(self, data: tuple) -> MessageSpool:
        """The message made of CATENATE's parts, in a new spool file."""
        assert self.store is not None
        parts, _binary = data
        limit = self.settings.max_literal
        spool = self.store.spool()
        try:
            for kind, value in parts:
                if kind == "TEXT":
                    if isinstance(value, Literal8):
                        value = value.value
                    if isinstance(value, MessageSpool):
                        _copy_spool(value, spool)
                    else:
                        spool.write(bytes(value))
                else:
                    spool.write(self._url_data(value))
                if spool.wsize > limit:
                    raise AppendRefused("[TOOBIG] Message too big")
            if spool.wsize == 0:
                raise AppendRefused("Empty messages cannot be appended")
        except BaseException:
            spool.abort()
            raise
        return spool

    def _url_data(self, url: str) -> bytes:
        """The octets an IMAP URL (RFC 5092) names in this user's own mailboxes;
        anything else is NO [BADURL url]."""
        from urllib.parse import unquote  # noqa: PLC0415 lazy

        from pyimap import mailbox_names as mn  # noqa: PLC0415 lazy

        assert self.store is not None
        shown = "".join(c for c in url if " " <= c <= "~" and c != "]")[:300]

        def bad(why: str) -> AppendRefused:
            return AppendRefused(f"[BADURL {shown}] {why}")

        path = url
        if url[:7].lower() == "imap://":
            authority, slash, rest = url[7:].partition("/")
            userinfo, at, _host = authority.rpartition("@")
            user = unquote(userinfo.split(";", 1)[0])
            if not at or not slash or user.lower() != (self.user or "").lower():
                raise bad("Only this user's own messages can be used")
            path = "/" + rest
        m = _URL_PATH.match(path)
        if m is not None:
            try:
                name = mn.normalize(unquote(m.group("mbox"), errors="strict"))
            except (mn.BadName, UnicodeDecodeError):
                raise bad("Invalid mailbox name") from None
            validity = m.group("uidvalidity")
        else:
            m = _URL_RELATIVE.match(url)
            sel = self.sel
            if m is None or sel is None:
                raise bad("Invalid IMAP URL")
            name, validity = sel.name, None
        tail = _URL_TAIL.match(m.group("tail"))
        if tail is None:
            raise bad("Invalid IMAP URL")
        if not self.store.exists(name):
            raise bad("Mailbox does not exist")
        index = self.store.index(name)
        snap = index.sync()
        if validity is not None and int(validity) != snap.uidvalidity:
            raise bad("UIDVALIDITY does not match")
        entry = snap.entries.get(int(m.group("uid")))
        if entry is None:
            raise bad("No such message")
        from pyimap.message import Part, read_crlf, section_bytes  # noqa: PLC0415 lazy

        try:
            data = read_crlf(f"{index.dir}/{entry.sub}/{entry.name}")
        except FileNotFoundError:
            entry = index.resync().entries.get(entry.uid)
            if entry is None:
                raise bad("No such message") from None
            data = read_crlf(f"{index.dir}/{entry.sub}/{entry.name}")
        section = tail.group("section")
        if section:
            from pyimap.fetch import parse_items  # noqa: PLC0415 lazy

            try:
                item = parse_items(Atom(f"BODY[{unquote(section)}]"))[0]
            except ParseError:
                raise bad("Invalid section") from None
            piece = section_bytes(Part(data), item[2], item[3], item[4])
            if piece is None:
                raise bad("No such section")
            data = piece
        if tail.group("start") is not None:
            start = int(tail.group("start"))
            count = tail.group("count")
            data = data[start : start + int(count)] if count is not None else data[start:]
        return data


def _parse_messages(args: list) -> list[tuple]:
    """APPEND's arguments after the mailbox: [(flags list, date-time, message), ...];
    the message a literal (bytes, Literal8, a spool) or ("CATENATE" parts, binary)."""
    out: list[tuple] = []
    i, n = 0, len(args)
    while i < n:
        flags_tok = date_tok = None
        if isinstance(args[i], list):
            flags_tok = args[i]
            i += 1
        if i + 1 < n and type(args[i]) is bytes:  # a quoted string (a literal is LiteralBytes)
            date_tok = args[i]
            i += 1
        if i >= n:
            raise ParseError("APPEND needs a message literal")
        tok = args[i]
        i += 1
        if isinstance(tok, Atom) and tok.upper() == "UTF8":
            # RFC 6855 4: UTF8 (~{n}), a message with UTF-8 headers
            if i >= n or not (isinstance(args[i], list) and len(args[i]) == 1 and isinstance(args[i][0], Literal8)):
                raise ParseError("UTF8 needs (~{n} literal8)")
            out.append((flags_tok, date_tok, args[i][0].value))
            i += 1
        elif isinstance(tok, Atom) and tok.upper() == "CATENATE":
            if i >= n or not isinstance(args[i], list):
                raise ParseError("CATENATE needs a list of parts")
            out.append((flags_tok, date_tok, _cat_parts(args[i])))
            i += 1
        elif isinstance(tok, (LiteralBytes, Literal8, MessageSpool)) or (i == n and isinstance(tok, (bytes, Atom))):
            out.append((flags_tok, date_tok, tok.encode() if isinstance(tok, Atom) else tok))
        else:
            raise ParseError("Bad APPEND arguments")
    if not out:
        raise ParseError("APPEND needs a message literal")
    return out


def _cat_parts(items: list) -> tuple[list, bool]:
    """CATENATE (TEXT literal URL url ...) -> ([("TEXT", data) | ("URL", url)], any literal8)."""
    if not items or len(items) % 2:
        raise ParseError("Bad CATENATE parts")
    parts: list[tuple] = []
    binary = False
    for k in range(0, len(items), 2):
        kind, value = items[k], items[k + 1]
        word = kind.upper() if isinstance(kind, Atom) else ""
        if word == "TEXT" and isinstance(value, (LiteralBytes, Literal8, MessageSpool)):
            binary = binary or isinstance(value, Literal8)
            parts.append(("TEXT", value))
        elif word == "URL" and isinstance(value, (bytes, Atom)) and not isinstance(value, Literal8):
            try:
                url = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError:
                raise ParseError("URL is not UTF-8") from None
            parts.append(("URL", url))
        else:
            raise ParseError("Bad CATENATE part")
    return parts, binary


def _copy_spool(src: MessageSpool, dest: MessageSpool) -> None:
    """A TEXT part that went to its own spool file: its octets into ``dest``, then it goes."""
    path = src.finish()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(COPY_CHUNK):
                dest.write(chunk.replace(b"\n", b"\r\n"))  # stored with LF, written as it came
    finally:
        src.abort()
    if src.bare_lf:
        dest.bare_lf = True


def _abort_all(args) -> None:
    """Remove the spool files of a refused APPEND (also inside CATENATE lists)."""
    for a in args:
        if isinstance(a, list):
            _abort_all(a)
        elif isinstance(a, Literal8):
            _abort_all([a.value])
        elif isinstance(a, MessageSpool):
            a.abort()
