"""The selected mailbox: the session's view of it (``Selected``) and the
commands that read and change its messages -- SELECT/EXAMINE, FETCH,
SEARCH, STORE, COPY/MOVE, EXPUNGE, CLOSE, IDLE, the untagged updates --
and APPEND, which adds one.

A mixin of ``pyimap.imap_server.IMAPServer``.  Messages are reached only
through the store's folders (``pyimap.storage.Folder``).
"""

from __future__ import annotations

import bisect
import time
from functools import partial
from typing import Any

from pyimap.core import AUTH, SELECTED, CommandContext
from pyimap.formats import LETTER_FLAG, flag_list_for, flags_text, parse_flags, uid_set_text
from pyimap.parser import Atom, ParseError, expand, is_number, parse_sequence_set
from pyimap.storage import Folder
from pymta.lib.sansio import Watch


class Selected:
    """The session's view of the selected mailbox (RFC 3501 sequence numbers)."""

    def __init__(self, name: str, index: Folder, readonly: bool, snap) -> None:
        self.name = name
        self.index = index
        self.readonly = readonly
        self.snap = snap
        self.uidvalidity = snap.uidvalidity
        self.view: list[int] = list(snap.entries)
        self.known: dict[int, int] = {u: e.modseq for u, e in snap.entries.items()}
        self.recent: set[int] = set()
        self.keywords: set[str] = set()
        self.ghosts = False  # view holds UIDs expunged elsewhere, not yet announced
        self.expunged: dict = {}  # those UIDs -> their last known index entries
        self.saved: frozenset[int] = frozenset()  # RFC 5182 SEARCH RETURN (SAVE), named by ``$``

    def seq_of(self, uid: int) -> int:
        i = bisect.bisect_left(self.view, uid)
        return i + 1 if i < len(self.view) and self.view[i] == uid else 0


class SelectedCommands(CommandContext):
    sel: Selected | None

    def cmd_select(self, tag, args, readonly=False):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 1, 2)
        name = self._mailbox(args[0])
        qresync = None
        try:
            if len(args) == 2:
                if not isinstance(args[1], list):
                    raise ParseError("Bad SELECT parameters")
                params = args[1]
                i = 0
                while i < len(params):
                    p = str(params[i]).upper() if isinstance(params[i], Atom) else ""
                    if p == "CONDSTORE":
                        self.condstore = True
                        i += 1
                    elif p == "QRESYNC":
                        if "QRESYNC" not in self.enabled:
                            raise ParseError("QRESYNC not enabled")
                        from pyimap.qresync import parse_params  # noqa: PLC0415 lazy

                        qresync = parse_params(params[i + 1] if i + 1 < len(params) else None)
                        i += 2
                    else:
                        raise ParseError("Unknown SELECT parameter")
        finally:
            # a SELECT that fails, even with BAD, leaves no mailbox selected (RFC 3501 6.3.1)
            if self.sel is not None:
                self.sel = None
                self.state = AUTH
                if self.condstore or self.rev2:  # RFC 7162 3.2.11, RFC 9051 6.3.2
                    self._untagged("OK [CLOSED] Previous mailbox closed")
        if not self.store.exists(name):
            self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist")
            return
        index = self.store.index(name)
        # IMAP4rev2 shows no \Recent (RFC 9051 E), so claims none: they stay for IMAP4rev1 sessions
        snap, recent = (index.sync(), set()) if self.rev2 else _see_recent(index, index.sync(), readonly)
        sel = Selected(name, index, readonly, snap)
        sel.recent = recent
        sel.keywords = set(snap.keywords())
        self.sel = sel
        self.state = SELECTED
        self._untagged(f"FLAGS {flag_list_for(sel.keywords)}")
        if readonly:
            self._untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            self._untagged(f"OK [PERMANENTFLAGS {flag_list_for(sel.keywords)[:-1]} \\*)] Flags permitted")
        self._untagged(f"{len(sel.view)} EXISTS")
        if self.rev2:  # no RECENT, no UNSEEN code; a LIST instead (RFC 9051 6.3.2)
            self._select_list(name)
        else:
            self._untagged(f"{len(recent)} RECENT")
            for i, uid in enumerate(sel.view):
                if "S" not in snap.entries[uid].flags:
                    self._untagged(f"OK [UNSEEN {i + 1}] First unseen")
                    break
        self._untagged(f"OK [UIDVALIDITY {snap.uidvalidity}] UIDs valid")
        self._untagged(f"OK [UIDNEXT {snap.uidnext}] Predicted next UID")
        self._untagged(f"OK [HIGHESTMODSEQ {snap.highestmodseq}] Highest")
        if qresync is not None and qresync.uidvalidity == snap.uidvalidity:
            self._qresync(qresync)
        self._tagged(
            tag, f"OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {'EXAMINE' if readonly else 'SELECT'} completed"
        )

    def _qresync(self, params) -> None:
        """RFC 7162 3.2.5: what changed since the client's MODSEQ among the UIDs it
        knows: VANISHED (EARLIER) for the expunged ones, then FETCH (UID FLAGS MODSEQ)."""
        from pyimap import qresync  # noqa: PLC0415 lazy

        sel = self.sel
        assert sel is not None  # just selected
        gone = qresync.vanished(sel.snap, sel.view, params.modseq, params.known, params.sample)
        if gone:
            self._untagged(f"VANISHED (EARLIER) {qresync.text(gone)}")
        for seq, u in enumerate(sel.view, 1):
            e = sel.snap.entries[u]
            if e.modseq > params.modseq and qresync.contains(params.known, u):
                self._untagged(f"{seq} FETCH (UID {u} FLAGS {flags_text(e, u in sel.recent)} MODSEQ ({e.modseq}))")

    def cmd_examine(self, tag, args):
        self.cmd_select(tag, args, readonly=True)

    # -- selected ---------------------------------------------------------------------

    def cmd_check(self, tag, args):
        self._need(args, 0, 0)
        self._done(tag, "CHECK completed")

    def cmd_close(self, tag, args):
        self._need(args, 0, 0)
        sel = self.sel
        assert sel is not None  # SELECTED state
        if not sel.readonly:
            snap = sel.index.sync()
            doomed = [u for u in sel.view if u in snap.entries and "T" in snap.entries[u].flags]
            if doomed:
                sel.index.expunge(doomed)
        self.sel = None
        self.state = AUTH
        self._tagged(tag, "OK CLOSE completed")

    def cmd_unselect(self, tag, args):
        self._need(args, 0, 0)
        self.sel = None
        self.state = AUTH
        self._tagged(tag, "OK UNSELECT completed")

    def cmd_expunge(self, tag, args, uid=False):
        sel = self.sel
        assert sel is not None  # SELECTED state
        if uid:
            self._need(args, 1, 1)
            ranges = parse_sequence_set(str(args[0]))
        else:
            self._need(args, 0, 0)
            ranges = None
        if sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        candidates = sel.view
        if ranges is not None:
            candidates = expand(ranges, sel.view, sel.view[-1] if sel.view else 0)
        doomed = [u for u in candidates if u in snap.entries and "T" in snap.entries[u].flags]
        if doomed:
            sel.index.expunge(doomed)
        self._done(tag, "EXPUNGE completed")

    def _resolve(self, token, uid: bool) -> list[int]:
        """A sequence set -> the UIDs it names in the current view."""
        sel = self.sel
        assert sel is not None  # SELECTED state
        if not isinstance(token, Atom):
            raise ParseError("Bad sequence set")
        if str(token) == "$":  # RFC 5182: the saved result, less what was expunged since
            return [u for u in sel.view if u in sel.saved]
        ranges = parse_sequence_set(str(token))
        if uid:
            star = sel.view[-1] if sel.view else 0
            return expand(ranges, sel.view, star)
        n = len(sel.view)
        if n == 0:
            raise ParseError("No messages")
        for lo, hi in ranges:
            for v in (lo, hi):
                if v is not None and v > n:
                    raise ParseError("Invalid message sequence number")
        seqs = expand(ranges, list(range(1, n + 1)), n)
        return [sel.view[s - 1] for s in seqs]

    def cmd_store(self, tag, args, uid=False):
        self._need(args, 3, 4)
        sel = self.sel
        assert sel is not None  # SELECTED state
        uids = self._resolve(args[0], uid)
        args = args[1:]
        unchanged_since = None
        if isinstance(args[0], list):
            mods = args[0]
            if len(mods) != 2 or str(mods[0]).upper() != "UNCHANGEDSINCE" or not is_number(str(mods[1])):
                raise ParseError("Bad STORE modifier")
            unchanged_since = int(mods[1])
            self.condstore = True
            args = args[1:]
        self._need(args, 2, 2)
        item = str(args[0]).upper() if isinstance(args[0], Atom) else ""
        silent = item.endswith(".SILENT")
        if silent:
            item = item[:-7]
        if item not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ParseError("Bad STORE data item")
        letters, kws = parse_flags(args[1])
        if sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        changes = {}
        modified = []
        for u in uids:
            e = snap.entries.get(u)
            if e is None:
                continue
            if unchanged_since is not None and e.modseq > unchanged_since:
                modified.append(u)
                continue
            if item == "FLAGS":
                nl, nk = set(letters), set(kws)
                keep = set(e.flags) - set(LETTER_FLAG)  # letters we do not map stay
                nl |= keep
            elif item == "+FLAGS":
                nl, nk = set(e.flags) | set(letters), set(e.kw) | kws
            else:
                nl, nk = set(e.flags) - set(letters), set(e.kw) - kws
            changes[u] = ("".join(sorted(nl)), nk)
        done = sel.index.set_flags(changes) if changes else {}
        if kws - sel.keywords:
            self._announce_keywords(kws)
        for u in uids:
            e = done.get(u)
            if e is None:
                continue
            seq = sel.seq_of(u)
            if not silent or (unchanged_since is not None):
                parts = []
                if uid or "QRESYNC" in self.enabled:  # RFC 7162 3.2.4 (and as Dovecot does)
                    parts.append(f"UID {u}")
                if not silent:
                    parts.append(f"FLAGS {flags_text(e, u in sel.recent)}")
                if self.condstore:
                    parts.append(f"MODSEQ ({e.modseq})")
                if parts and seq:
                    self._untagged(f"{seq} FETCH ({' '.join(parts)})")
            sel.known[u] = e.modseq
        code = ""
        if modified:
            if uid:
                code = f"[MODIFIED {uid_set_text(modified)}]"
            else:
                code = f"[MODIFIED {uid_set_text(sorted(sel.seq_of(u) for u in modified))}]"
        self._done(tag, "STORE completed", allow_expunge=uid, code=code)

    def cmd_copy(self, tag, args, uid=False, move=False):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 2, 2)
        sel = self.sel
        assert sel is not None  # SELECTED state
        uids = self._resolve(args[0], uid)
        name = self._mailbox(args[1])
        if not self.store.exists(name):
            self._tagged(tag, "NO [TRYCREATE] Mailbox does not exist")
            return
        if move and sel.readonly:
            self._tagged(tag, "NO [READ-ONLY] Mailbox is read-only")
            return
        snap = sel.index.sync()
        present = [u for u in uids if u in snap.entries]
        if len(present) < len(uids) and not uid:
            self._tagged(tag, "NO Some of the messages were expunged")
            return
        dest = self.store.index(name)
        if not present:
            self._done(tag, f"{'MOVE' if move else 'COPY'} completed")
            return
        if not move:  # RFC 9208: NO [OVERQUOTA], nothing copied (a MOVE takes no more room)
            self.store.quota_check(self.store.stored_size([snap.entries[u] for u in present]), len(present))
        uidvalidity, pairs = sel.index.copy_into(dest, present)
        code = (
            f"[COPYUID {uidvalidity} {uid_set_text([p[0] for p in pairs])} {uid_set_text([p[1] for p in pairs])}]"
            if pairs
            else ""
        )
        if move:
            if code:
                self._untagged(f"OK {code} Moved")
            sel.index.expunge([p[0] for p in pairs])
            self._done(tag, "MOVE completed")
            return
        self._done(tag, "COPY completed", code=code)

    def cmd_move(self, tag, args, uid=False):
        self.cmd_copy(tag, args, uid=uid, move=True)

    # -- SEARCH --

    def cmd_search(self, tag, args, uid=False):
        from pyimap.search import compile_keys  # noqa: PLC0415 lazy

        charset = "UTF-8"
        returns, args = self._search_returns(args)
        if returns is None and self.rev2:
            returns = ["ALL"]  # IMAP4rev2 answers SEARCH with ESEARCH (RFC 9051 6.4.4)
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
            if "UTF8=ACCEPT" in self.enabled and not self.rev2:
                raise ParseError("No CHARSET after ENABLE UTF8=ACCEPT")  # RFC 6855 3
            charset = self._search_charset(tag, args[1])
            if not charset:
                return
            args = args[2:]
        sel = self.sel
        assert sel is not None  # SELECTED state
        try:
            pred, info = compile_keys(args, charset, sel.saved)
        except ParseError:
            if returns is not None and "SAVE" in returns:
                sel.saved = frozenset()  # RFC 5182 2.1: a failed SAVE leaves it empty
            raise
        matched = self._search_matches(pred)
        if returns is not None:
            text = self._esearch_text(tag, uid, returns, matched, info)
        else:
            hits = [c.uid for c in matched] if uid else [c.seq for c in matched]
            text = " ".join(["SEARCH", *map(str, hits)])
            if info.uses_modseq and matched:
                text += f" (MODSEQ {max(c.modseq for c in matched)})"
        if info.uses_modseq:
            self.condstore = True
        if text:
            self._untagged(text)
        self._done(tag, "SEARCH completed", allow_expunge=uid)

    @staticmethod
    def _search_returns(args: list) -> tuple[list[str] | None, list]:
        """RFC 4731 ``RETURN (options)`` at the start of SEARCH (RFC 5267: of SORT): the options
        (``()`` is ALL), or None for the plain response; and the arguments after them."""
        if not (args and isinstance(args[0], Atom) and args[0].upper() == "RETURN"):
            return None, args
        if len(args) < 2 or not isinstance(args[1], list):
            raise ParseError("RETURN needs a list")
        returns: list[str] = []
        for opt in args[1]:
            name = opt.upper() if isinstance(opt, Atom) else ""
            if name not in ("MIN", "MAX", "COUNT", "ALL", "SAVE"):
                raise ParseError("Unknown RETURN option")
            if name not in returns:
                returns.append(name)
        return returns or ["ALL"], args[2:]

    def _esearch_text(self, tag: str, uid: bool, returns: list[str], matched: list, info) -> str:
        """The ESEARCH response (RFC 4731) to a SEARCH or SORT RETURN, matched in the answer's
        order (RFC 5267: MIN and MAX of a SORT are its first and last, ALL in its order), after
        keeping the result for ``$`` if SAVE asked (RFC 5182); "" for SAVE alone."""
        sel = self.sel
        assert sel is not None  # SELECTED state
        hits = [c.uid if uid else c.seq for c in matched]
        if "SAVE" in returns:
            sel.saved = frozenset(c.uid for c in matched)
            if returns == ["SAVE"]:
                return ""  # RETURN (SAVE) alone: no ESEARCH response (RFC 5182 2.1)
        text = f'ESEARCH (TAG "{tag}")' + (" UID" if uid else "")
        if hits and "MIN" in returns:
            text += f" MIN {hits[0]}"
        if hits and "MAX" in returns:
            text += f" MAX {hits[-1]}"
        if hits and "ALL" in returns:
            text += f" ALL {uid_set_text(hits)}"  # ascending runs joined, in the answer's order
        if "COUNT" in returns:
            text += f" COUNT {len(hits)}"
        if info.uses_modseq and hits:
            text += f" MODSEQ {max(c.modseq for c in matched)}"
        return text

    def _search_charset(self, tag: str, token) -> str:
        """The Python codec of a SEARCH/SORT/THREAD charset, or "" after refusing it."""
        cs = self._astring(token).upper()
        if cs not in ("UTF-8", "US-ASCII"):
            self._tagged(tag, "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return ""
        return "utf-8" if cs == "UTF-8" else "ascii"

    def _search_matches(self, pred) -> list:
        """The selected mailbox's messages (``pyimap.search.Candidate``, in mailbox order) that
        ``pred`` accepts; run in a Job (it reads headers and text as the keys need)."""
        from pyimap.search import Candidate  # noqa: PLC0415 lazy

        sel = self.sel
        assert sel is not None  # SELECTED state
        snap = sel.index.sync()
        folder = sel.index.dir
        max_seq = len(sel.view)
        max_uid = sel.view[-1] if sel.view else 0
        matched = []
        entries = snap.entries
        recent = sel.recent
        flag_sets: dict = {}  # (letters, keywords) -> the flag names: a few distinct sets per folder
        for seq, u in enumerate(sel.view, 1):
            e = entries.get(u)
            if e is None:
                continue
            fkey = (e.flags, frozenset(e.kw)) if e.kw else e.flags
            flags = flag_sets.get(fkey)
            if flags is None:
                flags = frozenset([LETTER_FLAG[c] for c in e.flags if c in LETTER_FLAG]).union(e.kw)
                flag_sets[fkey] = flags
            cand = Candidate(
                seq, u, flags, u in recent, e.size, e.idate, e.modseq, max_seq, max_uid, None, (folder, e.base), e
            )
            try:
                ok = pred(cand)
            except FileNotFoundError:
                # renamed by another process (flags) between our index read and the open
                snap = sel.index.resync()
                entries = snap.entries
                e = entries.get(u)
                ok = False
                if e is not None:
                    cand._path = f"{folder}/{e.sub}/{e.name}"
                    cand.modseq = e.modseq
                    try:
                        ok = pred(cand)
                    except FileNotFoundError:
                        ok = False
            if ok:
                matched.append(cand)
        return matched

    # -- FETCH --

    def _parse_fetch_items(self, token) -> list[tuple]:
        from pyimap.fetch import parse_items  # noqa: PLC0415 lazy

        return parse_items(token)

    def cmd_fetch(self, tag, args, uid=False):
        from pyimap.fetch import FetchFailed, render_expunged, render_message  # noqa: PLC0415 lazy

        self._need(args, 2, 3)
        sel = self.sel
        assert sel is not None  # SELECTED state
        uids = self._resolve(args[0], uid)
        items = self._parse_fetch_items(args[1])
        changed_since = None
        vanished = False
        if len(args) == 3:
            mods = args[2]
            if not isinstance(mods, list):
                raise ParseError("Bad FETCH modifier")
            i = 0
            while i < len(mods):
                name = mods[i].upper() if isinstance(mods[i], Atom) else ""
                if name == "CHANGEDSINCE" and i + 1 < len(mods) and is_number(str(mods[i + 1])):
                    changed_since = int(mods[i + 1])
                    i += 2
                elif name == "VANISHED" and uid:  # RFC 7162 3.2.6: UID FETCH only
                    if "QRESYNC" not in self.enabled:
                        raise ParseError("QRESYNC not enabled")
                    vanished = True
                    i += 1
                else:
                    raise ParseError("Bad FETCH modifier")
            if changed_since is None:
                raise ParseError("VANISHED used without CHANGEDSINCE" if vanished else "Bad FETCH modifier")
            self.condstore = True
            if ("MODSEQ",) not in items:
                items.append(("MODSEQ",))
        if self.condstore and ("MODSEQ",) not in items and any(i[0] == "FLAGS" for i in items):
            items.append(("MODSEQ",))
        if uid and not any(i[0] == "UID" for i in items):
            items.insert(0, ("UID",))
        sets_seen = not sel.readonly and any(
            i[0] in ("BODY[]", "BINARY[]", "RFC822", "RFC822.TEXT") and i[-1] is False for i in items
        )
        snap = sel.index.sync()
        if sets_seen:
            changes = {}
            for u in uids:
                e = snap.entries.get(u)
                if e is not None and "S" not in e.flags:
                    changes[u] = (e.flags + "S", e.kw)
            if changes:
                sel.index.set_flags(changes)
                snap = sel.index.sync()
                for u in changes:
                    if u in snap.entries:
                        sel.known[u] = -1  # force FLAGS into the response below
        if vanished and changed_since is not None:
            self._fetch_vanished(args[0], snap, changed_since)
        missing = False
        items_flags = any(i[0] == "FLAGS" for i in items)
        texts: dict[tuple, str] = {}  # (letters, keywords, recent) -> FLAGS list, made once per FETCH
        view = sel.view
        nxt = 0  # where the next UID of an ascending run sits in the view (no search then)
        for u in uids:
            e = snap.entries.get(u)
            if e is None:
                missing = True
                if not uid:
                    self._fetch_expunged(u, items, render_expunged)
                continue
            if changed_since is not None and e.modseq <= changed_since:
                continue
            if nxt < len(view) and view[nxt] == u:
                seq = nxt + 1
            else:
                seq = sel.seq_of(u)
            nxt = seq
            want = items
            wants_flags = items_flags
            if sets_seen and not items_flags and sel.known.get(u) == -1:
                want = items + [("FLAGS",)]
                wants_flags = True
            flags = None
            if wants_flags:
                key = (e.flags, e.kw, u in sel.recent)
                flags = texts.get(key)
                if flags is None:
                    flags = texts[key] = flags_text(e, key[2])
            try:
                pieces = render_message(sel, e, u, seq, want, flags)
            except FetchFailed as exc:
                # RFC 3516: NO [UNKNOWN-CTE] (or invalid encoded data), the FETCH ends
                # here; what was given of this message closes its response, as Dovecot
                done = exc.done.decode("utf-8", "replace")
                if wants_flags and "FLAGS (" not in done:
                    done = " ".join(x for x in (f"FLAGS {flags_text(e, u in sel.recent)}", done) if x)
                self._untagged(f"{seq} FETCH ({done or f'UID {u}'})")
                if wants_flags:
                    sel.known[u] = e.modseq
                self._tagged(tag, f"NO [{exc.code}] {exc.text}")
                return
            except FileNotFoundError:
                # another process renamed it (new flags) or expunged it: look again
                snap = sel.index.resync()
                e = snap.entries.get(u)
                try:
                    if e is None:
                        raise FileNotFoundError
                    pieces = render_message(
                        sel, e, u, seq, want, flags_text(e, u in sel.recent) if wants_flags else None
                    )
                except FileNotFoundError:
                    missing = True
                    if not uid:
                        self._fetch_expunged(u, items, render_expunged)
                    continue
            self.out.extend(pieces)
            if wants_flags:
                sel.known[u] = e.modseq
        if missing and not uid:
            # RFC 2180 4.1.2 as Dovecot does it: what the session still knows of
            # the message, NIL for its text, and a warning (RFC 5530)
            self._done(tag, "Some messages were already expunged", allow_expunge=False, code="[EXPUNGEISSUED]")
            return
        self._done(tag, "FETCH completed", allow_expunge=uid)

    def _fetch_vanished(self, token, snap, since: int) -> None:
        """UID FETCH ... (CHANGEDSINCE n VANISHED): the UIDs of the set expunged
        since MODSEQ n, as VANISHED (EARLIER) before the FETCH responses (RFC 7162
        3.2.6); ``*`` is any UID, as in Dovecot."""
        from pyimap import qresync  # noqa: PLC0415 lazy

        sel = self.sel
        assert sel is not None  # SELECTED state
        if str(token) == "$":
            ranges = qresync.merge((u, u) for u in sel.saved)
        else:
            ranges = qresync.merge(
                (0xFFFFFFFF if lo is None else lo, 0xFFFFFFFF if hi is None else hi)
                for lo, hi in parse_sequence_set(str(token))
            )
        gone = qresync.vanished(snap, list(snap.entries), since, ranges)
        if gone:
            self._untagged(f"VANISHED (EARLIER) {qresync.text(gone)}")

    def _fetch_expunged(self, u: int, items, render) -> None:
        """FETCH of a message another session expunged, not yet announced (no EXPUNGE
        may be sent during FETCH): answered from the last index entry the session saw."""
        sel = self.sel
        assert sel is not None  # SELECTED state
        e = sel.expunged.get(u) or sel.snap.entries.get(u)
        seq = sel.seq_of(u)
        if e is None or not seq:
            return
        self.out.extend(render(sel, e, u, seq, items, flags_text(e, u in sel.recent)))

    # -- IDLE --

    def cmd_idle(self, tag, args):
        """IDLE (RFC 2177), on the event loop: with inotify the driver watches the
        mailbox's directories (shared by every session idling on it) and the
        session looks at the store only when they change; else it polls every
        imapd.idle_poll seconds.  Either way the first look is a Job."""
        self._need(args, 0, 0)
        self.idle_tag = tag
        self.idle_started = time.monotonic()
        self.idle_watched = False
        self._send(b"+ idling\r\n")
        if self.sel is None:
            return
        if self.settings.idle_inotify:
            sel = self.sel
            paths, names = sel.index.watch_paths()
            # answered by watching(), which takes the first look; after that one look per burst
            # serves every session idling on the folder in this process (read-only ones apart)
            # (an IMAP4rev2 session claims no \\Recent: it shares the read-only sessions' look),
            # through an index object of its own (the session's own may be in a Job meanwhile)
            claims = not (sel.readonly or self.rev2)
            shared_look = partial(look, sel.index.twin(), not claims)
            self.out.append(Watch(paths, names, look=shared_look, shared=not claims))
        else:
            self._in_job(self._idle_poll)

    def _idle_line(self, parts) -> None:
        tag, self.idle_tag = self.idle_tag, None
        assert tag is not None  # the core calls this only while idling
        if self.idle_watched:
            self.idle_watched = False
            self.out.append(Watch())
        line = parts[0] if len(parts) == 1 else b""
        if line.strip().upper() != b"DONE":
            self._tagged(tag, "BAD Expected DONE")
            return
        self._done(tag, "IDLE terminated")

    # -- untagged updates --

    def _announce_keywords(self, kws) -> None:
        """Keywords the session has not announced yet: untagged FLAGS (and PERMANENTFLAGS)."""
        sel = self.sel
        assert sel is not None  # SELECTED state
        sel.keywords |= set(kws)
        self._untagged(f"FLAGS {flag_list_for(sel.keywords)}")
        if not sel.readonly:
            self._untagged(f"OK [PERMANENTFLAGS {flag_list_for(sel.keywords)[:-1]} \\*)] Flags permitted")

    def _updates(self, allow_expunge: bool, look: Look | None = None) -> bool:
        """The untagged responses for what changed in the selected mailbox; True
        when messages were announced expunged (EXPUNGE, or VANISHED with QRESYNC).
        ``look``: the folder as a look shared by the idling sessions found it,
        newer than what this session saw: then no I/O at all."""
        sel = self.sel
        if sel is None:
            return False
        snap = sel.index.sync() if look is None else look.snap
        if snap.uidvalidity != sel.uidvalidity:
            self._untagged("BYE Mailbox UIDVALIDITY changed")
            self.closed = True
            return False
        if snap is sel.snap and not sel.ghosts:
            return False
        told = False
        last = sel.view[-1] if sel.view else 0
        if snap.entries and next(reversed(snap.entries)) > last and not self.rev2:
            # new messages: the ones no session saw yet are \Recent here
            if look is None:
                snap, recent = _see_recent(sel.index, snap, sel.readonly)
            else:
                recent = look.take_recent()
            sel.recent |= recent
        entries = snap.entries
        changed = [(u, e) for u in sel.view if (e := entries.get(u)) is not None and e.modseq != sel.known.get(u)]
        new = [u for u in entries if u > last] if entries and next(reversed(entries)) > last else []
        # Keywords another session made: FLAGS before any FETCH that shows them (RFC 3501 7.2.6).
        kws: set[str] = set()
        for _u, e in changed:
            kws |= e.kw
        for u in new:
            kws |= entries[u].kw
        if kws - sel.keywords:
            self._announce_keywords(kws)
        if allow_expunge:
            gone = [u for u in sel.view if u not in entries]
            for u in gone:
                seq = sel.seq_of(u)
                if seq:
                    del sel.view[seq - 1]
                    sel.known.pop(u, None)
                    sel.recent.discard(u)
                    sel.expunged.pop(u, None)
                    if "QRESYNC" not in self.enabled:
                        self._untagged(f"{seq} EXPUNGE")
            if gone and "QRESYNC" in self.enabled:
                self._untagged(f"VANISHED {uid_set_text(gone)}")  # RFC 7162 3.2.10
            told = bool(gone)
            sel.ghosts = False
        else:
            for u in sel.view:
                if u not in entries and u not in sel.expunged:
                    # gone elsewhere, not yet announced: keep what we knew (FETCH answers with it)
                    old = sel.snap.entries.get(u)
                    if old is not None:
                        sel.expunged[u] = old
            sel.ghosts = any(u not in entries for u in sel.view)
        for u, e in changed:
            sel.known[u] = e.modseq
            extra = f" MODSEQ ({e.modseq})" if self.condstore else ""
            self._untagged(f"{sel.seq_of(u)} FETCH (UID {u} FLAGS {flags_text(e, u in sel.recent)}{extra})")
        if new:
            sel.view.extend(new)
            for u in new:
                sel.known[u] = entries[u].modseq
            self._untagged(f"{len(sel.view)} EXISTS")
            if not self.rev2:
                self._untagged(f"{len(sel.recent)} RECENT")
        sel.snap = snap
        return told


class Look:
    """What one look at a folder found, for every session idling on it in
    this process: the snapshot, and the messages it made \\Recent -- for the
    first session that shows them (for each read-only one: nothing was claimed).
    Should every session look for itself instead (each ran a job meanwhile),
    those messages are \\Recent in none, as when the session that claimed
    them goes away."""

    __slots__ = ("snap", "recent", "readonly")

    def __init__(self, snap: Any, recent: set[int], readonly: bool) -> None:
        self.snap = snap
        self.recent = recent
        self.readonly = readonly

    def take_recent(self) -> set[int]:
        recent = self.recent
        if not self.readonly:
            self.recent = set()
        return recent


def look(index: Folder, readonly: bool) -> Look:
    """In a Job, once per burst of changes for the sessions idling on the
    folder (``Watch(look=...)``): bring the index up to date and claim what
    is \\Recent, as one session's look would."""
    return Look(*_see_recent(index, index.sync(), readonly), readonly)


def _see_recent(index: Folder, snap: Any, readonly: bool) -> tuple[Any, set[int]]:
    """A session is about to show the messages of ``snap``: the ones no session
    has seen yet are \\Recent in this one (RFC 3501 2.3.2) -- claimed, so no other
    session shows them so, unless ``readonly`` (EXAMINE leaves them recent).
    Returns the snapshot to show (it may have grown meanwhile) and those UIDs."""
    recent: set[int] = set()
    for _ in range(5):  # messages may keep arriving: claim up to the snapshot shown
        fresh = snap.recent_uids()
        if readonly:
            return snap, set(fresh)
        if not fresh:
            break
        last = next(reversed(snap.entries))
        recent |= index.claim_recent(last)
        snap = index.sync()
        if next(reversed(snap.entries), 0) <= last:
            break
    return snap, recent & set(snap.entries)
