"""The CPU scheduling policy of the long-running daemons: SCHED_BATCH.

A listening daemon and the queue runner are a few threads (the event loop,
the jobs, the delivery workers) that share one interpreter lock.  Under
Linux's default policy, SCHED_OTHER, a thread the kernel wakes -- a job
whose fsync returned, the loop whose socket got data -- preempts the thread
that runs, most often one of the same process, only to find the lock held
and go back to sleep: two context switches and nothing done.  Under
SCHED_BATCH a woken thread does not preempt: it runs at once on an idle
CPU, or when the running thread's time slice ends (sched(7): "without
interactivity causing extra preemptions (between the workload's tasks)").
Nice value and fairness towards other programs stay as they were, and an
idle machine sees no difference.

Measured with ``tests/bench/smtp_bench.py`` (smtpd and qrunner with and
without it, alternating rounds of one run): at 20 sessions 12 to 23 % more
messages accepted a second, 6 to 27 % more delivered, and a quarter less
kernel time per message; at 1 session -5 to +6 %, with 100 KB messages +0.5
to +9 %.  ``batch_scheduling = false`` keeps the default policy.

The policy is the calling thread's (Linux threads are tasks): call this in
the main thread before any other starts; threads and forked processes made
afterwards inherit it.
"""

from __future__ import annotations

import os

from pymta.lib import log


def use_batch_policy(cfg) -> None:
    """SCHED_BATCH for this thread and what it starts, when the config wants it."""
    if not cfg["batch_scheduling"]:
        return
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:  # not Linux
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # a seccomp filter, say: the default policy only costs speed
        log.warning(f"batch_scheduling: cannot use SCHED_BATCH: {exc}")
