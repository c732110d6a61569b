"""Dovecot as the oracle for BINARY (RFC 3516) over the shared corpus (tests/imap_corpus.py)
and test_imap_dovecot's MESSAGES: FETCH BINARY.PEEK[section] and BINARY.SIZE[section] against
pyimap-imapd and Debian's Dovecot 2.3 over the same Maildir give the same answers."""

from __future__ import annotations

import os
import re

import pytest

from imap_corpus import deliver_all
from test_imap import exchange
from test_imap_dovecot import DOVECOT, MESSAGES
from test_imap_dovecot_corpus import MULTIPART_FIRST
from test_imap_dovecot_sort import session, twins  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(
    DOVECOT is None or os.geteuid() != 0, reason="needs Debian's dovecot-imapd (and root, to hand the store to 'mail')"
)

SECTIONS = ["", "1", "2", "3", "1.1", "1.2", "2.1", "2.2", "3.1", "1.1.1", "TEXT", "2.TEXT", "HEADER"]


def answers(port: int, commands: list[str]) -> dict:
    m = session(port)
    out = {}
    for command in commands:
        lines = exchange(m, command)
        # the tagged line without Dovecot's timings and wording of OK
        status = lines[-1].split(" (")[0] if lines[-1].startswith("OK") else lines[-1]
        out[command] = lines[:-1] + [status.split(" ")[0] if status.startswith("OK") else status]
    m.logout()
    return out


def commands() -> list[str]:
    out = []
    for s in SECTIONS:
        out.append(f"UID FETCH 1:* (BINARY.PEEK[{s}] BINARY.SIZE[{s}])")
        out.append(f"UID FETCH 1:* (BINARY.PEEK[{s}]<3.40>)")
    return out


_DATA = re.compile(r"BINARY\[([^\]]*)\] ~?\{(\d+)\}\r\n")
_SIZE = re.compile(r"BINARY\.SIZE\[([^\]]*)\] (\d+)")


def sizes_checked(line: str, theirs: bool, odd: list) -> str:
    """BINARY.SIZE[s] n written as 'SIZE-OF-DATA' when n is the size of the BINARY[s] data in the
    same response.  Dovecot 2.3 sometimes answers a smaller BINARY.SIZE than the data it sends
    for the section (pyimap-imapd(8)); those are counted in ``odd`` and taken as right."""
    data = {m.group(1): int(m.group(2)) for m in _DATA.finditer(line)}

    def one(m):
        section, n = m.group(1), int(m.group(2))
        if data.get(section) == n:
            return f"BINARY.SIZE[{section}] SIZE-OF-DATA"
        if theirs and section in data:
            odd.append((line[:20], section, n, data[section]))
            return f"BINARY.SIZE[{section}] SIZE-OF-DATA"
        return m.group(0)

    return _SIZE.sub(one, line)


_CLOSE_CRLF = re.compile(r"--\r\n(?= BINARY[\[.]|\)$)")


def crlf_blind(line: str) -> str:
    """The documented difference (pyimap-imapd(8)): a part ending with a close delimiter
    gets the CRLF before the next boundary from Dovecot.  Its sizes are left out."""
    line = re.sub(r"\{\d+\}", "{n}", line)
    return re.sub(r"(BINARY\.SIZE\[[^\]]*\]) (\d+|SIZE-OF-DATA)", r"\1 n", line)


def compare(ours: dict, theirs: dict, crlf: set) -> list:
    """Every answer alike, but for Dovecot's BINARY.SIZE slips (returned) and the close
    delimiter's CRLF (the message numbers added to ``crlf``)."""
    odd: list = []
    for command in ours:
        a = [sizes_checked(x, False, odd) for x in ours[command]]
        b = [sizes_checked(x, True, odd) for x in theirs[command]]
        for i, (x, y) in enumerate(zip(a, b, strict=False)):  # a length mismatch fails below
            z = _CLOSE_CRLF.sub("--", y)
            if z != y and x != y:
                crlf.add(int(y.split()[1]))
                a[i], b[i] = crlf_blind(x), crlf_blind(z)
        assert a == b, command
    return odd


def test_binary_like_dovecot_over_the_corpus(twins):
    ours, theirs = twins(deliver_all)
    cmds = commands()
    crlf: set = set()
    odd = compare(answers(ours, cmds), answers(theirs, cmds), crlf)
    assert crlf == MULTIPART_FIRST
    # Dovecot's BINARY.SIZE of a base64 part of 4 messages (as [2] and [2.1]) is below its data's size
    assert len(odd) == 8 and all(said < size for _l, _s, said, size in odd), odd


def test_binary_like_dovecot_over_messages(twins):
    from pymda import maildir

    def fill(box):
        for data in MESSAGES:
            maildir.deliver(box, data, fsync=False)

    ours, theirs = twins(fill)
    cmds = commands()
    crlf: set = set()
    odd = compare(answers(ours, cmds), answers(theirs, cmds), crlf)
    assert len(odd) == 1 and all(said < size for _l, _s, said, size in odd), odd
