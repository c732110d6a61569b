"""The SMTP client machine and its reply parser, bytes in / bytes out (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymta.lib.sansio import CLOSE, STARTTLS, Stream
from pymta.smtp_client import (
    MAX_REPLY_LINES,
    ProtocolError,
    ReplyParser,
    ServerReply,
    SMTPClient,
    Transaction,
    smtp_text,
)

# -- reply parser ------------------------------------------------------------------------


def test_multiline_reply_fed_byte_by_byte():
    p = ReplyParser()
    data = b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    out = []
    for i in range(len(data)):
        out += p.feed(data[i : i + 1])
    assert out == [ServerReply(250, ("mx.test", "PIPELINING", "SIZE 1000"))]


@pytest.mark.parametrize(
    "bad", [b"2500 x\r\n", b"abc\r\n", b"25\r\n", b"650 x\r\n", b"250x\r\n", b"250-a\r\n251 b\r\n"]
)
def test_malformed_replies_are_protocol_errors(bad):
    with pytest.raises(ProtocolError):
        ReplyParser().feed(bad)


def test_reply_line_and_line_count_are_bounded():
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"250 " + b"x" * 5000)  # no newline yet: still refused
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"250 " + b"x" * 3000 + b"\r\n")
    with pytest.raises(ProtocolError):  # OpenSMTPD CVE-2020-8794: endless multi-line reply
        ReplyParser().feed(b"250-x\r\n" * (MAX_REPLY_LINES + 1))


def test_reply_text_is_made_printable():
    [r] = ReplyParser().feed(b"550 5.1.1 \x1b[31mred\xff\r\n")
    assert r.text == "5.1.1 ?[31mred?" and r.enhanced == "5.1.1" and not r.temporary


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_fuzz_parses_or_raises_protocol_error(data):
    try:
        ReplyParser().feed(data)
    except ProtocolError:
        pass


# -- message text ------------------------------------------------------------------------


def text(*chunks):
    return b"".join(smtp_text(chunks))


def test_dot_stuffing_and_crlf():
    assert text(b".a\nb\n..c\n") == b"..a\r\nb\r\n...c\r\n.\r\n"
    assert text(b"a\n", b".b\n") == b"a\r\n..b\r\n.\r\n"  # the dot at a chunk start
    assert text(b"no newline at end") == b"no newline at end\r\n.\r\n"
    assert text(b"") == b".\r\n"


def test_never_a_bare_cr_or_lf_on_the_wire():
    out = text(b"a\rb\n.\r", b"\nc\r", b"\r\nd\n\r.x")
    assert b"\r\n" in out
    stripped = out.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped
    assert b"\r\n.\r\n" not in out[:-5]  # no early end of data (smuggling)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_text_fuzz_has_only_crlf_and_one_terminator(chunks):
    out = text(*chunks)
    assert out.endswith(b"\r\n.\r\n") or out == b".\r\n"
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")
    body = out[:-3]
    assert b"\r\n.\r\n" not in body and not body.startswith(b".\r\n")


# -- the machine, scripted ------------------------------------------------------------------


def txn(rcpts=("a@x.test", "b@x.test"), size=10):
    return Transaction("s@y.test", list(rcpts), lambda: [b"Subject: t\n\nhi\n"], size)


def drive(client, *server_lines):
    """Feed server replies; return everything the client sent, as bytes."""
    sent = []
    for line in server_lines:
        for action in client.data_received(line):
            if isinstance(action, (bytes, bytearray)):
                sent.append(bytes(action))
            elif isinstance(action, Stream):
                sent.append(b"".join(action.chunks))
            else:
                sent.append(action)
    return sent


def test_pipelined_transaction_with_per_recipient_replies():
    c = SMTPClient("me.test", tls="none")
    assert drive(c, b"220 hi\r\n") == [b"EHLO me.test\r\n"]
    assert drive(c, b"250-x\r\n250-PIPELINING\r\n250-SIZE 100\r\n250 8BITMIME\r\n") == []
    assert c.ready
    out = c.transaction(txn())
    assert out == [b"MAIL FROM:<s@y.test> SIZE=10\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"]
    sent = drive(c, b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert sent == [b"Subject: t\r\n\r\nhi\r\n.\r\n"]
    drive(c, b"250 2.0.0 queued\r\n")
    assert c.ready and [r.code for r in c.result.rcpt] == [250, 550] and c.result.data.code == 250
    assert drive(c, b"") == [CLOSE] or c.failure is not None


def test_no_pipelining_one_command_at_a_time_and_no_data_without_recipients():
    c = SMTPClient("me.test", tls="none")
    drive(c, b"220 hi\r\n", b"250 x\r\n")
    assert c.transaction(txn()) == [b"MAIL FROM:<s@y.test>\r\n"]
    assert drive(c, b"250 ok\r\n") == [b"RCPT TO:<a@x.test>\r\n"]
    assert drive(c, b"450 4.2.0 busy\r\n") == [b"RCPT TO:<b@x.test>\r\n"]
    assert drive(c, b"550 5.1.1 no\r\n") == [b"RSET\r\n"]  # nobody accepted: no DATA
    drive(c, b"250 reset\r\n")
    assert c.ready and c.result.data is None and [r.code for r in c.result.rcpt] == [450, 550]


def test_helo_fallback_and_size_check():
    c = SMTPClient("me.test", tls="none")
    assert drive(c, b"220 hi\r\n") == [b"EHLO me.test\r\n"]
    assert drive(c, b"502 no ehlo\r\n") == [b"HELO me.test\r\n"]
    drive(c, b"250 hello\r\n")
    assert c.ready and not c.esmtp
    c2 = SMTPClient("me.test", tls="none")
    drive(c2, b"220 hi\r\n", b"250-x\r\n250 SIZE 5\r\n")
    assert c2.transaction(txn(size=10)) == []
    assert c2.result.failure.code == 552 and c2.ready


def test_starttls_whenever_offered_and_required_policy():
    c = SMTPClient("me.test")
    drive(c, b"220 hi\r\n")
    assert drive(c, b"250-x\r\n250 STARTTLS\r\n") == [b"STARTTLS\r\n"]
    assert drive(c, b"220 go ahead\r\n") == [STARTTLS]
    assert c.tls_started() == [b"EHLO me.test\r\n"]
    drive(c, b"250 x\r\n")
    assert c.ready and c.tls_active
    r = SMTPClient("me.test", tls="require")
    drive(r, b"220 hi\r\n")
    assert drive(r, b"250 x\r\n") == [b"QUIT\r\n"]
    assert r.failure.code == 421 and "4.7.4" in r.failure.text


def test_auth_plain_only_over_tls():
    c = SMTPClient("me.test", tls="none", auth=("u", "p"))
    drive(c, b"220 hi\r\n")
    assert drive(c, b"250-x\r\n250 AUTH PLAIN LOGIN\r\n") == [b"QUIT\r\n"]
    c = SMTPClient("me.test", tls="none", auth=("u", "p"), auth_ok_plaintext=True)
    drive(c, b"220 hi\r\n")
    assert drive(c, b"250-x\r\n250 AUTH LOGIN\r\n") == [b"AUTH LOGIN\r\n"]
    assert drive(c, b"334 VXNlcm5hbWU6\r\n") == [b"dQ==\r\n"]
    assert drive(c, b"334 UGFzc3dvcmQ6\r\n") == [b"cA==\r\n"]
    drive(c, b"235 ok\r\n")
    assert c.ready and c.authenticated


def test_hostile_and_broken_servers_end_the_session_cleanly():
    c = SMTPClient("me.test")
    assert drive(c, b"554 go away\r\n") == [b"QUIT\r\n"]
    c = SMTPClient("me.test")
    assert drive(c, b"220-" + b"x" * 100 + b"\r\n" + b"220-y\r\n" * 200) == [CLOSE]
    assert c.failure.code == 421 and "protocol error" in c.failure.text
    c = SMTPClient("me.test")
    assert drive(c, b"") == [CLOSE] and c.failure.temporary


def test_commands_never_carry_cr_or_lf():
    c = SMTPClient("me.test", tls="none")
    drive(c, b"220 hi\r\n", b"250 x\r\n")
    with pytest.raises(ValueError):
        c.transaction(Transaction("s@y.test", ["a@x.test\r\nRCPT TO:<evil@z>"], lambda: [], 1))
