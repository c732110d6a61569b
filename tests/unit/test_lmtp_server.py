"""Transcript tests of the SMTP machine's LMTP mode (RFC 2033; pymta.smtp_server with settings.lmtp).

The fakes and the tiny driver are test_smtp_server's; an LMTP sink answers one Reply per RCPT.
"""

from pymta.lib.sansio import ConnectionInfo
from pymta.smtp_server import Reply, SMTPServer, SMTPSettings
from test_smtp_server import HOST, Driver, FakeBackend, FakeSink, codes

OK = Reply(250, "2.0.0", "delivered")
FULL = Reply(452, "4.2.2", "Mailbox full")


class LMTPSink(FakeSink):
    """Answers each recipient by its local part: full@ is over quota, the rest delivered."""

    def commit(self):
        super().commit()
        return [FULL if r.startswith("full@") else OK for r in self.envelope.rcpt_to]


class LMTPBackend(FakeBackend):
    def open_message(self, session, envelope):
        sink = LMTPSink(len(self.sinks) + 1, self.fail_commit, self.fail_write)
        sink.envelope, sink.session = envelope, session
        self.sinks.append(sink)
        return sink


def lmtp(**kw):
    return Driver(backend=LMTPBackend(), lmtp=True, **kw)


def test_greeting_says_lmtp():
    m = SMTPServer(SMTPSettings(HOST, software="pymail", lmtp=True), FakeBackend())
    assert m.connection_made(ConnectionInfo()) == [f"220 {HOST} LMTP pymail\r\n".encode()]


def test_lhlo_and_not_helo_or_ehlo():
    d = lmtp()
    assert d.feed(b"HELO client\r\n") == ["500 5.5.1 Error: this is an LMTP server: send LHLO"]
    assert d.feed(b"EHLO client\r\n") == ["500 5.5.1 Error: this is an LMTP server: send LHLO"]
    assert d.feed(b"MAIL FROM:<a@b.example>\r\n") == ["503 5.5.1 Error: send LHLO first"]
    reply = d.feed(b"LHLO client\r\n")
    assert reply[0] == f"250-{HOST}" and "250-PIPELINING" in reply and not any("AUTH" in r for r in reply)
    assert d.feed(b"AUTH PLAIN\r\n")[0].startswith("503")


def test_smtp_refuses_lhlo():
    d = Driver()
    assert d.feed(b"LHLO client\r\n") == ["500 5.5.2 Error: command not recognized"]


def test_one_reply_per_accepted_recipient_in_order():
    d = lmtp()
    d.feed(b"LHLO client\r\n")
    reply = d.feed(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<unknown@example.org>\r\n"
        b"RCPT TO:<full@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
    )
    assert codes(reply) == [250, 250, 550, 250, 250, 354]
    reply = d.feed(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert reply == [
        "250 2.0.0 delivered",
        "452 4.2.2 Mailbox full",
        "250 2.0.0 delivered",  # a repeated RCPT was accepted twice, so it is answered twice
    ]
    assert d.backend.sinks[0].data == b"Subject: hi\n\nbody\n"
    assert d.feed(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_a_failed_message_is_answered_for_each_recipient():
    d = lmtp(max_message_size=10)
    d.feed(b"LHLO client\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\n")
    d.feed(b"DATA\r\n")
    reply = d.feed(b"0123456789abcdef\r\n.\r\n")
    assert reply == ["552 5.3.4 Message size exceeds fixed limit"] * 2


def test_a_commit_that_raises_is_answered_for_each_recipient():
    d = lmtp()
    d.backend.fail_commit = OSError(28, "No space left on device")
    d.feed(b"LHLO client\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\n")
    d.feed(b"DATA\r\n")
    assert d.feed(b"hi\r\n.\r\n") == ["452 4.3.1 Insufficient system storage"] * 2


def test_many_refused_recipients_after_data_do_not_end_the_session():
    d = lmtp(max_errors=3)
    rcpts = b"".join(b"RCPT TO:<full@example.org>\r\n" for _ in range(5))
    d.feed(b"LHLO client\r\nMAIL FROM:<a@b.example>\r\n" + rcpts + b"DATA\r\n")
    assert d.feed(b"hi\r\n.\r\n") == ["452 4.2.2 Mailbox full"] * 5
    assert not d.closed
