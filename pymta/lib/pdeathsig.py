"""Children that die with their parent, even a SIGKILLed one (Linux's PR_SET_PDEATHSIG).

A parent killed by SIGKILL cannot stop its children.  Daemons left behind by
a killed ``pymail run``, or workers left behind by a killed listening
daemon, would keep the listening ports, and every restart would fail with
"Address already in use".  With a parent-death signal the kernel stops them.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2


def _prctl():
    """libc's prctl, or None off Linux.  Looked up in the parent: loading a
    library in a child forked by a threaded parent is not safe."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # noqa: PLC0415 lazy

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM):
    """A function to call first thing in a freshly forked child (or as a
    subprocess ``preexec_fn``): the child then gets ``sig`` when this
    process dies.  None where the kernel offers no such thing."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return arm


def keep_across_uid_change():
    """Call before switching uid/gid, and call what it returns after: the
    kernel clears the parent-death signal when the effective ids change
    (prctl(2)), so a daemon that became ``daemon_user`` would outlive a
    killed ``pymail run``."""
    prctl = _prctl()
    if prctl is None:
        return lambda: None
    import ctypes  # noqa: PLC0415 lazy

    sig = ctypes.c_int(0)
    prctl(PR_GET_PDEATHSIG, ctypes.byref(sig))
    parent = os.getppid()

    def restore() -> None:
        if sig.value:
            prctl(PR_SET_PDEATHSIG, sig.value)
            if os.getppid() != parent:  # the parent died during the switch
                os.kill(os.getpid(), sig.value)

    return restore
