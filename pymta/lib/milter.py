"""Milter protocol client machine (Sendmail milter protocol version 6, as
Postfix speaks it): sans-I/O, no sockets here (issue 12 §2).

What exists:

- ``encode_*`` functions build the packets a client (the MTA) sends:
  SMFIC_OPTNEG, SMFIC_MACRO, connect, helo, mail and rcpt (with ESMTP
  args), data, header, end of headers, body (chunks of at most 65535
  bytes), end of message, abort, quit.
- ``PacketReader`` frames the milter's byte stream: a 4-byte big-endian
  length then a command byte; a length of zero or over ``MAX_PACKET``
  (64 MiB) is a protocol error, the length is never allocated first.
- ``parse_reply`` turns one packet into a ``Reply`` (accept, continue,
  reject, tempfail, discard, replycode, quarantine, progress, skip) or a
  ``Modification`` (add/insert/change/delete header, add recipient incl.
  ADDRCPT_PAR, delete recipient, CHGFROM, REPLBODY), or a ``ProtocolError``
  -- it never raises on bad input.
- ``Negotiation`` parses the milter's SMFIC_OPTNEG answer: the actions it
  may take, the protocol steps it skips (SMFIP_NO*) and the events it
  does not answer (SMFIP_NR_*).
- ``MilterSession`` follows one message: ``send(event)`` tells whether a
  reply is awaited; ``receive(bytes)`` yields the results; at end of
  message the modifications (and a quarantine request) are collected, in
  order, until the final reply.

The blocking transport is ``milterconn.py``; ``pymta/milters.py`` puts
milters in the mail path (smtpd, the maildrop pickup, sendmail).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MILTER_VERSION = 6
MAX_PACKET = 64 * 1024 * 1024
MAX_BODY_CHUNK = 65535

# Commands from the MTA.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# Replies and actions from the milter.
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# Actions (SMFIF_*).
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
ALL_ACTIONS = 0x1FF

# Protocol flags (SMFIP_*).
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
ALL_PROTOCOL = 0x1FFFFF
# What the transport offers: not HDR_LEADSPC (header values are sent as
# parsed) nor RCPT_REJ (refused recipients are not shown to the milter).
OFFERED_PROTOCOL = ALL_PROTOCOL & ~(SMFIP_HDR_LEADSPC | SMFIP_RCPT_REJ)

# Which flag skips an event, which says it gets no reply.
_SKIP = {
    SMFIC_CONNECT: SMFIP_NOCONNECT,
    SMFIC_HELO: SMFIP_NOHELO,
    SMFIC_MAIL: SMFIP_NOMAIL,
    SMFIC_RCPT: SMFIP_NORCPT,
    SMFIC_BODY: SMFIP_NOBODY,
    SMFIC_HEADER: SMFIP_NOHDRS,
    SMFIC_EOH: SMFIP_NOEOH,
    SMFIC_DATA: SMFIP_NODATA,
    SMFIC_UNKNOWN: SMFIP_NOUNKNOWN,
}
_NO_REPLY = {
    SMFIC_CONNECT: SMFIP_NR_CONN,
    SMFIC_HELO: SMFIP_NR_HELO,
    SMFIC_MAIL: SMFIP_NR_MAIL,
    SMFIC_RCPT: SMFIP_NR_RCPT,
    SMFIC_BODY: SMFIP_NR_BODY,
    SMFIC_HEADER: SMFIP_NR_HDR,
    SMFIC_EOH: SMFIP_NR_EOH,
    SMFIC_DATA: SMFIP_NR_DATA,
    SMFIC_UNKNOWN: SMFIP_NR_UNKN,
}

# Connect families.
FAMILY_UNKNOWN = b"U"
FAMILY_UNIX = b"L"
FAMILY_INET = b"4"
FAMILY_INET6 = b"6"

# The macros Postfix sends, per stage.
POSTFIX_MACROS = {
    SMFIC_CONNECT: ("j", "{daemon_name}", "{client_addr}", "{client_name}"),
    SMFIC_HELO: ("{tls_version}",),
    SMFIC_MAIL: ("i", "{auth_authen}", "{mail_addr}"),
    SMFIC_RCPT: ("{rcpt_addr}",),
}


def packet(cmd: bytes, payload: bytes = b"") -> bytes:
    """One packet: 4-byte length (command byte + payload), command, payload."""
    return struct.pack(">I", len(payload) + 1) + cmd + payload


def _z(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    return b.replace(b"\0", b"") + b"\0"


def encode_optneg(actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL, version: int = MILTER_VERSION) -> bytes:
    return packet(SMFIC_OPTNEG, struct.pack(">III", version, actions, protocol))


def encode_macro(stage: bytes, macros: dict[str, str]) -> bytes:
    body = b"".join(_z(k) + _z(v) for k, v in macros.items())
    return packet(SMFIC_MACRO, stage + body)


def encode_connect(hostname: str, family: bytes = FAMILY_UNKNOWN, port: int = 0, address: str = "") -> bytes:
    payload = _z(hostname) + family
    if family != FAMILY_UNKNOWN:
        payload += struct.pack(">H", port & 0xFFFF) + _z(address)
    return packet(SMFIC_CONNECT, payload)


def encode_helo(name: str) -> bytes:
    return packet(SMFIC_HELO, _z(name))


def encode_mail(sender: str, args: list[str] | tuple[str, ...] = ()) -> bytes:
    return packet(SMFIC_MAIL, _z(f"<{sender}>") + b"".join(_z(a) for a in args))


def encode_rcpt(rcpt: str, args: list[str] | tuple[str, ...] = ()) -> bytes:
    return packet(SMFIC_RCPT, _z(f"<{rcpt}>") + b"".join(_z(a) for a in args))


def encode_data() -> bytes:
    return packet(SMFIC_DATA)


def encode_header(name: str, value: str) -> bytes:
    return packet(SMFIC_HEADER, _z(name) + _z(value))


def encode_eoh() -> bytes:
    return packet(SMFIC_EOH)


def encode_body(data: bytes) -> list[bytes]:
    """Body chunks, at most MAX_BODY_CHUNK bytes each."""
    return [packet(SMFIC_BODY, data[i : i + MAX_BODY_CHUNK]) for i in range(0, len(data), MAX_BODY_CHUNK)]


def encode_eom() -> bytes:
    return packet(SMFIC_BODYEOB)


def encode_abort() -> bytes:
    return packet(SMFIC_ABORT)


def encode_quit() -> bytes:
    return packet(SMFIC_QUIT)


@dataclass(frozen=True)
class ProtocolError:
    reason: str


@dataclass(frozen=True)
class Reply:
    """A verdict: kind is accept, continue, reject, tempfail, discard,
    replycode, quarantine, progress, skip, shutdown, conn_fail."""

    kind: str
    code: str = ""
    text: str = ""


@dataclass(frozen=True)
class Modification:
    """An end-of-message action: addheader, insheader, chgheader,
    addrcpt, delrcpt, chgfrom, replbody (args as parsed)."""

    kind: str
    name: str = ""
    value: str = ""
    index: int = 0
    args: str = ""
    body: bytes = b""


Result = Reply | Modification | ProtocolError

_SIMPLE = {
    SMFIR_ACCEPT: "accept",
    SMFIR_CONTINUE: "continue",
    SMFIR_REJECT: "reject",
    SMFIR_TEMPFAIL: "tempfail",
    SMFIR_DISCARD: "discard",
    SMFIR_PROGRESS: "progress",
    SMFIR_SKIP: "skip",
    SMFIR_SHUTDOWN: "shutdown",
    SMFIR_CONN_FAIL: "conn_fail",
}


def _strings(payload: bytes, n: int) -> list[str] | None:
    """Exactly n NUL-terminated strings, or None."""
    if not payload.endswith(b"\0"):
        return None
    parts = payload[:-1].split(b"\0")
    if len(parts) != n:
        return None
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def parse_reply(cmd: bytes, payload: bytes) -> Result:
    """One packet from the milter; never raises."""
    if cmd in _SIMPLE:
        return Reply(_SIMPLE[cmd])
    if cmd == SMFIR_REPLYCODE:
        s = _strings(payload, 1)
        if s is None or len(s[0]) < 3 or not s[0][:3].isdigit() or s[0][0] not in "45":
            return ProtocolError("bad replycode")
        return Reply("replycode", s[0][:3], s[0][4:] if len(s[0]) > 3 else "")
    if cmd == SMFIR_QUARANTINE:
        s = _strings(payload, 1)
        return ProtocolError("bad quarantine") if s is None else Reply("quarantine", text=s[0])
    if cmd in (SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER):
        index = 0
        if cmd != SMFIR_ADDHEADER:
            if len(payload) < 4:
                return ProtocolError("short header action")
            index = struct.unpack(">I", payload[:4])[0]
            payload = payload[4:]
        s = _strings(payload, 2)
        if s is None or not s[0]:
            return ProtocolError("bad header action")
        kind = {SMFIR_ADDHEADER: "addheader", SMFIR_INSHEADER: "insheader"}.get(cmd, "chgheader")
        return Modification(kind, name=s[0], value=s[1], index=index)
    if cmd in (SMFIR_ADDRCPT, SMFIR_DELRCPT):
        s = _strings(payload, 1)
        if s is None or not s[0]:
            return ProtocolError("bad recipient action")
        kind = "addrcpt" if cmd == SMFIR_ADDRCPT else "delrcpt"
        return Modification(kind, value=s[0])
    if cmd in (SMFIR_ADDRCPT_PAR, SMFIR_CHGFROM):
        s = _strings(payload, 2) or _strings(payload, 1)
        if s is None or not s[0]:
            return ProtocolError("bad address action")
        kind = "addrcpt" if cmd == SMFIR_ADDRCPT_PAR else "chgfrom"
        return Modification(kind, value=s[0], args=s[1] if len(s) > 1 else "")
    if cmd == SMFIR_REPLBODY:
        return Modification("replbody", body=payload)
    return ProtocolError(f"unknown reply {cmd!r}")


class PacketReader:
    """Frames bytes into (command, payload) packets; a bad length makes
    ``error`` set and stops everything after it."""

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self._buf = bytearray()
        self._limit = limit
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self.error is not None:
            return []
        self._buf += data
        out: list[tuple[bytes, bytes]] = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack(">I", self._buf[:4])
            if length == 0 or length > self._limit:
                self.error = ProtocolError(f"bad packet length {length}")
                self._buf.clear()
                return out
            if len(self._buf) < 4 + length:
                break
            cmd = bytes(self._buf[4:5])
            payload = bytes(self._buf[5 : 4 + length])
            del self._buf[: 4 + length]
            out.append((cmd, payload))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


@dataclass
class Negotiation:
    version: int
    actions: int
    protocol: int

    def skips(self, event: bytes) -> bool:
        flag = _SKIP.get(event, 0)
        return bool(self.protocol & flag)

    def replies(self, event: bytes) -> bool:
        if event in (SMFIC_MACRO, SMFIC_ABORT, SMFIC_QUIT, SMFIC_QUIT_NC):
            return False
        return not self.protocol & _NO_REPLY.get(event, 0)

    def allows(self, mod: Modification) -> bool:
        need = {
            "addheader": SMFIF_ADDHDRS,
            "insheader": SMFIF_ADDHDRS,
            "chgheader": SMFIF_CHGHDRS,
            "addrcpt": SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR,
            "delrcpt": SMFIF_DELRCPT,
            "chgfrom": SMFIF_CHGFROM,
            "replbody": SMFIF_CHGBODY,
        }[mod.kind]
        return bool(self.actions & need)


def parse_optneg(
    cmd: bytes, payload: bytes, offered_actions: int = ALL_ACTIONS, offered_protocol: int = ALL_PROTOCOL
) -> Negotiation | ProtocolError:
    """The milter's OPTNEG answer, masked by what we offered."""
    if cmd != SMFIC_OPTNEG or len(payload) < 12:
        return ProtocolError("bad option negotiation")
    version, actions, protocol = struct.unpack(">III", payload[:12])
    if version < 2:
        return ProtocolError(f"milter version {version}")
    if actions & ~offered_actions or protocol & ~offered_protocol:
        return ProtocolError("milter asks for what was not offered")
    return Negotiation(min(version, MILTER_VERSION), actions, protocol)


@dataclass
class EndOfMessage:
    """What end of message gave: the final reply and the modifications in
    the order the milter sent them."""

    reply: Reply | ProtocolError
    modifications: list[Modification] = field(default_factory=list)
    quarantine: str | None = None


class MilterSession:
    """Tracks one connection to a milter after negotiation: the caller
    sends packets (``expect_reply`` says whether to wait) and feeds the
    milter's bytes to ``receive`` until a result comes."""

    def __init__(self, negotiation: Negotiation) -> None:
        self.negotiation = negotiation
        self.reader = PacketReader()
        self._mods: list[Modification] = []
        self._quarantine: str | None = None
        self._in_eom = False
        self.progress = 0  # SMFIR_PROGRESS seen: the transport restarts its timeout

    def expect_reply(self, event: bytes) -> bool:
        if self.negotiation.skips(event):
            return False
        if event == SMFIC_BODYEOB:
            self._in_eom = True
            self._mods = []
            self._quarantine = None
            return True
        return self.negotiation.replies(event)

    def receive(self, data: bytes) -> Reply | EndOfMessage | ProtocolError | None:
        """The verdict for the current event, or None for more bytes."""
        for cmd, payload in self.reader.feed(data):
            r = parse_reply(cmd, payload)
            if isinstance(r, ProtocolError):
                return r
            if isinstance(r, Modification):
                if not self._in_eom:
                    return ProtocolError(f"{r.kind} outside end of message")
                if not self.negotiation.allows(r):
                    return ProtocolError(f"{r.kind} not negotiated")
                self._mods.append(r)
                continue
            if r.kind == "progress":
                self.progress += 1
                continue
            if r.kind == "quarantine" and self._in_eom:
                if not self.negotiation.actions & SMFIF_QUARANTINE:
                    return ProtocolError("quarantine not negotiated")
                self._quarantine = r.text
                continue
            if r.kind == "skip" and not self._in_eom:
                return r
            if self._in_eom:
                self._in_eom = False
                return EndOfMessage(r, self._mods, self._quarantine)
            return r
        if self.reader.error is not None:
            return self.reader.error
        return None
