"""Many IDLE clients: pymail's imapd with its default config, and Debian's Dovecot, side by side.

::

    python3 tests/bench/idle_bench.py [-n 10000] [--users 100] [--hold 20] [--dovecot] [--rounds 1]

Builds a tree with ``--users`` users ({PLAIN} passwords, so logins cost the
same on both sides), starts pymail's smtpd and queue runner (they deliver
the test messages) and ``pyimap.imapd --listen`` with the default [imapd]
settings, and runs the yardstick ``../shared/bench/idle_scale.py``: N
sessions doing LOGIN, SELECT INBOX, IDLE, spread over the users and over
127.0.x.y, then the server's CPU and RSS at rest, then one message per user
and the delay until every session saw EXISTS.  With ``--dovecot`` the same
is measured against Dovecot (``dovecot_side.py``) over the same tree, the
messages still delivered by pymail.  The open-files limit is raised to the
hard one for everything started here.  A script that prints numbers, not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
YARDSTICK = REPO.parent / "shared" / "bench" / "idle_scale.py"
PASSWORD = "idle-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout=20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")


def make_tree(root: Path, users: int) -> Path:
    (root / "mail").mkdir(parents=True)
    (root / "users").write_text("".join(f"user{i}@example.test:{{PLAIN}}{PASSWORD}::::::\n" for i in range(users)))
    (root / "aliases").write_text("")
    as_root = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""
    cfg = root / "pymail.toml"
    cfg.write_text(
        f'hostname = "bench.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n{as_root}'
        "[auth]\nallow_plain_scheme = true\nfailure_delay = 0.0\n[checks]\nenabled = false\n"
    )
    sys.path.insert(0, str(REPO))
    from pymta.queue import Queue  # noqa: PLC0415 after the path

    Queue(root / "queue").create()
    return cfg


def start(argv: list[str], log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scale(imap_port: int, smtp_port: int, users: int, n: int, hold: float, match: str) -> str:
    spec = ",".join(f"user{i}@example.test:{PASSWORD}" for i in range(users))
    r = subprocess.run(
        [sys.executable, str(YARDSTICK), "127.0.0.1", str(imap_port), str(smtp_port), spec, str(n)]
        + ["--hold", str(hold), "--server-match", match],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return (r.stdout + r.stderr).strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--hold", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"open files limit {hard}; inotify max_user_instances/watches:", end=" ")
    print(*(Path(f"/proc/sys/fs/inotify/{k}").read_text().strip() for k in ("max_user_instances", "max_user_watches")))
    root = Path(tempfile.mkdtemp(prefix="idlebench-"))
    cfg = make_tree(root, a.users)
    log = open(root / "daemons.log", "wb")
    smtp_port, imap_port, dovecot_port = free_port(), free_port(), free_port()
    prog = [sys.executable, "-m"]
    smtpd = start(prog + ["pymta.smtpd", "-C", str(cfg), "--listen", f"127.0.0.1:{smtp_port}"], log)
    qrunner = start(prog + ["pymta.qrunner", "-C", str(cfg)], log)
    try:
        wait_port(smtp_port)
        for r in range(a.rounds):
            imapd = start(prog + ["pyimap.imapd", "-C", str(cfg), "--listen", f"127.0.0.1:{imap_port}"], log)
            wait_port(imap_port)
            print(
                f"[round {r + 1} pymail] "
                + scale(imap_port, smtp_port, a.users, a.n, a.hold, "pyimap.imapd").replace("\n", "\n    "),
                flush=True,
            )
            stop(imapd)
            if a.dovecot:
                dovecot = start(
                    [sys.executable, str(REPO / "tests/bench/dovecot_side.py"), str(root), "0", str(dovecot_port)], log
                )
                wait_port(dovecot_port)
                print(
                    f"[round {r + 1} dovecot] "
                    + scale(dovecot_port, smtp_port, a.users, a.n, a.hold, "dovecot").replace("\n", "\n    "),
                    flush=True,
                )
                stop(dovecot)
    finally:
        stop(smtpd)
        stop(qrunner)
        log.close()
        if a.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
