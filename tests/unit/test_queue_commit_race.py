"""A client that hangs up while smtpd commits its message: the event loop
aborts the writer while a worker thread commits it.  The crash harness
found the old race: both closed the descriptor, the second close hit a
number another session's file had just been given, and a message was
committed empty (EBADF and "queue file already closed" in the log)."""

from __future__ import annotations

import os
import random
import threading

from pymta.queue import Queue, QueueError


def test_abort_during_commit_never_commits_a_torn_file(tmp_path):
    queue = Queue(tmp_path / "queue")
    queue.create()
    body = b"x" * 200_000 + b"\n"
    rng = random.Random(7)
    committed, errors = [], []
    stop = threading.Event()

    def churn():  # other sessions: files opened and closed all the time, so numbers are reused
        while not stop.is_set():
            try:
                queue.enqueue("a@b.example", ["c@d.example"], b"Subject: other\n\nother\n")
            except QueueError as exc:
                errors.append(str(exc))

    others = [threading.Thread(target=churn) for _ in range(2)]
    for t in others:
        t.start()
    try:
        for _ in range(150):
            writer = queue.writer("a@b.example", ["c@d.example"], {})
            writer.write(b"Subject: mine\n\n" + body)

            def commit(w=writer):
                try:
                    committed.append(w.commit())
                except QueueError as exc:
                    errors.append(str(exc))

            t = threading.Thread(target=commit)
            t.start()
            for _ in range(rng.randrange(0, 2000)):
                pass
            writer.abort()
            t.join()
    finally:
        stop.set()
        for t in others:
            t.join()
    assert not [e for e in errors if "Bad file descriptor" in e], errors[:5]
    for qid in committed:
        data = (tmp_path / "queue" / "new" / qid).read_bytes()
        assert data.startswith(b"{") and b"Subject: mine" in data and data.endswith(body), qid
    for name in os.listdir(tmp_path / "queue" / "new"):
        data = (tmp_path / "queue" / "new" / name).read_bytes()
        assert data.startswith(b"{") and (data.endswith(body) or data.endswith(b"other\n")), name
