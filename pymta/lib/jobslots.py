"""How many jobs of a listening daemon run Python at once.

A listening daemon runs its slow work (disk, locks, password hashes) in a
pool of threads so that the event loop never waits.  But a job that runs
Python holds the interpreter lock, and with many such jobs at once every
thread, the event loop first, waits its turn for each of them: eight IMAP
clients fetching at once served a third fewer sessions than when the same
work ran on the loop.  So at most ``limit(n)`` jobs run at once; the pool
stays large, because a job that *waits* (for another process's index lock)
gives its slot up meanwhile (``waiting()``), and a held lock never stalls
the jobs of other users.  Without ``limit`` (the inetd path, the tools)
nothing is counted.

A job may also leave work its client need not wait for (a log line, a
counter, a wake-up for the queue runner): ``after_reply(fn)`` inside a job
that the driver started with ``collect_after`` runs ``fn`` once the job's
result is on its way to the event loop, so the answer goes out first
(smtpd's log line, counters and runner wake-up after a queue commit: 4-9 %
more messages a second at one session, in alternating A/B rounds).
Anywhere else ``fn`` runs at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_slots: threading.Semaphore | None = None
_loop_thread: int | None = None  # the event loop's thread, and how to hand work
_submit = None  # to the job threads (serve_jobs; None under inetd)
_local = threading.local()


def limit(count: int) -> None:
    """At most ``count`` jobs run at once in this process (0: no limit)."""
    global _slots
    _slots = threading.BoundedSemaphore(count) if count > 0 else None


def run(fn):
    """``fn()`` in a job thread, in one of the slots."""
    slots = _slots
    if slots is None:
        return fn()
    slots.acquire()
    _local.slots = slots
    try:
        return fn()
    finally:  # waiting() has taken the slot back by now, even on an exception
        _local.slots = None
        slots.release()


@contextmanager
def waiting():
    """Around a wait that needs no Python (a lock another process holds): the
    slot goes to another job meanwhile, and is taken back before going on."""
    slots = getattr(_local, "slots", None)
    if slots is None:
        yield
        return
    _local.slots = None
    slots.release()
    try:
        yield
    finally:
        slots.acquire()
        _local.slots = slots


def after_reply(fn) -> None:
    """``fn()`` after the current job has handed its result over, or now (outside one)."""
    after = getattr(_local, "after", None)
    if after is None:
        fn()
    else:
        after.append(fn)


def collect_after() -> list:
    """In a job thread, before the job: what ``after_reply`` leaves goes in this list."""
    after: list = []
    _local.after = after
    return after


def run_after(after: list) -> None:
    """In the job thread, once the result is handed over: the work left for
    later, each piece on its own (they never raise; one that does is logged)."""
    _local.after = None
    for fn in after:
        try:
            fn()
        except Exception as exc:  # a bug in a log line must not kill the pool thread
            from pymta.lib import log  # noqa: PLC0415 lazy (never, normally)

            log.error(f"after-reply work failed: {exc!r}")


def serve_jobs(submit) -> None:
    """Called by the asyncio driver on its event loop's thread: ``submit(fn)``
    runs ``fn`` in one of its job threads (for ``off_loop``)."""
    global _loop_thread, _submit
    _loop_thread, _submit = threading.get_ident(), submit


def threaded() -> bool:
    """Whether jobs run in threads beside an event loop (a listening daemon):
    under inetd they run inline, one session a process, with no loop to keep free."""
    return _submit is not None


def off_loop(fn) -> None:
    """``fn()`` in a job thread when called on a listening daemon's event loop
    -- clean-up the loop must not wait for, such as closing and removing an
    abandoned spool file --, and at once anywhere else (in a job, under inetd,
    or once the pool has shut down)."""
    submit = _submit
    if submit is not None and threading.get_ident() == _loop_thread:
        try:
            submit(fn)
            return
        except RuntimeError:  # the pool is shut down: the daemon is stopping
            pass
    fn()
