"""Milters in pymail's mail path (issue 12 §2): a milter written here (a
thread on a real socket speaking the protocol, built on pymta/lib/milter.py's
constants) behind a real pymta-smtpd, in listen and inetd modes, and behind
the sendmail/maildrop path (milter.non_smtpd_milters)."""

from __future__ import annotations

import hashlib
import json
import smtplib
import socket
import struct
import threading
import time

import pytest

from pymta.lib import milter as m
from test_sendmail import public_sys  # noqa: F401 - the fixture

MESSAGE = b"From: Carol <carol@remote.example>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHello Alice.\r\n"


def pkt(cmd: bytes, payload: bytes = b"") -> bytes:
    return m.packet(cmd, payload)


def z(*strings: str) -> bytes:
    return b"".join(s.encode() + b"\0" for s in strings)


class Milter:
    """A milter on 127.0.0.1: ``on[cmd]`` says what it answers to an event
    (raw bytes, a callable of the payload giving bytes, "close", "hang"),
    SMFIR_CONTINUE otherwise; ``events`` records what it was sent."""

    def __init__(
        self, on: dict | None = None, actions: int = m.ALL_ACTIONS, protocol: int = 0, keep_body: bool = True
    ) -> None:
        self.on = on or {}
        self.actions = actions
        self.protocol = protocol
        self.keep_body = keep_body  # False: body chunks are hashed and counted, not kept (big messages)
        self.body_hash = hashlib.sha256()
        self.events: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.spec = f"inet:127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
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
                    if cmd == m.SMFIC_BODY:
                        self.body_hash.update(payload)
                    self.events.append((cmd, payload if self.keep_body or cmd != m.SMFIC_BODY else b""))
                    if cmd == m.SMFIC_OPTNEG:
                        conn.sendall(pkt(m.SMFIC_OPTNEG, struct.pack(">III", 6, self.actions, self.protocol)))
                        continue
                    if cmd in (m.SMFIC_MACRO, m.SMFIC_ABORT):
                        continue
                    if cmd == m.SMFIC_QUIT:
                        return
                    action = self.on.get(cmd)
                    if callable(action):
                        action = action(payload)
                    if action == "close":
                        return
                    if action == "hang":
                        self.stop.wait(60)
                        return
                    if isinstance(action, list):  # in turn: a number waits that long, bytes are sent
                        for item in action[:-1]:
                            if isinstance(item, float):
                                time.sleep(item)
                            else:
                                conn.sendall(item)
                        action = action[-1]
                    conn.sendall(action if action is not None else pkt(m.SMFIR_CONTINUE))

    def commands(self) -> bytes:
        """The events seen, as their command letters (macros and option negotiation left out)."""
        return b"".join(c for c, _ in self.events if c not in (m.SMFIC_MACRO, m.SMFIC_OPTNEG))

    def macros(self, stage: bytes) -> dict[str, str]:
        for cmd, payload in self.events:
            if cmd == m.SMFIC_MACRO and payload[:1] == stage:
                parts = payload[1:].split(b"\0")[:-1]
                return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
        return {}

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


LIVE: list[Milter] = []  # the milters of the running test


@pytest.fixture
def milters():
    made: list[Milter] = []

    def make(**kw) -> Milter:
        made.append(Milter(**kw))
        LIVE.append(made[-1])
        return made[-1]

    yield make
    for mt in made:
        mt.close()
    LIVE.clear()


def system(make_mailsys, specs: list[str], extra: str = ""):
    listed = ", ".join(f'"{s}"' for s in specs)
    defaults = (("command_timeout", 2.0), ("content_timeout", 3.0))
    timeouts = "".join(f"{k} = {v}\n" for k, v in defaults if k not in extra)
    return make_mailsys(f"[milter]\nsmtpd_milters = [{listed}]\n{timeouts}{extra}")


def start(mailsys, mode: str) -> int:
    """The smtpd in MODE; the milters forget the session of the start-up probe (wait_port)."""
    mts = LIVE
    port = mailsys.start_smtpd(mode)
    deadline = time.time() + 10
    while time.time() < deadline and not all(mt.commands().endswith(b"Q") for mt in mts):
        time.sleep(0.02)
    for mt in mts:
        mt.events.clear()
        mt.connections = 0
    return port


def queued(mailsys, where: str = "new") -> list[tuple[dict, bytes]]:
    """(envelope, message) of each entry in queue/WHERE."""
    out = []
    for path in sorted((mailsys.root / "queue" / where).iterdir()):
        line, _, message = path.read_bytes().partition(b"\n")
        out.append((json.loads(line), message))
    return out


def stop_and_log(mailsys) -> str:
    """Stop the daemons; what they logged."""
    text = ""
    for proc in mailsys.procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
        text += proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return text


def send(port: int, sender="carol@remote.example", rcpts=("alice@example.test",), message=MESSAGE, **mail_kw):
    """One SMTP transaction; the replies to MAIL, each RCPT and DATA (None when not reached)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        replies: dict = {"mail": smtp.mail(sender, **mail_kw), "rcpt": [], "data": None}
        if replies["mail"][0] != 250:
            return replies
        for r in rcpts:
            replies["rcpt"].append(smtp.rcpt(r))
        if any(code == 250 for code, _ in replies["rcpt"]):
            replies["data"] = smtp.data(message)
        smtp.quit()
    return replies


# -- every event at its stage ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_every_event_and_the_postfix_macros(make_mailsys, milters, mode):
    mt = milters()
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    r = send(port, rcpts=["alice@example.test", "bob@example.test"], options=["BODY=8BITMIME"])
    assert r["mail"] == (250, b"2.1.0 Ok")
    assert r["rcpt"] == [(250, b"2.1.5 Ok"), (250, b"2.1.5 Ok")]
    code, text = r["data"]
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    qid = text.split()[-1].decode()
    deadline = time.time() + 5
    while not mt.commands().endswith(b"Q") and time.time() < deadline:
        time.sleep(0.05)
    # connect, helo, mail, rcpt x2, data, 4 headers (Received + 3), eoh, body, eom, quit
    assert mt.commands() == b"CHMRRTLLLLNBEQ"
    ev = dict(mt.events)
    assert ev[m.SMFIC_CONNECT] == b"[127.0.0.1]\0" + m.FAMILY_INET + ev[m.SMFIC_CONNECT][13:15] + b"127.0.0.1\0"
    assert ev[m.SMFIC_HELO] == b"client.example\0"
    assert ev[m.SMFIC_MAIL] == z("<carol@remote.example>", "BODY=8BITMIME")
    assert [p for c, p in mt.events if c == m.SMFIC_RCPT] == [z("<alice@example.test>"), z("<bob@example.test>")]
    headers = [p for c, p in mt.events if c == m.SMFIC_HEADER]
    assert headers[0].startswith(b"Received\0from client.example ([127.0.0.1])\n\tby mx.example.test (pymail)")
    assert headers[1:] == [
        z("From", "Carol <carol@remote.example>"),
        z("To", "alice@example.test"),
        z("Subject", "hello"),
    ]
    assert ev[m.SMFIC_BODY] == b"Hello Alice.\r\n"
    connect = mt.macros(m.SMFIC_CONNECT)
    assert connect["j"] == "mx.example.test" and connect["{daemon_name}"] == "mx.example.test"
    assert connect["{client_addr}"] == "127.0.0.1" and connect["_"] == "unknown [127.0.0.1]"
    assert mt.macros(m.SMFIC_MAIL) == {"i": qid, "{mail_addr}": "carol@remote.example"}
    assert mt.macros(m.SMFIC_RCPT)["{rcpt_addr}"] == "alice@example.test"  # the first RCPT's
    assert mt.macros(m.SMFIC_RCPT)["{rcpt_mailer}"] == "local"
    assert mt.macros(m.SMFIC_BODYEOB) == {"i": qid}
    [(env, message)] = queued(mailsys)
    assert env["id"] == qid and env["recipients"] == ["alice@example.test", "bob@example.test"]
    assert message.endswith(b"Subject: hello\n\nHello Alice.\n")


def test_message_reaches_the_maildir_through_a_milter(make_mailsys, milters):
    mt = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_ADDHEADER, z("X-Milter", "seen")) + pkt(m.SMFIR_ACCEPT)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, "listen")
    mailsys.start_qrunner()
    assert send(port)["data"][0] == 250
    [path] = mailsys.wait_messages(1)
    assert path.read_bytes().endswith(b"Subject: hello\nX-Milter: seen\n\nHello Alice.\n")


def test_rset_aborts_the_message_at_the_milter(make_mailsys, milters):
    mt = milters()
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, "listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("carol@remote.example")
        assert smtp.rset() == (250, b"2.0.0 Ok")
        smtp.mail("dave@remote.example")
        smtp.quit()
    time.sleep(0.3)
    assert mt.commands() == b"CHMAMQ"  # the second message was never ended: the quit says it all


# -- verdicts at each stage -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_reject_and_tempfail_at_mail(make_mailsys, milters, mode):
    mt = milters(on={m.SMFIC_MAIL: lambda p: pkt(m.SMFIR_REJECT if b"spam" in p else m.SMFIR_TEMPFAIL)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    assert send(port, sender="spam@remote.example")["mail"] == (550, b"5.7.1 Command rejected")
    assert send(port)["mail"] == (451, b"4.7.1 Service unavailable - try again later")
    assert queued(mailsys) == []
    log = stop_and_log(mailsys)
    # the queue ID told to the milter at MAIL (macro i) names the refusal
    assert ": milter-reject: MAIL from unknown[127.0.0.1]: 550 5.7.1 Command rejected; from=<spam@remote." in log


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_rcpt_reject_refuses_that_recipient_only(make_mailsys, milters, mode):
    mt = milters(on={m.SMFIC_RCPT: lambda p: pkt(m.SMFIR_REPLYCODE, z("550 5.1.1 no bob")) if b"bob" in p else None})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    r = send(port, rcpts=["bob@example.test", "alice@example.test"])
    assert r["rcpt"] == [(550, b"5.1.1 no bob"), (250, b"2.1.5 Ok")]
    assert r["data"][0] == 250
    [(env, _)] = queued(mailsys)
    assert env["recipients"] == ["alice@example.test"]


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_verdicts_at_end_of_data(make_mailsys, milters, mode):
    def eom(_payload, answers=[]):  # noqa: B006 - the answers in turn
        return answers.pop(0)

    answers = [
        pkt(m.SMFIR_REJECT),
        pkt(m.SMFIR_TEMPFAIL),
        pkt(m.SMFIR_REPLYCODE, z("554 5.7.0 Spam detected")),
        pkt(m.SMFIR_REPLYCODE, z("452 too busy")),
    ]
    mt = milters(on={m.SMFIC_BODYEOB: lambda p: eom(p, answers)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    assert send(port)["data"] == (550, b"5.7.1 Command rejected")
    assert send(port)["data"] == (451, b"4.7.1 Service unavailable - try again later")
    assert send(port)["data"] == (554, b"5.7.0 Spam detected")
    assert send(port)["data"] == (452, b"too busy")
    assert queued(mailsys) == [] and not list((mailsys.root / "queue" / "tmp").iterdir())
    log = stop_and_log(mailsys)
    assert "milter-reject: END-OF-MESSAGE from unknown[127.0.0.1]: 554 5.7.0 Spam detected" in log


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_discard_accepts_and_drops(make_mailsys, milters, mode):
    mt = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_DISCARD)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    code, text = send(port)["data"]
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    qid = text.split()[-1].decode()
    assert queued(mailsys) == [] and not list((mailsys.root / "queue" / "tmp").iterdir())
    log = stop_and_log(mailsys)
    assert f"{qid}: milter-discard: END-OF-MESSAGE from unknown[127.0.0.1]: milter triggers DISCARD action" in log
    assert "(queued)" not in log


def test_discard_at_rcpt_drops_the_message(make_mailsys, milters):
    mt = milters(on={m.SMFIC_RCPT: pkt(m.SMFIR_DISCARD)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, "listen")
    assert send(port)["data"][0] == 250
    assert queued(mailsys) == []


def test_accept_stops_the_conversation(make_mailsys, milters):
    at_connect = milters(on={m.SMFIC_CONNECT: pkt(m.SMFIR_ACCEPT)})
    at_mail = milters(on={m.SMFIC_MAIL: pkt(m.SMFIR_ACCEPT)})
    mailsys = system(make_mailsys, [at_connect.spec, at_mail.spec])
    port = start(mailsys, "listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE) == {}
        assert smtp.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE) == {}
    time.sleep(0.3)
    assert at_connect.commands() == b"CQ"  # the session accepted: nothing more but the quit
    assert at_mail.commands() == b"CHMMQ"  # each message accepted at MAIL: its other events skipped
    assert len(queued(mailsys)) == 2


def test_connect_reject_answers_every_command(make_mailsys, milters):
    mt = milters(on={m.SMFIC_CONNECT: pkt(m.SMFIR_REJECT)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, "listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        assert smtp.ehlo("client.example") == (550, b"5.7.1 Command rejected")
        assert smtp.helo("client.example") == (550, b"5.7.1 Command rejected")


def test_milters_in_order_the_second_sees_the_first_ones_changes(make_mailsys, milters):
    first = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_ADDHEADER, z("X-First", "1")) + pkt(m.SMFIR_CONTINUE)})
    second = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_ADDHEADER, z("X-Second", "2")) + pkt(m.SMFIR_ACCEPT)})
    mailsys = system(make_mailsys, [first.spec, second.spec])
    port = start(mailsys, "listen")
    assert send(port)["data"][0] == 250
    assert z("X-First", "1") in [p for c, p in second.events if c == m.SMFIC_HEADER]
    [(_, message)] = queued(mailsys)
    assert message.endswith(b"Subject: hello\nX-First: 1\nX-Second: 2\n\nHello Alice.\n")


def test_listener_milters_override_per_listener(make_mailsys, milters):
    mt = milters(on={m.SMFIC_MAIL: pkt(m.SMFIR_REJECT)})
    mailsys = system(make_mailsys, [mt.spec], 'listener_milters = { smtp = "" }\n')
    port = start(mailsys, "listen")  # the smtp listener: no milter
    assert send(port)["data"][0] == 250
    assert mt.connections == 0


# -- modifications, once, before the 250 ------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_every_modification_lands_in_the_queue_entry(make_mailsys, milters, mode):
    eom = (
        pkt(m.SMFIR_PROGRESS)
        + pkt(m.SMFIR_ADDHEADER, z("X-Added", "at the end"))
        + pkt(m.SMFIR_INSHEADER, struct.pack(">I", 0) + z("X-Top", "first"))
        + pkt(m.SMFIR_CHGHEADER, struct.pack(">I", 1) + z("Subject", "[tagged] hello"))
        + pkt(m.SMFIR_CHGHEADER, struct.pack(">I", 1) + z("To", ""))
        + pkt(m.SMFIR_ADDRCPT, z("<bob@example.test>"))
        + pkt(m.SMFIR_ADDRCPT_PAR, z("<carol@example.test>", "NOTIFY=NEVER"))
        + pkt(m.SMFIR_DELRCPT, z("<alice@example.test>"))
        + pkt(m.SMFIR_CHGFROM, z("<bounces@remote.example>"))
        + pkt(m.SMFIR_REPLBODY, b"Replaced\r\n")
        + pkt(m.SMFIR_REPLBODY, b"body.\r\n")
        + pkt(m.SMFIR_CONTINUE)
    )
    mt = milters(on={m.SMFIC_BODYEOB: eom})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    code, text = send(port)["data"]
    assert code == 250
    [(env, message)] = queued(mailsys)
    assert env["id"] == text.split()[-1].decode()
    assert env["sender"] == "bounces@remote.example"
    assert env["recipients"] == ["bob@example.test", "carol@example.test"]
    assert message.startswith(b"X-Top: first\nReceived: from client.example")
    assert message.endswith(
        b"From: Carol <carol@remote.example>\nSubject: [tagged] hello\nX-Added: at the end\n\nReplaced\nbody.\n"
    )
    assert b"\nTo:" not in message
    # the ESMTP parameters of ADDRCPT_PAR are logged and left out, as Postfix does with those it does not support
    assert "addrcpt <carol@example.test>: ESMTP parameters NOTIFY=NEVER ignored" in stop_and_log(mailsys)


def test_a_big_message_is_streamed_to_the_milter_and_its_new_body_into_the_entry(make_mailsys, milters):
    """A 3 MB message reaches the milter whole (CRLF), its header changed in the entry;
    a REPLBODY whose CRLF is split between two packets is one line end in the entry."""
    line = b"0123456789 abcdefghij klmnopqrst uvwxyz ABCDEFGHIJ KLMNOPQRST UVWXYZ !\r\n"
    body = line * (3_000_000 // len(line))
    message = b"From: Carol <carol@remote.example>\r\nSubject: big\r\n\r\n" + body
    eom = pkt(m.SMFIR_ADDHEADER, z("X-Scanned", "yes")) + pkt(m.SMFIR_CONTINUE)
    mt = milters(on={m.SMFIC_BODYEOB: eom}, keep_body=False)
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, "inetd")
    assert send(port, message=message)["data"][0] == 250
    assert mt.body_hash.digest() == hashlib.sha256(body).digest()  # every chunk, in order
    [(_env, queued_text)] = queued(mailsys)
    assert queued_text.endswith(b"Subject: big\nX-Scanned: yes\n\n" + body.replace(b"\r\n", b"\n"))

    split = pkt(m.SMFIR_REPLBODY, b"first line\r") + pkt(m.SMFIR_REPLBODY, b"\nsecond line\r\n")
    mt.on[m.SMFIC_BODYEOB] = split + pkt(m.SMFIR_CONTINUE)
    assert send(port, message=message)["data"][0] == 250
    newest = max((mailsys.root / "queue" / "new").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.read_bytes().endswith(b"Subject: big\n\nfirst line\nsecond line\n")


def test_a_big_message_through_a_milter_is_not_held_in_memory(make_mailsys, milters, tmp_path):
    """The non-SMTP path (pymta.milters.filter_local) with an 8 MB message: the
    text waits in an unlinked file in the queue's tmp/ and is streamed to the
    milter and into the entry, so the stage allocates far less than the message."""
    import tracemalloc

    from pymta.lib import config
    from pymta.milters import filter_local
    from pymta.queue import Queue

    mt = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_ADDHEADER, z("X-Scanned", "yes")) + pkt(m.SMFIR_CONTINUE)})
    mt.keep_body = False
    mailsys = make_mailsys(f'[milter]\nnon_smtpd_milters = ["{mt.spec}"]\nsmtpd_milters = []\n')
    cfg = config.load(mailsys.config, write_cache=False)
    queue = Queue(mailsys.root / "queue")
    body = b"A line of a big local message, the same again and again.\n" * (8_000_000 // 58)
    message = b"To: bob@example.test\nSubject: big\n\n" + body
    tracemalloc.start()
    try:
        qid = filter_local(
            cfg,
            queue.writer("root@example.test", ["bob@example.test"]),
            "root@example.test",
            ["bob@example.test"],
            message,
        )
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000, f"{peak} bytes allocated for an {len(message)}-byte message"
    [(env, queued_text)] = queued(mailsys)
    assert env["id"] == qid
    assert queued_text == b"To: bob@example.test\nSubject: big\nX-Scanned: yes\n\n" + body
    assert mt.body_hash.digest() == hashlib.sha256(body.replace(b"\n", b"\r\n")).digest()


# -- quarantine -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_quarantine_holds_the_entry_shown_in_mailq_and_releasable(make_mailsys, milters, mode):
    mt = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_QUARANTINE, z("looks like spam")) + pkt(m.SMFIR_CONTINUE)})
    mailsys = system(make_mailsys, [mt.spec])
    port = start(mailsys, mode)
    code, text = send(port)["data"]
    assert code == 250
    qid = text.split()[-1].decode()
    assert queued(mailsys) == []
    [(env, _)] = queued(mailsys, "hold")
    assert env["meta"]["hold_reason"] == "milter: looks like spam"
    listing = mailsys.run("pymta.sendmail", "-bp").stdout.decode()
    assert f"{qid}!" in listing and "(held: milter: looks like spam)" in listing
    listing = mailsys.run("pymta.cli", "queue", "list").stdout.decode()
    assert "(held: milter: looks like spam)" in listing
    done = mailsys.run("pymta.cli", "queue", "release", qid)
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e, _ in queued(mailsys)] == [qid]
    log = stop_and_log(mailsys)
    assert f"{qid}: milter-hold: END-OF-MESSAGE from unknown[127.0.0.1]: milter triggers HOLD action" in log
    assert "(held)" in log


# -- a milter down, slow or broken: the default action ----------------------------------------

DEFAULT_REPLIES = {
    "tempfail": (451, b"4.7.1 Service unavailable - try again later"),
    "reject": (550, b"5.7.1 Command rejected"),
}


@pytest.mark.parametrize("action", ["tempfail", "accept", "reject"])
@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_milter_down_gives_the_default_action(make_mailsys, action, mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nobody listens there
    mailsys = system(make_mailsys, [f"inet:127.0.0.1:{dead}"], f'default_action = "{action}"\n')
    port = start(mailsys, mode)
    r = send(port)
    if action == "accept":
        assert r["data"][0] == 250 and len(queued(mailsys)) == 1
    else:
        assert r["mail"] == DEFAULT_REPLIES[action]
        assert queued(mailsys) == []
    log = stop_and_log(mailsys)
    assert f"milter inet:127.0.0.1:{dead}: CONNECT from unknown[127.0.0.1]: connect: " in log
    assert f"milter_default_action={action}" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("action", ["tempfail", "accept", "reject"])
def test_milter_timeout_gives_the_default_action(make_mailsys, milters, action):
    mt = milters(on={m.SMFIC_RCPT: "hang"})
    mailsys = system(make_mailsys, [mt.spec], f'default_action = "{action}"\ncommand_timeout = 1.0\n')
    port = start(mailsys, "listen")
    started = time.monotonic()
    r = send(port)
    assert time.monotonic() - started < 10
    if action == "accept":
        assert r["rcpt"] == [(250, b"2.1.5 Ok")] and r["data"][0] == 250
        [(env, _)] = queued(mailsys)
    else:
        assert r["rcpt"] == [DEFAULT_REPLIES[action]]
        assert queued(mailsys) == []
    log = stop_and_log(mailsys)
    qid_line = [ln for ln in log.splitlines() if f"milter {mt.spec}: RCPT" in ln]
    assert len(qid_line) == 1 and "timeout; milter_default_action=" + action in qid_line[0]
    if action == "accept":
        assert f": {env['id']}: milter " in qid_line[0]  # the queue ID chosen at MAIL


@pytest.mark.parametrize("progress", [True, False])
def test_progress_restarts_the_content_timeout(make_mailsys, milters, progress):
    # 4 x 0.8 s at the end of the message: longer than the 2 s content timeout, each wait shorter
    steps: list = []
    for _ in range(4):
        steps += [0.8, pkt(m.SMFIR_PROGRESS)] if progress else [0.8]
    mt = milters(on={m.SMFIC_BODYEOB: [*steps, pkt(m.SMFIR_ADDHEADER, z("X-Slow", "1")) + pkt(m.SMFIR_CONTINUE)]})
    mailsys = system(make_mailsys, [mt.spec], "content_timeout = 2.0\n")
    port = start(mailsys, "listen")
    if progress:
        assert send(port)["data"][0] == 250
        [(_, message)] = queued(mailsys)
        assert b"\nX-Slow: 1\n" in message
    else:
        assert send(port)["data"] == DEFAULT_REPLIES["tempfail"]
        assert queued(mailsys) == []
        assert "END-OF-MESSAGE from unknown[127.0.0.1]: timeout; milter_default_action=tempfail" in stop_and_log(
            mailsys
        )


BAD_REPLIES = {
    "truncated packet": (m.SMFIC_MAIL, struct.pack(">I", 10) + b"r12"),
    "unknown command": (m.SMFIC_MAIL, pkt(b"Z")),
    "close mid-message": (m.SMFIC_BODY, "close"),
    "1 GB length": (m.SMFIC_MAIL, struct.pack(">I", 1 << 30) + b"r"),
}


@pytest.mark.parametrize("bad", sorted(BAD_REPLIES))
@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_bad_milter_replies_give_the_default_action(make_mailsys, milters, bad, mode):
    event, answer = BAD_REPLIES[bad]
    mt = milters(on={event: answer})
    mailsys = system(make_mailsys, [mt.spec], "command_timeout = 1.0\n")
    port = start(mailsys, mode)
    started = time.monotonic()
    r = send(port)
    assert time.monotonic() - started < 10
    if event == m.SMFIC_MAIL:
        assert r["mail"] == DEFAULT_REPLIES["tempfail"]
    else:
        assert r["data"] == DEFAULT_REPLIES["tempfail"]
    assert queued(mailsys) == []
    log = stop_and_log(mailsys)
    lines = [ln for ln in log.splitlines() if f"milter {mt.spec}:" in ln]
    assert len(lines) == 1 and "milter_default_action=tempfail" in lines[0], log
    assert "Traceback" not in log


# -- mail that does not come over SMTP: milter.non_smtpd_milters -------------------------------


def sendmail(mailsys, *args: str, input: bytes, as_nobody: bool = False):
    import subprocess
    import sys

    from conftest import env_with_repo

    argv = [sys.executable, "-m", "pymta.sendmail", "-C", str(mailsys.config), *args]
    if as_nobody:
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return subprocess.run(argv, input=input, capture_output=True, timeout=60, env=env_with_repo(), cwd="/")


LOCAL_MAIL = b"To: bob@example.test\nSubject: from cron\n\nout\n"


def test_sendmail_straight_into_the_queue_goes_through_non_smtpd_milters(make_mailsys, milters):
    tag = pkt(m.SMFIR_ADDHEADER, z("X-Local-Milter", "yes")) + pkt(m.SMFIR_CONTINUE)
    mt = milters(on={m.SMFIC_BODYEOB: lambda p: pkt(m.SMFIR_REJECT) if mt.connections > 1 else tag})
    mailsys = make_mailsys(f'[milter]\nnon_smtpd_milters = ["{mt.spec}"]\nsmtpd_milters = []\n')
    done = sendmail(mailsys, "-f", "root@example.test", "bob@example.test", input=LOCAL_MAIL)
    assert done.returncode == 0, done.stderr
    [(env, message)] = queued(mailsys)
    assert env["recipients"] == ["bob@example.test"]
    assert message.endswith(b"\nX-Local-Milter: yes\n\nout\n")  # after the fields sendmail completed
    heads = [p.split(b"\0")[0] for c, p in mt.events if c == m.SMFIC_HEADER]
    assert heads == [b"Received", b"To", b"Subject", b"From", b"Date", b"Message-ID"]
    assert mt.commands() == b"CHMRT" + b"L" * len(heads) + b"NBEQ"
    ev = dict(mt.events)
    assert ev[m.SMFIC_CONNECT] == b"localhost\0" + m.FAMILY_INET + b"\x00\x00" + b"127.0.0.1\0"
    assert ev[m.SMFIC_HELO] == b"localhost\0"
    assert mt.macros(m.SMFIC_MAIL)["i"] == env["id"]
    # the second message is refused: sendmail says so (EX_UNAVAILABLE) and queues nothing
    done = sendmail(mailsys, "-f", "root@example.test", "bob@example.test", input=LOCAL_MAIL)
    assert done.returncode == 69
    assert b"refused by a milter: 550 5.7.1 Command rejected" in done.stderr
    assert len(queued(mailsys)) == 1


def test_maildrop_pickup_goes_through_non_smtpd_milters(public_sys, milters):
    mt = milters(on={m.SMFIC_BODYEOB: pkt(m.SMFIR_ADDHEADER, z("X-Local-Milter", "yes")) + pkt(m.SMFIR_CONTINUE)})
    system = public_sys  # a tree nobody may reach but not write, with a maildrop
    system.write_config(f'[milter]\nnon_smtpd_milters = ["{mt.spec}"]\n')
    system.config.chmod(0o644)
    done = sendmail(system, "bob@example.test", input=LOCAL_MAIL, as_nobody=True)
    assert done.returncode == 0, done.stderr
    assert mt.connections == 0  # nobody's sendmail only drops the file
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    [bob] = system.messages("bob")
    assert bob.read_bytes().endswith(b"\nX-Local-Milter: yes\n\nout\n")
    assert z("<nobody@example.test>") in [p for c, p in mt.events if c == m.SMFIC_MAIL]
    assert dict(mt.events)[m.SMFIC_HELO] == b"localhost\0"
