"""A listening daemon's parent: N forked workers serve, the parent watches them.

Postfix's master(8) in small.  The parent opens the listening sockets (done
before ``run_workers``), forks ``count`` workers that each run
``serve(slot)`` on them (``slot``: the worker's place, 0 to count-1, kept
by its replacement), and from then on only waits for signals: a worker that dies is
replaced (at once after a healthy run, with a growing pause if workers die
in a loop), SIGTERM or SIGINT is passed on to every worker for a clean
stop, and SIGHUP (reload the TLS certificate) to every worker as it is.
The parent serves no client, so a client cannot crash it.

Each worker gets SIGTERM when the parent dies, even by SIGKILL, so no
worker is left holding the port that the restarted daemon must open.
"""

from __future__ import annotations

import os
import signal
import time

from pymta.lib import log
from pymta.lib.pdeathsig import die_with_parent
from pymta.lib.restarts import RestartBackoff, how_it_ended

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WATCHED = {signal.SIGCHLD, signal.SIGHUP, *STOP_SIGNALS}

# A worker that dies within a second of its start waits 0.1 s, then 0.2 s, ...
# up to 10 s before its replacement: a worker crashing at once (a broken
# module, say) costs a few forks a minute, not a fork loop.
FIRST_DELAY = 0.1
MAX_DELAY = 10.0
STOP_TIMEOUT = 10.0


class _Slot:
    """One worker place: the process in it, and when to fill it again."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.started = 0.0
        self.due: float | None = None  # when to fork a replacement
        self.backoff = RestartBackoff(FIRST_DELAY, MAX_DELAY)


class WorkerPool:
    def __init__(self, count: int, serve, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.slots = [_Slot() for _ in range(count)]
        self.serve = serve
        self.stop_timeout = stop_timeout
        self.unblocked: set[int | signal.Signals] | None = None  # the signal mask the workers get back
        self.arm_child = None

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; every worker is gone on return."""
        # Signals wait, blocked, for sigtimedwait: no handler can run between
        # two steps of the loop, and the workers start with a clean slate.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an inherited SIG_IGN would reap them for us
        self.unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # blocked, so it waits for sigwaitinfo (an ignored one is lost)
        self.arm_child = die_with_parent(signal.SIGTERM)
        try:
            for slot in self.slots:
                self._fork(slot)
            while self._wait_for_signal():
                now = time.monotonic()
                self._reap(now)
                for slot in self.slots:
                    if slot.pid is None and slot.due is not None and now >= slot.due:
                        self._fork(slot)
            self._stop_workers()
        finally:
            assert self.unblocked is not None  # set before the try
            signal.pthread_sigmask(signal.SIG_SETMASK, self.unblocked)

    def _wait_for_signal(self) -> bool:
        """False once told to stop."""
        due = [slot.due for slot in self.slots if slot.pid is None and slot.due is not None]
        if due:
            info = signal.sigtimedwait(WATCHED, max(0.0, min(due) - time.monotonic()))
        else:
            info = signal.sigwaitinfo(WATCHED)
        if info is not None and info.si_signo == signal.SIGHUP:
            for slot in self.slots:
                if slot.pid is not None:
                    try:
                        os.kill(slot.pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass
        return info is None or info.si_signo not in STOP_SIGNALS

    def _fork(self, slot: _Slot) -> None:
        slot.due = None
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: try again later
            slot.due = time.monotonic() + slot.backoff.next_delay(0.0)
            log.error(f"cannot fork a worker: {exc.strerror}; trying again in {slot.due - time.monotonic():.1f} s")
            return
        if pid == 0:
            self._worker(self.slots.index(slot))
        slot.pid, slot.started = pid, time.monotonic()

    def _worker(self, index: int) -> None:
        code = 0
        try:
            if self.arm_child is not None:
                self.arm_child()
            assert self.unblocked is not None  # run() set it before the fork
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server's own handler: a reload never kills
            signal.pthread_sigmask(signal.SIG_SETMASK, self.unblocked)
            self.serve(index)
        except BaseException as exc:  # one log line, never a traceback
            log.error(f"worker failed: {exc!r}")
            code = 1
        finally:
            os._exit(code)

    def _reap(self, now: float) -> None:
        """Collect every dead worker (signals do not queue: one SIGCHLD may stand for several)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            ran = now - slot.started
            delay = slot.backoff.next_delay(ran)
            slot.due = now + delay
            log.warning(
                f"worker {pid} {how_it_ended(os.waitstatus_to_exitcode(status))} after {ran:.1f} s; "
                f"starting another in {delay:g} s"
            )

    def _stop_workers(self) -> None:
        running = [slot.pid for slot in self.slots if slot.pid is not None]
        for pid in running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_timeout
        left = set(running)
        while left:
            for pid in list(left):
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    left.discard(pid)
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                break
            signal.sigtimedwait(WATCHED, min(remaining, 0.5))  # a second SIGTERM changes nothing
        for pid in left:
            log.warning(f"worker {pid} did not stop in {self.stop_timeout:g} s; killing it")
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for slot in self.slots:
            slot.pid = None


def run_workers(count: int, serve, **options) -> None:
    """Fork ``count`` workers running ``serve(slot)``, keep them running, stop them on SIGTERM/SIGINT."""
    WorkerPool(count, serve, **options).run()
