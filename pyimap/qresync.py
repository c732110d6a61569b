"""QRESYNC (RFC 7162 section 3.2): which UIDs vanished, for SELECT/EXAMINE ...
(QRESYNC (...)) and UID FETCH ... (CHANGEDSINCE n VANISHED).

UID sets are lists of (lo, hi) ranges here, never expanded: a client may
name 1:4294967295.  The expunged UIDs come from the folder's snapshot
(``vanished_since``); when the folder no longer knows all of them (its list
is bounded, or the index predates it) every UID of the client's range that
is not in the mailbox counts as vanished, as RFC 7162 3.2.5.1 allows, less
what the client's sequence match data shows it knows already (3.2.5.2, the
way Dovecot reads it).  Imported only by sessions that use QRESYNC.
"""

from __future__ import annotations

import bisect
from typing import Any, NamedTuple

from pyimap.parser import Atom, ParseError, is_number, parse_sequence_set

ALL_UIDS = [(1, 0xFFFFFFFF)]


class Params(NamedTuple):
    """SELECT's ``QRESYNC (uidvalidity modseq [known-uids [(seq-match uid-match)]])``."""

    uidvalidity: int
    modseq: int
    known: list[tuple[int, int]]  # the client's UIDs (all when it gave none)
    sample: list[tuple[int, int]]  # (sequence number, UID) pairs the client knows


def merge(ranges) -> list[tuple[int, int]]:
    """(lo, hi) ranges in any order (lo > hi allowed) -> sorted, overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def text(ranges) -> str:
    """Sorted ranges -> an IMAP sequence set: ``1:3,5``."""
    return ",".join(f"{lo}:{hi}" if hi != lo else str(lo) for lo, hi in ranges)


def intersect(a, b) -> list[tuple[int, int]]:
    """Two sorted, merged range lists -> their common part."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def contains(ranges, n: int) -> bool:
    """Is ``n`` in sorted, merged ``ranges``?"""
    i = bisect.bisect_right(ranges, (n, 0xFFFFFFFF))
    return i > 0 and ranges[i - 1][0] <= n <= ranges[i - 1][1]


def _no_star(token, what: str) -> list[tuple[int, int]]:
    if not isinstance(token, Atom):
        raise ParseError(f"Invalid QRESYNC {what}")
    try:
        ranges = parse_sequence_set(str(token))
    except ParseError:
        raise ParseError(f"Invalid QRESYNC {what}") from None
    if any(lo is None or hi is None for lo, hi in ranges):
        raise ParseError(f"Invalid QRESYNC {what}")
    return merge((lo, hi) for lo, hi in ranges if lo is not None and hi is not None)


def _count(ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def _nth(ranges, n: int) -> int | None:
    """The n-th (0-based) member of sorted ranges, or None."""
    for lo, hi in ranges:
        if n <= hi - lo:
            return lo + n
        n -= hi - lo + 1
    return None


def parse_params(token) -> Params:
    """The list after QRESYNC; ParseError (BAD) when malformed."""
    if not isinstance(token, list):
        raise ParseError("QRESYNC parameters missing")
    if (
        len(token) < 2
        or not all(isinstance(t, Atom) and is_number(str(t)) for t in token[:2])
        or int(token[0]) > 0xFFFFFFFF
        or int(token[1]) >= 2**63
    ):
        raise ParseError("Invalid QRESYNC parameters")
    rest = token[2:]
    known = ALL_UIDS
    if rest and not isinstance(rest[0], list):
        known = _no_star(rest[0], "known-uids")
        rest = rest[1:]
    sample: list[tuple[int, int]] = []
    if rest and isinstance(rest[0], list):
        match = rest[0]
        if len(match) != 2:
            raise ParseError("Invalid QRESYNC known set")
        seqs = _no_star(match[0], "known-sequence-set")
        uids = _no_star(match[1], "known-uid-set")
        if _count(seqs) != _count(uids):
            raise ParseError("Invalid QRESYNC sets")
        # Dovecot's reading: the ends of each UID range with the sequence numbers in the same places
        n = 0
        for lo, hi in uids:
            for uid in (lo, hi) if hi > lo else (lo,):
                seq = _nth(seqs, n if uid == lo else n + hi - lo)
                assert seq is not None  # the counts are equal
                sample.append((seq, uid))
            n += hi - lo + 1
        rest = rest[1:]
    if rest:
        raise ParseError("Invalid QRESYNC parameters")
    return Params(int(token[0]), int(token[1]), known, sample)


def vanished(snap: Any, view: list[int], since: int, within, sample=()) -> list[tuple[int, int]]:
    """The UIDs of ``within`` (sorted ranges) expunged after MODSEQ ``since``.

    ``view``: the UIDs in the mailbox now, sorted.  When the folder no longer
    knows every expunge since then, every UID of ``within`` below UIDNEXT that
    is not in ``view``, less the UIDs up to the last (sequence number, UID)
    pair of ``sample`` that still holds (nothing before it was expunged)."""
    gone = snap.vanished_since(since)
    if gone is not None:
        return intersect(merge(gone), within)
    out = []
    top = snap.uidnext - 1
    for lo, hi in within:
        hi = min(hi, top)
        if lo > hi:
            break
        i = bisect.bisect_left(view, lo)
        nxt = lo
        while i < len(view) and view[i] <= hi:
            if view[i] > nxt:
                out.append((nxt, view[i] - 1))
            nxt = view[i] + 1
            i += 1
        if nxt <= hi:
            out.append((nxt, hi))
    upto = 0
    for seq, uid in sample:
        if seq > len(view) or view[seq - 1] != uid:
            break
        upto = uid
    if upto:
        out = intersect(out, [(upto + 1, 0xFFFFFFFF)])
    return out
