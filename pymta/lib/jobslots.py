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
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_slots: threading.Semaphore | None = None
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
