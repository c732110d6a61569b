"""The blocking milter transport (pymta/lib/milterconn.py, issue 12 §2)
against a small milter written here: a thread serving a socket, answering
option negotiation and then with scripted replies per command."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pymta.lib import milter as m
from pymta.lib.milterconn import Message, Timeouts, parse_spec, run_message


def pkt(cmd: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + cmd + payload


Script = dict[bytes, bytes]  # command letter -> raw reply bytes


class ToyMilter:
    """Answers each packet: OPTNEG with all actions, scripted bytes for a
    command in the script, 'c' for other events that expect a reply."""

    def __init__(
        self,
        script: Script,
        family: int = socket.AF_INET,
        protocol: int = 0,
        delay: dict[bytes, float] | None = None,
    ) -> None:
        self.script = script
        self.protocol = protocol
        self.delay = delay or {}
        self.seen: list[tuple[bytes, bytes]] = []
        if family == socket.AF_UNIX:
            self.dir = tempfile.mkdtemp()
            path = os.path.join(self.dir, "milter.sock")
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(path)
            self.spec = f"unix:{path}"
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.spec = f"inet:127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        reader = m.PacketReader()
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for cmd, payload in reader.feed(data):
                    self.seen.append((cmd, payload))
                    if cmd in self.delay:
                        time.sleep(self.delay[cmd])
                    if cmd == b"O":
                        out = pkt(b"O", struct.pack(">III", 6, m.ALL_ACTIONS, self.protocol))
                    elif cmd in self.script:
                        out = self.script[cmd]
                    elif cmd in (b"D", b"A", b"Q"):
                        continue
                    elif cmd == b"R" and self.protocol & m.SMFIP_NR_RCPT:
                        continue
                    elif cmd == b"E":
                        out = pkt(b"a")
                    else:
                        out = pkt(b"c")
                    if cmd == b"Q":
                        return
                    try:
                        conn.sendall(out)
                    except OSError:
                        return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def milter() -> Iterator[Callable[..., ToyMilter]]:
    made: list[ToyMilter] = []

    def make(script: Script, **kw: object) -> ToyMilter:
        t = ToyMilter(script, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def message() -> Message:
    return Message(
        client_name="client.example",
        family=m.FAMILY_INET,
        port=4567,
        address="192.0.2.1",
        helo="client.example",
        sender="a@b.example",
        mail_args=["SIZE=20"],
        recipients=[("c@d.example", []), ("e@d.example", ["NOTIFY=NEVER"])],
        headers=[("From", "a@b.example"), ("Subject", "hi")],
        body=b"hello\r\n",
        macros={m.SMFIC_CONNECT: {"j": "mx.example", "{client_addr}": "192.0.2.1"}},
    )


FAST = Timeouts(connect=2, command=2, content=2)


def test_spec_parsing() -> None:
    assert parse_spec("inet:127.0.0.1:8891") == (socket.AF_INET, ("127.0.0.1", 8891))
    assert parse_spec("inet:[::1]:11332") == (socket.AF_INET6, ("::1", 11332))
    assert parse_spec("unix:/run/x.sock") == (socket.AF_UNIX, "/run/x.sock")
    with pytest.raises(ValueError):
        parse_spec("tcp:x")


def test_accept_and_every_event_sent(milter: Callable[..., ToyMilter]) -> None:
    t = milter({})
    v = run_message(t.spec, message(), FAST)
    assert v.action == "accept" and not v.error
    deadline = time.monotonic() + 5  # QUIT is sent last: the milter's thread may not have read it yet
    while not b"".join(c for c, _ in t.seen).endswith(b"Q") and time.monotonic() < deadline:
        time.sleep(0.01)
    cmds = b"".join(c for c, _ in t.seen)
    assert cmds == b"ODCHMRRTLLNBEQ"
    assert (b"C", b"client.example\x004\x11\xd7192.0.2.1\0") in t.seen
    assert (b"M", b"<a@b.example>\0SIZE=20\0") in t.seen
    assert (b"B", b"hello\r\n") in t.seen


def test_unix_socket(milter: Callable[..., ToyMilter]) -> None:
    t = milter({}, family=socket.AF_UNIX)
    assert run_message(t.spec, message(), FAST).action == "accept"


def test_reject_tempfail_discard(milter: Callable[..., ToyMilter]) -> None:
    assert run_message(milter({b"M": pkt(b"r")}).spec, message(), FAST).action == "reject"
    assert run_message(milter({b"E": pkt(b"t")}).spec, message(), FAST).action == "tempfail"
    assert run_message(milter({b"E": pkt(b"d")}).spec, message(), FAST).action == "discard"


def test_replycode_550_and_451(milter: Callable[..., ToyMilter]) -> None:
    v = run_message(milter({b"E": pkt(b"y", b"550 5.7.1 spam\0")}).spec, message(), FAST)
    assert (v.action, v.code, v.text) == ("replycode", "550", "5.7.1 spam")
    v = run_message(milter({b"L": pkt(b"y", b"451 4.7.1 later\0")}).spec, message(), FAST)
    assert (v.action, v.code, v.text) == ("replycode", "451", "4.7.1 later")


def test_one_recipient_rejected(milter: Callable[..., ToyMilter]) -> None:
    script = {b"R": pkt(b"y", b"550 5.1.1 unknown\0")}
    v = run_message(milter(script).spec, message(), FAST)
    assert v.action == "replycode" and len(v.rejected_recipients) == 2


def test_modifications_in_order(milter: Callable[..., ToyMilter]) -> None:
    eom = (
        pkt(b"h", b"X-Spam\0Yes\0")
        + pkt(b"m", b"\0\0\0\x01Subject\0[SPAM] hi\0")
        + pkt(b"m", b"\0\0\0\x01X-Old\0\0")
        + pkt(b"i", b"\0\0\0\x00X-First\x001\0")
        + pkt(b"+", b"<new@d.example>\0")
        + pkt(b"2", b"<par@d.example>\0NOTIFY=NEVER\0")
        + pkt(b"-", b"<c@d.example>\0")
        + pkt(b"e", b"<bounce@b.example>\0")
        + pkt(b"b", b"replaced\r\n")
        + pkt(b"q", b"held\0")
        + pkt(b"c")
    )
    v = run_message(milter({b"E": eom}).spec, message(), FAST)
    assert v.action == "accept" and not v.error
    assert v.quarantine == "held"
    assert [(x.kind, x.name, x.value) for x in v.modifications] == [
        ("addheader", "X-Spam", "Yes"),
        ("chgheader", "Subject", "[SPAM] hi"),
        ("chgheader", "X-Old", ""),
        ("insheader", "X-First", "1"),
        ("addrcpt", "", "<new@d.example>"),
        ("addrcpt", "", "<par@d.example>"),
        ("delrcpt", "", "<c@d.example>"),
        ("chgfrom", "", "<bounce@b.example>"),
        ("replbody", "", ""),
    ]
    assert v.modifications[5].args == "NOTIFY=NEVER"
    assert v.modifications[-1].body == b"replaced\r\n"


def test_skipped_steps_not_sent(milter: Callable[..., ToyMilter]) -> None:
    t = milter({}, protocol=m.SMFIP_NOHELO | m.SMFIP_NOHDRS | m.SMFIP_NR_RCPT)
    v = run_message(t.spec, message(), FAST)
    assert v.action == "accept"
    assert b"".join(c for c, _ in t.seen) == b"ODCMRRTNBEQ"


def test_unoffered_protocol_flag_refused(milter: Callable[..., ToyMilter]) -> None:
    t = milter({}, protocol=m.SMFIP_HDR_LEADSPC)
    v = run_message(t.spec, message(), FAST, default_action="accept")
    assert v.action == "accept" and "not offered" in v.error


def test_timeout_gives_default_action(milter: Callable[..., ToyMilter]) -> None:
    t = milter({}, delay={b"E": 1.5})
    short = Timeouts(connect=1, command=1, content=0.3)
    v = run_message(t.spec, message(), short, default_action="tempfail")
    assert v.action == "tempfail" and "timeout" in v.error
    t = milter({}, delay={b"H": 1.5})
    v = run_message(t.spec, message(), short, default_action="accept")
    assert v.action == "accept" and "timeout" in v.error


def test_bad_milters_give_default_action(milter: Callable[..., ToyMilter]) -> None:
    huge = struct.pack(">I", 1 << 30) + b"a"
    for script in ({b"E": huge}, {b"E": pkt(b"Z")}, {b"E": pkt(b"h", b"X")}, {b"M": b"\0\0"}):
        v = run_message(milter(script).spec, message(), FAST, default_action="reject")
        assert v.action == "reject" and v.error, script
    # nobody listening
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    v = run_message(f"inet:127.0.0.1:{port}", message(), FAST)
    assert v.action == "tempfail" and v.error.startswith("connect")
