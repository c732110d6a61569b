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
        def _esearch_text(self, tag: str, uid: bool, returns: list[str], matched: list, info) -> str: ...
        @staticmethod
        def _search_returns(args: list) -> tuple[list[str] | None, list]: ...

    def _sort_selection(self, tag: str, args: list, save: bool = False):
        """``charset search-key...`` -> (the matching messages with their headers read, the
        compiler's info), or None when the charset was refused; with ``save`` (RETURN (SAVE),
        RFC 5182) a failure empties the saved result."""
        from pyimap.search import compile_keys  # noqa: PLC0415 lazy

        if len(args) < 2:
            raise ParseError("Missing charset or search key")
        charset = self._search_charset(tag, args[0])
        if not charset:
            return None
        sel = self.sel
        assert sel is not None  # SELECTED state
        try:
            pred, info = compile_keys(args[1:], charset, sel.saved)
        except ParseError:
            if save:
                sel.saved = frozenset()
            raise
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

        returns, args = self._search_returns(args)  # RFC 5267 ESORT
        self._need(args, 3)
        criteria = parse_criteria(args[0])
        found = self._sort_selection(tag, args[1:], save=returns is not None and "SAVE" in returns)
        if found is None:
            return
        matched, info = found
        ordered = sort_messages(matched, criteria)
        if returns is not None:
            text = self._esearch_text(tag, uid, returns, ordered, info)
            if info.uses_modseq:
                self.condstore = True
        else:
            text = "SORT" + "".join(f" {c.uid if uid else c.seq}" for c in ordered) + self._modseq_tail(matched, info)
        if text:
            self._untagged(text)
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
        matched, info = found
        if info.uses_modseq:
            self.condstore = True  # RFC 7162 3.1: a MODSEQ search key enables CONDSTORE
        threads = ordered_subject(matched) if algorithm == "ORDEREDSUBJECT" else references(matched)
        text = render(threads, (lambda c: c.uid) if uid else (lambda c: c.seq))
        self._untagged("THREAD" + (" " + text if text else ""))
        self._done(tag, "THREAD completed", allow_expunge=uid)
