"""Which queue deliveries a Maildir folder has had: a short journal of tags.

A delivery the queue runner repeats after a crash looks for its earlier
copy by name (``maildir.find_tagged``).  The user may have read and
deleted that copy before the retry; the journal remembers the tag anyway,
so the repeat still writes nothing.

``pymail-delivered`` in the folder (beside ``new/ cur/ tmp/``, like the
IMAP index) holds one tag per line, appended once the ``tmp/`` copy is
complete and fsynced, before its rename into ``new/``: a journalled tag
means the copy is in ``new/`` or ``cur/``, was deleted since, or -- the
attempt died before the rename -- waits in ``tmp/`` to be moved in
(``maildir._earlier_copy``).  Past 64 KB (about 1,800 deliveries) it becomes
``pymail-delivered.old`` and a new one starts: two generations are kept,
far more than a retry needs.  Appends are single small ``O_APPEND``
writes, atomic between processes; no lock and no fsync (a power cut may
lose the last tags, which only brings back the name check alone).
"""

from __future__ import annotations

import os

JOURNAL = "pymail-delivered"
LIMIT = 64 * 1024


def remember(folder: str | os.PathLike, tag: str) -> None:
    """Note that the message tagged ``tag`` is now in ``folder``; best effort."""
    path = os.path.join(folder, JOURNAL)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # the name check still works
    try:
        os.write(fd, tag.encode("ascii") + b"\n")
        if os.fstat(fd).st_size > LIMIT:
            os.replace(path, path + ".old")
    except OSError:
        pass
    finally:
        os.close(fd)


def seen(folder: str | os.PathLike, tag: str) -> bool:
    """Was the message tagged ``tag`` delivered into ``folder`` before?"""
    line = tag.encode("ascii") + b"\n"
    for name in (JOURNAL, JOURNAL + ".old"):
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 2 * LIMIT)
        finally:
            os.close(fd)
        if data.startswith(line) or b"\n" + line in data:
            return True
    return False
