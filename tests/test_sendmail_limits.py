"""sendmail and the maildrop pickup against smtpd.max_message_size and smtpd.max_recipients.

sendmail refuses what it can check itself (size, recipient count, address
syntax) with a sysexits code and one line on stderr; what the runner's
pickup refuses later (a maildrop file written or grown by hand) bounces
to the submitting user.  Nothing is dropped in silence.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from conftest import PASSWORD, env_with_repo
from test_sendmail import SETPRIV, entries, public_sys, run_once, sendmail  # noqa: F401 (public_sys: fixture)

LIMITS = "[smtpd]\nmax_message_size = 10000\nmax_recipients = 3\n"
NOBODY = 65534


def real_files(folder) -> list:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


# -- the reading helper ------------------------------------------------------------------


class Endless(io.RawIOBase):
    """A stream that never ends (a runaway script, a FIFO); counts what was taken from it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        buf[:] = b"x" * len(buf)
        self.served += len(buf)
        return len(buf)


def test_read_at_most_stops_one_byte_past_the_limit_of_endless_input():
    from pymta.lib.sizelimit import TooBig, read_at_most

    stream = Endless()
    with pytest.raises(TooBig):
        read_at_most(stream, 100_000)
    assert stream.served == 100_001
    assert read_at_most(io.BytesIO(b"y" * 100_000), 100_000) == b"y" * 100_000


def test_read_at_most_counts_a_file_that_grows_after_its_size_was_taken(tmp_path):
    from pymta.lib.sizelimit import TooBig, read_at_most

    path = tmp_path / "drop"
    path.write_bytes(b"small\n")
    with open(path, "rb") as fh:
        assert os.fstat(fh.fileno()).st_size < 1000  # what the old check looked at
        with open(path, "ab") as grow:
            grow.write(b"z" * 50_000)
        with pytest.raises(TooBig):
            read_at_most(fh, 1000)
        assert fh.tell() <= 1001


def test_sendmail_read_message_stops_reading_endless_stdin_at_the_limit():
    from pymta.lib.sizelimit import TooBig
    from pymta.sendmail import read_message

    stream = Endless()
    with pytest.raises(TooBig):
        read_message(io.BufferedReader(stream), dot_ends=True, limit=200_000)
    assert stream.served < 200_000 + 2 * 65536
    # the dot still ends the message, even one split across reads
    assert (
        read_message(io.BufferedReader(io.BytesIO(b"a\r\n" * 30000 + b".\r\nafter\n")), True, 100_000) == b"a\n" * 30000
    )


# -- sendmail ----------------------------------------------------------------------------------


def test_sendmail_refuses_a_message_over_the_size_limit_without_reading_it_all(mailsys):
    mailsys.write_config(LIMITS)
    proc = sendmail(mailsys, "bob@example.test", input=b"Subject: big\n\n" + b"x" * 20000 + b"\n")
    assert proc.returncode == 69, proc.stderr  # EX_UNAVAILABLE, Postfix's "message file too big"
    assert proc.stderr == b"sendmail: fatal: message file too big (smtpd.max_message_size is 10000 octets)\n"
    # endless input: sendmail stops reading at the limit and exits (it used to read until EOF)
    yes = subprocess.Popen(["yes", "a line of a runaway script"], stdout=subprocess.PIPE)
    try:
        argv = [sys.executable, "-m", "pymta.sendmail", "-C", str(mailsys.config), "-i", "bob@example.test"]
        proc = subprocess.run(argv, stdin=yes.stdout, capture_output=True, timeout=30, env=env_with_repo())
    finally:
        yes.stdout.close()
        yes.kill()
        yes.wait()
    assert proc.returncode == 69 and b"message file too big" in proc.stderr
    # the header fields sendmail adds count too
    proc = sendmail(mailsys, "bob@example.test", input=b"x" * 9990 + b"\n")
    assert proc.returncode == 69 and b"message file too big" in proc.stderr
    assert not entries(mailsys)


def test_sendmail_refuses_too_many_recipients_and_bad_addresses(mailsys):
    mailsys.write_config(LIMITS)
    rcpts = [f"bob+{n}@example.test" for n in range(4)]
    proc = sendmail(mailsys, *rcpts, input=b"Subject: many\n\nx\n")
    assert proc.returncode == 69, proc.stderr
    assert proc.stderr == b"sendmail: fatal: too many recipients (4; smtpd.max_recipients is 3)\n"
    proc = sendmail(
        mailsys, "-t", input=b"To: a@example.test, b@example.test\nCc: c@example.test, d@example.test\n\nx\n"
    )
    assert proc.returncode == 69 and b"too many recipients" in proc.stderr
    proc = sendmail(mailsys, "-t", input=b"To: bob@example.test, broken@\n\nx\n")
    assert (
        proc.returncode == 65 and b"cannot read the recipient addresses in 'bob@example.test, broken@'" in proc.stderr
    )
    proc = sendmail(mailsys, "-t", input=b"To: bob@example.test, a@b c@d\n\nx\n")
    assert proc.returncode == 65 and b"cannot read the recipient addresses" in proc.stderr
    # an empty group is no error
    proc = sendmail(mailsys, "-t", "bob@example.test", input=b"To: undisclosed-recipients:;\n\nx\n")
    assert proc.returncode == 0, proc.stderr
    assert [e["recipients"] for e, _ in entries(mailsys)] == [["bob@example.test"]]
    os.unlink(next((mailsys.root / "queue" / "new").iterdir()))
    assert not entries(mailsys)
    # at the limit: queued
    assert sendmail(mailsys, *rcpts[:3], input=b"Subject: three\n\nx\n").returncode == 0
    assert len(entries(mailsys)) == 1


def test_unprivileged_sendmail_refuses_what_the_runner_would_drop(public_sys):
    system = public_sys
    system.write_config(LIMITS)
    proc = sendmail(system, "bob@example.test", as_nobody=True, input=b"Subject: big\n\n" + b"x" * 20000 + b"\n")
    assert proc.returncode == 69 and b"message file too big" in proc.stderr  # it used to exit 0
    proc = sendmail(
        system,
        "a@example.test",
        "b@example.test",
        "c@example.test",
        "d@example.test",
        as_nobody=True,
        input=b"Subject: many\n\nx\n",
    )
    assert proc.returncode == 69 and b"too many recipients" in proc.stderr
    assert not real_files(system.root / "maildrop")
    assert not entries(system)


# -- the maildrop pickup --------------------------------------------------------------------


def drop_by_hand(system, recipients, message: bytes, sender="nobody@example.test"):
    """A maildrop file owned by nobody, as a user can write one without sendmail."""
    from pymta.maildrop import MaildropQueue

    MaildropQueue(system.root / "maildrop").enqueue(sender, recipients, message, {"service": "sendmail"})
    [path] = real_files(system.root / "maildrop")
    os.chown(path, NOBODY, NOBODY)
    return path


def bounce_to_nobody(system) -> bytes:
    [dsn] = system.messages("nobody")
    return dsn.read_bytes()


def test_maildrop_with_more_recipients_than_max_recipients_is_refused_with_a_bounce(public_sys):
    system = public_sys
    system.write_config(LIMITS)
    system.add_user("nobody@example.test", PASSWORD)
    drop_by_hand(system, [f"bob+{n}@example.test" for n in range(1000)], b"Subject: a thousand copies\n\nx\n")
    log = run_once(system)
    assert "uid=65534 (nobody): file" in log and "refused: 5.5.3 too many recipients (1000" in log
    assert not system.messages("bob")  # it used to make 1,000 copies
    dsn = bounce_to_nobody(system)
    assert b"Subject: Undelivered Mail Returned to Sender" in dsn
    assert b"Status: 5.5.3" in dsn and b"Subject: a thousand copies" in dsn
    assert not real_files(system.root / "maildrop")


def test_maildrop_file_grown_after_the_size_check_is_refused_at_the_real_limit(public_sys, monkeypatch):
    """The race: the owner grows the file between the runner's fstat and its read."""
    from pymta.lib import config
    from pymta.maildrop import pickup as pickup_maildrop
    from pymta.queue import Queue

    system = public_sys
    system.write_config(LIMITS)
    path = drop_by_hand(system, ["bob@example.test"], b"Subject: small at first\n\nx\n")
    real_fstat = os.fstat
    inode = os.stat(path).st_ino
    grown = []

    def fstat_then_grow(fd):
        st = real_fstat(fd)
        if not grown and st.st_ino == inode:
            with open(path, "ab") as fh:  # what the user does right after the runner looked
                fh.write(b"y" * 60_000 + b"\n")
            grown.append(True)
        return st

    monkeypatch.setattr(os, "fstat", fstat_then_grow)
    queue = Queue(system.root / "queue")
    assert pickup_maildrop(config.load(str(system.config)), queue, system.root / "maildrop") == 0
    monkeypatch.undo()
    assert grown
    [(env, body)] = entries(system)  # only the bounce, never the grown message
    assert env["sender"] == "" and env["recipients"] == ["nobody@example.test"]
    assert b"Status: 5.3.4" in body and b"message file too big" in body and b"yyyy" not in body
    assert not real_files(system.root / "maildrop")


def test_maildrop_bounce_never_goes_to_a_made_up_sender(public_sys):
    system = public_sys
    system.write_config(LIMITS)
    system.add_user("nobody@example.test", PASSWORD)
    drop_by_hand(system, ["bob@example.test"], b"Subject: big\n\n" + b"x" * 20000 + b"\n", sender="victim@remote.test")
    log = run_once(system)
    assert "refused: 5.3.4 message file too big" in log
    assert not system.messages("bob")
    dsn = bounce_to_nobody(system)  # to the user who dropped it, not to victim@remote.test
    assert b"To: <nobody@example.test>" in dsn and b"Status: 5.3.4" in dsn
    assert not [e for e, _ in entries(system) if "victim@remote.test" in e["recipients"]]
