"""Directory change notices for a listening daemon: Linux inotify through ctypes.

One inotify instance per process (the kernel allows a user 128 by default,
``fs.inotify.max_user_instances``), one watch per directory however many
subscribers share it (``fs.inotify.max_user_watches``).  A subscriber names
directories and a callback; when any of them changes, the callback runs (on
the event loop, once per burst: events are gathered for ``delay`` seconds).
``subscribe`` returns None when a watch cannot be had (no inotify, out of
watches): the caller then polls.  Nothing here knows mailboxes.

In the directory's own entry, only a file moved into place with a name in
``names`` counts (an index replaced whole by rename); in the others any
entry created, moved or deleted counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct

from pymta.lib import log

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
RENAMED_IN = IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_HEADER = struct.Struct("iIII")


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def _instance(libc) -> int:
    """A new non-blocking inotify descriptor; raises OSError."""
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _events(fd: int):
    """(wd, mask, name) of every event waiting on ``fd``, read without blocking;
    a failing read raises OSError."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        if not data:
            return
        pos = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
            yield wd, mask, data[pos + _HEADER.size : pos + _HEADER.size + length].rstrip(b"\0")
            pos += _HEADER.size + length


class Watcher:
    """The process's inotify instance.  ``fd`` becomes readable when events wait:
    the driver calls ``read()`` then, and ``fire()`` ``delay`` seconds later."""

    def __init__(self) -> None:
        self.libc = _libc()
        self.fd = _instance(self.libc)
        self.wds: dict[str, int] = {}  # path -> watch descriptor
        self.names: dict[int, frozenset[str] | None] = {}  # wd -> names that count (None: any entry)
        self.subs: dict[int, set] = {}  # wd -> subscriber tokens
        self.pending: set = set()  # tokens whose directories changed, not yet told
        self.out_of_watches = False

    def subscribe(self, paths, callback, names: frozenset[str] | None = None):
        """Call ``callback()`` when a directory of ``paths`` changes; the token to
        ``unsubscribe``, or None (nothing watched) when a watch cannot be had.
        ``names``: for the first path, only these entries moved in count."""
        token = _Token(callback)
        for i, path in enumerate(paths):
            wd = self.wds.get(path)
            if wd is None:
                wanted = names if i == 0 and names is not None else None
                wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), RENAMED_IN if wanted else ENTRIES)
                if wd < 0:
                    err = ctypes.get_errno()
                    if err == errno.ENOSPC and not self.out_of_watches:
                        self.out_of_watches = True
                        log.warning(
                            "inotify: out of watches (fs.inotify.max_user_watches): IDLE polls for new sessions"
                        )
                    self.unsubscribe(token)
                    return None
                if wd in self.subs and self.names.get(wd) != wanted:
                    self.names[wd] = None  # the same directory under two names (a link): any entry
                else:
                    self.names[wd] = wanted
                self.wds[path] = wd
                self.subs.setdefault(wd, set())
            self.subs[wd].add(token)
            token.wds.append((path, wd))
        return token

    def unsubscribe(self, token) -> None:
        self.pending.discard(token)
        for path, wd in token.wds:
            subs = self.subs.get(wd)
            if subs is None:
                continue
            subs.discard(token)
            if not subs:
                del self.subs[wd]
                self.names.pop(wd, None)
                if self.wds.get(path) == wd:
                    del self.wds[path]
                self.libc.inotify_rm_watch(self.fd, wd)
        token.wds = []

    def read(self) -> bool:
        """Take the waiting events; True when some subscriber is to be told."""
        for wd, mask, name in _events(self.fd):
            if mask & IN_Q_OVERFLOW:  # events were lost: everyone looks
                for subs in self.subs.values():
                    self.pending |= subs
                continue
            told = self.subs.get(wd)
            if not told:
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self.pending |= told
                continue
            wanted = self.names.get(wd)
            if wanted is not None and os.fsdecode(name) not in wanted:
                continue
            self.pending |= told
        return bool(self.pending)

    def fire(self) -> None:
        """Tell the subscribers whose directories changed since the last time."""
        told, self.pending = self.pending, set()
        for token in told:
            if token.wds:
                try:
                    token.callback()
                except Exception as exc:  # one subscriber's trouble is not the others'
                    log.error(f"watch callback: {exc!r}")

    def close(self) -> None:
        os.close(self.fd)


class FileChanges:
    """Whether some files changed, for an event loop that must not look at the
    disk: an inotify instance of its own, on the files' directories, read
    without blocking.  ``generation`` counts the reads that found a change to
    one of the files (or lost events), -1 once a directory is gone; whoever
    reads the files notes the generation first.
    Made where a look at the disk is allowed (``add_watch`` resolves paths);
    raises OSError when inotify is not to be had."""

    MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    SELF = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_Q_OVERFLOW

    def __init__(self, paths) -> None:
        libc = _libc()
        self.fd = fd = _instance(libc)
        self.names = {os.fsencode(os.path.basename(p)) for p in paths}
        self.generation = 0
        self.broken = False
        for folder in {os.path.dirname(os.path.abspath(p)) for p in paths}:
            if libc.inotify_add_watch(fd, os.fsencode(folder), self.MASK | IN_DELETE_SELF | IN_MOVE_SELF) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, os.strerror(err))

    def poll(self) -> int:
        """Read what waits (never blocks, never touches the disk); the generation."""
        changed = False
        try:
            for _wd, mask, name in _events(self.fd):
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self.broken = True  # the directory went: nothing is watched any more
                if mask & self.SELF or name in self.names:
                    changed = True
        except OSError:  # the instance is unusable: trust nothing from now on
            self.broken = True
        if changed:
            self.generation += 1
        return -1 if self.broken else self.generation

    def close(self) -> None:
        os.close(self.fd)


class _Token:
    __slots__ = ("callback", "wds")

    def __init__(self, callback) -> None:
        self.callback = callback
        self.wds: list[tuple[str, int]] = []


_FAILED = False


def watcher() -> Watcher | None:
    """A new Watcher, or None (logged once) where inotify is not to be had."""
    global _FAILED
    if _FAILED:
        return None
    try:
        return Watcher()
    except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
        _FAILED = True
        log.warning(f"inotify unavailable ({exc}; fs.inotify.max_user_instances?): IDLE polls")
        return None
