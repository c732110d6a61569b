"""Starting again what died: the back-off between restarts, and one line
saying how a process ended.  Used by ``pymail run`` for its programs and by
a listening daemon for its workers."""

from __future__ import annotations


class RestartBackoff:
    """Exponential back-off: the first restart after a healthy run waits
    ``initial`` seconds; each further quick death doubles the wait, up to
    ``maximum``.  A run of at least ``healthy_after`` seconds (by default
    ten times ``initial``) counts as healthy and starts the count again, so
    a program killed now and then always comes back after ``initial``
    seconds, while one that dies at once keeps retrying, slower and slower,
    but forever."""

    def __init__(self, initial: float, maximum: float, healthy_after: float | None = None) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.healthy_after = 10 * initial if healthy_after is None else healthy_after
        self.quick_deaths = 0

    def next_delay(self, ran_for: float) -> float:
        """Seconds to wait before the next start of a process that ran ``ran_for`` seconds."""
        if ran_for >= self.healthy_after:
            self.quick_deaths = 0
        delay = min(self.initial * 2 ** min(self.quick_deaths, 60), self.maximum)
        self.quick_deaths += 1
        return delay


def how_it_ended(returncode: int) -> str:
    """'exited with status N' or 'was killed by signal N', from a
    Popen-style return code (negative: the signal) -- see
    ``os.waitstatus_to_exitcode``."""
    if returncode < 0:
        import signal  # noqa: PLC0415 lazy

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"
