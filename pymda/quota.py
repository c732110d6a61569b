"""Maildir++ quota: the ``maildirsize`` file, the one place that knows it.

The format is Courier's (README.maildirquota), which Dovecot's ``maildir``
quota backend, maildrop and Exim share, so any of them can take over a
Maildir::

    1073741824S,1000C        the limits: bytes (S) and messages (C); 0S: none
    2345678 321              usage: bytes and messages ...
    1234 1                   ... then one line per change (negative for removals)

It lives in the user's Maildir (the INBOX) and covers every Maildir++
folder.  The usage is the sum of the lines.  A change is one line appended
with O_APPEND in one write, without a lock; the file is recalculated --
new/ and cur/ of the INBOX and every ``.Folder`` counted again (the size is
``,S=`` in the name, else the file's size) and written to a temporary file
renamed over it -- when it is missing, unreadable, 5120 bytes or larger,
names other limits than the user's, sums to a negative number, or says the
user is over quota while holding more than the summary line or being older
than 15 minutes (Dovecot's rules).  A recalculation during which a
directory changed is not written (the file is removed, so the next look
recalculates).

Sizes are the messages' sizes on disk (LF line ends), as Dovecot counts
them.  ``check`` before a message is written (``QuotaExceeded``, an OSError
with EDQUOT), ``record`` after it is in place.  Users without a limit have
no maildirsize kept.
"""

from __future__ import annotations

import errno
import os
import time

MAILDIRSIZE = "maildirsize"
MAX_FILE = 5120  # octets: a larger file is recalculated
STALE_SECS = 15 * 60  # an over-quota verdict from an older file is recalculated
TEXT = "Quota exceeded (mailbox for user is full)"  # Dovecot's words, for IMAP, SMTP and the logs


class QuotaExceeded(OSError):
    """The message would take the user over quota (EDQUOT)."""

    def __init__(self, text: str = TEXT) -> None:
        super().__init__(errno.EDQUOT, text)


def limits_of(cfg, record) -> tuple[int, int]:
    """The user's (bytes, messages) limits: ``quota.default_rule`` and the
    users-file rules (``pymta.lib.users.quota_limits``).  A rule Dovecot
    would refuse is logged and enforces nothing: mail keeps flowing."""
    from pymta.lib.users import quota_limits  # noqa: PLC0415 lazy

    try:
        return quota_limits(record, cfg.get("quota.default_rule", "") or "")
    except ValueError as exc:
        from pymta.lib import log  # noqa: PLC0415 lazy

        log.warning(f"{record.address}: no quota enforced: {exc}")
        return (0, 0)


def header(limits: tuple[int, int]) -> str:
    """The first line for ``limits`` (bytes, messages), as Dovecot writes it."""
    nbytes, count = limits
    parts = [f"{nbytes}S"] if nbytes or not count else []
    if count:
        parts.append(f"{count}C")
    return ",".join(parts)


def _parse_header(line: bytes) -> tuple[int, int] | None:
    nbytes = count = 0
    for part in line.split(b","):
        part = part.strip()
        if len(part) < 2 or not part[:-1].isdigit():
            return None
        kind, value = part[-1:], int(part[:-1])
        if kind == b"S":
            nbytes = value
        elif kind == b"C":
            count = value
        else:
            return None
    return nbytes, count


def over(usage: tuple[int, int], limits: tuple[int, int], size: int = 0, count: int = 1) -> bool:
    """Would ``count`` more messages of ``size`` octets take ``usage`` over
    ``limits``?  Size 0 (not known yet, at RCPT) asks whether the user is over
    already; a user exactly at the message limit has no room (Dovecot's test)."""
    used_bytes, used_count = usage
    limit_bytes, limit_count = limits
    if limit_count and count and used_count + count > limit_count:
        return True
    return bool(limit_bytes) and used_bytes + size > limit_bytes


def _read(box: str, limits: tuple[int, int]) -> tuple[int, int] | None:
    """The usage the file says, or None when it must be recalculated."""
    try:
        fd = os.open(os.path.join(box, MAILDIRSIZE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_FILE)
        mtime = os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) >= MAX_FILE or b"\0" in data:
        return None
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]  # a last line without LF is still being written
    if not lines or _parse_header(lines[0]) != tuple(limits):
        return None
    nbytes = count = 0
    for line in lines[1:]:
        fields = line.split()
        try:
            b, c = int(fields[0]), int(fields[1])
        except (IndexError, ValueError):
            return None
        nbytes, count = nbytes + b, count + c
    if nbytes < 0 or count < 0 or len(lines) < 2:
        return None
    is_over = (limits[0] and nbytes > limits[0]) or (limits[1] and count > limits[1])
    if is_over and (len(lines) > 2 or mtime < time.time() - STALE_SECS):
        return None  # over quota on the strength of old or many lines: count again
    return nbytes, count


def _folders(box: str) -> list[str]:
    """The INBOX and every Maildir++ folder (``.Name`` with a ``cur/``)."""
    found = [box]
    try:
        names = os.listdir(box)
    except OSError:
        return found
    for name in sorted(names):
        if name.startswith(".") and name not in (".", "..") and os.path.isdir(os.path.join(box, name, "cur")):
            found.append(os.path.join(box, name))
    return found


def size_of(directory: str, name: str) -> int:
    """A message's size on disk: ``,S=`` in its name, else the file's (0 when gone)."""
    base = name.partition(":")[0]
    for part in base.split(",")[1:]:
        if part.startswith("S=") and part[2:].isdigit():
            return int(part[2:])
    try:
        return os.stat(os.path.join(directory, name)).st_size
    except OSError:
        return 0


def folder_usage(folder, mtimes: dict | None = None) -> tuple[int, int]:
    """(bytes, messages) in new/ and cur/ of one folder, counted now (the
    directories' mtimes before the count go into ``mtimes``)."""
    nbytes = messages = 0
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        try:
            mtime = os.stat(directory).st_mtime
            names = os.listdir(directory)
        except OSError:
            continue
        if mtimes is not None:
            mtimes[directory] = mtime
        for name in names:
            if not name.startswith("."):
                nbytes += size_of(directory, name)
                messages += 1
    return nbytes, messages


def _count(box: str) -> tuple[tuple[int, int], dict[str, float]]:
    nbytes = messages = 0
    mtimes: dict[str, float] = {}
    for folder in _folders(box):
        b, c = folder_usage(folder, mtimes)
        nbytes, messages = nbytes + b, messages + c
    return (nbytes, messages), mtimes


def recalculate(box: str, limits: tuple[int, int], *, write: bool = True) -> tuple[int, int]:
    """Count the Maildir again and, with ``write``, replace the maildirsize with the result."""
    usage, mtimes = _count(box)
    if not write:
        return usage
    path = os.path.join(box, MAILDIRSIZE)
    for directory, mtime in mtimes.items():
        try:
            changed = os.stat(directory).st_mtime != mtime
        except OSError:
            changed = True
        if changed:  # a message came or went while we counted: the next look counts again
            try:
                os.unlink(path)
            except OSError:
                pass
            return usage
    tmp = os.path.join(box, f"tmp/{MAILDIRSIZE}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{header(limits)}\n{usage[0]} {usage[1]}\n".encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:  # a full disk or a read-only store: the count still answers
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return usage


def usage(box, limits: tuple[int, int], *, write: bool = True) -> tuple[int, int]:
    """(bytes, messages) the user's Maildir holds, from the maildirsize when it
    can be trusted, else counted again (and, with ``write``, saved)."""
    found = _read(str(box), limits)
    return found if found is not None else recalculate(str(box), limits, write=write)


def check(box, limits: tuple[int, int], size: int, count: int = 1, *, write: bool = True) -> tuple[int, int]:
    """Raise QuotaExceeded when ``count`` messages of ``size`` octets do not
    fit; else return the usage.  No limits: nothing is read."""
    if not any(limits):
        return (0, 0)
    found = usage(box, limits, write=write)
    if over(found, limits, size, count):
        raise QuotaExceeded()
    return found


def record(box, limits: tuple[int, int], nbytes: int, messages: int) -> None:
    """Messages were added (or, negative, removed): one line appended; a missing
    file is recalculated (it then counts them already).  Never raises: the
    messages are in place, and a wrong count heals at the next recalculation."""
    if not any(limits) or (nbytes == 0 and messages == 0):
        return
    path = os.path.join(str(box), MAILDIRSIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            recalculate(str(box), limits)
        except OSError:
            pass
        return
    except OSError:
        return
    try:
        os.write(fd, f"{nbytes} {messages}\n".encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def full_at_rcpt(cfg, users, address: str, size: int = 0) -> bool:
    """At RCPT (smtpd, lmtpd; in a Job): is the user ``address`` names over
    quota for a message of ``size`` octets (0: not declared)?  An alias, an
    unknown user, a user without limits or a Maildir this process cannot read
    answer False: the deliverer checks again.  Root only reads."""
    record = users.lookup(address)
    if record is None or not (record.fields or cfg.get("quota.default_rule")):
        return False
    limits = limits_of(cfg, record)
    if not any(limits):
        return False
    from pymda.maildir import MaildirError, user_maildir  # noqa: PLC0415 lazy

    try:
        box = user_maildir(cfg.mail_dir, record.address)
    except MaildirError:
        return False
    return over(usage(box, limits, write=os.geteuid() != 0), limits, size)
