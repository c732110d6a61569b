"""use_batch_policy: asks for SCHED_BATCH only when the config says so, and a
refusal (a seccomp filter, a container) is a warning, never a failure."""

from __future__ import annotations

import os

from pymta.lib import cpusched


def test_false_leaves_the_policy_alone(monkeypatch):
    asked = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda *args: asked.append(args))
    cpusched.use_batch_policy({"batch_scheduling": False})
    assert asked == []
    cpusched.use_batch_policy({"batch_scheduling": True})
    assert asked and asked[0][:2] == (0, os.SCHED_BATCH)  # this thread, SCHED_BATCH


def test_a_refusal_is_one_warning(monkeypatch, capfd):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    cpusched.use_batch_policy({"batch_scheduling": True})  # no exception
    err = capfd.readouterr().err
    assert "cannot use SCHED_BATCH" in err and "Operation not permitted" in err
    assert err.count("\n") == 1
