"""The supervisor behind ``pymail run``: start programs, restart the dead ones.

Each program is a child in its own process group (a terminal's Ctrl-C
reaches only the supervisor, which stops the children in order) with a
parent-death signal, so a killed supervisor leaves nothing behind.  A
program that dies is started again after a back-off that doubles while it
keeps dying quickly (``run.restart_delay`` up to ``run.max_restart_delay``)
and retries forever: one broken service never takes the others down.  Only
SIGINT or SIGTERM stops the supervisor; SIGHUP is passed on to the daemons
(a renewed TLS certificate), which keep their sessions.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field

from pymta.lib import log
from pymta.lib.pdeathsig import die_with_parent
from pymta.lib.restarts import RestartBackoff, how_it_ended


@dataclass
class Program:
    """One child of the supervisor."""

    name: str
    argv: list[str]
    where: str = "-"  # host:port for the banner
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float | None = None  # set while the program waits to be started again
    restarts: int = 0
    delays: list[float] = field(default_factory=list)  # every back-off so far, for the log and tests
    backoff: RestartBackoff | None = None
    reloads: bool = False  # takes SIGHUP (a renewed TLS certificate); others are not sent it


class Supervisor:
    """Runs programs in the foreground, restarts dead ones, stops all on SIGINT/SIGTERM."""

    def __init__(
        self,
        programs: list[Program],
        *,
        env: dict | None = None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 60.0,
        stop_timeout: float = 5.0,
        poll_interval: float = 0.1,
    ) -> None:
        self.programs = programs
        self.env = env
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.stopping = False
        for program in programs:
            program.backoff = RestartBackoff(restart_delay, max_restart_delay)

    def request_stop(self, *_args) -> None:
        self.stopping = True

    def pass_reload(self, *_args) -> None:
        """SIGHUP: on to every program that reloads (the daemons take a renewed TLS certificate)."""
        for program in self.programs:
            if program.reloads and program.proc is not None and program.proc.poll() is None:
                try:
                    program.proc.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    pass
        log.info("SIGHUP passed on to " + (", ".join(p.name for p in self.programs if p.reloads) or "no program"))

    def run(self, install_signals: bool = True) -> int:
        """0, after a stop request: nothing else ends the loop."""
        old = {}
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self.request_stop)
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.pass_reload)
        try:
            self._loop()
            return 0
        finally:
            self._stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _loop(self) -> None:
        for program in self.programs:
            if not self.stopping:
                self._start(program)
        while not self.stopping:
            now = time.monotonic()
            for program in self.programs:
                if program.proc is not None:
                    code = program.proc.poll()
                    if code is not None:
                        program.proc = None
                        self._schedule_restart(program, now, how_it_ended(code))
                elif program.restart_at is not None and now >= program.restart_at:
                    self._start(program)
            time.sleep(self.poll_interval)

    def _start(self, program: Program) -> None:
        program.restart_at = None
        program.started = time.monotonic()
        try:
            program.proc = subprocess.Popen(
                program.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            program.proc = None
            self._schedule_restart(program, time.monotonic(), f"cannot start {program.argv[0]}: {exc.strerror or exc}")

    def _schedule_restart(self, program: Program, now: float, how: str) -> None:
        ran = now - program.started
        delay = program.backoff.next_delay(ran)
        program.restarts += 1
        program.delays.append(delay)
        program.restart_at = now + delay
        log.warning(f"{program.name} {how} after {ran:.1f} s; restart {program.restarts} in {delay:g} s")

    def _stop_all(self) -> None:
        running = [p for p in self.programs if p.proc is not None and p.proc.poll() is None]
        for program in running:
            try:
                program.proc.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and any(p.proc.poll() is None for p in running):
            time.sleep(0.05)
        for program in running:
            if program.proc.poll() is None:
                log.warning(f"{program.name} did not stop in {self.stop_timeout:g} s; killing it")
                program.proc.kill()
            program.proc.wait()
        for program in self.programs:
            program.proc = None
