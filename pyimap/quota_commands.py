"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA and SETQUOTA, answered as Dovecot 2.3 does.

A user with a quota (the users file's ``userdb_quota_rule``, pymail-users(5))
has one quota root, ``"User quota"``, over all their mailboxes, with the
resources STORAGE (units of 1024 octets, rounded up, as Dovecot shows them:
the messages' sizes on disk) and MESSAGE that have a limit.  The usage is
the Maildir++ maildirsize's (``pymda.quota``, through the store).  Quotas
are the administrator's: SETQUOTA is refused.  APPEND and COPY over quota
are refused in ``selected`` (NO [OVERQUOTA]).
"""

from __future__ import annotations

from pyimap import mailbox_names as mn
from pyimap.core import CommandContext
from pyimap.formats import ATOM_OK
from pyimap.parser import Atom, ParseError, quote


def _astring(text: str) -> str:
    return text if ATOM_OK.match(text) and text.isascii() and "]" not in text else quote(text).decode()


class QuotaCommands(CommandContext):
    def _quota_line(self, root: str) -> None:
        assert self.store is not None  # logged in
        nbytes, count = self.store.quota_usage()
        limit_bytes, limit_count = self.store.quota
        items = []
        if limit_bytes:
            items.append(f"STORAGE {(nbytes + 1023) // 1024} {(limit_bytes + 1023) // 1024}")
        if limit_count:
            items.append(f"MESSAGE {count} {limit_count}")
        self._untagged(f"QUOTA {quote(root).decode()} ({' '.join(items)})")

    def cmd_getquotaroot(self, tag, args):
        assert self.store is not None  # logged in
        self._need(args, 1, 1)
        name = self._mailbox(args[0])
        roots = self.store.quota_roots
        self._untagged(f"QUOTAROOT {_astring(mn.to_wire(name))}" + "".join(f" {quote(r).decode()}" for r in roots))
        for root in roots:
            self._quota_line(root)
        self._done(tag, "GETQUOTAROOT completed")

    def cmd_getquota(self, tag, args):
        assert self.store is not None  # logged in
        self._need(args, 1, 1)
        root = self._astring(args[0])
        if root not in self.store.quota_roots:
            self._tagged(tag, "NO Quota root doesn't exist")
            return
        self._quota_line(root)
        self._done(tag, "GETQUOTA completed")

    def cmd_setquota(self, tag, args):
        self._need(args, 2, 2)
        self._astring(args[0])
        limits = args[1]
        if not isinstance(limits, list) or len(limits) % 2:
            raise ParseError("Invalid arguments")
        for i in range(0, len(limits), 2):
            name, value = limits[i], limits[i + 1]
            if not (isinstance(name, Atom) and isinstance(value, Atom) and value.isdigit()):
                raise ParseError("Invalid arguments")
        self._tagged(tag, "NO Quota can be changed only by admin")
