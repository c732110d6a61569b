"""A per-user protocol trace, like Dovecot's rawlog (``rawlog.dir``, ``rawlog.users``).

When a listed user logs in to imapd or pop3d, both directions of the rest
of the session are written, byte for byte, to two files as Dovecot writes
them::

    DIR/USER/PROTO-YYYYMMDD-HHMMSS-PID-N.in    what the client sent
    DIR/USER/PROTO-YYYYMMDD-HHMMSS-PID-N.out   what the server sent

The trace starts after the login: the LOGIN / AUTHENTICATE / PASS line
with the password is never in it (the server's reply to it is).  DIR/USER
is made 0700, the files 0600 with ``O_EXCL|O_NOFOLLOW`` inside a folder
opened with ``O_NOFOLLOW``: no symbolic link is followed from DIR down.

The files are opened in the login's Job; the writes are handed to one
writer thread per process (``queue.SimpleQueue.put`` never blocks the event
loop), which appends them in order; what it has not written yet when the
process ends is written by an ``atexit`` hook.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_queue: queue.SimpleQueue | None = None  # (fd, bytes or None to close), made with the writer thread
_writer: threading.Thread | None = None
_serial = 0


def from_config(cfg, proto: str):
    """A function account -> RawLog or None, or None when no one is traced."""
    directory = cfg.get("rawlog.dir") or ""
    users = {u.lower() for u in cfg.get("rawlog.users") or ()}
    if not directory or not users:
        return None
    path = str(cfg.root / directory)

    def opener(account: str):
        if account.lower() not in users and "*" not in users:
            return None
        try:
            return RawLog.create(path, account, proto)
        except OSError as exc:
            from pymta.lib import log  # noqa: PLC0415 lazy

            log.warning(f"rawlog: {path}/{account}: {exc.strerror or exc}; not traced")
            return None

    return opener


class RawLog:
    def __init__(self, fd_in: int, fd_out: int, name: str) -> None:
        self.fd_in, self.fd_out, self.name = fd_in, fd_out, name
        self.closed = False

    @classmethod
    def create(cls, directory: str, account: str, proto: str) -> RawLog:
        """In a Job: DIR/ACCOUNT/ (made 0700) and the two new files (0600)."""
        global _serial
        if "/" in account or account in ("", ".", ".."):
            raise OSError(0, "not a usable folder name")
        top = os.open(directory, _DIR_FLAGS)
        try:
            try:
                os.mkdir(account, 0o700, dir_fd=top)
            except FileExistsError:
                pass
            user_dir = os.open(account, _DIR_FLAGS, dir_fd=top)
        finally:
            os.close(top)
        try:
            _serial += 1
            base = f"{proto}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{_serial}"
            fd_in = os.open(base + ".in", _FILE_FLAGS, 0o600, dir_fd=user_dir)
            try:
                fd_out = os.open(base + ".out", _FILE_FLAGS, 0o600, dir_fd=user_dir)
            except OSError:
                os.close(fd_in)
                raise
        finally:
            os.close(user_dir)
        return cls(fd_in, fd_out, f"{directory}/{account}/{base}")

    def incoming(self, data: bytes) -> None:
        if data and not self.closed:
            _put(self.fd_in, bytes(data))

    def outgoing(self, data: bytes) -> None:
        if data and not self.closed:
            _put(self.fd_out, bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _put(self.fd_in, None)
            _put(self.fd_out, None)


def _put(fd: int, data: bytes | None) -> None:
    global _queue, _writer
    if _writer is None:
        import atexit  # noqa: PLC0415 lazy: only a traced session pays for the thread
        import queue as queues  # noqa: PLC0415 lazy
        import threading as threads  # noqa: PLC0415 lazy

        _queue = queues.SimpleQueue()
        _writer = threads.Thread(target=_write_all, name="rawlog", daemon=True)
        _writer.start()
        atexit.register(_drain)
    assert _queue is not None
    _queue.put((fd, data))


def _write_all() -> None:
    assert _queue is not None
    while True:
        item = _queue.get()
        if item is None:
            return
        _write(*item)


def _write(fd: int, data: bytes | None) -> None:
    try:
        if data is None:
            os.close(fd)
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # a full disk never takes a session down; the trace is only a help


def _drain() -> None:
    """At exit: let the writer finish what it was given."""
    if _queue is not None and _writer is not None:
        _queue.put(None)
        _writer.join(5)
