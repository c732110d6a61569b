"""IMAP commands on the mailbox tree: CREATE, DELETE, RENAME, (UN)SUBSCRIBE,
LIST/LSUB (with LIST-EXTENDED, LIST-STATUS, SPECIAL-USE), STATUS, NAMESPACE.

A mixin of ``pyimap.imap_server.IMAPServer``: it answers through the
protocol core's ``_tagged``/``_untagged``/``_done`` and asks the store
(``pyimap.storage.MailStore``) for names and changes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pyimap import mailbox_names as mn
from pyimap.core import AUTH, CommandContext
from pyimap.parser import Atom, ParseError
from pyimap.storage import StoreError

if TYPE_CHECKING:
    from pyimap.selected import Selected


class MailboxCommands(CommandContext):
    sel: Selected | None

    def cmd_create(self, tag, args):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 1, 2)
        raw = self._astring(args[0])
        if raw.endswith(mn.DELIM):
            raw = raw.rstrip(mn.DELIM)
        if len(args) == 2:
            # RFC 6154 CREATE-SPECIAL-USE: (USE (attr ...)).  Special uses here follow from the
            # name, so a use is accepted only where it is the name's own.
            p = args[1]
            if not (isinstance(p, list) and len(p) == 2 and str(p[0]).upper() == "USE" and isinstance(p[1], list)):
                raise ParseError("CREATE takes (USE (...))")
            uses = {str(u)[:1] + str(u)[1:].capitalize() for u in p[1]}
            own = self.store.special_use(mn.normalize(raw, self.utf8))
            if uses and uses != {own}:
                self._tagged(tag, "NO [USEATTR] Only the special use that goes with the name can be given")
                return
        if self._store_call(tag, self.store.create, mn.normalize(raw, self.utf8)):
            self._done(tag, "CREATE completed")

    def cmd_delete(self, tag, args):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 1, 1)
        name = self._mailbox(args[0])
        if self.sel is not None and self.sel.name == name:
            self.sel = None
            self.state = AUTH
        if self._store_call(tag, self.store.delete, name):
            self._done(tag, "DELETE completed")

    def cmd_rename(self, tag, args):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 2, 2)
        old, new = self._mailbox(args[0]), self._mailbox(args[1])
        if not self._store_call(tag, self.store.rename, old, new):
            return
        if self.sel is not None and old != "INBOX" and (self.sel.name == old or self.sel.name.startswith(old + "/")):
            self.sel.index = self.store.index(new + self.sel.name[len(old) :])
            self.sel.name = new + self.sel.name[len(old) :]
        self._done(tag, "RENAME completed")

    def _store_call(self, tag, fn, *names) -> bool:
        """Run a mailbox-tree change; a StoreError becomes the tagged NO (False)."""
        try:
            fn(*names)
        except StoreError as exc:
            self._tagged(tag, f"NO [{exc.code}] {exc}" if exc.code else f"NO {exc}")
            return False
        return True

    def cmd_subscribe(self, tag, args, subscribe=True):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 1, 1)
        name = self._mailbox(args[0])
        subs = self.store.subscriptions()
        if subscribe:
            subs.add(name)
        else:
            subs.discard(name)
        self.store.set_subscriptions(subs)
        self._done(tag, f"{'' if subscribe else 'UN'}SUBSCRIBE completed")

    def cmd_unsubscribe(self, tag, args):
        self.cmd_subscribe(tag, args, subscribe=False)

    @staticmethod
    def _pattern_re(pattern: str):
        out = []
        for ch in pattern:
            if ch == "*":
                out.append(".*")
            elif ch == "%":
                out.append("[^/]*")
            else:
                out.append(re.escape(ch))
        return re.compile("^" + "".join(out) + "$", re.DOTALL)

    def cmd_list(self, tag, args, lsub=False):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 2)
        select_opts: set[str] = set()
        return_opts: set[str] = set()
        status_items: list[str] = []
        if not lsub and isinstance(args[0], list):
            select_opts = {str(a).upper() for a in args[0]}
            args = args[1:]
            if select_opts - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}:
                raise ParseError("Unknown LIST selection option")
            if "RECURSIVEMATCH" in select_opts and not (select_opts & {"SUBSCRIBED"}):
                raise ParseError("RECURSIVEMATCH needs another selection option")
        if len(args) < 2:
            raise ParseError("Wrong number of arguments")
        ref = self._astring(args[0]) if not isinstance(args[0], list) else ""
        patterns_tok = args[1]
        rest = args[2:]
        if not lsub and rest:
            if (
                len(rest) != 2
                or not isinstance(rest[0], Atom)
                or rest[0].upper() != "RETURN"
                or not isinstance(rest[1], list)
            ):
                raise ParseError("Bad LIST return options")
            opts = rest[1]
            i = 0
            while i < len(opts):
                o = str(opts[i]).upper()
                if o == "STATUS":
                    if i + 1 >= len(opts) or not isinstance(opts[i + 1], list):
                        raise ParseError("STATUS needs a list")
                    status_items = [str(x).upper() for x in opts[i + 1]]
                    i += 2
                    continue
                if o not in ("CHILDREN", "SUBSCRIBED", "SPECIAL-USE"):
                    raise ParseError("Unknown LIST return option")
                return_opts.add(o)
                i += 1
        elif rest:
            raise ParseError("Wrong number of arguments")
        patterns = (
            [self._astring(p) for p in patterns_tok]
            if isinstance(patterns_tok, list)
            else [self._astring(patterns_tok)]
        )
        if not patterns:
            raise ParseError("Empty pattern list")
        if len(patterns) == 1 and patterns[0] == "" and not lsub:
            self._untagged('LIST (\\Noselect) "/" ""')
            self._done(tag, "LIST completed")
            return
        names = self.store.names()
        existing = set(names)
        subs = self.store.subscriptions()
        all_names = set(names)
        for n in names:  # parents without a folder of their own
            parts = n.split("/")
            for k in range(1, len(parts)):
                all_names.add("/".join(parts[:k]))
        regexes = []
        for p in patterns:
            full = mn.from_wire(ref + p, self.utf8)
            if full.upper().startswith("INBOX"):
                full = "INBOX" + full[5:]
            regexes.append(self._pattern_re(full))
        if lsub:
            # A parent that is not subscribed shows (\Noselect) only when a
            # subscribed child is cut off by '%' (RFC 3501 6.3.9).
            universe = set(subs)
            for n in list(subs):
                if any(r.match(n) for r in regexes):
                    continue
                parts = n.split("/")
                for k in range(1, len(parts)):
                    universe.add("/".join(parts[:k]))
        elif "SUBSCRIBED" in select_opts:
            universe = set(subs)
            if "RECURSIVEMATCH" in select_opts:
                # a parent of a subscribed name is listed (with CHILDINFO) even when
                # not subscribed itself (RFC 5258 3.5)
                for n in subs:
                    parts = n.split("/")
                    for k in range(1, len(parts)):
                        universe.add("/".join(parts[:k]))
        else:
            universe = all_names
        children = {n for n in all_names for m in all_names if m.startswith(n + "/")}
        name_cmd = "LSUB" if lsub else "LIST"
        out_names = sorted((n for n in universe if any(r.match(n) for r in regexes)), key=lambda n: (n != "INBOX", n))
        for n in out_names:
            attrs = []
            if lsub:
                if n not in subs:
                    attrs.append("\\Noselect")
            else:
                if n not in existing:  # as LIST-EXTENDED, which IMAP4rev2's LIST is (RFC 9051 6.3.9)
                    attrs.append("\\NonExistent" if "SUBSCRIBED" in select_opts or self.rev2 else "\\Noselect")
                attrs.append("\\HasChildren" if n in children else "\\HasNoChildren")
                if n in subs and ("SUBSCRIBED" in select_opts or "SUBSCRIBED" in return_opts):
                    attrs.append("\\Subscribed")
                su = self.store.special_use(n)
                if su:
                    attrs.append(su)
                elif "SPECIAL-USE" in select_opts:
                    continue
            childinfo = ""
            if "RECURSIVEMATCH" in select_opts and any(s.startswith(n + "/") for s in subs):
                childinfo = ' ("CHILDINFO" ("SUBSCRIBED"))'
            self._untagged(f'{name_cmd} ({" ".join(attrs)}) "/" {self._quoted_name(n)}{childinfo}')
            if status_items and n in existing:
                self._status_line(n, status_items)
        self._done(tag, f"{name_cmd} completed")

    def cmd_lsub(self, tag, args):
        self.cmd_list(tag, args, lsub=True)

    def _select_list(self, name: str) -> None:
        """IMAP4rev2's LIST response of SELECT/EXAMINE (RFC 9051 6.3.2): the attributes
        a plain LIST gives the mailbox."""
        assert self.store is not None  # logged in: AUTH or SELECTED
        kids = any(n.startswith(name + "/") for n in self.store.names())
        attrs = ["\\HasChildren" if kids else "\\HasNoChildren"]
        su = self.store.special_use(name)
        if su:
            attrs.append(su)
        self._untagged(f'LIST ({" ".join(attrs)}) "/" {self._quoted_name(name)}')

    def _status_line(self, name: str, items: list[str]) -> None:
        assert self.store is not None  # logged in: AUTH or SELECTED
        if self.sel is not None and self.sel.name == name:
            self._updates(allow_expunge=False)
        snap = self.store.index(name).sync()
        vals = []
        for it in items:
            if it == "MESSAGES":
                vals.append(f"MESSAGES {len(snap.entries)}")
            elif it == "RECENT" and not self.rev2:  # IMAP4rev2 has no \\Recent (RFC 9051 E)
                vals.append(f"RECENT {len(snap.recent_uids())}")
            elif it == "UIDNEXT":
                vals.append(f"UIDNEXT {snap.uidnext}")
            elif it == "UIDVALIDITY":
                vals.append(f"UIDVALIDITY {snap.uidvalidity}")
            elif it == "UNSEEN":
                vals.append(f"UNSEEN {sum(1 for e in snap.entries.values() if 'S' not in e.flags)}")
            elif it == "HIGHESTMODSEQ":
                vals.append(f"HIGHESTMODSEQ {snap.highestmodseq}")
            elif it == "SIZE":
                vals.append(f"SIZE {sum(e.size for e in snap.entries.values())}")
            elif it == "DELETED":  # RFC 9051 6.3.11
                vals.append(f"DELETED {sum(1 for e in snap.entries.values() if 'T' in e.flags)}")
            else:
                raise ParseError(f"Unknown STATUS item {it[:30]}")
        self._untagged(f"STATUS {self._quoted_name(name)} ({' '.join(vals)})")

    def cmd_status(self, tag, args):
        assert self.store is not None  # logged in: AUTH or SELECTED
        self._need(args, 2, 2)
        name = self._mailbox(args[0])
        if not isinstance(args[1], list) or not args[1]:
            raise ParseError("STATUS needs a list of items")
        items = [str(x).upper() for x in args[1]]
        if not self.store.exists(name):
            self._tagged(tag, "NO [NONEXISTENT] Mailbox does not exist")
            return
        self._status_line(name, items)
        self._done(tag, "STATUS completed")

    def cmd_namespace(self, tag, args):
        self._need(args, 0, 0)
        self._untagged('NAMESPACE (("" "/")) NIL NIL')
        self._done(tag, "NAMESPACE completed")
