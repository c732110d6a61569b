"""A user's mail home as IMAP sees it: folders, subscriptions, special use.

The mail home is the user's Maildir (the INBOX); other mailboxes are
Maildir++ folders inside it (see ``mailbox_names``).  Message-level state
lives in each folder's ``pymda.index.FolderIndex``.  This is the concrete
store behind ``pyimap.storage``'s interface; ``pyimap.imapd`` opens it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyimap import mailbox_names as mn
from pyimap.storage import StoreError
from pymda.index import INDEX_NAME, FolderIndex, IndexUnavailable
from pymda.maildir import Spool, ensure_maildir

SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}
SUBSCRIPTIONS = "subscriptions"


QUOTA_ROOT = "User quota"  # the name Dovecot's examples give (quota = maildir:User quota)


class _CountedIndex(FolderIndex):
    """A folder of a user with a quota: what it gains and loses goes into the
    user's maildirsize (``pymda.quota``)."""

    def __init__(self, path, store: UserStore) -> None:
        super().__init__(path)
        self.store = store

    def add_many(self, messages):  # add() comes here too
        result = super().add_many(messages)
        self.store.quota_record(sum(_size(m.get("base") or Path(m["tmp_file"]).name) for m in messages), len(messages))
        return result

    def copy_into(self, dest, uids):
        entries = self.sync().entries
        result = super().copy_into(dest, uids)
        pairs = result[1]
        self.store.quota_record(sum(_size(entries[u].base) for u, _ in pairs), len(pairs))
        return result

    def expunge(self, uids):
        entries = self.sync().entries
        gone = super().expunge(uids)
        self.store.quota_record(-sum(_size(entries[u].base) for u in gone if u in entries), -len(gone))
        return gone


def _size(base: str) -> int:
    from pymda.quota import size_of  # noqa: PLC0415 lazy

    return size_of("", base)


class UserStore:
    """The ``pyimap.storage.MailStore`` of one user's mail home; ``quota``:
    the user's (bytes, messages) limits, 0 for none (``pymda.quota``)."""

    unavailable = (IndexUnavailable, OSError)

    def __init__(self, home: str | os.PathLike, quota: tuple[int, int] = (0, 0)) -> None:
        self.home = Path(home)
        self._indexes: dict[str, FolderIndex] = {}
        self.quota = quota
        self.quota_roots = [QUOTA_ROOT] if any(quota) else []

    def quota_usage(self) -> tuple[int, int]:
        """(bytes, messages) the user keeps, from the maildirsize (counted when it cannot be trusted)."""
        from pymda import quota  # noqa: PLC0415 lazy

        return quota.usage(self.home, self.quota)

    def quota_check(self, size: int, count: int = 1) -> None:
        """Raise ``pymda.quota.QuotaExceeded`` (NO [OVERQUOTA]) when ``count``
        messages of ``size`` octets do not fit."""
        if any(self.quota):
            from pymda import quota  # noqa: PLC0415 lazy

            quota.check(self.home, self.quota, size, count)

    def stored_size(self, entries) -> int:
        """What index entries take on disk (their ``,S=``)."""
        return sum(_size(e.base) for e in entries)

    def quota_record(self, nbytes: int, count: int) -> None:
        if any(self.quota):
            from pymda import quota  # noqa: PLC0415 lazy

            quota.record(self.home, self.quota, nbytes, count)

    def folder_dir(self, name: str) -> Path:
        rel = mn.to_dir(name)
        return self.home / rel if rel else self.home

    def exists(self, name: str) -> bool:
        if name == "INBOX":
            return True
        return (self.folder_dir(name) / "cur").is_dir()

    def index(self, name: str) -> FolderIndex:
        idx = self._indexes.get(name)
        if idx is None:
            path = self.folder_dir(name)
            idx = self._indexes[name] = _CountedIndex(path, self) if any(self.quota) else FolderIndex(path)
        return idx

    def ensure(self) -> None:
        """Create the INBOX and, for a new user, the special-use folders."""
        # First IMAP login (the deliverer may have made the Maildir already):
        # the subscriptions file is ours, so its absence tells.
        new_user = not (self.home / SUBSCRIPTIONS).exists()
        ensure_maildir(self.home)
        if new_user:
            for name in SPECIAL_USE:
                if not self.exists(name):
                    ensure_maildir(self.folder_dir(name), folder=True)
            self.set_subscriptions(set(SPECIAL_USE) | {"INBOX"} | self.subscriptions())

    def names(self) -> list[str]:
        """Every selectable mailbox, INBOX first."""
        out = ["INBOX"]
        try:
            entries = os.listdir(self.home)
        except FileNotFoundError:
            return out
        for d in sorted(entries):
            if not d.startswith(".") or d in (".", ".."):
                continue
            name = mn.from_dir(d)
            if name is not None and os.path.isdir(self.home / d / "cur"):
                out.append(name)
        return out

    def create(self, name: str) -> None:
        if name == "INBOX":
            raise StoreError("INBOX already exists", "ALREADYEXISTS")
        if self.exists(name):
            raise StoreError("Mailbox already exists", "ALREADYEXISTS")
        path = self.folder_dir(name)
        try:
            ensure_maildir(path, folder=True)
        except OSError as exc:
            raise StoreError(f"Cannot create mailbox: {exc.strerror}", "SERVERBUG") from None

    def delete(self, name: str) -> None:
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted", "CANNOT")
        if not self.exists(name):
            raise StoreError("Mailbox does not exist", "NONEXISTENT")
        path = self.folder_dir(name)
        if path.resolve().parent != self.home.resolve():
            raise StoreError("Mailbox outside the mail home", "CANNOT")
        if any(self.quota):
            from pymda.quota import folder_usage  # noqa: PLC0415 lazy

            nbytes, count = folder_usage(path)
            self.quota_record(-nbytes, -count)
        shutil.rmtree(path, ignore_errors=True)
        self._indexes.pop(name, None)
        # The subscription stays (RFC 3501 6.3.9): LIST (SUBSCRIBED) shows it \NonExistent.

    def rename(self, old: str, new: str) -> None:
        if new == "INBOX":
            raise StoreError("Cannot rename to INBOX", "ALREADYEXISTS")
        if not self.exists(old):
            raise StoreError("Mailbox does not exist", "NONEXISTENT")
        if self.exists(new):
            raise StoreError("Target mailbox already exists", "ALREADYEXISTS")
        if new.startswith(old + mn.DELIM):
            raise StoreError("Cannot rename a mailbox into itself", "CANNOT")
        if old == "INBOX":
            self._rename_inbox(new)
            return
        src, dst = self.folder_dir(old), self.folder_dir(new)
        prefix_old, prefix_new = mn.to_dir(old) + ".", mn.to_dir(new) + "."
        os.rename(src, dst)
        for d in os.listdir(self.home):
            if d.startswith(prefix_old):
                os.rename(self.home / d, self.home / (prefix_new + d[len(prefix_old) :]))
        self._indexes.clear()

    def _rename_inbox(self, new: str) -> None:
        # RFC 3501 6.3.5: move INBOX's messages to the new name, leave INBOX empty.
        dst = self.folder_dir(new)
        ensure_maildir(dst, folder=True)
        src_index = self.index("INBOX")
        snap = src_index.sync()
        uids = list(snap.entries)
        src_index.copy_into(self.index(new), uids)
        src_index.expunge(uids)

    def subscriptions(self) -> set[str]:
        try:
            text = (self.home / SUBSCRIPTIONS).read_text("utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return set()
        return {line for line in text.split("\n") if line}

    def set_subscriptions(self, names: set[str]) -> None:
        os.makedirs(self.home, exist_ok=True)
        tmp = self.home / f".{SUBSCRIPTIONS}.tmp{os.getpid()}"
        tmp.write_text("".join(n + "\n" for n in sorted(names)), "utf-8")
        os.replace(tmp, self.home / SUBSCRIPTIONS)

    def special_use(self, name: str) -> str | None:
        return SPECIAL_USE.get(name)

    def spool(self) -> Spool:
        """An APPEND message's file in the INBOX's tmp/ (a rename away from any folder's cur/)."""
        return Spool(self.home)


__all__ = ["UserStore", "StoreError", "SPECIAL_USE", "INDEX_NAME"]
