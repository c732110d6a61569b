"""Which queue deliveries a Maildir folder has had: a short journal of tags.

A delivery the queue runner repeats after a crash looks for its earlier
copy by name (``maildir.find_tagged``).  The user may have read and
deleted that copy before the retry; the journal remembers the tag anyway,
so the repeat still writes nothing.

``pymail-delivered`` in the folder (beside ``new/ cur/ tmp/``, like the
IMAP index) holds one ``<tag> <tmp name>`` per line, appended once the ``tmp/`` copy is
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


def remember(folder: str | os.PathLike, tag: str, name: str) -> None:
    """Note that the complete copy ``name`` (its ``tmp/`` name, which carries
    ``tag``) now belongs to ``folder``; best effort."""
    path = os.path.join(folder, JOURNAL)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # the name check still works
    try:
        os.write(fd, f"{tag} {name}\n".encode("ascii", "replace"))
        if os.fstat(fd).st_size > LIMIT:
            os.replace(path, path + ".old")
    except OSError:
        pass
    finally:
        os.close(fd)


def recorded(folder: str | os.PathLike, tag: str) -> list[str]:
    """The names of the complete copies tagged ``tag`` that ``folder`` received
    (empty: none).  Only these may be finished from ``tmp/``: a tmp file an
    attempt left before it was complete is never journalled."""
    prefix = tag.encode("ascii") + b" "
    names = []
    for journal in (JOURNAL + ".old", JOURNAL):
        try:
            fd = os.open(os.path.join(folder, journal), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 2 * LIMIT)
        finally:
            os.close(fd)
        for line in data.split(b"\n"):
            if line.startswith(prefix):
                names.append(line[len(prefix) :].decode("ascii", "replace"))
    return names
