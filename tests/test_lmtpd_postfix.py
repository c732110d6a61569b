"""Debian's Postfix delivers into pymail through pymta-lmtpd (issue 15 §2b).

A private Postfix (tests/bench/postfix_side.py) takes mail by SMTP for example.test and hands it
on with ``virtual_transport = lmtp:inet:127.0.0.1:PORT`` to a listening pymta-lmtpd over the same
tree: alice gets the message in her INBOX, carol's rules file it into a folder, and bob's
delivery fails after DATA, so Postfix's lmtp(8) -- which reads one reply per recipient --
defers bob alone with pymta-lmtpd's reply while the others are delivered.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DOMAIN, MailSystem, free_port, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from postfix_side import PostfixSide  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("postfix"), reason="needs root and Debian's postfix"
)


@pytest.fixture
def tree(tls_files):
    # Postfix's own users must reach its queue under the tree: not under pytest's 0700 folders
    # (/var: Postfix's maillog_file_prefixes); PostfixSide opens the tree and its parent to them (0755), so
    # the parent is a folder of our own, never /var/tmp itself
    top = Path(tempfile.mkdtemp(prefix="pymail-lmtp-postfix-", dir="/var/tmp"))
    root = top / "tree"
    root.mkdir()
    system = MailSystem(root, tls_files)
    yield system
    system.stop_all()
    shutil.rmtree(top, ignore_errors=True)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_postfix_delivers_through_pymta_lmtpd(tree):
    tree.add_user(f"carol@{DOMAIN}", "x")
    store = tree.root / "mail" / DOMAIN
    store.mkdir(parents=True, exist_ok=True)
    (store / "bob").write_text("not a Maildir: every delivery to bob fails\n")
    (store / "carol").mkdir()
    (store / "carol" / ".procmailrc").write_text(":0\n* ^Subject:.*quarterly\n.Reports/\n")
    lmtp_port = free_port()
    proc = tree.start(tree.program("pymta.lmtpd", "--listen", f"127.0.0.1:{lmtp_port}"))
    wait_port(lmtp_port, proc=proc)

    smtp_port = free_port()
    postfix = PostfixSide(
        tree.root, smtp_port, users=("alice", "bob", "carol"), transport=f"lmtp:inet:127.0.0.1:{lmtp_port}"
    )
    postfix.start()
    try:
        wait_port(smtp_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            refused = client.sendmail(
                "someone@elsewhere.example",
                [f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"],
                b"From: someone@elsewhere.example\r\nSubject: the quarterly numbers\r\n\r\nhello from postfix\r\n",
            )
        assert refused == {}
        log = tree.root / "postfix" / "postfix.log"

        def settled() -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return text.count("relay=127.0.0.1[127.0.0.1]:") >= 3

        assert wait_for(settled), postfix.log_tail(30)
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "relay=127.0.0.1[127.0.0.1]:" in line]
        by_rcpt = {
            rcpt: [line for line in lines if f"to=<{rcpt}@{DOMAIN}>" in line] for rcpt in ("alice", "bob", "carol")
        }
        assert "status=sent" in by_rcpt["alice"][0] and "status=sent" in by_rcpt["carol"][0], lines
        assert "status=deferred" in by_rcpt["bob"][0] and "451 4.2.0 <bob@example.test>" in by_rcpt["bob"][0], lines
    finally:
        postfix.stop()

    inbox = sorted((store / "alice" / "new").iterdir())
    assert len(inbox) == 1
    body = inbox[0].read_bytes()
    assert body.startswith(b"Return-Path: <someone@elsewhere.example>\nDelivered-To: alice@example.test\n")
    assert b"with LMTP id" in body and b"(Postfix)" in body and body.endswith(b"hello from postfix\n")
    assert len(list((store / "carol" / ".Reports" / "new").iterdir())) == 1
    assert not (store / "carol" / "new").is_dir() or not list((store / "carol" / "new").iterdir())
