"""Transcript tests of the sans-I/O ESMTP machine (pymta.smtp_server).

A fake backend records what the machine asks of it; a tiny driver feeds
bytes, runs Jobs synchronously and collects the replies.
"""

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job
from pymta.smtp_server import IN_JOB, Reply, SMTPServer, SMTPSettings, TempFailure

HOST = "mx.example.org"


class FakeSink:
    def __init__(self, n, fail_commit=None, fail_write=None):
        self.queue_id = f"Q{n}"
        self.data = bytearray()
        self.writes = 0
        self.committed = self.aborted = False
        self.fail_commit = fail_commit
        self.fail_write = fail_write

    def write(self, data):
        assert isinstance(data, bytes)
        if self.fail_write:
            raise self.fail_write
        self.writes += 1
        self.data += data

    def commit(self):
        if self.fail_commit:
            raise self.fail_commit
        self.committed = True
        return self.queue_id

    def abort(self):
        self.aborted = True


class FakeBackend:
    def __init__(self):
        self.sinks = []
        self.senders = []
        self.recipients = []
        self.auth_calls = []
        self.fail_commit = None
        self.fail_write = None
        self.fail_open = None
        self.fail_auth = None

    def check_sender(self, session, envelope, address):
        self.senders.append(address)
        if address.startswith("spammer@"):
            return Reply(554, "5.7.1", "Sender rejected")
        return None

    def check_recipient(self, session, envelope, address):
        self.recipients.append(address)
        if address.startswith("unknown@"):
            return Reply(550, "5.1.1", "User unknown")
        if address.startswith("grey@"):
            return Reply(450, "4.7.1", "Try again later")
        return None

    def authenticate(self, session, username, password):
        self.auth_calls.append((username, password))
        if self.fail_auth:
            raise self.fail_auth
        return (username, password) == ("alice@example.org", "s3cret")

    def open_message(self, session, envelope):
        if self.fail_open:
            raise self.fail_open
        sink = FakeSink(len(self.sinks) + 1, self.fail_commit, self.fail_write)
        sink.envelope = envelope
        sink.session = session
        self.sinks.append(sink)
        return sink

    @property
    def committed(self):
        return [s for s in self.sinks if s.committed]


class Driver:
    """Runs the machine the way the real drivers do, minus the sockets."""

    def __init__(self, info=None, backend=None, clock=None, **kw):
        self.backend = backend or FakeBackend()
        self.settings = SMTPSettings(HOST, **kw)
        self.m = SMTPServer(self.settings, self.backend, **({"clock": clock} if clock else {}))
        self.out = bytearray()
        self.actions = []
        self.closed = False
        self.tls_requested = False
        self._run(self.m.connection_made(info or ConnectionInfo(peer_ip="192.0.2.9")))
        self.out.clear()

    def _run(self, actions):
        for action in actions:
            self.actions.append(action)
            if isinstance(action, bytes):
                assert not self.closed, "bytes after CLOSE"
                self.out += action
            elif isinstance(action, Job):
                self._run(self.m.job_done(action.run()))
            elif action is STARTTLS:
                self.tls_requested = True
            elif action is CLOSE:
                self.closed = True
            else:
                raise AssertionError(f"unknown action {action!r}")

    def feed(self, data, step=None):
        """Feed ``data`` (whole, or ``step`` bytes at a time); return new reply lines."""
        start = len(self.out)
        step = step or len(data) or 1
        for i in range(0, max(len(data), 1), step):
            if self.closed or self.tls_requested:
                break
            self._run(self.m.data_received(data[i : i + step]))
        return lines(self.out[start:])

    def start_tls(self, **kw):
        assert self.tls_requested
        self.tls_requested = False
        self._run(self.m.tls_started(ConnectionInfo(peer_ip="192.0.2.9", tls=True, tls_available=True, **kw)))


def lines(data):
    text = bytes(data).decode()
    assert text == "" or text.endswith("\r\n")
    return text.split("\r\n")[:-1] if text else []


def codes(reply_lines):
    """Final reply codes only (multi-line replies count once)."""
    return [int(line[:3]) for line in reply_lines if line[3:4] != "-"]


def ready(**kw):
    d = Driver(**kw)
    assert d.feed(b"EHLO client.example\r\n")[-1].startswith("250 ")
    return d


def b64(data):
    return base64.b64encode(data).decode()


GOOD_PLAIN = b64(b"\0alice@example.org\0s3cret")
TRANSACTION = b"MAIL FROM:<bob@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"


# -- greeting, HELO/EHLO ---------------------------------------------------------------


def test_greeting():
    m = SMTPServer(SMTPSettings(HOST, software="pymail"), FakeBackend())
    assert m.connection_made(ConnectionInfo()) == [f"220 {HOST} ESMTP pymail\r\n".encode()]


def test_ehlo_lists_capabilities_from_one_table():
    d = Driver(max_message_size=1000)
    reply = d.feed(b"EHLO client.example\r\n")
    assert reply == [
        f"250-{HOST}",
        "250-PIPELINING",
        "250-SIZE 1000",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250 SMTPUTF8",
    ]


def test_aiosmtpd_216_smtputf8_never_without_8bitmime(monkeypatch):
    from pymta import smtp_server

    without = tuple(c for c in smtp_server._CAPABILITIES if c[0] != "8BITMIME")
    monkeypatch.setattr(smtp_server, "_CAPABILITIES", without)
    caps = Driver().feed(b"EHLO x\r\n")
    assert "250-PIPELINING" in caps and not any("SMTPUTF8" in c for c in caps)


def test_ehlo_offers_starttls_but_not_auth_before_tls():
    d = Driver(info=ConnectionInfo(tls_available=True))
    caps = [c[4:] for c in d.feed(b"EHLO x\r\n")]
    assert "STARTTLS" in caps and not any(c.startswith("AUTH") for c in caps)


def test_ehlo_offers_auth_after_tls_and_not_starttls():
    d = Driver(info=ConnectionInfo(tls=True, tls_available=True))
    caps = [c[4:] for c in d.feed(b"EHLO x\r\n")]
    assert "AUTH PLAIN LOGIN" in caps and "STARTTLS" not in caps


def test_ehlo_offers_auth_in_plaintext_when_allowed_and_not_after_auth():
    d = Driver(auth_plaintext_ok=True)
    assert "250 AUTH PLAIN LOGIN" in d.feed(b"EHLO x\r\n")
    cred = b64(b"\0alice@example.org\0s3cret")
    assert d.feed(f"AUTH PLAIN {cred}\r\n".encode()) == ["235 2.7.0 Authentication successful"]
    assert not any("AUTH" in c for c in d.feed(b"EHLO x\r\n"))


def test_helo_and_missing_arguments():
    d = Driver()
    assert d.feed(b"HELO\r\n") == ["501 5.5.4 Syntax: HELO hostname"]
    assert d.feed(b"EHLO\r\n") == ["501 5.5.4 Syntax: EHLO hostname"]
    assert d.feed(b"HELO client.example\r\n") == [f"250 {HOST}"]
    assert d.m.session.helo == "client.example" and not d.m.session.esmtp


def test_commands_are_case_insensitive():
    d = Driver()
    out = d.feed(b"ehlo x\r\nmail from:<a@example.net>\r\nrcpt to:<b@example.org>\r\nnoop\r\nrset\r\nquit\r\n")
    assert codes(out) == [250, 250, 250, 250, 250, 221]


# -- a whole transaction --------------------------------------------------------------


def test_transaction_streams_unstuffed_lf_text_and_queues():
    d = ready()
    out = d.feed(TRANSACTION + b"Subject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
    assert out == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as Q1",
        "221 2.0.0 Bye",
    ]
    (sink,) = d.backend.sinks
    assert bytes(sink.data) == b"Subject: hi\n\n.leading dot\n"
    assert sink.committed and not sink.aborted
    assert sink.envelope.mail_from == "bob@example.net"
    assert sink.envelope.rcpt_to == ["alice@example.org"]
    assert d.closed


def test_dot_line_right_after_354_is_an_empty_message():
    d = ready()
    assert d.feed(TRANSACTION + b".\r\n")[-1] == "250 2.0.0 Ok: queued as Q1"
    assert d.backend.sinks[0].data == b""


def test_envelope_is_reset_after_data():
    d = ready()
    d.feed(TRANSACTION + b"x\r\n.\r\n")
    assert d.feed(b"RCPT TO:<alice@example.org>\r\n") == ["503 5.5.1 Error: need MAIL command"]
    assert d.feed(TRANSACTION + b"y\r\n.\r\n")[-1] == "250 2.0.0 Ok: queued as Q2"


def test_null_sender_and_multiple_recipients():
    d = ready()
    out = d.feed(b"MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<a@example.org>\r\n")
    assert codes(out) == [250, 250, 250, 250]
    assert d.m.envelope.mail_from == "" and d.m.envelope.rcpt_to == ["a@example.org", "b@example.org"]


def test_small_lines_are_batched_before_sink_write():
    d = ready()
    d.feed(TRANSACTION + b"line\r\n" * 50000 + b".\r\n")
    sink = d.backend.sinks[0]
    assert sink.committed and len(sink.data) == 250000
    assert sink.writes < 10


def test_large_message_in_chunks_is_not_accumulated():
    d = ready()
    d.feed(TRANSACTION)
    body = (b"x" * 998 + b"\r\n") * 1000
    for _ in range(5):
        d.feed(body)
        assert len(d.m._buf) <= d.settings.max_text_line
    assert d.feed(b".\r\n") == ["250 2.0.0 Ok: queued as Q1"]
    assert len(d.backend.sinks[0].data) == 5 * 999 * 1000


# -- sequence errors ----------------------------------------------------------------------


def test_mail_before_helo():
    assert Driver().feed(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]


def test_nested_mail():
    d = ready()
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    assert d.feed(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1 Error: nested MAIL command"]


def test_rcpt_before_mail():
    assert ready().feed(b"RCPT TO:<a@example.org>\r\n") == ["503 5.5.1 Error: need MAIL command"]


def test_data_without_mail_or_rcpt():
    d = ready()
    assert d.feed(b"DATA\r\n") == ["503 5.5.1 Error: need MAIL command"]
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    assert d.feed(b"DATA\r\n") == ["503 5.5.1 Error: need RCPT command"]
    d.feed(b"RCPT TO:<b@example.org>\r\n")
    assert d.feed(b"DATA now\r\n") == ["501 5.5.4 Syntax: DATA"]


def test_rset_and_helo_reset_the_transaction():
    d = ready()
    d.feed(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert d.feed(b"RSET\r\n") == ["250 2.0.0 Ok"]
    assert d.feed(b"DATA\r\n") == ["503 5.5.1 Error: need MAIL command"]
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    d.feed(b"EHLO again\r\n")
    assert d.feed(b"RCPT TO:<b@example.org>\r\n") == ["503 5.5.1 Error: need MAIL command"]
    assert d.feed(b"RSET x\r\n") == ["501 5.5.4 Syntax: RSET"]


# -- MAIL / RCPT syntax and parameters ------------------------------------------------------


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"MAIL <a@example.net>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:a@example.net", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@example.net", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a b@example.net>", "501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@example.net> SIZE=99999999999", "552 5.3.4 Message size exceeds fixed limit"),
        (b"MAIL FROM:<a@example.net> SIZE=12k", "501 5.5.4 Bad SIZE syntax"),
        (b"MAIL FROM:<a@example.net> BODY=BINARYMIME", "501 5.5.4 Unsupported BODY type"),
        (b"MAIL FROM:<a@example.net> FOO=bar", "555 5.5.4 Unsupported option: FOO"),
        (b"MAIL FROM:<a@example.net> SIZE=1 SIZE=2", "501 5.5.4 Duplicate option: SIZE"),
        (b"MAIL FROM:<a@example.net> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("MAIL FROM:<jö@example.net>".encode(), "553 5.6.7 Error: non-ASCII address requires SMTPUTF8"),
        (b"MAIL FROM:<spammer@example.net>", "554 5.7.1 Sender rejected"),
    ],
)
def test_mail_errors(line, reply):
    d = ready()
    assert d.feed(line + b"\r\n") == [reply]
    assert d.m.envelope.mail_from is None


def test_mail_parameters_are_recorded():
    d = ready()
    out = d.feed("MAIL FROM:<jö@example.net> size=100 BODY=8bitmime SMTPUTF8\r\n".encode())
    assert out == ["250 2.1.0 Ok"]
    env = d.m.envelope
    assert (env.mail_from, env.size, env.body, env.smtputf8) == ("jö@example.net", 100, "8BITMIME", True)
    assert d.feed("RCPT TO:<rené@exämple.org>\r\n".encode()) == ["250 2.1.5 Ok"]


def test_mail_tolerates_space_after_colon_and_trailing_space():
    assert ready().feed(b"MAIL FROM: <a@example.net> \r\n") == ["250 2.1.0 Ok"]


def test_esmtp_parameters_need_ehlo():
    d = Driver()
    d.feed(b"HELO x\r\n")
    assert d.feed(b"MAIL FROM:<a@example.net> SIZE=10\r\n") == ["555 5.5.4 Unsupported option: SIZE"]


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"RCPT <b@example.org>", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"RCPT TO:b@example.org", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<>", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<b@exa..mple.org>", "501 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<b@example.org> NOTIFY=NEVER", "555 5.5.4 Unsupported option: NOTIFY"),
        ("RCPT TO:<bö@example.org>".encode(), "553 5.6.7 Error: non-ASCII address requires SMTPUTF8"),
        (b"RCPT TO:<unknown@example.org>", "550 5.1.1 User unknown"),
        (b"RCPT TO:<grey@example.org>", "450 4.7.1 Try again later"),
    ],
)
def test_rcpt_errors(line, reply):
    d = ready()
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    assert d.feed(line + b"\r\n") == [reply]
    assert d.m.envelope.rcpt_to == []


def test_rcpt_postmaster_without_domain_is_accepted():
    d = ready()
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    assert d.feed(b"RCPT TO:<Postmaster>\r\n") == ["250 2.1.5 Ok"]
    assert d.backend.recipients == ["postmaster"]


def test_too_many_recipients():
    d = ready(max_recipients=3)
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    out = d.feed(b"".join(b"RCPT TO:<u%d@example.org>\r\n" % i for i in range(4)))
    assert out[-1] == "452 4.5.3 Error: too many recipients"
    assert codes(out) == [250, 250, 250, 452]
    assert len(d.m.envelope.rcpt_to) == 3


def test_submission_requires_auth_before_mail():
    d = ready(require_auth=True, auth_plaintext_ok=True)
    assert d.feed(b"MAIL FROM:<alice@example.org>\r\n") == ["530 5.7.0 Authentication required"]
    d.feed(b"AUTH PLAIN " + GOOD_PLAIN.encode() + b"\r\n")
    assert d.feed(b"MAIL FROM:<alice@example.org>\r\n") == ["250 2.1.0 Ok"]
    assert d.backend.senders == ["alice@example.org"]


# -- other commands --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"NOOP", "250 2.0.0 Ok"),
        (b"NOOP anything", "250 2.0.0 Ok"),
        (b"VRFY alice", "252 2.0.0 Send some mail, I'll try my best"),
        (b"VRFY", "501 5.5.4 Syntax: VRFY address"),
        (b"EXPN staff", "502 5.5.1 Error: command not implemented"),
        (b"BDAT 10 LAST", "502 5.5.1 Error: command not implemented"),
        (b"FOOBAR", "500 5.5.2 Error: command not recognized"),
        (b"", "500 5.5.2 Error: command not recognized"),
        (b"MAIL\x00FROM:<a@b>", "500 5.5.2 Error: invalid characters in command"),
        (b"NOOP \x01", "500 5.5.2 Error: invalid characters in command"),
        (b"NOOP\rRSET", "500 5.5.2 Error: invalid characters in command"),
    ],
)
def test_simple_commands(line, reply):
    assert Driver().feed(line + b"\r\n") == [reply]


def test_help():
    (reply,) = Driver().feed(b"HELP\r\n")
    assert reply.startswith("214 2.0.0 ") and "EHLO" in reply


def test_quit_closes_and_ignores_the_rest():
    d = Driver()
    assert d.feed(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 Bye"]
    assert d.closed and d.actions[-1] is CLOSE
    assert d.m.data_received(b"NOOP\r\n") == []


def test_sarlacc_4_eight_bit_garbage_in_command_gets_500_not_exception():
    d = Driver()
    assert d.feed(b"\xff\xfe\xfd\r\n") == ["500 5.5.2 Error: invalid characters in command"]
    assert d.feed(b"NOOP \xc3\x28\r\n") == ["500 5.5.2 Error: invalid characters in command"]
    assert d.feed("EHLO hôte\r\n".encode()) == ["500 5.5.2 Error: invalid characters in command"]
    assert d.feed(b"MAIL FROM:<\xff@example.net>\r\n") == ["500 5.5.2 Error: invalid characters in command"]


def test_bare_lf_ends_a_command_line():
    # Tolerated for commands (sloppy scripts); DATA is strict.
    assert codes(Driver().feed(b"NOOP\nNOOP\r\n")) == [250, 250]


# -- line length limits and the bounded buffer ---------------------------------------------


def test_command_line_limit_includes_crlf():
    d = Driver(max_command_line=20)
    assert d.feed(b"NOOP " + b"x" * 13 + b"\r\n") == ["250 2.0.0 Ok"]  # 20 octets
    assert d.feed(b"NOOP " + b"x" * 14 + b"\r\n") == ["500 5.5.2 Line too long"]  # 21 octets


def test_huge_command_line_without_newline_gets_one_500_and_bounded_buffer():
    d = Driver()
    chunk = b"A" * 65536
    replies = []
    for _ in range(160):  # 10 MB
        replies += d.feed(chunk)
        assert len(d.m._buf) <= d.settings.max_command_line
    assert replies == ["500 5.5.2 Line too long"]
    # The rest of the line is dropped when it ends; the next line is a command again.
    assert d.feed(b"tail\r\nNOOP\r\n") == ["250 2.0.0 Ok"]


def test_huge_command_line_fed_byte_by_byte_keeps_buffer_bounded():
    d = Driver(max_command_line=64)
    replies = []
    for _ in range(500):
        replies += d.feed(b"B")
        assert len(d.m._buf) <= 64
    assert replies == ["500 5.5.2 Line too long"]


def test_long_line_in_data_gets_one_500_and_no_message():
    d = ready(max_text_line=100)
    d.feed(TRANSACTION)
    out = d.feed(b"ok\r\n" + b"y" * 99 + b"\r\n" + b"more\r\n" + b"z" * 100000 + b"\r\n.\r\n")
    assert out == ["500 5.5.2 Line too long"]
    sink = d.backend.sinks[0]
    assert sink.aborted and not sink.committed
    assert d.feed(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_aiosmtpd_285_long_data_line_without_newline_is_bounded():
    d = ready()
    d.feed(TRANSACTION)
    replies = []
    for _ in range(160):
        replies += d.feed(b"L" * 65536)
        assert len(d.m._buf) <= d.settings.max_text_line
    replies += d.feed(b"\r\n.\r\n")
    assert replies == ["500 5.5.2 Line too long"]
    assert d.backend.committed == []


def test_data_line_limit_includes_crlf():
    d = ready(max_text_line=10)
    d.feed(TRANSACTION)
    assert d.feed(b"12345678\r\n.\r\n") == ["250 2.0.0 Ok: queued as Q1"]
    d.feed(TRANSACTION)
    assert d.feed(b"123456789\r\n.\r\n") == ["500 5.5.2 Line too long"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"", b"a", b".", b"..x", b"y" * 20, b"z" * 37]), min_size=1, max_size=40),
    st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b"\r"]),
)
def test_data_checks_of_a_whole_block_match_the_line_by_line_rules(pieces, odd_end):
    """The block checks (no bare CR or LF, no line over max_text_line with
    its CRLF, dot-unstuffing) give, for text sent in one piece, what the
    rules give line by line."""
    lines = [b"".join(pieces[i : i + 3]) for i in range(0, len(pieces), 3)] + [b"end"]
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]  # as a client sends them
    ends = [odd_end if i == (len(lines) - 1) // 2 else b"\r\n" for i in range(len(lines))]  # never the last
    d = ready(max_text_line=40)
    d.feed(TRANSACTION)
    reply = d.feed(b"".join(line + end for line, end in zip(stuffed, ends, strict=True)) + b".\r\n")
    if odd_end != b"\r\n":
        assert codes(reply) == [550]  # bare CR or LF
    elif any(len(line) + 2 > 40 for line in stuffed):
        assert reply == ["500 5.5.2 Line too long"]
    else:
        assert reply == ["250 2.0.0 Ok: queued as Q1"]
        assert d.backend.sinks[0].data.endswith(b"".join(line + b"\n" for line in lines))


# -- message size ----------------------------------------------------------------------


def test_aiosmtpd_9_oversize_data_gets_one_552_and_is_never_queued():
    d = ready(max_message_size=1000)
    d.feed(TRANSACTION)
    replies = []
    for _ in range(50):
        replies += d.feed(b"x" * 78 + b"\r\n")
    replies += d.feed(b".\r\n")
    assert replies == ["552 5.3.4 Message size exceeds fixed limit"]
    sink = d.backend.sinks[0]
    assert sink.aborted and not sink.committed
    assert d.feed(b"RCPT TO:<a@example.org>\r\n") == ["503 5.5.1 Error: need MAIL command"]


def test_message_of_exactly_the_limit_is_accepted():
    d = ready(max_message_size=100)
    d.feed(TRANSACTION)
    assert d.feed(b"x" * 98 + b"\r\n.\r\n") == ["250 2.0.0 Ok: queued as Q1"]
    d.feed(TRANSACTION)
    assert d.feed(b"x" * 99 + b"\r\n.\r\n") == ["552 5.3.4 Message size exceeds fixed limit"]


# -- SMTP smuggling: only CRLF.CRLF ends DATA ---------------------------------------------------

SMUGGLED = b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nevil\r\n.\r\n"
BARE_NEWLINE = "550 5.6.0 Message contains bare CR or LF; refused (see RFC 5321 2.3.8)"


@pytest.mark.parametrize(
    "end",
    [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\r.\r", b"\r\r\n.\r\r\n"],
    ids=["lf-dot-lf", "lf-dot-crlf", "cr-dot-crlf", "crlf-dot-cr", "crlf-dot-lf", "cr-dot-cr", "crcrlf"],
)
@pytest.mark.parametrize("step", [None, 1, 7])
def test_cve_2023_51764_smuggling_sequences_get_one_550_and_no_second_transaction(end, step):
    d = ready()
    d.feed(TRANSACTION)
    out = d.feed(b"Subject: legit\r\n\r\nbody" + end + SMUGGLED + b"QUIT\r\n", step=step)
    assert out == [BARE_NEWLINE, "221 2.0.0 Bye"]
    assert d.backend.committed == []
    assert d.backend.senders == ["bob@example.net"]  # the smuggled MAIL never ran
    assert len(d.backend.sinks) == 1 and d.backend.sinks[0].aborted


def test_cve_2023_51764_lf_dot_lf_does_not_end_data():
    d = ready()
    d.feed(TRANSACTION)
    assert d.feed(b"body\n.\nMAIL FROM:<x@example.net>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n") == []
    assert d.feed(b"evil\r\n.\r\n") == [BARE_NEWLINE]
    assert d.backend.committed == []


@pytest.mark.parametrize("bad", [b"a\nb\r\n", b"a\rb\r\n", b"\n", b"\r\r\n", b"ends with cr\r"])
def test_bare_cr_or_lf_anywhere_in_data_is_refused(bad):
    d = ready()
    d.feed(TRANSACTION)
    assert d.feed(b"fine\r\n" + bad + b"\r\nfine\r\n.\r\n") == [BARE_NEWLINE]
    assert d.backend.committed == [] and d.backend.sinks[0].aborted


def test_bare_lf_right_after_354_then_dot():
    d = ready()
    d.feed(TRANSACTION)
    assert d.feed(b"\n.\r\n") == []  # "\n.\r\n" is not CRLF.CRLF
    assert d.feed(b".\r\n") == [BARE_NEWLINE]


def test_dot_without_crlf_after_crlf_is_an_ordinary_line():
    # <CRLF>.<non-CRLF> cannot come from a conforming client (hannob/smtpsmug#8):
    # it is dot-stuffing, not an end.
    d = ready()
    d.feed(TRANSACTION)
    assert d.feed(b"a\r\n.b\r\n.\r\n") == ["250 2.0.0 Ok: queued as Q1"]
    assert d.backend.sinks[0].data == b"a\nb\n"


def test_end_of_data_split_across_chunks():
    for cut in range(1, 7):
        d = ready()
        d.feed(TRANSACTION)
        data = b"abc\r\n.\r\nNOOP\r\n"
        out = d.feed(data[: 3 + cut]) + d.feed(data[3 + cut :])
        assert out == ["250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"], cut
        assert d.backend.sinks[0].data == b"abc\n"


# -- backend failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, reply",
    [
        (TempFailure("queue locked"), "451 4.3.0 Requested action aborted: local error in processing"),
        (OSError(13, "Permission denied"), "451 4.3.0 Requested action aborted: local error in processing"),
        (OSError(28, "No space left on device"), "452 4.3.1 Insufficient system storage"),  # ENOSPC
        (OSError(122, "Disk quota exceeded"), "452 4.3.1 Insufficient system storage"),  # EDQUOT
    ],
)
def test_commit_failure_gets_451_without_traceback(exc, reply):
    d = ready()
    d.backend.fail_commit = exc
    out = d.feed(TRANSACTION + b"x\r\n.\r\nNOOP\r\n")
    assert out[-2:] == [reply, "250 2.0.0 Ok"]
    assert d.backend.sinks[0].aborted


def test_open_message_failure_gets_451_and_no_354():
    d = ready()
    d.backend.fail_open = OSError("queue dir missing")
    out = d.feed(TRANSACTION)
    assert out[-1] == "451 4.3.0 Requested action aborted: local error in processing"
    assert d.feed(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_write_failure_drains_then_451():
    d = ready()
    d.backend.fail_write = OSError(28, "No space left on device")
    d.feed(TRANSACTION)
    assert d.feed(b"x" * 1000 + b"\r\n" + (b"y" * 998 + b"\r\n") * 100) == []
    assert d.feed(b".\r\n") == ["452 4.3.1 Insufficient system storage"]  # ENOSPC: RFC 3463 4.3.1
    assert d.backend.sinks[0].aborted and not d.backend.sinks[0].committed


def test_backend_check_exception_gets_451():
    d = ready()
    d.backend.check_recipient = lambda *a: 1 / 0
    d.feed(b"MAIL FROM:<a@example.net>\r\n")
    assert d.feed(b"RCPT TO:<b@example.org>\r\n") == ["451 4.3.0 Requested action aborted: local error in processing"]


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_commands_answered_in_order_in_one_send():
    d = Driver()
    batch = (
        b"EHLO x\r\n"
        + TRANSACTION
        + b"hello\r\n.\r\n"
        + b"MAIL FROM:<c@example.net>\r\nRCPT TO:<unknown@example.org>\r\nRSET\r\nQUIT\r\n"
    )
    actions = d.m.data_received(batch)
    # The commit Job stops processing; the rest waits in the machine's buffer.
    assert isinstance(actions[-1], Job) and len(actions) == 2
    d._run(actions)
    assert codes(lines(d.out)) == [250, 250, 250, 354, 250, 250, 550, 250, 221]
    assert d.closed


def test_job_pending_keeps_buffered_input_for_job_done():
    d = ready(auth_plaintext_ok=True)
    cred = b64(b"\0alice@example.org\0s3cret")
    actions = d.m.data_received(f"AUTH PLAIN {cred}\r\nMAIL FROM:<alice@example.org>\r\n".encode())
    assert len(actions) == 1 and isinstance(actions[0], Job)
    after = d.m.job_done(actions[0].run())
    assert lines(after[0]) == ["235 2.7.0 Authentication successful", "250 2.1.0 Ok"]


def test_same_dialogue_byte_by_byte_gives_same_replies():
    dialogue = (
        b"EHLO client.example\r\nNOOP\r\nMAIL FROM:<a@example.net> SIZE=100\r\n"
        b"RCPT TO:<b@example.org>\r\nRCPT TO:<unknown@example.org>\r\nDATA\r\n"
        b"Subject: x\r\n\r\n..dots\r\n.\r\nVRFY x\r\nFOO\r\n"
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nbad\n.\r\n.\r\nQUIT\r\n"
    )
    whole, single = Driver(), Driver()
    a = whole.feed(dialogue)
    b = single.feed(dialogue, step=1)
    assert a == b
    assert codes(a) == [250, 250, 250, 250, 550, 354, 250, 252, 500, 250, 250, 354, 550, 221]
    assert whole.backend.sinks[0].data == single.backend.sinks[0].data == b"Subject: x\n\n.dots\n"


# -- STARTTLS ------------------------------------------------------------------------------


def test_cve_2011_0411_pipelined_command_after_starttls_is_never_executed():
    d = Driver(info=ConnectionInfo(tls_available=True))
    out = d.feed(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
    assert out[-1] == "220 2.0.0 Ready to start TLS"
    assert d.actions[-1] is STARTTLS
    assert len(d.m._buf) == 0
    # Plaintext that arrives before the handshake is not read either.
    assert d.m.data_received(b"RCPT TO:<x@example.org>\r\n") == []
    d.start_tls()
    assert d.backend.senders == []
    # The session was reset: HELO is needed again, and the envelope is empty.
    assert d.feed(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]
    caps = d.feed(b"EHLO x\r\n")
    assert "250-STARTTLS" not in caps and "250 STARTTLS" not in caps


def test_aiosmtpd_380_session_state_reset_after_starttls():
    d = Driver(info=ConnectionInfo(tls_available=True), auth_plaintext_ok=True)
    d.feed(b"EHLO x\r\n")
    d.feed(b"AUTH PLAIN " + GOOD_PLAIN.encode() + b"\r\n")
    assert d.m.session.auth_user == "alice@example.org"
    d.feed(b"STARTTLS\r\n")
    d.start_tls()
    assert d.m.session.auth_user is None and d.m.session.helo is None
    assert d.m.session.info.tls
    assert d.out.endswith(b"220 2.0.0 Ready to start TLS\r\n")  # no second greeting


def test_starttls_refusals():
    assert Driver().feed(b"STARTTLS\r\n") == ["502 5.5.1 Error: command not implemented"]
    tls = ConnectionInfo(tls=True, tls_available=True)
    assert Driver(info=tls).feed(b"STARTTLS\r\n") == ["502 5.5.1 Error: TLS already active"]
    d = Driver(info=ConnectionInfo(tls_available=True))
    assert d.feed(b"STARTTLS now\r\n") == ["501 5.5.4 Syntax: STARTTLS"]


# -- AUTH ------------------------------------------------------------------------------------


def tls_ready():
    return ready(info=ConnectionInfo(tls=True, tls_available=True))


def test_auth_plain_with_initial_response():
    d = tls_ready()
    assert d.feed(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode()) == ["235 2.7.0 Authentication successful"]
    assert d.m.session.auth_user == "alice@example.org"
    assert d.backend.auth_calls == [("alice@example.org", "s3cret")]


def test_auth_plain_with_authzid_equal_to_authcid():
    d = tls_ready()
    cred = b64(b"alice@example.org\0alice@example.org\0s3cret")
    assert d.feed(f"AUTH PLAIN {cred}\r\n".encode()) == ["235 2.7.0 Authentication successful"]


def test_auth_plain_with_empty_challenge():
    d = tls_ready()
    assert d.feed(b"AUTH PLAIN\r\n") == ["334 "]
    assert d.feed(GOOD_PLAIN.encode() + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_plain_wrong_password():
    d = tls_ready()
    assert d.feed(b"AUTH PLAIN " + b64(b"\0alice@example.org\0nope").encode() + b"\r\n") == [
        "535 5.7.8 Authentication credentials invalid"
    ]
    assert d.m.session.auth_user is None


@pytest.mark.parametrize(
    "response",
    [
        b"=",  # empty initial response
        b64(b"alice@example.org s3cret").encode(),  # no NULs
        b64(b"bob@example.org\0alice@example.org\0s3cret").encode(),  # authzid != authcid
        b64(b"\0\0s3cret").encode(),  # empty user
        b64(b"\0\xff\xfe\0x").encode(),  # not UTF-8
    ],
)
def test_auth_plain_malformed_gets_535_without_backend_call(response):
    d = tls_ready()
    assert d.feed(b"AUTH PLAIN " + response + b"\r\n") == ["535 5.7.8 Authentication credentials invalid"]
    assert d.backend.auth_calls == []


def test_twisted_11086_auth_login_with_prompts():
    d = tls_ready()
    assert d.feed(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert d.feed(b64(b"alice@example.org").encode() + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert d.feed(b64(b"s3cret").encode() + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_login_with_initial_username():
    d = tls_ready()
    assert d.feed(f"AUTH LOGIN {b64(b'alice@example.org')}\r\n".encode()) == ["334 UGFzc3dvcmQ6"]
    assert d.feed(b64(b"s3cret").encode() + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_cancel_and_bad_base64():
    d = tls_ready()
    d.feed(b"AUTH LOGIN\r\n")
    assert d.feed(b"*\r\n") == ["501 5.7.0 Authentication aborted"]
    d.feed(b"AUTH PLAIN\r\n")
    assert d.feed(b"!!!notbase64\r\n") == ["501 5.5.2 Invalid base64"]
    assert d.feed(b"AUTH PLAIN %%%\r\n") == ["501 5.5.2 Invalid base64"]
    assert d.feed(b"NOOP\r\n") == ["250 2.0.0 Ok"]  # back in command mode


def test_auth_continuation_line_has_its_own_cap():
    d = tls_ready()
    d.feed(b"AUTH PLAIN\r\n")
    assert d.feed(b"A" * 12284 + b"\r\n") == ["535 5.7.8 Authentication credentials invalid"]  # under the cap
    d.feed(b"AUTH PLAIN\r\n")
    out = []
    for _ in range(10):
        out += d.feed(b"A" * 4096)
        assert len(d.m._buf) <= 12288
    assert out == ["500 5.5.6 Authentication Exchange line is too long"]
    assert d.feed(b"\r\nNOOP\r\n") == ["250 2.0.0 Ok"]


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),  # twisted#7753
        (b"AUTH ", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH CRAM-MD5", "504 5.5.4 Unsupported authentication mechanism"),
    ],
)
def test_auth_syntax(line, reply):
    assert tls_ready().feed(line + b"\r\n") == [reply]


def test_auth_state_rules():
    d = Driver(info=ConnectionInfo(tls=True))
    assert d.feed(b"AUTH PLAIN\r\n") == ["503 5.5.1 Error: send EHLO first"]
    d.feed(b"HELO x\r\n")
    assert d.feed(b"AUTH PLAIN\r\n") == ["503 5.5.1 Error: send EHLO first"]
    d.feed(b"EHLO x\r\nMAIL FROM:<a@example.net>\r\n")
    assert d.feed(b"AUTH PLAIN\r\n") == ["503 5.5.1 Error: MAIL transaction in progress"]
    d.feed(b"RSET\r\n")
    d.feed(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode())
    assert d.feed(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode()) == ["503 5.5.1 Error: already authenticated"]


def test_auth_needs_tls_when_tls_is_available():
    d = ready(info=ConnectionInfo(tls_available=True))
    assert d.feed(b"AUTH PLAIN\r\n") == ["538 5.7.11 Encryption required for requested authentication mechanism"]
    d = ready()
    assert d.feed(b"AUTH PLAIN\r\n") == ["503 5.5.1 Error: authentication not enabled"]


def test_auth_backend_exception_is_a_temporary_failure():
    d = tls_ready()
    d.backend.fail_auth = OSError("users file unreadable")
    assert d.feed(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode()) == ["454 4.7.0 Temporary authentication failure"]


def test_auth_runs_as_a_job():
    d = tls_ready()
    actions = d.m.data_received(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode())
    assert actions and isinstance(actions[-1], Job)
    assert d.backend.auth_calls == []  # nothing slow ran inline


# -- error limit, timeouts, EOF --------------------------------------------------------------


def test_too_many_errors_closes_with_421():
    d = Driver(max_errors=3)
    out = d.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert out == [
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        f"421 4.7.0 {HOST} Error: too many errors",
    ]
    assert d.closed


def test_failed_auth_counts_as_error():
    d = ready(info=ConnectionInfo(tls=True), max_errors=2)
    bad = b64(b"\0alice@example.org\0wrong").encode()
    out = d.feed(b"AUTH PLAIN " + bad + b"\r\nAUTH PLAIN " + bad + b"\r\nAUTH PLAIN " + bad + b"\r\n")
    assert codes(out) == [535, 535, 421]
    assert len(d.backend.auth_calls) == 2


def test_timeouts_follow_the_phase():
    d = ready(command_timeout=30.0, data_timeout=60.0)
    assert d.m.timeout == 30.0
    d.feed(TRANSACTION)
    assert d.m.timeout == 60.0
    d.feed(b".\r\n")
    assert d.m.timeout == 30.0


def test_timeout_during_data_aborts_the_sink():
    d = ready()
    d.feed(TRANSACTION + b"partial\r\n")
    d._run(d.m.timed_out())
    assert lines(d.out)[-1] == f"421 4.4.2 {HOST} Error: timeout exceeded"
    assert d.closed and d.backend.sinks[0].aborted and not d.backend.sinks[0].committed


def test_eof_during_data_aborts_the_sink():
    d = ready()
    d.feed(TRANSACTION + b"partial\r\n")
    assert d.m.data_received(b"") == [CLOSE]
    assert d.backend.sinks[0].aborted and d.backend.committed == []


def test_eof_in_command_mode():
    assert Driver().m.data_received(b"") == [CLOSE]


def test_connection_lost_aborts_the_sink():
    d = ready()
    d.feed(TRANSACTION + b"partial")
    d.m.connection_lost()
    assert d.backend.sinks[0].aborted


# -- fuzzing: parse it or reply, nothing else --------------------------------------------------

REPLY_LINE = re.compile(r"^[2-5]\d\d[ -]")
WORDS = [
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@example.net>\r\n",
    b"RCPT TO:<b@example.org>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"*\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"x" * 3000,
    b"\x00",
    b"\xff",
    GOOD_PLAIN.encode() + b"\r\n",
]


def fuzz_run(chunks, **kw):
    info = ConnectionInfo(tls_available=True)
    d = Driver(info=info, auth_plaintext_ok=True, max_command_line=100, max_text_line=200, max_message_size=2000, **kw)
    for chunk in chunks:
        if d.closed:
            break
        d._run(d.m.data_received(chunk))
        if d.tls_requested:
            d.start_tls()
        assert len(d.m._buf) <= max(len(chunk), 12288)
    for line in lines(d.out):
        assert REPLY_LINE.match(line), line
    for sink in d.backend.sinks:
        assert not (sink.committed and sink.aborted)
        assert b"\r" not in sink.data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=30))
def test_fuzz_arbitrary_bytes_only_produce_replies(chunks):
    fuzz_run(chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=40), st.integers(min_value=1, max_value=17))
def test_fuzz_protocol_words_in_arbitrary_splits(words, step):
    data = b"".join(words)
    fuzz_run([data[i : i + step] for i in range(0, len(data), step)])


def transcript(chunks):
    d = Driver(auth_plaintext_ok=True, max_command_line=100, max_text_line=200, max_message_size=2000)
    for chunk in chunks:
        if d.closed:
            break
        d._run(d.m.data_received(chunk))
    return lines(d.out), [bytes(s.data) for s in d.backend.committed]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([w for w in WORDS if w != b"STARTTLS\r\n"]), max_size=40), st.data())
def test_fuzz_chunking_never_changes_the_dialogue(words, data):
    stream = b"".join(words)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=max(len(stream) - 1, 1)), max_size=20)))
    pieces = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)], strict=True) if stream[i:j]]
    assert transcript(pieces) == transcript([stream])


# -- whole-session limits: deadline and junk commands (issue 11 3) --------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_noop_every_few_seconds_cannot_hold_a_session_past_its_deadline():
    clock = FakeClock()
    d = ready(clock=clock, max_session_time=60.0, command_timeout=30.0)
    for _ in range(11):  # a NOOP every 5 s never lets the command timeout expire...
        clock.now += 5
        assert d.feed(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    clock.now += 5  # ...but the session is 60 s old now
    assert d.feed(b"NOOP\r\n") == [f"421 4.4.2 {HOST} Error: session time limit exceeded, closing connection"]
    assert d.closed


def test_driver_timeout_shrinks_to_what_is_left_of_the_session():
    clock = FakeClock()
    d = ready(clock=clock, max_session_time=100.0, command_timeout=30.0, data_timeout=60.0)
    assert d.m.timeout == 30.0
    clock.now += 80
    assert d.m.timeout == 20.0
    d.feed(TRANSACTION)
    assert d.m.timeout == 20.0  # the data phase too
    clock.now += 25
    assert d.m.timeout == 0.0
    d._run(d.m.timed_out())
    assert lines(d.out)[-1] == f"421 4.4.2 {HOST} Error: session time limit exceeded, closing connection"
    assert d.closed and d.backend.sinks[0].aborted


def test_session_deadline_survives_starttls():
    clock = FakeClock()
    d = Driver(info=ConnectionInfo(tls_available=True), clock=clock, max_session_time=50.0)
    d.feed(b"EHLO x\r\nSTARTTLS\r\n")
    clock.now += 49
    d.start_tls()
    assert d.m.timeout == 1.0


def test_junk_commands_beyond_the_limit_close_the_session():
    d = ready(max_junk_commands=5, max_errors=100)  # EHLO was junk number 1
    replies = d.feed(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nNOOP\r\n")
    assert codes(replies) == [250, 250, 252, 214, 421]
    assert replies[-1] == f"421 4.7.0 {HOST} Error: too many junk commands, closing connection"
    assert d.closed


def test_junk_count_starts_again_after_a_message_is_queued():
    d = ready(max_junk_commands=3)
    d.feed(b"NOOP\r\nNOOP\r\n")
    assert d.feed(TRANSACTION + b"hi\r\n.\r\n")[-1].startswith("250 2.0.0 Ok: queued")
    assert codes(d.feed(b"RSET\r\nNOOP\r\nNOOP\r\n")) == [250, 250, 250]
    assert codes(d.feed(b"NOOP\r\n")) == [421]


def test_mail_commands_are_not_junk():
    d = ready(max_junk_commands=2)
    for _ in range(5):
        assert d.feed(TRANSACTION + b"hi\r\n.\r\n")[-1].startswith("250 2.0.0 Ok: queued")
    assert not d.closed


class PolicyBackend(FakeBackend):
    """A port-25 policy that greylists everyone but postmaster."""

    def __init__(self):
        super().__init__()
        self.policy_calls = []

    def wants_policy(self, session, envelope, address):
        return not address.startswith("nopolicy@")

    def check_policy(self, session, envelope, address):
        self.policy_calls.append(address)
        if address == "postmaster":
            return None
        return Reply(450, "4.2.0", "Greylisted, try again later")


def test_recipient_policy_only_where_the_backend_wants_it():
    """No Job for a recipient the policy cannot refuse (no quota, no port-25 client policy)."""
    backend = PolicyBackend()
    d = ready(backend=backend, recipient_policy=True)
    replies = d.feed(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<nopolicy@example.org>\r\n")
    assert replies[-1] == "250 2.1.5 Ok"
    assert backend.policy_calls == []


def test_recipient_policy_is_a_job_after_check_recipient():
    backend = PolicyBackend()
    d = ready(backend=backend, recipient_policy=True)
    replies = d.feed(
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<unknown@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<postmaster>\r\nDATA\r\n"
    )
    assert codes(replies) == [250, 550, 450, 250, 354]
    assert backend.policy_calls == ["alice@example.org", "postmaster"]  # unknown users never reach it
    assert any(isinstance(a, Job) and "_check_policy" in repr(a) for a in d.actions)
    assert d.m.envelope.rcpt_to == ["postmaster"]


def test_recipient_policy_is_off_unless_asked_for():
    backend = PolicyBackend()
    d = ready(backend=backend)
    assert codes(d.feed(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\n")) == [250, 250]
    assert backend.policy_calls == []


def test_recipient_policy_failure_is_a_local_error_not_a_crash():
    backend = PolicyBackend()
    backend.check_policy = lambda *a: 1 / 0
    d = ready(backend=backend, recipient_policy=True)
    assert d.feed(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\n")[-1].startswith("451 4.3.0")


class LookupBackend(FakeBackend):
    """Answers nothing from memory: every MAIL and RCPT check is IN_JOB."""

    def __init__(self):
        super().__init__()
        self.rechecks = []

    def check_sender(self, session, envelope, address):
        return IN_JOB

    def check_recipient(self, session, envelope, address):
        return IN_JOB

    def recheck_sender(self, session, envelope, address):
        self.rechecks.append(("MAIL", address))
        return FakeBackend.check_sender(self, session, envelope, address)

    def recheck_recipient(self, session, envelope, address):
        self.rechecks.append(("RCPT", address))
        return FakeBackend.check_recipient(self, session, envelope, address)


def test_in_job_sends_the_check_to_a_job_and_answers_from_it():
    backend = LookupBackend()
    d = ready(backend=backend)
    replies = d.feed(
        b"MAIL FROM:<spammer@example.net>\r\nMAIL FROM:<a@example.net>\r\n"
        b"RCPT TO:<unknown@example.org>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
    )
    assert codes(replies) == [554, 250, 550, 250, 250, 354]
    assert backend.rechecks == [
        ("MAIL", "spammer@example.net"),
        ("MAIL", "a@example.net"),
        ("RCPT", "unknown@example.org"),
        ("RCPT", "alice@example.org"),  # the repeated RCPT was checked already: no Job
    ]
    assert sum(isinstance(a, Job) and "_recheck_sender" in repr(a) for a in d.actions) == 2
    assert sum(isinstance(a, Job) and "_check_policy" in repr(a) for a in d.actions) == 2
    assert d.m.envelope.rcpt_to == ["alice@example.org"]


def test_in_job_recipient_then_asks_the_policy_in_the_same_job():
    class Both(LookupBackend, PolicyBackend):
        pass

    backend = Both()
    d = ready(backend=backend, recipient_policy=True)
    replies = d.feed(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nopolicy@example.org>\r\n")
    assert codes(replies) == [250, 450, 250]
    assert backend.policy_calls == ["alice@example.org"]
    assert sum(isinstance(a, Job) for a in d.actions) == 3


def _write_guard(sink):
    """Make ``sink.write`` fail unless called inside a Job's run (as the driver runs them, in a thread)."""
    state = {"in_job": False}
    real = sink.write

    def write(data):
        assert state["in_job"], "sink written outside a Job: disk I/O on the event loop"
        real(data)

    sink.write = write
    return state


def test_the_message_text_reaches_the_sink_only_in_jobs():
    d = ready()
    assert codes(d.feed(TRANSACTION)) == [250, 250, 354]
    state = _write_guard(d.backend.sinks[0])
    text = b"".join(b"line %06d " % i + b"x" * 60 + b"\r\n" for i in range(4000))  # about 290 KB
    data = text + b".\r\n"
    out = bytearray()
    jobs = 0
    for i in range(0, len(data), 16384):  # as the network hands it over
        actions = d.m.data_received(data[i : i + 16384])
        while actions:
            nxt = []
            for action in actions:
                if isinstance(action, Job):
                    jobs += 1
                    state["in_job"] = True
                    try:
                        result = action.run()
                    finally:
                        state["in_job"] = False
                    nxt += d.m.job_done(result)
                else:
                    out += action
            actions = nxt
    assert jobs >= 4  # the text in pieces of 64 KiB, then the commit with the rest
    assert codes(lines(out)) == [250]
    sink = d.backend.sinks[0]
    assert sink.committed and bytes(sink.data) == text.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("stage", ["write", "commit"])
def test_an_abort_while_a_job_writes_the_sink_is_left_to_that_job(stage):
    """A client that hangs up while a Job writes its message: the event loop
    must not abort (close) the sink under the Job's feet; the Job does it at its end."""
    d = ready()
    d.feed(TRANSACTION)
    sink = d.backend.sinks[0]
    text = b"x" * 70 + b"\r\n"
    body = text * 1000 if stage == "write" else text  # 72 KB: a write Job; one line: only the commit
    actions = d.m.data_received(body + (b"" if stage == "write" else b".\r\n"))
    [job] = [a for a in actions if isinstance(a, Job)]
    assert stage in repr(job) or (stage == "write" and "_write_text" in repr(job))
    d.m.connection_lost()  # the loop, while the Job is under way
    assert not sink.aborted
    job.run()
    assert sink.aborted  # by the Job, once it was done with the sink
