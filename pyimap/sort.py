"""SORT (RFC 5256 section 3, RFC 5957 SORT=DISPLAY): criteria, sort keys and the base subject.

Sans-I/O: the messages come as objects with ``seq``, ``size``, ``idate`` (INTERNALDATE,
epoch seconds) and ``headers()`` (a ``pyimap.message.Headers``); reading them is the caller's.

- ``base_subject`` is RFC 5256 section 2.1, step by step (``(base, is_reply_or_forward)``,
  the flag used by THREAD=REFERENCES, section 5 step 5);
- ``sent_date`` is section 2.2: the Date field in UTC, else the INTERNALDATE;
- string keys compare with ``i;ascii-casemap`` (RFC 4790: a-z folded to A-Z, then octets);
  equal keys keep the mailbox order (section 3: ties by sequence number).
"""

from __future__ import annotations

import calendar
import re

from pyimap.parser import Atom, ParseError

KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?: |\(fwd\))\Z", re.IGNORECASE)  # subj-trailer = "(fwd)" / WSP
_BLOB = r"\[[^\[\]]*\] *"  # subj-blob = "[" *BLOBCHAR "]" *WSP
_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?) *(?:{_BLOB})?:", re.IGNORECASE)  # *subj-blob subj-refwd
_BLOB_PREFIX = re.compile(_BLOB)


def casemap(text: str) -> str:
    """i;ascii-casemap: only the 26 ASCII letters are folded."""
    return text.translate(_ASCII_UPPER)


def parse_criteria(token) -> list[tuple[str, bool]]:
    """``(REVERSE DATE SUBJECT)`` -> [("DATE", True), ("SUBJECT", False)]."""
    if not isinstance(token, list) or not token:
        raise ParseError("Sort criteria must be a parenthesised list")
    out: list[tuple[str, bool]] = []
    reverse = False
    for t in token:
        name = t.upper() if isinstance(t, Atom) else ""
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in KEYS:
            raise ParseError("Unknown sort criterion")
        out.append((name, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE must come before a sort key")
    return out


def base_subject(value: bytes | None) -> tuple[str, bool]:
    """RFC 5256 2.1: the base subject of a Subject field's value (in its own case), and whether
    the extraction removed a subj-refwd, a "(fwd)" trailer or a [fwd: ...] wrapping."""
    if not value:
        return "", False
    from pyimap.message import decode_words  # noqa: PLC0415 lazy

    # (1) encoded words to UTF-8; tabs, continuations and runs of spaces to one space
    text = _WSP_RUN.sub(" ", decode_words(value))
    reply = False
    while True:
        # (2) trailing subj-trailer text, repeatedly
        while (m := _TRAILER.search(text)) is not None:
            reply |= m.group(0) != " "
            text = text[: m.start()]
        while True:
            # (3) prefix text matching subj-leader: a space, or *subj-blob subj-refwd
            found = False
            if text.startswith(" "):
                text, found = text[1:], True
            if (m := _LEADER.match(text)) is not None:
                text, found, reply = text[m.end() :], True, True
            # (4) a leading subj-blob, if what remains is a non-empty subj-base
            if (m := _BLOB_PREFIX.match(text)) is not None and text[m.end() :].strip(" "):
                text, found = text[m.end() :], True
            # (5) until neither (3) nor (4) applies
            if not found:
                break
        # (6) "[fwd:" ... "]" around it: unwrap and start again from (2)
        if len(text) >= 6 and text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, reply = text[5:-1], True
            continue
        return text, reply  # (7)


def sent_date(headers, idate: int) -> int:
    """RFC 5256 2.2: the Date field as UTC epoch seconds; the INTERNALDATE when it is missing
    or cannot be parsed."""
    value = headers.get("date")
    if value:
        from email.utils import parsedate_tz  # noqa: PLC0415 lazy

        try:
            t = parsedate_tz(value.decode("ascii", "replace"))
            if t is not None:
                return calendar.timegm((*t[:6], 0, 0, 0)) - (t[9] or 0)
        except (ValueError, OverflowError, TypeError, IndexError):
            pass
    return idate


def first_address(headers, name: str):
    """The first address of field ``name`` as ENVELOPE parses it, or None."""
    value = headers.get(name)
    if value is None:
        return None
    from pyimap.message import parse_addresses  # noqa: PLC0415 lazy

    addrs = parse_addresses(value)
    return addrs[0] if addrs else None


def mailbox_key(headers, name: str) -> str:
    """CC, FROM, TO: the addr-mailbox of the first address (RFC 5256 3), "" when there is none."""
    a = first_address(headers, name)
    if a is None or a[2] is None:
        return ""
    return casemap(a[2].decode("utf-8", "replace"))


def display_key(headers, name: str) -> str:
    """DISPLAYFROM, DISPLAYTO (RFC 5957 3): the first address's display-name, decoded, else its
    addr-spec (mailbox@host), "" when there is none."""
    a = first_address(headers, name)
    if a is None:
        return ""
    personal, _adl, mailbox, host = a
    if personal:
        from pyimap.message import decode_words  # noqa: PLC0415 lazy

        shown = decode_words(personal)
        if shown.strip():
            return casemap(shown)
    if mailbox is None:
        return ""
    spec = mailbox + (b"@" + host if host is not None else b"")
    return casemap(spec.decode("utf-8", "replace"))


def key_of(msg, criterion: str):
    """The comparable value of one criterion for one message."""
    if criterion == "ARRIVAL":
        return msg.idate
    if criterion == "SIZE":
        return msg.size
    headers = msg.headers()
    if criterion == "DATE":
        return sent_date(headers, msg.idate)
    if criterion == "SUBJECT":
        return casemap(base_subject(headers.get("subject"))[0])
    if criterion in ("FROM", "TO", "CC"):
        return mailbox_key(headers, criterion.lower())
    return display_key(headers, "from" if criterion == "DISPLAYFROM" else "to")


def sort_messages(msgs: list, criteria: list[tuple[str, bool]]) -> list:
    """The messages (given in mailbox order) in the order of the criteria; ties keep mailbox order."""
    keys = [[key_of(m, c) for c, _rev in criteria] for m in msgs]
    order = list(range(len(msgs)))
    # stable sorts from the last criterion to the first; reverse=True keeps ties in order too
    for k in range(len(criteria) - 1, -1, -1):
        column = [row[k] for row in keys]
        order.sort(key=column.__getitem__, reverse=criteria[k][1])
    return [msgs[i] for i in order]
