"""SORT, SORT=DISPLAY (RFC 5256, 5957), THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256)
through pyimap-imapd, with exact responses, in both start modes (the Dovecot comparison over the
corpus is tests/test_imap_dovecot_sort.py, the algorithms' rules tests/unit/test_imap_sort.py)."""

from __future__ import annotations

import pytest

from test_imap import exchange, login, start_imapd

BOTH = ["listen", "inetd"]

# (headers, INTERNALDATE)
MAILBOX = [
    (
        "From: Zoe <zoe@z.org>\nTo: bob@b.org\nSubject: Plan\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n"
        "Message-ID: <p1@x>\n",
        '"05-Jan-2024 10:00:00 +0000"',
    ),
    (
        'From: "Adam" <adam@a.org>\nTo: Zed <amy@a.org>\nSubject: Re: plan\nDate: Tue, 02 Jan 2024 09:00:00 -0300\n'
        "Message-ID: <p2@x>\nReferences: <p1@x>\n",
        '"04-Jan-2024 10:00:00 +0000"',
    ),
    (
        "From: carl@c.org (Carl)\nCc: yves@y.org\nSubject: [list] Lunch\nMessage-ID: <l1@x>\n",
        '"01-Jan-2024 00:00:00 +0000"',  # no Date: the INTERNALDATE is its sent date
    ),
    (
        "From: =?utf-8?Q?=C3=89va?= <eva@e.org>\nTo: carl@c.org\nSubject: Fwd: [Fwd: Lunch]\n"
        "Date: Mon, 01 Jan 2024 08:00:00 +0000\nMessage-ID: <l2@x>\nReferences: <gone@x>\n",
        '"03-Jan-2024 10:00:00 +0000"',
    ),
    (
        "To: dan@d.org\nCc: Al <al@a.org>\nSubject: Re: Lunch (fwd)\nDate: Wed, 03 Jan 2024 10:00:00 +0000\n"
        "Message-ID: <l3@x>\nIn-Reply-To: <l1@x>\n",
        '"02-Jan-2024 10:00:00 +0000"',
    ),
    (
        "From: bob@b.org\nSubject: budget\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n",
        '"06-Jan-2024 10:00:00 +0000"',
    ),
]


def mailbox(mailsys, mode):
    port = start_imapd(mailsys, mode)
    m = login(port)
    for head, idate in MAILBOX:
        body = b"x" * (10 * len(head) % 97)  # sizes in no particular order
        assert m.append("INBOX", None, idate, head.replace("\n", "\r\n").encode() + b"\r\n" + body)[0] == "OK"
    exchange(m, "SELECT INBOX")
    return m


@pytest.mark.parametrize("mode", BOTH)
def test_sort(mailsys, mode):
    m = mailbox(mailsys, mode)
    caps = exchange(m, "CAPABILITY")[0].split()
    assert {"SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"} <= set(caps)
    sizes = exchange(m, "FETCH 1:* RFC822.SIZE")
    assert [int(line.split()[-1].rstrip(")")) for line in sizes[:-1]] == [117, 190, 110, 205, 221, 96]
    expected = {
        # INTERNALDATE
        "SORT (ARRIVAL) UTF-8 ALL": "3 5 4 2 1 6",
        # sent date in UTC (2 is 12:00 UTC), 3 by its INTERNALDATE; 1 and 6 equal: mailbox order
        "SORT (DATE) UTF-8 ALL": "3 4 1 6 2 5",
        "SORT (REVERSE DATE) UTF-8 ALL": "5 2 1 6 4 3",
        "SORT (SIZE) UTF-8 ALL": "6 3 1 2 4 5",
        # base subjects BUDGET, LUNCH x3, PLAN x2; ties in mailbox order
        "SORT (SUBJECT) UTF-8 ALL": "6 3 4 5 1 2",
        "SORT (SUBJECT REVERSE DATE) UTF-8 ALL": "6 5 4 3 2 1",
        # first From's mailbox: "" (none), adam, bob, carl, eva, zoe
        "SORT (FROM) UTF-8 ALL": "5 2 6 3 4 1",
        "SORT (REVERSE FROM) UTF-8 ALL": "1 4 3 6 2 5",
        "SORT (TO ARRIVAL) UTF-8 ALL": "3 6 2 1 4 5",
        "SORT (CC) UTF-8 ALL": "1 2 4 6 5 3",
        # display names: Adam, bob@b.org, Carl (the comment), Zoe, É... (after ASCII), none first
        "SORT (DISPLAYFROM) UTF-8 ALL": "5 2 6 3 1 4",
        "SORT (DISPLAYTO) UTF-8 ALL": "3 6 1 4 5 2",
        "SORT (DATE) UTF-8 SUBJECT lunch": "3 4 5",
        "SORT (DATE) US-ASCII OR FROM bob 1": "1 6",
        "SORT (SIZE) UTF-8 DELETED": "",
    }
    for command, result in expected.items():
        assert exchange(m, command) == [f"* SORT{' ' if result else ''}{result}", "OK SORT completed"], command
    assert exchange(m, "UID SORT (REVERSE SIZE) UTF-8 2:5") == ["* SORT 5 4 2 3", "OK SORT completed"]
    # the search result of SEARCHRES (RFC 5182) and CONDSTORE's MODSEQ (RFC 7162 3.1.5)
    exchange(m, "SEARCH RETURN (SAVE) SUBJECT plan")
    assert exchange(m, "SORT (REVERSE ARRIVAL) UTF-8 $") == ["* SORT 1 2", "OK SORT completed"]
    assert exchange(m, "SORT (ARRIVAL) UTF-8 MODSEQ 1") == ["* SORT 3 5 4 2 1 6 (MODSEQ 7)", "OK SORT completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_thread(mailsys, mode):
    m = mailbox(mailsys, mode)
    # by base subject, each group's earliest the parent; groups by their first's sent date
    assert exchange(m, "THREAD ORDEREDSUBJECT UTF-8 ALL") == ["* THREAD (3 (4)(5))(1 2)(6)", "OK THREAD completed"]
    assert exchange(m, "THREAD REFERENCES UTF-8 ALL") == [
        # 2 replies to 1 (References); 5 to 3 (In-Reply-To); 4's parent is missing, it joins the
        # Lunch thread by subject (a forward under the original); 6 alone
        "* THREAD (3 (4)(5))(1 2)(6)",
        "OK THREAD completed",
    ]
    assert exchange(m, "UID THREAD REFERENCES UTF-8 NOT 3") == ["* THREAD ((4)(5))(1 2)(6)", "OK THREAD completed"]
    assert exchange(m, "THREAD REFERENCES UTF-8 DELETED") == ["* THREAD", "OK THREAD completed"]
    # a MODSEQ key enables CONDSTORE (RFC 7162 3.1): FETCH FLAGS then shows MODSEQ
    assert exchange(m, "FETCH 6 FLAGS")[0] == "* 6 FETCH (FLAGS (\\Recent))"
    assert exchange(m, "THREAD ORDEREDSUBJECT UTF-8 MODSEQ 1 SUBJECT budget") == ["* THREAD (6)", "OK THREAD completed"]
    assert exchange(m, "FETCH 6 FLAGS")[0] == "* 6 FETCH (FLAGS (\\Recent) MODSEQ (7))"


@pytest.mark.parametrize("mode", BOTH)
def test_sort_and_thread_refusals(mailsys, mode):
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert exchange(m, "SORT (DATE) UTF-8 ALL") == ["BAD Command SORT not valid in this state"]
    exchange(m, "SELECT INBOX")
    assert exchange(m, "SORT (DATE) KOI8-R ALL") == ["NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"]
    assert exchange(m, "THREAD REFERENCES ISO-8859-1 ALL") == ["NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"]
    assert exchange(m, "SORT (DATE) UTF-8") == ["BAD Wrong number of arguments"]
    assert exchange(m, "SORT DATE UTF-8 ALL") == ["BAD Sort criteria must be a parenthesised list"]
    assert exchange(m, "SORT () UTF-8 ALL") == ["BAD Sort criteria must be a parenthesised list"]
    assert exchange(m, "SORT (SPAM) UTF-8 ALL") == ["BAD Unknown sort criterion"]
    assert exchange(m, "SORT (DATE REVERSE) UTF-8 ALL") == ["BAD REVERSE must come before a sort key"]
    assert exchange(m, "SORT (DATE) UTF-8 FOO") == ["BAD Unknown search key FOO"]
    assert exchange(m, "THREAD JWZ UTF-8 ALL") == ["BAD Unknown thread algorithm"]
    assert exchange(m, "THREAD REFERENCES") == ["BAD Wrong number of arguments"]
    assert exchange(m, "SORT (DATE) UTF-8 ALL") == ["* SORT", "OK SORT completed"]  # still usable


@pytest.mark.parametrize("mode", BOTH)
def test_esort(mailsys, mode):
    """RFC 5267 ESORT: SORT RETURN answers ESEARCH, MIN and MAX the first and last in the sort
    order, ALL in that order (ascending runs joined, as Dovecot writes it); SAVE keeps the set."""
    m = mailbox(mailsys, mode)
    assert "ESORT" in exchange(m, "CAPABILITY")[0].split()

    # DATE order is 3 4 1 6 2 5
    lines = exchange(m, "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert [line.split(") ", 1)[-1] for line in lines] == ["MIN 3 MAX 5 ALL 3:4,1,6,2,5 COUNT 6", "OK SORT completed"]
    assert lines[0].startswith('* ESEARCH (TAG "')
    lines = exchange(m, "UID SORT RETURN () (SUBJECT) UTF-8 NOT 6")
    assert lines[0].split(") ", 1)[-1] == "UID ALL 3:5,1:2"
    lines = exchange(m, "SORT RETURN (COUNT MIN) (SIZE) UTF-8 DELETED")
    assert lines[0].split(") ", 1)[-1] == "COUNT 0"
    assert exchange(m, "SORT RETURN (SAVE) (REVERSE SIZE) UTF-8 1:3") == ["OK SORT completed"]
    assert exchange(m, "SEARCH $") == ["* SEARCH 1 2 3", "OK SEARCH completed"]
    assert exchange(m, "SORT RETURN (SAVE) (DATE) UTF-8 BOGUS")[0].startswith("BAD ")
    assert exchange(m, "SEARCH $") == ["* SEARCH", "OK SEARCH completed"]  # a failed SAVE empties it
    assert exchange(m, "SORT RETURN (FOO) (DATE) UTF-8 ALL") == ["BAD Unknown RETURN option"]
