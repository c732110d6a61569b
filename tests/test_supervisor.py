"""One SIGKILL never stops the whole system (issue 11, section 2.6).

`pymail run` supervises its programs (pymta/supervisor.py) and each
listening daemon supervises its forked workers (pymta/lib/prefork.py).  The
tests kill every kind of process `pymail run` starts, one at a time: each
service's listening parent, a worker of each, the queue runner.  Within 15
seconds of each kill every port greets again and a message sent by SMTP
reaches the Maildir.  Before, a killed listening parent left its workers
holding the port, the restart failed five times, and the supervisor stopped
every service.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, MailSystem, client_tls, env_with_repo, free_port
from pymta.cli import SERVICES
from pymta.lib.restarts import RestartBackoff, how_it_ended
from pymta.supervisor import Program, Supervisor
from test_access_control import TEST_USER, status_ids, test_user  # noqa: F401  (fixture)
from test_privileges import open_dir, pymail  # noqa: F401  (fixture)

RECOVERY = 15.0  # seconds from a kill to every port greeting and a message delivered
PROCESSES = 2
GREETING = {
    "smtp": b"220",
    "submission": b"220",
    "smtps": b"220",
    "pop3": b"+OK",
    "pop3s": b"+OK",
    "imap": b"* OK",
    "imaps": b"* OK",
}
TLS = {"smtps", "pop3s", "imaps"}
DAEMONS = [service for service in SERVICES if service in GREETING]  # the mail daemons (not the autoconfig HTTP)


# -- the back-off, alone -------------------------------------------------------------------


def test_backoff_doubles_while_quick_deaths_go_on_caps_and_resets_after_a_healthy_run():
    backoff = RestartBackoff(1.0, 60.0)
    assert [backoff.next_delay(0.5) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.next_delay(10.0) == 1  # ran ten times the first delay: healthy, count again
    assert backoff.next_delay(3.0) == 2
    assert [RestartBackoff(0.1, 10.0).next_delay(0) for _ in range(2)] == [0.1, 0.1]  # each its own count


def test_how_a_process_ended_in_one_phrase():
    assert how_it_ended(3) == "exited with status 3"
    assert how_it_ended(-9) == "was killed by signal 9 (SIGKILL)"


# -- the supervisor, with stand-in programs ---------------------------------------------------


def _stop_after(sup: Supervisor, seconds: float, seen: dict) -> threading.Thread:
    def stop_later():
        time.sleep(seconds)
        seen.update({p.name: p.proc.pid for p in sup.programs if p.proc})
        sup.request_stop()

    thread = threading.Thread(target=stop_later)
    thread.start()
    return thread


def test_crash_looping_program_backs_off_forever_and_never_stops_the_others(capfd):
    crash = Program("crash", [sys.executable, "-c", "raise SystemExit(3)"])
    sleeper = Program("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    sup = Supervisor([crash, sleeper], restart_delay=0.05, max_restart_delay=0.2, poll_interval=0.02)
    seen: dict = {}
    started = time.monotonic()
    thread = _stop_after(sup, 3.0, seen)
    assert sup.run(install_signals=False) == 0  # returns only when asked to stop
    thread.join()
    assert time.monotonic() - started < 10
    assert crash.restarts >= 6, crash.delays  # before: gave up after 5 and stopped everything
    assert crash.delays[:4] == [0.05, 0.1, 0.2, 0.2]  # doubling, capped
    assert sleeper.restarts == 0 and "sleeper" in seen  # never touched by the other's trouble
    lines = [line for line in capfd.readouterr().err.splitlines() if "crash exited with status 3" in line]
    assert len(lines) == crash.restarts  # one line per restart
    assert "restart 1 in 0.05 s" in lines[0] and "restart 4 in 0.2 s" in lines[3]


def test_program_that_cannot_start_is_retried_without_an_exception():
    missing = Program("missing", ["/nonexistent/pymail-test-program"])
    sup = Supervisor([missing], restart_delay=0.05, max_restart_delay=0.1, poll_interval=0.02)
    thread = _stop_after(sup, 0.5, {})
    assert sup.run(install_signals=False) == 0
    thread.join()
    assert missing.restarts >= 3 and missing.delays[:3] == [0.05, 0.1, 0.1]


def test_supervisor_stops_children():
    sleepers = [Program(f"s{i}", [sys.executable, "-c", "import time; time.sleep(60)"]) for i in range(2)]
    stubborn = Program(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)",
        ],
    )
    sup = Supervisor(sleepers + [stubborn], stop_timeout=1.0)
    seen: dict = {}
    thread = _stop_after(sup, 1.0, seen)
    start = time.monotonic()
    assert sup.run(install_signals=False) == 0
    thread.join()
    assert time.monotonic() - start < 8
    assert len(seen) == 3
    for pid in seen.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped, not left running


# -- the worker pool of a listening daemon, alone ------------------------------------------------

POOL_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pymta.lib import log, prefork
log.set_program("pool")
print("ready", flush=True)
prefork.run_workers(2, lambda _slot: None)  # each worker ends at once: a crash loop
print("stopped", flush=True)
"""


def test_workers_dying_in_a_loop_are_replaced_with_a_growing_pause():
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT, str(REPO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(1.6)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == "stopped\n", err
    deaths = [line for line in err.splitlines() if "exited with status 0" in line]
    # 0.1 + 0.2 + 0.4 + 0.8 s: about four replacements per slot in 1.6 s, not a fork loop
    assert 4 <= len(deaths) <= 14, err
    pauses = [line.rsplit(" in ", 1)[1] for line in deaths]
    assert {"0.1 s", "0.2 s", "0.4 s"} <= set(pauses), err
    assert "Traceback" not in err


# -- `pymail run`, SIGKILL by SIGKILL -------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (ppid, argv) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if fields and fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), argv)
    return table


class Running:
    """A `pymail run` on a fresh tree, every service on a free port, two workers each."""

    def __init__(self, root: Path, tls_files) -> None:
        self.ports = {service: free_port() for service in SERVICES}
        listen = "".join(f'{service} = "127.0.0.1:{port}"\n' for service, port in self.ports.items())
        self.sys = MailSystem(
            root,
            tls_files,
            f"[listen]\n{listen}"
            f"[smtpd]\nprocesses = {PROCESSES}\n[pop3d]\nprocesses = {PROCESSES}\n"
            f"[imapd]\nprocesses = {PROCESSES}\n",
        )
        self.log = root / "pymail-run.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "bin" / "pymail"), "run", str(root)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env_with_repo(),
            )
        self.sent = 0

    def children(self, table, pid: int) -> list[int]:
        return sorted(p for p, (ppid, _argv) in table.items() if ppid == pid)

    def parent_of(self, service: str, table=None) -> int | None:
        table = _proc_table() if table is None else table
        for pid in self.children(table, self.proc.pid):
            argv = table[pid][1]
            if "--service" in argv and argv[argv.index("--service") + 1] == service:
                return pid
        return None

    def workers_of(self, service: str) -> tuple[int | None, list[int]]:
        table = _proc_table()
        parent = self.parent_of(service, table)
        return parent, (self.children(table, parent) if parent else [])

    def qrunner(self) -> int | None:
        table = _proc_table()
        found = [p for p in self.children(table, self.proc.pid) if "pymta.qrunner" in table[p][1]]
        return found[0] if found else None

    def greets(self, service: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ports[service]), timeout=3) as raw:
                sock = client_tls().wrap_socket(raw) if service in TLS else raw
                sock.settimeout(3)
                return sock.recv(100).startswith(GREETING[service])
        except OSError:
            return False

    def wait(self, what, deadline: float, message: str):
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pymail run exited: {self.log.read_text()[-2000:]}"
            value = what()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{message}; pymail run's log:\n{self.log.read_text()[-3000:]}")

    def all_greet(self) -> list[str]:
        return [service for service in DAEMONS if not self.greets(service)]

    def check_whole(self, deadline: float) -> None:
        """Every port greets and a message goes from SMTP to alice's Maildir before ``deadline``."""
        self.wait(lambda: not self.all_greet(), deadline, "not every port greets")
        self.sent += 1
        subject = f"supervised {self.sent} {os.getpid()}"

        def send():
            try:
                with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=5) as smtp:
                    smtp.sendmail(
                        "carol@remote.example", ["alice@example.test"], f"Subject: {subject}\r\n\r\nbody\r\n".encode()
                    )
                return True
            except (OSError, smtplib.SMTPException):
                return False

        self.wait(send, deadline, "SMTP does not take a message")
        self.wait(
            lambda: any(subject.encode() in p.read_bytes() for p in self.sys.messages("alice")),
            deadline,
            f"message {subject!r} not delivered",
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, (_ppid, argv) in _proc_table().items():  # nothing of ours may outlive a failed test
            if str(self.sys.config) in argv:
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        return [pid for pid, (_pp, argv) in _proc_table().items() if str(self.sys.config) in argv]


@pytest.fixture(scope="module")
def running(tmp_path_factory, tls_files):
    system = Running(tmp_path_factory.mktemp("supervised"), tls_files)
    try:
        deadline = time.monotonic() + 30
        system.check_whole(deadline)
        system.wait(
            lambda: all(len(system.workers_of(s)[1]) == PROCESSES for s in DAEMONS),
            deadline,
            "not every daemon has its workers",
        )
        yield system
    finally:
        system.stop()


@pytest.mark.parametrize("service", DAEMONS)
def test_sigkill_of_a_listening_parent_stops_its_workers_and_the_service_comes_back(running, service):
    parent, workers = running.workers_of(service)
    assert parent and len(workers) == PROCESSES
    os.kill(parent, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + RECOVERY
    # the workers follow their parent at once, so the port is free for the restart
    running.wait(
        lambda: not set(workers) & set(_proc_table()), killed + 5, f"workers {workers} outlived their killed parent"
    )
    running.check_whole(deadline)

    def new_daemon():
        found = running.workers_of(service)
        return found if found[0] and len(found[1]) == PROCESSES else None

    new_parent, new_workers = running.wait(new_daemon, deadline, "no new daemon with its workers")
    assert new_parent != parent and not set(new_workers) & set(workers)


@pytest.mark.parametrize("service", DAEMONS)
def test_sigkill_of_a_worker_is_replaced_and_the_parent_stays(running, service):
    parent, workers = running.workers_of(service)
    assert parent and len(workers) == PROCESSES
    os.kill(workers[0], signal.SIGKILL)
    killed = time.monotonic()
    running.wait(
        lambda: (w := running.workers_of(service))[0] == parent and len(w[1]) == PROCESSES and workers[0] not in w[1],
        killed + 5,
        "the killed worker was not replaced",
    )
    running.check_whole(killed + RECOVERY)
    assert running.workers_of(service)[0] == parent  # `pymail run` had nothing to restart
    assert f"worker {workers[0]} was killed by signal 9 (SIGKILL)" in running.log.read_text()


def test_sigkill_of_the_queue_runner(running):
    runner = running.qrunner()
    assert runner
    os.kill(runner, signal.SIGKILL)
    killed = time.monotonic()
    running.wait(lambda: (r := running.qrunner()) and r != runner, killed + RECOVERY, "no new queue runner")
    running.check_whole(killed + RECOVERY)
    assert "qrunner was killed by signal 9 (SIGKILL)" in running.log.read_text()


def test_sigterm_stops_pymail_run_and_everything_it_started(running):
    assert running.leftovers()
    running.proc.terminate()
    assert running.proc.wait(timeout=15) == 0
    deadline = time.monotonic() + 5
    while running.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.leftovers() == []
    assert "Traceback" not in running.log.read_text()


# -- the daemons' parent-death signal survives the switch to daemon_user ------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemons switch to daemon_user")
def test_sigkill_of_pymail_run_as_root_leaves_nothing_behind(open_dir, test_user):  # noqa: F811
    """The kernel clears the parent-death signal when a process changes its
    uid; the daemons and the runner set it again after becoming daemon_user,
    or they would outlive a killed `pymail run` and keep its ports."""
    pw = test_user
    tree = open_dir / "pm"
    made = pymail("init", tree, "--domain", "example.test", "--hostname", "mx.example.test", "--daemon-user", TEST_USER)
    assert made.returncode == 0, made.stderr
    ports = {service: free_port() for service in SERVICES}
    args = [a for service, port in ports.items() for a in (f"--{service}-port", str(port))]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "pymail"), "run", str(tree), *args],
        env=env_with_repo(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    config = str((tree / "pymail.toml").resolve())

    def ours() -> list[int]:
        return [pid for pid, (_pp, argv) in _proc_table().items() if config in argv and pid != proc.pid]

    def switched() -> bool:  # every daemon and the runner have become daemon_user (pymda-local stays root)
        table = _proc_table()
        pids = [p for p, (pp, argv) in table.items() if pp == proc.pid and "pymda.localserver" not in argv]
        try:
            return len(pids) == len(SERVICES) + 1 and all(status_ids(p)["Uid"][1] == pw.pw_uid for p in pids)
        except (OSError, KeyError):
            return False

    try:
        deadline = time.monotonic() + 40
        while not switched():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read1().decode()
            time.sleep(0.1)
        assert len(ours()) >= len(SERVICES) + 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ours() == [], [_proc_table().get(p) for p in ours()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in ours():
            os.kill(pid, signal.SIGKILL)
        proc.stderr.close()
