#!/usr/bin/env python3
"""Login-heavy IMAP stress, pymail against Dovecot (a script that prints numbers, not a test).

::

    python3 tests/bench/auth_bench.py [-t 10] [--rounds 3] [--clients 8] [--cost 10]

Phones and desktop clients log in many times an hour, so with bcrypt the
password check dominates a short session.  This bench starts
``pyimap.imapd --listen`` (default config: the auth cache on) and Debian's
Dovecot (``tests/bench/dovecot_side.py``, default settings: no auth cache)
over the same tree and the same users file, every user with a bcrypt
(``{BLF-CRYPT}``) hash of cost ``--cost``, the same on both sides.  Each of
``--clients`` processes, one user each, loops: connect, LOGIN, 2-6 random
commands (NOOP, SELECT, STATUS, FETCH, SEARCH, LIST, CAPABILITY), LOGOUT.
Rounds alternate pymail and Dovecot (``--rounds`` each, ``-t`` seconds
each); it prints commands/s per round, the medians and the ratio.
``--no-cache`` runs pymail with ``auth.cache_size = 0`` for comparison.
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing as mp
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_bench import REPO, env, fill, free_port, stop, wait_port  # noqa: E402

PASSWORD = "bench-pass"


def user(i: int) -> str:
    return f"user{i}@example.test"


def make_tree(root: Path, clients: int, cost: int, cache: bool) -> Path:
    from passlib.hash import bcrypt

    (root / "mail").mkdir(parents=True)
    (root / "queue").mkdir()
    lines = [f"{user(i)}:{{BLF-CRYPT}}{bcrypt.using(rounds=cost).hash(PASSWORD)}::::::\n" for i in range(clients)]
    (root / "users").write_text("".join(lines))
    for i in range(clients):
        fill(root / "mail" / "example.test" / f"user{i}", 20)
    cfg = root / "pymail.toml"
    cfg.write_text(
        f'hostname = "bench.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n'
        f"[auth]\nfailure_delay = 0.0\n" + ("" if cache else "cache_size = 0\n")
    )
    return cfg


COMMANDS = [
    lambda m: m.noop(),
    lambda m: m.select("INBOX"),
    lambda m: m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)"),
    lambda m: m.list('""', "*"),
    lambda m: m.capability(),
    lambda m: (m.select("INBOX"), m.fetch("1:5", "(FLAGS RFC822.SIZE)"))[-1],
    lambda m: (m.select("INBOX"), m.uid("SEARCH", "ALL"))[-1],
]


def worker(port: int, name: str, deadline: float, seed: int, q) -> None:
    rnd = random.Random(seed)
    done = errors = 0
    while time.time() < deadline:
        try:
            m = imaplib.IMAP4("127.0.0.1", port, timeout=60)
            typ, _ = m.login(name, PASSWORD)
            if typ != "OK":
                raise RuntimeError("LOGIN refused")
            done += 1
            for _ in range(rnd.randint(2, 6)):
                rnd.choice(COMMANDS)(m)
                done += 1
            m.logout()
            done += 1
        except Exception:
            errors += 1
    q.put((done, errors))


def load(port: int, clients: int, seconds: float) -> tuple[float, int]:
    q: mp.Queue = mp.Queue()
    deadline = time.time() + seconds
    procs = [mp.Process(target=worker, args=(port, user(i), deadline, i, q)) for i in range(clients)]
    start = time.time()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.time() - start
    return sum(r[0] for r in results) / elapsed, sum(r[1] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cost", type=int, default=10, help="bcrypt cost for every user, both sides (default 10)")
    ap.add_argument("--no-cache", action="store_true", help="pymail with auth.cache_size = 0")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="authbench-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        cfg = make_tree(root, a.clients, a.cost, not a.no_cache)
        logf = open(root / "imapd.log", "w")
        port = free_port()
        ours = subprocess.Popen(
            [sys.executable, "-m", "pyimap.imapd", "-C", str(cfg), "--listen", f"127.0.0.1:{port}"],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=logf,
        )
        dport = free_port()
        dovecot = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "bench" / "dovecot_side.py"),
                str(root),
                str(free_port()),
                str(dport),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
            wait_port(dport)
            print(
                f"{a.clients} clients, one user each, bcrypt cost {a.cost} on both sides; "
                f"pymail auth cache {'off' if a.no_cache else 'on (default)'}; Dovecot default (no auth cache)"
            )
            rates: dict[str, list[float]] = {"pymail": [], "dovecot": []}
            for r in range(a.rounds):
                for name, p in (("pymail", port), ("dovecot", dport)):
                    rate, errors = load(p, a.clients, a.seconds)
                    rates[name].append(rate)
                    print(f"round {r + 1} {name:8} {rate:8.1f} commands/s  (errors {errors})", flush=True)
            ours_m, dove_m = statistics.median(rates["pymail"]), statistics.median(rates["dovecot"])
            print(f"median   pymail {ours_m:.1f}  dovecot {dove_m:.1f}  ratio {ours_m / dove_m:.2f}")
        finally:
            stop(ours)
            stop(dovecot)


if __name__ == "__main__":
    main()
