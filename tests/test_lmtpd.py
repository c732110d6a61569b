"""pymta-lmtpd (issue 15 §2b): LMTP in (RFC 2033), delivering straight into the Maildirs.

Python's smtplib.LMTP talks to a real pymta-lmtpd over TCP and over a UNIX socket, listening
(--listen) and under inetd (systemd-socket-activate --inetd: one process per connection on fd
0/1).  One transaction carries recipients with every outcome -- delivered, unknown at RCPT (550),
failing after DATA (bob's Maildir is a plain file: 451), delivered by a folder recipe, an alias of
one user (one copy for that user), an alias of several (handed to the queue) -- and after DATA
there is one reply per accepted RCPT, in order.  Each message lands exactly once.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from conftest import DOMAIN, REPO, free_port, wait_port

SENDER = "someone@elsewhere.example"


def prepare(mailsys) -> None:
    mailsys.add_user(f"carol@{DOMAIN}", "x")
    (mailsys.root / "aliases").write_text("postmaster: alice\nteam: alice, carol\n")
    (mailsys.root / "run").mkdir(exist_ok=True)
    store = mailsys.root / "mail" / DOMAIN
    store.mkdir(parents=True, exist_ok=True)
    (store / "bob").write_text("not a Maildir: every delivery to bob fails\n")
    (store / "carol").mkdir()
    (store / "carol" / ".procmailrc").write_text(":0\n* ^Subject:.*quarterly\n.Reports/\n")


def start_lmtpd(mailsys, mode: str, transport: str) -> str | tuple[str, int]:
    """Start pymta-lmtpd; return where to connect (a UNIX socket path, or host and port)."""
    prog = mailsys.program("pymta.lmtpd")
    if transport == "unix":
        path = mailsys.root / "run" / "lmtp.sock"
        if mode == "listen":
            proc = mailsys.start(prog + ["--listen", "unix:run/lmtp.sock"])
        else:
            proc = mailsys.start(
                ["systemd-socket-activate", "-l", str(path), "-E", f"PYTHONPATH={REPO}", "--inetd", "-a", *prog]
            )
        deadline = time.time() + 15
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(path))
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"lmtpd did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.05)
        return str(path)
    port = free_port()
    if mode == "listen":
        proc = mailsys.start(prog + ["--listen", f"127.0.0.1:{port}"])
    else:
        proc = mailsys.start(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={REPO}", "--inetd", "-a", *prog]
        )
    wait_port(port, proc=proc)
    return ("127.0.0.1", port)


def connect(where) -> smtplib.LMTP:
    if isinstance(where, str):
        client = smtplib.LMTP(where)
    else:
        client = smtplib.LMTP(*where)
    code, _ = client.ehlo("mta.example")  # smtplib.LMTP sends LHLO
    assert code == 250
    return client


def lmtp_send(client: smtplib.LMTP, rcpts: list[str], message: bytes) -> tuple[list, list]:
    """One transaction: the RCPT replies, then the replies after DATA (smtplib's sendmail reads only one)."""
    assert client.mail(SENDER)[0] == 250
    at_rcpt = [client.rcpt(r) for r in rcpts]
    accepted = sum(1 for code, _ in at_rcpt if code == 250)
    code, text = client.data(message)
    after = [(code, text)] + [client.getreply() for _ in range(accepted - 1)]
    return at_rcpt, after


def maildir_files(mailsys, user: str, folder: str = "") -> list:
    d = mailsys.maildir(user) / folder / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize("mode", ["listen", "inetd"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_one_reply_per_recipient_and_each_message_lands_once(mailsys, mode, transport):
    prepare(mailsys)
    where = start_lmtpd(mailsys, mode, transport)
    client = connect(where)
    rcpts = [
        f"alice@{DOMAIN}",
        f"nobody@{DOMAIN}",  # no such user: refused at RCPT
        f"bob@{DOMAIN}",  # accepted, fails after DATA
        f"carol@{DOMAIN}",  # her rules file the message into .Reports
        f"postmaster@{DOMAIN}",  # an alias of alice: she keeps one copy
        f"team@{DOMAIN}",  # several targets: queued for the runner
        "elsewhere@other.example",  # not ours
    ]
    message = b"From: someone@elsewhere.example\r\nSubject: the quarterly numbers\r\n\r\nhello\r\n.dot\r\n"
    at_rcpt, after = lmtp_send(client, rcpts, message)
    assert [code for code, _ in at_rcpt] == [250, 550, 250, 250, 250, 250, 550]
    assert b"5.1.1" in at_rcpt[1][1] and b"5.1.2" in at_rcpt[6][1]
    codes = [code for code, _ in after]
    assert codes == [250, 451, 250, 250, 250], after  # alice, bob, carol, postmaster, team
    assert after[1][1].startswith(b"4.2.0 <bob@")
    assert b"queued as" in after[4][1]

    # RFC 2033 4.1: HELO and EHLO are refused; the session goes on
    assert client.docmd("HELO", "mta.example")[0] == 500
    assert client.docmd("EHLO", "mta.example")[0] == 500
    assert client.noop()[0] == 250
    client.quit()

    inbox = maildir_files(mailsys, "alice")
    assert len(inbox) == 1, inbox  # alice and postmaster -> alice: one copy
    text = inbox[0].read_bytes()
    assert text.startswith(b"Return-Path: <someone@elsewhere.example>\nDelivered-To: alice@example.test\nReceived: ")
    assert b"with LMTP id " in text and text.endswith(b"\n\nhello\n.dot\n")
    assert maildir_files(mailsys, "carol") == []
    reports = maildir_files(mailsys, "carol", ".Reports")
    assert len(reports) == 1 and reports[0].read_bytes().endswith(b"\nhello\n.dot\n")
    queued = [p for p in (mailsys.root / "queue" / "new").iterdir()]
    assert len(queued) == 1, queued
    envelope = queued[0].read_bytes().split(b"\n", 1)[0]
    assert b'"recipients":["team@example.test"]' in envelope and b'"sender":"someone@elsewhere.example"' in envelope
    assert [p for p in (mailsys.root / "queue" / "tmp").iterdir()] == []  # the spool file was never linked


def test_several_messages_in_one_session_and_rset(mailsys):
    prepare(mailsys)
    client = connect(start_lmtpd(mailsys, "listen", "tcp"))
    for n in range(3):
        _, after = lmtp_send(
            client, [f"alice@{DOMAIN}", f"carol@{DOMAIN}"], f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode()
        )
        assert [code for code, _ in after] == [250, 250]
    assert client.mail(SENDER)[0] == 250 and client.rcpt(f"alice@{DOMAIN}")[0] == 250
    assert client.rset()[0] == 250
    client.quit()
    assert len(maildir_files(mailsys, "alice")) == 3
    assert len(maildir_files(mailsys, "carol")) == 3


def test_clients_outside_the_trusted_networks_are_refused(mailsys):
    prepare(mailsys)
    mailsys.write_config('[lmtpd]\ntrusted_networks = ["127.0.0.2/32"]\n')
    client = connect(start_lmtpd(mailsys, "listen", "tcp"))
    code, text = client.mail(SENDER)
    assert code == 554 and b"5.7.1" in text
    client.quit()
    unix = connect(start_lmtpd(mailsys, "listen", "unix"))  # a UNIX socket: its mode decides
    _, after = lmtp_send(unix, [f"alice@{DOMAIN}"], b"Subject: hi\r\n\r\nhi\r\n")
    assert [code for code, _ in after] == [250]
    unix.quit()
    assert (mailsys.root / "run" / "lmtp.sock").stat().st_mode & 0o777 == 0o666


def test_refuses_to_run_as_root_without_daemon_user(mailsys):
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root")
    mailsys.write_config('daemon_user = ""\n')
    proc = mailsys.run("pymta.lmtpd", "--listen", f"127.0.0.1:{free_port()}", timeout=30)
    assert proc.returncode == 78, proc.stderr
    assert b"refusing to run as root" in proc.stderr
