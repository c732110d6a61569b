"""The mail queue: the one place that knows its on-disk format.

Layout under the queue directory (see pymail(7))::

    tmp/ID             being written; never read by anyone else (only where
                       the file system has no O_TMPFILE, see QueueWriter)
    new/ID             committed, not yet tried  (the commit point)
    deferred/MIN/ID    waiting for a retry; MIN = retry time // 60
    hold/ID            held by the admin
    corrupt/ID         quarantined: unreadable entries
    state/ID           per-recipient progress, JSON, written by the runner
    wake.sock          datagram socket the runner listens on

A message file is one JSON envelope line, ``\\n``, then the message with LF
line ends.  JSON cannot contain a raw newline, so the envelope can never be
confused with the message (the Exim CVE-2020-28021 class), and addresses
are refused if they hold CR, LF or NUL before they get here.

The file moves between states by ``rename`` and is never rewritten; only
``state/ID`` changes (tmp + fsync + rename), so a crash at any moment leaves
either the old or the new state, never a torn one.  A runner holds
``flock`` on the open message file while it works on it: two runners never
deliver the same entry, and a killed runner's lock vanishes with it.

A first delivery attempt is noted on the message file itself, as the
extended attribute ``user.pymail.attempt``, instead of a state file: most
messages are delivered at the first try, and a state file made and
unlinked per message costs an inode each (see ``mark_attempt``).  A runner
that finds the mark with no state file knows a predecessor died mid-way
and logs any delivery as a possible duplicate.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from _thread import allocate_lock  # a lock without importing threading (inetd start-up)
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pymta.lib.fsutil import fsync_dir
from pymta.lib.jobslots import after_reply

if TYPE_CHECKING:
    from pymta.recipient import EntryState

DIRS = ("tmp", "new", "deferred", "hold", "corrupt", "state")
ENVELOPE_MAX = 4 * 1024 * 1024  # an envelope line longer than this is corrupt


class QueueError(Exception):
    """The queue could not take the message: temporary (disk full, permissions).

    ``errno`` is the OSError's errno when there was one: ENOSPC and EDQUOT
    make smtpd answer 452 4.3.1 instead of 451 4.3.0."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


ATTEMPT_XATTR = "user.pymail.attempt"


def make_queue_id() -> str:
    """Sortable (time first) and unique enough; O_EXCL settles collisions."""
    us = time.time_ns() // 1000
    return f"{us:013X}{int.from_bytes(os.urandom(3), 'big'):06X}"


def is_queue_id(text: str) -> bool:
    return len(text) == 19 and all(c in "0123456789ABCDEF" for c in text)


def _clean_field(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"{what} contains CR, LF or NUL")
    return value


_encoder = None  # json's own C encoder, made at the first use


def compact_json(value) -> str:
    """``json.dumps(value, ensure_ascii=True, separators=(",", ":"))`` without
    importing json (1.2 ms of every inetd session): the C encoder json.dumps
    itself uses, from ``_json`` (2 us for an envelope, against 11 us for the
    same in Python).  NaN and infinities are refused (ValueError), anything
    that is not plain JSON too (TypeError)."""
    global _encoder
    if _encoder is None:
        from _json import encode_basestring_ascii, make_encoder  # noqa: PLC0415 lazy

        # markers None: no cycle check (our values are plain, and one shared dict would race between threads)
        _encoder = make_encoder(None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, False)
    return "".join(_encoder(value, 0))


def _not_json(value):
    raise TypeError(f"not JSON: {type(value).__name__}")


class Envelope:
    """Sender, recipients and facts about the submission (``meta``)."""

    def __init__(
        self, sender: str, recipients: list[str], queue_id: str = "", arrival: float = 0.0, meta: dict | None = None
    ) -> None:
        self.sender = sender
        self.recipients = recipients
        self.queue_id = queue_id
        self.arrival = arrival
        self.meta = meta if meta is not None else {}  # client, helo, auth user, service, uid

    def to_line(self) -> bytes:
        _clean_field(self.sender, "sender")
        for rcpt in self.recipients:
            _clean_field(rcpt, "recipient")
        record = {
            "v": 1,
            "id": self.queue_id,
            "arrival": self.arrival,
            "sender": self.sender,
            "recipients": self.recipients,
            "meta": self.meta,
        }
        return compact_json(record).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Envelope:
        import json  # noqa: PLC0415 lazy

        record = json.loads(line)
        if not isinstance(record, dict) or record.get("v") != 1:
            raise ValueError("unknown envelope version")
        env = cls(
            sender=record["sender"],
            recipients=list(record["recipients"]),
            queue_id=record["id"],
            arrival=float(record["arrival"]),
            meta=record.get("meta") or {},
        )
        if not isinstance(env.sender, str) or not all(isinstance(r, str) for r in env.recipients):
            raise ValueError("bad envelope field types")
        return env


class Queue:
    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        self._wake = None  # datagram socket, made on first wake()
        self._wake_path = str(self.path / "wake.sock")
        # Plain strings for the commit path: it runs in many threads at once,
        # and Python work between its system calls (pathlib) is paid in GIL
        # hand-overs by every thread.
        self._tmp_dir = str(self.path / "tmp")
        self._new_dir = str(self.path / "new")
        self._state_dir = str(self.path / "state")
        # Whether message files are written without a name (O_TMPFILE) and
        # linked into new/ at the commit; None: not tried yet.
        self._anonymous: bool | None = None if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd") else False
        self._new_fd = -1  # new/ open, for the commits' links and fsyncs (opened at the first)
        self._new_fd_lock = allocate_lock()

    def __del__(self) -> None:
        fd = getattr(self, "_new_fd", -1)  # absent if __init__ failed
        if fd >= 0:
            os.close(fd)

    def _new_dir_fd(self) -> int:
        """new/ as a descriptor, kept: a commit links into it and fsyncs it
        without a path lookup (a fork's child shares it; same directory)."""
        if self._new_fd < 0:
            with self._new_fd_lock:
                if self._new_fd < 0:
                    self._new_fd = os.open(self._new_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._new_fd

    # -- setup ---------------------------------------------------------------
    def create(self) -> None:
        for sub in DIRS:
            os.makedirs(self.path / sub, mode=0o750, exist_ok=True)

    def writable(self) -> bool:
        """Whether this process may queue directly (else sendmail uses the maildrop)."""
        return all(os.access(d, os.W_OK | os.X_OK) for d in (self._tmp_dir, self._new_dir))

    @property
    def wake_socket(self) -> Path:
        return self.path / "wake.sock"

    # -- the door: writing -----------------------------------------------------
    def writer(self, sender: str, recipients: list[str], meta: dict | None = None, queue_id: str = "") -> QueueWriter:
        """``queue_id``: one chosen earlier (``make_queue_id``), e.g. told to a milter at MAIL."""
        return QueueWriter(self, sender, recipients, meta or {}, queue_id)

    def enqueue(self, sender: str, recipients: list[str], chunks, meta: dict | None = None) -> str:
        """Queue a whole message in one call; returns the queue ID."""
        writer = self.writer(sender, recipients, meta)
        try:
            if isinstance(chunks, (bytes, bytearray)):
                chunks = (chunks,)
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def sync_new(self) -> None:
        """fsync new/: a rename or link into it is durable after this."""
        os.fsync(self._new_dir_fd())

    def wake(self, queue_id: str = "") -> bool:
        """Tell a running qrunner there is work (about ``queue_id``, or
        anything); False when no runner listens.

        One datagram socket per Queue object, kept: a listening smtpd sends
        one of these per message (sendto on one socket is thread-safe).
        """
        sock = self._wake
        try:
            if sock is None:
                import _socket  # noqa: PLC0415 lazy (not socket.py: an inetd smtpd pays ~2.5 ms for it)

                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._wake = sock
            sock.sendto(queue_id.encode() or b"*", self._wake_path)
        except BlockingIOError:
            return True  # a runner listens; its socket queue is full, and it will list new/ soon
        except OSError:
            return False
        return True

    def listen(self):
        """Bind ``wake.sock`` for the runner: a non-blocking datagram socket (mode 0660)."""
        import socket  # noqa: PLC0415 lazy

        try:
            os.unlink(self._wake_path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._wake_path)
        os.chmod(self._wake_path, 0o660)
        sock.setblocking(False)
        return sock

    def stop_listening(self, sock) -> None:
        sock.close()
        try:
            os.unlink(self._wake_path)
        except OSError:
            pass

    # -- the runner's side --------------------------------------------------------
    def path_for(self, queue_id: str, where: str = "new", when: float | None = None) -> Path:
        """Where entry ``queue_id`` is (or goes) in ``where``: new, hold,
        corrupt, or deferred (then ``when`` is its retry time)."""
        if where == "deferred":
            return self.path / "deferred" / _bucket(time.time() if when is None else when) / queue_id
        return self.path / where / queue_id

    def due_paths(self, now: float | None = None) -> list[Path]:
        """Entries to try now: all of new/, then the deferred ones whose time has come."""
        paths = [self.path / "new" / qid for qid in self.new_ids()]
        paths += [self.path / "deferred" / bucket / qid for bucket, qid in self.due_ids(now)]
        return paths

    def next_due(self, now: float) -> float:
        """When the earliest deferred bucket falls due (an hour away when none waits)."""
        buckets = [b for b in _listdir(self.path / "deferred") if b.isdigit()]
        if not buckets:
            return now + 3600
        # At least a second away: a due entry still being worked on (or locked
        # by another runner) must not turn the wait into a busy loop.
        return max(now + 1.0, int(min(buckets)) * 60 + 60)

    def clean_tmp(self, max_age: float = 86400.0) -> None:
        """Remove files in tmp/ left by killed writers."""
        tmp = self.path / "tmp"
        now = time.time()
        for name in _listdir(tmp):
            try:
                if now - os.lstat(tmp / name).st_mtime > max_age:
                    os.unlink(tmp / name)
            except OSError:
                pass

    def new_ids(self) -> list[str]:
        return sorted(n for n in _listdir(self.path / "new") if is_queue_id(n))

    def due_ids(self, now: float | None = None) -> list[tuple[str, str]]:
        """(bucket, id) of deferred entries whose retry time has come.

        Only the buckets at or before ``now`` are listed, so the cost is
        driven by what is due, not by the size of the deferred queue.
        """
        limit = int((time.time() if now is None else now) // 60)
        out = []
        for bucket in sorted(_listdir(self.path / "deferred")):
            if not bucket.isdigit():
                continue
            if int(bucket) > limit:
                break
            names = _listdir(self.path / "deferred" / bucket)
            if not names:
                _rmdir_quietly(self.path / "deferred" / bucket)
            out.extend((bucket, n) for n in sorted(names) if is_queue_id(n))
        return out

    def locate(self, queue_id: str) -> Path | None:
        """Where entry ``queue_id`` is now (new, deferred or hold), or None."""
        if not is_queue_id(queue_id):
            return None
        for sub in ("new", "hold"):
            path = self.path / sub / queue_id
            if path.exists():
                return path
        for bucket in _listdir(self.path / "deferred"):
            path = self.path / "deferred" / bucket / queue_id
            if path.exists():
                return path
        return None

    def all_entries(self) -> list[tuple[str, Path]]:
        """(state, path) of every entry: for mailq and the queue tools."""
        out = []
        for sub in ("new", "hold"):
            out.extend((sub, self.path / sub / n) for n in _listdir(self.path / sub) if is_queue_id(n))
        for bucket in _listdir(self.path / "deferred"):
            d = self.path / "deferred" / bucket
            out.extend(("deferred", d / n) for n in _listdir(d) if is_queue_id(n))
        out.sort(key=lambda item: item[1].name)
        return out

    def census(self) -> dict[str, tuple[int, float | None]]:
        """state -> (entries, arrival time of the oldest or None) for new,
        deferred and hold: the metrics' gauges, from directory listings only
        (the queue ID starts with its arrival time in microseconds)."""
        out: dict[str, tuple[int, float | None]] = {}
        for state in ("new", "deferred", "hold"):
            if state == "deferred":
                d = self.path / "deferred"
                ids = [n for bucket in _listdir(d) for n in _listdir(d / bucket) if is_queue_id(n)]
            else:
                ids = [n for n in _listdir(self.path / state) if is_queue_id(n)]
            out[state] = (len(ids), int(min(ids)[:13], 16) / 1e6 if ids else None)
        return out

    def lock_entry(self, queue_id: str, wait: float = 5.0) -> tuple[Entry | None, str]:
        """Open and lock entry ``queue_id``, waiting up to ``wait`` seconds
        for a runner to finish with it: (entry, "") or (None, why)."""
        deadline = time.time() + wait
        while True:
            path = self.locate(queue_id)
            if path is None:
                return None, "not found"
            entry = self.open_entry(path)
            if entry is not None:
                return entry, ""
            if time.time() > deadline:
                return None, "busy (being delivered); try again"
            time.sleep(0.05)

    def flush(self) -> int:
        """Every deferred entry is due now (held ones stay held); returns how many.

        Each is moved under its lock, so none is pulled from under a runner
        delivering it (one busy for more than a second is left alone: that
        runner is trying it right now).  Does not wake the runner."""
        count = 0
        for where, path in self.all_entries():
            if where != "deferred":
                continue
            try:
                entry, _why = self.lock_entry(path.name, wait=1.0)
            except CorruptEntry:
                try:
                    self.move(path.name, "new")  # the runner quarantines it on its next pass
                except OSError:
                    pass
                continue
            if entry is None:
                continue
            with entry:
                if entry.where != "new":
                    self.move(path.name, "new")
                count += 1
        return count

    def open_entry(self, path: Path, lock: bool = True) -> Entry | None:
        """Open and (by default) lock an entry; None if gone or locked by another runner."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        fh = os.fdopen(fd, "rb")
        if lock:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return None
            # It may have moved or gone while we waited for the lock.
            try:
                if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                    fh.close()
                    return None
            except FileNotFoundError:
                fh.close()
                return None
        line = fh.readline(ENVELOPE_MAX)
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no envelope line")
            envelope = Envelope.from_line(line)
        except (ValueError, KeyError, TypeError) as exc:
            fh.close()
            raise CorruptEntry(path, str(exc)) from None
        return Entry(self, path, fh, envelope, len(line))

    def quarantine(self, path: Path) -> Path:
        target = self.path / "corrupt" / path.name
        os.makedirs(target.parent, exist_ok=True)
        os.rename(path, target)
        return target

    # -- per-recipient state -------------------------------------------------------
    def state_path(self, queue_id: str) -> Path:
        return self.path / "state" / queue_id

    def read_state(self, queue_id: str) -> dict | None:
        return self._read_state(queue_id)[0]

    def _read_state(self, queue_id: str) -> tuple[dict | None, bool]:
        """(``state/ID`` as read, or None; whether the file is there at all)."""
        # The runner asks for every entry, and most have no state file: a
        # plain string path and os.open make that "no" cheap.
        try:
            fd = os.open(f"{self._state_dir}/{queue_id}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, False
        except OSError:
            return None, True
        import json  # noqa: PLC0415 lazy

        try:
            with open(fd, "rb") as fh:
                state = json.load(fh)
            return (state if isinstance(state, dict) else None), True
        except (ValueError, OSError):
            return None, True  # a torn state cannot happen (rename); an unreadable one restarts from the envelope

    def load_state(self, queue_id: str) -> EntryState | None:
        """``state/ID`` as typed records (pymta.recipient), or None."""
        return self.find_state(queue_id)[0]

    def find_state(self, queue_id: str) -> tuple[EntryState | None, bool]:
        """load_state, and whether a state file is there at all (even an unreadable one)."""
        from pymta.recipient import EntryState  # noqa: PLC0415 lazy

        raw, present = self._read_state(queue_id)
        if raw is None:
            return None, present
        try:
            return EntryState.from_dict(raw), True
        except (ValueError, KeyError, TypeError):
            return None, True  # unreadable: restart from the envelope

    def save_state(self, queue_id: str, state: EntryState, durable: bool = True) -> None:
        self.write_state(queue_id, state.to_dict(), durable)

    def write_state(self, queue_id: str, state: dict, durable: bool = True) -> None:
        """Replace ``state/ID`` atomically.  ``durable=False`` skips the fsyncs:
        the new state survives a killed process (it is in the page cache) but
        maybe not a power cut -- enough for the "attempting" marker, whose
        loss can only make a repeated delivery go unmarked."""
        path = self.state_path(queue_id)
        tmp = self.path / "tmp" / f"{queue_id}.state.{os.getpid()}"
        import json  # noqa: PLC0415 lazy

        data = json.dumps(state, ensure_ascii=True, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if durable:
            fsync_dir(path.parent)

    def mark_attempt(self, entry: Entry) -> bool:
        """Note on the entry itself that a first delivery attempt has begun.

        An extended attribute, not a state file: a state file is one more
        inode made and unlinked per message, and on ext4 a stream of freshly
        unlinked inodes makes every file creation slower (the allocator
        steps over recently deleted inodes).  False where the file system
        has no user xattrs; the caller then writes the state file."""
        try:
            os.setxattr(entry.fh.fileno(), ATTEMPT_XATTR, b"1")
            return True
        except (OSError, AttributeError):
            return False

    def attempted(self, entry: Entry) -> bool:
        """Whether mark_attempt() was done on this entry (by a runner that then died)."""
        try:
            os.getxattr(entry.fh.fileno(), ATTEMPT_XATTR)
            return True
        except (OSError, AttributeError):
            return False

    def remove(self, entry: Entry, state: bool = True) -> None:
        """Delivery finished for every recipient: the entry goes away, and its
        state file unless the caller knows there is none (``state=False``).

        No directory fsync: if a power cut undoes the unlink, the entry comes
        back and is delivered again -- a duplicate, never a loss."""
        os.unlink(entry.path)
        if state:
            try:
                os.unlink(f"{self._state_dir}/{entry.envelope.queue_id}")
            except FileNotFoundError:
                pass

    def defer(self, entry: Entry, when: float) -> Path:
        target = self.path_for(entry.path.name, "deferred", when)
        target_dir = target.parent
        os.makedirs(target_dir, exist_ok=True)
        if target != entry.path:
            os.rename(entry.path, target)
            fsync_dir(target_dir)
            entry.path = target
        return target

    def move(self, queue_id: str, to: str, when: float | None = None) -> bool:
        """Admin moves: 'hold', 'new' (release / flush). False if not found."""
        path = self.locate(queue_id)
        if path is None:
            return False
        target = self.path / to / queue_id
        os.makedirs(target.parent, exist_ok=True)
        os.rename(path, target)
        return True


class CorruptEntry(Exception):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Entry:
    """An open, locked queue entry.  ``message_chunks()`` streams the message."""

    def __init__(self, queue: Queue, path: Path, fh, envelope: Envelope, offset: int) -> None:
        self.queue = queue
        self.path = path
        self.fh = fh
        self.envelope = envelope
        self.offset = offset

    @property
    def where(self) -> str:
        """ "new", "hold" or "deferred"."""
        name = self.path.parent.name
        return name if name in ("new", "hold") else "deferred"

    @property
    def size(self) -> int:
        return os.fstat(self.fh.fileno()).st_size - self.offset

    def message_chunks(self, chunk_size: int = 1 << 16):
        fd = self.fh.fileno()
        pos = self.offset
        while True:
            chunk = os.pread(fd, chunk_size, pos)
            if not chunk:
                return
            pos += len(chunk)
            yield chunk

    def read_message(self) -> bytes:
        return b"".join(self.message_chunks())

    def close(self) -> None:
        self.fh.close()  # releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QueueWriter:
    """Streams one message into a file; ``commit()`` makes it durable.

    The file has no name while it is written (``O_TMPFILE`` in ``tmp/``);
    ``commit`` fsyncs it, links it into ``new/`` (``linkat`` through
    ``/proc/self/fd``, which fails rather than replace a file) and fsyncs
    ``new/``, and only then may a 250 be sent.  A file that was never
    linked vanishes with its descriptor, even in a crash: nothing is left to
    clean up.  Readers see what a rename gives them, a whole file appearing
    in ``new/``, at one directory update and one inode fewer per message
    than ``tmp/ID`` plus ``rename`` (measured: about 20 us of CPU and 50 us
    of wall time per commit).  Where the file system has no O_TMPFILE (and
    without ``/proc``), the file is ``tmp/ID`` and is renamed into ``new/``.
    Any failure removes the partial file and raises QueueError.

    A listening smtpd runs ``commit`` in a worker thread, and a client that
    hangs up meanwhile makes the event loop call ``abort``: the two must
    never both close the descriptor (a second close could hit a number
    another session's file has just been given -- its message would be
    written into ours).  So ``commit`` holds a lock, and ``abort`` during a
    commit does nothing: the commit finishes (the client may send the
    message again, as after any lost answer) or cleans up after itself.

    Milters (``pymta.milters``) may change the envelope after the message
    has been received: ``revise`` replaces it as long as no message byte was
    written, and may send the entry to ``hold/`` instead of ``new/``
    (quarantine, its reason in ``meta["hold_reason"]``), so the changes
    are in the entry from its commit on, written once.
    """

    def __init__(self, queue: Queue, sender: str, recipients: list[str], meta: dict, queue_id: str = "") -> None:
        self.queue = queue
        self.closed = False
        self.fd = -1
        self._created = False  # the file exists (named or not): revise() is too late
        self._named = False  # tmp/ID exists: abort() must remove it (also after its fd is closed)
        self._written = False  # a message byte came after the envelope: revise() is too late
        self.queue_id = queue_id or make_queue_id()
        self.tmp = f"{queue._tmp_dir}/{self.queue_id}"
        self.final = f"{queue._new_dir}/{self.queue_id}"
        self.envelope = Envelope(sender, list(recipients), self.queue_id, time.time(), meta)
        self._committing = allocate_lock()
        # The file is created on the first flush, usually inside commit(): in
        # smtpd that runs in a worker thread, so no session waits on a file
        # creation (slow on some file systems) on the event loop.
        self._buf = bytearray()
        try:
            self._buf += self.envelope.to_line()
        except ValueError as exc:
            self.closed = True
            raise QueueError(str(exc)) from None

    def _open(self) -> None:
        queue = self.queue
        try:
            if queue._anonymous is not False:
                try:
                    self.fd = os.open(queue._tmp_dir, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o640)
                    queue._anonymous = True
                    self._created = True
                    return
                except OSError as exc:
                    # EOPNOTSUPP: this file system has none; EISDIR, EINVAL: nor has the kernel
                    if queue._anonymous or exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                        raise
                    queue._anonymous = False
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            # FileExistsError too: the ID is already promised to the client
            # (Received: header), so a clash is a temporary failure, not a rename.
            self.closed = True
            raise QueueError(f"cannot create queue file: {exc.strerror}", exc.errno) from None
        self._created = self._named = True

    def write(self, data: bytes) -> None:
        self._written = True
        self._buf += data
        if len(self._buf) >= 1 << 16:
            self._flush()

    def revise(self, sender: str, recipients: list[str], meta: dict, hold: bool = False) -> None:
        """Replace the envelope before any of the message is written; ``hold``:
        commit into ``hold/`` (the runner leaves it until released)."""
        if self._written or self._created or self.closed:
            raise QueueError("envelope revised after the message was written")
        env = Envelope(sender, list(recipients), self.queue_id, self.envelope.arrival, meta)
        try:
            line = env.to_line()
        except ValueError as exc:
            raise QueueError(str(exc)) from None
        self.envelope = env
        self._buf = bytearray(line)
        if hold:
            self.final = f"{self.queue.path}/hold/{self.queue_id}"

    def _flush(self) -> None:
        if self.fd < 0:
            self._open()
        view = memoryview(self._buf)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            view.release()
            self._discard()
            raise QueueError(f"cannot write queue file: {exc.strerror}", exc.errno) from None
        view.release()
        self._buf.clear()

    def commit(self) -> str:
        with self._committing:
            if self.closed:
                raise QueueError("queue file already closed")
            try:
                self._flush()
                fd, self.fd = self.fd, -1
                try:
                    os.fsync(fd)
                    if not self._named:
                        self._link(fd)
                finally:
                    os.close(fd)
                if self._named:
                    os.rename(self.tmp, self.final)
                if self.final.startswith(self.queue._new_dir + "/"):
                    self.queue.sync_new()
                else:
                    fsync_dir(os.path.dirname(self.final))
            except QueueError:
                raise
            except OSError as exc:
                self._discard()
                raise QueueError(f"cannot commit queue file: {exc.strerror}", exc.errno) from None
            self.closed = True
        after_reply(partial(self.queue.wake, self.queue_id))  # the runner hears of it after the 250 is on its way
        return self.queue_id

    def _link(self, fd: int) -> None:
        """Give the unnamed file its name in new/ (or hold/).  Never replaces
        a file: EEXIST, an ID clash, is a temporary failure.  The source is
        /proc/self/fd/N, read when called (a forked child links its own fd),
        and a destination directory descriptor makes Python call linkat
        with AT_SYMLINK_FOLLOW rather than link(), which would not follow."""
        source = f"/proc/self/fd/{fd}"
        directory, name = self.final.rsplit("/", 1)
        if directory == self.queue._new_dir:
            os.link(source, name, dst_dir_fd=self.queue._new_dir_fd(), follow_symlinks=True)
            return
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(source, name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        """Throw the message away -- unless a commit is running in another thread."""
        if not self._committing.acquire(blocking=False):
            return
        try:
            self._discard()
        finally:
            self._committing.release()

    def _discard(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buf.clear()
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self._named:  # a failed rename in commit() leaves it closed but present
            self._named = False
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def _bucket(when: float) -> str:
    """deferred/MIN: the retry time in whole minutes."""
    return f"{int(when // 60):010d}"


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _rmdir_quietly(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
