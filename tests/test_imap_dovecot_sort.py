"""Dovecot as the oracle over the shared corpus (tests/imap_corpus.py): SORT and THREAD
commands against pyimap-imapd and Debian's Dovecot 2.3 over the same Maildir give the
same answers (documented differences aside, see pyimap-imapd(8))."""

from __future__ import annotations

import imaplib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import PASSWORD, REPO, free_port, wait_port
from imap_corpus import deliver_all, messages
from test_imap import ALICE, start_imapd
from test_imap_dovecot import DOVECOT

pytestmark = pytest.mark.skipif(
    DOVECOT is None or os.geteuid() != 0, reason="needs Debian's dovecot-imapd (and root, to hand the store to 'mail')"
)


def test_corpus_is_deterministic_and_big_enough():
    first = messages()
    assert len(first) >= 200
    assert first == messages()
    assert [idate for _d, idate in first] == sorted(idate for _d, idate in first)


@pytest.fixture
def twin_servers(mailsys):
    """(our port, Dovecot's port), both over a copy of the corpus in alice's INBOX."""
    deliver_all(mailsys.maildir("alice"))
    d = tempfile.mkdtemp(prefix="dv", dir="/tmp")  # Dovecot's unix socket paths must stay short
    os.chmod(d, 0o755)
    twin = Path(d) / "t"
    shutil.copytree(mailsys.root, twin)
    pop3, imap = free_port(), free_port()
    proc = mailsys.start(
        [sys.executable, str(REPO / "tests" / "bench" / "dovecot_side.py"), str(twin), str(pop3), str(imap)]
    )
    wait_port(imap, proc=proc)
    yield start_imapd(mailsys, "listen"), imap
    shutil.rmtree(d, ignore_errors=True)


def session(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    m.login(ALICE, PASSWORD)
    m.select("INBOX", readonly=True)
    return m


def test_corpus_numbered_alike(twin_servers):
    """Both servers give the corpus the same sequence numbers and UIDs, the ground for every comparison."""
    seen = []
    for port in twin_servers:
        m = session(port)
        typ, data = m.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK"
        seen.append([x for x in data if isinstance(x, tuple)])
        m.logout()
    assert len(seen[0]) == len(messages())
    assert seen[0] == seen[1]
