"""The POP3 server as a sans-I/O state machine (see ``pymta.lib.sansio``).

RFC 1939 (POP3: USER/PASS/APOP, STAT, LIST, RETR, DELE, NOOP, RSET, QUIT,
TOP, UIDL), RFC 2449 (CAPA, PIPELINING, RESP-CODES), RFC 2595 (STLS),
RFC 3206 (SYS/ and AUTH response codes), RFC 5034 (AUTH PLAIN with initial
response).

States, exactly as RFC 1939 has them::

    AUTHORIZATION --USER/PASS, APOP, AUTH ok--> TRANSACTION --QUIT--> UPDATE
          |                                         |
          +--QUIT: close                           +--EOF / timeout: close, nothing deleted

DELE only marks; the marked messages are removed in UPDATE, after QUIT.
The *backend* (``pypop.pop3d``) checks passwords and opens the maildrop;
both are slow and run as a ``Job``.  RETR and TOP answer with a ``Stream``
that reads the message lazily, converts line ends to CRLF and dot-stuffs,
so a 50 MB message never sits in memory.

Input is one bounded buffer: a command line may be 255 octets with CRLF
(RFC 2449 4); a longer one is answered ``-ERR Line too long`` once and the
rest of it is dropped as it arrives.  Imports are light: under inetd every
connection imports this module.
"""

from __future__ import annotations

import io
import os
import time
from collections import namedtuple

from pymta.lib import log, sasl
from pymta.lib.linereader import LineReader
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Protocol, Stream, catching, disconnected

MAX_COMMAND_LINE = 255  # RFC 2449 4: octets per command line, CRLF included
MAX_AUTH_LINE = 8192  # SASL continuation lines are not commands (RFC 5034 4)
MAX_ERRORS = 20  # unknown / malformed / out-of-state commands before we hang up
MAX_AUTH_FAILURES = 3  # failed logins in one session before we hang up
CHUNK = 128 * 1024  # message text is read and sent in pieces of this size
SMALL = 64 * 1024  # messages up to this size (most) are read with one os.read, no file object
BATCH_OUTPUT = 256 * 1024  # pipelined replies produced before letting the driver drain
BATCH_STREAMS = 32  # pipelined RETR/TOP answers queued before letting the driver drain

_AUTHORIZATION, _TRANSACTION, _UPDATE, _DONE = range(4)
_COMMAND, _AUTH_CONT = range(2)
_CONTROLS = bytes(range(32)) + b"\x7f"

PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"


# What a backend login returns: status "ok", "auth", "in-use" or "temp".
# (collections, not typing: every inetd connection pays for each import)
LoginResult = namedtuple("LoginResult", "status user maildrop trace", defaults=("", None, None))

# The contract with the program around the machine (pop3d's POP3Backend; tests
# use small fakes), for readers and type checkers only: importing typing
# costs every inetd connection.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol as Interface

    from pypop.maildrop import Maildrop

    class Backend(Interface):
        """What the POP3 machine asks of pop3d.  The logins run as Jobs (password
        hashing is slow) and answer a LoginResult whose maildrop is a
        pypop.maildrop.Maildrop."""

        hostname: str  # in the greeting and the QUIT reply
        apop_enabled: bool  # offer APOP (a timestamp in the greeting)

        def plaintext_ok(self, info: ConnectionInfo) -> bool:
            """May a password cross this connection (TLS, or allowed in the clear)?"""

        def login(self, info: ConnectionInfo, user: str, password: bytes, method: str) -> LoginResult: ...

        def apop_login(self, info: ConnectionInfo, user: str, timestamp: str, digest: str) -> LoginResult: ...


def to_wire(data: bytes, at_line_start: bool) -> bytes:
    """Message text (LF or CRLF line ends) -> CRLF line ends, dot-stuffed (RFC 1939 3)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    data = data.replace(b"\n", b"\r\n").replace(b"\n.", b"\n..")
    if at_line_start and data[:1] == b".":
        data = b"." + data
    return data


class POP3Server(LineReader, Protocol):
    def __init__(self, backend: Backend, *, timeout: float = 600.0) -> None:
        self.backend = backend
        self.timeout = timeout
        self.info = ConnectionInfo()
        self._state = _AUTHORIZATION
        self._mode = _COMMAND
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no LF (never rescan)
        self._skipping = False  # dropping the rest of an over-long line
        self._closed = False
        self._awaiting_tls = False
        self._job: str | None = None  # "login" / "commit" / "resume"
        self._actions: list = []  # bytes and Streams of the current batch, in order
        self._out = bytearray()  # replies not yet appended to _actions
        self._batch_bytes = 0
        self._batch_streams = 0
        self._errors = 0
        self._auth_failures = 0
        self._plaintext_ok = False
        self._timestamp = ""  # APOP banner timestamp, "" when APOP is off
        self._user: str | None = None  # from USER, waiting for PASS
        # TRANSACTION state
        self.user = ""
        self._drop: Maildrop | None = None
        self._msgs: list = []
        self._deleted: set[int] = set()  # 0-based indexes
        self._started = 0.0
        self.retr_count = self.retr_bytes = self.top_count = 0
        self._end_reason = ""  # why the session ended, in Dovecot's words, logged by connection_lost
        self._end_logged = False

    # -- driver interface ----------------------------------------------------------

    def connection_made(self, info: ConnectionInfo) -> list:
        self.info = info
        self._started = time.monotonic()
        self._plaintext_ok = self.backend.plaintext_ok(info)
        host = self.backend.hostname
        greeting = f"+OK {host} POP3 server ready"
        if self.backend.apop_enabled:
            # RFC 1939 7: a msg-id unique to this greeting
            self._timestamp = f"<{os.getpid()}.{os.urandom(6).hex()}.{int(time.time())}@{host}>"
            greeting += " " + self._timestamp
        return [(greeting + "\r\n").encode("utf-8", "replace")]

    def data_received(self, data: bytes) -> list:
        if self._closed:
            return []
        if not data:
            self._end("Connection closed")
            return [CLOSE]
        if self._awaiting_tls:
            return []  # CVE-2011-0411: nothing sent before the handshake is ever read
        self._buf += data
        if self._job is not None:
            return []  # kept for job_done
        return self._process()

    def job_done(self, result) -> list:
        kind, self._job = self._job, None
        if kind == "login":
            self._login_done(result)
        elif kind == "commit":
            self._commit_done(result)
        return self._process()

    def tls_started(self, info: ConnectionInfo) -> list:
        self.info = info
        self._awaiting_tls = False
        self._buf.clear()
        self._scanned = 0
        self._skipping = False
        self._mode = _COMMAND
        self._user = None
        self._plaintext_ok = self.backend.plaintext_ok(info)
        return []

    def timed_out(self) -> list:
        if self._closed:
            return [CLOSE]
        self._send(b"-ERR Disconnected for inactivity\r\n")
        self._end(f"Inactivity - no input for {round(self.timeout)} secs")
        self._marker(CLOSE)
        return self._flush()

    def connection_lost(self) -> None:
        """The connection is gone (the driver's last call): log the session's end, once."""
        if not self._closed:
            self._end("")  # the driver's reason (info.end): reset, shutdown...
        if self._end_logged:
            return
        self._end_logged = True
        if self.user:
            # as Dovecot's: pop3(USER): Disconnected: Logged out top=0/0, retr=1/123, del=0/1, size=123
            log.info(
                f"pop3({self.user}): {disconnected(self.info, self._end_reason)} "
                f"top={self.top_count}, retr={self.retr_count}/{self.retr_bytes}, "
                f"del={self._deleted_count}/{len(self._msgs)}, size={self._total_size()} rip={self.info.peer_ip}"
            )
        else:
            log.debug(f"disconnect from {self.info.peer_ip} before login ({self._end_reason or self.info.end})")

    # -- the loop ------------------------------------------------------------------

    def _process(self) -> list:
        self._batch_bytes = self._batch_streams = 0
        while not (self._closed or self._awaiting_tls or self._job is not None):
            if (
                self._batch_bytes + len(self._out) > BATCH_OUTPUT or self._batch_streams >= BATCH_STREAMS
            ) and self._buf:
                # Pipelined commands keep coming: let the driver send what we
                # have (a Job makes it drain) before answering more.
                self._job = "resume"
                self._marker(Job(_nothing))
                break
            cap = MAX_AUTH_LINE if self._mode == _AUTH_CONT else MAX_COMMAND_LINE
            line = self._read_line(cap)
            if line is None:
                break
            if line is False:
                self._mode = _COMMAND
                self._bad(b"-ERR Line too long\r\n")
            elif self._mode == _AUTH_CONT:
                self._mode = _COMMAND
                self._auth_response(line.rstrip(b"\r\n").strip(b" \t"))
            else:
                self._command(line.rstrip(b"\r\n"))
        return self._flush()

    def _send(self, data: bytes) -> None:
        self._out += data

    def _marker(self, action) -> None:
        if self._out:
            self._batch_bytes += len(self._out)
            self._actions.append(bytes(self._out))
            self._out.clear()
        self._actions.append(action)

    def _flush(self) -> list:
        if self._out:
            self._actions.append(bytes(self._out))
            self._out.clear()
        actions, self._actions = self._actions, []
        return actions

    def _bad(self, reply: bytes) -> None:
        """A client error that counts towards MAX_ERRORS."""
        self._send(reply)
        self._errors += 1
        if self._errors >= MAX_ERRORS and not self._closed:
            self._send(b"-ERR Too many bad commands, closing connection\r\n")
            self._end("Too many bad commands.")
            self._marker(CLOSE)

    def _end(self, reason: str) -> None:
        """The session is over (QUIT, EOF, timeout...): release the maildrop.
        ``reason`` ("" when the driver's own is meant) is logged by connection_lost,
        once the last reply is out and the byte counts are whole."""
        if self._closed:
            return
        self._closed = True
        self._state = _DONE
        self._end_reason = reason
        drop, self._drop = self._drop, None
        if drop is not None:
            drop.close()

    _deleted_count = 0

    # -- commands --------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        entry = _COMMANDS.get(verb.upper())
        if entry is None or (verb.upper() == b"APOP" and not self._timestamp):
            if verb.isascii() and verb.translate(None, _CONTROLS) == verb:
                self._bad(b"-ERR Unknown command\r\n")
            else:
                self._bad(b"-ERR Invalid characters in command\r\n")
            return
        if arg.translate(None, _CONTROLS) != arg:
            self._bad(b"-ERR Invalid characters in command\r\n")
            return
        if self._state not in entry.states:
            self._bad(b"-ERR Command not valid in this state\r\n")
            return
        entry.handler(self, arg)

    # AUTHORIZATION

    def _cmd_user(self, arg: bytes) -> None:
        if not self._plaintext_ok:
            self._bad(PLAINTEXT_REFUSED)
            return
        name = _text(arg.strip(b" "))
        if not name or " " in name:
            self._bad(b"-ERR Syntax: USER name\r\n")
            return
        self._user = name
        self._send(b"+OK\r\n")

    def _cmd_pass(self, arg: bytes) -> None:
        if not self._plaintext_ok:
            self._bad(PLAINTEXT_REFUSED)
            return
        if self._user is None:
            self._bad(b"-ERR No username given\r\n")
            return
        if not arg:
            self._bad(b"-ERR Syntax: PASS password\r\n")
            return
        # RFC 1939 7: PASS has one argument, spaces included
        user, self._user = self._user, None
        self._start_login(Job(self.backend.login, self.info, user, arg, "USER"))

    def _cmd_apop(self, arg: bytes) -> None:
        parts = arg.split()
        if len(parts) != 2 or len(parts[1]) != 32 or not _is_hex(parts[1]):
            self._bad(b"-ERR Syntax: APOP name digest\r\n")
            return
        name = _text(parts[0])
        if not name:
            self._bad(b"-ERR Syntax: APOP name digest\r\n")
            return
        self._user = None
        self._start_login(
            Job(self.backend.apop_login, self.info, name, self._timestamp, parts[1].decode("ascii").lower())
        )

    def _cmd_auth(self, arg: bytes) -> None:
        mech, _, initial = arg.strip(b" ").partition(b" ")
        if not mech:  # RFC 1734 style listing of mechanisms
            mechs = b"PLAIN\r\n" if self._plaintext_ok else b""
            self._send(b"+OK\r\n" + mechs + b".\r\n")
            return
        if mech.upper() != b"PLAIN":
            self._bad(b"-ERR Unsupported authentication mechanism\r\n")
            return
        if not self._plaintext_ok:
            self._bad(PLAINTEXT_REFUSED)
            return
        self._user = None
        initial = initial.strip(b" ")
        if initial:
            self._auth_response(initial)
        else:
            self._mode = _AUTH_CONT
            self._send(b"+ \r\n")

    def _auth_response(self, response: bytes) -> None:
        try:
            # "=" is taken as empty in the continuation line too, as pop3d always has
            authcid, password = sasl.split_plain(sasl.decode_response(response, initial=True))
        except sasl.SaslError as exc:
            if exc.kind == "cancelled":
                self._send(b"-ERR Authentication cancelled\r\n")  # RFC 5034 4
            elif exc.kind == "base64":
                self._bad(b"-ERR Invalid base64 data\r\n")
            elif exc.kind == "malformed":
                self._bad(b"-ERR Invalid AUTH PLAIN response\r\n")
            else:  # no proxy authorization: acting as another user is refused outright
                self._auth_failed()
            return
        user = _text(authcid)
        if not user:
            self._auth_failed()
            return
        self._start_login(Job(self.backend.login, self.info, user, password, "PLAIN"))

    def _start_login(self, job: Job) -> None:
        self._job = "login"
        self._marker(Job(catching, job.fn, *job.args))

    def _login_done(self, result) -> None:
        if isinstance(result, Exception):  # the users file is missing or unreadable: -ERR [SYS/TEMP]
            log.error(f"login failed: {type(result).__name__}: {result}")
        if not isinstance(result, LoginResult):
            result = LoginResult("temp")
        if result.status == "ok":
            self._state = _TRANSACTION
            self.user = result.user
            self._drop = result.maildrop
            self.info.trace = result.trace  # the driver traces from the reply to the login on (rawlog)
            self._msgs = list(result.maildrop.messages)
            self._send(f"+OK Logged in, {len(self._msgs)} messages ({self._total_size()} octets)\r\n".encode())
        elif result.status == "in-use":
            self._send(b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n")
        elif result.status == "auth":
            self._auth_failed()
        else:
            self._send(b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n")

    def _auth_failed(self) -> None:
        self._auth_failures += 1
        self._send(AUTH_FAILED)
        self._check_auth_failures()

    def _check_auth_failures(self) -> None:
        if self._auth_failures >= MAX_AUTH_FAILURES and not self._closed:
            self._send(b"-ERR Too many authentication failures, closing connection\r\n")
            self._end("Too many authentication failures")
            self._marker(CLOSE)

    def _cmd_stls(self, arg: bytes) -> None:
        if arg:
            self._bad(b"-ERR Syntax: STLS\r\n")
        elif self.info.tls:
            self._bad(b"-ERR Command not permitted when TLS active\r\n")  # RFC 2595 4
        elif not self.info.tls_available:
            self._bad(b"-ERR TLS not available\r\n")
        else:
            self._send(b"+OK Begin TLS negotiation\r\n")
            self._awaiting_tls = True
            self._buf.clear()  # CVE-2011-0411: drop whatever was pipelined behind STLS
            self._scanned = 0
            self._skipping = False
            self._marker(STARTTLS)

    def _cmd_capa(self, arg: bytes) -> None:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._plaintext_ok:
            caps += [b"USER", b"SASL PLAIN"]
        if self._state == _AUTHORIZATION and self.info.tls_available and not self.info.tls:
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION pymail")
        self._send(b"+OK Capability list follows\r\n" + b"".join(c + b"\r\n" for c in caps) + b".\r\n")

    def _cmd_quit(self, arg: bytes) -> None:
        if self._state == _AUTHORIZATION:
            self._send(f"+OK {self.backend.hostname} POP3 server signing off\r\n".encode("utf-8", "replace"))
            self._end("Logged out")
            self._marker(CLOSE)
            return
        self._state = _UPDATE
        doomed = [self._msgs[i] for i in sorted(self._deleted)]
        self._job = "commit"
        assert self._drop is not None  # set at login, with the TRANSACTION state
        self._marker(Job(self._drop.commit, doomed))

    def _commit_done(self, result) -> None:
        try:
            removed, failed = result
        except (TypeError, ValueError):
            removed, failed = 0, len(self._deleted)
        self._deleted_count = removed
        if failed:
            self._send(b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
        elif removed:
            self._send(f"+OK Logging out, {removed} message{'s' if removed != 1 else ''} deleted\r\n".encode())
        else:
            self._send(b"+OK Logging out\r\n")
        self._end("Logged out" if not failed else f"Logged out ({failed} deletions failed)")
        self._marker(CLOSE)

    # TRANSACTION

    def _total_size(self) -> int:
        return sum(m.size for i, m in enumerate(self._msgs) if i not in self._deleted)

    def _message_arg(self, arg: bytes, usage: bytes):
        """The 0-based index for a message-number argument, or None after a reply."""
        if not arg or b" " in arg:
            self._bad(b"-ERR Syntax: " + usage + b"\r\n")
            return None
        return self._message_number(arg)

    def _message_number(self, token: bytes):
        if not token.isdigit() or not token.isascii() or len(token) > 10:
            self._bad(b"-ERR Invalid message number\r\n")
            return None
        n = int(token)
        if not 1 <= n <= len(self._msgs):
            self._send(b"-ERR No such message\r\n")
            return None
        if n - 1 in self._deleted:
            self._send(b"-ERR Message %d already deleted\r\n" % n)
            return None
        return n - 1

    def _cmd_stat(self, arg: bytes) -> None:
        if arg:
            self._bad(b"-ERR Syntax: STAT\r\n")
            return
        count = len(self._msgs) - len(self._deleted)
        self._send(b"+OK %d %d\r\n" % (count, self._total_size()))

    def _cmd_list(self, arg: bytes) -> None:
        if arg:
            i = self._message_arg(arg, b"LIST [msg]")
            if i is not None:
                self._send(b"+OK %d %d\r\n" % (i + 1, self._msgs[i].size))
            return
        deleted = self._deleted
        lines = [b"%d %d\r\n" % (i, m.size) for i, m in enumerate(self._msgs, 1) if i - 1 not in deleted]
        self._send(b"+OK %d messages (%d octets)\r\n" % (len(lines), self._total_size()) + b"".join(lines) + b".\r\n")

    def _cmd_uidl(self, arg: bytes) -> None:
        if arg:
            i = self._message_arg(arg, b"UIDL [msg]")
            if i is not None:
                self._send(b"+OK %d %s\r\n" % (i + 1, self._msgs[i].uid.encode()))
            return
        deleted = self._deleted
        lines = [b"%d %s\r\n" % (i, m.uid.encode()) for i, m in enumerate(self._msgs, 1) if i - 1 not in deleted]
        self._send(b"+OK\r\n" + b"".join(lines) + b".\r\n")

    def _cmd_retr(self, arg: bytes) -> None:
        i = self._message_arg(arg, b"RETR msg")
        if i is None:
            return
        msg = self._msgs[i]
        if msg.size <= SMALL:
            # Most messages: one read and one reply, no Stream for the driver
            # to pump (a client fetching one message after another waits on
            # each answer; the output of a pipelined batch stays bounded by
            # BATCH_OUTPUT).
            assert self._drop is not None  # TRANSACTION state
            try:
                data = self._drop.read_small(msg, SMALL)
            except OSError:
                self._send(b"-ERR Message %d has been removed by another client\r\n" % (i + 1))
                return
            if data is not None:
                wire = to_wire(data, True)
                self.retr_count += 1
                self.retr_bytes += msg.size
                end = b".\r\n" if not wire or wire[-1:] == b"\n" else b"\r\n.\r\n"
                self._send(b"+OK %d octets\r\n" % msg.size + wire + end)
                return
        self._batch_streams += 1
        self._marker(Stream(self._message_chunks(i, None)))

    def _cmd_top(self, arg: bytes) -> None:
        parts = arg.split(b" ")
        if len(parts) != 2 or not parts[0]:
            self._bad(b"-ERR Syntax: TOP msg lines\r\n")
            return
        if not parts[1].isdigit() or not parts[1].isascii() or len(parts[1]) > 10:
            self._bad(b"-ERR Invalid number of lines\r\n")
            return
        i = self._message_number(parts[0])
        if i is not None:
            self._batch_streams += 1
            self._marker(Stream(self._message_chunks(i, int(parts[1]))))

    def _cmd_dele(self, arg: bytes) -> None:
        i = self._message_arg(arg, b"DELE msg")
        if i is not None:
            self._deleted.add(i)
            self._send(b"+OK Message %d deleted\r\n" % (i + 1))

    def _cmd_noop(self, arg: bytes) -> None:
        if arg:
            self._bad(b"-ERR Syntax: NOOP\r\n")
        else:
            self._send(b"+OK\r\n")

    def _cmd_rset(self, arg: bytes) -> None:
        if arg:
            self._bad(b"-ERR Syntax: RSET\r\n")
            return
        self._deleted.clear()
        self._send(b"+OK Maildrop has %d messages (%d octets)\r\n" % (len(self._msgs), self._total_size()))

    # -- message text ------------------------------------------------------------------

    def _message_chunks(self, index: int, top_lines: int | None):
        """The reply to RETR (top_lines None) or TOP, produced lazily by the driver.

        The file is opened only when the driver gets here, so pipelined
        RETRs hold no file open while they wait.
        """
        msg = self._msgs[index]
        assert self._drop is not None  # TRANSACTION state
        try:
            small = self._drop.read_small(msg, SMALL) if top_lines is None and msg.size <= SMALL else None
            fh = io.BytesIO(small) if small is not None else self._drop.open_message(msg)
        except OSError:
            yield b"-ERR Message %d has been removed by another client\r\n" % (index + 1)
            return
        with fh:
            if top_lines is None:
                self.retr_count += 1
                self.retr_bytes += msg.size
                yield from _retr(fh, b"+OK %d octets\r\n" % msg.size)
            else:
                self.top_count += 1
                yield from _top(fh, top_lines)


# One verb of the command table: its method and the states in which it is valid.
Command = namedtuple("Command", "handler states")

_COMMANDS = {
    b"USER": Command(POP3Server._cmd_user, (_AUTHORIZATION,)),
    b"PASS": Command(POP3Server._cmd_pass, (_AUTHORIZATION,)),
    b"APOP": Command(POP3Server._cmd_apop, (_AUTHORIZATION,)),
    b"AUTH": Command(POP3Server._cmd_auth, (_AUTHORIZATION,)),
    b"STLS": Command(POP3Server._cmd_stls, (_AUTHORIZATION,)),
    b"CAPA": Command(POP3Server._cmd_capa, (_AUTHORIZATION, _TRANSACTION)),
    b"QUIT": Command(POP3Server._cmd_quit, (_AUTHORIZATION, _TRANSACTION)),
    b"STAT": Command(POP3Server._cmd_stat, (_TRANSACTION,)),
    b"LIST": Command(POP3Server._cmd_list, (_TRANSACTION,)),
    b"RETR": Command(POP3Server._cmd_retr, (_TRANSACTION,)),
    b"DELE": Command(POP3Server._cmd_dele, (_TRANSACTION,)),
    b"NOOP": Command(POP3Server._cmd_noop, (_TRANSACTION,)),
    b"RSET": Command(POP3Server._cmd_rset, (_TRANSACTION,)),
    b"TOP": Command(POP3Server._cmd_top, (_TRANSACTION,)),
    b"UIDL": Command(POP3Server._cmd_uidl, (_TRANSACTION,)),
}


def _retr(fh, status: bytes):
    pending = status
    first = True
    at_start = True
    carry = b""
    done = False
    while not done:
        data = fh.read(CHUNK)
        if not data:
            break
        done = len(data) < CHUNK  # a regular file reads short only at its end: no extra read
        if carry:
            data = carry + data
        if data[-1:] == b"\r":  # the LF may begin the next read
            data, carry = data[:-1], b"\r"
        else:
            carry = b""
        if not data:
            continue
        wire = to_wire(data, at_start)
        at_start = wire[-1:] == b"\n"
        if first:
            pending += wire
            first = False
        else:
            yield pending
            pending = wire
    if carry:
        pending += carry
        at_start = False
    yield pending + (b".\r\n" if at_start else b"\r\n.\r\n")


def _top(fh, lines: int):
    """Headers, the blank line, then ``lines`` lines of the body."""
    out = [b"+OK\r\n"]
    size = 0
    at_start = True
    in_header = True
    body_lines = 0
    carry = b""
    while in_header or body_lines < lines:
        piece = fh.readline(CHUNK)
        if not piece:
            break
        if carry:
            piece = carry + piece
            carry = b""
        if piece[-1:] == b"\r":
            piece, carry = piece[:-1], b"\r"
            if not piece:
                continue
        complete = piece[-1:] == b"\n"
        if in_header and at_start and piece in (b"\n", b"\r\n"):
            in_header = False
        elif not in_header and complete:
            body_lines += 1
        wire = to_wire(piece, at_start)
        at_start = complete
        out.append(wire)
        size += len(wire)
        if size >= CHUNK:
            yield b"".join(out)
            out, size = [], 0
    if carry and (in_header or body_lines < lines):
        out.append(carry)
        at_start = False
    out.append(b".\r\n" if at_start else b"\r\n.\r\n")
    yield b"".join(out)


def _nothing():
    return None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _is_hex(raw: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in raw)
