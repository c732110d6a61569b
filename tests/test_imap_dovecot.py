"""Dovecot as the oracle: the same messages through pyimap-imapd and Dovecot 2.3 give byte-identical
BODYSTRUCTURE, ENVELOPE and section fetches (skipped when Debian's dovecot-imapd is absent)."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import sys

import pytest

from conftest import PASSWORD, REPO, free_port, wait_port
from test_imap import ADDRESS_MESSAGES, ADDRESS_SEARCHES, ALICE, exchange, start_imapd

sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_imap_message import CORPUS, rfc3501_message  # noqa: E402

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
pytestmark = pytest.mark.skipif(
    DOVECOT is None or os.geteuid() != 0, reason="needs Debian's dovecot-imapd (and root, to hand the store to 'mail')"
)

MESSAGES = [
    CORPUS.encode(),
    rfc3501_message(),
    b"From: a@b\nSubject: plain\n\nhello\nworld",
    b'From: "Q, X" <q@x.org>\nTo: undisclosed-recipients:;\nCc: team: a@x.org, B <b@y.org>;\nSubject: groups\n'
    b'Content-Type: text/plain; charset="ISO-8859-1"; format=flowed\nContent-Transfer-Encoding: quoted-printable\n'
    b"Content-Disposition: inline\n\nbody =E9\n",
    b"Subject: digest\nContent-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nfirst\n--d\n"
    b"Content-Type: text/plain\n\nsecond\n--d--\n",
    b"Subject: empty multipart\nContent-Type: multipart/mixed; boundary=zz\n\nno parts here\n",
    b"Subject: html only\nContent-Type: text/html\nContent-Language: en\nContent-Location: http://x/y\n"
    b"Content-MD5: abc\n\n<p>x</p>\n",
    b"Reply-To: r@x.org\nSender: s@x.org\nIn-Reply-To: <a@b>\nBcc: hidden@x.org\nSubject: =?ISO-8859-1?Q?caf=E9?=\n"
    b'Content-Type: multipart/alternative; boundary="b 1"\n\n--b 1\nContent-Type: text/plain; charset=utf-8\n\n'
    b"\xc3\xa9t\xc3\xa9\n--b 1\nContent-Type: text/html\n\n<b>x</b>\n--b 1--\n",
    # personal names from comments when there is no display name (ENVELOPE)
    b"From: user@domain (Real Name)\nTo: a@b (c1) (c2), <user-to (comment)@ (comment) domain.org>, u3@d (o (n) x)\n"
    b'Cc: "" <u5@d> (c5), u6@d (a\\) b), u7@d (), grp: u10@d (c10);\nSubject: comments\n\nx\n',
] + ADDRESS_MESSAGES
ITEMS = [
    "BODYSTRUCTURE",
    "ENVELOPE",
    "BODY",
    "RFC822.SIZE",
    "BODY.PEEK[HEADER]",
    "BODY.PEEK[TEXT]",
    "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]",
    "BODY.PEEK[2]",
    "BODY.PEEK[1.1]",
    "BODY.PEEK[1.2]",
    "BODY.PEEK[3.HEADER]",
    "BODY.PEEK[3.TEXT]",
    "BODY.PEEK[3.1]",
    "BODY.PEEK[3.2]",
    "BODY.PEEK[3.2.MIME]",
    "BODY.PEEK[HEADER.FIELDS (SUBJECT TO)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT TO)]",
    "BODY.PEEK[]<5.20>",
    "BODY.PEEK[1]<3.4>",
    "BODY.PEEK[]",
]


ESEARCHES = [  # RFC 4731
    ("SEARCH", "RETURN (MIN MAX COUNT ALL) ALL"),
    ("SEARCH", "RETURN () 2:*"),
    ("SEARCH", "RETURN (COUNT) DELETED"),
    ("SEARCH", "RETURN (MIN ALL) DELETED"),
    ("UID", "SEARCH RETURN (MAX MIN COUNT) 1:3"),
    ("UID", "SEARCH RETURN (ALL) NOT 2"),
]


def grab(port: int) -> dict:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    m.login(ALICE, PASSWORD)
    m.select("INBOX", readonly=True)
    out = {}
    for item in ITEMS:
        typ, data = m.fetch("1:*", f"({item})")
        assert typ == "OK", (item, data)
        out[item] = data
    for key in ADDRESS_SEARCHES:
        if key.isascii():
            out[key] = m.search(None, key)
    for cmd, rest in ESEARCHES:
        typ, _ = m._simple_command(cmd, rest)
        got = [re.sub(rb'^\(TAG "[^"]*"\)', b"(TAG)", x) for x in m.untagged_responses.pop("ESEARCH", [])]
        out[f"{cmd} {rest}"] = (typ, got)
    m.logout()
    return out


@pytest.fixture
def short_dir():
    import tempfile

    d = tempfile.mkdtemp(prefix="dv", dir="/tmp")  # Dovecot's unix socket paths must stay short
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_same_answers_as_dovecot(mailsys, short_dir):
    from pathlib import Path

    from pymda import maildir

    for data in MESSAGES:
        maildir.deliver(mailsys.maildir("alice"), data, fsync=False)
    twin = Path(short_dir) / "t"
    shutil.copytree(mailsys.root, twin)
    os.chmod(twin, 0o755)
    os.chmod(twin / "users", 0o644)
    pop3, imap = free_port(), free_port()
    proc = mailsys.start(
        [sys.executable, str(REPO / "tests" / "bench" / "dovecot_side.py"), str(twin), str(pop3), str(imap)]
    )
    wait_port(imap, proc=proc)
    port = start_imapd(mailsys, "listen")
    ours, theirs = grab(port), grab(imap)
    for item in ours:
        a, b = ours[item], theirs[item]
        if item == "BODY":
            # Dovecot lowercases type/subtype/parameters in BODY (not in BODYSTRUCTURE); we keep the
            # message's own spelling, as in RFC 3501's own example.
            a = [x.lower() if isinstance(x, bytes) else x for x in a]
            b = [x.lower() if isinstance(x, bytes) else x for x in b]
        assert a == b, item


def test_fetch_of_an_expunged_message_like_dovecot(mailsys, short_dir):
    """RFC 2180 4.1.2: another session expunged message 2; a FETCH of its text answers NIL
    and OK [EXPUNGEISSUED] (RFC 5530), in Dovecot 2.3 as here."""
    from pathlib import Path

    from pymda import maildir

    for data in MESSAGES[2:5]:
        maildir.deliver(mailsys.maildir("alice"), data, fsync=False)
    twin = Path(short_dir) / "t"
    shutil.copytree(mailsys.root, twin)
    os.chmod(twin, 0o755)
    os.chmod(twin / "users", 0o644)
    pop3, imap = free_port(), free_port()
    proc = mailsys.start(
        [sys.executable, str(REPO / "tests" / "bench" / "dovecot_side.py"), str(twin), str(pop3), str(imap)]
    )
    wait_port(imap, proc=proc)
    answers = []
    for port in (start_imapd(mailsys, "listen"), imap):
        a, b = imaplib.IMAP4("127.0.0.1", port, timeout=30), imaplib.IMAP4("127.0.0.1", port, timeout=30)
        a.login(ALICE, PASSWORD)
        b.login(ALICE, PASSWORD)
        a.select("INBOX")
        b.select("INBOX")
        b.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        b.expunge()
        lines = exchange(a, "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[] RFC822.HEADER BODY)")
        lines[-1] = lines[-1].split(" (")[0]  # Dovecot adds its timings: "(0.001 + 0.000 secs)."
        lines[-1] = lines[-1].removesuffix(" Some messages were already expunged")
        # Dovecot also tells the flag change it saw before the expunge: not ours to compare
        answers.append([line for line in lines if not line.endswith(" FETCH (FLAGS (\\Deleted \\Recent))")])
    assert (
        answers[0]
        == answers[1]
        == [
            '* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] NIL BODY[] NIL RFC822.HEADER NIL BODY ("text" "plain" NIL NIL NIL'
            ' "7bit" 0 0))',
            "OK [EXPUNGEISSUED]",
        ]
    )
