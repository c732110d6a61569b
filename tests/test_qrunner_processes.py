"""The queue runner's delivery processes (qrunner.processes): a parent that
only watches, workers that share the queue through its entry locks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import env_with_repo
from pymta.queue import Queue
from test_privileges import wait_for
from test_queue_runner import children, delivered_subjects, kill_with_workers, message


def start_runner(system, log: Path) -> subprocess.Popen:
    """The runner with its log in a file (a pipe nobody reads would fill and stop it)."""
    proc = subprocess.Popen(
        system.program("pymta.qrunner"), env=env_with_repo(), stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )
    system.procs.append(proc)
    return proc


def enqueue(system, count: int, start: int = 0) -> None:
    q = Queue(system.root / "queue")
    for n in range(start, start + count):
        q.enqueue("carol@remote.example", ["alice@example.test"], message(n))


def test_two_processes_share_the_backlog_and_stop_together(make_mailsys, tmp_path):
    system = make_mailsys("[qrunner]\nprocesses = 2\nconcurrency = 4\n")
    total = 400
    enqueue(system, total)
    log = tmp_path / "qrunner.log"
    proc = start_runner(system, log)
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), 10, "no two workers")
    wait_for(lambda: len(system.messages()) == total, 60, "backlog not delivered")
    subjects = delivered_subjects(system)
    assert sorted(subjects) == sorted(f"test {n}" for n in range(total))  # each once
    text = log.read_text()
    assert "2 process(es) of 2 delivery threads" in text
    delivering = set(re.findall(r"pymta-qrunner\[(\d+)\]: \w+: to=<alice@example.test>.*status=sent", text))
    assert delivering == {str(w) for w in workers}  # both took part; the parent delivers nothing
    proc.terminate()
    proc.wait(timeout=15)
    wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10, "a worker outlived its parent")
    assert not (system.root / "queue" / "wake.sock").exists()


def test_one_process_forks_no_worker(make_mailsys, tmp_path):
    system = make_mailsys("[qrunner]\nprocesses = 1\n")
    enqueue(system, 20)
    proc = start_runner(system, tmp_path / "qrunner.log")
    wait_for(lambda: len(system.messages()) == 20, 30, "not delivered")
    assert children(proc.pid) == []
    assert "1 process(es) of 8 delivery threads" in (tmp_path / "qrunner.log").read_text()


def test_sigterm_ends_the_deliveries_under_way_and_leaves_the_rest_queued(make_mailsys, tmp_path):
    """A stop does not first work through everything a pass handed the
    threads: what has not started stays in the queue for the next runner."""
    system = make_mailsys("[qrunner]\nprocesses = 2\nconcurrency = 2\n")
    total = 3000
    enqueue(system, total)
    proc = start_runner(system, tmp_path / "qrunner.log")
    wait_for(lambda: len(system.messages()) >= 50, 60, "delivery did not start")
    proc.terminate()
    at_stop = len(system.messages())
    proc.wait(timeout=15)
    time.sleep(0.5)  # the workers follow their parent
    after = len(system.messages())
    assert after - at_stop < 100, (at_stop, after)
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert sorted(delivered_subjects(system)) == sorted(f"test {n}" for n in range(total))


def test_a_killed_worker_is_replaced(make_mailsys, tmp_path):
    system = make_mailsys("[qrunner]\nprocesses = 2\n")
    proc = start_runner(system, tmp_path / "qrunner.log")
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), 10, "no two workers")
    os.kill(workers[0], signal.SIGKILL)
    wait_for(
        lambda: len(children(proc.pid)) == 2 and workers[0] not in children(proc.pid),
        10,
        "the killed worker was not replaced",
    )
    q = Queue(system.root / "queue")
    for n in range(10):  # each wake-up reaches one worker, the new one included
        q.wake(q.enqueue("carol@remote.example", ["alice@example.test"], message(n)))
    wait_for(lambda: len(system.messages()) == 10, 10, "not delivered after the replacement")
    kill_with_workers(proc.pid)
    proc.wait()
