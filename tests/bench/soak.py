"""Soak benchmark: a mixed SMTP/IMAP/POP3 load for a set time, then an accounting
of every message (a script that prints numbers, not a test).

::

    python3 tests/bench/soak.py [--duration SECONDS] [--clients C] [--mix smtp=70,imap=20,pop3=10]
                                [--seed N] [--processes P] [--bcrypt-cost 4] [--keep]
    python3 tests/bench/soak.py --duration 120 --clients 8     # the longer run

It builds a throwaway pymail tree (under ``/var/tmp``: disk-backed, so fsync
costs what it costs), starts ``pymta.smtpd``, ``pypop.pop3d`` and
``pyimap.imapd`` with ``--listen`` (each forking ``--processes`` processes;
0 = one per CPU) and a ``pymta.qrunner``, then runs C client processes (one
process each, real sockets, Python's smtplib/imaplib/poplib) for
``--duration`` seconds.  Each client picks an operation by the mix:

* smtp -- one connection per message: EHLO, MAIL, RCPT to a random local user,
  DATA of a ``tests/reliability/ledger.py`` message (acknowledged on 250), QUIT;
* imap -- a session as one of the IMAP users: LOGIN, SELECT INBOX, FETCH
  (UID BODY.PEEK[]) of up to 5 random messages (each copy checked and
  recorded with ``Ledger.consumed_copy``), APPEND of one ledger message in
  30% of the sessions (acknowledged on OK), STORE \\Deleted + EXPUNGE of about
  half of the fetched ones, LOGOUT;
* pop3 -- a session as one of the POP3 users: USER/PASS, STAT, UIDL n + RETR n
  of up to 4 random messages (recorded), DELE of about 60% of them, QUIT
  (the DELEs count as consumed once QUIT says +OK).

Two refusals are the protocols' own answers to concurrent sessions and are
counted apart, not as errors: POP3 ``-ERR [IN-USE]`` (two sessions on one
maildrop, RFC 2449) and IMAP ``FETCH`` answered ``NO`` because another
session expunged one of the messages meanwhile (RFC 2180 4.1.2); such a
session ends there (LOGOUT / QUIT).

IMAP and POP3 users are disjoint sets (SMTP writes to all of them), so a
message is never consumed by both protocols (the ledger would see two copies).

While the load runs, a sampler reads /proc every 0.25 s: VmHWM and CPU time
of each daemon's parent and its pre-forked children (and the qrunner), and the
queue backlog.  After the load it waits for the queue to empty (the live
qrunner delivers what is left), checks every daemon process is still there,
stops them and lets ``Ledger.scan`` account for every acknowledged message.

Printed: operations/s, latency p50/p90/p99/max (ms, whole operation including
connect and login) and errors per kind (with the first few messages), peak
memory (max VmHWM of any process of the daemon) and CPU seconds per daemon
(from the start of the load to the end of the drain), the drain time, and
the ledger's accounting: accepted, delivered, consumed, lost (must be 0),
duplicated, corrupted (must be 0).  Exit status 1 if a message was lost or
corrupted, a file is unreadable, or a daemon process died; 2 if the run
could not be set up.

The load generator's own CPU time is printed too: on a small machine the
clients share the cores with the daemons, and the figures move with
whatever else the machine is doing (the 1-minute load average is printed).
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing
import os
import poplib
import queue as queue_mod
import random
import re
import resource
import shutil
import signal
import smtplib
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for _p in (str(REPO), str(HERE), str(REPO / "tests" / "reliability")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from smtp_bench import AS_ROOT, Failure, Procs, Tree, free_port, load_average, tail, wait_port

from ledger import Ledger, crlf, make_message  # tests/reliability/ledger.py

DOMAIN = "example.test"
SENDER = f"soak@{DOMAIN}"
PASSWORD = "soak-pass-1"
IMAP_USERS = [f"imapuser{i}" for i in range(1, 9)]
POP_USERS = [f"popuser{i}" for i in range(1, 9)]
ALL_USERS = IMAP_USERS + POP_USERS
KINDS = ("smtp", "imap", "pop3")
TIMEOUT = 30.0
DAEMONS = (("smtpd", "pymta.smtpd"), ("pop3d", "pypop.pop3d"), ("imapd", "pyimap.imapd"))
FIRST_ERRORS = 5


class OpError(Exception):
    """A reply the client did not expect (the operation failed)."""


# -- the tree ---------------------------------------------------------------------------


class SoakTree(Tree):
    """smtp_bench's tree, with the soak's users and all three daemons configured."""

    def __init__(self, root: Path, processes: int, cost: int) -> None:
        super().__init__(root)
        from passlib.hash import bcrypt

        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'domains = ["{DOMAIN}"]\n'
            f'root = "{root}"\n'
            f"{AS_ROOT}"
            f"\n[smtpd]\nmax_sessions = 1000\nprocesses = {processes}\n"
            f"\n[pop3d]\nmax_sessions = 1000\nprocesses = {processes}\n"
            f"\n[imapd]\nmax_sessions = 1000\nprocesses = {processes}\n"
            # a deferred entry comes back within seconds, so the drain ends
            "\n[qrunner]\nscan_interval = 1.0\nretry_min = 1.0\nretry_max = 5.0\n"
        )
        entry = "{BLF-CRYPT}" + bcrypt.using(rounds=cost).hash(PASSWORD)
        (root / "users").write_text("".join(f"{u}@{DOMAIN}:{entry}::::::\n" for u in ALL_USERS))


# -- the clients (each in its own process) ----------------------------------------------------


class Client:
    def __init__(self, idx: int, ports: dict, seed: int, mix: dict) -> None:
        self.idx = idx
        self.ports = ports
        self.rng = random.Random(seed * 1000 + idx)
        self.ledger = Ledger(prefix=f"w{idx}x")  # prefixes keep tokens unique across processes
        self.ops = [k for k in KINDS if mix.get(k)]
        self.weights = [mix[k] for k in self.ops]
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: dict[str, int] = {k: 0 for k in KINDS}
        self.first_errors: dict[str, list[str]] = {k: [] for k in KINDS}
        self.refused: dict[str, int] = {k: 0 for k in KINDS}  # expected refusals (see the docstring)
        self.fetched = 0  # copies retrieved and checked (IMAP FETCH, POP3 RETR)
        self.deleted: list[str] = []  # tokens whose deletion the server confirmed (EXPUNGE OK, QUIT +OK)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        funcs = {"smtp": self.smtp, "imap": self.imap, "pop3": self.pop3}
        while time.monotonic() < end:
            kind = self.rng.choices(self.ops, self.weights)[0]
            t0 = time.perf_counter()
            try:
                ok = funcs[kind]()
            except Exception as exc:  # every failure of an operation is counted and shown
                self.errors[kind] += 1
                if len(self.first_errors[kind]) < FIRST_ERRORS:
                    self.first_errors[kind].append(f"{type(exc).__name__}: {exc}"[:240])
                time.sleep(0.05)
                continue
            if ok:
                self.lat[kind].append(time.perf_counter() - t0)
            else:
                self.refused[kind] += 1

    def smtp(self) -> bool:
        rcpt = f"{self.rng.choice(ALL_USERS)}@{DOMAIN}"
        token = self.ledger.token("smtp")
        data = crlf(make_message(token, SENDER, rcpt))
        with smtplib.SMTP("127.0.0.1", self.ports["smtpd"], timeout=TIMEOUT) as smtp:
            code, msg = smtp.ehlo("client.soak.test")
            _expect(code == 250, "EHLO", code, msg)
            code, msg = smtp.mail(SENDER)
            _expect(code == 250, "MAIL", code, msg)
            code, msg = smtp.rcpt(rcpt)
            _expect(code == 250, "RCPT", code, msg)
            code, msg = smtp.data(data)
            _expect(code == 250, "DATA", code, msg)
            self.ledger.ack(token, "smtp")
        return True  # __exit__ sent QUIT and raises unless 221

    def imap(self) -> bool:
        user = f"{self.rng.choice(IMAP_USERS)}@{DOMAIN}"
        rng = self.rng
        imap = imaplib.IMAP4("127.0.0.1", self.ports["imapd"], timeout=TIMEOUT)
        try:
            typ, data = imap.login(user, PASSWORD)
            _expect(typ == "OK", "LOGIN", typ, data)
            typ, data = imap.select("INBOX")
            _expect(typ == "OK", "SELECT", typ, data)
            exists = int(data[0])
            validity = (imap.response("UIDVALIDITY")[1] or [b"?"])[-1].decode()
            fetched: list[tuple[bytes, str]] = []  # (uid, token)
            if exists:
                seqs = rng.sample(range(1, exists + 1), min(exists, rng.randint(1, 5)))
                # imaplib's fetch() drops the tagged text when FETCH data came too
                typ, text = imap._simple_command("FETCH", ",".join(map(str, seqs)), "(UID BODY.PEEK[])")
                _typ, data = imap._untagged_response(typ, text, "FETCH")
                if typ == "NO" and b"expunged" in b" ".join(t for t in text if isinstance(t, bytes)):
                    imap.logout()
                    return False  # another session expunged one of them meanwhile
                _expect(typ == "OK", "FETCH", typ, text)
                for item in data:
                    if not isinstance(item, tuple):
                        continue
                    m = re.search(rb"UID (\d+)", item[0])
                    if m is None:
                        raise OpError(f"FETCH response without UID: {item[0][:100]!r}")
                    token = self.ledger.consumed_copy(item[1], "imap", f"INBOX/{validity}/{m.group(1).decode()}")
                    self.fetched += 1
                    fetched.append((m.group(1), token))
                if len(fetched) != len(seqs):
                    raise OpError(f"FETCH of {len(seqs)} messages returned {len(fetched)}")
            if rng.random() < 0.3:
                token = self.ledger.token("imap-append")
                typ, data = imap.append("INBOX", None, None, crlf(make_message(token, SENDER, user)))
                _expect(typ == "OK", "APPEND", typ, data)
                self.ledger.ack(token, "imap-append")
            doomed = [(uid, token) for uid, token in fetched if rng.random() < 0.5]
            if doomed:
                typ, data = imap.uid(
                    "STORE", b",".join(uid for uid, _ in doomed).decode(), "+FLAGS.SILENT", r"(\Deleted)"
                )
                _expect(typ == "OK", "STORE", typ, data)
                typ, data = imap.expunge()
                _expect(typ == "OK", "EXPUNGE", typ, data)
                self.deleted.extend(token for _, token in doomed if token)
            typ, data = imap.logout()
            _expect(typ == "BYE", "LOGOUT", typ, data)
        finally:
            _close_quietly(imap)
        return True

    def pop3(self) -> bool:
        user = f"{self.rng.choice(POP_USERS)}@{DOMAIN}"
        rng = self.rng
        pop = poplib.POP3("127.0.0.1", self.ports["pop3d"], timeout=TIMEOUT)
        try:
            pop.user(user)
            try:
                pop.pass_(PASSWORD)
            except poplib.error_proto as exc:
                if b"[IN-USE]" in exc.args[0]:
                    pop.quit()
                    return False  # another session holds this maildrop
                raise
            count, _size = pop.stat()
            dele: list[str] = []
            for num in rng.sample(range(1, count + 1), min(count, rng.randint(1, 4))):
                reply = pop.uidl(num).split()  # +OK n uidl
                _expect(len(reply) == 3 and reply[0] == b"+OK", "UIDL", reply, "")
                _resp, lines, _octets = pop.retr(num)
                token = self.ledger.consumed_copy(b"\n".join(lines) + b"\n", "pop3", reply[2].decode())
                self.fetched += 1
                if rng.random() < 0.6:
                    pop.dele(num)
                    if token:
                        dele.append(token)
            reply = pop.quit()
            _expect(reply.startswith(b"+OK"), "QUIT", reply, "")
            self.deleted.extend(dele)
        finally:
            _close_quietly(pop)
        return True

    def result(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lg = self.ledger
        return {
            "kinds": lg.kinds,
            "acked": lg.acked,
            "consumed": lg.consumed,
            "corrupt_seen": lg.corrupt_seen,
            "lat": self.lat,
            "errors": self.errors,
            "first_errors": self.first_errors,
            "refused": self.refused,
            "fetched": self.fetched,
            "deleted": self.deleted,
            "cpu": usage.ru_utime + usage.ru_stime,
        }


def _expect(ok: bool, what: str, code, msg) -> None:
    if not ok:
        raise OpError(f"{what}: {code} {msg!r}"[:240])


def _close_quietly(client) -> None:
    sock = getattr(client, "sock", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def client_main(idx: int, ports: dict, seed: int, mix: dict, seconds: float, go, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run
    client = Client(idx, ports, seed, mix)
    go.wait()
    try:
        client.run(seconds)
        results.put((idx, client.result()))
    except BaseException:
        results.put((idx, {"crash": traceback.format_exc()}))


# -- watching the daemons -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _proc_sample(pid: int) -> tuple[int, float] | None:
    """(VmHWM kB, own user+sys CPU seconds) of a live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    tick = os.sysconf("SC_CLK_TCK")
    return (int(m.group(1)) if m else 0), (int(fields[11]) + int(fields[12])) / tick


def _reaped_cpu(pid: int) -> float:
    """CPU of children the process has reaped (pymda-deliver in exec mode)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Sampler(threading.Thread):
    """Peak memory and CPU of each daemon's processes, and the queue backlog."""

    def __init__(self, parents: dict[str, int], queue_dir: Path, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.parents = parents
        self.queue_dir = queue_dir
        self.interval = interval
        self.hwm: dict[str, dict[int, int]] = {n: {} for n in parents}  # daemon -> pid -> kB
        self.cpu: dict[str, dict[int, float]] = {n: {} for n in parents}  # daemon -> pid -> last seen CPU s
        self.reaped: dict[str, float] = {n: 0.0 for n in parents}
        self.backlog = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def sample(self) -> None:
        with self.lock:
            for name, parent in self.parents.items():
                for pid in [parent, *_children(parent)]:
                    got = _proc_sample(pid)
                    if got is None:
                        continue
                    kb, cpu = got
                    self.hwm[name][pid] = max(self.hwm[name].get(pid, 0), kb)
                    self.cpu[name][pid] = cpu
                self.reaped[name] = max(self.reaped[name], _reaped_cpu(parent))
            try:
                backlog = sum(1 for _ in os.scandir(self.queue_dir / "new"))
                backlog += sum(1 for b in os.scandir(self.queue_dir / "deferred") for _ in os.scandir(b.path))
            except OSError:
                backlog = 0
            self.backlog = max(self.backlog, backlog)

    def cpu_total(self) -> dict[str, float]:
        with self.lock:
            return {n: sum(self.cpu[n].values()) + self.reaped[n] for n in self.parents}

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.sample()


def group_pids(parent: int) -> list[int]:
    return [pid for pid in [parent, *_children(parent)] if _proc_sample(pid) is not None]


# -- the run ------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in KINDS or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(f"bad mix item {part!r} (want smtp=N,imap=N,pop3=N)")
        mix[name] = int(weight)
    if not sum(mix.values()):
        raise argparse.ArgumentTypeError("the mix has no weight")
    return mix


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def wait_started(name: str, proc, port: int, errfile: Path, expect: int, timeout: float = 30.0) -> None:
    wait_port(port, proc, errfile, timeout)
    deadline = time.time() + timeout
    while len(group_pids(proc.pid)) < expect:  # the pre-forked children
        if time.time() > deadline:
            raise Failure(f"{name}: {len(group_pids(proc.pid))} of {expect} processes after {timeout:g}s")
        time.sleep(0.05)


def drain(queue_dir: Path, procs: Procs, stall: float) -> tuple[float | None, int]:
    """Wait until the queue is empty: (seconds, None if it stalled; entries left)."""
    from pymta.queue import Queue

    queue = Queue(queue_dir)
    t0 = time.perf_counter()
    last, last_change = -1, t0
    while True:
        left = len(queue.all_entries())
        now = time.perf_counter()
        if not left:
            return now - t0, 0
        if left != last:
            last, last_change = left, now
        elif now - last_change > stall or procs.died():
            return None, left
        time.sleep(0.1)


def merge(into: Ledger, part: dict) -> None:
    into.kinds.update(part["kinds"])
    into.acked.update(part["acked"])
    for token, records in part["consumed"].items():
        into.consumed.setdefault(token, []).extend(records)
    into.corrupt_seen.extend(part["corrupt_seen"])


def soak(args, workdir: Path) -> int:
    procs = Procs()
    tree = SoakTree(workdir / "tree", args.processes, args.bcrypt_cost)
    nproc = args.processes or os.cpu_count() or 1
    ports = {name: free_port() for name, _ in DAEMONS}
    problems: list[str] = []
    try:
        parents = {}
        for name, module in DAEMONS:
            err = tree.root / f"{name}.stderr"
            proc = procs.start(name, tree.program(module, "--listen", f"127.0.0.1:{ports[name]}"), err)
            wait_started(name, proc, ports[name], err, nproc)
            parents[name] = proc.pid
        qerr = tree.root / "qrunner.stderr"
        qrunner = procs.start("qrunner", tree.program("pymta.qrunner"), qerr)
        deadline = time.time() + 30
        while not (tree.root / "queue" / "wake.sock").exists():
            if qrunner.poll() is not None or time.time() > deadline:
                raise Failure(f"qrunner did not start:\n{tail(qerr)}")
            time.sleep(0.05)
        parents["qrunner"] = qrunner.pid
        started_pids = {name: set(group_pids(pid)) for name, pid in parents.items()}

        ctx = multiprocessing.get_context("fork")  # before any thread of ours exists
        go = ctx.Event()
        results = ctx.Queue()
        workers = [
            ctx.Process(
                target=client_main, args=(i, ports, args.seed, args.mix, args.duration, go, results), daemon=True
            )
            for i in range(args.clients)
        ]
        for w in workers:
            w.start()
        sampler = Sampler(parents, tree.root / "queue")
        sampler.sample()
        cpu0 = sampler.cpu_total()
        sampler.start()
        load = load_average()
        print(
            f"soak: {args.duration:g}s, {args.clients} client processes, mix "
            + ",".join(f"{k}={v}" for k, v in args.mix.items())
            + f", seed {args.seed}, {os.cpu_count()} CPUs, {nproc} process(es) per daemon, "
            f"load average {load:.1f}, tree {tree.root}",
            flush=True,
        )
        t0 = time.perf_counter()
        go.set()
        parts: dict[int, dict] = {}
        deadline = time.time() + args.duration + 4 * TIMEOUT + 30
        while len(parts) < len(workers) and time.time() < deadline:
            try:
                idx, part = results.get(timeout=1)
            except queue_mod.Empty:
                if not any(w.is_alive() for w in workers) and results.empty():
                    break
                continue
            parts[idx] = part
        load_time = time.perf_counter() - t0
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
        if len(parts) < len(workers):
            problems.append(f"only {len(parts)} of {len(workers)} client processes reported")
        for idx, part in sorted(parts.items()):
            if "crash" in part:
                problems.append(f"client {idx} crashed:\n{part['crash']}")
        parts = {i: p for i, p in parts.items() if "crash" not in p}
        cpu_load = sampler.cpu_total()
        backlog_load = sampler.backlog

        drain_time, left = drain(tree.root / "queue", procs, args.stall)
        time.sleep(0.3)  # the runner removes an entry just after its delivery
        sampler.stop()
        cpu_end = sampler.cpu_total()
        died = []
        for name, pid in parents.items():
            gone = started_pids[name] - set(group_pids(pid))
            if gone:
                died.append(f"{name}: process(es) {sorted(gone)} of {sorted(started_pids[name])} gone")
        died.extend(procs.died())
        leftovers = tree.queue_leftovers()
        reasons = tree.state_reasons() if left else []
    finally:
        started = list(procs.procs)
        procs.stop_all()
        procs.procs = started
    tracebacks = [name for name, _, err in started if err and err.exists() and b"Traceback" in err.read_bytes()]

    ledger = Ledger()
    for part in parts.values():
        merge(ledger, part)
    report = ledger.scan(tree.root / "mail", None, tree.root / "queue")

    # -- the report ----------------------------------------------------------------
    print(f"\nload: {load_time:.1f}s wall (clients stop starting operations after {args.duration:g}s)")
    print(f"{'kind':<6} {'ops':>7} {'ops/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    for kind in KINDS:
        lat = sorted(x for p in parts.values() for x in p["lat"][kind])
        errs = sum(p["errors"][kind] for p in parts.values())
        if not lat and not errs:
            continue
        ms = [percentile(lat, q) * 1000 for q in (50, 90, 99, 100)]
        print(
            f"{kind:<6} {len(lat):>7} {len(lat) / load_time:>8.1f} "
            + " ".join(f"{v:>8.1f}" for v in ms)
            + f" {errs:>7}"
        )
    refused = {k: sum(p["refused"][k] for p in parts.values()) for k in KINDS}
    if any(refused.values()):
        print(
            f"expected refusals (not errors, not in the latencies): pop3 -ERR [IN-USE] {refused['pop3']}, "
            f"imap FETCH NO (expunged by another session) {refused['imap']}"
        )
    for kind in KINDS:
        firsts = [e for p in parts.values() for e in p["first_errors"][kind]][:FIRST_ERRORS]
        for e in firsts:
            print(f"  {kind} error: {e}")
    client_cpu = sum(p["cpu"] for p in parts.values())
    print(
        f"load generator CPU: {client_cpu:.1f}s over {load_time:.1f}s "
        f"({client_cpu / load_time * 100:.0f}% of one core, of {os.cpu_count()})"
    )

    print(f"\n{'daemon':<8} {'procs':>5} {'peak VmHWM MB':>14} {'CPU s (load)':>13} {'CPU s (+drain)':>15}")
    for name in parents:
        hwm = max(sampler.hwm[name].values(), default=0) / 1024
        print(
            f"{name:<8} {len(sampler.hwm[name]):>5} {hwm:>14.1f} {cpu_load[name] - cpu0[name]:>13.1f} "
            f"{cpu_end[name] - cpu0[name]:>15.1f}"
        )
    print(
        "peak VmHWM = the largest of the daemon's processes (parent and pre-forked children), sampled every "
        f"{sampler.interval:g}s; queue backlog peaked at {backlog_load} entries during the load"
    )

    if drain_time is None:
        print(f"\ndrain: queue NOT empty ({left} entries left, no progress for {args.stall:g}s) {leftovers}")
        for line in reasons:
            print(f"  {line}")
    else:
        print(f"\ndrain: queue empty {drain_time:.1f}s after the load")

    accepted = sum(report.acked.values())
    deleted = {t for p in parts.values() for t in p["deleted"]}
    fetched = sum(p["fetched"] for p in parts.values())
    print(
        f"\naccepted {accepted} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(report.acked.items()))
        + f"), delivered {report.delivered}, "
        f"consumed {len(deleted)} (retrieved, then deleted with the server's OK; {fetched} copies retrieved "
        f"and checked), lost {len(report.lost)}, duplicated {len(report.duplicated)}, "
        f"corrupted {len(report.corrupted)}"
    )
    print("ledger: " + report.summary().replace("\n", "\nledger: "))

    failed = []
    if report.lost:
        failed.append(f"{len(report.lost)} lost")
    if report.corrupted:
        failed.append(f"{len(report.corrupted)} corrupted")
    if report.unreadable:
        failed.append(f"{len(report.unreadable)} unreadable")
    failed.extend(f"died: {d}" for d in died)
    failed.extend(problems)
    if tracebacks:
        failed.append("Traceback in stderr of " + ", ".join(tracebacks))
    if failed:
        procs.report()
    print("\nRESULT: " + ("OK" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load (default 40)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("smtp=70,imap=20,pop3=10"),
        help="weights of the operations (default smtp=70,imap=20,pop3=10)",
    )
    parser.add_argument("--seed", type=int, help="seed of the clients' choices (default: random, printed)")
    parser.add_argument("--processes", type=int, default=0, help="smtpd/pop3d/imapd.processes (default 0: one per CPU)")
    parser.add_argument(
        "--bcrypt-cost",
        type=int,
        default=4,
        help="bcrypt cost of the users' password hashes (default 4; pymail user add writes 10)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up the drain after this many seconds without progress (default 60)",
    )
    parser.add_argument(
        "--dir",
        default="/var/tmp" if os.path.isdir("/var/tmp") else None,
        metavar="PARENT",
        help="where to make the temporary tree (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary tree and daemon logs")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.clients < 1:
        parser.error("--clients must be at least 1")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="pymail-soak-", dir=args.dir))
    try:
        return soak(args, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except Failure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
