"""A POP3 session's view of one Maildir (the "maildrop" of RFC 1939).

* **Snapshot at login.**  The messages of ``new/`` and ``cur/`` are listed
  once; mail delivered later is seen by the next session only.  Sizes come
  from the ``,W=`` field of the file name (the RFC 822 size with CRLF line
  ends, as Dovecot and Courier write it), so ``STAT`` and ``LIST`` read no
  file; a name without it is measured once (``maildir.message_sizes``).
* **Unique ids.**  A message's UIDL is its Maildir base name (the name
  without ``:2,FLAGS``), which stays the same when an IMAP server moves the
  file from ``new/`` to ``cur/`` or changes its flags.  RFC 1939 limits a
  unique-id to 70 characters from 0x21-0x7E; a base name that does not fit
  is shortened to its unique part (before the first ``,``) and, should that
  not fit either, to the MD5 hex digest of the base name -- still a pure
  function of the name, so still stable.
* **Lock.**  One POP3 session per Maildir: a non-blocking ``flock`` on
  ``pop3.lock`` inside the Maildir.  It is released when the session ends
  or its process dies; delivery and IMAP never take it, so they are never
  blocked.  ``flock`` locks belong to the open file, so two sessions served
  by one listening process exclude each other too.
* **Deletion at QUIT only.**  ``commit`` looks each message up again by base
  name in ``new/`` and ``cur/`` (IMAP may have moved or re-flagged it) and
  unlinks it; a file already gone counts as removed.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pymda import maildir as md

_READ = os.O_RDONLY | os.O_CLOEXEC

LOCK_NAME = "pop3.lock"
MAX_UID = 70  # RFC 1939 7: 1 to 70 characters in the range 0x21 to 0x7E


class MaildropInUse(Exception):
    """Another POP3 session holds the lock."""


class Message:
    __slots__ = ("base", "name", "sub", "size", "uid")

    def __init__(self, base: str, name: str, sub: str, size: int) -> None:
        self.base = base  # Maildir base name (stable across new/ -> cur/ and flag changes)
        self.name = name  # file name when the snapshot was taken
        self.sub = sub  # "new" or "cur" then
        self.size = size  # octets with CRLF line ends
        self.uid = uidl_for(base)


def _uid_ok(text: str) -> bool:
    # RFC 1939 7: 1-70 characters in 0x21-0x7E
    return 0 < len(text) <= MAX_UID and text.isascii() and text.isprintable() and " " not in text


def uidl_for(base: str) -> str:
    if _uid_ok(base):
        return base
    unique = base.split(",", 1)[0]
    if _uid_ok(unique):
        return unique
    import hashlib  # noqa: PLC0415 lazy: rare: only for names that are not valid UIDL text

    return hashlib.md5(base.encode("utf-8", "surrogateescape")).hexdigest()


class Maildrop:
    """Open with ``Maildrop.open(path)``: locks, then takes the snapshot."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._dir = str(self.path)
        self.messages: list[Message] = []
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path) -> Maildrop:
        """Lock the Maildir and list it; raises MaildropInUse or OSError."""
        drop = cls(path)
        drop.lock()
        try:
            drop.scan()
        except BaseException:
            drop.close()
            raise
        return drop

    # -- lock --

    def lock(self) -> None:
        md.ensure_maildir(self.path)  # a user who never got mail has an empty maildrop
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path / LOCK_NAME, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MaildropInUse(str(self.path)) from None
            raise
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (idempotent).  Closing the fd drops the flock."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    # -- snapshot --

    def scan(self) -> None:
        messages = []
        for sub, name in md.list_messages(self.path):
            base, fields, _ = md.parse_name(name)
            wsize = fields.get("W")
            if wsize is not None and wsize.isdigit():
                size = int(wsize)
            else:
                try:
                    size = md.message_sizes(Path(self.path) / sub / name, name)[1]
                except FileNotFoundError:
                    continue  # moved or expunged while we listed
            messages.append(Message(base, name, sub, size))
        self.messages = messages

    # -- reading --

    def open_message(self, msg: Message):
        """A binary file object for ``msg``; found again by base name if it moved."""
        return open(self._fd(msg), "rb")

    def read_small(self, msg: Message, limit: int) -> bytes | None:
        """The whole file of ``msg`` when it holds at most ``limit`` octets, else
        None: one read and no file object, for the common RETR of a small message."""
        fd = self._fd(msg)
        try:
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        return data if len(data) <= limit else None

    def _fd(self, msg: Message) -> int:
        try:
            return os.open(f"{self._dir}/{msg.sub}/{msg.name}", _READ)  # str join: this runs per RETR
        except FileNotFoundError:
            pass
        found = md.find_by_base(self.path, msg.base)
        if found is None:
            raise FileNotFoundError(msg.base)
        msg.sub, msg.name = found.parent.name, found.name
        return os.open(found, _READ)

    # -- UPDATE state --

    def commit(self, doomed: list[Message]) -> tuple[int, int]:
        """Remove ``doomed`` messages; return (removed, failed)."""
        if not doomed:
            return 0, 0
        where = md.index_by_base(self.path)
        removed = failed = 0
        touched = set()
        for msg in doomed:
            paths = where.get(msg.base, ())
            ok = True
            for path in paths:
                try:
                    os.unlink(path)
                    touched.add(path.parent)
                except FileNotFoundError:
                    pass
                except OSError:
                    ok = False
            if ok:
                removed += 1
            else:
                failed += 1
        for directory in touched:
            try:
                md.fsync_dir(directory)
            except OSError:
                pass
        return removed, failed
