"""The IMAP protocol core: bytes in, actions out (see ``pymta.lib.sansio``).

Command dispatch through a table, session states, literals (an APPEND
literal goes straight to the store's spool), tagged and untagged output,
the error policy (never a traceback on the wire).  The commands themselves
are in ``imap_server`` (any state, login), ``mailboxes`` (the mailbox
tree) and ``selected`` (the selected mailbox's messages); the store they
use is named by ``storage``.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from pyimap import mailbox_names as mn
from pyimap.formats import ATOM_OK
from pyimap.parser import CONTINUE, ERROR, FATAL, Atom, ParseError, Reader, quote, tokenize
from pyimap.storage import Backend, MailStore, MessageSpool
from pymta.lib import jobslots
from pymta.lib.record import Record
from pymta.lib.sansio import CLOSE, ConnectionInfo, Job, Protocol, disconnected

if TYPE_CHECKING:
    from collections.abc import Callable

NOT_AUTH, AUTH, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"
ANY_STATE = (NOT_AUTH, AUTH, SELECTED)
MAX_BAD = 20
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # answered NO [OVERQUOTA]
# Where a command runs (no disk I/O on the event loop, see pymail(7)): once
# logged in, a command that may touch the store runs in a Job (a thread of
# the listening daemon, inline under inetd).
IO_STORE = "store"  # always in a Job once logged in (the default: a new command is safe)
IO_SELECTED = "selected"  # only its closing untagged updates touch the store: a Job while selected
IO_NONE = "none"  # never touches the store: on the loop
SPOOL_FLUSH = 256 * 1024  # APPEND literal octets gathered before a Job writes them to the spool


class Command(NamedTuple):
    """One row of the command table."""

    method: str  # the IMAPServer method that runs it
    states: tuple[str, ...]  # where it is allowed
    uid: bool = False  # may follow UID (then called with uid=True)
    io: str = IO_STORE  # IO_STORE, IO_SELECTED or IO_NONE


class SpoolBuffer:
    """An APPEND literal on its way to the store's spool (a ``MessageSpool``).

    The reader writes the literal here on the event loop, into memory; the
    core hands what gathered (``SPOOL_FLUSH`` octets) to a Job, which makes
    the spool file at its first write and appends to it.  ``finish`` runs in
    the APPEND command's Job.  A failure to make the file is kept and raised
    by ``finish``, as the spool keeps its write errors."""

    def __init__(self, make: Callable[[], MessageSpool]) -> None:
        self.make = make
        self.spool: MessageSpool | None = None
        self.buf = bytearray()
        self.error: OSError | None = None
        self.aborted = False
        # A flush (a Job) and the abort of a client gone meanwhile (a job thread,
        # jobslots.off_loop) never touch the file at once, nor make it after the abort.
        self._file_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.spool.size if self.spool is not None else 0

    @property
    def wsize(self) -> int:
        return self.spool.wsize if self.spool is not None else 0

    @property
    def base(self) -> str:
        return self.spool.base if self.spool is not None else ""  # known after finish()

    @property
    def bare_lf(self) -> bool:
        return self.spool.bare_lf if self.spool is not None else False  # known after finish()

    def write(self, data: bytes) -> None:
        if self.error is None and not self.aborted:
            self.buf += data

    def flush(self) -> None:
        """Write what gathered to the spool file (in a Job)."""
        with self._file_lock:
            self._flush()

    def _flush(self) -> None:
        data, self.buf = bytes(self.buf), bytearray()
        if self.error is not None or self.aborted:
            return
        if self.spool is None:
            try:
                self.spool = self.make()
            except OSError as exc:
                self.error = exc
                return
        if data:
            self.spool.write(data)

    def finish(self, mtime: int | None = None) -> str:
        with self._file_lock:
            self._flush()
            if self.error is not None:
                raise self.error
            assert self.spool is not None  # made by flush()
            return self.spool.finish(mtime)

    def abort(self) -> None:
        """Often noticed on the event loop (the client hung up mid-literal):
        the file's close and unlink then go to a job thread."""
        self.aborted = True
        self.buf = bytearray()
        jobslots.off_loop(self._abort_file)

    def _abort_file(self) -> None:
        with self._file_lock:
            if self.spool is not None:
                self.spool.abort()


class IMAPSettings(Record):
    # a Record, not a dataclass: every inetd connection imports this module
    __slots__ = (
        "hostname",
        "max_line",
        "max_literal",
        "max_mem_literal",
        "autologout",
        "login_timeout",
        "idle_poll",
        "idle_inotify",
        "plaintext_ok",
        "software",
    )
    FIELDS = (
        ("hostname", "localhost"),
        ("max_line", 65536),  # octets of one command line (literals excluded)
        ("max_literal", 100 * 1024 * 1024),  # APPEND; advertised as APPENDLIMIT
        ("max_mem_literal", 65536),  # any other literal
        ("autologout", 1800.0),  # RFC 3501 5.4: at least 30 minutes once logged in
        ("login_timeout", 60.0),
        ("idle_poll", 0.5),  # seconds between IDLE checks when the mailbox is not watched
        ("idle_inotify", True),  # IDLE asks the driver to watch the mailbox (inotify), else polls
        ("plaintext_ok", False),  # may a password cross this connection without TLS
        ("software", "pymail"),
    )
    hostname: str
    max_line: int
    max_literal: int
    max_mem_literal: int
    autologout: float
    login_timeout: float
    idle_poll: float
    idle_inotify: bool
    plaintext_ok: bool
    software: str


class CommandContext:
    """What the command mixins (``mailboxes``, ``selected``) use of ``IMAPCore`` and what the
    core uses of them: declarations for the type checker, nothing at run time."""

    settings: IMAPSettings
    state: str
    store: MailStore | None
    sel: Any  # a pyimap.selected.Selected or None (declared so there: selected imports this module)
    out: list
    closed: bool
    idle_tag: str | None
    idle_started: float
    idle_watched: bool
    auth_tag: str | None
    enabled: set[str]  # ENABLEd extensions, as ENABLED names them (cmd_enable)
    condstore: bool

    if TYPE_CHECKING:
        # IMAPCore's
        def _send(self, data: bytes) -> None: ...
        def _untagged(self, text: str) -> None: ...
        def _tagged(self, tag: str, text: str) -> None: ...
        def _done(self, tag: str, text: str = "completed", allow_expunge: bool = True, code: str = "") -> None: ...
        @staticmethod
        def _need(args, n: int, max_n: int | None = None) -> None: ...
        @staticmethod
        def _astring(token) -> str: ...
        def _mailbox(self, token) -> str: ...
        def _quoted_name(self, name: str) -> str: ...
        @property
        def rev2(self) -> bool: ...
        @property
        def utf8(self) -> bool: ...
        def _in_job(self, fn, *args) -> None: ...
        def _idle_poll(self) -> None: ...

        # the commands' (selected, imap_server)
        def _updates(self, allow_expunge: bool, look: Any = None) -> bool: ...
        def _idle_line(self, parts) -> None: ...
        def _auth_line(self, parts) -> None: ...
        def _select_list(self, name: str) -> None: ...


class IMAPCore(Protocol, CommandContext):
    """The session and its plumbing; the subclass supplies COMMANDS and the cmd_* methods."""

    COMMANDS: dict[str, Command] = {}

    def __init__(self, settings: IMAPSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.state = NOT_AUTH
        self.info = ConnectionInfo()
        self.user: str | None = None
        self.store: MailStore | None = None
        self.sel = None  # a pyimap.selected.Selected while a mailbox is selected
        self.out: list = []
        self.reader = Reader(
            max_line=settings.max_line,
            max_literal=settings.max_literal,
            max_mem_literal=settings.max_mem_literal,
            sink_for=self._sink_for,
        )
        self.waiting = False  # a Job is outstanding
        self.closed = False
        self.idle_tag: str | None = None
        self.idle_started = 0.0
        self.idle_watched = False  # the driver tells of changes to the idling mailbox
        self.auth_tag: str | None = None
        self.bad_count = 0
        self.enabled: set[str] = set()
        self.condstore = False
        self.timeout = settings.login_timeout
        self._job_then: Callable[[Any], None] | None = None
        self.client_id: dict[str, str] | None = None
        self.end_reason = ""  # why the session ended, in Dovecot's words ("Logged out"), when the server knows
        self.end_logged = False

    # -- driver interface ---------------------------------------------------------

    def connection_made(self, info: ConnectionInfo) -> list:
        self.info = info
        self._untagged(f"OK [CAPABILITY {self._capabilities()}] {self.settings.software} IMAP4rev1 ready")
        return self._flush()

    def data_received(self, data: bytes) -> list:
        if not data:
            self.closed = True
            self.end_reason = self.end_reason or "Connection closed"
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
                self._in_job(self._idle_poll)
                return self._flush()
        self._untagged("BYE Autologout; idle for too long")
        self.end_reason = self.end_reason or f"Inactivity - no input for {round(self.timeout)} secs"
        self.closed = True
        self._cleanup()
        return self._flush() + [CLOSE]

    def connection_lost(self) -> None:
        self._cleanup()
        if self.user is not None and not self.end_logged:
            self.end_logged = True
            self._log_end(self.end_reason)

    def _log_end(self, reason: str) -> None:
        """One line per login, as Dovecot's: imap(USER): Disconnected: Logged out in=N out=N."""
        from pymta.lib import log  # noqa: PLC0415 lazy (loaded by every daemon already)

        log.info(f"imap({self.user}): {disconnected(self.info, reason)} rip={self.info.peer_ip}")

    def watching(self, ok: bool) -> list:
        """The driver's answer to IDLE's Watch: then one look at the mailbox, so a
        change made before the watch was in place is not missed."""
        self.idle_watched = ok
        if self.idle_tag is not None and self.sel is not None and not self.waiting and not self.closed:
            self._in_job(self._idle_poll)
        self._set_timeout()
        return self._flush()

    def changed(self, result=None) -> list:
        """The idling mailbox changed: look at it in a Job -- or, given what
        the look shared by the sessions idling on it found (``selected.Look``,
        newer than anything this session saw), tell the client at once."""
        if self.idle_tag is None or self.sel is None or self.waiting or self.closed:
            return []
        if result is None:
            self._in_job(self._idle_poll)
            return self._flush()
        try:
            self._updates(allow_expunge=True, look=result)
        except Exception as exc:  # never a traceback on the wire
            self._log_error("idle update", exc)
        return self._flush() + [CLOSE] if self.closed else self._flush()

    def _idle_poll(self) -> None:
        """In a Job: what changed in the mailbox while the client idles."""
        try:
            self._updates(allow_expunge=True)
        except Exception as exc:  # never a traceback on the wire
            self._log_error("idle poll", exc)

    # -- plumbing ---------------------------------------------------------------------

    def _cleanup(self) -> None:
        self.reader.reset()

    def _flush(self) -> list:
        out, self.out = self.out, []
        if not out:
            return []
        try:
            return [b"".join(out)]  # the common case: only bytes (a FETCH of a big folder has one per message)
        except TypeError:
            pass  # a Job, Watch or Stream among them: merge the bytes around it
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
            from pymta.lib import log  # noqa: PLC0415 lazy: only on the error path

            log.error(f"{what}: {type(exc).__name__}: {exc}")
        except Exception:
            pass

    def _capabilities(self) -> str:
        caps = [
            "IMAP4rev1",
            "IMAP4rev2",  # RFC 9051, once ENABLEd (imap_server.cmd_enable); IMAP4rev1 until then
            "LITERAL+",
            "SASL-IR",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "SEARCHRES",
            "STATUS=SIZE",
            "BINARY",
            "MULTIAPPEND",
            "CATENATE",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "SORT",
            "SORT=DISPLAY",
            "ESORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "UTF8=ACCEPT",
            f"APPENDLIMIT={self.settings.max_literal}",
        ]
        if self.state == NOT_AUTH:
            if self.info.tls_available and not self.info.tls:
                caps.append("STARTTLS")
            if self.settings.plaintext_ok or self.info.tls:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        else:
            caps.append("UNAUTHENTICATE")  # RFC 8437: only once authenticated
        return " ".join(caps)

    def _set_timeout(self) -> None:
        if self.idle_tag is not None and self.idle_watched:
            # told of changes: the only deadline left is the autologout
            self.timeout = max(1.0, self.settings.autologout - (time.monotonic() - self.idle_started))
        elif self.idle_tag is not None:
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
        if 0 < size <= self.settings.max_mem_literal and self.reader.size + size <= self.reader.max_command:
            return None  # small (or the mailbox name): memory is fine, APPEND spools it afterwards
        if size == 0:
            if any(b"CATENATE" in s.upper() for s in segments if isinstance(s, bytes)):
                return None  # an empty TEXT part (RFC 4469)
            return "NO Empty messages cannot be appended"
        if size > self.settings.max_literal:
            return "NO [TOOBIG] Message too big"
        return SpoolBuffer(self.store.spool)  # the file is made by the first Job that writes

    def _process(self) -> list:
        while not self.waiting and not self.closed:
            sink = self.reader.lit_sink
            if isinstance(sink, SpoolBuffer) and len(sink.buf) >= SPOOL_FLUSH:
                self._in_job(sink.flush)
                break
            try:
                event = self.reader.next_event()
            except Exception as exc:  # pragma: no cover - defensive
                self._log_error("reader", exc)
                self._untagged("BYE Internal error")
                self.end_reason = self.end_reason or "Internal error"
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
                self.end_reason = self.end_reason or "Literal too big to skip"
                self.closed = True
                break
            parts = event[1]
            if self.idle_tag is not None:
                if self.sel is not None:
                    self._in_job(self._idle_line, parts)  # DONE: the closing updates read the store
                else:
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
            self.end_reason = self.end_reason or "Too many invalid IMAP commands."
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
        if not isinstance(tag, Atom) or not ATOM_OK.match(tag) or "+" in tag or not tag.isascii():
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
            sub = self.COMMANDS.get(args[0].upper()) if args and isinstance(args[0], Atom) else None
            if sub is None or not sub.uid:
                self._abort_sinks(parts)
                self._tagged(tag, "BAD Unknown UID command")
                self._count_bad()
                return
            uid = True
            name = args[0].upper()
            args = args[1:]
        entry = self.COMMANDS.get(name)
        if entry is None:
            self._abort_sinks(parts)
            self._tagged(tag, "BAD Unknown command")
            self._count_bad()
            return
        if self.state not in entry.states:
            self._abort_sinks(parts)
            self._tagged(tag, f"BAD Command {name} not valid in this state")
            return
        handler = getattr(self, entry.method)
        if self.store is not None and (entry.io == IO_STORE or (entry.io == IO_SELECTED and self.sel is not None)):
            self._in_job(self._run, handler, tag, args, uid, name, parts)
        else:
            self._run(handler, tag, args, uid, name, parts)

    def _in_job(self, fn, *args) -> None:
        """Run ``fn(*args)`` in a Job: it may read and write the store, and its
        output goes to ``self.out`` as usual (the driver leaves the session
        alone until ``job_done``)."""
        self.waiting = True
        self._job_then = None
        self.out.append(Job(fn, *args))

    def _run(self, handler, tag: str, args: list, uid: bool, name: str, parts: list) -> None:
        try:
            if uid:
                handler(tag, args, uid=True)
            else:
                handler(tag, args)
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
            trouble = self.store.unavailable if self.store is not None else (OSError,)
            if getattr(exc, "errno", None) in NO_SPACE_ERRNOS and isinstance(exc, trouble):
                # RFC 9208 / RFC 5530: the disk (or a quota) is full
                from pymda.quota import QuotaExceeded  # noqa: PLC0415 lazy: only on this path

                text = exc.strerror if isinstance(exc, QuotaExceeded) else "Not enough disk space, try again later"
                self._tagged(tag, f"NO [OVERQUOTA] {text}")
            elif isinstance(exc, trouble):
                self._tagged(tag, "NO [UNAVAILABLE] Temporary failure, try again")
            else:
                self._tagged(tag, "NO [SERVERBUG] Internal error")

    @staticmethod
    def _abort_sinks(parts) -> None:
        for p in parts:
            if isinstance(p, MessageSpool):
                p.abort()

    def _done(self, tag: str, text: str = "completed", allow_expunge: bool = True, code: str = "") -> None:
        if self.sel is not None and self._updates(allow_expunge) and self.condstore and not code:
            # expunges raised HIGHESTMODSEQ and no FETCH tells it: the tagged OK does (RFC 7162, as Dovecot)
            code = f"[HIGHESTMODSEQ {self.sel.snap.highestmodseq}]"
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

    @property
    def rev2(self) -> bool:
        """The client ENABLEd IMAP4rev2 (RFC 9051 behaviour: no \\Recent, ESEARCH for SEARCH...)."""
        return "IMAP4rev2" in self.enabled

    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings in UTF-8 (IMAP4rev2 or UTF8=ACCEPT enabled)."""
        return "IMAP4rev2" in self.enabled or "UTF8=ACCEPT" in self.enabled

    def _mailbox(self, token) -> str:
        return mn.normalize(self._astring(token), self.utf8)

    def _quoted_name(self, name: str) -> str:
        """A mailbox name as the session's wire form wants it, quoted."""
        return quote(mn.to_wire(name, self.utf8), self.utf8).decode("utf-8")
