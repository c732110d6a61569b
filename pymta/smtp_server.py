"""The ESMTP server as a sans-I/O state machine (see ``pymta.lib.sansio``).

Bytes in, replies and actions out; no sockets, no threads.  Policy (who may
send, which recipients exist, where the message goes) lives in the *backend*
the driver passes in; this module only knows the protocol:
RFC 5321 (SMTP), 1870 (SIZE), 2920 (PIPELINING), 3207 (STARTTLS),
3463 (enhanced codes), 4954 (AUTH), 6152 (8BITMIME), 6531 (SMTPUTF8);
with ``settings.lmtp``, LMTP (RFC 2033: LHLO instead of HELO/EHLO, and after
DATA one reply per recipient accepted, in order).

Three input modes share one bounded receive buffer: command lines, AUTH
continuation lines, and message text.  Every mode has a line cap; an
over-long line is answered once and the rest of it is discarded as it
arrives, so the buffer never holds more than one capped line of incomplete
input (qmail CVE-2005-1513: every buffer has a limit).
"""

from __future__ import annotations

import errno
import re
import time
from _thread import allocate_lock
from collections import namedtuple

from pymta.lib import metrics, sasl
from pymta.lib.address import AddressError, parse_path, split_path
from pymta.lib.linereader import LineReader
from pymta.lib.record import REQUIRED, Record
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Protocol

Reply = namedtuple("Reply", "code enhanced text")  # e.g. Reply(550, "5.1.1", "User unknown")

# A check's answer on the event loop that means "not from memory: ask me in a
# Job" (check_sender/check_recipient -> recheck_*); compared by identity, and
# a plain temporary failure should it ever reach a client.
IN_JOB = Reply(451, "4.3.0", "Temporary lookup failure")


class TempFailure(Exception):
    """A backend's "try again later": the client gets a 4xx reply."""


class Refused(Exception):
    """A sink's verdict on a whole message at commit (e.g. a forged From:):
    nothing is queued and the client gets ``reply`` instead of 250."""

    def __init__(self, reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class SMTPSettings(Record):
    __slots__ = (
        "hostname",
        "max_message_size",
        "max_recipients",
        "max_command_line",
        "max_text_line",
        "max_errors",
        "command_timeout",
        "data_timeout",
        "require_auth",
        "auth_plaintext_ok",
        "software",
        "max_session_time",
        "max_junk_commands",
        "recipient_policy",
        "lmtp",
        "milters",
    )
    hostname: str
    max_message_size: int
    max_recipients: int
    max_command_line: int
    max_text_line: int
    max_errors: int
    command_timeout: float
    data_timeout: float
    require_auth: bool
    auth_plaintext_ok: bool
    software: str
    max_session_time: float
    max_junk_commands: int
    recipient_policy: bool
    lmtp: bool
    milters: bool
    FIELDS = (
        ("hostname", REQUIRED),
        ("max_message_size", 25 * 1024 * 1024),
        ("max_recipients", 100),
        ("max_command_line", 2048),  # includes CRLF
        ("max_text_line", 8192),  # includes CRLF
        ("max_errors", 10),
        ("command_timeout", 300.0),
        ("data_timeout", 600.0),
        ("require_auth", False),  # submission: AUTH before MAIL (530 5.7.0)
        ("auth_plaintext_ok", False),  # AUTH allowed without TLS on this connection
        ("software", "pymail"),
        # A whole-session deadline: command_timeout only counts silence, so
        # a NOOP every few seconds would otherwise hold a session forever.
        ("max_session_time", 3600.0),
        # NOOP, RSET, VRFY, HELP, HELO/EHLO: Postfix's smtpd_junk_command_limit
        ("max_junk_commands", 100),
        # ask backend.check_policy (DNSBL, greylisting) as a Job after check_recipient
        ("recipient_policy", False),
        # LMTP (RFC 2033): LHLO, no AUTH, and the sink's commit returns one
        # Reply per accepted RCPT (a list), sent in order after the message
        ("lmtp", False),
        # tell backend.milter_event of each stage, as a Job (connect, HELO, MAIL, RCPT, DATA, RSET)
        ("milters", False),
    )


class Session(Record):
    """Per connection; replaced after STARTTLS (RFC 3207 4.2)."""

    __slots__ = ("info", "helo", "esmtp", "auth_user")
    info: ConnectionInfo
    helo: str | None
    esmtp: bool
    auth_user: str | None
    FIELDS = (("info", REQUIRED), ("helo", None), ("esmtp", False), ("auth_user", None))


class Envelope(Record):
    """Per transaction; replaced on RSET, HELO/EHLO and after DATA."""

    __slots__ = ("mail_from", "rcpt_to", "size", "body", "smtputf8", "checks", "queue_id")
    mail_from: str | None
    rcpt_to: list[str]
    size: int | None
    body: str | None
    smtputf8: bool
    checks: object
    queue_id: str
    FIELDS = (
        ("mail_from", None),  # None: no MAIL yet; "" is the null sender <>
        ("rcpt_to", []),
        ("size", None),  # declared with SIZE=
        ("body", None),  # "7BIT" / "8BITMIME"
        ("smtputf8", False),
        ("checks", None),  # the backend's own: checks it began at MAIL (smtpd: the SPF lookup)
        ("queue_id", ""),  # chosen at MAIL by a backend that needs it early (smtpd: the milters' "i" macro)
    )


# The contracts with the program around the machine (smtpd's SMTPBackend; tests
# use small fakes), for readers and type checkers only: importing typing
# costs every inetd connection.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any
    from typing import Protocol as Interface

    from pymta.lib.sansio import _Marker

    class MessageSink(Interface):
        """Where the text of one message goes, in pieces, after DATA."""

        def write(self, data: bytes) -> None: ...

        def commit(self) -> str | list[Reply]:
            """The queue ID once the message is safe (LMTP: one Reply per
            envelope.rcpt_to entry, in order); may raise Refused, TempFailure or OSError."""

        def abort(self) -> None: ...

    class Backend(Interface):
        """What the SMTP machine asks of the program around it (smtpd's SMTPBackend).

        The checks return None to accept or a Reply to refuse; they and
        ``authenticate``/``open_message`` run in Jobs where they may block."""

        def check_sender(self, session: Session, envelope: Envelope, address: str) -> Reply | None:
            """On the event loop, from memory; IN_JOB when the answer needs the
            disk (a lookup, a rate file): recheck_sender then runs in a Job."""

        def recheck_sender(self, session: Session, envelope: Envelope, address: str) -> Reply | None:
            """In a Job, after check_sender answered IN_JOB: the whole check."""

        def check_recipient(self, session: Session, envelope: Envelope, address: str) -> Reply | None:
            """On the event loop, from memory; IN_JOB as for check_sender."""

        def recheck_recipient(self, session: Session, envelope: Envelope, address: str) -> Reply | None:
            """In a Job, after check_recipient answered IN_JOB: the whole check."""

        def wants_policy(self, session: Session, envelope: Envelope, address: str) -> bool:
            """On the event loop, after check_recipient accepted ``address``, when
            settings.recipient_policy: must check_policy run (as a Job) for it?
            From what is in memory only (no disk, no DNS)."""

        def check_policy(self, session: Session, envelope: Envelope, address: str) -> Reply | None:
            """Asked after check_recipient when settings.recipient_policy and wants_policy
            (quota, DNSBL, greylisting)."""

        def milter_event(self, session: Session, envelope: Envelope | None, stage: str, *args: Any) -> Reply | None:
            """With settings.milters, in a Job: stage connect, helo, mail (args: ESMTP
            arguments), rcpt (address, arguments), data or abort; a Reply refuses."""

        def milter_close(self, session: Session) -> None:
            """The session is over (on the event loop: must not block)."""

        def authenticate(self, session: Session, username: str, password: str) -> bool: ...

        def open_message(self, session: Session, envelope: Envelope) -> MessageSink: ...


# RFC 4954 4: an AUTH exchange line may be up to 12288 octets.
MAX_AUTH_LINE = 12288
# Message text goes to the sink in pieces of about this size.
WRITE_CHUNK = 64 * 1024
# A dot-stuffed line: this search took half the time of bytes.find(b"\n.") on 100 KB of text.
_DOT_AFTER_LF = re.compile(rb"\n\.")


def _has_long_line(body: bytes | bytearray, cap: int) -> bool:
    """Whether complete lines hold one longer than ``cap`` octets with its CRLF.

    From a line start, the last LF among the next ``cap`` octets ends a run
    of lines that fit; no LF there means a line that does not.  A few rfind
    calls per block, not one object per line."""
    pos, end = 0, len(body)
    while end - pos > cap:
        nl = body.rfind(b"\n", pos, pos + cap)
        if nl < 0:
            return True
        pos = nl + 1
    return False


# Input modes.
_COMMAND, _DATA, _AUTH_PLAIN, _AUTH_LOGIN_USER, _AUTH_LOGIN_PASS = range(5)
# DATA sub-states, aiosmtpd's _DataState plus bare newlines (aiosmtpd#9,
# CVE-2023-51764): after the first problem keep draining to CRLF.CRLF, then
# send exactly one reply.
_NOMINAL, _BAD_NEWLINE, _TOO_LONG, _TOO_MUCH, _LOCAL_ERROR, _NO_SPACE = range(6)
_DATA_FAILURES = {
    _BAD_NEWLINE: Reply(550, "5.6.0", "Message contains bare CR or LF; refused (see RFC 5321 2.3.8)"),
    _TOO_LONG: Reply(500, "5.5.2", "Line too long"),
    _TOO_MUCH: Reply(552, "5.3.4", "Message size exceeds fixed limit"),
    _LOCAL_ERROR: Reply(451, "4.3.0", "Requested action aborted: local error in processing"),
    # RFC 3463 4.3.1 (ENOSPC, EDQUOT): a full disk is temporary, and says so
    _NO_SPACE: Reply(452, "4.3.1", "Insufficient system storage"),
}
_LOCAL_ERROR_REPLY = _DATA_FAILURES[_LOCAL_ERROR]
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _failure_state(exc: BaseException) -> int:
    """_NO_SPACE for a full disk or quota (an OSError or a QueueError carrying its errno), else _LOCAL_ERROR."""
    return _NO_SPACE if getattr(exc, "errno", None) in _NO_SPACE_ERRNOS else _LOCAL_ERROR


_MAIL_PARAMS = ("SIZE", "BODY", "SMTPUTF8")
# Commands that move no mail (Postfix's smtpd_junk_command_limit counts the
# same; ETRN, EXPN and unknown verbs are errors here and counted as such).
_JUNK_COMMANDS = frozenset((b"NOOP", b"RSET", b"VRFY", b"HELP", b"HELO", b"EHLO", b"LHLO"))
# Bytes never allowed in a command line: controls (CR, LF, NUL, TAB...).
_CONTROLS = bytes(range(32)) + b"\x7f"


class SMTPServer(LineReader, Protocol):
    def __init__(self, settings: SMTPSettings, backend: Backend, clock=time.monotonic) -> None:
        self.settings = settings
        self.backend = backend
        self.session = Session(ConnectionInfo())
        self.envelope = Envelope()
        self._clock = clock  # monotonic seconds; tests pass their own
        self._session_end = clock() + settings.max_session_time
        self._junk = 0  # junk commands since the last message accepted
        self.timeout = settings.command_timeout
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no LF (never rescan)
        self._skipping = False  # discarding the rest of an over-long line
        self._skip_cr = False  # last discarded byte was CR
        self._mode = _COMMAND
        self._errors = 0
        self._closed = False
        self._awaiting_tls = False
        self._job: str | None = None  # what a pending Job is for: commit, write, auth, mail, policy, milter
        # A Job that writes to the sink ("write", "commit") owns it until it ends: an abort
        # meanwhile (the client hung up) is left to that Job, so no two threads touch the
        # sink's file at once (a close under a write could hit a descriptor number reused).
        self._sink_busy = False
        self._sink_abandoned = False
        self._handoff = allocate_lock()
        self._then: Callable[[Reply | None], None] | None = None  # a milter Job's continuation
        self._out: list[bytes] = []  # replies of the current batch
        self._marker: Job | _Marker | None = None  # Job / STARTTLS / CLOSE ending the current batch
        # DATA state
        self._sink: MessageSink | None = None
        self._dstate = _NOMINAL
        self._size = 0
        self._prev_crlf = True  # the last line ended in CRLF (CRLF.CRLF detection)
        self._pending = bytearray()  # text batched for sink.write
        self._login_user = b""
        self._lmtp_replies = 0  # LMTP: replies owed after the message (RCPTs accepted)

    # -- driver interface --------------------------------------------------------

    def connection_made(self, info: ConnectionInfo) -> list:
        self.session = Session(info)
        s = self.settings
        self._session_end = self._clock() + s.max_session_time
        self._out.append(f"220 {s.hostname} {'LMTP' if s.lmtp else 'ESMTP'} {s.software}\r\n".encode())
        if s.milters:  # the greeting goes out while the milters hear of the client
            self._milter("connect", None, (), lambda reply: None)
        return self._flush()

    def data_received(self, data: bytes) -> list:
        if self._closed:
            return []
        if not data:
            self._abort_sink()
            self._closed = True
            return [CLOSE]
        if self._awaiting_tls:
            return []  # plaintext after STARTTLS is never read (CVE-2011-0411)
        self._buf += data
        if self._job is not None:
            return []  # the driver should not feed us now; keep it for job_done
        return self._process()

    def job_done(self, result) -> list:
        kind, self._job = self._job, None
        if kind == "commit":
            self._sink = None
            if self.settings.lmtp:
                self._lmtp_done(result)
            elif isinstance(result, str) and result:
                self._junk = 0  # a client that moves mail may RSET between messages
                self._send(250, "2.0.0", f"Ok: queued as {result}")
            elif isinstance(result, Reply):
                self._send(*result)
            else:
                self._send(*_DATA_FAILURES[result if result in _DATA_FAILURES else _LOCAL_ERROR])
        elif kind == "auth":
            user, ok = result
            if ok:
                self.session.auth_user = user
                self._send(235, "2.7.0", "Authentication successful")
            elif ok is None:
                self._send(454, "4.7.0", "Temporary authentication failure")
            else:
                self._send(535, "5.7.8", "Authentication credentials invalid")
        elif kind == "write":
            if result is not None:
                self._data_problem(result)
        elif kind == "mail":
            self._mail_checked(*result)
        elif kind == "policy":
            envelope, address, reply = result
            if reply is not None:
                self._send(*reply)
            else:
                self._accept_recipient(envelope, address)
        elif kind == "milter":
            then, self._then = self._then, None
            if then is not None and not self._closed:
                then(result)
        self._check_errors()
        return self._process()

    def _lmtp_done(self, result) -> None:
        """RFC 2033 4.2: one reply per recipient accepted, in RCPT order; a
        verdict on the whole message (a Reply, a failure state) answers for each."""
        count, self._lmtp_replies = self._lmtp_replies, 0
        if isinstance(result, list) and len(result) == count and all(isinstance(r, Reply) for r in result):
            replies = result
            self._junk = 0
        else:
            if isinstance(result, list):
                _log_failure("commit", ValueError(f"{len(result)} replies for {count} recipients"))
            reply = result if isinstance(result, Reply) else _DATA_FAILURES.get(result, _LOCAL_ERROR_REPLY)
            replies = [reply] * count
        self._replies(replies)

    def _replies(self, replies: list[Reply]) -> None:
        """Per-recipient replies: sent, but not counted as the client's errors."""
        self._out.append(
            b"".join(
                (f"{r.code} {r.enhanced} {r.text}\r\n" if r.enhanced else f"{r.code} {r.text}\r\n").encode()
                for r in replies
            )
        )

    def tls_started(self, info: ConnectionInfo) -> list:
        self._awaiting_tls = False
        self._buf.clear()
        self._scanned = 0
        self._skipping = False
        self.session = Session(info)  # forget HELO and AUTH (RFC 3207 4.2)
        self.envelope = Envelope()
        return []

    def timed_out(self) -> list:
        if self._session_over():
            self._send(421, "4.4.2", f"{self.settings.hostname} Error: session time limit exceeded, closing connection")
        else:
            self._send(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded")
        self._close()
        return self._flush()

    @property
    def timeout(self) -> float:
        """Seconds the driver waits for input: the phase's timeout, cut to
        what is left of the session (drivers read it each time they wait)."""
        return max(0.0, min(self._phase_timeout, self._session_end - self._clock()))

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._phase_timeout = seconds

    def _session_over(self) -> bool:
        return self._clock() >= self._session_end

    def connection_lost(self) -> None:
        self._abort_sink()
        self._closed = True
        if self.settings.milters:
            try:
                self.backend.milter_close(self.session)
            except Exception as exc:
                _log_failure("milter_close", exc)

    # -- the loop ------------------------------------------------------------------

    def _process(self) -> list:
        while not (self._closed or self._awaiting_tls or self._job is not None):
            if self._mode == _DATA:
                progressed = self._data_step()
            else:
                progressed = self._line_step()
            self._check_errors()
            if not progressed:
                break
        return self._flush()

    def _flush(self) -> list:
        actions: list = [b"".join(self._out)] if self._out else []
        if self._marker is not None:
            actions.append(self._marker)
        self._out = []
        self._marker = None
        return actions

    def _send(self, code: int, enhanced: str, text: str) -> None:
        if code >= 400:
            self._errors += 1
        self._out.append(f"{code} {enhanced} {text}\r\n".encode() if enhanced else f"{code} {text}\r\n".encode())

    def _check_errors(self) -> None:
        if self._errors >= self.settings.max_errors and not self._closed:
            self._send(421, "4.7.0", f"{self.settings.hostname} Error: too many errors")
            self._close()

    def _close(self) -> None:
        self._abort_sink()
        self._closed = True
        self._marker = CLOSE

    def _line_step(self) -> bool:
        if self._mode == _COMMAND:
            line = self._read_line(self.settings.max_command_line)
            if line is None:
                return False
            if line is False:
                self._send(500, "5.5.2", "Line too long")
            else:
                self._command(_chomp(line).rstrip(b" "))
            return True
        line = self._read_line(MAX_AUTH_LINE)
        if line is None:
            return False
        step, self._mode = self._mode, _COMMAND
        if line is False:
            self._send(500, "5.5.6", "Authentication Exchange line is too long")  # RFC 4954 6
        else:
            self._auth_continue(_chomp(line).strip(b" \t"), step)
        return True

    # -- commands ------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        if self._session_over():  # a pipelined client never waits long enough to time out
            self._send(421, "4.4.2", f"{self.settings.hostname} Error: session time limit exceeded, closing connection")
            self._close()
            return
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in _JUNK_COMMANDS:
            self._junk += 1
            if self._junk > self.settings.max_junk_commands:
                self._send(421, "4.7.0", f"{self.settings.hostname} Error: too many junk commands, closing connection")
                self._close()
                return
        entry = _COMMANDS.get(verb)
        if entry is not None and verb in _GREETINGS and (verb == b"LHLO") != self.settings.lmtp:
            if self.settings.lmtp:  # RFC 2033 4.1: an LMTP server answers HELO/EHLO with an error
                self._send(500, "5.5.1", "Error: this is an LMTP server: send LHLO")
                return
            entry = None  # LHLO is no SMTP command
        if entry is None:
            if verb.isascii() and verb.translate(None, _CONTROLS) == verb:
                self._send(500, "5.5.2", "Error: command not recognized")
            else:
                self._send(500, "5.5.2", "Error: invalid characters in command")
            return
        if arg.translate(None, _CONTROLS) != arg or not (entry.utf8 or arg.isascii()):
            self._send(500, "5.5.2", "Error: invalid characters in command")
            return
        try:
            text = arg.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self._send(500, "5.5.2", "Error: invalid characters in command")
            return
        if entry.needs_helo and self.session.helo is None:
            self._send(503, "5.5.1", "Error: send LHLO first" if self.settings.lmtp else "Error: send HELO/EHLO first")
        elif entry.needs_auth and self.settings.require_auth and self.session.auth_user is None:
            self._send(530, "5.7.0", "Authentication required")
        else:
            entry.handler(self, text)

    def _cmd_helo(self, arg: str) -> None:
        if not arg:
            self._send(501, "5.5.4", "Syntax: HELO hostname")
            return
        self._new_transaction()
        if self.settings.milters:
            self._milter("helo", None, (arg,), lambda reply: self._helo_done(reply, arg, False))
            return
        self._helo_done(None, arg, False)

    def _helo_done(self, reply: Reply | None, arg: str, esmtp: bool) -> None:
        if reply is not None:
            self._send(*reply)
            return
        self.session.helo, self.session.esmtp = arg, esmtp
        if not esmtp:
            self._send(250, "", self.settings.hostname)
            return
        self._ehlo_reply()

    def _cmd_ehlo(self, arg: str) -> None:
        if not arg:
            self._send(501, "5.5.4", f"Syntax: {'LHLO' if self.settings.lmtp else 'EHLO'} hostname")
            return
        self._new_transaction()
        if self.settings.milters:
            self._milter("helo", None, (arg,), lambda reply: self._helo_done(reply, arg, True))
            return
        self._helo_done(None, arg, True)

    def _ehlo_reply(self) -> None:
        lines = [self.settings.hostname] + self._capabilities()
        self._out.append("".join(f"250-{t}\r\n" for t in lines[:-1]).encode() + f"250 {lines[-1]}\r\n".encode())

    def _capabilities(self) -> list[str]:
        offered: list[str] = []
        for keyword, condition, requires in _CAPABILITIES:
            if condition and not condition(self):
                continue
            if requires and requires not in offered:
                continue
            offered.append(keyword)
        texts = {"SIZE": f"SIZE {self.settings.max_message_size}", "AUTH": "AUTH PLAIN LOGIN"}
        return [texts.get(k, k) for k in offered]

    def _starttls_offered(self) -> bool:
        info = self.session.info
        return info.tls_available and not info.tls

    def _auth_possible(self) -> bool:
        if self.settings.lmtp:  # LMTP clients are trusted by where they connect from, never by a login
            return False
        return self.session.info.tls or self.settings.auth_plaintext_ok

    def _auth_offered(self) -> bool:
        return self._auth_possible() and self.session.auth_user is None

    def _cmd_mail(self, arg: str) -> None:
        env = self.envelope
        if env.mail_from is not None:
            self._send(503, "5.5.1", "Error: nested MAIL command")
            return
        if arg[:5].upper() != "FROM:":
            self._send(501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return
        try:
            path, rest = split_path(arg[5:].lstrip(" "))
        except AddressError:
            self._send(501, "5.1.7", "Bad sender address syntax")
            return
        params = self._parse_params(rest, _MAIL_PARAMS)
        if params is None:
            return
        size = params.get("SIZE")
        if size is not None and (not size.isascii() or not size.isdigit() or len(size) > 20):
            self._send(501, "5.5.4", "Bad SIZE syntax")
            return
        body = params.get("BODY")
        if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
            self._send(501, "5.5.4", "Unsupported BODY type")
            return
        if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
            self._send(501, "5.5.4", "SMTPUTF8 takes no value")
            return
        if size is not None and int(size) > self.settings.max_message_size:
            metrics.count_later("pymail_smtp_refused_total", service=self.session.info.service, reason="too_big")
            self._send(552, "5.3.4", "Message size exceeds fixed limit")
            return
        smtputf8 = "SMTPUTF8" in params
        address = self._parse_address(path, True, smtputf8, "5.1.7", "Bad sender address syntax")
        if address is None:
            return
        candidate = Envelope(address, [], int(size) if size is not None else None, body and body.upper(), smtputf8)
        reply = self._backend_check(self.backend.check_sender, candidate, address)
        if reply is IN_JOB:  # a lookup or a rate file: answered in job_done
            self._job = "mail"
            self._marker = Job(self._recheck_sender, candidate, address, tuple(rest.split()))
            return
        self._mail_checked(reply, candidate, tuple(rest.split()))

    def _recheck_sender(self, candidate: Envelope, address: str, milter_args: tuple):
        """Runs as a Job; never raises."""
        return self._backend_check(self.backend.recheck_sender, candidate, address), candidate, milter_args

    def _mail_checked(self, reply: Reply | None, candidate: Envelope, milter_args: tuple) -> None:
        if reply is not None:
            self._send(*reply)
            return
        if self.settings.milters:
            self._milter("mail", candidate, milter_args, lambda reply: self._mail_done(reply, candidate))
            return
        self._mail_done(None, candidate)

    def _mail_done(self, reply: Reply | None, candidate: Envelope) -> None:
        if reply is not None:
            self._send(*reply)
            return
        self.envelope = candidate
        self._send(250, "2.1.0", "Ok")

    def _cmd_rcpt(self, arg: str) -> None:
        env = self.envelope
        if env.mail_from is None:
            self._send(503, "5.5.1", "Error: need MAIL command")
            return
        if arg[:3].upper() != "TO:":
            self._send(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        try:
            path, rest = split_path(arg[3:].lstrip(" "))
        except AddressError:
            self._send(501, "5.1.3", "Bad recipient address syntax")
            return
        if self._parse_params(rest, ()) is None:  # no DSN: no RCPT parameters
            return
        args = tuple(rest.split())
        address: str | None
        if path.lower() == "<postmaster>":  # RFC 5321 4.1.1.3: MUST be accepted
            address = "postmaster"
        else:
            address = self._parse_address(path, False, env.smtputf8, "5.1.3", "Bad recipient address syntax")
            if address is None:
                return
        if len(env.rcpt_to) >= self.settings.max_recipients:
            self._send(452, "4.5.3", "Error: too many recipients")
            return
        reply = self._backend_check(self.backend.check_recipient, env, address)
        if reply is IN_JOB:
            if address in env.rcpt_to:  # checked already
                self._accept_recipient(env, address)
                return
            # the lookup in a Job, then the policy and milters there as below
            self._job = "policy"
            self._marker = Job(self._check_policy, env, address, args, None)
            return
        if reply is not None:
            self._send(*reply)
            return
        ask = self.settings.recipient_policy and address not in env.rcpt_to and self._wants_policy(env, address)
        if (ask or self.settings.milters) and address not in env.rcpt_to:
            # quota, DNSBL, greylisting and milters wait on DNS, disk and sockets: a Job, answered in job_done
            self._job = "policy"
            self._marker = Job(self._check_policy, env, address, args, ask)
            return
        self._accept_recipient(env, address)

    def _accept_recipient(self, envelope: Envelope, address: str) -> None:
        # one copy per recipient; LMTP keeps every accepted RCPT, since each gets its reply after DATA
        if self.settings.lmtp or address not in envelope.rcpt_to:
            envelope.rcpt_to.append(address)
        self._send(250, "2.1.5", "Ok")

    def _wants_policy(self, envelope: Envelope, address: str) -> bool:
        try:
            return self.backend.wants_policy(self.session, envelope, address)
        except Exception as exc:  # a backend bug: ask the policy anyway, it has its own guard
            _log_failure("wants_policy", exc)
            return True

    def _check_policy(self, envelope: Envelope, address: str, args: tuple = (), ask: bool | None = True):
        """Runs as a Job; never raises: (envelope, address, reply or None).
        The milters hear of a recipient the policy (when ``ask``) let through.
        ``ask=None``: check_recipient answered IN_JOB; its recheck comes first,
        then whether to ask the policy."""
        reply = None
        if ask is None:
            reply = self._backend_check(self.backend.recheck_recipient, envelope, address)
            ask = reply is None and self.settings.recipient_policy and self._wants_policy(envelope, address)
        if ask:
            reply = self._backend_check(self.backend.check_policy, envelope, address)
        if reply is None and self.settings.milters:
            reply = self._milter_event("rcpt", envelope, (address, list(args)))
        return envelope, address, reply

    def _milter(self, stage: str, envelope: Envelope | None, args: tuple, then) -> None:
        """Tell the milters of ``stage`` in a Job; ``then(reply or None)`` in job_done."""
        self._job = "milter"
        self._then = then
        self._marker = Job(self._milter_event, stage, envelope, args)

    def _milter_event(self, stage: str, envelope: Envelope | None, args: tuple):
        """Runs as a Job; never raises: the milters' Reply, or None to go on."""
        try:
            return self.backend.milter_event(self.session, envelope, stage, *args)
        except Exception as exc:  # a backend bug must not take the session down
            _log_failure("milter_event", exc)
            return _LOCAL_ERROR_REPLY

    def _parse_address(self, path: str, allow_null: bool, smtputf8: bool, enhanced: str, text: str) -> str | None:
        try:
            return parse_path(path, allow_null=allow_null, smtputf8=smtputf8)
        except AddressError:
            pass
        if not smtputf8 and not path.isascii():
            try:
                parse_path(path, allow_null=allow_null, smtputf8=True)
            except AddressError:
                pass
            else:  # valid, but only with SMTPUTF8 (RFC 6531 3.5, 5.6.7)
                self._send(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")
                return None
        self._send(501, enhanced, text)
        return None

    def _parse_params(self, text: str, known: tuple) -> dict | None:
        """ESMTP ``KEY[=VALUE]`` parameters; None after replying to a bad one."""
        params: dict[str, str | None] = {}
        for word in text.split(" "):
            if not word:
                continue
            key, eq, value = word.partition("=")
            key = key.upper()
            if key not in known or not self.session.esmtp:
                self._send(555, "5.5.4", f"Unsupported option: {_ascii(key)}")
                return None
            if key in params:
                self._send(501, "5.5.4", f"Duplicate option: {_ascii(key)}")
                return None
            params[key] = value if eq else None
        return params

    def _backend_check(self, check: Callable[[Session, Envelope, str], Reply | None], envelope: Envelope, address: str):
        try:
            return check(self.session, envelope, address)
        except Exception as exc:  # a backend bug must not take the session down
            _log_failure(getattr(check, "__name__", "check"), exc)
            return _LOCAL_ERROR_REPLY

    def _cmd_data(self, arg: str) -> None:
        env = self.envelope
        if env.mail_from is None:
            self._send(503, "5.5.1", "Error: need MAIL command")
        elif not env.rcpt_to:
            self._send(503, "5.5.1", "Error: need RCPT command")
        elif arg:
            self._send(501, "5.5.4", "Syntax: DATA")
        elif self.settings.milters:
            self._milter("data", env, (), self._data_go)
        else:
            self._data_go(None)

    def _data_go(self, reply: Reply | None) -> None:
        env = self.envelope
        if reply is not None:
            self._send(*reply)
        else:
            try:
                self._sink = self.backend.open_message(self.session, env)
            except Exception as exc:
                _log_failure("open_message", exc)
                self._send(*_LOCAL_ERROR_REPLY)
                return
            self._mode = _DATA
            self._dstate = _NOMINAL
            self._size = 0
            self._prev_crlf = True  # the DATA command's CRLF: ".CRLF" now ends an empty message
            self.timeout = self.settings.data_timeout
            self._send(354, "", "End data with <CR><LF>.<CR><LF>")

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            self._send(501, "5.5.4", "Syntax: RSET")
            return
        if self.settings.milters and self.envelope.mail_from is not None:  # the milters forget the message
            self._milter("abort", self.envelope, (), self._rset_done)
            return
        self._rset_done(None)

    def _rset_done(self, reply: Reply | None) -> None:
        self._new_transaction()
        self._send(250, "2.0.0", "Ok")

    def _cmd_noop(self, arg: str) -> None:
        self._send(250, "2.0.0", "Ok")  # RFC 5321 4.1.1.9: an argument is allowed and ignored

    def _cmd_quit(self, arg: str) -> None:
        self._send(221, "2.0.0", "Bye")
        self._close()

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg:
            self._send(501, "5.5.4", "Syntax: VRFY address")
        else:  # never tell who exists (RFC 5321 3.5.3)
            self._send(252, "2.0.0", "Send some mail, I'll try my best")

    def _cmd_not_implemented(self, arg: str) -> None:
        self._send(502, "5.5.1", "Error: command not implemented")

    def _cmd_help(self, arg: str) -> None:
        hidden = (b"EXPN", b"BDAT") + ((b"HELO", b"EHLO") if self.settings.lmtp else (b"LHLO",))
        self._send(214, "2.0.0", "Commands: " + " ".join(v.decode() for v in _COMMANDS if v not in hidden))

    def _cmd_starttls(self, arg: str) -> None:
        info = self.session.info
        if info.tls:
            self._send(502, "5.5.1", "Error: TLS already active")
        elif not info.tls_available:
            self._send(502, "5.5.1", "Error: command not implemented")
        elif arg:
            self._send(501, "5.5.4", "Syntax: STARTTLS")
        else:
            self._send(220, "2.0.0", "Ready to start TLS")
            # CVE-2011-0411: whatever the client pipelined after STARTTLS was
            # sent in plaintext and must never be read as a command.
            self._buf.clear()
            self._scanned = 0
            self._awaiting_tls = True
            self._marker = STARTTLS

    def _new_transaction(self) -> None:
        self.envelope = Envelope()

    # -- AUTH (RFC 4954) -------------------------------------------------------------

    def _cmd_auth(self, arg: str) -> None:
        words = arg.split()  # ASCII only: AUTH arguments are never UTF-8
        if not words or len(words) > 2:
            self._send(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        elif not self.session.esmtp:
            self._send(503, "5.5.1", "Error: send EHLO first")
        elif self.session.auth_user is not None:
            self._send(503, "5.5.1", "Error: already authenticated")
        elif self.envelope.mail_from is not None:
            self._send(503, "5.5.1", "Error: MAIL transaction in progress")
        elif not self._auth_possible():
            if self._starttls_offered():
                self._send(538, "5.7.11", "Encryption required for requested authentication mechanism")
            else:
                self._send(503, "5.5.1", "Error: authentication not enabled")
        else:
            mechanism = words[0].upper()
            initial = words[1].encode() if len(words) == 2 else None
            if mechanism == "PLAIN":
                if initial is None:
                    self._mode = _AUTH_PLAIN
                    self._send(334, "", "")
                else:
                    self._auth_continue(initial, _AUTH_PLAIN, initial=True)
            elif mechanism == "LOGIN":
                if initial is None:
                    self._mode = _AUTH_LOGIN_USER
                    self._send(334, "", "VXNlcm5hbWU6")  # "Username:"
                else:
                    self._auth_continue(initial, _AUTH_LOGIN_USER, initial=True)
            else:
                self._send(504, "5.5.4", "Unsupported authentication mechanism")

    def _auth_continue(self, line: bytes, step: int, initial: bool = False) -> None:
        """One client response; ``step`` is the exchange state it answers."""
        try:
            data = sasl.decode_response(line, initial=initial)
            if step == _AUTH_PLAIN:
                user, password = sasl.split_plain(data)
        except sasl.SaslError as exc:
            if exc.kind == "cancelled":
                self._send(501, "5.7.0", "Authentication aborted")
            elif exc.kind == "base64":
                self._send(501, "5.5.2", "Invalid base64")
            else:
                self._send(535, "5.7.8", "Authentication credentials invalid")
            return
        if step == _AUTH_PLAIN:
            self._start_auth_job(user, password)
        elif step == _AUTH_LOGIN_USER:
            self._login_user = data
            self._mode = _AUTH_LOGIN_PASS
            self._send(334, "", "UGFzc3dvcmQ6")  # "Password:"
        else:
            self._start_auth_job(self._login_user, data)

    def _start_auth_job(self, user: bytes, password: bytes) -> None:
        self._login_user = b""
        try:
            username, secret = user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            username = secret = ""
        if not username or "\0" in username or "\0" in secret:
            self._send(535, "5.7.8", "Authentication credentials invalid")
            return
        self._job = "auth"
        self._marker = Job(self._authenticate, username, secret)

    def _authenticate(self, username: str, password: str):
        """Runs as a Job (bcrypt is slow); never raises: (user, True/False/None)."""
        try:
            return username, bool(self.backend.authenticate(self.session, username, password))
        except Exception as exc:
            _log_failure("authenticate", exc)
            return username, None

    # -- DATA ------------------------------------------------------------------------

    def _data_step(self) -> bool:
        """Consume the complete lines buffered; False when more input is needed."""
        buf = self._buf
        if self._skipping:  # the rest of an over-long line
            i = buf.find(b"\n")
            if i < 0:
                if buf:
                    self._skip_cr = buf[-1] == 13
                    buf.clear()
                return False
            self._prev_crlf = (buf[i - 1] == 13) if i else self._skip_cr
            del buf[: i + 1]
            self._skipping = False
            self._scanned = 0
        last = buf.rfind(b"\n", self._scanned)
        if last < 0:
            if len(buf) >= self.settings.max_text_line:
                self._data_problem(_TOO_LONG)
                self._skip_cr = buf[-1] == 13
                buf.clear()
                self._skipping = True
                self._scanned = 0
            else:
                self._scanned = len(buf)
            return False
        # Only CRLF "." CRLF ends the text (CVE-2023-51764): the CRLF may be the
        # end of the previous block (or of the DATA command).
        if self._prev_crlf and buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n", 0, last + 1)
            if end >= 0:
                end += 2
        stop = end if end >= 0 else last + 1
        if stop:
            body = buf[:stop]
            self._prev_crlf = body.endswith(b"\r\n")
            if self._dstate == _NOMINAL:
                self._data_text(body)
        del buf[: stop + 3 if end >= 0 else stop]
        self._scanned = 0
        if end >= 0:
            self._data_end()
        elif len(self._pending) >= WRITE_CHUNK and self._dstate == _NOMINAL:
            self._sink_job("write", self._write_text)  # processing goes on at its job_done
        return True

    def _data_text(self, body: bytes | bytearray) -> None:
        """Complete lines (CRLF-ended, dot-stuffed) to the sink as LF text.

        Whole-block operations only, none per line, and two-octet searches
        (slow in CPython) only where a dot-stuffed line was found: about
        0.1 ms for 100 KB, against 0.5 ms for counts, split and replaces."""
        text = body.translate(None, b"\r")
        # Putting a CR back before every LF gives the block again only when
        # each CR was the CR of a CRLF and each LF had one: no bare CR or LF.
        if text.replace(b"\n", b"\r\n") != body:
            self._data_problem(_BAD_NEWLINE)
            return
        lf = len(body) - len(text)
        if _has_long_line(body, self.settings.max_text_line):
            self._data_problem(_TOO_LONG)
            return
        if text[0] == 46:  # "." at the start of the first line
            text = text[1:]
        if _DOT_AFTER_LF.search(text):
            text = text.replace(b"\n.", b"\n")  # RFC 5321 4.5.2 transparency
        self._size += len(text) + lf  # counted with CRLF, as SIZE is
        if self._size > self.settings.max_message_size:
            self._data_problem(_TOO_MUCH)
            return
        self._pending += text

    def _sink_job(self, kind: str, fn) -> None:
        """A Job that writes the text batched so far to the sink (and, for a
        commit, commits it): the disk is never touched on the event loop."""
        data = bytes(self._pending)
        self._pending.clear()
        self._sink_busy = True
        self._job = kind
        self._marker = Job(fn, self._sink, data)

    def _write_text(self, sink, data: bytes):
        """Runs as a Job; never raises: None, or the failure state (disk full
        and friends: answered with 452/451 at the end of DATA)."""
        try:
            sink.write(data)
            return None
        except Exception as exc:
            _log_failure("write", exc)
            return _failure_state(exc)
        finally:
            self._sink_job_over(sink)

    def _sink_job_over(self, sink) -> None:
        """In the Job's thread, at its end: the abort that came meanwhile, if one did."""
        with self._handoff:
            self._sink_busy = False
            abandoned, self._sink_abandoned = self._sink_abandoned, False
        if abandoned:
            try:
                sink.abort()
            except Exception as exc:
                _log_failure("abort", exc)

    def _data_problem(self, state: int) -> None:
        if self._dstate == _NOMINAL:  # the first problem decides the reply
            self._dstate = state
            self._pending.clear()

    def _data_end(self) -> None:
        self._mode = _COMMAND
        self.timeout = self.settings.command_timeout
        if self.settings.lmtp:
            self._lmtp_replies = len(self.envelope.rcpt_to)
        self._new_transaction()
        if self._dstate != _NOMINAL:
            if self._dstate == _TOO_MUCH:
                metrics.count_later("pymail_smtp_refused_total", service=self.session.info.service, reason="too_big")
            self._abort_sink()
            if self.settings.lmtp:  # the message failed for every recipient: each gets the reply
                self._errors += 1
                self._lmtp_done(self._dstate)
            else:
                self._send(*_DATA_FAILURES[self._dstate])
            return
        self._sink_job("commit", self._commit)

    def _commit(self, sink, rest: bytes):
        """Runs as a Job (fsync is slow): writes the ``rest`` of the text, then
        commits.  Never raises: the queue id, or the failure state (_NO_SPACE,
        _LOCAL_ERROR) that picks the reply, or a sink's Refused reply."""
        try:
            return self._write_and_commit(sink, rest)
        finally:
            self._sink_job_over(sink)

    def _write_and_commit(self, sink, rest: bytes):
        try:
            if rest:
                sink.write(rest)
            return sink.commit()
        except Refused as exc:
            try:
                sink.abort()
            except Exception as abort_exc:
                _log_failure("abort", abort_exc)
            return exc.reply
        except Exception as exc:
            _log_failure("commit", exc)
            try:
                sink.abort()
            except Exception:
                pass
            return _failure_state(exc)

    def _abort_sink(self) -> None:
        sink, self._sink = self._sink, None
        self._pending.clear()
        if sink is None:
            return
        with self._handoff:
            if self._sink_busy:  # a Job writes to it: that Job aborts it when it is done
                self._sink_abandoned = True
                return
        try:
            sink.abort()
        except Exception as exc:
            _log_failure("abort", exc)


# One verb of the command table: its method; 503 before HELO/EHLO; 530 before
# AUTH when settings.require_auth; arguments may hold UTF-8 (RFC 6531 mailboxes).
Command = namedtuple("Command", "handler needs_helo needs_auth utf8", defaults=(False, False, False))


_COMMANDS = {
    b"HELO": Command(SMTPServer._cmd_helo),
    b"EHLO": Command(SMTPServer._cmd_ehlo),
    b"LHLO": Command(SMTPServer._cmd_ehlo),  # RFC 2033 4.1: EHLO's twin, LMTP only
    b"MAIL": Command(SMTPServer._cmd_mail, needs_helo=True, needs_auth=True, utf8=True),
    b"RCPT": Command(SMTPServer._cmd_rcpt, utf8=True),
    b"DATA": Command(SMTPServer._cmd_data),
    b"RSET": Command(SMTPServer._cmd_rset),
    b"NOOP": Command(SMTPServer._cmd_noop),
    b"QUIT": Command(SMTPServer._cmd_quit),
    b"VRFY": Command(SMTPServer._cmd_vrfy, utf8=True),
    b"EXPN": Command(SMTPServer._cmd_not_implemented, utf8=True),
    b"BDAT": Command(SMTPServer._cmd_not_implemented),
    b"HELP": Command(SMTPServer._cmd_help),
    b"STARTTLS": Command(SMTPServer._cmd_starttls),
    b"AUTH": Command(SMTPServer._cmd_auth),
}


# The greeting commands: HELO and EHLO in SMTP, LHLO in LMTP (each refused in the other).
_GREETINGS = (b"HELO", b"EHLO", b"LHLO")

# One EHLO keyword: offered only when ``condition(server)`` says so, and
# dropped when the keyword it ``requires`` is not offered (aiosmtpd#216).
Capability = namedtuple("Capability", "keyword condition requires", defaults=(None, None))

# EHLO keywords in order.
_CAPABILITIES = (
    Capability("PIPELINING"),
    Capability("SIZE"),
    Capability("8BITMIME"),
    Capability("ENHANCEDSTATUSCODES"),
    Capability("SMTPUTF8", requires="8BITMIME"),  # RFC 6531 3.1
    Capability("STARTTLS", SMTPServer._starttls_offered),
    Capability("AUTH", SMTPServer._auth_offered),
)


def _ascii(text: str) -> str:
    """Client text echoed in a reply: replies are ASCII (a UTF-8 argument may hold C1 controls)."""
    return text if text.isascii() else text.encode("ascii", "backslashreplace").decode("ascii")


def _chomp(line: bytes) -> bytes:
    """Drop the line terminator: CRLF, or a lone LF (tolerated in commands only)."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _log_failure(what: str, exc: Exception) -> None:
    from pymta.lib import log  # noqa: PLC0415 lazy: only on the error path

    log.warning(f"smtpd backend {what} failed: {type(exc).__name__}: {exc}")
