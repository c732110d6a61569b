"""Event counters shared by every pymail process: ``ROOT/run/metrics.log``.

Daemons run as a fresh Python per connection (inetd), as asyncio processes
(possibly forked workers) and as the queue runner, so a counter kept in
memory would die with its process.  Each event is instead one short line
appended to the log, ``name{label="v",...}\\n`` (one line = +1)::

    open(O_WRONLY|O_APPEND|O_CLOEXEC|O_NOFOLLOW); flock(LOCK_SH); write; close

A write of a line, or of the few lines of ``count_all`` (< PIPE_BUF), with
O_APPEND lands whole at the end.  The
shared lock is there for compaction: ``compact`` takes it exclusively, adds
the log's lines to ``ROOT/run/metrics.base`` (``name{labels} N`` lines,
written to a temporary file and renamed), then truncates the log, so no line
is lost or counted twice by a writer that opened the log before or during a
compaction (it writes after the truncation, at the new end).  A crash between
the rename and the truncation counts that batch twice; counters are not
precious, and Prometheus takes a counter that jumps.

Nothing here may break a session: a failed write (no ``run/``, a full disk,
EACCES) is counted in ``lost`` and forgotten.  Only ``os`` and ``fcntl`` are
used (both loaded by every daemon already): the inetd path pays no import.
"""

from __future__ import annotations

import fcntl
import os
from _thread import allocate_lock

LOG = "metrics.log"
BASE = "metrics.base"
COMPACT_SIZE = 256 * 1024  # a log longer than this is compacted by the next reader or runner pass

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
_run_dir: str | None = None
lost = 0  # events that could not be written, in this process
# Events counted on an event loop, where no file is touched: they go out with
# this process's next write (``count``, ``count_all``: a queued message's
# counter carries its session's along) or with ``flush``, which a listening
# daemon runs in a job within a second.  A crash loses at most those.
_later: list[bytes] = []
_later_lock = allocate_lock()
_later_hook = None  # a listening daemon's "flush soon" (any thread); None: count_later writes at once


def setup(root) -> None:
    """Count this process's events under ``ROOT/run`` (a daemon's start-up)."""
    global _run_dir
    _run_dir = os.path.join(str(root), "run")


def escape(value: str) -> str:
    """A label value as the text format writes it: our values are names, but
    a --service could be anything, so escape what the format escapes."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def line(name: str, labels: dict[str, str]) -> bytes:
    """``name{k="v",...}`` as written to the log and the base."""
    if not labels:
        return name.encode()
    inner = ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items())
    return f"{name}{{{inner}}}".encode("utf-8", "replace")


def count(name: str, amount: int = 1, **labels: str) -> None:
    """One event: +``amount`` on ``name{labels}`` (a line of its own; `` N``
    after it when the amount is not 1, say milliseconds).  Never raises."""
    if _run_dir is not None:
        _append(_event(name, amount, labels))


def count_all(events) -> None:
    """Several events, ``(name, amount, labels)`` each, in one write (one
    open, lock and close instead of one per event).  Never raises."""
    if _run_dir is not None:
        _append(b"".join(_event(name, amount, labels) for name, amount, labels in events))


def count_later(name: str, **labels: str) -> None:
    """One event, counted where no file may be written (a listening daemon's
    event loop): it goes out with the next write of this process or a flush
    soon after (see ``_later``).  Outside a listening daemon it is written now."""
    if _run_dir is None:
        return
    line = _event(name, 1, labels)
    hook = _later_hook
    if hook is None:
        _append(line)
        return
    with _later_lock:
        first = not _later
        _later.append(line)
    if first:
        hook()


def defer_with(hook) -> None:
    """A listening daemon's start: ``count_later`` keeps events, and calls
    ``hook()`` (from any thread) when the first one waits; None: back to writing at once."""
    global _later_hook
    _later_hook = hook


def pending() -> bool:
    """Whether ``count_later`` events wait for a write."""
    return bool(_later)


def flush() -> None:
    """Write the ``count_later`` events now (in a job, or at the end of a daemon).  Never raises."""
    if _run_dir is not None and _later:
        _append(b"")


def _take_later() -> bytes:
    with _later_lock:
        data = b"".join(_later)
        _later.clear()
    return data


if hasattr(os, "register_at_fork"):  # a forked worker must not write its parent's events again
    os.register_at_fork(after_in_child=_later.clear)


def _event(name: str, amount: int, labels: dict) -> bytes:
    return line(name, labels) + (b"\n" if amount == 1 else b" %d\n" % amount)


def _append(data: bytes) -> None:
    global lost
    if _later:
        data = _take_later() + data
        if not data:
            return
    path = os.path.join(_run_dir, LOG)  # type: ignore[arg-type]  # callers checked it
    try:
        try:
            fd = os.open(path, _FLAGS)
        except FileNotFoundError:
            fd = _create(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, data)
        finally:
            os.close(fd)  # releases the lock
    except Exception:
        lost += 1


def _create(path: str) -> int:
    """The log's first writer makes it 0600, owned by run/'s owner (a root
    process, such as pymail stats, must not leave it unwritable to daemon_user)."""
    try:
        fd = os.open(path, _FLAGS | os.O_CREAT, 0o600)
    except FileNotFoundError:  # no run/ yet (pymail init makes it 0700, as here)
        os.mkdir(os.path.dirname(path), 0o700)
        fd = os.open(path, _FLAGS | os.O_CREAT, 0o600)
    if os.geteuid() == 0:
        try:
            st = os.stat(os.path.dirname(path))
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            pass
    return fd


# -- reading and compaction (pymail stats, the listener, the queue runner) -------------------


def _add_lines(counts: dict[str, int], data: bytes) -> None:
    """Count the complete lines of a log (a torn last line of a failed write is skipped)."""
    end = data.rfind(b"\n")
    for raw in data[: end + 1].split(b"\n"):
        if raw:
            key, amount = raw, 1
            head, space, tail = raw.rpartition(b" ")
            if space and tail.isdigit() and (head.endswith(b"}") or b"{" not in head):
                key, amount = head, int(tail)  # an amount after the name (labels never end in a bare number)
            text = key.decode("utf-8", "replace")
            counts[text] = counts.get(text, 0) + amount


def _read_base(run_dir: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with open(os.path.join(run_dir, BASE), "rb") as fh:
            for raw in fh.read().decode("utf-8", "replace").splitlines():
                key, _, value = raw.rpartition(" ")
                if key and value.isdigit():
                    counts[key] = counts.get(key, 0) + int(value)
    except OSError:
        pass
    return counts


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def totals(root, compact_over: int | None = COMPACT_SIZE) -> dict[str, int]:
    """Every counter, ``'name{labels}' -> value``: the base plus the log's lines,
    read under the shared lock (a compaction is never seen half done).  A log
    larger than ``compact_over`` bytes is compacted first."""
    run_dir = os.path.join(str(root), "run")
    if compact_over is not None:
        try:
            if os.stat(os.path.join(run_dir, LOG)).st_size > compact_over:
                compact(root)
        except OSError:
            pass
    try:
        fd = os.open(os.path.join(run_dir, LOG), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return _read_base(run_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        counts = _read_base(run_dir)
        _add_lines(counts, _read_all(fd))
    finally:
        os.close(fd)
    return counts


def compact(root) -> int:
    """Fold the log into the base and empty it; the lines folded (0 with no log).
    Raises OSError when the base cannot be written (the log is left as it was)."""
    run_dir = os.path.join(str(root), "run")
    try:
        fd = os.open(os.path.join(run_dir, LOG), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for writers that hold the shared lock
        data = _read_all(fd)
        if not data:
            return 0
        counts = _read_base(run_dir)
        fresh: dict[str, int] = {}
        _add_lines(fresh, data)
        for key, value in fresh.items():
            counts[key] = counts.get(key, 0) + value
        _write_base(run_dir, counts)
        os.ftruncate(fd, 0)
        return sum(fresh.values())
    finally:
        os.close(fd)


def _write_base(run_dir: str, counts: dict[str, int]) -> None:
    path = os.path.join(run_dir, BASE)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.geteuid() == 0:
            st = os.stat(run_dir)
            os.fchown(fd, st.st_uid, st.st_gid)
        text = "".join(f"{key} {value}\n" for key, value in sorted(counts.items()))
        os.write(fd, text.encode("utf-8"))
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def compact_if_big(root, limit: int = COMPACT_SIZE) -> None:
    """The queue runner's periodic bound on the log; never raises."""
    try:
        if os.stat(os.path.join(str(root), "run", LOG)).st_size > limit:
            compact(root)
    except OSError:
        pass
