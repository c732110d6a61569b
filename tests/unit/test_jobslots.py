"""At most N jobs run Python at once; a job waiting for a lock gives its slot up."""

from __future__ import annotations

import threading
import time

from pymta.lib import jobslots


def _run_jobs(jobs):
    threads = [threading.Thread(target=jobslots.run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def test_at_most_n_jobs_run_at_once():
    jobslots.limit(2)
    try:
        running, peak, lock = [0], [0], threading.Lock()

        def job():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

        _run_jobs([job] * 6)
        assert peak[0] == 2
    finally:
        jobslots.limit(0)


def test_a_waiting_job_lets_others_run():
    jobslots.limit(1)
    try:
        released, done = threading.Event(), threading.Event()

        def waiter():
            with jobslots.waiting():  # another process's lock, say
                released.wait(10)
            done.set()

        def other():
            released.set()  # runs only if the waiter gave its slot up

        _run_jobs([waiter, other])
        assert released.is_set() and done.is_set()
    finally:
        jobslots.limit(0)


def test_without_a_limit_nothing_is_counted():
    jobslots.limit(0)
    with jobslots.waiting():
        pass
    assert jobslots.run(lambda: 7) == 7


def test_after_reply_outside_a_job_runs_at_once():
    done = []
    jobslots.after_reply(lambda: done.append(1))
    assert done == [1]


def test_after_reply_in_a_job_waits_for_run_after_and_a_failure_spares_the_rest():
    done = []
    after = jobslots.collect_after()
    jobslots.after_reply(lambda: done.append("first"))
    jobslots.after_reply(lambda: 1 / 0)  # logged, not raised
    jobslots.after_reply(lambda: done.append("third"))
    assert done == []
    jobslots.run_after(after)
    assert done == ["first", "third"]
    jobslots.after_reply(lambda: done.append("now"))  # the job is over: at once again
    assert done == ["first", "third", "now"]


def test_off_loop_hands_work_to_the_job_threads_only_from_the_loop(monkeypatch):
    done = []
    jobslots.off_loop(lambda: done.append("inline"))  # no listening daemon: at once
    assert done == ["inline"]
    handed = []
    monkeypatch.setattr(jobslots, "_submit", None)
    monkeypatch.setattr(jobslots, "_loop_thread", None)
    jobslots.serve_jobs(handed.append)  # this thread plays the event loop
    jobslots.off_loop(lambda: done.append("loop"))
    assert done == ["inline"] and len(handed) == 1  # went to the pool
    other = threading.Thread(target=jobslots.off_loop, args=(lambda: done.append("job"),))
    other.start()
    other.join(10)
    assert done == ["inline", "job"]  # a job thread does it itself

    def shut(fn):
        raise RuntimeError("cannot schedule new futures after shutdown")

    jobslots.serve_jobs(shut)
    jobslots.off_loop(lambda: done.append("stopping"))
    assert done[-1] == "stopping"
