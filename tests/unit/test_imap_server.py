"""Transcript tests of the sans-I/O IMAP machine over a real Maildir in tmp_path."""

import base64
import os
import re

import pytest

from imap_helpers import Client, deliver, make_message, strip_uidvalidity
from pyimap.imap_server import IMAPSettings


@pytest.fixture
def c(tmp_path):
    return Client(tmp_path)


def uv(c):
    return c.server.sel.uidvalidity


# -- any state, not authenticated ----------------------------------------------------------


def test_greeting_and_capability(tmp_path):
    c = Client(tmp_path, tls_available=True, plaintext_ok=False)
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    r = c.cmd("a CAPABILITY")
    caps = r.split("\r\n")[0].split()[2:]
    for cap in (
        "IMAP4rev1",
        "STARTTLS",
        "LOGINDISABLED",
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "LITERAL+",
        "NAMESPACE",
        "ID",
        "ENABLE",
        "UNSELECT",
        "CHILDREN",
        "SPECIAL-USE",
        "SASL-IR",
        "CONDSTORE",
        "QRESYNC",
        "ESEARCH",
        "SEARCHRES",
        "STATUS=SIZE",
        "CREATE-SPECIAL-USE",
    ):
        assert cap in caps
    assert "AUTH=PLAIN" not in caps
    assert r.endswith("a OK CAPABILITY completed\r\n")


def test_login_refused_before_tls_then_allowed_after(tmp_path):
    c = Client(tmp_path, tls_available=True, plaintext_ok=False)
    assert (
        c.cmd("a LOGIN alice pw")
        == "a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections\r\n"
    )
    assert c.cmd("b AUTHENTICATE PLAIN").startswith("b NO [PRIVACYREQUIRED]")
    assert c.backend.logins == []
    r = c.cmd("c STARTTLS")
    assert r == "c OK Begin TLS negotiation now\r\n" and c.starttls
    from pymta.lib.sansio import ConnectionInfo

    c._run(c.server.tls_started(ConnectionInfo(peer_ip="127.0.0.1", tls=True)))
    caps = c.cmd("d CAPABILITY")
    assert "STARTTLS" not in caps and "AUTH=PLAIN" in caps and "LOGINDISABLED" not in caps
    assert "e OK [CAPABILITY" in c.cmd("e LOGIN alice pw")


def test_commands_pipelined_behind_starttls_are_dropped(tmp_path):  # CVE-2011-0411
    c = Client(tmp_path, tls_available=True, plaintext_ok=False)
    r = c.send(b"a STARTTLS\r\nb LOGIN alice pw\r\n")
    assert r == b"a OK Begin TLS negotiation now\r\n"
    from pymta.lib.sansio import ConnectionInfo

    assert c._run(c.server.tls_started(ConnectionInfo(tls=True))) == b""
    assert c.backend.logins == []


def test_login_failure_and_success(c):
    assert c.cmd("a LOGIN alice wrong") == "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    r = c.cmd('b LOGIN "alice" {2}')
    assert r == "+ Ready for literal data\r\n"
    r = c.cmd("pw")
    assert r.startswith("b OK [CAPABILITY IMAP4rev1") and r.endswith("Logged in\r\n")
    assert c.cmd("c LOGIN alice pw") == "c BAD Command LOGIN not valid in this state\r\n"


def test_authenticate_plain_with_and_without_initial_response(tmp_path):
    c = Client(tmp_path)
    ir = base64.b64encode(b"\x00alice\x00pw").decode()
    assert "a OK [CAPABILITY" in c.cmd(f"a AUTHENTICATE PLAIN {ir}")
    c2 = Client(tmp_path)
    assert c2.cmd("a AUTHENTICATE PLAIN") == "+ \r\n"
    assert "a OK" in c2.cmd(ir)
    c3 = Client(tmp_path)
    c3.cmd("a AUTHENTICATE PLAIN")
    assert c3.cmd("*") == "a BAD AUTHENTICATE cancelled\r\n"
    assert c3.cmd("b AUTHENTICATE PLAIN !!!") == "b BAD Invalid base64 data\r\n"
    bad = base64.b64encode(b"bob\x00alice\x00pw").decode()
    assert c3.cmd(f"c AUTHENTICATE PLAIN {bad}").startswith("c NO [AUTHORIZATIONFAILED]")
    assert c3.cmd("d AUTHENTICATE CRAM-MD5") == "d NO Unsupported authentication mechanism\r\n"


def test_noop_logout_and_unknown(c):
    assert c.cmd("a NOOP") == "a OK NOOP completed\r\n"
    assert c.cmd("b FOO") == "b BAD Unknown command\r\n"
    assert c.cmd("c SELECT INBOX") == "c BAD Command SELECT not valid in this state\r\n"
    assert c.cmd("d LOGOUT") == "* BYE Logging out\r\nd OK LOGOUT completed\r\n"
    assert c.closed


def test_bad_syntax_never_raises(c):
    c.login()
    for line in [
        "a SELECT",
        'a SELECT "x',
        "a FETCH",
        "a LIST",
        "a STORE 1 FLAGS",
        "a UID",
        "a UID FOO 1",
        "+ NOOP",
        "a SEARCH (",
        "a APPEND",
        "a STATUS INBOX",
        "a STATUS INBOX (FOO)",
    ]:
        r = c.cmd(line)
        assert re.match(r"^(\S+ (BAD|NO) .*\r\n|\* BAD .*\r\n)$", r), (line, r)


def test_too_many_errors_close_the_session(c):
    for i in range(25):
        r = c.cmd(f"a{i} FOO")
        if c.closed:
            break
    assert c.closed and "* BYE Too many invalid commands" in r


def test_login_timeout_and_autologout(c):
    assert c.server.timeout == 60.0
    c.login()
    assert c.server.timeout == 1800.0
    assert c.timeout() == b"* BYE Autologout; idle for too long\r\n" and c.closed


# -- authenticated -------------------------------------------------------------------------


def test_new_user_gets_special_use_folders(c, tmp_path):
    c.login()
    r = c.cmd('a LIST "" "*"')
    assert r == (
        '* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
        '* LIST (\\HasNoChildren \\Archive) "/" "Archive"\r\n'
        '* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
        '* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
        '* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        '* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
        "a OK LIST completed\r\n"
    )
    assert (tmp_path / "alice" / ".Sent" / "maildirfolder").exists()
    assert c.cmd('b LIST "" ""') == '* LIST (\\Noselect) "/" ""\r\nb OK LIST completed\r\n'


def test_create_list_children_rename_delete(c, tmp_path):
    c.login()
    assert c.cmd("a CREATE Lists/python/") == "a OK CREATE completed\r\n"
    assert (tmp_path / "alice" / ".Lists.python" / "cur").is_dir()
    assert c.cmd("b CREATE Lists/python") == "b NO [ALREADYEXISTS] Mailbox already exists\r\n"
    assert c.cmd('c LIST "" "Lists*"') == (
        '* LIST (\\Noselect \\HasChildren) "/" "Lists"\r\n'
        '* LIST (\\HasNoChildren) "/" "Lists/python"\r\n'
        "c OK LIST completed\r\n"
    )
    assert c.cmd('c LIST "" "%"').count("Lists") == 1
    assert c.cmd('c LIST "Lists/" "%"') == '* LIST (\\HasNoChildren) "/" "Lists/python"\r\nc OK LIST completed\r\n'
    assert c.cmd("d RENAME Lists/python Lists/py") == "d OK RENAME completed\r\n"
    assert (tmp_path / "alice" / ".Lists.py").is_dir()
    assert c.cmd("e DELETE Lists/python") == "e NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert c.cmd("f DELETE Lists/py") == "f OK DELETE completed\r\n"
    assert c.cmd("g DELETE INBOX") == "g NO [CANNOT] INBOX cannot be deleted\r\n"
    assert c.cmd("h CREATE INBOX") == "h NO [ALREADYEXISTS] INBOX already exists\r\n"


@pytest.mark.parametrize("name", ["..", "../x", "/etc/passwd", "a/../../b", '"a\\\\b"', "~root", "&AC4-&AC4-"])
def test_unsafe_mailbox_names_get_no(c, tmp_path, name):
    c.login()
    r = c.cmd(f"a CREATE {name}")
    assert r.startswith("a NO "), r
    assert c.cmd(f"b SELECT {name}").startswith("b NO ")
    assert sorted(p.name for p in (tmp_path / "alice").iterdir() if p.name.startswith(".")) == [
        ".Archive",
        ".Drafts",
        ".Junk",
        ".Sent",
        ".Trash",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice"]


def test_international_names_on_the_wire_and_disk(c, tmp_path):
    c.login()
    assert c.cmd("a CREATE Entw&APw-rfe") == "a OK CREATE completed\r\n"
    assert c.cmd("a CREATE a&-b.c") == "a OK CREATE completed\r\n"
    assert (tmp_path / "alice" / ".Entw&APw-rfe").is_dir()
    assert (tmp_path / "alice" / ".a&-b&AC4-c").is_dir()
    r = c.cmd('b LIST "" "*"')
    assert '"Entw&APw-rfe"' in r and '"a&-b.c"' in r


def test_subscribe_lsub(c):
    c.login()
    c.cmd("a CREATE x/y")
    assert c.cmd("a SUBSCRIBE x/y") == "a OK SUBSCRIBE completed\r\n"
    assert c.cmd('b LSUB "" "x*"') == '* LSUB () "/" "x/y"\r\nb OK LSUB completed\r\n'
    assert c.cmd('b LSUB "" "%"').count('"x"') == 1 and '(\\Noselect) "/" "x"' in c.cmd('b LSUB "" "%"')
    assert (
        c.cmd('c LIST (SUBSCRIBED) "" "x*"')
        == '* LIST (\\HasNoChildren \\Subscribed) "/" "x/y"\r\nc OK LIST completed\r\n'
    )
    assert c.cmd("d UNSUBSCRIBE x/y") == "d OK UNSUBSCRIBE completed\r\n"
    assert c.cmd('e LSUB "" "x*"') == "e OK LSUB completed\r\n"


def test_list_extended_status_and_special_use(c, tmp_path):
    c.login()
    deliver(tmp_path)
    r = c.cmd('a LIST "" (INBOX Sent) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))')
    assert r == (
        '* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
        '* STATUS "INBOX" (MESSAGES 1 UNSEEN 1)\r\n'
        '* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        '* STATUS "Sent" (MESSAGES 0 UNSEEN 0)\r\n'
        "a OK LIST completed\r\n"
    )
    r = c.cmd('b LIST (SPECIAL-USE) "" "*"')
    assert "INBOX" not in r and r.count("* LIST") == 5


def test_status(c, tmp_path):
    c.login()
    deliver(tmp_path)
    deliver(tmp_path)
    r = c.cmd("a STATUS INBOX (MESSAGES RECENT UIDNEXT UNSEEN HIGHESTMODSEQ)")
    assert re.match(
        r'^\* STATUS "INBOX" \(MESSAGES 2 RECENT 2 UIDNEXT 3 UNSEEN 2 HIGHESTMODSEQ \d+\)\r\n'
        r"a OK STATUS completed\r\n$",
        r,
    )
    assert c.cmd("b STATUS nope (MESSAGES)") == "b NO [NONEXISTENT] Mailbox does not exist\r\n"


def test_namespace_id_enable(c):
    assert (
        c.cmd('a ID ("name" "test" "version" "1")') == '* ID ("name" "pymail" "version" "0.1")\r\na OK ID completed\r\n'
    )
    assert c.server.client_id == {"name": "test", "version": "1"}
    c.login()
    assert c.cmd("b NAMESPACE") == '* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'
    assert c.cmd("c ENABLE CONDSTORE X-FOO") == "* ENABLED CONDSTORE\r\nc OK ENABLE completed\r\n"
    assert c.cmd("d ENABLE CONDSTORE") == "* ENABLED\r\nd OK ENABLE completed\r\n"


# -- SELECT / EXAMINE ----------------------------------------------------------------------


def test_select_responses(c, tmp_path):
    deliver(tmp_path)
    deliver(tmp_path)
    c.login()
    r = strip_uidvalidity(c.cmd("a SELECT INBOX"))
    r = re.sub(r"HIGHESTMODSEQ \d+", "HIGHESTMODSEQ M", r)
    assert r == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n"
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] Flags permitted\r\n"
        "* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen\r\n"
        "* OK [UIDVALIDITY V] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
        "* OK [HIGHESTMODSEQ M] Highest\r\na OK [READ-WRITE] SELECT completed\r\n"
    )
    # SELECT moved them to cur/: the next session sees no \Recent
    assert not list((tmp_path / "alice" / "new").iterdir())
    c2 = Client(tmp_path)
    c2.login()
    r2 = c2.cmd("b EXAMINE INBOX")
    assert "* 0 RECENT" in r2 and "b OK [READ-ONLY] EXAMINE completed" in r2
    assert "PERMANENTFLAGS ()" in r2
    assert c2.cmd("c STORE 1 +FLAGS (\\Seen)") == "c NO [READ-ONLY] Mailbox is read-only\r\n"
    assert c.cmd("d SELECT nope") == "d NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert c.server.state == "authenticated"


# -- APPEND ---------------------------------------------------------------------------------


def test_append_with_flags_date_and_appenduid(c, tmp_path):
    c.login()
    msg = b"From: a@b\r\nSubject: t\r\n\r\nhello\r\n"
    assert (
        c.cmd(f'a APPEND Drafts (\\Draft $Label1) " 7-Feb-1994 21:52:25 -0800" {{{len(msg)}}}')
        == "+ Ready for literal data\r\n"
    )
    r = c.send(msg + b"\r\n").decode()
    m = re.match(r"^a OK \[APPENDUID (\d+) 1\] APPEND completed\r\n$", r)
    assert m, r
    c.cmd("b SELECT Drafts")
    r = c.cmd("c FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert r == (
        '* 1 FETCH (FLAGS (\\Draft $Label1 \\Recent) INTERNALDATE "08-Feb-1994 05:52:25 +0000" RFC822.SIZE 32 '
        "BODY[] {32}\r\nFrom: a@b\r\nSubject: t\r\n\r\nhello\r\n)\r\nc OK FETCH completed\r\n"
    )
    files = list((tmp_path / "alice" / ".Drafts" / "cur").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == b"From: a@b\nSubject: t\n\nhello\n"
    assert files[0].name.endswith(",S=28,W=32:2,Da")  # $Label1 as Dovecot's keyword letter a
    assert (tmp_path / "alice" / ".Drafts" / "dovecot-keywords").read_bytes() == b"0 $Label1\n"
    assert not list((tmp_path / "alice" / "tmp").iterdir())


def test_append_literal_plus_and_trycreate(c, tmp_path):
    c.login()
    assert c.send(b"a APPEND nope {3+}\r\nx\r\n\r\n") == b"a NO [TRYCREATE] Mailbox does not exist\r\n"
    assert not list((tmp_path / "alice" / "tmp").iterdir())
    assert c.send(b"b APPEND INBOX {3+}\r\nx\r\n\r\n").startswith(b"b OK [APPENDUID")


def test_append_too_big_is_refused_before_reading(tmp_path):
    c = Client(tmp_path, settings=IMAPSettings(plaintext_ok=True, max_literal=1000))
    c.login()
    assert c.cmd("a APPEND INBOX {1001}") == "a NO [TOOBIG] Literal too big\r\n"
    assert c.cmd("b APPEND INBOX {0}") == "b NO Empty messages cannot be appended\r\n"
    assert c.cmd("c NOOP") == "c OK NOOP completed\r\n"
    assert "APPENDLIMIT=1000" in c.cmd("d CAPABILITY")


def test_append_bad_date_cleans_spool(c, tmp_path):
    c.login()
    r = c.send(b'a APPEND INBOX "junk" {3+}\r\nabc\r\n')
    assert r.startswith(b"a BAD")
    assert not list((tmp_path / "alice" / "tmp").iterdir())


# -- FETCH / STORE / SEARCH -----------------------------------------------------------------


def selected(c, tmp_path, n=3, **kw):
    for i in range(n):
        deliver(tmp_path, data=make_message(subject=f"s{i + 1}", **kw))
    c.login()
    c.cmd("s SELECT INBOX")


def test_store_variants_and_silent(c, tmp_path):
    selected(c, tmp_path)
    assert (
        c.cmd("a STORE 1 +FLAGS (\\Seen \\Flagged)")
        == "* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))\r\na OK STORE completed\r\n"
    )
    assert c.cmd("b STORE 1 -FLAGS (\\Flagged)") == "* 1 FETCH (FLAGS (\\Seen \\Recent))\r\nb OK STORE completed\r\n"
    assert c.cmd("c STORE 1:2 FLAGS.SILENT (\\Answered)") == "c OK STORE completed\r\n"
    r = c.cmd("d UID STORE 2 +FLAGS (work)")
    assert r == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded work)\r\n"
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded work \\*)] Flags permitted\r\n"
        "* 2 FETCH (UID 2 FLAGS (\\Answered work \\Recent))\r\nd OK STORE completed\r\n"
    )
    assert c.cmd("e FETCH 1:3 FLAGS") == (
        "* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n"
        "* 2 FETCH (FLAGS (\\Answered work \\Recent))\r\n"
        "* 3 FETCH (FLAGS (\\Recent))\r\ne OK FETCH completed\r\n"
    )
    assert c.cmd("f STORE 1 FLAGS (\\Bogus)").startswith("f BAD")
    assert c.cmd("g STORE 9 FLAGS (\\Seen)") == "g BAD Invalid message sequence number\r\n"


def test_fetch_implicit_seen_and_peek(c, tmp_path):
    selected(c, tmp_path, 1)
    r = c.cmd("a FETCH 1 BODY.PEEK[TEXT]")
    assert r == "* 1 FETCH (BODY[TEXT] {6}\r\nbody\r\n)\r\na OK FETCH completed\r\n"
    r = c.cmd("b FETCH 1 BODY[TEXT]")
    assert r == "* 1 FETCH (BODY[TEXT] {6}\r\nbody\r\n FLAGS (\\Seen \\Recent))\r\nb OK FETCH completed\r\n"
    assert c.cmd("c FETCH 1 FLAGS") == "* 1 FETCH (FLAGS (\\Seen \\Recent))\r\nc OK FETCH completed\r\n"


def test_fetch_macros_and_uid(c, tmp_path):
    selected(c, tmp_path, 1)
    r = c.cmd("a FETCH 1 FAST")
    assert re.match(
        r'^\* 1 FETCH \(FLAGS \(\\Recent\) INTERNALDATE "\d\d-\w\w\w-\d{4} \d\d:\d\d:\d\d \+0000" '
        r"RFC822.SIZE 99\)\r\n",
        r,
    ), r
    r = c.cmd("b FETCH 1 ALL")
    assert 'ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "s1" ((NIL NIL "a" "example.org"))' in r
    r = c.cmd("c FETCH 1 FULL")
    assert 'BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1))' in r
    assert c.cmd("d UID FETCH 1 RFC822.SIZE") == "* 1 FETCH (UID 1 RFC822.SIZE 99)\r\nd OK FETCH completed\r\n"
    assert c.cmd("e UID FETCH 5:* UID") == "* 1 FETCH (UID 1)\r\ne OK FETCH completed\r\n"
    assert c.cmd("f UID FETCH 5 UID") == "f OK FETCH completed\r\n"


def test_rfc822_items(c, tmp_path):
    selected(c, tmp_path, 1)
    hdr = "From: a@example.org\r\nTo: b@example.org\r\nSubject: s1\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\n"
    r = c.cmd("a FETCH 1 RFC822.HEADER")
    assert r == f"* 1 FETCH (RFC822.HEADER {{{len(hdr)}}}\r\n{hdr})\r\na OK FETCH completed\r\n"
    r = c.cmd("b FETCH 1 (RFC822.TEXT)")
    assert r == "* 1 FETCH (RFC822.TEXT {6}\r\nbody\r\n FLAGS (\\Seen \\Recent))\r\nb OK FETCH completed\r\n"
    r = c.cmd("c FETCH 1 RFC822")
    assert r == f"* 1 FETCH (RFC822 {{{len(hdr) + 6}}}\r\n{hdr}body\r\n)\r\nc OK FETCH completed\r\n"


def test_header_fields_and_partial(c, tmp_path):
    selected(c, tmp_path, 1)
    r = c.cmd("a FETCH 1 BODY.PEEK[HEADER.FIELDS (subject FROM)]")
    assert r == (
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {36}\r\n"
        "From: a@example.org\r\nSubject: s1\r\n\r\n)\r\na OK FETCH completed\r\n"
    )
    r = c.cmd("b FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (Subject From Date)]")
    assert (
        r == "* 1 FETCH (BODY[HEADER.FIELDS.NOT (SUBJECT FROM DATE)] {21}\r\nTo: b@example.org\r\n\r\n)\r\n"
        "b OK FETCH completed\r\n"
    )
    r = c.cmd("c FETCH 1 BODY.PEEK[]<0.4>")
    assert r == "* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\nc OK FETCH completed\r\n"
    r = c.cmd("d FETCH 1 BODY.PEEK[]<97.100>")
    assert r == "* 1 FETCH (BODY[]<97> {2}\r\n\r\n)\r\nd OK FETCH completed\r\n"
    r = c.cmd("e FETCH 1 BODY.PEEK[]<500.10>")
    assert r == "* 1 FETCH (BODY[]<500> {0}\r\n)\r\ne OK FETCH completed\r\n"
    assert c.cmd("f FETCH 1 BODY[HEADER.FIELDS ()]").startswith("f BAD")
    assert c.cmd("g FETCH 1 BODY[0]").startswith("g BAD")
    assert c.cmd("h FETCH 1 BODY[MIME]").startswith("h BAD")


def test_search_keys(c, tmp_path):
    deliver(tmp_path, data=make_message(subject="Hello there", frm="Joe <joe@example.org>", body="apples\n"))
    deliver(
        tmp_path,
        data=make_message(
            subject="=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=",
            frm="ann@example.net",
            body="pears\n",
            extra="Cc: carl@example.com\nX-Spam: yes\n",
        ),
    )
    deliver(tmp_path, data=make_message(subject="third", body="x" * 5000 + "\n"))
    c.login()
    c.cmd("s SELECT INBOX")
    c.cmd("t STORE 1 +FLAGS (\\Seen \\Flagged)")
    c.cmd("t STORE 2 +FLAGS (\\Deleted $Work)")

    def s(q, uid=False):
        r = c.cmd(f"q {'UID ' if uid else ''}SEARCH {q}")
        assert r.endswith("q OK SEARCH completed\r\n"), (q, r)
        return r.split("\r\n")[0]

    assert s("ALL") == "* SEARCH 1 2 3"
    assert s("SEEN") == "* SEARCH 1"
    assert s("UNSEEN") == "* SEARCH 2 3"
    assert s("FLAGGED DELETED") == "* SEARCH"
    assert s("OR FLAGGED DELETED") == "* SEARCH 1 2"
    assert s("NOT (OR FLAGGED DELETED)") == "* SEARCH 3"
    assert s("KEYWORD $work") == "* SEARCH 2"
    assert s("UNKEYWORD $Work") == "* SEARCH 1 3"
    assert s("RECENT") == "* SEARCH 1 2 3"
    assert s("NEW") == "* SEARCH 2 3"
    assert s("OLD") == "* SEARCH"
    assert s('FROM "JOE"') == "* SEARCH 1"
    assert s("FROM example.net") == "* SEARCH 2"
    assert s("CC carl") == "* SEARCH 2"
    assert s("TO b@") == "* SEARCH 1 2 3"
    assert s("BCC x") == "* SEARCH"
    assert s("SUBJECT there") == "* SEARCH 1"
    r = c.send(f"q SEARCH CHARSET UTF-8 SUBJECT {{{len('grü'.encode())}+}}\r\ngrü\r\n")
    assert r.decode() == "* SEARCH 2\r\nq OK SEARCH completed\r\n"
    assert s("HEADER X-Spam yes") == "* SEARCH 2"
    assert s('HEADER X-Spam ""') == "* SEARCH 2"
    assert s("BODY PEARS") == "* SEARCH 2"
    assert s("TEXT apples") == "* SEARCH 1"
    assert s("TEXT ann@") == "* SEARCH 2"
    assert s("LARGER 1000") == "* SEARCH 3"
    assert s("SMALLER 1000") == "* SEARCH 1 2"
    assert s("SENTON 7-Feb-1994") == "* SEARCH 1 2 3"
    assert s("SENTBEFORE 7-Feb-1994") == "* SEARCH"
    assert s("SENTSINCE 1-Jan-2000") == "* SEARCH"
    assert s("SINCE 1-Jan-2000") == "* SEARCH 1 2 3"
    assert s("BEFORE 1-Jan-2000") == "* SEARCH"
    assert s("ON 1-Jan-2000") == "* SEARCH"
    assert s("2:*") == "* SEARCH 2 3"
    assert s("UID 1,3") == "* SEARCH 1 3"
    assert s("1:2 UNSEEN", uid=True) == "* SEARCH 2"
    assert c.cmd("x SEARCH CHARSET KOI8-R ALL") == "x NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    assert c.cmd("y SEARCH FOO").startswith("y BAD")
    assert c.cmd("z SEARCH BEFORE 1-Foo-2000").startswith("z BAD")


def test_copy_move_expunge_uidplus(c, tmp_path):
    selected(c, tmp_path, 4)
    r = c.cmd("a COPY 1:2 Trash")
    m = re.match(r"^a OK \[COPYUID (\d+) 1:2 1:2\] COPY completed\r\n$", r)
    assert m, r
    assert c.cmd("b COPY 1 nope") == "b NO [TRYCREATE] Mailbox does not exist\r\n"
    r = c.cmd("c MOVE 3 Trash")
    assert re.match(r"^\* OK \[COPYUID \d+ 3 3\] Moved\r\n\* 3 EXPUNGE\r\nc OK MOVE completed\r\n$", r), r
    r = c.cmd("d UID MOVE 4 Trash")
    assert re.match(r"^\* OK \[COPYUID \d+ 4 4\] Moved\r\n\* 3 EXPUNGE\r\nd OK MOVE completed\r\n$", r), r
    c.cmd("e STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("f UID EXPUNGE 2") == "* 2 EXPUNGE\r\nf OK EXPUNGE completed\r\n"
    assert c.cmd("g EXPUNGE") == "* 1 EXPUNGE\r\ng OK EXPUNGE completed\r\n"
    r = c.cmd("h STATUS Trash (MESSAGES UIDNEXT)")
    assert '"Trash" (MESSAGES 4 UIDNEXT 5)' in r
    c.cmd("i SELECT Trash")
    r = c.cmd("j FETCH 1:* (UID FLAGS)")
    assert r == (
        "* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n"
        "* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n* 4 FETCH (UID 4 FLAGS (\\Recent))\r\nj OK FETCH completed\r\n"
    )


def test_close_expunges_unselect_does_not(c, tmp_path):
    selected(c, tmp_path, 2)
    c.cmd("a STORE 1 +FLAGS (\\Deleted)")
    assert c.cmd("b UNSELECT") == "b OK UNSELECT completed\r\n"
    c.cmd("c SELECT INBOX")
    assert "2 EXISTS" in c.cmd("c SELECT INBOX")
    assert c.cmd("d CLOSE") == "d OK CLOSE completed\r\n"
    assert c.server.state == "authenticated"
    assert "1 EXISTS" in c.cmd("e SELECT INBOX")
    assert c.cmd("f CHECK") == "f OK CHECK completed\r\n"


def test_rename_inbox_moves_messages(c, tmp_path):
    selected(c, tmp_path, 2)
    c.cmd("a UNSELECT")
    assert c.cmd("b RENAME INBOX Old") == "b OK RENAME completed\r\n"
    assert "(MESSAGES 0)" in c.cmd("c STATUS INBOX (MESSAGES)")
    assert "(MESSAGES 2)" in c.cmd("d STATUS Old (MESSAGES)")


# -- two sessions: untagged updates ---------------------------------------------------------


def test_other_session_changes_reach_noop(tmp_path):
    a, b = Client(tmp_path), Client(tmp_path)
    for _i in range(3):
        deliver(tmp_path)
    a.login()
    b.login()
    a.cmd("a SELECT INBOX")
    b.cmd("b SELECT INBOX")
    b.cmd("b1 STORE 2 +FLAGS (\\Flagged)")
    assert a.cmd("a1 NOOP") == "* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\na1 OK NOOP completed\r\n"
    b.cmd("b2 STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("b3 EXPUNGE")
    deliver(tmp_path)
    os.utime(tmp_path / "alice" / "new", ns=(0, 0))
    # FETCH may not report the expunge; the message stays addressable by number
    r = a.cmd("a2 FETCH 3 UID")
    assert r == "* 3 FETCH (UID 3)\r\n* 4 EXISTS\r\n* 4 RECENT\r\na2 OK FETCH completed\r\n"
    r = a.cmd("a3 NOOP")
    assert r == "* 1 EXPUNGE\r\na3 OK NOOP completed\r\n"
    assert a.cmd("a4 FETCH 3 UID") == "* 3 FETCH (UID 4)\r\na4 OK FETCH completed\r\n"


def test_idle_reports_new_mail_and_done(tmp_path):
    a = Client(tmp_path)
    a.login()
    a.cmd("a SELECT INBOX")
    assert a.cmd("b IDLE") == "+ idling\r\n"
    assert a.server.timeout == 0.5
    assert a.timeout() == b""
    deliver(tmp_path)
    os.utime(tmp_path / "alice" / "new", ns=(0, 0))
    assert a.timeout() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    assert a.cmd("DONE") == "b OK IDLE terminated\r\n"
    assert a.server.timeout == 1800.0


def test_condstore_fetch_store_search(c, tmp_path):
    selected(c, tmp_path, 2)
    r = c.cmd("a FETCH 1:2 (MODSEQ)")
    ms = [int(x) for x in re.findall(r"MODSEQ \((\d+)\)", r)]
    assert len(ms) == 2
    r = c.cmd(f"b STORE 1 (UNCHANGEDSINCE {ms[0]}) +FLAGS (\\Seen)")
    m = re.search(r"\* 1 FETCH \(FLAGS \(\\Seen \\Recent\) MODSEQ \((\d+)\)\)", r)
    assert m and int(m.group(1)) > ms[0]
    r = c.cmd(f"c STORE 1 (UNCHANGEDSINCE {ms[0]}) +FLAGS (\\Flagged)")
    assert r == "c OK [MODIFIED 1] STORE completed\r\n"
    r = c.cmd(f"d FETCH 1:* (FLAGS) (CHANGEDSINCE {ms[1]})")
    assert r.count("FETCH (") == 1 and "* 1 FETCH" in r
    r = c.cmd(f"e SEARCH MODSEQ {ms[1] + 1}")
    assert r.startswith("* SEARCH 1 (MODSEQ ")


def test_message_renamed_by_another_process_between_index_read_and_open(tmp_path):
    """The loaded index can name a file another process just renamed (new flags): FETCH and SEARCH look again."""
    a, b = Client(tmp_path), Client(tmp_path)
    deliver(tmp_path)
    a.login()
    b.login()
    a.cmd("a SELECT INBOX")
    b.cmd("b SELECT INBOX")
    idx = a.server.sel.index
    _stale_key, stale = idx._cache_key, idx.read()
    b.cmd("b1 STORE 1 +FLAGS (\\Flagged)")
    # make a's index believe nothing changed: it still holds the old file name
    idx.read()
    idx._cache_key, idx._cache = idx._cache_key, stale
    r = a.cmd("a1 FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    assert r.startswith("* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: hi\r\n\r\n)"), r
    assert "a1 OK FETCH completed" in r
    idx._cache = stale
    r = a.cmd("a2 SEARCH SUBJECT hi")
    assert r.startswith("* SEARCH 1\r\n"), r


def test_append_with_mailbox_as_literal_and_big_message(c, tmp_path):
    c.login()
    body = b"Subject: x\r\n\r\n" + b"y" * 100_000 + b"\r\n"
    r = c.send(b"a APPEND {6+}\r\nDrafts {%d+}\r\n" % len(body) + body + b"\r\n")
    assert re.match(rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$", r), r
    c.cmd("b SELECT Drafts")
    assert c.cmd("c FETCH 1 RFC822.SIZE") == f"* 1 FETCH (RFC822.SIZE {len(body)})\r\nc OK FETCH completed\r\n"


def test_enable_qresync_implies_condstore(c):
    c.login()
    assert c.cmd("a ENABLE QRESYNC") == "* ENABLED QRESYNC\r\na OK ENABLE completed\r\n"
    assert c.server.condstore
    assert c.cmd("b ENABLE QRESYNC") == "* ENABLED\r\nb OK ENABLE completed\r\n"


def test_rfc3501_expunge_example(c, tmp_path):
    """RFC 3501 6.4.3: messages 3, 4, 7 and 11 deleted -> * 3, * 3, * 5, * 8 EXPUNGE."""
    selected(c, tmp_path, 12)
    c.cmd("a STORE 3:4,7,11 +FLAGS.SILENT (\\Deleted)")
    assert c.cmd("A202 EXPUNGE") == (
        "* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 5 EXPUNGE\r\n* 8 EXPUNGE\r\nA202 OK EXPUNGE completed\r\n"
    )
    r = c.cmd("b FETCH 1:* UID")
    assert [int(x) for x in re.findall(r"UID (\d+)", r)] == [1, 2, 5, 6, 8, 9, 10, 12]


def test_rfc3501_store_example(c, tmp_path):
    """RFC 3501 6.4.6: A003 STORE 2:4 +FLAGS (\\Deleted) (flag order is free; ours is the Maildir letters')."""
    selected(c, tmp_path, 4)
    c.cmd("x STORE 1:4 FLAGS.SILENT (\\Seen)")
    c.cmd("y STORE 3 +FLAGS.SILENT (\\Flagged)")
    c.cmd("z CLOSE")
    c.cmd("s SELECT INBOX")
    assert c.cmd("A003 STORE 2:4 +FLAGS (\\Deleted)") == (
        "* 2 FETCH (FLAGS (\\Seen \\Deleted))\r\n"
        "* 3 FETCH (FLAGS (\\Flagged \\Seen \\Deleted))\r\n"
        "* 4 FETCH (FLAGS (\\Seen \\Deleted))\r\n"
        "A003 OK STORE completed\r\n"
    )


def test_rfc3501_uid_fetch_example(c, tmp_path):
    """RFC 3501 6.4.8: UID FETCH 4827313:4828442 FLAGS answers with UID and FLAGS."""
    selected(c, tmp_path, 3)
    c.cmd("x STORE 2 FLAGS.SILENT (\\Seen)")
    assert c.cmd("A999 UID FETCH 2:3 FLAGS") == (
        "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\n* 3 FETCH (UID 3 FLAGS (\\Recent))\r\nA999 OK FETCH completed\r\n"
    )


def test_client_gone_mid_append_leaves_no_spool_file(c, tmp_path):
    c.login()
    assert c.cmd("a APPEND INBOX {400000}") == "+ Ready for literal data\r\n"
    c.send(b"x" * 300000)  # more than SPOOL_FLUSH: a Job has made the spool file
    assert len(list((tmp_path / "alice" / "tmp").iterdir())) == 1
    c.server.connection_lost()
    assert list((tmp_path / "alice" / "tmp").iterdir()) == []
