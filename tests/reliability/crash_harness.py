#!/usr/bin/env python3
"""Crash-consistency harness: steady mail load while processes die by SIGKILL.

::

    python3 tests/reliability/crash_harness.py --kills 200 [--seed N] [--clients C] [--keep DIR]

A pymail tree (``tests/conftest.py``'s ``MailSystem``) runs under ``pymail
run``: smtpd, pop3d and imapd (each a parent watching 2 forked workers) and
a qrunner, relaying the
domain ``relay.test`` to an aiosmtpd sink in a process of its own
(``relay_sink.py``: it refuses ``reject*`` recipients with 550 and answers
451 now and then).  Client
threads send SMTP (local and relayed), run sendmail and pymta-queue (the
queue door; some to an unknown local user, which bounces), APPEND over
IMAP, RETR+DELE+QUIT over POP3 and FETCH/EXPUNGE/MOVE over IMAP.  One user
(carol) has a rules file with a ``| cat`` filter, and ``deliver.mode``
switches between ``exec`` and ``inprocess`` each time the runner restarts,
so there are pymda-deliver processes to kill mid-write and mid-filter.

A killer thread picks a victim kind among the live processes (found via
/proc: smtpd parent or worker, qrunner, pymda-deliver, pymta-queue,
sendmail, pop3d and imapd parents or workers) and SIGKILLs one.  Nothing
but pymail itself brings the victims back: ``pymail run`` restarts a dead
daemon or runner (``run.restart_delay`` shrunk to 0.2 s), a daemon's parent
replaces a dead worker, and a killed parent's workers must leave the port
free for the restart.  Afterwards every port must greet within 15 s; the
queue is flushed and drained, and ``ledger.Ledger.scan`` accounts for every
acknowledged message.  Exit status 1 when a message was lost or corrupted,
a file is unreadable or a daemon did not come back.  The seed is printed
first; ``--seed`` replays
the same choices (thread timing still varies).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for p in (str(REPO), str(HERE), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import relay_sink
from ledger import Ledger, crlf, make_message, peek

DOMAIN = "example.test"
RELAY_DOMAIN = "relay.test"
SENDER = f"dave@{DOMAIN}"
LOCAL_USERS = ["alice", "bob", "carol", "pat", "ivy"]
RULES = ":0 fwr\n| cat\n:0\n.Filtered/\n"
TIMEOUT = 15.0
RECOVERY = 15.0  # seconds pymail has to answer on every port again after the last kill
DAEMONS = (("smtpd", "pymta.smtpd"), ("pop3d", "pypop.pop3d"), ("imapd", "pyimap.imapd"))
MODULE_KIND = {
    "pymta.qrunner": "qrunner",
    "pymda.deliver": "deliver",
    "pymta.queue_cmd": "queue-door",
    "pymta.sendmail": "sendmail",
}


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_table(tag: str) -> list[tuple[int, int, list[str]]]:
    """(pid, ppid, argv) of live (not zombie) processes whose argv holds ``tag``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            if tag not in argv:
                continue
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and fields[0] not in ("Z", "X"):
            out.append((int(name), int(fields[1]), argv))
    return out


def module_of(argv: list[str]) -> str:
    return argv[argv.index("-m") + 1] if "-m" in argv and argv.index("-m") + 1 < len(argv) else ""


class Harness:
    def __init__(self, root: Path, tls_files, seed: int, clients: int, log=print) -> None:
        from conftest import MailSystem, env_with_repo

        self.root = root
        self.seed = seed
        self.log = log
        self.nclients = clients
        self.env = env_with_repo()
        self.rng = random.Random(seed)
        self.sink_dir = root / "sink"
        self.sink_port = free_port()
        self.sink: subprocess.Popen | None = None
        self.mode = "exec"
        self.base_config = ""
        self.sys = MailSystem(root, tls_files, "")
        for user in ("carol", "pat", "ivy", "dave"):
            self.sys.add_user(f"{user}@{DOMAIN}", "s3cret-pass")
        carol = self.sys.maildir("carol")
        carol.mkdir(parents=True, exist_ok=True)
        (carol / ".procmailrc").write_text(RULES)
        self.tag = str(self.sys.config.resolve())  # as `pymail run` passes it to its programs
        self.ports = {name: free_port() for name, _ in DAEMONS}
        self.run_proc: subprocess.Popen | None = None  # `pymail run`, the only supervisor
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.ledger = Ledger()
        self.kills: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.problems: list[str] = []
        self.client_errors: dict[str, int] = {}
        self.peeks = 0
        self.stop_load = threading.Event()
        self.stop_kill = threading.Event()
        self.lock = threading.Lock()
        self.drain_notes: list[str] = []

    # -- config and daemons ---------------------------------------------------------
    def write_config(self, mode: str) -> None:
        self.mode = mode
        extra = (
            "[smtpd]\nprocesses = 2\n"
            "[pop3d]\nprocesses = 2\n"
            "[imapd]\nprocesses = 2\n"
            "[qrunner]\nscan_interval = 1.0\nretry_min = 1.0\nretry_max = 2.0\nconcurrency = 4\n"
            f'[deliver]\nmode = "{mode}"\n'
            "[run]\nrestart_delay = 0.2\nmax_restart_delay = 2.0\n"
            "[listen]\n"
            + "".join(f'{service} = "{where}"\n' for service, where in self.listen().items())
            + f'[relay]\ntransport_map = {{ "{RELAY_DOMAIN}" = "[127.0.0.1]:{self.sink_port}" }}\n'
            'tls = "none"\nconnect_timeout = 5.0\ncommand_timeout = 20.0\n'
        )
        as_root = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""  # the tree is root's (conftest)
        text = f'hostname = "mx.{DOMAIN}"\ndomains = ["{DOMAIN}"]\nroot = "{self.root}"\n{as_root}{extra}'
        tmp = self.sys.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.sys.config)

    def program(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, "-C", self.tag, *args]

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        err = open(self.logs / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        finally:
            err.close()

    def listen(self) -> dict[str, str]:
        """`pymail run`'s listeners: one port per daemon, the TLS twins off."""
        where = {"smtp": "smtpd", "pop3": "pop3d", "imap": "imapd"}
        return {
            service: f"127.0.0.1:{self.ports[where[service]]}" if service in where else ""
            for service in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
        }

    def start_pymail(self) -> None:
        """Start `pymail run` and wait until every daemon greets."""
        self.run_proc = self.spawn("pymail-run", [sys.executable, "-m", "pymta.cli", "run", "-C", self.tag])
        silent = self.silent_daemons(30)
        if silent:
            self.problems.append(
                f"{', '.join(silent)} did not start under pymail run (exit {self.run_proc.poll()}), seed {self.seed}"
            )
            raise RuntimeError(self.problems[-1])

    def stop_pymail(self) -> None:
        """SIGTERM to `pymail run`: it stops what it started, and nothing may outlive it."""
        proc, self.run_proc = self.run_proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.problems.append("pymail run did not stop in 30 s after SIGTERM")
                proc.kill()
                proc.wait()
        for pid, _pp, argv in proc_table(self.tag):
            module = module_of(argv)
            if module in {mod for _n, mod in DAEMONS} or (module == "pymta.qrunner" and "--once" not in argv):
                if not _wait_gone(pid, 10):
                    self.problems.append(f"{module} {pid} outlived pymail run")
                    _kill(pid)

    def group(self, name: str, module: str) -> list[int]:
        where = f"127.0.0.1:{self.ports[name]}"
        return [pid for pid, _pp, argv in proc_table(self.tag) if module_of(argv) == module and where in argv]

    def count_restarts(self) -> None:
        """Restarts as pymail logged them: `pymail run`'s and each daemon's worker replacements."""
        path = self.logs / "pymail-run.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            program = re.search(r"warning: (\S+) (?:was killed|exited).*; restart \d+ in", line)
            worker = re.match(r"(\S+)\[\d+\]: warning: worker \d+ .*; starting another", line)
            name = program.group(1) if program else f"{worker.group(1)}-worker" if worker else None
            if name:
                self.restarts[name] = self.restarts.get(name, 0) + 1

    def peeker(self) -> None:
        """Sample visible files while the kills go on: none may be half-written."""
        rng = random.Random(self.seed + 2)
        while not self.stop_kill.is_set():
            try:
                found = peek(self.root / "mail", self.root / "queue", rng)
            except OSError:
                found = []
            if found:
                with self.lock:
                    self.ledger.torn_seen.extend(found)
            self.peeks += 1
            time.sleep(0.1)

    # -- the killer -------------------------------------------------------------------------
    def victims(self) -> dict[str, list[int]]:
        supervisor = self.run_proc.pid if self.run_proc is not None else None
        found: dict[str, list[int]] = {}
        for pid, ppid, argv in proc_table(self.tag):
            module = module_of(argv)
            kind = MODULE_KIND.get(module)
            if kind is None:
                for name, mod in DAEMONS:
                    if module == mod:  # a listening parent is a child of `pymail run`; its workers are its own
                        kind = f"{name}-{'parent' if ppid == supervisor else 'worker'}"
            if kind == "qrunner" and "--once" in argv:
                continue
            if kind:
                found.setdefault(kind, []).append(pid)
        return found

    def killer(self, kills: int, gap: tuple[float, float]) -> None:
        rng = random.Random(self.seed + 1)
        done = 0
        idle_since = time.time()
        while done < kills and not self.stop_kill.is_set():
            time.sleep(rng.uniform(*gap))
            if self.run_proc is None or self.run_proc.poll() is not None:
                self.problems.append(f"pymail run exited ({self.run_proc and self.run_proc.poll()}) during the kills")
                break
            found = self.victims()
            if not found:
                if time.time() - idle_since > RECOVERY:
                    self.problems.append(f"nothing came back to kill for {RECOVERY:g} s, seed {self.seed}")
                    break
                continue
            idle_since = time.time()
            kind = rng.choice(sorted(found))
            pid = rng.choice(sorted(found[kind]))
            if kind == "qrunner":  # the next runner (started by pymail run) delivers the other way
                self.write_config("exec" if rng.random() < 0.7 else "inprocess")
            if _kill(pid):
                done += 1
                with self.lock:
                    self.kills[kind] = self.kills.get(kind, 0) + 1
        self.stop_kill.set()

    # -- load ------------------------------------------------------------------------------------
    def client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        actions = [
            (self.smtp_send, 45),
            (self.queue_door, 10),
            (self.sendmail, 8),
            (self.imap_append, 12),
            (self.pop3_drain, 10),
            (self.imap_churn, 10),
        ]
        funcs = [a for a, _ in actions]
        weights = [w for _, w in actions]
        while not self.stop_load.is_set():
            action = rng.choices(funcs, weights)[0]
            try:
                action(rng)
            except (
                OSError,
                EOFError,
                smtplib.SMTPException,
                imaplib.IMAP4.error,
                poplib.error_proto,
                subprocess.TimeoutExpired,
            ):
                time.sleep(0.05)  # a dropped connection: not acknowledged, try the next
            except Exception as exc:  # anything else is the harness's own trouble: count it, carry on
                with self.lock:
                    key = f"{action.__name__}: {type(exc).__name__}"
                    self.client_errors[key] = self.client_errors.get(key, 0) + 1
                time.sleep(0.05)

    def smtp_send(self, rng) -> None:
        relay = rng.random() < 0.3
        if relay:
            rcpt = f"{'reject' if rng.random() < 0.2 else 'r'}{rng.randrange(100)}@{RELAY_DOMAIN}"
            kind = "smtp-relay"
        else:
            rcpt = f"{rng.choice(LOCAL_USERS)}@{DOMAIN}"
            kind = "smtp-local"
        token = self.ledger.token(kind)
        data = crlf(make_message(token, SENDER, rcpt))
        with smtplib.SMTP("127.0.0.1", self.ports["smtpd"], timeout=TIMEOUT) as smtp:
            code, _ = smtp.ehlo("client.crash.invalid")
            if code != 250:
                return
            code, _ = smtp.mail(SENDER)
            if code != 250:
                return
            code, _ = smtp.rcpt(rcpt)
            if code != 250:
                return
            code, _ = smtp.data(data)
            if code == 250:
                self.ledger.ack(token, kind)
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass

    def _run_door(self, rng, module: str, kind: str, args: list[str]) -> None:
        bounce = kind == "queue-door" and rng.random() < 0.2
        rcpt = f"nobody{rng.randrange(100)}@{DOMAIN}" if bounce else f"{rng.choice(LOCAL_USERS)}@{DOMAIN}"
        token = self.ledger.token(kind)
        proc = subprocess.run(
            self.program(module, *args, "-f", SENDER, rcpt),
            input=make_message(token, SENDER, rcpt),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
            timeout=60,
        )
        if proc.returncode == 0:
            self.ledger.ack(token, kind)

    def queue_door(self, rng) -> None:
        self._run_door(rng, "pymta.queue_cmd", "queue-door", [])

    def sendmail(self, rng) -> None:
        self._run_door(rng, "pymta.sendmail", "sendmail", ["-oi"])

    def _imap(self, user: str = "ivy"):
        imap = imaplib.IMAP4("127.0.0.1", self.ports["imapd"], timeout=TIMEOUT)
        try:
            typ, _ = imap.login(f"{user}@{DOMAIN}", "s3cret-pass")
            if typ != "OK":
                raise imaplib.IMAP4.error("login refused")
        except BaseException:
            _close_quietly(imap)
            raise
        return imap

    def imap_append(self, rng) -> None:
        token = self.ledger.token("imap-append")
        data = crlf(make_message(token, SENDER, f"ivy@{DOMAIN}"))
        imap = self._imap()
        try:
            typ, _ = imap.append("INBOX", None, None, data)
            if typ == "OK":
                self.ledger.ack(token, "imap-append")
            imap.logout()
        finally:
            _close_quietly(imap)

    def imap_churn(self, rng) -> None:
        imap = self._imap()
        try:
            typ, data = imap.select("INBOX")
            if typ != "OK":
                return
            validity = imap.untagged_responses.get("UIDVALIDITY", [b"0"])[0].decode()
            typ, data = imap.uid("SEARCH", "ALL")
            if typ != "OK":
                return
            uids = data[0].split()
            rng.shuffle(uids)
            expunge, move = uids[:3], uids[3:5]
            for uid in expunge:
                typ, got = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                if typ != "OK" or not got or not isinstance(got[0], tuple):
                    return
                self.ledger.consumed_copy(got[0][1], "imap", f"INBOX/{validity}/{uid.decode()}")
            if expunge:
                imap.uid("STORE", b",".join(expunge), "+FLAGS.SILENT", "(\\Deleted)")
                imap.expunge()
            if move:
                imap.create("Archive")
                imap.uid("MOVE", b",".join(move), "Archive")
            imap.logout()
        finally:
            _close_quietly(imap)

    def pop3_drain(self, rng) -> None:
        pop = poplib.POP3("127.0.0.1", self.ports["pop3d"], timeout=TIMEOUT)
        try:
            pop.user(f"pat@{DOMAIN}")
            pop.pass_("s3cret-pass")
            _resp, listing, _ = pop.uidl()
            for line in listing[:8]:
                num, uidl = line.decode().split()
                _resp, lines, _ = pop.retr(int(num))
                self.ledger.consumed_copy(b"\n".join(lines) + b"\n", "pop3", uidl)
                pop.dele(int(num))
            pop.quit()
        finally:
            _close_quietly(pop)

    # -- the run ------------------------------------------------------------------------------------
    def start(self) -> None:
        with open(self.logs / "sink.log", "ab") as err:
            self.sink = subprocess.Popen(
                [sys.executable, str(HERE / "relay_sink.py"), str(self.sink_port), str(self.sink_dir), str(self.seed)],
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        if self.sink.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the relay sink did not start: {(self.logs / 'sink.log').read_text()[-500:]}")
        self.write_config("exec")
        self.start_pymail()

    def drain(self, timeout: float = 120.0) -> list:
        """Stop `pymail run` (the serving runner with it); flush deferred entries and run --once
        until the queue is empty."""
        self.stop_pymail()
        for pid, _pp, argv in proc_table(self.tag):  # a pymda-deliver the killed runner left behind
            if module_of(argv) == "pymda.deliver":
                _wait_gone(pid, 30)
        self.write_config("inprocess")
        env = dict(self.env, PYMAIL_CONFIG=self.tag)
        from pymta.queue import Queue

        queue = Queue(self.root / "queue")
        deadline = time.time() + timeout
        left = queue.all_entries()
        proc = None
        while time.time() < deadline:
            subprocess.run(
                [sys.executable, "-m", "pymta.cli", "queue", "flush"], env=env, capture_output=True, timeout=60
            )
            proc = subprocess.run(
                self.program("pymta.qrunner", "--once"), env=self.env, capture_output=True, timeout=120
            )
            if proc.returncode != 0:
                self.problems.append(f"pymta-qrunner --once exited {proc.returncode}: {proc.stderr[-500:]!r}")
            left = queue.all_entries()
            if not left:
                break
            time.sleep(0.2)
        if left:  # say why: the runner's last words and whether the relay sink still answers
            last = proc.stderr[-1500:].decode(errors="replace") if proc is not None else "(not run)"
            self.drain_notes.append(f"last qrunner --once stderr: {last!r}")
            self.drain_notes.append(f"relay sink: {self.probe_sink()}")
        return left

    def probe_sink(self) -> str:
        try:
            with smtplib.SMTP("127.0.0.1", self.sink_port, timeout=5) as smtp:
                return (
                    f"EHLO answered {smtp.ehlo('probe.invalid')[0]}, "
                    f"{len(relay_sink.received(self.sink_dir))} messages received"
                )
        except (OSError, smtplib.SMTPException) as exc:
            return f"does not answer: {exc!r}"

    def stop(self) -> None:
        self.stop_pymail()
        for name, module in DAEMONS:  # orphans, should pymail have left any (a problem already noted)
            for pid in self.group(name, module):
                _kill(pid)
        if self.sink is not None:
            self.sink.stdin.close()  # its signal to stop
            try:
                self.sink.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait()
            self.sink.stdout.close()
            self.sink = None

    def silent_daemons(self, timeout: float) -> list[str]:
        """The daemons that do not greet, after trying for ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            silent = []
            for name, greeting in (("smtpd", b"220 "), ("pop3d", b"+OK"), ("imapd", b"* OK")):
                try:
                    with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=5) as s:
                        s.settimeout(10)
                        got = s.recv(200)
                except OSError:
                    got = b""
                if not got.startswith(greeting):
                    silent.append(name)
            if not silent or time.time() > deadline:
                return silent
            time.sleep(0.1)

    def check_daemons_answer(self) -> None:
        for name in self.silent_daemons(RECOVERY):
            self.problems.append(f"{name} does not answer {RECOVERY:g} s after the last kill")

    def check_mailboxes(self) -> None:
        """Every mailbox opens through the daemons after the run: POP3 STAT
        and IMAP SELECT of each folder, with the message count on disk."""
        from pyimap.store import UserStore
        from pymda import maildir as md

        for user in ["dave", *LOCAL_USERS]:
            box = self.sys.maildir(user)
            if not box.is_dir():
                continue
            try:
                pop = poplib.POP3("127.0.0.1", self.ports["pop3d"], timeout=TIMEOUT)
                try:
                    pop.user(f"{user}@{DOMAIN}")
                    pop.pass_("s3cret-pass")
                    count, _size = pop.stat()
                    pop.quit()
                finally:
                    _close_quietly(pop)
                if count != len(md.list_messages(box)):
                    self.problems.append(f"POP3 STAT of {user}: {count}, on disk {len(md.list_messages(box))}")
                imap = self._imap(user)
                try:
                    typ, listing = imap.list()
                    names = [re.search(r'\) "." "?(.*?)"?$', line.decode()).group(1) for line in listing if line]
                    for name in names:
                        typ, data = imap.select(f'"{name}"', readonly=True)
                        folder = UserStore(box).folder_dir(name)
                        on_disk = len(md.list_messages(folder))
                        if typ != "OK" or int(data[0]) != on_disk:
                            self.problems.append(f"IMAP SELECT {user}/{name}: {typ} {data}, on disk {on_disk}")
                    imap.logout()
                finally:
                    _close_quietly(imap)
            except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto, ValueError) as exc:
                self.problems.append(f"mailbox of {user} does not open after the run: {exc!r}")

    def log_tracebacks(self) -> list[str]:
        found = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace")
            if "Traceback" in text:
                found.append(f"{path.name}: {text[text.index('Traceback') :][:600]}")
        return found

    def run(self, kills: int, gap: tuple[float, float]) -> Result:
        started = time.time()
        self.log(f"crash_harness: seed {self.seed}, {kills} kills, {self.nclients} clients, root {self.root}")
        self.start()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.nclients)]
        peeker = threading.Thread(target=self.peeker, daemon=True)
        for t in threads:
            t.start()
        peeker.start()
        self.killer(kills, gap)
        peeker.join()
        self.stop_load.set()
        for t in threads:
            t.join(timeout=90)
        self.check_daemons_answer()  # pymail alone brought everything back
        left = self.drain()
        try:
            self.start_pymail()  # the daemons again, for the mailbox checks
            self.check_mailboxes()
        except RuntimeError:
            pass
        self.stop()
        self.count_restarts()
        report = self.ledger.scan(self.root / "mail", relay_sink.received(self.sink_dir), self.root / "queue")
        return Result(self, report, left, time.time() - started)


class Result:
    def __init__(self, h: Harness, report, left, elapsed: float) -> None:
        self.seed = h.seed
        self.report = report
        self.kills = dict(h.kills)
        self.restarts = dict(h.restarts)
        self.problems = list(h.problems)
        self.left = left
        self.elapsed = elapsed
        self.tracebacks = h.log_tracebacks()
        self.client_errors = dict(h.client_errors)
        self.peeks = h.peeks
        self.drain_notes = list(h.drain_notes)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems

    def summary(self) -> str:
        r = self.report
        lines = [
            f"seed: {self.seed}",
            f"kills: {sum(self.kills.values())} (" + ", ".join(f"{k}={v}" for k, v in sorted(self.kills.items())) + ")",
            "restarts: " + ", ".join(f"{k}={v}" for k, v in sorted(self.restarts.items())),
            r.summary(),
            f"live samples of visible files: {self.peeks} passes",
            f"elapsed: {self.elapsed:.1f}s",
        ]
        if self.client_errors:
            lines.append("client errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.client_errors.items())))
        for p in self.problems:
            lines.append(f"problem: {p}")
        lines += [f"drain: {n}" for n in self.drain_notes]
        for t in self.tracebacks[:5]:
            lines.append(f"traceback in log: {t}")
        lines.append(("OK" if self.ok else "FAILED") + f" (seed {self.seed})")
        return "\n".join(lines)


def _kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _close_quietly(client) -> None:
    try:
        sock = getattr(client, "sock", None)
        if sock is not None:
            sock.close()
    except OSError:
        pass


def make_tls(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    from pymta.lib.tls import make_self_signed

    make_self_signed(cert, key, "mx.example.test", days=2)
    return cert, key


def run(
    kills: int,
    seed: int | None = None,
    clients: int = 3,
    root: Path | None = None,
    tls_files=None,
    gap: tuple[float, float] = (0.05, 0.4),
    log=print,
) -> Result:
    """One harness run; ``root`` is an empty directory (a temporary one by default)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="pymail-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    if tls_files is None:
        tls_files = make_tls(root)
    h = Harness(root / "sys", tls_files, seed, clients, log=log)
    try:
        return h.run(kills, gap)
    finally:
        h.stop_kill.set()
        h.stop_load.set()
        h.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder, removed on success)"
    )
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pymail-crash-"))
    result = run(args.kills, args.seed, args.clients, root)
    print(result.summary())
    if result.ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    elif not result.ok:
        print(f"tree kept in {root}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
