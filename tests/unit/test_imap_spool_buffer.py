"""SpoolBuffer, an APPEND literal on its way to its spool file: an abort noticed
on the event loop (the client hung up mid-literal) never waits there, and
never touches the file while a flush Job writes it (jobslots.off_loop)."""

from __future__ import annotations

import threading

from pyimap.core import SpoolBuffer
from pymta.lib import jobslots


class SlowSpool:
    """A MessageSpool whose write waits for ``go``; what happened, in order."""

    def __init__(self, events, go) -> None:
        self.events, self.go = events, go
        self.size = self.wsize = 0

    def write(self, data) -> None:
        self.events.append("write started")
        assert self.go.wait(10)
        self.events.append("write done")

    def abort(self) -> None:
        self.events.append("abort")


def test_an_abort_on_the_loop_waits_for_the_flush_in_a_job_thread(monkeypatch):
    events, go, made = [], threading.Event(), []

    def make():
        made.append(1)
        return SlowSpool(events, go)

    workers = []

    def submit(fn):
        worker = threading.Thread(target=fn)
        workers.append(worker)
        worker.start()

    monkeypatch.setattr(jobslots, "_submit", None)
    monkeypatch.setattr(jobslots, "_loop_thread", None)
    jobslots.serve_jobs(submit)  # this thread is the event loop
    buf = SpoolBuffer(make)
    buf.write(b"x" * 100)
    flush = threading.Thread(target=buf.flush)  # the flush Job
    flush.start()
    while events != ["write started"]:
        threading.Event().wait(0.01)
    buf.abort()  # returns at once: the loop does not wait for the write
    assert events == ["write started"]
    go.set()
    flush.join(10)
    for worker in workers:
        worker.join(10)
    assert events == ["write started", "write done", "abort"]
    buf.flush()  # a flush after the abort makes no file
    assert made == [1]


def test_an_abort_before_any_flush_makes_no_file():
    made = []
    buf = SpoolBuffer(lambda: made.append(1))
    buf.write(b"x")
    buf.abort()  # not on a loop: at once
    buf.flush()
    assert made == []
