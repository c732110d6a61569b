"""Dovecot as the oracle over the shared corpus (tests/imap_corpus.py): ENVELOPE,
BODYSTRUCTURE, BODY, RFC822.SIZE, section fetches, SEARCH and ESEARCH against
pyimap-imapd and Debian's Dovecot 2.3 over the same Maildir give the same answers, the
documented differences (pyimap-imapd(8); KNOWN_FETCH and KNOWN_SEARCH below) aside."""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest

import test_imap_dovecot_sort as sortcmp
from conftest import PASSWORD, REPO
from imap_corpus import messages
from test_imap import ALICE
from test_imap_dovecot import DOVECOT
from test_imap_dovecot import ITEMS as dovecot_items

sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_fuzz_protocols import parse_imap_value  # noqa: E402

pytestmark = pytest.mark.skipif(
    DOVECOT is None or os.geteuid() != 0, reason="needs Debian's dovecot-imapd (and root, to hand the store to 'mail')"
)

# the corpus in both servers (fixtures shared with the SORT/THREAD comparison)
twins = sortcmp.twins
twin_servers = sortcmp.twin_servers

# the ENVELOPE, BODYSTRUCTURE, BODY, RFC822.SIZE and sections of the hand-made comparison
ITEMS = [*dovecot_items[:8], "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]"]

SEARCHES = [
    "ALL",
    "FROM example.org",
    "FROM alice",
    "FROM Müller",
    "TO corp.example",
    "CC uni.example.edu",
    "SUBJECT re",
    "SUBJECT Réunion",
    "SUBJECT café",
    "SUBJECT Привет",
    "SUBJECT 会議",
    "SUBJECT €uros",
    "SUBJECT Zażółć",
    "TEXT lorem",
    "TEXT Bonjour",
    "BODY Привет",
    "BODY Zażółć",
    "TEXT crème",
    'BODY "ordre du jour"',
    "TEXT attachment",
    "BODY boundary",
    "TEXT 会议纪要",
    "FROM Jürgen",
    "SUBJECT Grüße",
    "FROM García",
    "BODY forwarded",
    "BODY inner",
    "HEADER Message-ID example.org",
    "HEADER References loop",
    "HEADER X-Broken value",
    "LARGER 2000",
    "SMALLER 400",
    "SENTBEFORE 1-Dec-2023",
    "SENTSINCE 1-Dec-2023",
    "SENTON 15-Nov-2023",
    "OR FROM bob SUBJECT lunch",
    "NOT SUBJECT re",
    "NOT OR LARGER 1000 TEXT ipsum",
    "FROM corp.example NOT LARGER 800 SUBJECT re",
    "UID 10:50 OR TO example.org CC example.org",
]


def pipelined(port: int, batches: list[list[str]]) -> list[tuple[list[bytes], dict[str, bytes]]]:
    """One session: log in, EXAMINE INBOX, then each batch of commands sent at once and
    answered before the next; for each batch its untagged responses (CRLF and literals kept;
    Dovecot runs FETCH and SEARCH in parallel, so they interleave) and each command's tagged
    line (without the tag)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    data = b""
    out = []
    for b, batch in enumerate([[f"LOGIN {ALICE} {PASSWORD}", "EXAMINE INBOX"], *batches]):
        tags = [f"c{b}.{i}" for i in range(len(batch))]
        sock.sendall(b"".join(f"{t} {c}\r\n".encode() for t, c in zip(tags, batch, strict=True)))
        untagged: list[bytes] = []
        tagged: dict[str, bytes] = {}
        while len(tagged) < len(tags):
            response = _one_response(data)
            if response is None:
                chunk = sock.recv(1 << 20)
                assert chunk, data[-200:]
                data += chunk
                continue
            data = data[len(response) :]
            tag, _, rest = response.partition(b" ")
            if tag == b"*":
                untagged.append(response)
            elif tag.decode() in tags:
                tagged[batch[tags.index(tag.decode())]] = rest.rstrip(b"\r\n")
        out.append((untagged, tagged))
    sock.close()
    return out[1:]


def _one_response(data: bytes) -> bytes | None:
    """The first whole response in ``data`` (lines joined while they end in a literal), or None."""
    end = 0
    while True:
        eol = data.find(b"\r\n", end)
        if eol < 0:
            return None
        eol += 2
        m = re.search(rb"\{(\d+)\}\r\n$", data[end:eol])
        if not m:
            return data[:eol]
        end = eol + int(m.group(1))
        if end > len(data):
            return None


_ITEM = re.compile(rb"[A-Z0-9.]+(\[[^\]]*\](<\d+>)?)?")


def fetch_items(response: bytes) -> tuple[int, dict[bytes, object]]:
    """'* n FETCH (...)' -> (n, {item name: parsed value}) (quoted or literal alike)."""
    m = re.match(rb"\* (\d+) FETCH \(", response)
    assert m, response[:80]
    pos, items = m.end(), {}
    while response[pos : pos + 1] != b")":
        if response[pos : pos + 1] == b" ":
            pos += 1
            continue
        name = _ITEM.match(response, pos)
        assert name, response[pos : pos + 80]
        value, pos = parse_imap_value(response, name.end() + 1)
        items[name.group(0)] = value
    return int(m.group(1)), items


def fetched(untagged: list[bytes]) -> dict[int, dict[bytes, object]]:
    out: dict[int, dict[bytes, object]] = {}
    for response in untagged:
        if response.startswith(b"* ") and b" FETCH (" in response[:20]:
            n, items = fetch_items(response)
            out.setdefault(n, {}).update(items)
    return out


def esearched(untagged: list[bytes], batch: list[str]) -> dict[str, bytes]:
    """ESEARCH responses by the command their TAG names."""
    out = {}
    for response in untagged:
        m = re.match(rb'\* ESEARCH \(TAG "c\d+\.(\d+)"\)(.*)\r\n', response)
        if m:
            out[batch[int(m.group(1))]] = m.group(2)
    return out


def literal8(keys: str) -> str:
    """Words with 8-bit characters as non-synchronizing literals (RFC 7888), as a client sends them."""
    return " ".join(w if w.isascii() else f"{{{len(w.encode())}+}}\r\n{w}" for w in keys.split(" "))


FETCH = "FETCH 1:* (" + " ".join(ITEMS) + ")"
ESEARCHES = [f"SEARCH RETURN (MIN MAX COUNT ALL) CHARSET UTF-8 {literal8(s)}" for s in SEARCHES]
PLAIN = [f"SEARCH CHARSET UTF-8 {literal8(s)}" for s in SEARCHES]


def answers(port: int) -> tuple[dict, dict, dict]:
    """(FETCH data by message and item, ESEARCH by command, SEARCH by command) in one session:
    the FETCH and the ESEARCHes pipelined, each plain SEARCH alone (its answer names no tag)."""
    first = [FETCH, *ESEARCHES]
    (untagged, tagged), *plain = pipelined(port, [first] + [[c] for c in PLAIN])
    assert all(tagged[c].startswith(b"OK") for c in first), {c: t for c, t in tagged.items() if not t.startswith(b"OK")}
    searched = {}
    for command, (lines, done) in zip(PLAIN, plain, strict=True):
        assert done[command].startswith(b"OK"), (command, done)
        searched[command] = [x for x in lines if x.startswith(b"* SEARCH")]
    return fetched(untagged), esearched(untagged, first), searched


# The documented differences (pyimap-imapd(8), DIFFERENCES FROM DOVECOT), by message and item.
# A part whose content ends with a close delimiter (a multipart, or a message/rfc822 holding
# one): RFC 2046 5.1.1 attaches the CRLF before the next boundary to that boundary, Dovecot
# counts it into the part (BODY[1] 2 octets longer; the message/rfc822 part's size 2 and its
# lines 1 more in BODY and BODYSTRUCTURE).
MULTIPART_FIRST = {3, 13, 27, 40, 45, 55, 69, 81, 86, 95, 105, 118, 123, 131, 146, 156}
NESTED_MULTIPART = {13, 40, 55, 81, 95, 118, 131, 156}
KNOWN_FETCH = {(n, "BODY[1]") for n in MULTIPART_FIRST} | {
    (n, item) for n in NESTED_MULTIPART for item in ("BODY", "BODYSTRUCTURE")
}
# SENTBEFORE, SENTON, SENTSINCE of a message without a Date field (5) or with one that does
# not parse (6, 165, 227): the INTERNALDATE here, as SORT's DATE (RFC 5256); 1 January 1970
# for Dovecot.
KNOWN_SEARCH = {"SENTBEFORE 1-Dec-2023": {165, 227}, "SENTSINCE 1-Dec-2023": {165, 227}, "SENTON 15-Nov-2023": {5, 6}}


def crlf_counted(ours, theirs, item: str) -> bool:
    """Whether ``theirs`` is ``ours`` with the CRLF before a boundary counted into the part."""
    if item == "BODY[1]":
        return theirs == ours + b"\r\n"
    found = []

    def walk(a, b) -> bool:  # message/rfc822 fields: 6 the size, 9 the lines
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
            return a == b
        if a[:2] == b[:2] == [b"message", b"rfc822"] and (int(b[6]) - int(a[6]), int(b[9]) - int(a[9])) == (2, 1):
            found.append(a)
            a = a[:6] + b[6:7] + a[7:9] + b[9:10] + a[10:]
        return all(walk(x, y) for x, y in zip(a, b, strict=True))

    return walk(ours, theirs) and bool(found)


def test_fetch_and_search_like_dovecot(twin_servers):
    """Every corpus message's ENVELOPE, BODYSTRUCTURE, BODY, RFC822.SIZE and sections, and
    each SEARCH and ESEARCH, as Dovecot answers them; the documented differences are exactly
    those listed above and are what the manual says."""
    ours, theirs = (answers(port) for port in twin_servers)
    fetch_ours, fetch_theirs = ours[0], theirs[0]
    assert sorted(fetch_ours) == sorted(fetch_theirs) == list(range(1, len(messages()) + 1))
    differ = set()
    for n in fetch_ours:
        a, b = fetch_ours[n], fetch_theirs[n]
        assert sorted(a) == sorted(b) and len(a) == len(ITEMS), n
        for item in a:
            if a[item] != b[item]:
                differ.add((n, item.decode()))
                assert (n, item.decode()) in KNOWN_FETCH, (n, item, a[item], b[item])
                assert crlf_counted(a[item], b[item], item.decode()), (n, item, a[item], b[item])
    assert differ == KNOWN_FETCH
    for key, esearch, plain in zip(SEARCHES, ESEARCHES, PLAIN, strict=True):
        leave_out = {str(n).encode() for n in KNOWN_SEARCH.get(key, ())}
        got = []
        for side in (ours, theirs):
            assert side[2][plain][0].startswith(b"* SEARCH"), side[2][plain]
            found = set(side[2][plain][0].split()[2:])
            got.append(found)
            assert side[1][esearch] == esearch_text(sorted(found, key=int)), (key, side[1][esearch])
        assert got[0] ^ got[1] == leave_out, key
    assert {k for k in KNOWN_SEARCH} <= set(SEARCHES)


def esearch_text(numbers: list[bytes]) -> bytes:
    """What ESEARCH RETURN (MIN MAX COUNT ALL) answers for these numbers, in Dovecot's order."""
    if not numbers:
        return b" COUNT 0"
    ns = [int(x) for x in numbers]
    runs = []
    for n in ns:
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    spans = ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in runs)
    return f" MIN {ns[0]} MAX {ns[-1]} ALL {spans} COUNT {len(ns)}".encode()
