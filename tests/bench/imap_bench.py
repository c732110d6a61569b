"""IMAP benchmark for pyimap-imapd (a script that prints numbers, not a test).

::

    python3 tests/bench/imap_bench.py [-t 10] [--big 100000] [--fetch 10000] [--skip-load]

1. Session load: fills an INBOX with 1,000 messages of ~1.5 KB (sender
   "load", as in the reference runs) and runs the yardstick
   ``../shared/bench/imap_load.py`` with 1 and 8 clients against
   ``pyimap.imapd --listen`` (one asyncio process) and against
   ``systemd-socket-activate --inetd -a`` (one process per connection).
   ``--dovecot`` runs only this load, against Debian's Dovecot over the same tree and
   users file, in alternating rounds, with medians and the ratio.
2. SELECT of a folder of ``--big`` messages: first time (index built by
   listing cur/) and second time (index read back).  Goal: < 1 s after the first.
3. FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE) of ``--fetch`` messages, cold and warm.
   Goal: < 2 s.
4. 50 MB APPEND: the listening daemon's peak RSS (VmHWM).  Goal: < 40 MB.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
YARDSTICK = REPO.parent / "shared" / "bench" / "imap_load.py"
USER, PASSWORD = "alice@example.test", "bench-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout=15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def make_tree(root: Path, processes: int = 1) -> Path:
    from passlib.hash import bcrypt

    (root / "mail").mkdir(parents=True)
    (root / "queue").mkdir()
    (root / "users").write_text(f"{USER}:{{BLF-CRYPT}}{bcrypt.using(rounds=4).hash(PASSWORD)}::::::\n")
    cfg = root / "pymail.toml"
    cfg.write_text(
        f'hostname = "bench.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n'
        f"[auth]\nfailure_delay = 0.0\n[imapd]\nprocesses = {processes}\n"
    )
    return cfg


def fill(box: Path, n: int, *, fast_names=False) -> None:
    from pymda import maildir

    maildir.ensure_maildir(box)
    body = "".join(f"Line {i} of a load test message, long enough to look like text.\n" for i in range(20))
    for i in range(n):
        data = (
            f"From: Load Tester <load{i % 7}@example.org>\nTo: {USER}\nSubject: load message {i}\n"
            f"Date: Tue, 02 Jan 2024 10:00:00 +0000\nMessage-ID: <load{i}@example.org>\n\n{body}"
        ).encode()
        if fast_names:
            wsize = len(data) + data.count(b"\n")
            (box / "cur" / f"{1700000000 + i}.M{i}P1Q1.bench,S={len(data)},W={wsize}:2,").write_bytes(data)
        else:
            maildir.deliver(box, data, fsync=False)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start(cfg: Path, mode: str, logf) -> tuple[subprocess.Popen, int]:
    port = free_port()
    prog = [sys.executable, "-m", "pyimap.imapd", "-C", str(cfg)]
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
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=logf)
    wait_port(port)
    return proc, port


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(port: int, clients: int, seconds: float) -> str:
    r = subprocess.run(
        [
            sys.executable,
            str(YARDSTICK),
            "127.0.0.1",
            str(port),
            USER,
            PASSWORD,
            "-c",
            str(clients),
            "-t",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 60,
    )
    return (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]


def tree_cpu(root_pid: int) -> float:
    """CPU seconds (user+sys) of a process and its descendants, living ones
    and those already reaped (their parents' cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text.rpartition(")")[2].split()
            stats[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(child for child, (ppid, _) in stats.items() if ppid == pid)
    return total / tick


def side_by_side(a) -> None:
    """The yardstick against pymail (listening, the default processes) and
    Dovecot (its defaults), same tree, same {BLF-CRYPT} users file."""
    import statistics

    root = Path(tempfile.mkdtemp(prefix="imapbench-", dir="/var/tmp"))
    cfg = make_tree(root, a.processes)
    fill(root / "mail" / "example.test" / "alice", 1000)
    logf = open(root / "imapd.log", "wb")
    proc, port = start(cfg, "listen", logf)
    dport = free_port()
    dovecot = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "bench" / "dovecot_side.py"), str(root), str(free_port()), str(dport)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(dport)
        print(
            f"yardstick {YARDSTICK.name}, 1,000-message INBOX, {a.seconds:g} s a round; pymail listening "
            f"(imapd.processes = {a.processes}), Dovecot with its defaults",
            flush=True,
        )
        for clients in (1, 8):
            rates: dict[str, list[float]] = {"pymail": [], "dovecot": []}
            cpus: dict[str, list[float]] = {"pymail": [], "dovecot": []}
            for r in range(a.rounds):
                for name, p, pid in (("pymail", port, proc.pid), ("dovecot", dport, dovecot.pid)):
                    before = tree_cpu(pid)
                    line = load(p, clients, a.seconds)
                    used = tree_cpu(pid) - before
                    match = re.search(r"sessions_per_s=([0-9.]+)", line)
                    done = re.search(r"sessions=([0-9]+)", line)
                    rates[name].append(float(match.group(1)) if match else 0.0)
                    sessions = int(done.group(1)) if done else 0
                    cpus[name].append(used / sessions * 1000 if sessions else 0.0)
                    print(
                        f"clients={clients} round {r + 1} {name:8} {line} "
                        f"server_cpu_ms_per_session={cpus[name][-1]:.2f}",
                        flush=True,
                    )
            ours, theirs = statistics.median(rates["pymail"]), statistics.median(rates["dovecot"])
            print(
                f"clients={clients} median pymail {ours:.1f} dovecot {theirs:.1f} sessions/s, "
                f"ratio {ours / theirs if theirs else float('nan'):.2f}; server CPU per session "
                f"pymail {statistics.median(cpus['pymail']):.2f} ms, "
                f"dovecot {statistics.median(cpus['dovecot']):.2f} ms",
                flush=True,
            )
    finally:
        stop(proc)
        stop(dovecot)
        logf.close()
        shutil.rmtree(root, ignore_errors=True)


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--seconds", type=float, default=10.0)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--fetch", type=int, default=10_000)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--processes", type=int, default=0, help="imapd.processes for the listening daemon (default 0: one per CPU)"
    )
    ap.add_argument(
        "--dovecot",
        action="store_true",
        help="only the session load, side by side with Debian's Dovecot over the same tree and users file "
        "(tests/bench/dovecot_side.py): alternating rounds, medians and the ratio",
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --dovecot: rounds per server and client count")
    a = ap.parse_args()
    if a.dovecot:
        side_by_side(a)
        return
    root = Path(tempfile.mkdtemp(prefix="imapbench-"))
    cfg = make_tree(root, a.processes)
    home = root / "mail" / "example.test" / "alice"
    logf = open(root / "imapd.log", "wb")
    try:
        if not a.skip_load:
            fill(home, 1000)
            for mode in ("listen", "inetd"):
                proc, port = start(cfg, mode, logf)
                for clients in (1, 8):
                    print(f"[{mode:6}] {load(port, clients, a.seconds)}", flush=True)
                stop(proc)
        proc, port = start(cfg, "listen", logf)
        for name, n in (("Big", a.big), ("Fetch", a.fetch)):
            box = home / f".{name}"
            fill(box, n, fast_names=True)
            (box / "maildirfolder").touch()
        m = imaplib.IMAP4("127.0.0.1", port, timeout=600)
        m.login(USER, PASSWORD)
        for label in ("first", "second", "third"):
            dt, (typ, data) = timed(lambda: m.select("Big"))
            print(f"SELECT of {int(data[0])} messages ({label} time): {dt:.3f} s", flush=True)
        m.select("Fetch")
        for label in ("cold", "warm"):
            dt, (typ, data) = timed(lambda: m.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)"))
            print(f"FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE) of {len(data)} messages ({label}): {dt:.3f} s", flush=True)
        m.logout()
        stop(proc)
        # inetd: a fresh process per connection pays for reading the index itself
        proc, port = start(cfg, "inetd", logf)
        m = imaplib.IMAP4("127.0.0.1", port, timeout=600)
        m.login(USER, PASSWORD)
        dt, (typ, data) = timed(lambda: m.select("Big"))
        print(f"SELECT of {int(data[0])} messages (inetd, new process): {dt:.3f} s", flush=True)
        dt, (typ, data) = timed(lambda: (m.select("Fetch"), m.fetch("1:*", "(FLAGS RFC822.SIZE ENVELOPE)"))[1])
        print(f"SELECT + FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE) of {len(data)} (inetd, new process): {dt:.3f} s")
        m.logout()
        stop(proc)
        proc, port = start(cfg, "listen", logf)
        m = imaplib.IMAP4("127.0.0.1", port, timeout=600)
        m.login(USER, PASSWORD)
        big = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (50 * 1024 * 1024 // 78)
        dt, _ = timed(lambda: m.append("INBOX", None, None, big))
        hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text()).group(1)
        print(f"APPEND of {len(big) / 1e6:.1f} MB: {dt:.2f} s, daemon peak RSS {int(hwm) / 1024:.1f} MB")
        m.logout()
        stop(proc)
    finally:
        logf.close()
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
