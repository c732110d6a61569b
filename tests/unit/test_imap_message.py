"""ENVELOPE, BODYSTRUCTURE and section fetches, byte for byte (RFC 3501 examples + a multipart corpus)."""

import base64
import email
import email.policy

import pytest

from imap_helpers import Client, deliver
from pyimap.message import Headers, Part, envelope, parse_addresses, section_bytes, to_crlf


def rfc3501_message() -> bytes:
    head = (
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n"
    )
    lines = ["x" * 31] * 84 + ["y" * 30] * 8  # 92 lines, 3028 octets with CRLF
    return head.encode() + "".join(line + "\n" for line in lines).encode()


def test_rfc3501_fetch_example_envelope_and_body(tmp_path):
    """RFC 3501 7.4.2, the FETCH example (ENVELOPE and BODY exactly as printed there)."""
    deliver(tmp_path, data=rfc3501_message())
    c = Client(tmp_path)
    c.login()
    c.cmd("a SELECT INBOX")
    r = c.cmd("b FETCH 1 (ENVELOPE BODY)")
    assert r == (
        '* 1 FETCH (ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" '
        '"IMAP4rev1 WG mtg summary and minutes" '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        '(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        '((NIL NIL "imap" "cac.washington.edu")) '
        '((NIL NIL "minutes" "CNRI.Reston.VA.US")'
        '("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
        '"<B27397-0100000@cac.washington.edu>") '
        'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 3028 92))\r\n'
        "b OK FETCH completed\r\n"
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"a@b.c", [(None, None, b"a", b"b.c")]),
        (b'"Doe, John" <jd@x.org>, ann@y.org', [(b"Doe, John", None, b"jd", b"x.org"), (None, None, b"ann", b"y.org")]),
        (b"John (comment) Doe <jd@x.org>", [(b"John Doe", None, b"jd", b"x.org")]),
        (b"<@relay.net:jd@x.org>", [(None, b"@relay.net", b"jd", b"x.org")]),
        (b"undisclosed-recipients:;", [(None, None, b"undisclosed-recipients", None), (None, None, None, None)]),
        (
            b"team: a@x.org, B <b@y.org>;, c@z.org",
            [
                (None, None, b"team", None),
                (None, None, b"a", b"x.org"),
                (b"B", None, b"b", b"y.org"),
                (None, None, None, None),
                (None, None, b"c", b"z.org"),
            ],
        ),
        (b"=?UTF-8?Q?J=C3=B6rg?= <j@x.de>", [(b"=?UTF-8?Q?J=C3=B6rg?=", None, b"j", b"x.de")]),
    ],
)
def test_address_parsing(value, expected):
    assert parse_addresses(value) == expected


def test_envelope_defaults_and_nil():
    env = envelope(Headers(b"From: a@b\r\n\r\n"))
    assert env == b'(NIL NIL ((NIL NIL "a" "b")) ((NIL NIL "a" "b")) ((NIL NIL "a" "b")) NIL NIL NIL NIL NIL)'
    assert envelope(Headers(b"\r\n")) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


@pytest.mark.parametrize(
    "value, expected",
    [  # what an address lacks, as Dovecot 2.3 fills it in (a NIL host alone would start a group)
        (b"this is not an address", [(b"this is not an address", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (b'"quoted name"', [(b"quoted name", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (b"single", [(None, None, b"single", b"MISSING_DOMAIN")]),
        (b"first.last (Name)", [(b"Name", None, b"first.last", b"MISSING_DOMAIN")]),
        (b"user@", [(None, None, b"user", b"MISSING_DOMAIN")]),
        (b"@host", [(None, None, b"MISSING_MAILBOX", b"host")]),
        (b"<user>", [(None, None, b"user", b"MISSING_DOMAIN")]),
        (b"Name <>", [(b"Name", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
        (
            b"a@b, this is junk, c@d",
            [
                (None, None, b"a", b"b"),
                (b"this is junk", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
                (None, None, b"c", b"d"),
            ],
        ),
        (
            b"grp: junk words;",
            [
                (None, None, b"grp", None),
                (b"junk words", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
                (None, None, None, None),
            ],
        ),
    ],
)
def test_address_parsing_fills_in_what_is_missing(value, expected):
    assert parse_addresses(value) == expected


def test_envelope_of_a_from_that_is_no_address():
    env = envelope(Headers(b"From: this is not an address\r\nTo: <>\r\n\r\n"))
    no = b'(("this is not an address" NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'
    assert (
        env == b"(NIL NIL " + b" ".join([no] * 3) + b' ((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) NIL NIL NIL NIL)'
    )


def test_envelope_of_repeated_fields_as_dovecot():
    """The last Date, Subject, In-Reply-To and Message-ID; every address field's lists joined."""
    head = b"".join(
        b"From: a%d@x\r\nSender: s%d@x\r\nTo: t%d@x\r\nCc: c%d@x\r\nBcc: b%d@x\r\nReply-To: r%d@x\r\n"
        b"Subject: s%d\r\nDate: d%d\r\nIn-Reply-To: <i%d@x>\r\nMessage-ID: <m%d@x>\r\n" % ((n,) * 10)
        for n in (1, 2)
    )
    assert envelope(Headers(head + b"\r\n")) == (
        b'("d2" "s2" ((NIL NIL "a1" "x")(NIL NIL "a2" "x")) ((NIL NIL "s1" "x")(NIL NIL "s2" "x"))'
        b' ((NIL NIL "r1" "x")(NIL NIL "r2" "x")) ((NIL NIL "t1" "x")(NIL NIL "t2" "x"))'
        b' ((NIL NIL "c1" "x")(NIL NIL "c2" "x")) ((NIL NIL "b1" "x")(NIL NIL "b2" "x")) "<i2@x>" "<m2@x>")'
    )
    # an empty last Subject is the Subject
    assert envelope(Headers(b"Subject: one\r\nSubject:\r\n\r\n")).startswith(b'(NIL "" NIL')


def test_envelope_white_space_as_dovecot():
    """Subject and display names: runs of white space (folding, tabs) one space, none at the
    ends; Date, In-Reply-To and Message-ID unfolded, only the leading white space dropped;
    a NUL is U+FFFD (no IMAP string holds one)."""
    head = (
        b'From: "q  x" <q@x>\r\nSubject:   Folded\r\n\tsubject   with\r\n    lots   of  space  \r\n'
        b"Date:  Mon,  1 Jan 2024\r\n  00:00:00 +0000 \r\nMessage-ID:  <a  b@x> \r\n\r\n"
    )
    assert envelope(Headers(head)) == (
        b'("Mon,  1 Jan 2024  00:00:00 +0000 " "Folded subject with lots of space" (("q x" NIL "q" "x"))'
        b' (("q x" NIL "q" "x")) (("q x" NIL "q" "x")) NIL NIL NIL NIL "<a  b@x> ")'
    )
    env = envelope(Headers(b"Subject: x\x00y\r\n\r\n"))
    assert env == b"(NIL {5}\r\nx\xef\xbf\xbdy NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_search_texts_decode_the_text_parts():
    """SEARCH BODY/TEXT look in the text parts decoded (transfer encoding, charset), as Dovecot;
    TEXT also in every part's header fields; a non-text part never matches."""
    from pyimap.message import search_texts

    data = to_crlf(
        (
            "Subject: top\nContent-Type: multipart/mixed; boundary=b\n\npreamble\n"
            "--b\nContent-Type: text/plain; charset=koi8-r\nContent-Transfer-Encoding: base64\n\n"
            + base64.b64encode("Привет".encode("koi8-r")).decode()
            + "\n--b\nContent-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
            "<p>caf=E9</p>\n--b\nContent-Type: application/octet-stream\n\nsecret bytes\n"
            "--b\nContent-Type: message/rfc822\n\nSubject: =?utf-8?Q?inn=C3=A9r?=\n\nInner Body\n--b--\n"
        ).encode("latin-1")
    )
    body, text = search_texts(data)
    assert body == "привет\n<p>café</p>\ninner body"
    assert text == (
        "content-type: text/plain; charset=koi8-r\r\ncontent-transfer-encoding: base64\r\n\r\n\n"
        "content-type: text/html; charset=iso-8859-1\r\ncontent-transfer-encoding: quoted-printable\r\n\r\n\n"
        "content-type: application/octet-stream\r\n\r\n\ncontent-type: message/rfc822\r\n\r\n\n"
        "subject: innér\r\n\r\n\n" + body
    )
    # an unknown charset reads as UTF-8; broken base64 as far as it goes
    assert search_texts(b"Content-Type: text/plain; charset=x-nope\r\n\r\n\xc3\xa9t\xc3\xa9\r\n")[0] == "été\r\n"
    bad = b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8!!!\r\n"
    assert search_texts(bad)[0] == "hello"


# -- a real multipart message: mixed(alternative(plain, html), attachment, rfc822(mixed(plain, gif))) -----------

PLAIN = "Hello Bob,\n\nthe report is attached.\n"
HTML = "<p>Hello Bob,</p>\n<p>the report is attached.</p>\n"
PDF_B64 = (
    "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\n"
    "ZW5kc3RyZWFtCmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK\n"
)
INNER_TEXT = "Forwarded text.\n"
GIF_B64 = "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=\n"

CORPUS = f"""Return-Path: <alice@example.org>
From: Alice Example <alice@example.org>
To: Bob <bob@example.net>, carol@example.com
Subject: =?UTF-8?Q?Quarterly_r=C3=A9port?=
Date: Tue, 02 Jan 2024 10:00:00 +0100
Message-ID: <m1@example.org>
In-Reply-To: <m0@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 7bit

{PLAIN}
--alt
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{HTML}
--alt--

--outer
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64
Content-ID: <pdf1@example.org>
Content-Description: The report
Content-Language: en, de

{PDF_B64}
--outer
Content-Type: message/rfc822

From: Dave <dave@example.org>
Subject: inner
Content-Type: multipart/mixed; boundary=in

--in
Content-Type: text/plain

{INNER_TEXT}
--in
Content-Type: image/gif
Content-Transfer-Encoding: base64

{GIF_B64}
--in--

--outer--
Epilogue.
"""


def crlf(s: str) -> bytes:
    return s.replace("\n", "\r\n").encode()


def test_corpus_structure_independently_checked():
    data = to_crlf(CORPUS.encode())
    root = Part(data)
    # Sections agree with the stdlib email parser's view of the same message.
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    assert section_bytes(root, [1, 1], "", []) == crlf(PLAIN)
    assert section_bytes(root, [1, 1], "", []) == leaves[0].get_payload().encode()
    assert section_bytes(root, [1, 2], "", []) == crlf(HTML)
    assert section_bytes(root, [2], "", []) == crlf(PDF_B64)
    assert section_bytes(root, [3, 1], "", []) == crlf(INNER_TEXT)
    assert section_bytes(root, [3, 2], "", []) == crlf(GIF_B64)
    assert section_bytes(root, [3, "HEADER"][:1], "HEADER", []) == crlf(
        "From: Dave <dave@example.org>\nSubject: inner\nContent-Type: multipart/mixed; boundary=in\n\n"
    )
    assert section_bytes(root, [2], "MIME", []).startswith(b"Content-Type: application/pdf;")
    assert section_bytes(root, [2], "MIME", []).endswith(b"Content-Language: en, de\r\n\r\n")
    assert section_bytes(root, [3], "TEXT", []).startswith(b"--in\r\n")
    assert section_bytes(root, [9], "", []) is None
    assert section_bytes(root, [1, 1, 1], "", []) == crlf(PLAIN)  # as Dovecot: a leaf in a multipart is its own part 1
    single = Part(b"Subject: x\r\n\r\nbody\r\n")
    assert section_bytes(single, [1], "", []) == b"body\r\n"  # but a single-part message's body is part 1
    assert section_bytes(single, [1, 1], "", []) is None


def test_corpus_bodystructure_exact():
    root = Part(to_crlf(CORPUS.encode()))
    plain, html, pdf, inner_text, gif = (len(crlf(x)) for x in (PLAIN, HTML, PDF_B64, INNER_TEXT, GIF_B64))
    inner_msg = crlf(f"""From: Dave <dave@example.org>
Subject: inner
Content-Type: multipart/mixed; boundary=in

--in
Content-Type: text/plain

{INNER_TEXT}
--in
Content-Type: image/gif
Content-Transfer-Encoding: base64

{GIF_B64}
--in--
""")
    inner_env = (
        '(NIL "inner" (("Dave" NIL "dave" "example.org")) (("Dave" NIL "dave" "example.org")) '
        '(("Dave" NIL "dave" "example.org")) NIL NIL NIL NIL NIL)'
    )
    inner_lines = inner_msg.count(b"\n")
    expected = (
        f'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" {plain} 3 NIL NIL NIL NIL)'
        f'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" {html} 2 NIL NIL NIL NIL) "alternative" '
        '("boundary" "alt") NIL NIL NIL)'
        f'("application" "pdf" ("name" "report.pdf") "<pdf1@example.org>" "The report" "base64" {pdf} NIL '
        '("attachment" ("filename" "report.pdf")) ("en" "de") NIL)'
        f'("message" "rfc822" NIL NIL NIL "7bit" {len(inner_msg)} {inner_env} '
        f'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" {inner_text} 1 NIL NIL NIL NIL)'
        f'("image" "gif" NIL NIL NIL "base64" {gif} NIL NIL NIL NIL) "mixed" ("boundary" "in") NIL NIL NIL) '
        f'{inner_lines} NIL NIL NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert root.structure(True).decode() == expected
    # BODY (no extension data)
    body = root.structure(False).decode()
    assert body.startswith(f'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" {plain} 3)')
    assert body.endswith('"mixed")')


def test_corpus_over_the_protocol(tmp_path):
    deliver(tmp_path, data=CORPUS.encode())
    c = Client(tmp_path)
    c.login()
    c.cmd("a SELECT INBOX")
    r = c.send(
        b"b FETCH 1 (BODY.PEEK[1.2] BODY.PEEK[3.2]<4.10> BODY.PEEK[3.HEADER.FIELDS (SUBJECT)] BODY.PEEK[2.MIME])\r\n"
    )
    html = crlf(HTML)
    mime = crlf(
        'Content-Type: application/pdf; name="report.pdf"\nContent-Disposition: attachment; '
        'filename="report.pdf"\nContent-Transfer-Encoding: base64\nContent-ID: <pdf1@example.org>\n'
        "Content-Description: The report\nContent-Language: en, de\n\n"
    )
    assert r == (
        b"* 1 FETCH (BODY[1.2] {%d}\r\n" % len(html)
        + html
        + b" BODY[3.2]<4> {10}\r\n"
        + crlf(GIF_B64)[4:14]
        + b" BODY[3.HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: inner\r\n\r\n"
        b" BODY[2.MIME] {%d}\r\n" % len(mime) + mime + b")\r\nb OK FETCH completed\r\n"
    )
    r = c.cmd("c FETCH 1 ENVELOPE")
    assert r == (
        '* 1 FETCH (ENVELOPE ("Tue, 02 Jan 2024 10:00:00 +0100" "=?UTF-8?Q?Quarterly_r=C3=A9port?=" '
        '(("Alice Example" NIL "alice" "example.org")) (("Alice Example" NIL "alice" "example.org")) '
        '(("Alice Example" NIL "alice" "example.org")) (("Bob" NIL "bob" "example.net")'
        '(NIL NIL "carol" "example.com")) NIL NIL "<m0@example.org>" "<m1@example.org>"))\r\n'
        "c OK FETCH completed\r\n"
    )
    full = to_crlf(CORPUS.encode())
    r = c.send(b"d FETCH 1 BODY.PEEK[]\r\n")
    assert r == b"* 1 FETCH (BODY[] {%d}\r\n" % len(full) + full + b")\r\nd OK FETCH completed\r\n"
    r = c.send(b"e FETCH 1 BODY.PEEK[TEXT]<0.44>\r\n")
    assert (
        r
        == b"* 1 FETCH (BODY[TEXT]<0> {44}\r\nThis is a multi-part message in MIME format.)\r\ne OK FETCH completed\r\n"
    )


def test_deep_nesting_is_capped():
    data = b""
    for i in range(200):
        data = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) + data + b"\r\n--b%d--\r\n" % i
    data = b"Content-Type: text/plain\r\n\r\nleaf\r\n" if not data else data
    root = Part(data)
    s = root.structure(True)
    assert s.count(b"(") < 200 * 10 and b"application" in s


def test_large_message_streams(tmp_path):
    body = (b"0123456789" * 10 + b"\n") * 5000  # ~500 KB
    deliver(tmp_path, data=b"Subject: big\n\n" + body)
    c = Client(tmp_path)
    c.login()
    c.cmd("a SELECT INBOX")
    r = c.send(b"b FETCH 1 BODY.PEEK[]\r\n")
    full = to_crlf(b"Subject: big\n\n" + body)
    assert r == b"* 1 FETCH (BODY[] {%d}\r\n" % len(full) + full + b")\r\nb OK FETCH completed\r\n"
    r = c.send(b"c FETCH 1 RFC822.SIZE\r\n")
    assert r == b"* 1 FETCH (RFC822.SIZE %d)\r\nc OK FETCH completed\r\n" % len(full)
