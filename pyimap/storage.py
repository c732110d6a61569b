"""What the IMAP machine asks of the mail store: the storage interface.

The machine (``pyimap.imap_server`` and its command modules) calls only
what is named here; the program (``pyimap.imapd``) hands it a concrete
store through the backend's ``open_store``.  Today that is
``pyimap.store.UserStore`` over Maildir++ folders, each with a
``pymda.index.FolderIndex``; a test or another store may stand in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable


class StoreError(Exception):
    """A mailbox-tree change refused; ``code`` is an IMAP response code
    (NONEXISTENT, ALREADYEXISTS, ...) or ''."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


@runtime_checkable
class MessageSpool(Protocol):
    """An APPEND message being written while its literal arrives (CRLF in, stored as LF)."""

    size: int  # octets stored (LF line ends)
    wsize: int  # octets on the wire (CRLF line ends): RFC822.SIZE
    bare_lf: bool  # a LF without CR came (stored as a line end: read back as CRLF)

    @property
    def base(self) -> str: ...  # the message's final base name

    def write(self, data: bytes) -> None: ...

    def finish(self, mtime: int | None = None) -> str:
        """Close and sync the file; its path.  Raises OSError (the file is gone then)."""
        ...

    def abort(self) -> None: ...


class Folder(Protocol):
    """One mailbox's messages: UIDs, flags, keywords, MODSEQ (a ``pymda.index.FolderIndex``).

    ``sync()`` returns a snapshot with ``uidvalidity``, ``uidnext``,
    ``highestmodseq``, ``entries`` (uid -> entry with ``flags`` as Maildir
    letters, ``kw``, ``modseq``, ``idate``, ``size``, ``sub``, ``name``,
    ``base``), ``keywords()``, ``recent_uids()`` (the UIDs no session has
    claimed as \\Recent yet) and ``vanished_since(modseq)`` (the UIDs expunged
    after that MODSEQ as (lo, hi) ranges, or None when the folder no longer
    knows them all: QRESYNC).
    """

    dir: str  # the folder's directory; message files are ``dir/entry.sub/entry.name``

    def sync(self) -> Any: ...

    def watch_paths(self) -> tuple[list[str], frozenset[str]]:
        """The directories whose changes may change the folder (IDLE watches
        them), and the entry names that count in the first one."""
        ...

    def resync(self) -> Any:
        """Like sync(), after waiting for a writer: a message file was found gone."""
        ...

    def twin(self) -> Folder:
        """Another reader of the same folder, with a cache of its own: one
        object is used by one thread at a time (IDLE's shared look has its own)."""
        ...

    def add(
        self,
        tmp_file: str,
        *,
        flags: str = "",
        keywords: Iterable[str] = (),
        idate: int | None = None,
        size: int | None = None,
        base: str | None = None,
    ) -> tuple[int, int]:
        """Move a finished spool file in; (uidvalidity, uid)."""
        ...

    def add_many(self, messages: list[dict]) -> tuple[int, list[int]]:
        """``add`` of several spool files (dicts of ``add``'s arguments), all or none; (uidvalidity, uids)."""
        ...

    def set_flags(self, changes: dict) -> dict: ...

    def claim_recent(self, upto: int) -> set[int]:
        """A session shows messages up to UID ``upto``: the ones still \\Recent
        (``snapshot.recent_uids()``) become its own and no other session's; returns them."""
        ...

    def expunge(self, uids: Iterable[int]) -> list[int]: ...

    def copy_into(self, dest: Any, uids: Iterable[int]) -> tuple[int, list[tuple[int, int]]]:
        """Copy messages into ``dest`` (a Folder of the same store); (dest uidvalidity, [(uid, dest uid)])."""
        ...


class MailStore(Protocol):
    """A user's mailboxes.  Names are IMAP names (``INBOX``, ``Lists/python``)."""

    # Exceptions meaning "the store is in trouble now" (disk, lock timeout):
    # answered NO [UNAVAILABLE], or NO [OVERQUOTA] when their errno says full.
    unavailable: tuple[type[BaseException], ...]

    def exists(self, name: str) -> bool: ...

    def index(self, name: str) -> Folder: ...

    def names(self) -> list[str]:
        """Every selectable mailbox, INBOX first."""
        ...

    def create(self, name: str) -> None: ...  # raises StoreError

    def delete(self, name: str) -> None: ...  # raises StoreError

    def rename(self, old: str, new: str) -> None: ...  # raises StoreError

    def subscriptions(self) -> set[str]: ...

    def set_subscriptions(self, names: set[str]) -> None: ...

    def special_use(self, name: str) -> str | None: ...

    # Quota (RFC 9208): (bytes, messages) limits, 0 for none, and the roots' names ([] without a quota)
    quota: tuple[int, int]
    quota_roots: list[str]

    def quota_usage(self) -> tuple[int, int]:
        """(bytes, messages) the user keeps."""
        ...

    def quota_check(self, size: int, count: int = 1) -> None:
        """Raise an OSError with EDQUOT (NO [OVERQUOTA]) when ``count`` messages of ``size`` octets do not fit."""
        ...

    def stored_size(self, entries) -> int:
        """What index entries (a Folder snapshot's) take on disk, as the quota counts them."""
        ...

    def spool(self) -> MessageSpool:
        """A new APPEND spool file.  Raises OSError."""
        ...


class Backend(Protocol):
    """Policy behind the machine: passwords and where a user's mail lives."""

    def authenticate(self, info: Any, username: str, password: bytes) -> str | None:
        """The canonical account name, or None.  Runs in a Job; may raise (answered NO [UNAVAILABLE])."""
        ...

    def open_store(self, account: str) -> MailStore: ...
