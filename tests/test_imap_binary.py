"""BINARY (RFC 3516), MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469) through pyimap-imapd,
exact server responses in both start modes (listen and inetd)."""

from __future__ import annotations

import imaplib
import os
import re

import pytest

from test_imap import ALICE, BOTH, exchange, login, start_imapd

B64 = (
    b"From: a@b\r\nSubject: b64\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\nAP8=\r\n"
)
QP = (
    b"From: a@b\r\nSubject: qp\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\nh=C3=A9llo =\r\nworld  \r\nx=3d\r\n"
)
UNKNOWN = b"From: a@b\r\nSubject: uu\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
BROKEN = b"From: a@b\r\nSubject: broken\r\nContent-Transfer-Encoding: base64\r\n\r\naGVs*bG8K\r\n"
MULTI = (
    b"From: a@b\r\nSubject: multi\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\npre\r\n--zz\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8K\r\n--zz\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nin=3Dner\r\n--zz\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9\r\n--zz--\r\n"
)


def command(m: imaplib.IMAP4, text: bytes) -> list[str]:
    """One command with LITERAL+ literals (``{n+}``, ``~{n+}``) sent at once; every answer line."""
    tag = m._new_tag().decode()
    m.send(tag.encode() + b" " + text + b"\r\n")
    lines = []
    while True:
        line = m.readline()
        lit = re.search(rb"\{(\d+)\}\r\n$", line)
        while lit:
            line += m.read(int(lit.group(1)))
            more = m.readline()
            line += more
            lit = re.search(rb"\{(\d+)\}\r\n$", more)
        lines.append(line.decode("utf-8", "replace").removesuffix("\r\n"))
        if line.startswith(tag.encode() + b" "):
            lines[-1] = lines[-1][len(tag) + 1 :]
            return lines


def lit(data: bytes, binary: bool = False) -> bytes:
    return (b"~" if binary else b"") + b"{%d+}\r\n" % len(data) + data


def uidvalidity(m: imaplib.IMAP4, mailbox: str = "INBOX") -> int:
    lines = exchange(m, f"STATUS {mailbox} (UIDVALIDITY)")
    return int(re.search(r"UIDVALIDITY (\d+)", lines[0]).group(1))


def spool_files(mailsys) -> list[str]:
    return os.listdir(mailsys.maildir("alice") / "tmp")


@pytest.mark.parametrize("mode", BOTH)
def test_binary_fetch(mailsys, mode):
    """RFC 3516: BINARY[section] decoded (base64, quoted-printable; 8bit as is), ~{n} when
    something was decoded or the data holds NUL, BINARY.SIZE, partial ranges, \\Seen set by
    BINARY[] but not by BINARY.PEEK[] or BINARY.SIZE, NO [UNKNOWN-CTE], invalid base64."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert "BINARY" in exchange(m, "CAPABILITY")[0].split()
    for data in (B64, QP, UNKNOWN, BROKEN, MULTI):
        assert m.append("INBOX", None, None, data)[0] == "OK"
    exchange(m, "SELECT INBOX")
    assert exchange(m, "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1]<2.3>)") == [
        "* 1 FETCH (BINARY[1] ~{8}\r\n\x00\x01\x02\x03\x04\x05\x00\ufffd BINARY.SIZE[1] 8 "
        "BINARY[1]<2> ~{3}\r\n\x02\x03\x04)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])") == [
        "* 2 FETCH (BINARY[1] ~{18}\r\nhéllo world\r\nx=\r\n BINARY.SIZE[1] 18)",
        "OK FETCH completed",
    ]
    # the whole message: the header says binary where the body was decoded
    assert exchange(m, "FETCH 2 (BINARY.PEEK[])") == [
        "* 2 FETCH (BINARY[] ~{120}\r\nFrom: a@b\r\nSubject: qp\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\nhéllo world\r\nx=\r\n)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 5 (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.SIZE[3] BINARY.PEEK[3] BINARY.PEEK[9])") == [
        "* 5 FETCH (BINARY[1] ~{6}\r\nhello\n BINARY[2] ~{59}\r\nSubject: inner\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\nin=ner BINARY.SIZE[3] 5 BINARY[3] {5}\r\nété BINARY[9] {0}\r\n)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 5 (BINARY.PEEK[2.TEXT] BINARY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        "* 5 FETCH (BINARY[2.TEXT] ~{6}\r\nin=ner BINARY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: multi\r\n\r\n)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 1:2 (FLAGS)") == [
        "* 1 FETCH (FLAGS (\\Recent))",
        "* 2 FETCH (FLAGS (\\Recent))",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 1 (BINARY[1]<0.1>)") == [
        "* 1 FETCH (BINARY[1]<0> ~{1}\r\n\x00 FLAGS (\\Seen \\Recent))",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 3 (BINARY.PEEK[1])") == [
        "* 3 FETCH (UID 3)",
        "NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding",
    ]
    assert exchange(m, "UID FETCH 3 (BINARY.SIZE[])") == [
        "* 3 FETCH (UID 3)",
        "NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding",
    ]
    assert exchange(m, "FETCH 3 (BODY.PEEK[1])") == [
        "* 3 FETCH (BODY[1] {13}\r\nbegin 644 x\r\n)",
        "OK FETCH completed",
    ]
    # \Seen is set before the failure, and told, as Dovecot does
    assert exchange(m, "FETCH 4 (BINARY[1])") == [
        "* 4 FETCH (FLAGS (\\Seen \\Recent))",
        "NO [PARSE] Invalid data in MIME part",
    ]
    assert exchange(m, "FETCH 4 (FLAGS)") == ["* 4 FETCH (FLAGS (\\Seen \\Recent))", "OK FETCH completed"]
    assert exchange(m, "FETCH 1 (BINARY.SIZE[1]<0.2>)") == ["BAD BINARY.SIZE takes no partial range"]
    assert exchange(m, "FETCH 1 BINARY.PEEK[1]") == [
        "* 1 FETCH (BINARY[1] ~{8}\r\n\x00\x01\x02\x03\x04\x05\x00\ufffd)",
        "OK FETCH completed",
    ]
    m.logout()


@pytest.mark.parametrize("mode", BOTH)
def test_append_literal8(mailsys, mode):
    """RFC 3516 4.4: APPEND takes a literal8 (~{n}, also ~{n+}); NUL and CRLF come back
    byte for byte; a bare LF cannot be kept in a Maildir: NO [UNKNOWN-CTE], nothing stored;
    a literal8 anywhere else is BAD."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    v = uidvalidity(m)
    data = b"From: a@b\r\nSubject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\n\xff\x00\r\n"
    tag = m._new_tag()
    m.send(tag + b" APPEND INBOX (\\Seen) ~{%d}\r\n" % len(data))
    assert m.readline() == b"+ Ready for literal data\r\n"
    m.send(data + b"\r\n")
    assert m.readline() == tag + b" OK [APPENDUID %d 1] APPEND completed\r\n" % v
    assert command(m, b"APPEND INBOX " + lit(data, binary=True)) == [f"OK [APPENDUID {v} 2] APPEND completed"]
    exchange(m, "SELECT INBOX")
    assert exchange(m, "FETCH 1:2 (FLAGS BINARY.PEEK[1] RFC822.SIZE)") == [
        "* 1 FETCH (FLAGS (\\Seen \\Recent) BINARY[1] ~{8}\r\n\x00\x01\r\n\ufffd\x00\r\n RFC822.SIZE 70)",
        "* 2 FETCH (FLAGS (\\Recent) BINARY[1] ~{8}\r\n\x00\x01\r\n\ufffd\x00\r\n RFC822.SIZE 70)",
        "OK FETCH completed",
    ]
    bare = data + b"\x89PNG\n\x1a\n"
    assert command(m, b"APPEND INBOX " + lit(bare, binary=True)) == [
        "NO [UNKNOWN-CTE] Binary data with a bare LF cannot be stored here"
    ]
    assert spool_files(mailsys) == []
    assert exchange(m, "NOOP") == ["OK NOOP completed"]  # nothing was added
    # a plain literal with LF line ends is a message as before
    assert command(m, b"APPEND INBOX " + lit(b"Subject: lf\n\nx\n")) == [
        "* 3 EXISTS",
        "* 3 RECENT",
        f"OK [APPENDUID {v} 3] APPEND completed",
    ]
    assert command(m, b"SELECT " + lit(b"INBOX", binary=True))[-1].startswith("BAD ")
    m.logout()


@pytest.mark.parametrize("mode", BOTH)
def test_multiappend(mailsys, mode):
    """RFC 3502: several messages, each with its own flags and date, in one APPEND; one
    APPENDUID with the UID set; all or none: an empty message, a missing mailbox or a
    literal too big refuses the whole command and leaves no file behind."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert "MULTIAPPEND" in exchange(m, "CAPABILITY")[0].split()
    v = uidvalidity(m, "Archive")
    one, two, three = (f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode() for i in range(3))
    big = b"Subject: big\r\n\r\n" + b"x" * 100_000 + b"\r\n"  # spooled while it arrives
    assert command(
        m,
        b"APPEND Archive (\\Seen) "
        + lit(one)
        + b' (\\Flagged $Work) "02-Jan-2024 10:00:00 +0100" '
        + lit(two)
        + b" "
        + lit(three)
        + b" () "
        + lit(big),
    ) == [f"OK [APPENDUID {v} 1:4] APPEND completed"]
    exchange(m, "EXAMINE Archive")
    assert exchange(m, "FETCH 2:3 (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        "* 2 FETCH (FLAGS (\\Flagged $Work \\Recent) RFC822.SIZE 23 BODY[HEADER.FIELDS (SUBJECT)] {15}\r\n"
        "Subject: m1\r\n\r\n)",
        "* 3 FETCH (FLAGS (\\Recent) RFC822.SIZE 23 BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: m2\r\n\r\n)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 2 (INTERNALDATE)") == [
        '* 2 FETCH (INTERNALDATE "02-Jan-2024 09:00:00 +0000")',
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 4 (RFC822.SIZE)") == ["* 4 FETCH (RFC822.SIZE 100018)", "OK FETCH completed"]
    assert exchange(m, "FETCH 1 (FLAGS)") == ["* 1 FETCH (FLAGS (\\Seen \\Recent))", "OK FETCH completed"]
    # all or none
    assert command(m, b"APPEND Archive " + lit(one) + b" " + lit(big) + b" " + lit(b"")) == [
        "NO Empty messages cannot be appended"
    ]
    assert command(m, b"APPEND Nowhere " + lit(one) + b" " + lit(big)) == ["NO [TRYCREATE] Mailbox does not exist"]
    assert command(m, b"APPEND Archive " + lit(one) + b' "bad date" ' + lit(two)).pop().startswith("BAD ")
    assert command(m, b"APPEND Archive " + lit(one) + b" (\\Seen)") == ["BAD APPEND needs a message literal"]
    assert spool_files(mailsys) == []
    assert exchange(m, "STATUS Archive (MESSAGES UIDNEXT)") == [
        '* STATUS "Archive" (MESSAGES 4 UIDNEXT 5)',
        "OK STATUS completed",
    ]
    m.logout()


def test_multiappend_too_big_refuses_all(make_mailsys):
    """A literal over imapd.max_literal in the middle of a MULTIAPPEND: NO [TOOBIG] before it is
    read, and the messages before it are not kept."""
    system = make_mailsys("[imapd]\nmax_literal = 200000\n")
    port = start_imapd(system, "inetd")
    m = login(port)
    tag = m._new_tag()
    m.send(tag + b" APPEND INBOX " + lit(b"Subject: a\r\n\r\n" + b"a" * 150_000) + b" {300000}\r\n")
    assert m.readline() == tag + b" NO [TOOBIG] Literal too big\r\n"
    assert exchange(m, "STATUS INBOX (MESSAGES)") == ['* STATUS "INBOX" (MESSAGES 0)', "OK STATUS completed"]
    assert spool_files(system) == []


@pytest.mark.parametrize("mode", BOTH)
def test_catenate(mailsys, mode):
    """RFC 4469: CATENATE of TEXT literals and IMAP URLs (RFC 5092) into this user's own
    mailboxes: absolute (imap://user@host/...), server-relative (/mailbox...) and relative to
    the selected mailbox (;UID=...), with SECTION and PARTIAL; with MULTIAPPEND; any other URL
    is NO [BADURL url], and nothing is kept."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert "CATENATE" in exchange(m, "CAPABILITY")[0].split()
    v = uidvalidity(m)
    assert m.append("INBOX", None, None, MULTI)[0] == "OK"
    drafts = uidvalidity(m, "Drafts")
    head = (
        b"From: me@x\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
        b"--q\r\n\r\nsee below\r\n--q\r\n"
    )
    assert command(
        m,
        b"APPEND Drafts (\\Draft) CATENATE (TEXT "
        + lit(head)
        + f' URL "/INBOX;UIDVALIDITY={v}/;UID=1/;SECTION=2.MIME" URL "/INBOX/;UID=1/;SECTION=2"'.encode()
        + b" TEXT "
        + lit(b"\r\n--q--\r\n")
        + b")",
    ) == [f"OK [APPENDUID {drafts} 1] APPEND completed"]
    exchange(m, "SELECT Drafts")
    expected = (
        head + b"Content-Type: message/rfc822\r\n\r\n" + MULTI.split(b"message/rfc822\r\n\r\n")[1].split(b"\r\n--zz")[0]
    )
    expected += b"\r\n--q--\r\n"
    assert exchange(m, "FETCH 1 (FLAGS BODY.PEEK[] BINARY.PEEK[2.1])") == [
        f"* 1 FETCH (FLAGS (\\Draft \\Recent) BODY[] {{{len(expected)}}}\r\n{expected.decode()} "
        "BINARY[2.1] ~{6}\r\nin=ner)",
        "OK FETCH completed",
    ]
    # absolute URL of this user, partial ranges, relative to the selected mailbox, and MULTIAPPEND
    user = ALICE.replace("@", "%40")
    assert command(
        m,
        f'APPEND Drafts CATENATE (URL "imap://{user}@mx.example.test/INBOX;UIDVALIDITY={v}/;UID=1/;SECTION=HEADER"'.encode()
        + b' URL ";UID=1/;SECTION=TEXT/;PARTIAL=0.10") () '
        + lit(b"Subject: plain\r\n\r\nx\r\n")
        + b' CATENATE (URL "/INBOX/;UID=1/;PARTIAL=6.3" TEXT '
        + lit(b"")
        + b")",
    ) == ["* 4 EXISTS", "* 4 RECENT", f"OK [APPENDUID {drafts} 2:4] APPEND completed"]
    assert exchange(m, "FETCH 2:4 (BODY.PEEK[])") == [
        # INBOX's header, then the first 10 octets of Drafts' (the selected mailbox's) UID 1 text
        "* 2 FETCH (BODY[] {83}\r\nFrom: a@b\r\nSubject: multi\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        "--q\r\n\r\nsee)",
        "* 3 FETCH (BODY[] {21}\r\nSubject: plain\r\n\r\nx\r\n)",
        "* 4 FETCH (BODY[] {3}\r\na@b)",
        "OK FETCH completed",
    ]
    # BADURL, and nothing kept of the messages before it
    for url, why in [
        (f"/INBOX;UIDVALIDITY={v + 1}/;UID=1", "UIDVALIDITY does not match"),
        ("/INBOX/;UID=9", "No such message"),
        ("/Nowhere/;UID=1", "Mailbox does not exist"),
        ("imap://bob%40example.test@mx.example.test/INBOX/;UID=1", "Only this user's own messages can be used"),
        ("imap://mx.example.test/INBOX/;UID=1", "Only this user's own messages can be used"),
        ("http://example.org/x", "Invalid IMAP URL"),
        ("/INBOX/;UID=1/;SECTION=HEADER.FIELDS", "Invalid section"),
        ("/INBOX/;UID=1/;SECTION=7", "No such section"),
    ]:
        assert command(m, b"APPEND Drafts " + lit(b"Subject: a\r\n\r\n") + f' CATENATE (URL "{url}")'.encode()) == [
            f"NO [BADURL {url}] {why}"
        ], url
    assert command(m, b'APPEND Drafts CATENATE (TEXT "quoted")')[-1].startswith("BAD ")
    assert command(m, b"APPEND Drafts CATENATE ()")[-1].startswith("BAD ")
    assert command(m, b"APPEND Drafts CATENATE (TEXT " + lit(b"") + b")") == ["NO Empty messages cannot be appended"]
    assert exchange(m, "NOOP") == ["OK NOOP completed"]
    assert spool_files(mailsys) == []
    m.logout()


def test_catenate_too_big(make_mailsys):
    """RFC 4469 [TOOBIG]: the catenated message is held to imapd.max_literal, as APPEND's."""
    system = make_mailsys("[imapd]\nmax_literal = 1000\n")
    port = start_imapd(system, "listen")
    m = login(port)
    m.append("INBOX", None, None, b"Subject: s\r\n\r\n" + b"y" * 600 + b"\r\n")
    assert command(m, b'APPEND INBOX CATENATE (URL "/INBOX/;UID=1" TEXT ' + lit(b"z" * 600) + b")") == [
        "NO [TOOBIG] Message too big"
    ]
    assert command(m, b'APPEND INBOX CATENATE (URL "/INBOX/;UID=1" URL "/INBOX/;UID=1")') == [
        "NO [TOOBIG] Message too big"
    ]
    assert exchange(m, "STATUS INBOX (MESSAGES)") == ['* STATUS "INBOX" (MESSAGES 1)', "OK STATUS completed"]
    assert spool_files(system) == []
