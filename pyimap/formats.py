"""IMAP text formats shared by the commands: flags, dates, UID sets.

No session state here: ``fetch`` and the server both format through these.
"""

from __future__ import annotations

import calendar
import re
import time

from pyimap.parser import Atom, ParseError

# Maildir info letters <-> IMAP system flags (P is Dovecot's $Forwarded).
LETTER_FLAG = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTER = {v.lower(): k for k, v in LETTER_FLAG.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ATOM_OK = re.compile(r"^[^\x00-\x20\x7f(){%*\"\\\]]+$")
_DATE_TIME = re.compile(r"^\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


def format_internaldate(ts: int) -> bytes:
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday,
        MONTH_NAMES[t.tm_mon - 1].encode(),
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def parse_date_time(text: str) -> int:
    m = _DATE_TIME.match(text)
    if not m:
        raise ParseError("Bad date-time")
    mon = (
        [x.upper() for x in MONTH_NAMES].index(m.group(2).upper()) + 1
        if m.group(2).upper() in [x.upper() for x in MONTH_NAMES]
        else None
    )
    if mon is None:
        raise ParseError("Bad month in date-time")
    try:
        ts = calendar.timegm(
            (int(m.group(3)), mon, int(m.group(1)), int(m.group(4)), int(m.group(5)), int(m.group(6)), 0, 0, 0)
        )
    except (ValueError, OverflowError):
        raise ParseError("Bad date-time") from None
    off = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    return ts - off if m.group(7) == "+" else ts + off


def uid_set_text(uids: list[int]) -> str:
    """[1,2,3,5] -> '1:3,5'."""
    out = []
    start: int | None = None
    prev = 0  # set with start
    for u in uids:
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


def flags_text(e, recent: bool) -> str:
    """The FLAGS list of index entry ``e``: ``(\\Seen $Label \\Recent)``."""
    flags = [LETTER_FLAG[c] for c in e.flags if c in LETTER_FLAG]
    flags += sorted(e.kw)
    if recent:
        flags.append("\\Recent")
    return "(" + " ".join(flags) + ")"


def flag_list_for(keywords) -> str:
    """The FLAGS announcement of a mailbox: the system flags and ``keywords``."""
    kws = sorted(keywords, key=str.lower)
    return "(" + " ".join(list(SYSTEM_FLAGS) + ["$Forwarded"] + [k for k in kws if k.lower() != "$forwarded"]) + ")"


def parse_flags(tokens) -> tuple[str, set[str]]:
    """A flag list from the client -> (Maildir letters, keywords)."""
    letters = set()
    kws: set[str] = set()
    if not isinstance(tokens, list):
        tokens = [tokens]
    for t in tokens:
        if not isinstance(t, Atom):
            raise ParseError("Flags must be atoms")
        low = t.lower()
        if low in FLAG_LETTER:
            letters.add(FLAG_LETTER[low])
        elif low == "\\recent":
            continue
        elif t.startswith("\\"):
            raise ParseError(f"Invalid system flag {t[:30]}")
        else:
            if not ATOM_OK.match(t) or len(t) > 100 or not t.isascii():  # flag-keyword is an ASCII atom
                raise ParseError("Invalid keyword")
            kws.add(str(t))
    return "".join(sorted(letters)), kws
