"""batch_scheduling (pymta/lib/cpusched.py): every thread of the listening
daemons (their workers too) and of the queue runner runs under SCHED_BATCH,
so a woken thread does not preempt the one holding the interpreter lock;
``batch_scheduling = false`` keeps the default policy."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest


def family(pid: int) -> list[int]:
    """PID and its descendants (a listening daemon's workers)."""
    found = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        for child in children:
            found.extend(family(int(child)))
    return found


def policies(pid: int) -> dict[int, int]:
    """Each thread of PID and its descendants: its scheduling policy."""
    return {
        int(tid): os.sched_getscheduler(int(tid)) for proc in family(pid) for tid in os.listdir(f"/proc/{proc}/task")
    }


def send_one(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("a@example.org", ["alice@example.test"], b"Subject: sched\r\n\r\nbody\r\n")


def daemons(system, port_of_smtpd: int):
    """The smtpd and qrunner processes of SYSTEM, after one message went through
    (so the job and delivery threads exist)."""
    send_one(port_of_smtpd)
    system.wait_messages(1)
    smtpd, qrunner = system.procs
    return smtpd.pid, qrunner.pid


@pytest.mark.parametrize("processes", [1, 2])
def test_daemons_and_their_threads_run_under_sched_batch(make_mailsys, processes):
    system = make_mailsys(f"[smtpd]\nprocesses = {processes}\n")
    port = system.start_smtpd()
    system.start_qrunner()
    smtpd, qrunner = daemons(system, port)
    seen = policies(smtpd)
    assert len(family(smtpd)) == (1 if processes == 1 else 3)  # the workers are in it
    assert len(seen) > len(family(smtpd))  # job threads, not only main threads
    assert set(seen.values()) == {os.SCHED_BATCH}, seen
    delivering = policies(qrunner)
    assert len(delivering) > 1  # the delivery threads
    assert set(delivering.values()) == {os.SCHED_BATCH}, delivering


def test_batch_scheduling_false_keeps_the_default_policy(make_mailsys):
    system = make_mailsys("batch_scheduling = false\n")
    port = system.start_smtpd()
    system.start_qrunner()
    smtpd, qrunner = daemons(system, port)
    assert set(policies(smtpd).values()) == {os.SCHED_OTHER}
    assert set(policies(qrunner).values()) == {os.SCHED_OTHER}
