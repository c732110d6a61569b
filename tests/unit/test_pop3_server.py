"""Transcript tests of the sans-I/O POP3 machine (pypop.pop3_server) and the maildrop.

A fake backend checks passwords against a dict and opens real Maildrops in
a temporary folder; a tiny driver feeds bytes (whole, or one at a time),
runs Jobs synchronously, drains Streams and collects the replies.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymda import maildir as md
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Stream
from pypop import pop3_server
from pypop.maildrop import Maildrop, MaildropInUse, uidl_for
from pypop.pop3_server import LoginResult, POP3Server, to_wire

USER, PASSWORD = "alice@example.test", "secret pass"


class FakeBackend:
    hostname = "pop.example.test"

    def __init__(self, maildir, plaintext=True, apop=False):
        self.maildir = maildir
        self.plaintext = plaintext
        self.apop_enabled = apop
        self.logins = []

    def plaintext_ok(self, info):
        return self.plaintext or info.tls

    def login(self, info, user, password, method):
        self.logins.append((user, password, method))
        if user != USER or password != PASSWORD.encode():
            return LoginResult("auth")
        try:
            return LoginResult("ok", USER, Maildrop.open(self.maildir))
        except MaildropInUse:
            return LoginResult("in-use")

    def apop_login(self, info, user, timestamp, digest):
        ok = user == USER and digest == hashlib.md5((timestamp + PASSWORD).encode()).hexdigest()
        return LoginResult("ok", USER, Maildrop.open(self.maildir)) if ok else LoginResult("auth")


class Driver:
    def __init__(self, backend, tls_available=False, tls=False, bytewise=False):
        self.server = POP3Server(backend)
        self.info = ConnectionInfo(peer_ip="192.0.2.1", tls_available=tls_available, tls=tls)
        self.closed = False
        self.bytewise = bytewise
        self.out = bytearray()
        self.tls_started = 0
        self.run(self.server.connection_made(self.info))

    def run(self, actions):
        for action in actions:
            if isinstance(action, (bytes, bytearray)):
                self.out += action
            elif isinstance(action, Job):
                self.run(self.server.job_done(action.run()))
            elif isinstance(action, Stream):
                for chunk in action.chunks:
                    assert isinstance(chunk, bytes)
                    self.out += chunk
            elif action is STARTTLS:
                self.tls_started += 1
                self.info.tls, self.info.tls_available = True, False
                self.run(self.server.tls_started(self.info))
            elif action is CLOSE:
                self.closed = True
            else:
                raise AssertionError(action)

    def send(self, data: bytes) -> bytes:
        self.out.clear()
        if self.bytewise:
            for i in range(len(data)):
                if not self.closed:
                    self.run(self.server.data_received(data[i : i + 1]))
        else:
            self.run(self.server.data_received(data))
        return bytes(self.out)

    def greeting(self) -> bytes:
        return bytes(self.out)


@pytest.fixture
def maildir(tmp_path):
    path = tmp_path / "alice"
    md.ensure_maildir(path)
    return path


def deliver(path, text: bytes) -> str:
    return md.deliver(path, text, fsync=False).name


def login(drv):
    assert drv.send(f"USER {USER}\r\n".encode()) == b"+OK\r\n"
    reply = drv.send(f"PASS {PASSWORD}\r\n".encode())
    assert reply.startswith(b"+OK Logged in"), reply
    return reply


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request):
    return request.param


def test_full_transcript(maildir, bytewise):
    a = deliver(maildir, b"Subject: one\n\nline 1\n.dot line\nline 3\n")
    deliver(maildir, b"Subject: two\n\nbody\n")
    drv = Driver(FakeBackend(maildir), bytewise=bytewise)
    assert drv.greeting() == b"+OK pop.example.test POP3 server ready\r\n"
    assert drv.send(b"STAT\r\n") == b"-ERR Command not valid in this state\r\n"
    assert drv.send(b"PASS x\r\n") == b"-ERR No username given\r\n"
    assert login(drv) == b"+OK Logged in, 2 messages (65 octets)\r\n"
    assert drv.send(b"STAT\r\n") == b"+OK 2 65\r\n"
    assert drv.send(b"LIST\r\n") == b"+OK 2 messages (65 octets)\r\n1 43\r\n2 22\r\n.\r\n"
    assert drv.send(b"LIST 2\r\n") == b"+OK 2 22\r\n"
    assert drv.send(b"UIDL 1\r\n") == b"+OK 1 " + a.encode() + b"\r\n"
    assert drv.send(b"RETR 1\r\n") == (b"+OK 43 octets\r\nSubject: one\r\n\r\nline 1\r\n..dot line\r\nline 3\r\n.\r\n")
    assert drv.send(b"TOP 1 1\r\n") == b"+OK\r\nSubject: one\r\n\r\nline 1\r\n.\r\n"
    assert drv.send(b"TOP 1 0\r\n") == b"+OK\r\nSubject: one\r\n\r\n.\r\n"
    assert drv.send(b"TOP 1 99\r\n") == b"+OK\r\nSubject: one\r\n\r\nline 1\r\n..dot line\r\nline 3\r\n.\r\n"
    assert drv.send(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert drv.send(b"DELE 1\r\n") == b"-ERR Message 1 already deleted\r\n"
    assert drv.send(b"RETR 1\r\n") == b"-ERR Message 1 already deleted\r\n"
    assert drv.send(b"LIST\r\n") == b"+OK 1 messages (22 octets)\r\n2 22\r\n.\r\n"
    assert drv.send(b"STAT\r\n") == b"+OK 1 22\r\n"
    assert drv.send(b"RSET\r\n") == b"+OK Maildrop has 2 messages (65 octets)\r\n"
    assert drv.send(b"NOOP\r\n") == b"+OK\r\n"
    assert drv.send(b"DELE 2\r\n") == b"+OK Message 2 deleted\r\n"
    assert len(os.listdir(maildir / "new")) == 2  # nothing removed before QUIT
    assert drv.send(b"QUIT\r\n") == b"+OK Logging out, 1 message deleted\r\n"
    assert drv.closed
    assert os.listdir(maildir / "new") == [a]


def test_error_paths_exact_replies(maildir):
    deliver(maildir, b"Subject: one\n\nx\n")
    drv = Driver(FakeBackend(maildir))
    assert drv.send(b"FOO\r\n") == b"-ERR Unknown command\r\n"
    assert drv.send(b"\xff\xfe\r\n") == b"-ERR Invalid characters in command\r\n"
    assert drv.send(b"USER a\x00b\r\n") == b"-ERR Invalid characters in command\r\n"
    assert drv.send(b"USER\r\n") == b"-ERR Syntax: USER name\r\n"
    assert drv.send(b"APOP alice 0123\r\n") == b"-ERR Unknown command\r\n"  # APOP not enabled
    assert drv.send(b"USER x\r\nPASS wrong\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed\r\n"
    assert drv.send(b"X" * 300 + b"\r\n") == b"-ERR Line too long\r\n"
    assert drv.send(b"X" * 254 + b"\r\n") == b"-ERR Line too long\r\n"  # 256 with CRLF
    assert drv.send(b"NOOP\r\n") == b"-ERR Command not valid in this state\r\n"
    login(drv)
    assert drv.send(b"USER x\r\n") == b"-ERR Command not valid in this state\r\n"
    assert drv.send(b"STLS\r\n") == b"-ERR Command not valid in this state\r\n"
    assert drv.send(b"RETR\r\n") == b"-ERR Syntax: RETR msg\r\n"
    assert drv.send(b"RETR 1 2\r\n") == b"-ERR Syntax: RETR msg\r\n"
    assert drv.send(b"RETR x\r\n") == b"-ERR Invalid message number\r\n"
    assert drv.send(b"RETR -1\r\n") == b"-ERR Invalid message number\r\n"
    assert drv.send(b"RETR 0\r\n") == b"-ERR No such message\r\n"
    assert drv.send(b"RETR 2\r\n") == b"-ERR No such message\r\n"
    assert drv.send(b"LIST 99999999999\r\n") == b"-ERR Invalid message number\r\n"
    assert drv.send(b"TOP 1\r\n") == b"-ERR Syntax: TOP msg lines\r\n"
    assert drv.send(b"TOP 1 x\r\n") == b"-ERR Invalid number of lines\r\n"
    assert drv.send(b"DELE 5\r\n") == b"-ERR No such message\r\n"
    assert drv.send(b"STAT 1\r\n") == b"-ERR Syntax: STAT\r\n"
    assert drv.send(b"retr 1\r\n").startswith(b"+OK 19 octets\r\n")  # verbs are case-insensitive
    assert drv.send(b"QUIT\r\n") == b"+OK Logging out\r\n"


def test_too_long_line_is_discarded_without_buffering(maildir):
    drv = Driver(FakeBackend(maildir))
    replies = b""
    for _ in range(100):
        replies += drv.send(b"A" * 1000)
        assert len(drv.server._buf) <= pop3_server.MAX_COMMAND_LINE
    assert replies == b"-ERR Line too long\r\n"  # answered once
    assert drv.send(b"still the long line\r\nCAPA\r\n").startswith(b"+OK Capability")


def test_too_many_bad_commands_close(maildir):
    drv = Driver(FakeBackend(maildir))
    out = drv.send(b"BAD\r\n" * 25)
    assert out.count(b"-ERR Unknown command\r\n") == pop3_server.MAX_ERRORS
    assert out.endswith(b"-ERR Too many bad commands, closing connection\r\n")
    assert drv.closed


def test_three_failed_logins_close(maildir):
    backend = FakeBackend(maildir)
    drv = Driver(backend)
    out = drv.send(b"USER a\r\nPASS b\r\nUSER a\r\nPASS b\r\nUSER a\r\nPASS b\r\nUSER a\r\n")
    assert (
        out
        == (b"+OK\r\n" + pop3_server.AUTH_FAILED) * 3 + b"-ERR Too many authentication failures, closing connection\r\n"
    )
    assert drv.closed and len(backend.logins) == 3


def test_pipelining_in_order_across_login_job(maildir, bytewise):
    deliver(maildir, b"a\n")
    deliver(maildir, b"bb\n")
    drv = Driver(FakeBackend(maildir), bytewise=bytewise)
    out = drv.send(f"CAPA\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nLIST\r\nQUIT\r\n".encode())
    parts = out.split(b"+OK Logged in, 2 messages (7 octets)\r\n")
    assert len(parts) == 2 and parts[0].endswith(b"IMPLEMENTATION pymail\r\n.\r\n+OK\r\n")
    assert parts[1] == (
        b"+OK 2 7\r\n+OK 4 octets\r\nbb\r\n.\r\n+OK Message 1 deleted\r\n"
        b"+OK 1 messages (4 octets)\r\n2 4\r\n.\r\n+OK Logging out, 1 message deleted\r\n"
    )
    assert drv.closed


def test_many_pipelined_retrs_are_batched(maildir):
    """Small messages are answered at once (one read, no Stream), large ones
    are streamed; either way a pipelined batch stops at BATCH_STREAMS streams
    or BATCH_OUTPUT octets and lets the driver drain (a Job) before going on."""
    for i in range(100):
        deliver(maildir, b"message %d\n" % i)
    drv = Driver(FakeBackend(maildir))
    login(drv)
    actions = drv.server.data_received(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(100)))
    assert not [a for a in actions if isinstance(a, Stream)] and not isinstance(actions[-1], Job)
    drv.out.clear()
    drv.run(actions)
    assert drv.out.count(b"+OK") == 100
    assert drv.out.endswith(b"+OK 12 octets\r\nmessage 99\r\n.\r\n")


def test_pipelined_retrs_of_large_messages_are_batched(maildir):
    big = b"x" * (pop3_server.SMALL + 10) + b"\n"
    for _ in range(40):
        deliver(maildir, big)
    drv = Driver(FakeBackend(maildir))
    login(drv)
    actions = drv.server.data_received(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(40)))
    streams = [a for a in actions if isinstance(a, Stream)]
    assert len(streams) == pop3_server.BATCH_STREAMS and isinstance(actions[-1], Job)
    drv.out.clear()
    drv.run(actions)
    assert drv.out.count(b"\r\n.\r\n") == 40


def test_pipelined_small_retrs_stop_at_the_output_bound(maildir):
    text = (b"y" * 99 + b"\n") * 600  # 60,000 octets: small, one read each
    for _ in range(20):
        deliver(maildir, text)
    drv = Driver(FakeBackend(maildir))
    login(drv)
    actions = drv.server.data_received(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(20)))
    queued = sum(len(a) for a in actions if isinstance(a, (bytes, bytearray)))
    assert isinstance(actions[-1], Job) and queued <= pop3_server.BATCH_OUTPUT + len(text) * 2
    drv.out.clear()
    drv.run(actions)
    assert drv.out.count(b"+OK 60600 octets\r\n") == 20


def test_eof_and_timeout_delete_nothing(maildir):
    deliver(maildir, b"x\n")
    drv = Driver(FakeBackend(maildir))
    login(drv)
    drv.send(b"DELE 1\r\n")
    drv.run(drv.server.data_received(b""))
    assert drv.closed and len(os.listdir(maildir / "new")) == 1
    drv = Driver(FakeBackend(maildir))  # the lock was released
    login(drv)
    drv.send(b"DELE 1\r\n")
    drv.out.clear()
    drv.run(drv.server.timed_out())
    assert bytes(drv.out) == b"-ERR Disconnected for inactivity\r\n" and drv.closed
    assert len(os.listdir(maildir / "new")) == 1
    assert drv.server.timeout == 600.0


def test_second_session_in_use(maildir):
    first = Driver(FakeBackend(maildir))
    login(first)
    second = Driver(FakeBackend(maildir))
    second.send(f"USER {USER}\r\n".encode())
    assert (
        second.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"
    )
    first.send(b"QUIT\r\n")
    login(second)


def test_plaintext_refused_then_stls(maildir, bytewise):
    drv = Driver(FakeBackend(maildir, plaintext=False), tls_available=True, bytewise=bytewise)
    capa = drv.send(b"CAPA\r\n")
    assert b"STLS\r\n" in capa and b"USER\r\n" not in capa and b"SASL" not in capa
    assert drv.send(b"USER alice\r\n") == pop3_server.PLAINTEXT_REFUSED
    assert drv.send(b"AUTH PLAIN\r\n") == pop3_server.PLAINTEXT_REFUSED
    assert drv.send(b"PASS x\r\n") == pop3_server.PLAINTEXT_REFUSED
    # CVE-2011-0411: commands pipelined behind STLS are never executed
    drv.bytewise = False  # one segment, as a client pipelining behind STLS sends it
    out = drv.send(b"STLS\r\nUSER evil\r\n")
    assert out == b"+OK Begin TLS negotiation\r\n" and drv.tls_started == 1
    capa = drv.send(b"CAPA\r\n")
    assert b"STLS" not in capa and b"USER\r\n" in capa and b"SASL PLAIN\r\n" in capa
    assert drv.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR No username given\r\n"
    login(drv)


def test_stls_errors(maildir):
    drv = Driver(FakeBackend(maildir))
    assert drv.send(b"STLS\r\n") == b"-ERR TLS not available\r\n"
    assert b"STLS" not in drv.send(b"CAPA\r\n")
    drv = Driver(FakeBackend(maildir), tls=True)
    assert drv.send(b"STLS\r\n") == b"-ERR Command not permitted when TLS active\r\n"
    assert drv.send(b"STLS x\r\n") == b"-ERR Syntax: STLS\r\n"


def test_auth_plain(maildir, bytewise):
    good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    drv = Driver(FakeBackend(maildir), bytewise=bytewise)
    assert drv.send(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\n.\r\n"
    assert drv.send(b"AUTH CRAM-MD5\r\n") == b"-ERR Unsupported authentication mechanism\r\n"
    assert drv.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert drv.send(b"*\r\n") == b"-ERR Authentication cancelled\r\n"
    assert drv.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert drv.send(b"!!!\r\n") == b"-ERR Invalid base64 data\r\n"
    assert drv.send(b"AUTH PLAIN =\r\n") == b"-ERR Invalid AUTH PLAIN response\r\n"
    other = base64.b64encode(f"bob@example.test\0{USER}\0{PASSWORD}".encode())
    assert drv.send(b"AUTH PLAIN " + other + b"\r\n") == pop3_server.AUTH_FAILED
    assert drv.send(b"AUTH PLAIN\r\n" + good + b"\r\n").startswith(b"+ \r\n+OK Logged in")
    assert drv.server.user == USER


def test_auth_plain_initial_response(maildir):
    good = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode())
    drv = Driver(FakeBackend(maildir))
    assert drv.send(b"AUTH PLAIN " + good + b"\r\n").startswith(b"+OK Logged in, 0 messages")


def test_apop(maildir):
    drv = Driver(FakeBackend(maildir, apop=True))
    greeting = drv.greeting()
    assert greeting.startswith(b"+OK pop.example.test POP3 server ready <") and greeting.endswith(
        b"@pop.example.test>\r\n"
    )
    stamp = greeting.split(b" ")[-1].strip().decode()
    assert drv.send(b"APOP alice\r\n") == b"-ERR Syntax: APOP name digest\r\n"
    assert drv.send(f"APOP {USER} {'0' * 32}\r\n".encode()) == pop3_server.AUTH_FAILED
    digest = hashlib.md5((stamp + PASSWORD).encode()).hexdigest()
    assert drv.send(f"APOP {USER} {digest}\r\n".encode()).startswith(b"+OK Logged in")


def test_retr_streams_large_message_in_chunks(maildir):
    line = b"x" * 999 + b"\n"
    body = b"Subject: big\n\n" + line * 3000 + b".\n" + b"no newline at end"
    deliver(maildir, body)
    drv = Driver(FakeBackend(maildir))
    login(drv)
    actions = drv.server.data_received(b"RETR 1\r\n")
    [stream] = actions
    chunks = list(stream.chunks)
    assert len(chunks) > 10 and max(len(c) for c in chunks) <= 2 * pop3_server.CHUNK + 64
    wire = b"".join(chunks)
    expected_body = body.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    assert wire == b"+OK %d octets\r\n" % md.crlf_size(body) + expected_body + b"\r\n.\r\n"


@pytest.mark.parametrize("stored", [b"a\r\nb\r\n.c\r\n", b"a\nb\n.c\n", b"a\r\nb\n.c\r\n"])
def test_crlf_and_lf_files_give_the_same_wire_text(maildir, stored):
    (maildir / "cur" / "1.foreign:2,S").write_bytes(stored)  # no S=/W= in the name
    drv = Driver(FakeBackend(maildir))
    login(drv)
    assert drv.send(b"LIST 1\r\n") == b"+OK 1 10\r\n"
    assert drv.send(b"RETR 1\r\n") == b"+OK 10 octets\r\na\r\nb\r\n..c\r\n.\r\n"
    assert drv.send(b"UIDL 1\r\n") == b"+OK 1 1.foreign\r\n"


def test_cr_split_across_chunks(monkeypatch):
    monkeypatch.setattr(pop3_server, "CHUNK", 4)
    import io

    data = b"abc\r\n.de\r\nf\rg\n"
    out = b"".join(pop3_server._retr(io.BytesIO(data), b""))
    assert out == b"abc\r\n..de\r\nf\rg\r\n.\r\n"
    out = b"".join(pop3_server._top(io.BytesIO(b"H: 1\r\n\r\nabc\r\n.de\r\n"), 1))
    assert out == b"+OK\r\nH: 1\r\n\r\nabc\r\n.\r\n"


@given(st.binary(max_size=3000), st.integers(1, 50))
def test_retr_matches_reference(data, chunk):
    import io

    pop3_server.CHUNK, saved = chunk, pop3_server.CHUNK
    try:
        out = b"".join(pop3_server._retr(io.BytesIO(data), b""))
    finally:
        pop3_server.CHUNK = saved
    ref = to_wire(data, True)
    ref += b".\r\n" if (not ref or ref.endswith(b"\n")) else b"\r\n.\r\n"
    assert out == ref
    # the size LIST advertises (crlf_size, the ,W= field) is the text before the
    # terminator, without dot-stuffing
    wire = to_wire(data, True)
    body = out[:-3] if (not wire or wire.endswith(b"\n")) else out[:-5]
    unstuffed = body.replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    assert len(unstuffed) == md.crlf_size(data)


def test_messages_moved_by_imap_are_still_found(maildir):
    a = deliver(maildir, b"one\n")
    deliver(maildir, b"two\n")
    drv = Driver(FakeBackend(maildir))
    login(drv)
    uidl = drv.send(b"UIDL\r\n")
    os.rename(maildir / "new" / a, maildir / "cur" / (a + ":2,S"))  # an IMAP client read it
    deliver(maildir, b"three\n")  # arrives during the session: not shown
    assert drv.send(b"RETR 1\r\n") == b"+OK 5 octets\r\none\r\n.\r\n"
    assert drv.send(b"UIDL\r\n") == uidl
    assert drv.send(b"STAT\r\n") == b"+OK 2 10\r\n"
    drv.send(b"DELE 1\r\n")
    assert drv.send(b"QUIT\r\n") == b"+OK Logging out, 1 message deleted\r\n"
    assert os.listdir(maildir / "cur") == []
    drv = Driver(FakeBackend(maildir))
    assert login(drv) == b"+OK Logged in, 2 messages (12 octets)\r\n"


def test_message_removed_by_another_client(maildir):
    a = deliver(maildir, b"one\n")
    drv = Driver(FakeBackend(maildir))
    login(drv)
    os.unlink(maildir / "new" / a)
    assert drv.send(b"RETR 1\r\n") == b"-ERR Message 1 has been removed by another client\r\n"
    drv.send(b"DELE 1\r\n")
    assert drv.send(b"QUIT\r\n") == b"+OK Logging out, 1 message deleted\r\n"


def test_uidl_is_rfc1939_safe():
    assert uidl_for("1.M2P3.host,S=1,W=2") == "1.M2P3.host,S=1,W=2"
    long = "1700000000.M123456P1234567Q12R0a1b2c." + "h" * 20 + ",S=12345,W=12400"
    assert len(long) > 70 and uidl_for(long) == long.split(",")[0]
    weird = "x" * 100
    assert uidl_for(weird) == hashlib.md5(weird.encode()).hexdigest()


def test_maildrop_lock_is_per_open_file(maildir):
    first = Maildrop.open(maildir)
    with pytest.raises(MaildropInUse):
        Maildrop.open(maildir)
    first.close()
    Maildrop.open(maildir).close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(
                [
                    b"USER alice@example.test\r\n",
                    b"PASS secret pass\r\n",
                    b"LIST\r\n",
                    b"RETR 1\r\n",
                    b"TOP 1 2\r\n",
                    b"DELE 1\r\n",
                    b"RSET\r\n",
                    b"UIDL\r\n",
                    b"STLS\r\n",
                    b"AUTH PLAIN\r\n",
                    b"CAPA\r\n",
                    b"\r\n",
                    b"\n",
                    b"QUIT\r\n",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_fuzz_arbitrary_bytes_never_raise(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("fuzz") / "alice"
    md.ensure_maildir(path)
    md.deliver(path, b"Subject: s\n\n.x\ny\n", fsync=False)
    drv = Driver(FakeBackend(path), tls_available=True)
    for chunk in chunks:
        if drv.closed:
            break
        drv.send(chunk)
        assert len(drv.server._buf) < 70000
        out = bytes(drv.out)
        assert not out or out.endswith(b"\r\n")
    drv.server.connection_lost()
