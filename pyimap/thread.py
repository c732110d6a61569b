"""THREAD (RFC 5256 sections 3 and 4): ORDEREDSUBJECT and REFERENCES, and the response text.

Sans-I/O, like ``pyimap.sort``: messages are objects with ``seq``, ``uid``, ``size``, ``idate``
and ``headers()``.  A thread is a ``Node`` tree; a dummy node (``msg`` None) stands for a
message that is referred to but not in the set.  Nothing recurses over the tree: a mailbox of
one long reply chain is as deep as it is long.
"""

from __future__ import annotations

import re

from pyimap.sort import base_subject, casemap, sent_date

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    __slots__ = ("msg", "parent", "children", "date", "seq")

    def __init__(self, msg=None) -> None:
        self.msg = msg
        self.parent: Node | None = None
        self.children: list[Node] = []
        self.date = 0  # sent date (RFC 5256 2.2), for a dummy its first child's
        self.seq = 0  # the tie-breaker: mailbox order

    def ancestors(self):
        n = self.parent
        while n is not None:
            yield n
            n = n.parent


class _Info:
    """What threading reads of one message, read once."""

    __slots__ = ("msg", "date", "subject", "reply")

    def __init__(self, msg) -> None:
        self.msg = msg
        headers = msg.headers()
        self.date = sent_date(headers, msg.idate)
        subject, self.reply = base_subject(headers.get("subject"))
        self.subject = casemap(subject)


def _leaf(info: _Info) -> Node:
    n = Node(info.msg)
    n.date, n.seq = info.date, info.msg.seq
    return n


def _adopt(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _order_key(n: Node):
    return (n.date, n.seq)


def ordered_subject(msgs: list) -> list[Node]:
    """RFC 5256 ORDEREDSUBJECT: messages grouped by base subject, each group's first (by sent
    date) the parent of the others; threads by the sent date of their first message."""
    infos = sorted((_Info(m) for m in msgs), key=lambda i: (i.subject, i.date, i.msg.seq))
    threads: list[Node] = []
    last_subject = None
    for info in infos:
        node = _leaf(info)
        if threads and info.subject == last_subject:
            _adopt(threads[-1], node)
        else:
            threads.append(node)
            last_subject = info.subject
    threads.sort(key=_order_key)
    return threads


_MSGID = re.compile(rb"<([^<>\s@]+@[^<>\s]+)>")


def message_ids(value: bytes | None) -> list[bytes]:
    """The valid message IDs (``<local@domain>``) of a field, in order, as compared (the
    text between the angle brackets)."""
    if not value:
        return []
    return _MSGID.findall(value)


def references(msgs: list) -> list[Node]:
    """RFC 5256 REFERENCES (section 3, after JWZ): link by Message-ID / References / In-Reply-To,
    prune dummies, sort by sent date, merge threads of the same base subject, sort siblings."""
    by_id: dict[bytes, Node] = {}
    infos: dict[int, _Info] = {}
    unique = 0
    for msg in msgs:  # (1) mailbox order: a duplicated Message-ID belongs to the first
        info = _Info(msg)
        headers = msg.headers()
        ids = message_ids(headers.get("message-id"))
        node = _leaf(info)
        infos[id(node)] = info
        if ids and (ids[0] not in by_id or by_id[ids[0]].msg is None):
            existing = by_id.get(ids[0])
            if existing is not None:  # a dummy made for an earlier reference: the message fills it
                existing.msg, existing.date, existing.seq = msg, node.date, node.seq
                infos[id(existing)] = info
                node = existing
            else:
                by_id[ids[0]] = node
        else:
            unique += 1
            by_id[b"\0%d" % unique] = node  # no (usable) Message-ID: one of its own
        refs = message_ids(headers.get("references")) or message_ids(headers.get("in-reply-to"))[:1]
        # (1A) each reference the parent of the next, unless one already has a parent or it loops
        prev: Node | None = None
        for ref in refs:
            cur = by_id.get(ref)
            if cur is None:
                cur = by_id[ref] = Node()
            if prev is not None and cur.parent is None and not _loops(prev, cur):
                _adopt(prev, cur)
            prev = cur
        # (1B) the last reference the message's parent, replacing any parent it had
        if prev is not None and prev is not node and not _loops(prev, node):
            _unlink(node)
            _adopt(prev, node)
        elif prev is None:
            _unlink(node)
    # (2) the parentless under the root
    roots = [n for n in by_id.values() if n.parent is None]
    # (3) prune the dummies
    roots = _prune(roots)
    # (4) the root level by sent date, a dummy by its earliest child
    _sort_level(roots, deep=False)
    # (5) merge threads whose base subject is the same
    roots = _merge_subjects(roots, infos)
    # (6) every set of siblings by sent date, the deepest first
    _sort_level(roots, deep=True)
    return roots


def _loops(parent: Node, child: Node) -> bool:
    """Would making ``parent`` the parent of ``child`` close a loop?"""
    return parent is child or any(a is child for a in parent.ancestors())


def _walk(roots: list[Node]) -> list[Node]:
    """Every node below the roots, parents before children (no recursion)."""
    out: list[Node] = []
    stack = list(reversed(roots))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n.children))
    return out


def _prune(roots: list[Node]) -> list[Node]:
    """(3) A dummy with no children goes; one with children gives them to its own parent, except
    at the root level when it has more than one."""
    for n in reversed(_walk(roots)):  # children settled before their parents
        kids: list[Node] = []
        for c in n.children:
            if c.msg is None:
                for g in c.children:
                    g.parent = n
                kids.extend(c.children)
            else:
                kids.append(c)
        n.children = kids
    out: list[Node] = []
    for r in roots:
        if r.msg is None and len(r.children) == 1:
            r.children[0].parent = None
            out.append(r.children[0])
        elif r.msg is not None or r.children:
            out.append(r)
    return out


def _sort_level(roots: list[Node], deep: bool) -> None:
    """Sort siblings by (sent date, mailbox order); a dummy takes its first child's place."""
    nodes = _walk(roots) if deep else roots
    for n in reversed(nodes):
        if n.children and (deep or n.msg is None):
            n.children.sort(key=_order_key)
        if n.msg is None and n.children:
            n.date, n.seq = n.children[0].date, n.children[0].seq
    roots.sort(key=_order_key)


def _merge_subjects(roots: list[Node], infos: dict[int, _Info]) -> list[Node]:
    def subject_of(n: Node) -> _Info:
        return infos[id(n if n.msg is not None else n.children[0])]

    # (5A-C) the subject table: one thread per base subject, preferring a dummy, then a
    # message that is neither a reply nor a forward
    table: dict[str, Node] = {}
    for n in roots:
        info = subject_of(n)
        if not info.subject:
            continue
        old = table.get(info.subject)
        if old is None or (old.msg is not None and (n.msg is None or (infos[id(old)].reply and not info.reply))):
            table[info.subject] = n
    # (5D) merge each thread into the table's one
    result = list(roots)  # the root level, a merged pair's dummy in the place of the table's thread
    dropped: set[int] = set()
    for n in roots:
        if n.parent is not None or id(n) in dropped:
            continue  # already merged under another
        info = subject_of(n)
        old = table.get(info.subject) if info.subject else None
        if old is None or old is n:
            continue
        if old.msg is None and n.msg is None:
            for c in n.children:
                c.parent = old
            old.children.extend(n.children)
            n.children = []
            dropped.add(id(n))
        elif old.msg is None or (n.msg is not None and info.reply and not infos[id(old)].reply):
            _adopt(old, n)
        else:
            dummy = Node()
            result[result.index(old)] = dummy
            _adopt(dummy, old)
            _adopt(dummy, n)
            table[info.subject] = dummy
    return [n for n in result if n.parent is None and id(n) not in dropped]


def render(threads: list[Node], number) -> str:
    """The THREAD response's data: ``(1 2 (3)(4 5))((6)(7))``; ``number(msg)`` gives the
    sequence number or UID shown (RFC 5256 thread-list)."""

    def pieces(n: Node) -> list:
        out: list = []
        if n.msg is not None:
            out.append(str(number(n.msg)))
            if len(n.children) == 1:
                return [*out, " ", n.children[0]]
            if n.children:
                out.append(" ")
        for c in n.children:
            out += ["(", c, ")"]
        return out

    text: list[str] = []
    stack: list = []
    for t in reversed(threads):
        stack += [")", t, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            text.append(item)
        else:
            stack.extend(reversed(pieces(item)))
    return "".join(text)
