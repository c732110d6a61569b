"""The SMTP client as a sans-I/O state machine, plus a small blocking driver.

The machine (``SMTPClient``) takes the peer's bytes with ``data_received``
and returns actions, like the server machine (``pymta.lib.sansio``):
``bytes`` to send, ``Stream(chunks)`` for the message text, ``STARTTLS``
(run the handshake, then call ``tls_started``) and ``CLOSE``.  It never
touches a socket.  Its state tells the driver what happened:

* ``ready``: greeted, EHLO'd (and TLS'd / AUTH'd as the policy asks);
  ``transaction(...)`` may be called.
* ``result``: a ``TxnResult`` once a transaction ends (per recipient
  replies and the DATA reply).
* ``failure``: a ``ServerReply`` when the session cannot go on (refused greeting,
  EHLO and HELO refused, TLS policy not met, protocol error, lost peer).

The reply parser is as exposed as the server's command parser (OpenSMTPD
CVE-2020-8794 was a client-side overflow on a hostile multi-line reply): a
reply line is capped, a reply has a maximum number of lines, codes must be
three digits with the same code on every line, and anything else ends the
session with a protocol error -- never an exception of another kind.

The message in the queue has LF line ends; ``smtp_text`` turns it into
CRLF with dot-stuffing and never emits a bare CR or LF (SMTP smuggling,
CVE-2023-51764: a lone CR or LF becomes a line end).

With ``lmtp=True`` the machine speaks LMTP (RFC 2033) instead: LHLO for
EHLO (no HELO fallback), and after the message one reply per recipient
that RCPT accepted, in order (``TxnResult.lmtp``), since each mailbox
may take the message or not.

RFCs: 5321 (SMTP), 2033 (LMTP), 1870 (SIZE), 2920 (PIPELINING), 3207
(STARTTLS), 4954 (AUTH), 6152 (8BITMIME), 6531 (SMTPUTF8), 3463
(enhanced codes).
"""

from __future__ import annotations

import base64
import socket
import time
from dataclasses import dataclass, field

from pymta.lib.sansio import CLOSE, STARTTLS, Stream

MAX_REPLY_LINE = 2048  # RFC 5321 4.5.3.1.5 says 512 incl. CRLF; be lenient, but bounded
MAX_REPLY_LINES = 100  # a multi-line reply with more lines than this is hostile


class ProtocolError(Exception):
    """The peer broke the protocol (bad reply syntax, over-long reply)."""


@dataclass(frozen=True)
class ServerReply:
    code: int
    lines: tuple[str, ...] = ()
    local: bool = False  # made up by us (connect failure, timeout, policy), not said by the server

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 code at the start of the text, or a default for the class."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(self.code // 100):
            return first
        return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")

    @property
    def temporary(self) -> bool:
        return self.code // 100 != 5

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


def _printable(text: str, limit: int = 500) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:limit]


class ReplyParser:
    """Bounded SMTP reply parser: ``feed(bytes)`` returns complete replies."""

    def __init__(self, max_line: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buf = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, data: bytes) -> list[ServerReply]:
        self._buf += data
        out = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buf[start:end])
            start = end + 1
            if len(line) + 1 > self.max_line:
                raise ProtocolError("reply line too long")
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self._line(line)
            if reply is not None:
                out.append(reply)
        del self._buf[:start]
        if len(self._buf) > self.max_line:
            raise ProtocolError("reply line too long")
        return out

    def _line(self, line: bytes) -> ServerReply | None:
        if (
            len(line) < 3
            or not line[:3].isdigit()
            or line[0:1] not in b"2345"
            or (len(line) > 3 and line[3:4] not in b" -")
        ):
            raise ProtocolError("malformed reply line")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError("reply code changed inside a multi-line reply")
        self._code = code
        self._lines.append(_printable(line[4:].decode("utf-8", "replace")))
        if len(self._lines) > self.max_lines:
            raise ProtocolError("too many lines in one reply")
        if line[3:4] == b"-":
            return None
        reply = ServerReply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply


def smtp_text(chunks):
    """Queue message (LF) -> SMTP DATA text (CRLF, dot-stuffed, ends with CRLF.CRLF)."""
    at_line_start = True
    carry = b""
    for chunk in chunks:
        chunk = carry + chunk
        carry = b""
        if chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        if not chunk:
            continue
        # every lone CR or LF becomes a line end: nothing bare reaches the wire
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if at_line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        chunk = chunk.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
        at_line_start = chunk.endswith(b"\n")
        yield chunk
    if carry:
        yield b"\r\n"
        at_line_start = True
    yield b".\r\n" if at_line_start else b"\r\n.\r\n"


@dataclass
class Transaction:
    sender: str
    recipients: list[str]
    chunks: object = None  # a callable returning an iterable of LF message chunks
    size: int = 0
    eightbit: bool = False
    smtputf8: bool = False


@dataclass
class TxnResult:
    mail: ServerReply | None = None
    rcpt: list = field(default_factory=list)  # ServerReply per recipient, in order
    data: ServerReply | None = None  # final reply for the message (None if not sent); LMTP: the last one
    failure: ServerReply | None = None  # the transaction could not run (MAIL refused, SIZE, lost)
    lmtp: list | None = None  # LMTP: the reply after the message per recipient (None where RCPT was refused)

    def data_reply(self, i: int) -> ServerReply | None:
        """The reply after the message for recipient ``i``: LMTP's own, else the one DATA reply
        (None when the message was not sent, or the session was lost before recipient i's reply)."""
        if self.lmtp is None:
            return self.data
        return self.lmtp[i] if i < len(self.lmtp) else None


# states
(_GREETING, _EHLO, _HELO, _STARTTLS, _AUTH, _READY, _MAIL, _RCPT, _DATA, _TEXT, _RSET, _QUIT, _DONE) = range(13)


class SMTPClient:
    """One SMTP client session.  See the module docstring."""

    def __init__(
        self,
        helo: str,
        *,
        tls: str = "opportunistic",
        tls_possible: bool = True,
        auth: tuple[str, str] | None = None,
        auth_ok_plaintext: bool = False,
        lmtp: bool = False,
    ) -> None:
        self.helo = helo
        self.lmtp = lmtp
        self.hello = "LHLO" if lmtp else "EHLO"
        self.tls_policy = tls  # none | opportunistic | require | verify
        self.tls_possible = tls_possible
        self.auth = auth
        self.auth_ok_plaintext = auth_ok_plaintext
        self.parser = ReplyParser()
        self.state = _GREETING
        self.esmtp = False
        self.extensions: dict[str, str] = {}
        self.tls_active = False
        self.authenticated = False
        self.ready = False
        self.failure: ServerReply | None = None
        self.result: TxnResult | None = None
        self.greeting: ServerReply | None = None
        self._txn: Transaction | None = None
        self._expect: list[tuple] = []  # pipelined commands awaiting replies
        self._auth_step = 0

    # -- helpers --------------------------------------------------------------
    def _fail(self, code: int, text: str) -> list:
        self.failure = ServerReply(code, (text,), True)
        self.ready = False
        self.state = _DONE
        return [CLOSE]

    def _fail_reply(self, reply: ServerReply, what: str) -> list:
        self.failure = ServerReply(reply.code, (f"{what}: {reply}",), reply.local)
        self.ready = False
        self.state = _QUIT
        return [b"QUIT\r\n"]

    @staticmethod
    def _cmd(text: str) -> bytes:
        data = text.encode("utf-8")
        if b"\r" in data or b"\n" in data or b"\0" in data:
            raise ValueError("command contains CR, LF or NUL")
        return data + b"\r\n"

    def _parse_ehlo(self, reply: ServerReply) -> None:
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, param = line.partition(" ")
            self.extensions[keyword.upper()] = param
        self.esmtp = True

    # -- the driver's interface -------------------------------------------------
    def data_received(self, data: bytes) -> list:
        if self.state == _DONE:
            return []
        if not data:
            if self.state == _QUIT:
                self.state = _DONE
                return [CLOSE]
            return self._fail(421, "4.4.2 lost connection with the server")
        try:
            replies = self.parser.feed(data)
        except ProtocolError as exc:
            return self._fail(421, f"4.5.0 protocol error from the server: {exc}")
        actions = []
        for reply in replies:
            actions += self._on_reply(reply)
            if self.state == _DONE:
                break
        return actions

    def timed_out(self) -> list:
        return self._fail(421, "4.4.2 timeout talking to the server")

    def tls_started(self) -> list:
        self.tls_active = True
        self.parser = ReplyParser()  # nothing from before the handshake counts
        self.esmtp = False
        self.extensions = {}
        self.state = _EHLO
        return [self._cmd(f"{self.hello} {self.helo}")]

    def tls_failed(self, why: str) -> list:
        return self._fail(421, f"4.7.5 TLS handshake failed: {why}")

    def transaction(self, txn: Transaction) -> list:
        if not self.ready:
            raise RuntimeError("transaction() before the session is ready")
        self.ready = False
        self._txn = txn
        self.result = TxnResult(lmtp=[] if self.lmtp else None)
        limit = self.extensions.get("SIZE", "")
        if "SIZE" in self.extensions and limit.isdigit() and int(limit) > 0 and txn.size > int(limit):
            self.result.failure = ServerReply(
                552, (f"5.3.4 message size {txn.size} exceeds the server's limit {limit}",), True
            )
            self.ready = True
            return []
        if txn.smtputf8 and "SMTPUTF8" not in self.extensions:
            self.result.failure = ServerReply(553, ("5.6.7 the server does not support SMTPUTF8 addresses",), True)
            self.ready = True
            return []
        params = ""
        if "SIZE" in self.extensions:
            params += f" SIZE={txn.size}"
        if txn.eightbit and "8BITMIME" in self.extensions:
            params += " BODY=8BITMIME"
        if txn.smtputf8:
            params += " SMTPUTF8"
        cmds = [(_MAIL, self._cmd(f"MAIL FROM:<{txn.sender}>{params}"))]
        cmds += [(_RCPT, self._cmd(f"RCPT TO:<{r}>")) for r in txn.recipients]
        cmds.append((_DATA, b"DATA\r\n"))
        if "PIPELINING" in self.extensions:
            self._expect = [c[0] for c in cmds]
            self.state = _MAIL
            return [b"".join(c[1] for c in cmds)]
        self._expect = []
        self._pending_cmds = cmds[1:]
        self.state = _MAIL
        return [cmds[0][1]]

    def reset(self) -> list:
        """RSET after a transaction that did not end cleanly, before reusing the session."""
        self.ready = False
        self.state = _RSET
        return [b"RSET\r\n"]

    def quit(self) -> list:
        if self.state == _DONE:
            return [CLOSE]
        self.ready = False
        self.state = _QUIT
        return [b"QUIT\r\n"]

    # -- replies --------------------------------------------------------------------
    def _on_reply(self, reply: ServerReply) -> list:
        st = self.state
        if st == _GREETING:
            self.greeting = reply
            if reply.code != 220:
                return self._fail_reply(reply, "server refused the connection")
            self.state = _EHLO
            return [self._cmd(f"{self.hello} {self.helo}")]
        if st == _EHLO:
            if reply.code == 250:
                self._parse_ehlo(reply)
                return self._after_ehlo()
            if self.tls_active or self.lmtp:
                return self._fail_reply(reply, f"{self.hello} refused" + (" after STARTTLS" if self.tls_active else ""))
            self.state = _HELO
            return [self._cmd(f"HELO {self.helo}")]
        if st == _HELO:
            if reply.code != 250:
                return self._fail_reply(reply, "HELO refused")
            self.esmtp = False
            self.extensions = {}
            return self._after_ehlo()
        if st == _STARTTLS:
            if reply.code == 220:
                return [STARTTLS]
            if self.tls_policy in ("require", "verify"):
                return self._fail_reply(
                    ServerReply(421, (f"4.7.4 STARTTLS refused ({reply}) but TLS is required",), True), "TLS"
                )
            self._tls_refused = True
            return self._after_ehlo()
        if st == _AUTH:
            return self._on_auth(reply)
        if st in (_MAIL, _RCPT, _DATA):
            return self._on_txn_reply(reply)
        if st == _TEXT:
            res = self.result
            res.data = reply
            if res.lmtp is not None:  # one reply per recipient RCPT accepted, in order
                waiting = [i for i, r in enumerate(res.rcpt) if r.code // 100 == 2]
                res.lmtp += [None] * (len(res.rcpt) - len(res.lmtp))
                got = sum(1 for i in waiting if res.lmtp[i] is not None)
                if got < len(waiting):
                    res.lmtp[waiting[got]] = reply
                    if got + 1 < len(waiting):
                        return []
            self.state = _READY
            self.ready = True
            return []
        if st == _RSET:
            if reply.code != 250:
                return self._fail_reply(reply, "RSET refused")
            self.state = _READY
            self.ready = True
            return []
        if st == _QUIT:
            self.state = _DONE
            return [CLOSE]
        if st == _READY:
            # an unsolicited reply (e.g. 421 before closing): the session is over
            return self._fail(reply.code if reply.code // 100 == 4 else 421, f"4.4.2 server said: {reply}")
        return []

    def _after_ehlo(self) -> list:
        want_tls = (
            self.tls_policy != "none"
            and self.tls_possible
            and not self.tls_active
            and not getattr(self, "_tls_refused", False)
        )
        if want_tls and "STARTTLS" in self.extensions:
            self.state = _STARTTLS
            return [b"STARTTLS\r\n"]
        if self.tls_policy in ("require", "verify") and not self.tls_active:
            why = "not offered by the server" if "STARTTLS" not in self.extensions else "not possible"
            return self._fail_reply(ServerReply(421, (f"4.7.4 TLS is required but STARTTLS is {why}",), True), "TLS")
        if self.auth and not self.authenticated and "AUTH" in self.extensions:
            if not (self.tls_active or self.auth_ok_plaintext):
                return self._fail_reply(ServerReply(421, ("4.7.0 will not send a password without TLS",), True), "AUTH")
            mechs = self.extensions["AUTH"].upper().split()
            user, password = self.auth
            self.state = _AUTH
            if "PLAIN" in mechs:
                self._auth_step = 10
                token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
                return [self._cmd(f"AUTH PLAIN {token}")]
            if "LOGIN" in mechs:
                self._auth_step = 20
                return [b"AUTH LOGIN\r\n"]
            return self._fail_reply(
                ServerReply(421, ("4.7.0 no supported AUTH mechanism (PLAIN, LOGIN)",), True), "AUTH"
            )
        self.state = _READY
        self.ready = True
        return []

    def _on_auth(self, reply: ServerReply) -> list:
        user, password = self.auth
        if self._auth_step in (10, 22):
            if reply.code == 235:
                self.authenticated = True
                self.state = _READY
                self.ready = True
                return []
            return self._fail_reply(reply, "authentication failed")
        if reply.code != 334:
            return self._fail_reply(reply, "authentication failed")
        self._auth_step += 1
        value = user if self._auth_step == 21 else password
        return [base64.b64encode(value.encode()) + b"\r\n"]

    def _on_txn_reply(self, reply: ServerReply) -> list:
        res = self.result
        pipelined = bool(self._expect)
        kind = self._expect.pop(0) if pipelined else self.state
        if kind == _MAIL:
            res.mail = reply
            if reply.code != 250:
                res.failure = reply
        elif kind == _RCPT:
            res.rcpt.append(reply)
        elif kind == _DATA:
            accepted = res.failure is None and any(r.code // 100 == 2 for r in res.rcpt)
            if reply.code == 354:
                if accepted:
                    self.state = _TEXT
                    return [Stream(smtp_text(self._txn.chunks()))]
                # a server that says 354 with no recipient: send an empty message
                self.state = _TEXT
                return [b".\r\n"]
            if accepted:
                res.data = reply
                if res.lmtp is not None:  # DATA itself refused: the same answer for every recipient
                    res.lmtp = [reply if r.code // 100 == 2 else None for r in res.rcpt]
            return self._txn_over()
        if pipelined:
            return []
        # not pipelined: decide the next command ourselves
        if kind == _MAIL and res.failure is not None:
            return self._txn_over()
        nxt = self._pending_cmds.pop(0)
        if nxt[0] == _DATA and not any(r.code // 100 == 2 for r in res.rcpt):
            return self._txn_over()
        self.state = nxt[0]
        return [nxt[1]]

    def _txn_over(self) -> list:
        # MAIL or DATA refused, or no recipient: RSET before the next transaction
        self.state = _RSET
        return [b"RSET\r\n"]


# -- blocking driver ---------------------------------------------------------------------


class Connection:
    """A blocking SMTP session over one TCP connection (TLS by ``ssl`` when asked)."""

    def __init__(
        self,
        host: str,
        ip: str,
        port: int,
        helo: str,
        *,
        tls: str = "opportunistic",
        auth: tuple[str, str] | None = None,
        connect_timeout: float = 30.0,
        timeout: float = 300.0,
        ca_file: str = "",
        lmtp: bool = False,
    ) -> None:
        """``host`` "unix" with ``ip`` a path: a UNIX socket (LMTP), never TLS."""
        self.host, self.ip, self.port = host, ip, port
        self.timeout = timeout
        self.tls = tls
        self.ca_file = ca_file
        self.sock = None
        self.last_used = time.monotonic()
        unix = host == "unix"
        loopback = unix or ip.startswith("127.") or ip == "::1"
        self.machine = SMTPClient(
            helo, tls="none" if unix else tls, tls_possible=not unix, auth=auth, auth_ok_plaintext=loopback, lmtp=lmtp
        )
        try:
            if unix:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(connect_timeout)
                self.sock.connect(ip)
            else:
                self.sock = socket.create_connection((ip, port), timeout=connect_timeout)
        except OSError as exc:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            where = f"unix:{ip}" if unix else f"{host}[{ip}]:{port}"
            self.machine.failure = ServerReply(421, (f"4.4.1 connect to {where}: {exc.strerror or exc}",), True)
            self.machine.state = _DONE
            return
        if not unix:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._run([], until=lambda m: m.ready)

    @property
    def ok(self) -> bool:
        return self.machine.ready and self.sock is not None

    @property
    def failure(self) -> ServerReply | None:
        return self.machine.failure

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _run(self, actions: list, until) -> None:
        m = self.machine
        pending = list(actions)
        while True:
            while pending:
                action = pending.pop(0)
                if isinstance(action, (bytes, bytearray)):
                    out = [action]
                    while pending and isinstance(pending[0], (bytes, bytearray)):
                        out.append(pending.pop(0))
                    if not self._send(b"".join(out)):
                        pending = m.data_received(b"") + pending
                elif isinstance(action, Stream):
                    buf = bytearray()
                    for chunk in action.chunks:
                        buf += chunk
                        if len(buf) >= 65536:
                            if not self._send(bytes(buf)):
                                break
                            buf.clear()
                    else:
                        if buf and not self._send(bytes(buf)):
                            pass
                elif action is STARTTLS:
                    pending.extend(self._starttls())
                elif action is CLOSE:
                    self.close()
                    return
            if m.state == _DONE or until(m):
                return
            try:
                self.sock.settimeout(self.timeout)
                data = self.sock.recv(65536)
            except TimeoutError:
                pending.extend(m.timed_out())
                continue
            except OSError:
                data = b""
            pending.extend(m.data_received(data))

    def _starttls(self) -> list:
        from pymta.lib.tls import client_context  # noqa: PLC0415 lazy

        verify = self.tls == "verify"
        try:
            if verify and self.ca_file:
                import ssl  # noqa: PLC0415 lazy

                ctx = ssl.create_default_context(cafile=self.ca_file)
            else:
                ctx = client_context(verify)
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host if verify else None)
        except (OSError, ValueError) as exc:
            return self.machine.tls_failed(str(exc)[:200])
        return self.machine.tls_started()

    def send(self, txn: Transaction) -> TxnResult:
        self.last_used = time.monotonic()
        m = self.machine
        actions = m.transaction(txn)
        self._run(actions, until=lambda m: m.ready)
        result = m.result
        if result.failure is None and m.failure is not None and result.data is None:
            result.failure = m.failure
        return result

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.machine.ready = False
        self.machine.state = _DONE

    def quit(self) -> None:
        if self.sock is not None and self.machine.state != _DONE:
            self.sock.settimeout(5)
            self._run(self.machine.quit(), until=lambda m: False)
        self.close()
