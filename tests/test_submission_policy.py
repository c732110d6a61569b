"""Submission: an authenticated user sends only as themselves, and at a
bounded rate (issue 11 3: Postfix's reject_sender_login_mismatch, and a
stolen password must not send 100,000 spams before anyone notices)."""

from __future__ import annotations

import smtplib

import pytest

from conftest import PASSWORD, client_tls

ALIASES = "postmaster: alice\nteam: alice, bob\nbobs: bob\n"


def message(sender: str, to: str = "rita@remote.example") -> bytes:
    return f"From: Someone <{sender}>\r\nTo: {to}\r\nSubject: hi\r\n\r\nhello\r\n".encode()


def add_user_line(system, line: str) -> None:
    from passlib.hash import bcrypt

    entry = "{BLF-CRYPT}" + bcrypt.using(rounds=4).hash(PASSWORD)
    with open(system.root / "users", "a") as fh:
        fh.write(line.replace("HASH", entry) + "\n")


class Submission:
    def __init__(self, port: int, user: str = "alice@example.test") -> None:
        self.smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
        self.smtp.starttls(context=client_tls())
        self.smtp.ehlo("client.example")
        assert self.smtp.login(user, PASSWORD)[0] == 235

    def send(self, mail_from: str, header_from: str | None = None, rcpts=("rita@remote.example",)):
        """(MAIL reply code, [RCPT codes], final reply code or None)."""
        smtp = self.smtp
        code, text = smtp.mail(mail_from)
        if code != 250:
            return code, text, None
        codes = [smtp.rcpt(r)[0] for r in rcpts]
        if 250 not in codes:
            smtp.rset()
            return code, codes, None
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(message(header_from if header_from is not None else mail_from) + b".\r\n")
        return code, codes, smtp.getreply()

    def close(self) -> None:
        self.smtp.quit()


@pytest.fixture
def submission(make_mailsys):
    def start(extra: str = ""):
        system = make_mailsys(extra)
        (system.root / "aliases").write_text(ALIASES)
        add_user_line(system, "lists@example.test:HASH::::::allow_any_sender=yes")
        add_user_line(
            system, "desk@example.test:HASH::::::quota=1G allow_senders=support@example.test,@partner.example"
        )
        return system, system.start_smtpd("listen", "--service", "submission")

    return start


def test_mail_from_someone_else_is_refused_with_553(submission):
    system, port = submission()
    s = Submission(port)
    code, text, _ = s.send("bob@example.test")
    assert code == 553
    assert text == b"5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice@example.test"
    assert s.send("ceo@bank.example")[0] == 553
    s.close()
    assert not system.queue_files()


def test_own_address_extensions_aliases_and_null_sender_are_allowed(submission):
    system, port = submission()
    s = Submission(port)
    for sender in (
        "alice@example.test",
        "Alice+Lists@Example.Test",
        "postmaster@example.test",
        "team@example.test",
        "",
    ):
        code, _, final = s.send(sender, header_from=sender or "alice@example.test")
        assert code == 250 and final[0] == 250, (sender, final)
    assert s.send("bobs@example.test")[0] == 553  # an alias that leads to bob only
    s.close()


def test_from_header_of_someone_else_is_refused_at_end_of_data_and_nothing_queued(submission):
    system, port = submission()
    s = Submission(port)
    code, _, final = s.send("alice@example.test", header_from="bob@example.test")
    assert code == 250
    assert final == (550, b"5.7.1 <bob@example.test>: From: address rejected: not owned by user alice@example.test")
    # folded, several addresses: every one must be owned
    code, _, final = s.send("alice@example.test", header_from="alice@example.test,\r\n\tmallory@evil.example")
    assert final[0] == 550
    assert s.smtp.noop()[0] == 250  # the session goes on
    s.close()
    assert not system.queue_files()


def test_users_file_override_lets_a_list_server_send_as_anyone(submission):
    system, port = submission()
    s = Submission(port, "lists@example.test")
    code, _, final = s.send("owner-list@lists.example", header_from="poster@anywhere.example")
    assert code == 250 and final[0] == 250
    s.close()
    s = Submission(port, "desk@example.test")
    assert s.send("support@example.test")[2][0] == 250
    assert s.send("anyone@partner.example")[2][0] == 250
    assert s.send("bob@example.test")[0] == 553
    s.close()


def test_sender_login_match_can_be_turned_off(submission):
    system, port = submission("[submission]\nsender_login_match = false\n")
    s = Submission(port)
    code, _, final = s.send("bob@example.test")
    assert code == 250 and final[0] == 250
    s.close()


def test_message_rate_per_user_holds_across_connections(submission):
    system, port = submission("[submission]\nmax_messages_per_hour = 3\n")
    first, second = Submission(port), Submission(port)
    assert first.send("alice@example.test")[2][0] == 250
    assert second.send("alice@example.test")[2][0] == 250
    assert first.send("alice@example.test")[2][0] == 250
    code, text, _ = second.send("alice@example.test")
    assert code == 450 and text.startswith(b"4.7.1 ") and b"rate limit exceeded" in text
    other = Submission(port, "bob@example.test")  # bob's budget is his own
    assert other.send("bob@example.test")[2][0] == 250
    for s in (first, second, other):
        s.close()
    [proc] = system.procs
    proc.terminate()
    assert proc.stderr.read().count(b"rate limit exceeded for user alice@example.test") == 1


def test_recipient_rate_per_user(submission):
    system, port = submission("[submission]\nmax_recipients_per_hour = 3\n")
    s = Submission(port)
    code, codes, final = s.send("alice@example.test", rcpts=[f"r{i}@remote.example" for i in range(4)])
    assert codes == [250, 250, 250, 450] and final[0] == 250
    code, codes, final = Submission(port).send("alice@example.test", rcpts=["r9@remote.example"])
    assert codes == [450] and final is None
    s.close()


# -- sendmail run by an ordinary user: the maildrop pickup charges the uid ----------------

from test_sendmail import public_sys, run_once, sendmail  # noqa: E402,F401  (root + setpriv, else skipped)


def test_maildrop_rate_per_uid_keeps_the_excess_for_later(public_sys):
    system = public_sys
    system.write_config("[submission]\nmax_messages_per_hour = 2\n")
    for i in range(3):
        proc = sendmail(system, "bob@example.test", as_nobody=True, input=f"Subject: n{i}\n\nx\n".encode())
        assert proc.returncode == 0, proc.stderr
    log = run_once(system)
    assert log.count("queued from maildrop") == 2
    assert log.count("uid=65534 (nobody): file ") == 1 and "kept: rate limit exceeded" in log
    kept = [p for p in (system.root / "maildrop").iterdir() if not p.name.startswith(".")]
    assert len(kept) == 1  # never dropped: it goes once the hour's budget allows
    assert len(system.messages("bob")) == 2
