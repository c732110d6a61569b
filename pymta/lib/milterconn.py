"""Blocking transport to one milter (issue 12 §2): ``inet:host:port``
(``inet:[::1]:port`` for IPv6) or ``unix:/path``, with connect, command and
content timeouts, driving the sans-I/O machine in ``milter.py``.

``run_message`` holds one whole conversation for one message -- option
negotiation, macros, connect, helo, mail, rcpt, data, headers, end of
headers, body, end of message, quit -- and gives a ``Verdict``: the action
(accept, continue, reject, tempfail, discard, quarantine, replycode), the
reply code and text, the modifications in the milter's order, and the
recipients a milter refused.  A milter that is down, times out, closes
mid-message or answers nonsense gives ``default_action`` with ``error``
set; nothing raises.  Meant to run off the event loop (in a Job).

``MilterConnection`` is the one conversation step by step, for a caller
that sends each event at its own stage (``pymta/milters.py``: smtpd's
connect, HELO, MAIL, RCPT, DATA and end of message).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from pymta.lib import milter as m


@dataclass
class Timeouts:
    connect: float = 30.0
    command: float = 30.0
    content: float = 300.0


@dataclass
class Message:
    """What the milter is told about one message."""

    client_name: str = "unknown"
    family: bytes = m.FAMILY_UNKNOWN
    port: int = 0
    address: str = ""
    helo: str = ""
    sender: str = ""
    mail_args: list[str] = field(default_factory=list)
    recipients: list[tuple[str, list[str]]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    macros: dict[bytes, dict[str, str]] = field(default_factory=dict)


@dataclass
class Verdict:
    action: str
    code: str = ""
    text: str = ""
    modifications: list[m.Modification] = field(default_factory=list)
    rejected_recipients: list[tuple[str, m.Reply]] = field(default_factory=list)
    quarantine: str | None = None
    error: str = ""


class MilterFailure(Exception):
    pass


def parse_spec(spec: str) -> tuple[int, object]:
    """(address family, socket address) of a milter spec."""
    if spec.startswith("unix:"):
        return socket.AF_UNIX, spec[5:]
    if spec.startswith("inet:") or spec.startswith("inet6:"):
        rest = spec.split(":", 1)[1]
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bad milter address {spec!r}")
        host = host.strip("[]") or "127.0.0.1"
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return fam, (host, int(port))
    raise ValueError(f"bad milter address {spec!r}")


class MilterConnection:
    def __init__(self, spec: str, timeouts: Timeouts) -> None:
        self.spec = spec
        self.timeouts = timeouts
        self.sock: socket.socket | None = None
        self.session: m.MilterSession | None = None

    def open(
        self, actions: int = m.ALL_ACTIONS, protocol: int = m.OFFERED_PROTOCOL, version: int = m.MILTER_VERSION
    ) -> m.Negotiation:
        try:
            fam, addr = parse_spec(self.spec)
        except ValueError as e:
            raise MilterFailure(str(e)) from None
        s = socket.socket(fam, socket.SOCK_STREAM)
        self.sock = s
        s.settimeout(self.timeouts.connect)
        try:
            s.connect(addr)  # type: ignore[arg-type]
        except OSError as e:
            raise MilterFailure(f"connect: {e}") from None
        self._send(m.encode_optneg(actions, protocol, version), self.timeouts.command)
        reader = m.PacketReader()
        while True:
            packets = reader.feed(self._recv(self.timeouts.command))
            if reader.error is not None:
                raise MilterFailure(reader.error.reason)
            if packets:
                cmd, payload = packets[0]
                neg = m.parse_optneg(cmd, payload, actions, protocol)
                if isinstance(neg, m.ProtocolError):
                    raise MilterFailure(neg.reason)
                self.session = m.MilterSession(neg)
                return neg

    def _send(self, data: bytes, timeout: float) -> None:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise MilterFailure(f"send: {e}") from None

    def _recv(self, timeout: float) -> bytes:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise MilterFailure("timeout") from None
        except OSError as e:
            raise MilterFailure(f"recv: {e}") from None
        if not data:
            raise MilterFailure("milter closed the connection")
        return data

    def event(self, event: bytes, data: bytes, timeout: float) -> m.Reply | m.EndOfMessage | None:
        """Send one event's packet(s); the reply if one is awaited."""
        assert self.session is not None
        if self.session.negotiation.skips(event):
            return None
        want = self.session.expect_reply(event)
        self._send(data, timeout)
        if not want:
            return None
        deadline = time.monotonic() + timeout
        progress = self.session.progress
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MilterFailure("timeout")
            r = self.session.receive(self._recv(left))
            if self.session.progress != progress:  # SMFIR_PROGRESS: the milter is working, wait again
                progress = self.session.progress
                deadline = time.monotonic() + timeout
            if isinstance(r, m.ProtocolError):
                raise MilterFailure(r.reason)
            if r is not None:
                return r

    def close(self, wait: bool = True) -> None:
        """SMFIC_QUIT, then close; ``wait=False`` (an event loop): the quit
        goes only if the socket takes it at once."""
        if self.sock is not None:
            try:
                if wait:
                    self.sock.settimeout(1.0)
                    self.sock.sendall(m.encode_quit())
                else:
                    self.sock.send(m.encode_quit(), socket.MSG_DONTWAIT)
            except OSError:
                pass
            self.sock.close()
            self.sock = None


_FINAL = ("accept", "reject", "tempfail", "discard", "replycode", "quarantine")


def _verdict(r: m.Reply) -> Verdict:
    return Verdict(r.kind, r.code, r.text)


def run_message(
    spec: str,
    msg: Message,
    timeouts: Timeouts | None = None,
    default_action: str = "tempfail",
) -> Verdict:
    """One message through one milter; never raises."""
    t = timeouts or Timeouts()
    conn = MilterConnection(spec, t)
    try:
        return _conversation(conn, msg, t)
    except MilterFailure as e:
        return Verdict(default_action, error=str(e))
    finally:
        conn.close()


def _conversation(conn: MilterConnection, msg: Message, t: Timeouts) -> Verdict:
    conn.open()
    cmd_t, body_t = t.command, t.content

    def macros(stage: bytes) -> None:
        if msg.macros.get(stage):
            conn.event(m.SMFIC_MACRO, m.encode_macro(stage, msg.macros[stage]), cmd_t)

    pkt = m.encode_connect(msg.client_name, msg.family, msg.port, msg.address)
    steps: list[tuple[bytes, bytes]] = [(m.SMFIC_CONNECT, pkt)]
    if msg.helo:
        steps.append((m.SMFIC_HELO, m.encode_helo(msg.helo)))
    steps.append((m.SMFIC_MAIL, m.encode_mail(msg.sender, msg.mail_args)))
    for ev, data in steps:
        macros(ev)
        r = conn.event(ev, data, cmd_t)
        if isinstance(r, m.Reply) and r.kind in _FINAL:
            return _verdict(r)
    rejected: list[tuple[str, m.Reply]] = []
    for rcpt, args in msg.recipients:
        macros(m.SMFIC_RCPT)
        r = conn.event(m.SMFIC_RCPT, m.encode_rcpt(rcpt, args), cmd_t)
        if isinstance(r, m.Reply):
            if r.kind in ("reject", "tempfail", "replycode"):
                rejected.append((rcpt, r))
            elif r.kind in _FINAL:
                return _verdict(r)
    if msg.recipients and len(rejected) == len(msg.recipients):
        v = _verdict(rejected[0][1])
        v.rejected_recipients = rejected
        return v
    late: list[tuple[bytes, bytes]] = [(m.SMFIC_DATA, m.encode_data())]
    late += [(m.SMFIC_HEADER, m.encode_header(n, v)) for n, v in msg.headers]
    late.append((m.SMFIC_EOH, m.encode_eoh()))
    for ev, data in late:
        r = conn.event(ev, data, cmd_t)
        if isinstance(r, m.Reply) and r.kind in _FINAL:
            return _verdict(r)
    for chunk in m.encode_body(msg.body):
        r = conn.event(m.SMFIC_BODY, chunk, body_t)
        if isinstance(r, m.Reply):
            if r.kind == "skip":
                break
            if r.kind in _FINAL:
                return _verdict(r)
    r = conn.event(m.SMFIC_BODYEOB, m.encode_eom(), body_t)
    if not isinstance(r, m.EndOfMessage):
        raise MilterFailure("no end-of-message reply")
    if isinstance(r.reply, m.ProtocolError):
        raise MilterFailure(r.reply.reason)
    v = _verdict(r.reply)
    if v.action == "continue":
        v.action = "accept"
    v.modifications = r.modifications
    v.quarantine = r.quarantine
    v.rejected_recipients = rejected
    return v
