"""IMAP4rev2 (RFC 9051) beside IMAP4rev1, UTF8=ACCEPT (RFC 6855) and UNAUTHENTICATE (RFC 8437)
through pyimap-imapd, with exact responses, in both start modes.  Debian's Dovecot 2.3 offers none
of the three, so these follow the RFCs (pyimap-imapd(8) lists what differs)."""

from __future__ import annotations

import re

import pytest

from conftest import PASSWORD
from test_imap import ALICE, esearch, exchange, login, msg, start_imapd
from test_session_log import start

BOTH = ["listen", "inetd"]


def fixed(lines: list[str]) -> list[str]:
    """exchange()'s lines with the numbers that change from run to run written as N."""
    return [re.sub(r"\[(UIDVALIDITY|APPENDUID) \d+", r"[\1 N", x) for x in lines]


@pytest.mark.parametrize("mode", BOTH)
def test_imap4rev2_once_enabled(mailsys, mode):
    """Advertised with IMAP4rev1; ENABLE IMAP4rev2 switches the session: no \\Recent (none claimed,
    so an IMAP4rev1 session still sees them), [CLOSED], a LIST in SELECT and no UNSEEN code, ESEARCH
    for SEARCH, STATUS DELETED and RECENT refused, \\NonExistent parents, RFC822 items still there."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    caps = exchange(m, "CAPABILITY")[0].split()
    assert caps[:4] == ["*", "CAPABILITY", "IMAP4rev1", "IMAP4rev2"] and "UTF8=ACCEPT" in caps
    m.append("INBOX", None, None, msg("r1"))
    m.append("INBOX", "(\\Deleted \\Seen)", None, msg("r2"))
    assert exchange(m, "CREATE P/c") == ["OK CREATE completed"]
    assert exchange(m, "ENABLE IMAP4rev2") == ["* ENABLED IMAP4rev2", "OK ENABLE completed"]
    assert exchange(m, "ENABLE IMAP4rev2") == ["* ENABLED", "OK ENABLE completed"]  # once
    assert fixed(exchange(m, "SELECT INBOX")) == [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] Flags permitted",
        "* 2 EXISTS",
        '* LIST (\\HasNoChildren) "/" "INBOX"',
        "* OK [UIDVALIDITY N] UIDs valid",
        "* OK [UIDNEXT 3] Predicted next UID",
        "* OK [HIGHESTMODSEQ 3] Highest",
        "OK [READ-WRITE] SELECT completed",
    ]
    assert exchange(m, "FETCH 1:2 (FLAGS RFC822.SIZE)") == [
        "* 1 FETCH (FLAGS () RFC822.SIZE 138)",
        "* 2 FETCH (FLAGS (\\Seen \\Deleted) RFC822.SIZE 138)",
        "OK FETCH completed",
    ]
    assert exchange(m, "FETCH 1 RFC822.HEADER")[0].startswith("* 1 FETCH (RFC822.HEADER {")
    assert esearch(m, "SEARCH ALL") == ['* ESEARCH (TAG "t") ALL 1:2', "OK SEARCH completed"]
    assert esearch(m, "UID SEARCH UNSEEN") == ['* ESEARCH (TAG "t") UID ALL 1', "OK SEARCH completed"]
    assert esearch(m, "SEARCH DRAFT") == ['* ESEARCH (TAG "t")', "OK SEARCH completed"]
    assert esearch(m, "SEARCH RETURN (COUNT) ALL") == ['* ESEARCH (TAG "t") COUNT 2', "OK SEARCH completed"]
    assert exchange(m, "STATUS INBOX (MESSAGES DELETED SIZE)") == [
        '* STATUS "INBOX" (MESSAGES 2 DELETED 1 SIZE 276)',
        "OK STATUS completed",
    ]
    assert exchange(m, "STATUS INBOX (RECENT)") == ["BAD Unknown STATUS item RECENT"]
    assert exchange(m, 'LIST "" P*') == [
        '* LIST (\\NonExistent \\HasChildren) "/" "P"',
        '* LIST (\\HasNoChildren) "/" "P/c"',
        "OK LIST completed",
    ]
    # news from another (IMAP4rev1) session: EXISTS, no RECENT
    other = login(port)
    other.append("INBOX", None, None, msg("r3"))
    assert exchange(m, "NOOP") == ["* 3 EXISTS", "OK NOOP completed"]
    assert fixed(exchange(m, "EXAMINE P/c")) == [
        "* OK [CLOSED] Previous mailbox closed",
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)",
        "* OK [PERMANENTFLAGS ()] Read-only mailbox",
        "* 0 EXISTS",
        '* LIST (\\HasNoChildren) "/" "P/c"',
        "* OK [UIDVALIDITY N] UIDs valid",
        "* OK [UIDNEXT 1] Predicted next UID",
        "* OK [HIGHESTMODSEQ 1] Highest",
        "OK [READ-ONLY] EXAMINE completed",
    ]
    # the IMAP4rev2 session claimed no \Recent: the IMAP4rev1 one still gets them
    lines = exchange(other, "SELECT INBOX")
    assert "* 3 RECENT" in lines and "* OK [UNSEEN 1] First unseen" in lines
    assert exchange(other, "SEARCH ALL") == ["* SEARCH 1 2 3", "OK SEARCH completed"]
    assert exchange(other, 'LIST "" P') == ['* LIST (\\Noselect \\HasChildren) "/" "P"', "OK LIST completed"]
    lines = exchange(other, "FETCH 3 FLAGS")
    assert lines == ["* 3 FETCH (FLAGS (\\Recent))", "OK FETCH completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_utf8_accept(mailsys, mode):
    """RFC 6855: once ENABLEd, mailbox names in UTF-8 both ways (modified UTF-7 on disk, as before,
    and for IMAP4rev1 sessions), '&' taken as itself, names not in NFC refused, SEARCH CHARSET
    refused, APPEND UTF8 (~{n}...) stored; without it an 8-bit header is stored too, as Dovecot
    does (old mail uploaded by synchronisers; pyimap-imapd(8))."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    head = "From: Jörg <j@example.org>\r\nTo: alice@example.test\r\nSubject: Grüße\r\n\r\nBody\r\n"
    data = head.encode()
    assert fixed(exchange(m, f"APPEND INBOX {{{len(data)}+}}\r\n{head}")) == ["OK [APPENDUID N 1] APPEND completed"]
    assert exchange(m, "ENABLE UTF8=ACCEPT CONDSTORE") == ["* ENABLED UTF8=ACCEPT CONDSTORE", "OK ENABLE completed"]
    assert exchange(m, 'CREATE "Entwürfe"') == ["OK CREATE completed"]
    assert exchange(m, 'CREATE "a&b"') == ["OK CREATE completed"]
    assert exchange(m, 'CREATE "Entwu\u0308rfe2"')[0].startswith("NO [CANNOT] Invalid mailbox name")  # not NFC
    assert exchange(m, 'LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entwürfe"', "OK LIST completed"]
    assert exchange(m, 'LIST "" "a&*"') == ['* LIST (\\HasNoChildren) "/" "a&b"', "OK LIST completed"]
    assert exchange(m, 'STATUS "Entwürfe" (MESSAGES)') == ['* STATUS "Entwürfe" (MESSAGES 0)', "OK STATUS completed"]
    assert fixed(exchange(m, f"APPEND Entwürfe UTF8 (~{{{len(data)}+}}\r\n{head})")) == [
        "OK [APPENDUID N 1] APPEND completed"
    ]
    assert fixed(exchange(m, f"APPEND Entwürfe {{{len(data)}+}}\r\n{head}")) == ["OK [APPENDUID N 2] APPEND completed"]
    assert exchange(m, "APPEND Entwürfe UTF8 (Hello)")[0].startswith("BAD ")
    assert exchange(m, 'SELECT "Entwürfe"')[-1] == "OK [READ-WRITE] SELECT completed"
    assert exchange(m, "FETCH 1 (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        f"* 1 FETCH (RFC822.SIZE {len(data)} BODY[HEADER.FIELDS (SUBJECT)] {{20}}\r\nSubject: Grüße\r\n\r\n)",
        "OK FETCH completed",
    ]
    assert exchange(m, "SEARCH CHARSET UTF-8 ALL") == ["BAD No CHARSET after ENABLE UTF8=ACCEPT"]
    assert exchange(m, "SEARCH SUBJECT Grüße") == ["* SEARCH 1 2", "OK SEARCH completed"]
    # on disk and for an IMAP4rev1 session: modified UTF-7, as before
    assert (mailsys.maildir() / ".Entw&APw-rfe" / "cur").is_dir()
    assert (mailsys.maildir() / ".a&-b" / "cur").is_dir()
    old = login(port)
    assert exchange(old, 'LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"', "OK LIST completed"]
    assert exchange(old, 'LIST "" "a&-*"') == ['* LIST (\\HasNoChildren) "/" "a&-b"', "OK LIST completed"]
    assert exchange(old, 'SELECT "Entwürfe"') == [
        "NO [CANNOT] Invalid mailbox name: 8-bit or control character in mailbox name"
    ]
    assert exchange(old, "ENABLE IMAP4rev2") == ["* ENABLED IMAP4rev2", "OK ENABLE completed"]  # UTF-8 too
    assert exchange(old, 'LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entwürfe"', "OK LIST completed"]
    assert exchange(old, f"APPEND INBOX {{{len(data)}+}}\r\n{head}")[0].startswith("OK [APPENDUID ")
    assert exchange(old, "SELECT INBOX")[-1] == "OK [READ-WRITE] SELECT completed"
    assert exchange(old, "SEARCH CHARSET UTF-8 SUBJECT grüße")[0].endswith(" ALL 1:2")  # rev2 keeps CHARSET


@pytest.mark.parametrize("mode", BOTH)
def test_unauthenticate(mailsys, mode):
    """RFC 8437: advertised once logged in; back to the not-authenticated state with the mailbox
    closed (nothing expunged), ENABLEd extensions and the saved search gone; LOGIN works again."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    caps = exchange(m, "CAPABILITY")[0].split()
    assert caps[-1] == "UNAUTHENTICATE" and "AUTH=PLAIN" not in caps
    m.append("INBOX", "(\\Deleted)", None, msg("u1"))
    assert exchange(m, "ENABLE QRESYNC IMAP4rev2") == ["* ENABLED QRESYNC IMAP4rev2", "OK ENABLE completed"]
    assert exchange(m, "SELECT INBOX")[-1] == "OK [READ-WRITE] SELECT completed"
    assert exchange(m, "SEARCH RETURN (SAVE) ALL") == ["OK SEARCH completed"]
    lines = exchange(m, "UNAUTHENTICATE")
    assert re.fullmatch(r"OK \[CAPABILITY IMAP4rev1 IMAP4rev2 .* AUTH=PLAIN\] UNAUTHENTICATE completed", lines[0])
    assert len(lines) == 1 and "UNAUTHENTICATE]" not in lines[0]
    assert exchange(m, "SELECT INBOX") == ["BAD Command SELECT not valid in this state"]
    assert exchange(m, "UNAUTHENTICATE") == ["BAD Command UNAUTHENTICATE not valid in this state"]
    assert "UNAUTHENTICATE" not in exchange(m, "CAPABILITY")[0].split()
    assert exchange(m, f'LOGIN {ALICE} "wrong"') == ["NO [AUTHENTICATIONFAILED] Authentication failed."]
    assert exchange(m, f'LOGIN {ALICE} "{PASSWORD}"')[0].endswith("UNAUTHENTICATE] Logged in")
    # a new start: nothing enabled (IMAP4rev1 answers, \Recent kept for it), $ empty, nothing expunged
    assert exchange(m, "ENABLE QRESYNC") == ["* ENABLED QRESYNC", "OK ENABLE completed"]
    lines = exchange(m, "SELECT INBOX")
    assert "* 1 EXISTS" in lines and "* 1 RECENT" in lines and "* OK [CLOSED] Previous mailbox closed" not in lines
    assert exchange(m, "FETCH $ FLAGS") == ["OK FETCH completed"]
    assert exchange(m, "SEARCH ALL") == ["* SEARCH 1", "OK SEARCH completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_imap4rev2_idle_claims_no_recent(mailsys, mode):
    """New mail seen in IDLE by an IMAP4rev2 session (the shared look of the idling sessions):
    EXISTS without RECENT, and the message stays \\Recent for the next IMAP4rev1 session."""
    port = start_imapd(mailsys, mode)
    m, other = login(port), login(port)
    assert exchange(m, "ENABLE IMAP4rev2") == ["* ENABLED IMAP4rev2", "OK ENABLE completed"]
    assert exchange(m, "SELECT INBOX")[-1] == "OK [READ-WRITE] SELECT completed"
    m.send(b"i1 IDLE\r\n")
    assert m.readline() == b"+ idling\r\n"
    other.append("INBOX", None, None, msg("idle1"))
    assert m.readline() == b"* 1 EXISTS\r\n"
    m.send(b"DONE\r\n")
    assert m.readline() == b"i1 OK IDLE terminated\r\n"
    lines = exchange(other, "SELECT INBOX")
    assert "* 1 RECENT" in lines


@pytest.mark.parametrize("mode", BOTH)
def test_unauthenticate_logs_the_login_end(mailsys, mode):
    """Each login gets its own end line: UNAUTHENTICATE writes 'Disconnected: Unauthenticated'
    for the first, LOGOUT 'Disconnected: Logged out' for the second."""
    port, err = start(mailsys, "pyimap.imapd", mode)
    m = login(port)
    assert exchange(m, "UNAUTHENTICATE")[0].endswith("UNAUTHENTICATE completed")
    first = err.wait_for("Disconnected: ")
    assert re.search(rf"imap\({re.escape(ALICE)}\): Disconnected: Unauthenticated in=\d+ out=\d+ rip=", first[0])
    assert exchange(m, f'LOGIN {ALICE} "{PASSWORD}"')[0].endswith("Logged in")
    m.logout()
    both = err.wait_for("Disconnected: ", 2)
    assert "Disconnected: Logged out" in both[1] and "Traceback" not in err.text()
