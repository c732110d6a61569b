"""The IMAP4rev1 server as a sans-I/O state machine (see ``pymta.lib.sansio``).

RFC 3501 plus the extensions clients depend on: IDLE (2177), UIDPLUS
(4315), MOVE (6851), LITERAL+ (7888), NAMESPACE (2342), ID (2971), ENABLE
(5161), UNSELECT (3691), CHILDREN (3348), SPECIAL-USE (6154), LIST-EXTENDED
(5258), LIST-STATUS (5819), SASL-IR (4959), CONDSTORE (7162).

Bytes in, actions out.  Policy (passwords, where a user's mail lives) is
the *backend*'s; messages live in Maildir++ folders with a
``pymda.index.FolderIndex`` each, shared with every other process.
"""

from __future__ import annotations

import binascii
import bisect
import calendar
import re
import time

from pyimap import mailbox_names as mn
from pyimap.parser import (CONTINUE, ERROR, FATAL, Atom, Literal, ParseError, Reader, expand, parse_sequence_set,
                           quote, tokenize, is_number)
from pymta.lib.record import Record
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Protocol, catching

NOT_AUTH, AUTH, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"

# Maildir info letters <-> IMAP system flags (P is Dovecot's $Forwarded).
LETTER_FLAG = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTER = {v.lower(): k for k, v in LETTER_FLAG.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_ATOM_OK = re.compile(r"^[^\x00-\x20\x7f(){%*\"\\\]]+$")
STREAM_ABOVE = 256 * 1024
MAX_BAD = 20
_NO_SPACE_ERRNOS = (28, 122)  # ENOSPC, EDQUOT (Linux): answered NO [OVERQUOTA]


class IMAPSettings(Record):
    # a Record, not a dataclass: every inetd connection imports this module
    __slots__ = ("hostname", "max_line", "max_literal", "max_mem_literal", "autologout", "login_timeout",
                 "idle_poll", "plaintext_ok", "software")
    FIELDS = (
        ("hostname", "localhost"),
        ("max_line", 65536),  # octets of one command line (literals excluded)
        ("max_literal", 100 * 1024 * 1024),  # APPEND; advertised as APPENDLIMIT
        ("max_mem_literal", 65536),  # any other literal
        ("autologout", 1800.0),  # RFC 3501 5.4: at least 30 minutes once logged in
        ("login_timeout", 60.0),
        ("idle_poll", 0.5),
        ("plaintext_ok", False),  # may a password cross this connection without TLS
        ("software", "pymail"),
    )


def format_internaldate(ts: int) -> bytes:
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, MONTH_NAMES[t.tm_mon - 1].encode(), t.tm_year,
                                                     t.tm_hour, t.tm_min, t.tm_sec)


_DATE_TIME = re.compile(r"^\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


def parse_date_time(text: str) -> int:
    m = _DATE_TIME.match(text)
    if not m:
        raise ParseError("Bad date-time")
    mon = [x.upper() for x in MONTH_NAMES].index(m.group(2).upper()) + 1 if m.group(2).upper() in \
        [x.upper() for x in MONTH_NAMES] else None
    if mon is None:
        raise ParseError("Bad month in date-time")
    try:
        ts = calendar.timegm((int(m.group(3)), mon, int(m.group(1)), int(m.group(4)), int(m.group(5)),
                              int(m.group(6)), 0, 0, 0))
    except (ValueError, OverflowError):
        raise ParseError("Bad date-time") from None
    off = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    return ts - off if m.group(7) == "+" else ts + off


def uid_set_text(uids: list[int]) -> str:
    """[1,2,3,5] -> '1:3,5'."""
    out = []
    start = prev = None
    for u in uids:
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


class _AppendSink:
    """Writes an APPEND literal into the spool tmp/ file while it arrives (CRLF -> LF)."""

    def __init__(self, tmp_dir) -> None:
        import os

        from pymda.maildir import unique_name

        self.os = os
        self.name = unique_name()
        self.path = f"{tmp_dir}/{self.name}"
        os.makedirs(tmp_dir, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0  # LF size (S=)
        self.wsize = 0  # CRLF size (W=)
        self.carry = b""
        self.error = None
        self.closed = False
        self.nul = False

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        data = self.carry + data
        self.carry = b""
        if data.endswith(b"\r"):
            data, self.carry = data[:-1], b"\r"
        if b"\x00" in data:
            self.nul = True
        lf = data.replace(b"\r\n", b"\n")
        self.size += len(lf)
        self.wsize += len(lf) + lf.count(b"\n")
        try:
            view = memoryview(lf)
            while view:
                view = view[self.os.write(self.fd, view):]
        except OSError as exc:
            self.error = exc

    def finish(self) -> str:
        if self.carry:
            c, self.carry = self.carry, b""
            try:
                self.os.write(self.fd, c)
            except OSError as exc:
                self.error = exc
            self.size += 1
            self.wsize += 1
        if not self.closed:
            try:
                self.os.fsync(self.fd)
            except OSError as exc:
                self.error = self.error or exc
            self.os.close(self.fd)
            self.closed = True
        if self.error is not None:
            self.abort()
            raise self.error
        return self.path

    def abort(self) -> None:
        if not self.closed:
            self.os.close(self.fd)
            self.closed = True
        try:
            self.os.unlink(self.path)
        except OSError:
            pass


class Selected:
    """The session's view of the selected mailbox (RFC 3501 sequence numbers)."""

    def __init__(self, name, index, readonly, snap) -> None:
        self.name = name
        self.index = index
        self.readonly = readonly
        self.snap = snap
        self.uidvalidity = snap.uidvalidity
        self.view: list[int] = list(snap.entries)
        self.known: dict[int, int] = {u: e.modseq for u, e in snap.entries.items()}
        self.recent: set[int] = set()
        self.keywords: set[str] = set()
        self.ghosts = False  # view holds UIDs expunged elsewhere, not yet announced

    def seq_of(self, uid: int) -> int:
        i = bisect.bisect_left(self.view, uid)
        return i + 1 if i < len(self.view) and self.view[i] == uid else 0


class IMAPServer(Protocol):
    def __init__(self, settings: IMAPSettings, backend) -> None:
        self.settings = settings
        self.backend = backend
        self.state = NOT_AUTH
        self.info = ConnectionInfo()
        self.user: str | None = None
        self.store = None
        self.sel: Selected | None = None
        self.out: list = []
        self.reader = Reader(max_line=settings.max_line, max_literal=settings.max_literal,
                             max_mem_literal=settings.max_mem_literal, sink_for=self._sink_for)
        self.waiting = False  # a Job is outstanding
        self.closed = False
        self.idle_tag: str | None = None
        self.idle_started = 0.0
        self.auth_tag: str | None = None
        self.bad_count = 0
        self.enabled: set[str] = set()
        self.condstore = False
        self.timeout = settings.login_timeout
        self._job_then = None
        self.client_id = None

    # -- driver interface ---------------------------------------------------------

    def connection_made(self, info: ConnectionInfo) -> list:
        self.info = info
        self._untagged(f"OK [CAPABILITY {self._capabilities()}] {self.settings.software} IMAP4rev1 ready")
        return self._flush()

    def data_received(self, data: bytes) -> list:
        if not data:
            self.closed = True
            self._cleanup()
            return self._flush() + [CLOSE]
        self.reader.feed(data)
        if self.waiting:
            return self._flush()
        return self._process()

    def job_done(self, result) -> list:
        self.waiting = False
        then, self._job_then = self._job_then, None
        if then is not None:
            then(result)
        if self.closed:
            return self._flush() + [CLOSE]
        return self._process()

    def tls_started(self, info: ConnectionInfo) -> list:
        self.info = info
        self.settings.plaintext_ok = True
        self.reader.reset()
        return []

    def timed_out(self) -> list:
        if self.idle_tag is not None and self.sel is not None:
            if time.monotonic() - self.idle_started < self.settings.autologout:
                try:
                    self._updates(allow_expunge=True)
                except Exception as exc:  # never a traceback on the wire
                    self._log_error("idle poll", exc)
                return self._flush()
        self._untagged("BYE Autologout; idle for too long")
        self.closed = True
        self._cleanup()
        return self._flush() + [CLOSE]

    def connection_lost(self) -> None:
        self._cleanup()

    # -- plumbing ---------------------------------------------------------------------

    def _cleanup(self) -> None:
        self.reader.reset()

    def _flush(self) -> list:
        out, self.out = self.out, []
        merged: list = []
        buf = []
        for item in out:
            if isinstance(item, (bytes, bytearray)):
                buf.append(item)
            else:
                if buf:
                    merged.append(b"".join(buf))
                    buf = []
                merged.append(item)
        if buf:
            merged.append(b"".join(buf))
        return merged

    def _send(self, data: bytes) -> None:
        self.out.append(data)

    def _untagged(self, text: str) -> None:
        self.out.append(b"* " + text.encode("utf-8") + b"\r\n")

    def _tagged(self, tag: str, text: str) -> None:
        # resp-text is 7-bit (RFC 3501 9: TEXT-CHAR); client bytes echoed in an error are escaped
        self.out.append(tag.encode("utf-8", "replace") + b" " + text.encode("ascii", "backslashreplace") + b"\r\n")

    def _log_error(self, what: str, exc: Exception) -> None:
        try:
            from pymta.lib import log

            log.error(f"{what}: {type(exc).__name__}: {exc}")
        except Exception:
            pass

    def _capabilities(self) -> str:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS",
                "MOVE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE",
                f"APPENDLIMIT={self.settings.max_literal}"]
        if self.state == NOT_AUTH:
            if self.info.tls_available and not self.info.tls:
                caps.append("STARTTLS")
            if self.settings.plaintext_ok or self.info.tls:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    def _set_timeout(self) -> None:
        if self.idle_tag is not None:
            self.timeout = self.settings.idle_poll
        elif self.state == NOT_AUTH:
            self.timeout = self.settings.login_timeout
        else:
            self.timeout = self.settings.autologout

    def _sink_for(self, segments, size):
        """Where an announced literal goes: APPEND's message to the spool, others to memory."""
        if self.state not in (AUTH, SELECTED) or not segments or self.store is None:
            return None
        head = segments[0].split(None, 2)
        if len(head) < 2 or head[1].upper() != b"APPEND":
            return None
        if 0 < size <= self.settings.max_mem_literal:
            return None  # small (or the mailbox name): memory is fine, APPEND spools it afterwards
        if size == 0:
            return "NO Empty messages cannot be appended"
        if size > self.settings.max_literal:
            return "NO [TOOBIG] Message too big"
        try:
            return _AppendSink(self.store.home / "tmp")
        except OSError as exc:
            if exc.errno in _NO_SPACE_ERRNOS:
                return "NO [OVERQUOTA] Not enough disk space, try again later"
            return f"NO [SERVERBUG] Cannot spool message: {exc.strerror}"

    def _process(self) -> list:
        while not self.waiting and not self.closed:
            try:
                event = self.reader.next_event()
            except Exception as exc:  # pragma: no cover - defensive
                self._log_error("reader", exc)
                self._untagged("BYE Internal error")
                self.closed = True
                break
            if event is None:
                break
            kind = event[0]
            if kind == CONTINUE:
                self._send(b"+ " + event[1].encode() + b"\r\n")
                continue
            if kind == ERROR:
                _, tag, text = event
                self._tagged(tag, text)
                self._count_bad()
                continue
            if kind == FATAL:
                _, tag, text = event
                self._tagged(tag, text)
                self._untagged("BYE Literal too big to skip; closing")
                self.closed = True
                break
            parts = event[1]
            if self.idle_tag is not None:
                self._idle_line(parts)
                continue
            if self.auth_tag is not None:
                self._auth_line(parts)
                continue
            self._command(parts)
        self._set_timeout()
        out = self._flush()
        if self.closed:
            self._cleanup()
            out.append(CLOSE)
        return out

    def _count_bad(self) -> None:
        self.bad_count += 1
        if self.bad_count >= MAX_BAD:
            self._untagged("BYE Too many invalid commands")
            self.closed = True

    # -- command dispatch -----------------------------------------------------------

    def _command(self, parts: list) -> None:
        first = parts[0] if parts and isinstance(parts[0], (bytes, bytearray)) else b""
        try:
            tokens = tokenize(parts)
        except ParseError as exc:
            tag = first.split(b" ", 1)[0].decode("ascii", "replace") if first.strip() else "*"
            if not (tag.isascii() and tag.isprintable()):
                tag = "*"  # never echo 8-bit or control bytes
            self._abort_sinks(parts)
            self._tagged(tag or "*", f"BAD {exc}")
            self._count_bad()
            return
        if not tokens:
            return  # empty line: ignore
        tag = tokens[0]
        if not isinstance(tag, Atom) or not _ATOM_OK.match(tag) or "+" in tag or not tag.isascii():
            self._abort_sinks(parts)
            self._untagged("BAD Invalid tag")
            self._count_bad()
            return
        if len(tokens) < 2 or not isinstance(tokens[1], Atom):
            self._abort_sinks(parts)
            self._tagged(tag, "BAD Missing command")
            self._count_bad()
            return
        name = tokens[1].upper()
        args = tokens[2:]
        uid = False
        if name == "UID":
            if not args or not isinstance(args[0], Atom) or args[0].upper() not in ("FETCH", "STORE", "COPY", "MOVE",
                                                                                  "SEARCH", "EXPUNGE"):
                self._abort_sinks(parts)
                self._tagged(tag, "BAD Unknown UID command")
                self._count_bad()
                return
            uid = True
            name = args[0].upper()
            args = args[1:]
        entry = COMMANDS.get(name)
        if entry is None:
            self._abort_sinks(parts)
            self._tagged(tag, "BAD Unknown command")
            self._count_bad()
            return
        method, states = entry
        if self.state not in states:
            self._abort_sinks(parts)
            self._tagged(tag, f"BAD Command {name} not valid in this state")
            return
        try:
            if uid:
                getattr(self, method)(tag, args, uid=True)
            else:
                getattr(self, method)(tag, args)
        except ParseError as exc:
            self._abort_sinks(parts)
            self._tagged(tag, f"BAD {exc}")
            self._count_bad()
        except mn.BadName as exc:
            self._abort_sinks(parts)
            self._tagged(tag, f"NO [CANNOT] Invalid mailbox name: {exc}")
        except Exception as exc:
            self._abort_sinks(parts)
            self._log_error(f"{name}", exc)
            from pymda.index import IndexError_

            if getattr(exc, "errno", None) in _NO_SPACE_ERRNOS and isinstance(exc, (IndexError_, OSError)):
                # RFC 9208 / RFC 5530: the disk (or a quota) is full
                self._tagged(tag, "NO [OVERQUOTA] Not enough disk space, try again later")
            elif isinstance(exc, (IndexError_, OSError)):
                self._tagged(tag, "NO [UNAVAILABLE] Temporary failure, try again")
            else:
                self._tagged(tag, "NO [SERVERBUG] Internal error")

    @staticmethod
    def _abort_sinks(parts) -> None:
        for p in parts:
            if isinstance(p, _AppendSink):
                p.abort()

    def _done(self, tag: str, text: str = "completed", allow_expunge: bool = True, code: str = "") -> None:
        if self.sel is not None:
            self._updates(allow_expunge)
        name = text
        self._tagged(tag, f"OK {code + ' ' if code else ''}{name}")

    # -- argument helpers --

    @staticmethod
    def _need(args, n: int, max_n: int | None = None) -> None:
        if len(args) < n or (max_n is not None and len(args) > max_n):
            raise ParseError("Wrong number of arguments")

    @staticmethod
    def _astring(token) -> str:
        if isinstance(token, list) or not isinstance(token, (Atom, bytes)):
            raise ParseError("Expected a string")
        if isinstance(token, bytes):
            try:
                return token.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("String is not UTF-8") from None
        return str(token)

    def _mailbox(self, token) -> str:
        return mn.normalize(self._astring(token))

    # -- any state --------------------------------------------------------------------

    def cmd_capability(self, tag, args):
        self._need(args, 0, 0)
        self._untagged(f"CAPABILITY {self._capabilities()}")
        self._done(tag, "CAPABILITY completed")

    def cmd_noop(self, tag, args):
        self._done(tag, "NOOP completed")

    def cmd_logout(self, tag, args):
        self._untagged("BYE Logging out")
        self._tagged(tag, "OK LOGOUT completed")
        self.state = LOGOUT
        self.closed = True

    def cmd_id(self, tag, args):
        self._need(args, 1, 1)
        if isinstance(args[0], list):
            items = args[0]
            if len(items) % 2 or len(items) > 60:
                raise ParseError("Bad ID parameter list")
            self.client_id = {self._astring(items[i]).lower()[:30]: (items[i + 1].decode("utf-8", "replace")[:200]
                              if isinstance(items[i + 1], bytes) else str(items[i + 1])[:200])
                              for i in range(0, len(items), 2)}
        elif not (isinstance(args[0], Atom) and args[0].upper() == "NIL"):
            raise ParseError("Bad ID argument")
        self._untagged('ID ("name" "pymail" "version" "0.1")')
        self._done(tag, "ID completed")

    def cmd_enable(self, tag, args):
        self._need(args, 1)
        on = []
        for a in args:
            name = self._astring(a).upper()
            if name == "CONDSTORE" and name not in self.enabled:  # QRESYNC: not offered (see the man page)
                self.enabled.add(name)
                on.append(name)
                self.condstore = True
        self._untagged("ENABLED" + "".join(" " + n for n in on))
        self._done(tag, "ENABLE completed")

    # -- not authenticated ------------------------------------------------------------

    def cmd_starttls(self, tag, args):
        self._need(args, 0, 0)
        if self.info.tls or not self.info.tls_available:
            self._tagged(tag, "BAD STARTTLS not available")
            return
        self._tagged(tag, "OK Begin TLS negotiation now")
        self.reader.reset()  # CVE-2011-0411: nothing pipelined behind STARTTLS survives
        self.out.append(STARTTLS)

    def _plain_ok(self) -> bool:
        return self.settings.plaintext_ok or self.info.tls

    def cmd_login(self, tag, args):
        self._need(args, 2, 2)
        user, password = self._astring(args[0]), args[1]
        if isinstance(password, Atom):
            password = str(password).encode("utf-8")
        elif not isinstance(password, bytes):
            raise ParseError("Expected a password")
        if not self._plain_ok():
            self._tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections")
            return
        self._start_auth(tag, user, password)

    def cmd_authenticate(self, tag, args):
        self._need(args, 1, 2)
        mech = self._astring(args[0]).upper()
        if mech != "PLAIN":
            self._tagged(tag, "NO Unsupported authentication mechanism")
            return
        if not self._plain_ok():
            self._tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections")
            return
        if len(args) == 2:
            self._auth_response(tag, str(args[1]) if isinstance(args[1], Atom) else
                                args[1].decode("ascii", "replace") if isinstance(args[1], bytes) else "")
            return
        self.auth_tag = tag
        self._send(b"+ \r\n")

    def _auth_line(self, parts) -> None:
        tag, self.auth_tag = self.auth_tag, None
        line = parts[-1] if parts else b""
        if len(parts) != 1:
            self._tagged(tag, "BAD Bad AUTHENTICATE response")
            return
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self._tagged(tag, "BAD AUTHENTICATE cancelled")
            return
        self._auth_response(tag, text)

    def _auth_response(self, tag: str, text: str) -> None:
        if text == "=":
            text = ""
        try:
            raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True) if text else b""
        except (binascii.Error, ValueError):
            self._tagged(tag, "BAD Invalid base64 data")
            return
        fields = raw.split(b"\x00")
        if len(fields) != 3:
            self._tagged(tag, "BAD Invalid AUTHENTICATE PLAIN response")
            return
        authz, authc, password = fields
        if authz and authz != authc:
            self._tagged(tag, "NO [AUTHORIZATIONFAILED] Authorization identity not allowed")
            return
        try:
            user = authc.decode("utf-8")
        except UnicodeDecodeError:
            self._tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
            return
        self._start_auth(tag, user, password)

    def _start_auth(self, tag: str, user: str, password: bytes) -> None:
        def then(result):
            account = result
            if isinstance(account, Exception):  # the users file is missing or unreadable
                self._log_error("login", account)
                self._tagged(tag, "NO [UNAVAILABLE] Temporary authentication failure, try again later")
                return
            if not account:
                self._tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
                self._count_bad()
                return
            try:
                self.store = self.backend.open_store(account)
            except Exception as exc:
                self._log_error(f"mail home of {account}", exc)
                self._tagged(tag, "NO [UNAVAILABLE] Mailbox unavailable, try again later")
                return
            self.user = account
            self.state = AUTH
            self._tagged(tag, f"OK [CAPABILITY {self._capabilities()}] Logged in")

        self.waiting = True
        self._job_then = then
        self.out.append(Job(catching, self.backend.authenticate, self.info, user, password))

    # -- authenticated ----------------------------------------------------------------

    def _flag_list_for(self, keywords) -> str:
        kws = sorted(keywords, key=str.lower)
        return "(" + " ".join(list(SYSTEM_FLAGS) + ["$Forwarded"] + [k for k in kws if k.lower() != "$forwarded"]) + ")"

    def cmd_select(self, tag, args, readonly=False):
        self._need(args, 1, 2)
        name = self._mailbox(args[0])
        qresync = None
        if len(args) == 2:
            if not isinstance(args[1], list):
                raise ParseError("Bad SELECT parameters")
            params = args[1]
            i = 0
            while i < len(params):
                p = str(params[i]).upper() if isinstance(params[i], Atom) else ""
                if p == "CONDSTORE":
                    self.condstore = True
                    i += 1
                elif p == "QRESYNC" and "QRESYNC" in self.enabled and i + 1 < len(params) \
                        and isinstance(params[i + 1], list):
                    qresync = params[i + 1]
                    i += 2
                else:
                    raise ParseError("Unknown SELECT parameter")
        if self.sel is not None:
            self.sel = None
            self.state = AUTH
            if self.condstore:
                self._untagged("OK [CLOSED] Previous mailbox closed")
        if not self.store.exists(name):
            self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist")
            return
        index = self.store.index(name)
        snap = index.sync()
        recent: set[int] = set()
        if not readonly:
            fresh = [u for u, e in snap.entries.items() if e.sub == "new"]
            if fresh:
                moved = index.to_cur(fresh)
                recent = set(moved)
                snap = index.sync()
        sel = Selected(name, index, readonly, snap)
        sel.recent = recent
        sel.keywords = set(snap.keywords())
        self.sel = sel
        self.state = SELECTED
        self._untagged(f"FLAGS {self._flag_list_for(sel.keywords)}")
        if readonly:
            self._untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            self._untagged(f"OK [PERMANENTFLAGS {self._flag_list_for(sel.keywords)[:-1]} \\*)] Flags permitted")
        self._untagged(f"{len(sel.view)} EXISTS")
        self._untagged(f"{len(recent)} RECENT")
        for i, uid in enumerate(sel.view):
            if "S" not in snap.entries[uid].flags:
                self._untagged(f"OK [UNSEEN {i + 1}] First unseen")
                break
        self._untagged(f"OK [UIDVALIDITY {snap.uidvalidity}] UIDs valid")
        self._untagged(f"OK [UIDNEXT {snap.uidnext}] Predicted next UID")
        self._untagged(f"OK [HIGHESTMODSEQ {snap.highestmodseq}] Highest")
        if qresync is not None:
            self._qresync(qresync)
        self._tagged(tag, f"OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {'EXAMINE' if readonly else 'SELECT'} completed")

    def _qresync(self, params) -> None:
        if len(params) < 2 or not all(isinstance(p, Atom) for p in params[:2]):
            raise ParseError("Bad QRESYNC parameters")
        uidvalidity, modseq = int(params[0]), int(params[1])
        sel = self.sel
        if uidvalidity != sel.uidvalidity:
            return
        known = None
        if len(params) >= 3 and isinstance(params[2], Atom):
            known = parse_sequence_set(str(params[2]))
        # Without tombstones every UID below UIDNEXT that is not here may have vanished.
        if known is not None:
            candidates = [u for lo, hi in known for u in range(lo or 1, min(hi or sel.snap.uidnext, sel.snap.uidnext - 1) + 1)]
            gone = sorted(u for u in set(candidates[:100000]) if u not in sel.snap.entries)
            text = uid_set_text(gone)
        else:
            gone_ranges = []
            prev = 0
            for u in sel.view:
                if u > prev + 1:
                    gone_ranges.append(f"{prev + 1}:{u - 1}" if u - 1 > prev + 1 else str(prev + 1))
                prev = u
            if sel.snap.uidnext - 1 > prev:
                last = sel.snap.uidnext - 1
                gone_ranges.append(f"{prev + 1}:{last}" if last > prev + 1 else str(prev + 1))
            text = ",".join(gone_ranges)
        if text:
            self._untagged(f"VANISHED (EARLIER) {text}")
        for seq, u in enumerate(sel.view, 1):
            e = sel.snap.entries[u]
            if e.modseq > modseq:
                self._untagged(f"{seq} FETCH (UID {u} FLAGS {self._flags_of(e, u)} MODSEQ ({e.modseq}))")

    def cmd_examine(self, tag, args):
        self.cmd_select(tag, args, readonly=True)

    def cmd_create(self, tag, args):
        self._need(args, 1, 2)
        raw = self._astring(args[0])
        if raw.endswith(mn.DELIM):
            raw = raw.rstrip(mn.DELIM)
        if self._store_call(tag, self.store.create, mn.normalize(raw)):
            self._done(tag, "CREATE completed")

    def cmd_delete(self, tag, args):
        self._need(args, 1, 1)
        name = self._mailbox(args[0])
        if self.sel is not None and self.sel.name == name:
            self.sel = None
            self.state = AUTH
        if self._store_call(tag, self.store.delete, name):
            self._done(tag, "DELETE completed")

    def cmd_rename(self, tag, args):
        self._need(args, 2, 2)
        old, new = self._mailbox(args[0]), self._mailbox(args[1])
        if not self._store_call(tag, self.store.rename, old, new):
            return
        if self.sel is not None and old != "INBOX" and (self.sel.name == old or self.sel.name.startswith(old + "/")):
            self.sel.index = self.store.index(new + self.sel.name[len(old):])
            self.sel.name = new + self.sel.name[len(old):]
        self._done(tag, "RENAME completed")

    def _store_call(self, tag, fn, *names) -> bool:
        """Run a mailbox-tree change; a StoreError becomes the tagged NO (False)."""
        from pyimap.store import StoreError

        try:
            fn(*names)
        except StoreError as exc:
            self._tagged(tag, f"NO [{exc.code}] {exc}" if exc.code else f"NO {exc}")
            return False
        return True

    def cmd_subscribe(self, tag, args, subscribe=True):
        self._need(args, 1, 1)
        name = self._mailbox(args[0])
        subs = self.store.subscriptions()
        if subscribe:
            subs.add(name)
        else:
            subs.discard(name)
        self.store.set_subscriptions(subs)
        self._done(tag, f"{'' if subscribe else 'UN'}SUBSCRIBE completed")

    def cmd_unsubscribe(self, tag, args):
        self.cmd_subscribe(tag, args, subscribe=False)

    @staticmethod
    def _pattern_re(pattern: str):
        out = []
        for ch in pattern:
            if ch == "*":
                out.append(".*")
            elif ch == "%":
                out.append("[^/]*")
            else:
                out.append(re.escape(ch))
        return re.compile("^" + "".join(out) + "$", re.DOTALL)

    def cmd_list(self, tag, args, lsub=False):
        self._need(args, 2)
        select_opts: set[str] = set()
        return_opts: set[str] = set()
        status_items: list[str] = []
        if not lsub and isinstance(args[0], list):
            select_opts = {str(a).upper() for a in args[0]}
            args = args[1:]
            if select_opts - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}:
                raise ParseError("Unknown LIST selection option")
            if "RECURSIVEMATCH" in select_opts and not (select_opts & {"SUBSCRIBED"}):
                raise ParseError("RECURSIVEMATCH needs another selection option")
        if len(args) < 2:
            raise ParseError("Wrong number of arguments")
        ref = self._astring(args[0]) if not isinstance(args[0], list) else ""
        patterns_tok = args[1]
        rest = args[2:]
        if not lsub and rest:
            if len(rest) != 2 or not isinstance(rest[0], Atom) or rest[0].upper() != "RETURN" or not isinstance(rest[1], list):
                raise ParseError("Bad LIST return options")
            opts = rest[1]
            i = 0
            while i < len(opts):
                o = str(opts[i]).upper()
                if o == "STATUS":
                    if i + 1 >= len(opts) or not isinstance(opts[i + 1], list):
                        raise ParseError("STATUS needs a list")
                    status_items = [str(x).upper() for x in opts[i + 1]]
                    i += 2
                    continue
                if o not in ("CHILDREN", "SUBSCRIBED", "SPECIAL-USE"):
                    raise ParseError("Unknown LIST return option")
                return_opts.add(o)
                i += 1
        elif rest:
            raise ParseError("Wrong number of arguments")
        patterns = [self._astring(p) for p in patterns_tok] if isinstance(patterns_tok, list) else \
            [self._astring(patterns_tok)]
        if not patterns:
            raise ParseError("Empty pattern list")
        if len(patterns) == 1 and patterns[0] == "" and not lsub:
            self._untagged('LIST (\\Noselect) "/" ""')
            self._done(tag, "LIST completed")
            return
        names = self.store.names()
        existing = set(names)
        subs = self.store.subscriptions()
        all_names = set(names)
        for n in names:  # parents without a folder of their own
            parts = n.split("/")
            for k in range(1, len(parts)):
                all_names.add("/".join(parts[:k]))
        regexes = []
        for p in patterns:
            full = mn.decode_mutf7(ref + p)
            if full.upper().startswith("INBOX"):
                full = "INBOX" + full[5:]
            regexes.append(self._pattern_re(full))
        if lsub:
            # A parent that is not subscribed shows (\Noselect) only when a
            # subscribed child is cut off by '%' (RFC 3501 6.3.9).
            universe = set(subs)
            for n in list(subs):
                if any(r.match(n) for r in regexes):
                    continue
                parts = n.split("/")
                for k in range(1, len(parts)):
                    universe.add("/".join(parts[:k]))
        elif "SUBSCRIBED" in select_opts:
            universe = set(subs)
        else:
            universe = all_names
        children = {n for n in all_names for m in all_names if m.startswith(n + "/")}
        name_cmd = "LSUB" if lsub else "LIST"
        out_names = sorted((n for n in universe if any(r.match(n) for r in regexes)),
                           key=lambda n: (n != "INBOX", n))
        for n in out_names:
            attrs = []
            if lsub:
                if n not in subs:
                    attrs.append("\\Noselect")
            else:
                if n not in existing:
                    attrs.append("\\NonExistent" if "SUBSCRIBED" in select_opts else "\\Noselect")
                attrs.append("\\HasChildren" if n in children else "\\HasNoChildren")
                if n in subs and ("SUBSCRIBED" in select_opts or "SUBSCRIBED" in return_opts):
                    attrs.append("\\Subscribed")
                su = self.store.special_use(n)
                if su:
                    attrs.append(su)
                elif "SPECIAL-USE" in select_opts:
                    continue
            self._untagged(f'{name_cmd} ({" ".join(attrs)}) "/" {quote(mn.to_wire(n)).decode()}')
            if status_items and n in existing:
                self._status_line(n, status_items)
        self._done(tag, f"{name_cmd} completed")

    def cmd_lsub(self, tag, args):
        self.cmd_list(tag, args, lsub=True)

    def _status_line(self, name: str, items: list[str]) -> None:
        if self.sel is not None and self.sel.name == name:
            self._updates(allow_expunge=False)
        snap = self.store.index(name).sync()
        vals = []
        for it in items:
            if it == "MESSAGES":
                vals.append(f"MESSAGES {len(snap.entries)}")
            elif it == "RECENT":
                vals.append(f"RECENT {sum(1 for e in snap.entries.values() if e.sub == 'new')}")
            elif it == "UIDNEXT":
                vals.append(f"UIDNEXT {snap.uidnext}")
            elif it == "UIDVALIDITY":
                vals.append(f"UIDVALIDITY {snap.uidvalidity}")
            elif it == "UNSEEN":
                vals.append(f"UNSEEN {sum(1 for e in snap.entries.values() if 'S' not in e.flags)}")
            elif it == "HIGHESTMODSEQ":
                vals.append(f"HIGHESTMODSEQ {snap.highestmodseq}")
            elif it == "SIZE":
                vals.append(f"SIZE {sum(e.size for e in snap.entries.values())}")
            else:
                raise ParseError(f"Unknown STATUS item {it[:30]}")
        self._untagged(f"STATUS {quote(mn.to_wire(name)).decode()} ({' '.join(vals)})")

    def cmd_status(self, tag, args):
        self._need(args, 2, 2)
        name = self._mailbox(args[0])
        if not isinstance(args[1], list) or not args[1]:
            raise ParseError("STATUS needs a list of items")
        items = [str(x).upper() for x in args[1]]
        if not self.store.exists(name):
            self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist")
            return
        self._status_line(name, items)
        self._done(tag, "STATUS completed")

    def cmd_append(self, tag, args):
        self._need(args, 2, 4)
        message = args[-1]
        try:
            name = self._mailbox(args[0])
            flags_tok = None
            date_tok = None
            for extra in args[1:-1]:
                if isinstance(extra, list) and flags_tok is None and date_tok is None:
                    flags_tok = extra
                elif isinstance(extra, bytes) and date_tok is None:
                    date_tok = extra
                else:
                    raise ParseError("Bad APPEND arguments")
            idate = parse_date_time(date_tok.decode("ascii", "replace")) if date_tok is not None else None
            letters, kws = self._parse_flags(flags_tok or [])
        except BaseException:
            if isinstance(message, _AppendSink):
                message.abort()
            raise
        if isinstance(message, Literal):
            message = message.data
        if isinstance(message, (bytes, Atom)):
            # A small literal kept in memory (or a bare string): spool it too.
            data = message.encode() if isinstance(message, str) else message
            if not data:
                self._tagged(tag, "NO Empty messages cannot be appended")
                return
            sink = _AppendSink(self.store.home / "tmp")
            sink.write(data)
            message = sink
        if not isinstance(message, _AppendSink):
            raise ParseError("APPEND needs a message literal")
        if not self.store.exists(name):
            message.abort()
            self._tagged(tag, "NO [TRYCREATE] Mailbox does not exist")
            return
        path = message.finish()
        base = f"{message.name},S={message.size},W={message.wsize}"
        index = self.store.index(name)
        try:
            uidvalidity, uid = index.add(path, flags=letters, keywords=kws, idate=idate if idate is not None else int(time.time()),
                                         size=message.wsize, base=base)
        except BaseException:
            message.abort()
            raise
        if idate is not None:
            import os

            try:
                os.utime(index.path / "cur" / f"{base}:2,{''.join(sorted(letters))}", (idate, idate))
            except OSError:
                pass
        self._done(tag, "APPEND completed", code=f"[APPENDUID {uidvalidity} {uid}]")

    # -- selected ---------------------------------------------------------------------

    def cmd_check(self, tag, args):
        self._need(args, 0, 0)
        self._done(tag, "CHECK completed")

    def cmd_close(self, tag, args):
        self._need(args, 0, 0)
        sel = self.sel
        if not sel.readonly:
            snap = sel.index.sync()
            doomed = [u for u in sel.view if u in snap.entries and "T" in snap.entries[u].flags]
            if doomed:
                sel.index.expunge(doomed)
        self.sel = None
        self.state = AUTH
        self._tagged(tag, "OK CLOSE completed")

    def cmd_unselect(self, tag, args):
        self._need(args, 0, 0)
        self.sel = None
        self.state = AUTH
        self._tagged(tag, "OK UNSELECT completed")

    def cmd_expunge(self, tag, args, uid=False):
        sel = self.sel
        if uid:
            self._need(args, 1, 1)
            ranges = parse_sequence_set(str(args[0]))
        else:
            self._need(args, 0, 0)
            ranges = None
        if sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        candidates = sel.view
        if ranges is not None:
            candidates = expand(ranges, sel.view, sel.view[-1] if sel.view else 0)
        doomed = [u for u in candidates if u in snap.entries and "T" in snap.entries[u].flags]
        if doomed:
            sel.index.expunge(doomed)
        self._done(tag, "EXPUNGE completed")

    def _resolve(self, token, uid: bool) -> list[int]:
        """A sequence set -> the UIDs it names in the current view."""
        sel = self.sel
        if not isinstance(token, Atom):
            raise ParseError("Bad sequence set")
        if str(token) == "$":
            raise ParseError("SEARCHRES not supported")
        ranges = parse_sequence_set(str(token))
        if uid:
            star = sel.view[-1] if sel.view else 0
            return expand(ranges, sel.view, star)
        n = len(sel.view)
        if n == 0:
            raise ParseError("No messages")
        for lo, hi in ranges:
            for v in (lo, hi):
                if v is not None and v > n:
                    raise ParseError("Invalid message sequence number")
        seqs = expand(ranges, list(range(1, n + 1)), n)
        return [sel.view[s - 1] for s in seqs]

    def _flags_of(self, e, uid: int) -> str:
        flags = [LETTER_FLAG[c] for c in e.flags if c in LETTER_FLAG]
        flags += sorted(e.kw)
        if uid in self.sel.recent:
            flags.append("\\Recent")
        return "(" + " ".join(flags) + ")"

    def _parse_flags(self, tokens) -> tuple[str, set[str]]:
        letters = set()
        kws: set[str] = set()
        if not isinstance(tokens, list):
            tokens = [tokens]
        for t in tokens:
            if not isinstance(t, Atom):
                raise ParseError("Flags must be atoms")
            low = t.lower()
            if low in FLAG_LETTER:
                letters.add(FLAG_LETTER[low])
            elif low == "\\recent":
                continue
            elif t.startswith("\\"):
                raise ParseError(f"Invalid system flag {t[:30]}")
            else:
                if not _ATOM_OK.match(t) or len(t) > 100 or not t.isascii():  # flag-keyword is an ASCII atom
                    raise ParseError("Invalid keyword")
                kws.add(str(t))
        return "".join(sorted(letters)), kws

    def cmd_store(self, tag, args, uid=False):
        self._need(args, 3, 4)
        sel = self.sel
        uids = self._resolve(args[0], uid)
        args = args[1:]
        unchanged_since = None
        if isinstance(args[0], list):
            mods = args[0]
            if len(mods) != 2 or str(mods[0]).upper() != "UNCHANGEDSINCE" or not is_number(str(mods[1])):
                raise ParseError("Bad STORE modifier")
            unchanged_since = int(mods[1])
            self.condstore = True
            args = args[1:]
        self._need(args, 2, 2)
        item = str(args[0]).upper() if isinstance(args[0], Atom) else ""
        silent = item.endswith(".SILENT")
        if silent:
            item = item[:-7]
        if item not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ParseError("Bad STORE data item")
        letters, kws = self._parse_flags(args[1])
        if sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        changes = {}
        modified = []
        for u in uids:
            e = snap.entries.get(u)
            if e is None:
                continue
            if unchanged_since is not None and e.modseq > unchanged_since:
                modified.append(u)
                continue
            if item == "FLAGS":
                nl, nk = set(letters), set(kws)
                keep = set(e.flags) - set(LETTER_FLAG)  # letters we do not map stay
                nl |= keep
            elif item == "+FLAGS":
                nl, nk = set(e.flags) | set(letters), set(e.kw) | kws
            else:
                nl, nk = set(e.flags) - set(letters), set(e.kw) - kws
            changes[u] = ("".join(sorted(nl)), nk)
        done = sel.index.set_flags(changes) if changes else {}
        new_kw = kws - sel.keywords
        if new_kw:
            sel.keywords |= new_kw
            self._untagged(f"FLAGS {self._flag_list_for(sel.keywords)}")
            self._untagged(f"OK [PERMANENTFLAGS {self._flag_list_for(sel.keywords)[:-1]} \\*)] Flags permitted")
        for u in uids:
            e = done.get(u)
            if e is None:
                continue
            seq = sel.seq_of(u)
            if not silent or (unchanged_since is not None):
                parts = []
                if uid:
                    parts.append(f"UID {u}")
                if not silent:
                    parts.append(f"FLAGS {self._flags_of(e, u)}")
                if self.condstore:
                    parts.append(f"MODSEQ ({e.modseq})")
                if parts and seq:
                    self._untagged(f"{seq} FETCH ({' '.join(parts)})")
            sel.known[u] = e.modseq
        code = ""
        if modified:
            if uid:
                code = f"[MODIFIED {uid_set_text(modified)}]"
            else:
                code = f"[MODIFIED {uid_set_text(sorted(sel.seq_of(u) for u in modified))}]"
        self._done(tag, "STORE completed", allow_expunge=uid, code=code)

    def cmd_copy(self, tag, args, uid=False, move=False):
        self._need(args, 2, 2)
        sel = self.sel
        uids = self._resolve(args[0], uid)
        name = self._mailbox(args[1])
        if not self.store.exists(name):
            self._tagged(tag, "NO [TRYCREATE] Mailbox does not exist")
            return
        if move and sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        present = [u for u in uids if u in snap.entries]
        if len(present) < len(uids) and not uid:
            self._tagged(tag, "NO Some of the messages were expunged")
            return
        dest = self.store.index(name)
        if not present:
            self._done(tag, f"{'MOVE' if move else 'COPY'} completed")
            return
        uidvalidity, pairs = sel.index.copy_into(dest, present)
        code = f"[COPYUID {uidvalidity} {uid_set_text([p[0] for p in pairs])} {uid_set_text([p[1] for p in pairs])}]" \
            if pairs else ""
        if move:
            if code:
                self._untagged(f"OK {code} Moved")
            sel.index.expunge([p[0] for p in pairs])
            self._done(tag, "MOVE completed")
            return
        self._done(tag, "COPY completed", code=code)

    def cmd_move(self, tag, args, uid=False):
        self.cmd_copy(tag, args, uid=uid, move=True)

    # -- SEARCH --

    def cmd_search(self, tag, args, uid=False):
        from pyimap.search import Candidate, compile_keys

        charset = "UTF-8"
        if args and isinstance(args[0], Atom) and args[0].upper() == "RETURN":
            raise ParseError("ESEARCH not supported")
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
            cs = self._astring(args[1]).upper()
            if cs not in ("UTF-8", "US-ASCII"):
                self._tagged(tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
                return
            charset = "utf-8" if cs == "UTF-8" else "ascii"
            args = args[2:]
        pred, info = compile_keys(args, charset)
        sel = self.sel
        snap = sel.index.sync()
        folder = sel.index.dir
        max_seq = len(sel.view)
        max_uid = sel.view[-1] if sel.view else 0
        hits = []
        highest = 0
        for seq, u in enumerate(sel.view, 1):
            e = snap.entries.get(u)
            if e is None:
                continue
            flags = {LETTER_FLAG[c] for c in e.flags if c in LETTER_FLAG}
            if e.kw:
                flags |= e.kw
            cand = Candidate(seq, u, flags, u in sel.recent, e.size, e.idate, e.modseq, max_seq, max_uid,
                             f"{folder}/{e.sub}/{e.name}", (folder, e.base))
            try:
                ok = pred(cand)
            except FileNotFoundError:
                # renamed by another process (flags) between our index read and the open
                snap = sel.index.resync()
                e = snap.entries.get(u)
                ok = False
                if e is not None:
                    cand._path = f"{folder}/{e.sub}/{e.name}"
                    try:
                        ok = pred(cand)
                    except FileNotFoundError:
                        ok = False
            if ok:
                hits.append(u if uid else seq)
                highest = max(highest, e.modseq)
        text = "SEARCH" + "".join(f" {h}" for h in hits)
        if info.uses_modseq and hits:
            text += f" (MODSEQ {highest})"
        if info.uses_modseq:
            self.condstore = True
        self._untagged(text)
        self._done(tag, "SEARCH completed", allow_expunge=uid)

    # -- FETCH --

    def _parse_fetch_items(self, token) -> list[tuple]:
        from pyimap.fetch import parse_items

        return parse_items(token)

    def cmd_fetch(self, tag, args, uid=False):
        from pyimap.fetch import render_message

        self._need(args, 2, 3)
        sel = self.sel
        uids = self._resolve(args[0], uid)
        items = self._parse_fetch_items(args[1])
        changed_since = None
        if len(args) == 3:
            mods = args[2]
            if not isinstance(mods, list) or len(mods) not in (2, 3) or str(mods[0]).upper() != "CHANGEDSINCE" \
                    or not is_number(str(mods[1])):
                raise ParseError("Bad FETCH modifier")
            changed_since = int(mods[1])
            self.condstore = True
            if ("MODSEQ",) not in items:
                items.append(("MODSEQ",))
        if self.condstore and ("MODSEQ",) not in items and any(i[0] == "FLAGS" for i in items):
            items.append(("MODSEQ",))
        if uid and not any(i[0] == "UID" for i in items):
            items.insert(0, ("UID",))
        sets_seen = not sel.readonly and any(i[0] in ("BODY[]", "RFC822", "RFC822.TEXT") and i[-1] is False
                                             for i in items)
        snap = sel.index.sync()
        if sets_seen:
            changes = {}
            for u in uids:
                e = snap.entries.get(u)
                if e is not None and "S" not in e.flags:
                    changes[u] = (e.flags + "S", e.kw)
            if changes:
                sel.index.set_flags(changes)
                snap = sel.index.sync()
                for u in changes:
                    if u in snap.entries:
                        sel.known[u] = -1  # force FLAGS into the response below
        missing = False
        for u in uids:
            e = snap.entries.get(u)
            if e is None:
                missing = True
                continue
            if changed_since is not None and e.modseq <= changed_since:
                continue
            seq = sel.seq_of(u)
            want = items
            if sets_seen and sel.known.get(u) == -1 and not any(i[0] == "FLAGS" for i in items):
                want = items + [("FLAGS",)]
            try:
                pieces = render_message(self, sel, e, u, seq, want)
            except FileNotFoundError:
                # another process renamed it (new flags) or expunged it: look again
                snap = sel.index.resync()
                e = snap.entries.get(u)
                try:
                    if e is None:
                        raise FileNotFoundError
                    pieces = render_message(self, sel, e, u, seq, want)
                except FileNotFoundError:
                    missing = True
                    continue
            self.out.extend(pieces)
            if any(i[0] == "FLAGS" for i in want):
                sel.known[u] = e.modseq
        if missing and not uid:
            self._updates(False)
            self._tagged(tag, "NO Some messages were expunged")
            return
        self._done(tag, "FETCH completed", allow_expunge=uid)

    # -- IDLE --

    def cmd_idle(self, tag, args):
        self._need(args, 0, 0)
        self.idle_tag = tag
        self.idle_started = time.monotonic()
        self._send(b"+ idling\r\n")
        if self.sel is not None:
            self._updates(allow_expunge=True)

    def _idle_line(self, parts) -> None:
        tag, self.idle_tag = self.idle_tag, None
        line = parts[0] if len(parts) == 1 else b""
        if line.strip().upper() != b"DONE":
            self._tagged(tag, "BAD Expected DONE")
            return
        self._done(tag, "IDLE terminated")

    # -- untagged updates --

    def _updates(self, allow_expunge: bool) -> None:
        sel = self.sel
        if sel is None:
            return
        snap = sel.index.sync()
        if snap.uidvalidity != sel.uidvalidity:
            self._untagged("BYE Mailbox UIDVALIDITY changed")
            self.closed = True
            return
        if snap is sel.snap and not sel.ghosts:
            return
        entries = snap.entries
        if allow_expunge:
            gone = [u for u in sel.view if u not in entries]
            for u in gone:
                seq = sel.seq_of(u)
                if seq:
                    del sel.view[seq - 1]
                    sel.known.pop(u, None)
                    sel.recent.discard(u)
                    self._untagged(f"{seq} EXPUNGE")
            sel.ghosts = False
        else:
            sel.ghosts = any(u not in entries for u in sel.view)
        last = sel.view[-1] if sel.view else 0
        new = [u for u in entries if u > last] if entries and next(reversed(entries)) > last else []
        for u in sel.view:
            e = entries.get(u)
            if e is not None and e.modseq != sel.known.get(u):
                sel.known[u] = e.modseq
                extra = f" MODSEQ ({e.modseq})" if self.condstore else ""
                self._untagged(f"{sel.seq_of(u)} FETCH (UID {u} FLAGS {self._flags_of(e, u)}{extra})")
        if new:
            if not sel.readonly:
                fresh = [u for u in new if entries[u].sub == "new"]
                if fresh:
                    moved = sel.index.to_cur(fresh)
                    sel.recent |= set(moved)
                    snap = sel.index.sync()
                    entries = snap.entries
            sel.view.extend(new)
            for u in new:
                e = entries.get(u)
                sel.known[u] = e.modseq if e is not None else 0
            self._untagged(f"{len(sel.view)} EXISTS")
            self._untagged(f"{len(sel.recent)} RECENT")
            kws = set(snap.keywords())
            if kws - sel.keywords:
                sel.keywords |= kws
                self._untagged(f"FLAGS {self._flag_list_for(sel.keywords)}")
        sel.snap = snap


COMMANDS = {
    "CAPABILITY": ("cmd_capability", (NOT_AUTH, AUTH, SELECTED)),
    "NOOP": ("cmd_noop", (NOT_AUTH, AUTH, SELECTED)),
    "LOGOUT": ("cmd_logout", (NOT_AUTH, AUTH, SELECTED)),
    "ID": ("cmd_id", (NOT_AUTH, AUTH, SELECTED)),
    "ENABLE": ("cmd_enable", (AUTH,)),
    "STARTTLS": ("cmd_starttls", (NOT_AUTH,)),
    "LOGIN": ("cmd_login", (NOT_AUTH,)),
    "AUTHENTICATE": ("cmd_authenticate", (NOT_AUTH,)),
    "SELECT": ("cmd_select", (AUTH, SELECTED)),
    "EXAMINE": ("cmd_examine", (AUTH, SELECTED)),
    "CREATE": ("cmd_create", (AUTH, SELECTED)),
    "DELETE": ("cmd_delete", (AUTH, SELECTED)),
    "RENAME": ("cmd_rename", (AUTH, SELECTED)),
    "SUBSCRIBE": ("cmd_subscribe", (AUTH, SELECTED)),
    "UNSUBSCRIBE": ("cmd_unsubscribe", (AUTH, SELECTED)),
    "LIST": ("cmd_list", (AUTH, SELECTED)),
    "LSUB": ("cmd_lsub", (AUTH, SELECTED)),
    "STATUS": ("cmd_status", (AUTH, SELECTED)),
    "APPEND": ("cmd_append", (AUTH, SELECTED)),
    "NAMESPACE": ("cmd_namespace", (AUTH, SELECTED)),
    "IDLE": ("cmd_idle", (AUTH, SELECTED)),
    "CHECK": ("cmd_check", (SELECTED,)),
    "CLOSE": ("cmd_close", (SELECTED,)),
    "UNSELECT": ("cmd_unselect", (SELECTED,)),
    "EXPUNGE": ("cmd_expunge", (SELECTED,)),
    "SEARCH": ("cmd_search", (SELECTED,)),
    "FETCH": ("cmd_fetch", (SELECTED,)),
    "STORE": ("cmd_store", (SELECTED,)),
    "COPY": ("cmd_copy", (SELECTED,)),
    "MOVE": ("cmd_move", (SELECTED,)),
}


def _namespace(self, tag, args):
    self._need(args, 0, 0)
    self._untagged('NAMESPACE (("" "/")) NIL NIL')
    self._done(tag, "NAMESPACE completed")


IMAPServer.cmd_namespace = _namespace
