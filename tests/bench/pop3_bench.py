#!/usr/bin/env python3
"""pypop-pop3d benchmark (a script, not a test): prints numbers.

usage: python3 tests/bench/pop3_bench.py [-t SECONDS] [--messages N] [--big-mb MB] [--dovecot-port PORT]

* sessions/s of login + STAT + LIST + RETR of every message (1,000 small
  messages of ~1.5 KB) + QUIT, with 1 and 8 clients, in listening mode
  (``--listen``) and inetd mode (``systemd-socket-activate --inetd``),
  measured with the shared yardstick ``../shared/bench/pop3_load.py``
  (falls back to an in-file copy of its loop when that file is absent);
* the time a 1,000-message ``LIST`` takes (median of 50, on the wire);
* the peak memory (VmHWM) of one session downloading a 50 MB message, in
  inetd mode (the process serving only that session) and in listening mode.

The users file holds a default-cost bcrypt hash (cost 10), as ``pymail
user add`` writes it: every login pays for one bcrypt check, as it would
in production.  ``--dovecot-port`` runs the same load against a Dovecot
already serving the same mailbox, for a side-by-side ratio.
"""

from __future__ import annotations

import argparse
import os
import poplib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
LOAD = REPO.parent / "shared" / "bench" / "pop3_load.py"
USER, PASSWORD = "alice@example.test", "bench-password"
BIG_USER = "bob@example.test"
CLIENT_USERS = [USER] + [f"user{i}@example.test" for i in range(1, 8)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def make_tree(root: Path, messages: int, big_mb: int) -> Path:
    from pymda import maildir as md
    from pymta.lib.users import hash_password

    config = root / "pymail.toml"
    config.write_text(
        f'hostname = "bench.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n'
        f"[pop3d]\nprocesses = {int(os.environ.get('POP3D_PROCESSES', '1'))}\n"
    )
    hashed = hash_password(PASSWORD)
    (root / "users").write_text("".join(f"{u}:{hashed}\n" for u in CLIENT_USERS + [BIG_USER]))
    filler = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n" * 17
    for user in CLIENT_USERS:
        box = root / "mail" / "example.test" / user.split("@")[0]
        md.ensure_maildir(box)
        for i in range(messages):
            md.deliver(
                box,
                b"From: sender%d@remote.example\nTo: %s\nSubject: message %d\n\n" % (i, user.encode(), i) + filler,
                fsync=False,
            )
    big = root / "mail" / "example.test" / "bob"
    md.ensure_maildir(big)
    line = b"0123456789" * 7 + b"\n"
    md.deliver(big, (b"Subject: big\n\n" + line * (big_mb * 1024 * 1024 // len(line)) for _ in range(1)), fsync=False)
    return config


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start(config: Path, mode: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    prog = [sys.executable, "-m", "pypop.pop3d", "-C", str(config)]
    if mode == "listen":
        argv = prog + ["--listen", f"127.0.0.1:{port}"]
    else:
        argv = [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "-E",
            f"PYTHONPATH={REPO}",
            "--inetd",
            "-a",
        ] + prog
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(port: int, clients: int, seconds: float, same_user: bool = False) -> str:
    sessions, retr, errors = load_numbers(port, clients, seconds, same_user)
    return f"{sessions:6.2f} sessions/s  ({retr:.0f} RETR/s, errors={errors:.0f})"


def load_numbers(port: int, clients: int, seconds: float, same_user: bool = False) -> tuple[float, float, float]:
    """The shared yardstick; with several clients, one mailbox per client.

    POP3 locks a maildrop per session (RFC 1939 8; -ERR [IN-USE]), so eight
    clients on one mailbox measure the lock, not the server: each client
    gets its own user, and the yardstick runs once per client, in parallel.
    """
    if not LOAD.exists():
        raise SystemExit(f"{LOAD} not found")
    users = [USER] * clients if same_user or clients == 1 else CLIENT_USERS[:clients]
    if same_user:
        runs = [
            [sys.executable, str(LOAD), "127.0.0.1", str(port), USER, PASSWORD, "-c", str(clients), "-t", str(seconds)]
        ]
    else:
        runs = [
            [sys.executable, str(LOAD), "127.0.0.1", str(port), u, PASSWORD, "-c", "1", "-t", str(seconds)]
            for u in users
        ]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for argv in runs]
    sessions = retr = errors = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        line = (out.strip().splitlines() or ["?"])[-1]
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        sessions += float(fields.get("sessions_per_s", 0))
        retr += float(fields.get("retr_per_s", 0))
        errors += int(fields.get("errors", 0))
    return sessions, retr, errors


def side_by_side(ours: int, theirs: int, clients: int, seconds: float, rounds: int) -> None:
    """Alternate the two servers round by round, so a machine whose speed
    drifts (a shared VM) treats both alike; print each round and the medians."""
    a, b = [], []
    for _ in range(rounds):
        a.append(load_numbers(ours, clients, seconds)[0])
        b.append(load_numbers(theirs, clients, seconds)[0])
    ma, mb = statistics.median(a), statistics.median(b)
    print(
        f"side by side clients={clients}: pypop {ma:6.2f} sessions/s {[round(x, 2) for x in a]}, "
        f"dovecot {mb:6.2f} {[round(x, 2) for x in b]}, ratio {ma / mb:.2f}"
    )


def list_time(port: int, rounds: int = 50) -> tuple[float, int]:
    pop = poplib.POP3("127.0.0.1", port, timeout=30)
    pop.user(USER)
    pop.pass_(PASSWORD)
    times = []
    count = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        _resp, listing, _ = pop.list()
        times.append(time.perf_counter() - t0)
        count = len(listing)
    pop.quit()
    return statistics.median(times) * 1000, count


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return -1


class _PairPOP3(poplib.POP3):
    def __init__(self, sock):
        self._sock_to_use = sock
        super().__init__("unused", 0, timeout=60)

    def _create_socket(self, timeout):
        return self._sock_to_use


def big_retr_inetd(config: Path) -> tuple[int, int, float]:
    """One inetd-style process on a socketpair; (VmHWM MB, octets, seconds)."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypop.pop3d", "-C", str(config)],
        stdin=theirs,
        stdout=theirs,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    theirs.close()
    pop = _PairPOP3(ours)
    pop.user(BIG_USER)
    pop.pass_(PASSWORD)
    t0 = time.perf_counter()
    octets = _drain_retr(pop)
    took = time.perf_counter() - t0
    peak = vm_hwm(proc.pid)
    pop.quit()
    proc.wait(10)
    return peak, octets, took


def _drain_retr(pop) -> int:
    """RETR 1 read line by line without keeping the lines (poplib's retr() would hold 50 MB)."""
    pop._putcmd("RETR 1")
    resp = pop._getresp()
    assert resp.startswith(b"+OK"), resp
    octets = 0
    while True:
        line, n = pop._getline()
        if line == b".":
            return octets
        octets += n


def big_retr_listen(config: Path) -> tuple[int, int, int]:
    proc, port = start(config, "listen")
    try:
        before = vm_hwm(proc.pid)
        pop = poplib.POP3("127.0.0.1", port, timeout=60)
        pop.user(BIG_USER)
        pop.pass_(PASSWORD)
        octets = _drain_retr(pop)
        pop.quit()
        return before, vm_hwm(proc.pid), octets
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--seconds", type=float, default=10.0)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--big-mb", type=int, default=50)
    ap.add_argument(
        "--dovecot-port", type=int, default=0, help="also load a Dovecot serving the same mailbox and user on this port"
    )
    ap.add_argument(
        "--dovecot",
        action="store_true",
        help="start Debian's Dovecot over the same tree (tests/bench/dovecot_side.py) and load it too",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="with a Dovecot: alternating rounds of SECONDS/2 each per server (default 5)",
    )
    ap.add_argument("--processes", type=int, default=1, help="pop3d.processes for listening mode (0: one per CPU)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree")
    a = ap.parse_args()
    os.environ["POP3D_PROCESSES"] = str(a.processes)
    root = Path(tempfile.mkdtemp(prefix="pop3bench-"))
    try:
        t0 = time.time()
        config = make_tree(root, a.messages, a.big_mb)
        print(f"tree: {root} ({a.messages} messages, {a.big_mb} MB message) made in {time.time() - t0:.1f}s")
        dovecot = None
        if a.dovecot:
            a.dovecot_port = free_port()
            dovecot = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "bench" / "dovecot_side.py"),
                    str(root),
                    str(a.dovecot_port),
                    str(free_port()),
                ]
            )
            wait_port(a.dovecot_port)
        for mode in ("listen", "inetd"):
            proc, port = start(config, mode)
            try:
                for clients in (1, 8):
                    print(f"pypop {mode:6s} clients={clients}: {load(port, clients, a.seconds)}")
                if mode == "listen":
                    print(
                        f"pypop {mode:6s} clients=8, one mailbox: {load(port, 8, a.seconds, same_user=True)}"
                        "  (most sessions get -ERR [IN-USE]: the maildrop lock)"
                    )
                if mode == "listen":
                    ms, count = list_time(port)
                    print(f"pypop {mode:6s} LIST of {count} messages: {ms:.2f} ms (median of 50, round trip)")
            finally:
                stop(proc)
        if a.dovecot_port:
            proc, port = start(config, "listen")
            try:
                for clients in (1, 8):
                    side_by_side(port, a.dovecot_port, clients, a.seconds / 2, a.rounds)
            finally:
                stop(proc)
            print(f"dovecot        clients=8, one mailbox: {load(a.dovecot_port, 8, a.seconds, same_user=True)}")
            ms, count = list_time(a.dovecot_port)
            print(f"dovecot        LIST of {count} messages: {ms:.2f} ms")
        if dovecot is not None:
            dovecot.terminate()
            dovecot.wait()
        peak, octets, took = big_retr_inetd(config)
        print(f"pypop inetd  RETR of {octets / 1e6:.1f} MB: peak memory (VmHWM) {peak} MB, {took:.2f}s")
        before, after, octets = big_retr_listen(config)
        print(f"pypop listen RETR of {octets / 1e6:.1f} MB: server VmHWM {before} MB before, {after} MB after")
    finally:
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
