"""SORT and THREAD (RFC 5256, RFC 5957 SORT=DISPLAY) on the selected mailbox.

A mixin of ``pyimap.imap_server.IMAPServer``, run in a Job like SEARCH: the search keys after
the charset are SEARCH's (``pyimap.search``), the messages they select are read here, and the
order and the threads come from the sans-I/O ``pyimap.sort`` and ``pyimap.thread``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyimap.core import CommandContext
from pyimap.parser import Atom, ParseError


class SortCommands(CommandContext):
    if TYPE_CHECKING:  # pyimap.selected's

        def _search_charset(self, tag: str, token) -> str: ...
        def _search_matches(self, pred) -> list: ...

    def _sort_selection(self, tag: str, args: list):
        """``charset search-key...`` -> (the matching messages with their headers read, the
        compiler's info), or None when the charset was refused."""
        from pyimap.search import compile_keys  # noqa: PLC0415 lazy

        if len(args) < 2:
            raise ParseError("Missing charset or search key")
        charset = self._search_charset(tag, args[0])
        if not charset:
            return None
        sel = self.sel
        assert sel is not None  # SELECTED state
        pred, info = compile_keys(args[1:], charset, sel.saved)
        matched = self._search_matches(pred)
        for cand in matched:
            try:
                cand.headers()
            except FileNotFoundError:  # renamed (flags) by another process since the search
                e = sel.index.resync().entries.get(cand.uid)
                if e is not None:
                    cand._path = f"{sel.index.dir}/{e.sub}/{e.name}"
                    try:
                        cand.headers()
                        continue
                    except FileNotFoundError:
                        pass
                from pyimap.message import Headers  # noqa: PLC0415 lazy

                cand._headers = Headers(b"")  # expunged meanwhile: sorted as a message with no fields
        return matched, info

    def _modseq_tail(self, matched: list, info) -> str:
        """RFC 7162 3.1.5: a search with MODSEQ adds the highest mod-sequence of the result."""
        if not info.uses_modseq:
            return ""
        self.condstore = True
        return f" (MODSEQ {max(c.modseq for c in matched)})" if matched else ""

    def cmd_sort(self, tag, args, uid=False):
        from pyimap.sort import parse_criteria, sort_messages  # noqa: PLC0415 lazy

        self._need(args, 3)
        criteria = parse_criteria(args[0])
        found = self._sort_selection(tag, args[1:])
        if found is None:
            return
        matched, info = found
        ordered = sort_messages(matched, criteria)
        self._untagged(
            "SORT" + "".join(f" {c.uid if uid else c.seq}" for c in ordered) + self._modseq_tail(matched, info)
        )
        self._done(tag, "SORT completed", allow_expunge=uid)

    def cmd_thread(self, tag, args, uid=False):
        from pyimap.thread import ordered_subject, references, render  # noqa: PLC0415 lazy

        self._need(args, 3)
        algorithm = args[0].upper() if isinstance(args[0], Atom) else ""
        if algorithm not in ("ORDEREDSUBJECT", "REFERENCES"):
            raise ParseError("Unknown thread algorithm")
        found = self._sort_selection(tag, args[1:])
        if found is None:
            return
        matched, _info = found
        threads = ordered_subject(matched) if algorithm == "ORDEREDSUBJECT" else references(matched)
        text = render(threads, (lambda c: c.uid) if uid else (lambda c: c.seq))
        self._untagged("THREAD" + (" " + text if text else ""))
        self._done(tag, "THREAD completed", allow_expunge=uid)
