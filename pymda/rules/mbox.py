"""Append a message to an mbox file, locked with a dotlock *and* fcntl.

Both locks, in that order, as procmail and Postfix local(8) take them, so
every mail reader (mutt, Pine, Dovecot's mbox driver, mail(1)) agrees.
The message gets a ``From_`` line (kept from the input or made from the
envelope sender and the time); every other line starting with ``From ``,
``>From ``, ``>>From ``... gets one more ``>`` (mboxrd, which readers undo
exactly), in the header as in the body: a message whose own first line
is ``From victim@... date`` must not read as a second message with a
forged envelope.  Unless ``raw`` the message is made to end with an empty
line.  A failed write is rolled back to the old end of file, so a full
disk never leaves half a message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time

LOCK_TIMEOUT = 60.0  # seconds to wait for a dotlock before giving up (temporary failure)
STALE_LOCK = 1024.0  # procmail's LOCKTIMEOUT: older dotlocks are taken over

_FROM_QUOTE = re.compile(rb"^(>*From )", re.M)


class MboxError(Exception):
    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


def from_line(sender: str, when: float | None = None) -> bytes:
    sender = sender or "MAILER-DAEMON"
    sender = re.sub(r"\s", "_", sender)
    return f"From {sender}  {time.asctime(time.localtime(when))}\n".encode("utf-8", "surrogateescape")


def from_line_sender(line: bytes) -> str:
    """The envelope sender a ``From sender date`` line names ("" for
    ``MAILER-DAEMON``, the null sender ``from_line`` writes, and for
    anything that is not one address)."""
    words = line[5:].split(None, 1) if line.startswith(b"From ") else []
    sender = words[0].decode("utf-8", "surrogateescape").strip("<>") if words else ""
    if sender.upper() == "MAILER-DAEMON" or any(c in "<>\0\x7f" or ord(c) < 32 for c in sender):
        return ""
    return sender


def quote_from(text: bytes) -> bytes:
    """mboxrd: ``>*From `` at a line start gets one more ``>``."""
    return _FROM_QUOTE.sub(rb">\1", text)


class DotLock:
    """``PATH.lock`` made with O_EXCL (link-free: fine on local disks and NFSv3+)."""

    def __init__(self, path: str, timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.held = False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.close(fd)
                self.held = True
                return
            except FileExistsError:
                try:
                    age = time.time() - os.lstat(self.path).st_mtime
                    if age > STALE_LOCK:
                        os.unlink(self.path)
                        continue
                except FileNotFoundError:
                    continue
            except PermissionError:
                # no write access to the folder (e.g. /var/mail without group mail): fcntl alone
                return
            except OSError as exc:
                raise MboxError(f"{self.path}: {exc.strerror}") from None
            if time.monotonic() > deadline:
                raise MboxError(f"{self.path}: lock busy for {self.timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def release(self) -> None:
        if self.held:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def append(path, data: bytes, *, lockext: str = ".lock", fsync: bool = True, dotlock: bool = True) -> int:
    """Append ready-made mbox text (From_ line, quoted, ending as wanted) to ``path``; return its size.

    Raises MboxError (temporary for disk/lock trouble).
    """
    path = os.fspath(path)
    lock = DotLock(path + lockext) if dotlock else None
    try:
        if lock:
            lock.acquire()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MboxError(f"{path}: {exc.strerror}", temporary=exc.errno not in (errno.ELOOP, errno.EISDIR)) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if fsync:
                    os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, start)  # no half message is left behind
                except OSError:
                    pass
                raise MboxError(f"{path}: {exc.strerror}") from None
        finally:
            os.close(fd)  # releases the fcntl lock
    finally:
        if lock:
            lock.release()
    return len(data)


def format_message(from_: bytes | None, header: bytes, body: bytes, sender: str = "", raw: bool = False) -> bytes:
    """The bytes procmail appends to an mbox for (From_ line, header, body)."""
    data = (from_ or from_line(sender)) + quote_from(header) + quote_from(body)
    if not raw and not data.endswith(b"\n\n"):
        data += b"\n"  # as procmail: one more newline
    return data
