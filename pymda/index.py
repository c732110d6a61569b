"""Per-folder message index: UIDs, UIDVALIDITY, keywords, MODSEQ, sizes, dates.

Maildir names alone cannot give stable UIDs (Dovecot's
``dovecot-uidlist``), so every Maildir(++) folder gets a file
``pymail-index`` beside its new/cur/tmp::

    PYMAILIDX1 <uidvalidity> <uidnext> <highestmodseq> <new-mtime-ns> <cur-mtime-ns>
    K <keyword> <keyword> ...                     (the keyword table)
    R <first-recent-uid>                          (see below; absent: UIDNEXT)
    E <expunge-floor>                             (see below; absent: HIGHESTMODSEQ)
    V <modseq> <uid-ranges>                       (expunged UIDs, one line per expunge)
    <uid> <modseq> <internaldate> <crlf-size> <n|c> <flags|-> <kw-indexes|-> <base name>

``flags`` are the Maildir ``:2,`` letters as last seen on disk (the file
name is the truth; the copy here lets a reader notice changes and give
them a new MODSEQ), ``kw-indexes`` is a comma list into the keyword table.
The first 26 keywords of a folder are in the file names too, as the
lowercase letters of the folder's ``dovecot-keywords`` map
(``pymda.maildir.KeywordMap``, Dovecot's layout): a name changed by another
program (Dovecot, mutt) gives the message the keywords its letters say,
and keeps those past the 26th, which only this index knows.
The file is only replaced whole (tmp + fsync + rename) while holding
``pymail-index.lock`` (flock, compatible with filelock), so readers never need the lock and any
number of imapd/pop3d processes and the deliverer agree on UIDs.

A message is *recent* (IMAP's \\Recent) until one session claims it
(``claim_recent``): while it lies in new/, or while its UID is at least the
first-recent UID (how APPEND and COPY, which write into cur/, leave it
recent).  A new folder takes its UIDVALIDITY from the mail home's counter
file ``pymail-uidvalidity`` (``next_uidvalidity``): strictly greater than
any the home gave before, so a folder deleted and made again never repeats
one, whichever process builds the new index.

Expunged UIDs are kept (IMAP QRESYNC asks which UIDs vanished since a
MODSEQ): every expunge -- by a session, or a file found gone by ``sync()``
-- takes a new MODSEQ and adds a ``V`` line with it and the UIDs as
``lo:hi`` ranges (comma-separated).  At most ``MAX_VANISHED_RANGES`` ranges
are kept, the oldest lines dropped first; the expunge floor is then the
MODSEQ of the last line dropped: expunges at or below it are not all known
(``Snapshot.vanished_since`` says None).  An index written before these
lines existed (or by a program that drops them) has no ``E`` line: its floor
is its HIGHESTMODSEQ, so nothing older is claimed to be known.

``sync()`` lists new/ and cur/ (no file is opened: sizes come from ``W=``)
only when a directory's mtime moved since the last scan, gives unknown
base names the next UIDs in name order, and drops vanished ones.  Nothing
here knows IMAP.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pymda import maildir as md

INDEX_NAME = "pymail-index"
LOCK_TIMEOUT = 30.0
LOCK_POLL = 0.004  # seconds between looks at a lock another process holds (after a quick first few)
MAGIC = "PYMAILIDX1"
# Expunged-UID ranges kept for QRESYNC (a few KB of index); older ones are forgotten.
MAX_VANISHED_RANGES = 2000
# A directory mtime this close to "now" may still change within the same
# clock tick without moving: rescan next time (Dovecot does the same).
_DIRTY_WINDOW_NS = 2_000_000_000


class IndexUnavailable(Exception):
    """The index could not be read or written now (lock timeout, disk trouble).

    ``errno`` is the OSError's errno when there was one (ENOSPC: the IMAP
    server answers NO [OVERQUOTA])."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class _NothingToClaim(Exception):
    """claim_recent found nothing left to claim: the index is left as it is."""


class Entry:
    __slots__ = ("uid", "modseq", "idate", "size", "sub", "flags", "kw", "base")

    def __init__(self, uid, modseq, idate, size, sub, flags, kw, base):
        self.uid = uid
        self.modseq = modseq
        self.idate = idate  # epoch seconds
        self.size = size  # RFC 822 size (CRLF line ends)
        self.sub = sub  # "new" or "cur"
        self.flags = flags  # Maildir letters, sorted
        self.kw = kw  # frozenset of keyword names
        self.base = base

    @property
    def name(self) -> str:
        if self.sub == "new" and not self.flags:
            return self.base
        return md.flagged_name(self.base, self.flags)

    def relpath(self) -> str:
        return f"{self.sub}/{self.name}"

    def copy(self) -> Entry:
        return Entry(self.uid, self.modseq, self.idate, self.size, self.sub, self.flags, self.kw, self.base)

    def __repr__(self) -> str:
        return f"Entry({self.uid}, {self.relpath()!r}, kw={sorted(self.kw)})"


class Snapshot:
    """One consistent state of a folder's index."""

    __slots__ = (
        "uidvalidity",
        "uidnext",
        "highestmodseq",
        "entries",
        "new_mtime",
        "cur_mtime",
        "first_recent",
        "vanished",
        "expunge_floor",
    )

    def __init__(
        self,
        uidvalidity,
        uidnext,
        highestmodseq,
        entries,
        new_mtime=0,
        cur_mtime=0,
        first_recent=None,
        vanished=None,
        expunge_floor=0,
    ):
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.highestmodseq = highestmodseq
        self.entries = entries  # dict uid -> Entry, in UID order
        self.new_mtime = new_mtime
        self.cur_mtime = cur_mtime
        # UIDs from here on are not yet claimed by any session (\Recent)
        self.first_recent = uidnext if first_recent is None else first_recent
        # expunges, oldest first: [(modseq, [(lo, hi), ...]), ...]
        self.vanished: list[tuple[int, list[tuple[int, int]]]] = [] if vanished is None else vanished
        # expunges with a MODSEQ at or below this one may be missing from ``vanished``
        self.expunge_floor = expunge_floor

    def copy(self) -> Snapshot:
        """A copy to change (the entries dict is new; the entries are shared, never changed in place)."""
        return Snapshot(
            self.uidvalidity,
            self.uidnext,
            self.highestmodseq,
            dict(self.entries),
            self.new_mtime,
            self.cur_mtime,
            self.first_recent,
            list(self.vanished),
            self.expunge_floor,
        )

    def vanished_since(self, modseq: int) -> list[tuple[int, int]] | None:
        """The UIDs expunged with a MODSEQ above ``modseq``, as (lo, hi) ranges
        (newest expunge first); None when some of them may have been forgotten."""
        if modseq < self.expunge_floor:
            return None
        uids: list[tuple[int, int]] = []
        for ms, ranges in reversed(self.vanished):
            if ms <= modseq:
                break
            uids.extend(ranges)
        return uids

    def bury(self, uids) -> None:
        """Messages ``uids`` were expunged (their entries already gone): a new
        MODSEQ, and the UIDs kept with it."""
        ranges = uid_ranges(sorted(uids))
        if not ranges:
            return
        self.highestmodseq += 1
        self.vanished.append((self.highestmodseq, ranges))
        total = sum(len(r) for _m, r in self.vanished)
        while total > MAX_VANISHED_RANGES and len(self.vanished) > 1:
            ms, dropped = self.vanished.pop(0)
            total -= len(dropped)
            self.expunge_floor = max(self.expunge_floor, ms)

    def is_recent(self, e: Entry) -> bool:
        """No session has claimed message ``e`` yet (it is \\Recent for the next one)."""
        return e.uid >= self.first_recent or e.sub == "new"

    def recent_uids(self) -> list[int]:
        return [u for u, e in self.entries.items() if u >= self.first_recent or e.sub == "new"]

    def keywords(self) -> list[str]:
        seen = set()
        for e in self.entries.values():
            seen |= e.kw
        return sorted(seen)


def uid_ranges(uids) -> list[tuple[int, int]]:
    """Sorted UIDs -> [(lo, hi), ...] runs: [1, 2, 3, 5] -> [(1, 3), (5, 5)]."""
    out: list[tuple[int, int]] = []
    for u in uids:
        if out and u == out[-1][1] + 1:
            out[-1] = (out[-1][0], u)
        elif not out or u > out[-1][1]:
            out.append((u, u))
    return out


def _ranges_text(ranges) -> str:
    return ",".join(f"{lo}:{hi}" if hi != lo else str(lo) for lo, hi in ranges)


def _parse_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        lo, _sep, hi = item.partition(":")
        a, b = int(lo), int(hi or lo)
        if not 0 < a <= b:
            raise ValueError(item)
        out.append((a, b))
    return out


def _sort_flags(flags) -> str:
    return "".join(sorted(set(c for c in flags if c.isalpha())))


def _is_sorted_letters(flags: str) -> bool:
    return flags.isalpha() and all(a < b for a, b in zip(flags, flags[1:], strict=False))


def _name_date(base: str) -> int | None:
    head = base.split(".", 1)[0]
    return int(head) if head.isdigit() and len(head) < 12 else None


_THREAD_LOCKS: dict[str, threading.Lock] = {}  # index lock path -> the lock its sessions in this process queue on
_LINES: dict[str, tuple[str | None, dict[str, Entry]]] = {}  # folder -> (its K line, entry line -> Entry)


def _parse(data: bytes, folder: str | None = None) -> Snapshot | None:
    """The snapshot an index file holds (None when it is not one).

    With ``folder``, the entries of the folder's last parse in this process
    are reused for lines that did not change (and so has the keyword table):
    an index rewritten by another process for a STORE of ten messages costs
    ten parsed lines instead of every one.  Entries are never changed in
    place, so sharing them is safe."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 6 or head[0] != MAGIC:
        return None
    try:
        uidvalidity, uidnext, hms, nm, cm = (int(x) for x in head[1:])
    except ValueError:
        return None
    table: list[str] = []
    entries: dict[int, Entry] = {}
    first_recent = None
    floor = hms  # an index without an E line knows of no expunge before now
    vanished = []
    empty = frozenset()
    known_k, known = _LINES.get(folder, (None, {})) if folder is not None else (None, {})
    k_line = None
    memo: dict[str, Entry] = {}  # entries parsed under this file's keyword table (the K line comes first)
    seen: dict[str, Entry] = {}
    for line in lines[1:]:
        entry = memo.get(line)  # first: most lines are entries seen before
        if entry is not None:
            entries[entry.uid] = seen[line] = entry
            continue
        if not line:
            continue
        if line.startswith("K"):
            table = line.split()[1:]
            k_line = line
            memo = known if k_line == known_k else {}
            continue
        if line.startswith("R "):
            value = line[2:].strip()
            if value.isdigit() and len(value) < 12:
                first_recent = int(value)
            continue
        if line.startswith("E "):
            value = line[2:].strip()
            if value.isdigit() and len(value) < 20:
                floor = int(value)
            continue
        if line.startswith("V "):
            try:
                _v, ms, text = line.split(" ")
                vanished.append((int(ms), _parse_ranges(text)))
            except ValueError:
                floor = max(floor, hms)  # a damaged line: claim to know nothing older
            continue
        parts = line.split(" ", 7)
        if len(parts) != 8:
            continue
        try:
            uid = int(parts[0])
            kwf = parts[6]
            kw = empty if kwf == "-" else frozenset(table[int(i)] for i in kwf.split(","))
            entries[uid] = seen[line] = Entry(
                uid,
                int(parts[1]),
                int(parts[2]),
                int(parts[3]),
                "new" if parts[4] == "n" else "cur",
                "" if parts[5] == "-" else parts[5],
                kw,
                parts[7],
            )
        except (ValueError, IndexError):
            continue
    if folder is not None:
        _bounded_put(_LINES, folder, (k_line, seen))
    if entries and uidnext <= max(entries):
        uidnext = max(entries) + 1  # a damaged header must never hand out a UID that is in use
    if first_recent is not None and first_recent > uidnext:
        first_recent = uidnext
    return Snapshot(uidvalidity, uidnext, hms, entries, nm, cm, first_recent, vanished, floor)


def _format(snap: Snapshot) -> bytes:
    table: dict[str, int] = {}
    for e in snap.entries.values():
        for k in e.kw:
            if k not in table:
                table[k] = len(table)
    out = [
        f"{MAGIC} {snap.uidvalidity} {snap.uidnext} {snap.highestmodseq} {snap.new_mtime} {snap.cur_mtime}",
        "K " + " ".join(table) if table else "K",
        f"R {snap.first_recent}",
        f"E {snap.expunge_floor}",
    ]
    out.extend(f"V {ms} {_ranges_text(ranges)}" for ms, ranges in snap.vanished)
    for e in snap.entries.values():
        kw = ",".join(str(table[k]) for k in sorted(e.kw)) if e.kw else "-"
        out.append(
            f"{e.uid} {e.modseq} {e.idate} {e.size} {'n' if e.sub == 'new' else 'c'} {e.flags or '-'} {kw} {e.base}"
        )
    out.append("")
    return "\n".join(out).encode("utf-8", "surrogateescape")


UIDVALIDITY_FILE = "pymail-uidvalidity"


def next_uidvalidity(folder: str | os.PathLike, floor: int = 0) -> int:
    """A UIDVALIDITY for a new index of ``folder``: above every one its mail home gave before.

    The counter lives in the mail home (a Maildir++ folder's parent, else
    the Maildir itself), read and raised under an flock, so processes that
    each build an index in the same second still get different values.
    Without a writable home it falls back to the clock (and ``floor``)."""
    import fcntl  # noqa: PLC0415 lazy

    folder = Path(folder)
    home = folder.parent if folder.name.startswith(".") else folder
    uv = max(int(time.time()), floor, 1)
    try:
        fd = os.open(
            home / UIDVALIDITY_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
    except OSError:
        return uv
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = os.pread(fd, 32, 0).strip()
        if last.isdigit():
            uv = max(uv, int(last) + 1)
        data = b"%d\n" % uv
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError:
        pass
    finally:
        os.close(fd)  # also drops the lock
    return uv


def _wsize(path: Path, name: str) -> int:
    try:
        return md.message_sizes(path, name)[1]
    except OSError:
        return 0


# Parsed indexes shared by the sessions of one process (a listening imapd):
# folder path -> ((inode, mtime_ns, size) of the file, Snapshot).
_SHARED: dict[str, tuple] = {}
_SHARED_MAX = 256


def _head_of(snap: Snapshot) -> bytes:
    return (
        f"{MAGIC} {snap.uidvalidity} {snap.uidnext} {snap.highestmodseq} {snap.new_mtime} {snap.cur_mtime}"
    ).encode()


def _remember(folder: str, key: tuple, snap: Snapshot) -> None:
    _bounded_put(_SHARED, folder, (key, snap))


def _bounded_put(table: dict, folder: str, value) -> None:
    """``table[folder] = value``, the oldest folder dropped past _SHARED_MAX.
    Sessions sync in job threads at once: another thread may drop the same oldest entry."""
    if len(table) >= _SHARED_MAX and folder not in table:
        try:
            table.pop(next(iter(table)), None)
        except (StopIteration, RuntimeError):
            pass
    table[folder] = value


class _Letters:
    """The folder's keyword map for one locked step: read when first needed,
    saved before a file name uses a letter it gave."""

    __slots__ = ("folder", "kmap")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.kmap: md.KeywordMap | None = None

    def map(self) -> md.KeywordMap:
        if self.kmap is None:
            try:
                self.kmap = md.KeywordMap.load(self.folder)
            except OSError as exc:
                raise IndexUnavailable(f"{self.folder}/{md.KEYWORDS_FILE}: {exc.strerror}", exc.errno) from None
        return self.kmap

    def save(self) -> None:
        if self.kmap is not None and self.kmap.changed:
            try:
                self.kmap.save(self.folder)
            except OSError as exc:
                raise IndexUnavailable(f"{self.folder}/{md.KEYWORDS_FILE}: {exc.strerror}", exc.errno) from None

    def info(self, flags: str, kw) -> str:
        """The info letters of a message with standard ``flags`` and keywords ``kw``."""
        if not kw and "P" not in flags:
            return _sort_flags(c for c in flags if not "a" <= c <= "z")
        info = self.map().info(flags, kw)
        self.save()
        return info

    def read(self, flags: str, old_kw, old_flags: str = "") -> tuple[str, frozenset]:
        """(standard flags, keywords) of a name with info letters ``flags``
        that another program may have changed from ``old_flags``: its letters
        give the keywords that had theirs in the old name, ``old_kw`` (the
        index's) those that did not (past the 26th, or set before names
        carried letters)."""
        kmap = self.map()
        std, names = kmap.keywords(flags, old_flags)
        try:
            self.save()  # names given to unnamed letters
        except IndexUnavailable:
            pass  # a read-only folder stays readable; the names are given again next time
        kept = [k for k in old_kw if not (c := kmap.letter(k)) or c not in old_flags]
        return std, names | frozenset(kept)


class FolderIndex:
    """The index of the Maildir (or Maildir++ folder) at ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.file = self.path / INDEX_NAME
        self.dir = str(self.path)
        self._cache_key = None
        self._cache: Snapshot | None = None

    def twin(self) -> FolderIndex:
        """Another index object for the folder (no I/O): the cache of one is
        not to be used by two threads at once."""
        return FolderIndex(self.path)

    def watch_paths(self) -> tuple[list[str], frozenset[str]]:
        """What to watch to hear of every change: the folder (only the index
        replaced by rename counts there), new/ and cur/."""
        return [self.dir, f"{self.dir}/new", f"{self.dir}/cur"], frozenset((INDEX_NAME,))

    # -- reading ------------------------------------------------------------

    def _dir_mtime(self, sub: str) -> int:
        try:
            return os.stat(self.path / sub).st_mtime_ns
        except FileNotFoundError:
            return 0

    def read(self) -> Snapshot | None:
        """The index as on disk (cached while the file does not change); None if absent."""
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            self._cache_key = self._cache = None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._cache_key and self._cache is not None:
            return self._cache
        shared = _SHARED.get(self.dir)
        if shared is not None and shared[0] == key and self._head() == _head_of(shared[1]):
            # Another session of this process read or wrote this very file
            # (the header line -- UIDNEXT, HIGHESTMODSEQ -- guards against a
            # reused inode with a coarse mtime); snapshots are never changed
            # in place, so one can be shared.
            self._cache_key, self._cache = shared
            return self._cache
        try:
            with open(self.file, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            return None
        snap = _parse(data, self.dir)
        self._cache_key = (st.st_ino, st.st_mtime_ns, st.st_size)
        self._cache = snap
        if snap is not None:  # a corrupt file (None) is never shared: it is rebuilt under the lock
            _remember(self.dir, self._cache_key, snap)
        return snap

    def _head(self) -> bytes:
        try:
            with open(self.file, "rb") as fh:
                return fh.readline(256).rstrip(b"\n")
        except OSError:
            return b""

    def _fresh(self, snap: Snapshot | None) -> bool:
        if snap is None:
            return False
        # new/ is written without the lock (the deliverer): a delivery in the
        # same clock tick as our last scan would not move its mtime, so a
        # recent mtime means "look again".  cur/ is changed by lock holders,
        # which record the mtime they leave behind.
        m = self._dir_mtime("new")
        if m != snap.new_mtime or time.time_ns() - m < _DIRTY_WINDOW_NS:
            return False
        return self._dir_mtime("cur") == snap.cur_mtime

    def sync(self) -> Snapshot:
        """Bring the index up to date with new/ and cur/; return it."""
        snap = self.read()
        if self._fresh(snap):
            return snap
        if snap is not None and self._quiet_new(snap):
            return snap
        sibling = _THREAD_LOCKS.get(str(self.file) + ".lock")
        if snap is not None and sibling is not None and sibling.locked():
            # Another session of this process is changing the folder under the
            # lock and will write the index: the state it last wrote is a
            # consistent answer (as if this command came just before that
            # change), and waiting for it would leave a CPU idle.
            return snap
        with self._lock():
            return self._sync_locked()

    def _quiet_new(self, snap: Snapshot) -> bool:
        """Only new/ is in doubt (its mtime is recent): does a lock-free look show no change?"""
        if self._dir_mtime("cur") != snap.cur_mtime or self._dir_mtime("new") != snap.new_mtime:
            return False
        try:
            names = os.listdir(self.path / "new")
        except FileNotFoundError:
            names = []
        listed = set()
        for name in names:
            if name[0] != ".":
                listed.add(name)
        known = {e.name for e in snap.entries.values() if e.sub == "new"}
        return listed == known

    def resync(self) -> Snapshot:
        """Like sync(), but waits for a writer holding the lock and rescans.

        For a reader that found a message file gone: another process may be
        between renaming it (new flags) and writing the index.
        """
        self._cache_key = None
        with self._lock():
            return self._sync_locked()

    # -- writing --------------------------------------------------------------

    def _lock(self):
        """An exclusive flock on ``pymail-index.lock``.

        The same lock as ``filelock.FileLock`` takes on Unix (flock(2) on the
        same file), without importing filelock (and importlib.metadata) on
        every inetd connection.

        The sessions of one listening process queue for it on a thread lock
        first (woken the moment it is free), so only one of them at a time
        waits for another process, by polling flock every few milliseconds.
        """
        import fcntl  # noqa: PLC0415 lazy

        path = str(self.file) + ".lock"
        owner = self
        in_process = _THREAD_LOCKS.get(path)
        if in_process is None:  # setdefault: two threads making it at once still share one
            in_process = _THREAD_LOCKS.setdefault(path, threading.Lock())

        def locked_out() -> IndexUnavailable:
            return IndexUnavailable(f"{owner.file}: locked for {LOCK_TIMEOUT:.0f} s")

        class _Guard:
            fd = -1

            def __enter__(self_):
                deadline = time.monotonic() + LOCK_TIMEOUT
                if not in_process.acquire(blocking=False):
                    from pymta.lib import jobslots  # noqa: PLC0415 lazy (only when contended)

                    with jobslots.waiting():  # a daemon's other jobs go on meanwhile
                        if not in_process.acquire(timeout=LOCK_TIMEOUT):
                            raise locked_out()
                try:
                    self_.fd = self_._flock(deadline)
                except BaseException:
                    in_process.release()
                    raise
                return self_

            @staticmethod
            def _flock(deadline: float) -> int:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    raise IndexUnavailable(f"{path}: {exc.strerror}", exc.errno) from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                from pymta.lib import jobslots  # noqa: PLC0415 lazy (only when another process holds it)

                delay = 0.0005
                with jobslots.waiting():
                    while True:
                        time.sleep(delay)
                        delay = min(delay * 2, LOCK_POLL)
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            return fd
                        except BlockingIOError:
                            if time.monotonic() > deadline:
                                os.close(fd)
                                raise locked_out() from None

            def __exit__(self_, *exc):
                try:
                    fcntl.flock(self_.fd, fcntl.LOCK_UN)
                finally:
                    os.close(self_.fd)
                    in_process.release()

        return _Guard()

    def _sync_locked(self, force_full: bool = False) -> Snapshot:
        snap = self.read()
        created = snap is None
        if snap is None:
            floor = 0
            try:
                # An index that exists but cannot be parsed (corrupt): its UIDs
                # are lost, so the renumbered folder needs a UIDVALIDITY that
                # differs from the old one -- which is not later than the old
                # file's mtime, even when the rebuild happens in the same second.
                floor = int(os.stat(self.file).st_mtime) + 1
            except FileNotFoundError:
                pass
            snap = Snapshot(next_uidvalidity(self.path, floor), 1, 1, {})
            force_full = True
        else:
            snap = snap.copy()
        now = time.time_ns()
        scan = {}
        for sub, recorded in (("new", snap.new_mtime), ("cur", snap.cur_mtime)):
            m = self._dir_mtime(sub)
            if force_full or m != recorded or (sub == "new" and now - m < _DIRTY_WINDOW_NS):
                scan[sub] = m
        if not scan:
            return snap
        seen: dict[str, tuple[str, str, str]] = {}  # base -> (sub, flags, name)
        for sub in scan:
            try:
                names = os.listdir(self.path / sub)
            except FileNotFoundError:
                names = []
            for name in names:
                if name[0] == "." or " " in name or "\n" in name:
                    continue
                base, sep, info = name.partition(":")
                if sep and info.startswith("2,"):
                    flags = info[2:]
                    if len(flags) > 1 and not _is_sorted_letters(flags):
                        flags = _sort_flags(flags)
                else:
                    flags = ""
                seen[base] = (sub, flags, name)
        changed = False
        modseq = snap.highestmodseq
        letters = _Letters(self.path)
        by_base = {}
        dropped = []
        for uid, e in list(snap.entries.items()):
            if e.sub not in scan:
                by_base[e.base] = uid
                continue
            got = seen.pop(e.base, None)
            if got is None:
                # moved to the other directory (which we did not scan)?
                other = "cur" if e.sub == "new" else "new"
                if other not in scan and os.path.exists(self.path / other):
                    found = self._find(other, e.base)
                    if found is not None:
                        got = (other, *found)
                if got is None:
                    del snap.entries[uid]
                    dropped.append(uid)
                    changed = True
                    continue
            sub, flags, name = got
            if sub != e.sub or flags != e.flags:
                modseq += 1 if flags != e.flags else 0
                ne = e.copy()
                ne.sub, ne.flags = sub, flags
                if flags != e.flags:
                    ne.modseq = modseq
                    ne.flags, ne.kw = self._read_info(letters, sub, name, flags, e.kw, e.flags)
                snap.entries[uid] = ne
                changed = True
            by_base[e.base] = uid
        # Unknown names: new UIDs in delivery order (the names' time stamps;
        # their microseconds are not zero-padded, so not plain string order).
        fresh = sorted((b for b in seen if b not in by_base), key=md.arrival_key)
        if fresh:
            modseq += 1
        for base in fresh:
            sub, flags, name = seen[base]
            fields = {}
            for part in base.split(",")[1:]:
                k, eq, v = part.partition("=")
                if eq:
                    fields[k] = v
            w = fields.get("W")
            size = int(w) if w and w.isdigit() else _wsize(self.path / sub / name, name)
            idate = _name_date(base)
            if idate is None:
                try:
                    idate = int(os.stat(self.path / sub / name).st_mtime)
                except OSError:
                    idate = int(time.time())
            flags, kw = self._read_info(letters, sub, name, flags, frozenset(), "")
            uid = snap.uidnext
            snap.uidnext += 1
            snap.entries[uid] = Entry(uid, modseq, idate, size, sub, flags, kw, base)
            changed = True
        snap.highestmodseq = modseq
        snap.bury(dropped)  # removed by another program (pop3d, mutt, Dovecot): a MODSEQ of their own
        if created:
            # A first index of an existing Maildir: what is in cur/ was seen
            # before (by another program); new/ stays recent.
            snap.first_recent = snap.uidnext
        moved = False
        for sub, m in scan.items():
            if sub == "new":
                moved |= snap.new_mtime != m
                snap.new_mtime = m
            else:
                moved |= snap.cur_mtime != m
                snap.cur_mtime = m
        if changed or force_full or moved:
            try:
                self._write(snap)
            except IndexUnavailable:
                if changed or force_full:
                    raise
                # Only the recorded directory mtimes are stale (say a failed
                # copy was taken back on a full disk): no UID or flag is at
                # stake, so the folder stays usable; the next sync looks again.
            return snap
        return self._cache if self._cache is not None else snap

    def _read_info(
        self, letters: _Letters, sub: str, name: str, flags: str, old_kw, old_flags: str
    ) -> tuple[str, frozenset]:
        """(info letters, keywords) of message file ``sub/name`` found with
        info letters ``flags`` (``old_flags`` before).  When the letters and P
        disagree on $Forwarded (Dovecot keeps it as a keyword letter), the name
        gets P added or taken away, so the flag shows and stays one."""
        if not old_kw and not md.keyword_letters(flags) and not md.keyword_letters(old_flags):
            return flags, frozenset()
        std, kw = letters.read(flags, old_kw, old_flags)
        want = _sort_flags(std + md.keyword_letters(flags))
        if want != flags:
            base = name.partition(":")[0]
            try:
                os.rename(self.path / sub / name, self.path / sub / md.flagged_name(base, want))
                return want, kw
            except OSError:
                pass
        return flags, kw

    def _find(self, sub: str, base: str):
        try:
            for name in os.listdir(self.path / sub):
                if name == base or name.startswith(base + ":"):
                    b, sep, info = name.partition(":")
                    return (_sort_flags(info[2:]) if sep and info.startswith("2,") else "", name)
        except FileNotFoundError:
            pass
        return None

    def _write(self, snap: Snapshot, fsync: bool = True) -> None:
        data = _format(snap)
        tmp = self.path / f".{INDEX_NAME}.tmp{os.getpid()}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.file)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise IndexUnavailable(f"{self.file}: {exc.strerror}", exc.errno) from None
        self._cache_key = None
        self._cache = None
        st = os.stat(self.file)
        self._cache_key = (st.st_ino, st.st_mtime_ns, st.st_size)
        self._cache = snap
        _remember(self.dir, self._cache_key, snap)

    def _mutate(self, fn, fsync: bool = True, undo=None):
        """Run ``fn(snap)`` on a synced copy under the lock, save, return (snap, result).

        When ``fn`` or saving the index fails (a full disk), ``undo()`` runs
        while the lock is still held: files ``fn`` put in place without a
        saved UID must go before another process gives them one.
        """
        with self._lock():
            try:
                snap = self._sync_locked().copy()
                cur_before = self._dir_mtime("cur")
                new_before = self._dir_mtime("new")
                trusted_cur = cur_before == snap.cur_mtime
                trusted_new = new_before == snap.new_mtime
                before = list(snap.entries)
                result = fn(snap)
                snap.bury([u for u in before if u not in snap.entries])  # expunged, or found gone
                # Our own renames moved the directory mtimes; if nothing else had
                # changed them before, the new mtimes describe what we just wrote.
                if trusted_cur:
                    snap.cur_mtime = self._dir_mtime("cur")
                if trusted_new:
                    snap.new_mtime = self._dir_mtime("new")
                self._write(snap, fsync)
            except BaseException:
                if undo is not None:
                    undo()
                raise
            return snap, result

    def add(
        self,
        tmp_file: str | os.PathLike,
        *,
        flags: str = "",
        keywords=(),
        idate: int | None = None,
        size: int | None = None,
        base: str | None = None,
    ) -> tuple[int, int]:
        """Move a complete message file into cur/ and give it the next UID.

        Returns (uidvalidity, uid).  ``base`` (the final base name) defaults
        to the file's own name.
        """
        uidvalidity, uids = self.add_many(
            [{"tmp_file": tmp_file, "flags": flags, "keywords": keywords, "idate": idate, "size": size, "base": base}]
        )
        return uidvalidity, uids[0]

    def add_many(self, messages: list[dict]) -> tuple[int, list[int]]:
        """``add`` for several messages at once (IMAP MULTIAPPEND, RFC 3502): all
        get their UIDs in one save of the index, or none is added (the files go
        back to tmp/ when the save fails).  Each dict holds ``add``'s arguments.
        Returns (uidvalidity, [uid, ...])."""
        placed: list[tuple[Path, Path]] = []

        def undo():
            # The index could not be saved: the messages go back where they came
            # from (the caller removes them), so a failed APPEND leaves nothing.
            for final, tmp_file in placed:
                try:
                    os.rename(final, tmp_file)
                except OSError:
                    pass

        def do(snap):
            letters = _Letters(self.path)
            uids = []
            for m in messages:
                tmp_file = Path(m["tmp_file"])
                base = m.get("base") or tmp_file.name.partition(":")[0]
                keywords = frozenset(m.get("keywords") or ())
                info = letters.info(m.get("flags") or "", keywords)
                final = md.into_cur(tmp_file, self.path, base, info)
                placed.append((final, tmp_file))
                ws = m.get("size")
                if ws is None:
                    ws = _wsize(final, final.name)
                idate = m.get("idate")
                uid = snap.uidnext
                snap.uidnext += 1
                snap.highestmodseq += 1
                snap.entries[uid] = Entry(
                    uid,
                    snap.highestmodseq,
                    int(idate if idate is not None else time.time()),
                    ws,
                    "cur",
                    info,
                    keywords,
                    base,
                )
                uids.append(uid)
            return uids

        snap, uids = self._mutate(do, undo=undo)
        return snap.uidvalidity, uids

    def set_flags(self, changes: dict) -> dict:
        """``changes``: uid -> (maildir flag letters, keyword set).  Returns uid -> new Entry.

        The keyword letters of the names follow the keywords (any lowercase
        letters in the flags given are ignored).

        Messages gone meanwhile are left out of the result.
        """

        def do(snap):
            done = {}
            bump = snap.highestmodseq
            letters = _Letters(self.path)
            for uid, (flags, kw) in changes.items():
                e = snap.entries.get(uid)
                if e is None:
                    continue
                kw = frozenset(kw)
                flags = letters.info(flags, kw)
                if flags == e.flags and kw == e.kw:
                    done[uid] = e
                    continue
                ne = e.copy()
                ne.flags, ne.kw = flags, kw
                if flags != e.flags or e.sub == "new":
                    ne.sub = "cur"
                    if not self._rename_file(snap, uid, e, ne):
                        continue
                bump += 1
                ne.modseq = bump
                snap.entries[uid] = ne
                done[uid] = ne
            snap.highestmodseq = bump
            return done

        return self._mutate(do, fsync=False)[1]

    def _rename_file(self, snap: Snapshot, uid: int, e: Entry, ne: Entry) -> bool:
        """Give message ``uid`` the file name of ``ne``; False (and the entry
        dropped) when another process expunged it meanwhile."""
        try:
            os.rename(self.path / e.relpath(), self.path / ne.relpath())
        except FileNotFoundError:
            del snap.entries[uid]
            return False
        return True

    def to_cur(self, uids) -> dict:
        """Move messages from new/ to cur/ (an IMAP session saw them as \\Recent)."""

        def do(snap):
            done = {}
            for uid in uids:
                e = snap.entries.get(uid)
                if e is None or e.sub != "new":
                    continue
                ne = e.copy()
                ne.sub = "cur"
                if not self._rename_file(snap, uid, e, ne):
                    continue
                snap.entries[uid] = ne
                done[uid] = ne
            return done

        return self._mutate(do, fsync=False)[1]

    def claim_recent(self, upto: int) -> set[int]:
        """A session now sees messages up to UID ``upto``: those still recent
        become its \\Recent ones (returned) and no other session's; the ones
        in new/ move to cur/."""

        def do(snap):
            if not any(uid <= upto and snap.is_recent(e) for uid, e in snap.entries.items()):
                raise _NothingToClaim  # another session was first: no rewrite (each wakes every IDLE)
            done = set()
            for uid, e in list(snap.entries.items()):
                if uid > upto or not snap.is_recent(e):
                    continue
                if e.sub == "new":
                    ne = e.copy()
                    ne.sub = "cur"
                    if not self._rename_file(snap, uid, e, ne):
                        continue
                    snap.entries[uid] = ne
                done.add(uid)
            snap.first_recent = max(snap.first_recent, min(upto + 1, snap.uidnext))
            return done

        try:
            return self._mutate(do, fsync=False)[1]
        except _NothingToClaim:
            return set()

    def expunge(self, uids) -> list[int]:
        """Delete messages; return the UIDs removed."""

        def do(snap):
            gone = []
            for uid in sorted(uids):
                e = snap.entries.pop(uid, None)
                if e is None:
                    continue
                try:
                    os.unlink(self.path / e.relpath())
                except FileNotFoundError:
                    pass
                gone.append(uid)
            return gone  # _mutate gives them their MODSEQ

        return self._mutate(do)[1]

    def copy_into(self, dest: FolderIndex, uids) -> tuple[int, list[tuple[int, int]]]:
        """Hard-link (or copy) messages into ``dest``, keeping flags, keywords and dates.

        Returns (dest uidvalidity, [(source uid, dest uid), ...]).
        """
        snap = self.sync()
        staged = []
        md.ensure_maildir(dest.path, folder=dest.path.name.startswith("."))
        try:
            for uid in uids:
                e = snap.entries.get(uid)
                if e is None:
                    continue
                base = md.copy_name(e.base, e.size)
                tmp = md.stage_copy(self.path / e.relpath(), dest.path, base)
                if tmp is None:
                    continue
                staged.append((uid, e, tmp, base))
        except BaseException:
            for _u, _e, tmp, _b in staged:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise

        placed = []

        def do(dsnap):
            pairs = []
            letters = _Letters(dest.path)  # the target has its own letters
            for uid, e, tmp, base in staged:
                info = letters.info(e.flags, e.kw)
                placed.append(md.into_cur(tmp, dest.path, base, info))
                duid = dsnap.uidnext
                dsnap.uidnext += 1
                dsnap.highestmodseq += 1
                dsnap.entries[duid] = Entry(duid, dsnap.highestmodseq, e.idate, e.size, "cur", info, e.kw, base)
                pairs.append((uid, duid))
            return pairs

        def undo():
            # Not saved in dest's index (a full disk): no copy may stay behind
            # for a later sync to show, since the client was told NO.
            for path in [tmp for _u, _e, tmp, _b in staged] + placed:
                try:
                    os.unlink(path)
                except OSError:
                    pass

        try:
            dsnap, pairs = dest._mutate(do, undo=undo)
        except BaseException:
            undo()  # also when dest's lock could not be had: the staged links go
            raise
        return dsnap.uidvalidity, pairs
