"""Local delivery benchmark for pymda-deliver (a script that prints numbers, not a test).

::

    python3 tests/bench/deliver_bench.py [-n 300] [--inproc-n 3000] [--size 2048] [--keep]

Builds a throwaway pymail tree with two users: ``plain`` (no rules file) and
``rules`` (a 50-recipe ``.procmailrc`` whose last recipe matches, so every
condition is evaluated), and measures deliveries per second:

* ``exec``    -- ``bin/pymda-deliver -d USER -f SENDER < message``, one process
  per message, the way Postfix's ``mailbox_command`` or the qrunner's
  ``deliver.mode = "exec"`` run it;
* ``inproc``  -- ``pymda.deliver.deliver_message`` called in a loop, the way
  the qrunner delivers in its default ``deliver.mode = "inprocess"``;
* ``bare``    -- ``python3 -c pass`` per message: the start-up yardstick.  The
  table shows the start-up ratio exec / bare (goal <= 2.0).

Every delivery fsyncs the message and its directory (the Maildir contract),
so the figures depend on the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))


def message(size: int) -> bytes:
    head = (
        b"From: Carol <carol@remote.example>\nTo: someone@example.test\nSubject: benchmark message\n"
        b"Message-ID: <bench@remote.example>\nList-Id: <bench.lists.example.org>\n\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again.\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rules_50() -> str:
    out = ["# 50 recipes; only the last one matches"]
    for i in range(49):
        out.append(f":0\n* ^Subject:.*never-{i}\\>\n* ! ^From:.*nobody-{i}@\n.Folder{i}/\n")
    out.append(":0\n* ^List-Id:.*<\\/[a-z]+\n.Lists.$MATCH/\n")
    return "\n".join(out)


def build(root: Path) -> Path:
    from pymta.queue import Queue

    (root / "mail").mkdir(parents=True)
    Queue(root / "queue").create()
    (root / "pymail.toml").write_text(f'hostname = "bench.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n')
    (root / "users").write_text("plain@example.test:{PLAIN}x::::::\nrules@example.test:{PLAIN}x::::::\n")
    rules_home = root / "mail" / "example.test" / "rules"
    rules_home.mkdir(parents=True)
    (rules_home / ".procmailrc").write_text(rules_50())
    return root / "pymail.toml"


def count(folder: Path) -> int:
    new = folder / "new"
    return len(os.listdir(new)) if new.is_dir() else 0


def time_processes(argv: list[str], n: int, data: bytes | None, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the children) for n runs."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for _ in range(n):
        proc = subprocess.run(argv, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr.decode()}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_inproc(cfg, users, data: bytes, n: int, deliver_message) -> list:
    rows = []
    for user in ("plain", "rules"):
        rcpt = f"{user}@example.test"
        deliver_message(cfg, users, rcpt, [data], "carol@remote.example")  # warm up
        cpu0 = time.process_time()
        start = time.perf_counter()
        for _ in range(n):
            deliver_message(cfg, users, rcpt, [data], "carol@remote.example")
        t = time.perf_counter() - start
        rows.append(
            (
                f"inproc: {'INBOX, no rules' if user == 'plain' else '50-recipe rules'}",
                n,
                (t, time.process_time() - cpu0),
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="messages per process-per-message run")
    ap.add_argument("--inproc-n", type=int, default=3000, help="messages per in-process run")
    ap.add_argument("--size", type=int, default=2048, help="message size in bytes")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="deliver-bench-"))
    try:
        conf = build(root)
        data = message(args.size)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PYMAIL_DEBUG", None)
        mail = root / "mail" / "example.test"
        rows = []

        bare = time_processes([sys.executable, "-c", "pass"], args.n, None, env)
        rows.append(("bare python3 -c pass", args.n, bare))
        prog = [
            sys.executable,
            str(REPO / "bin" / "pymda-deliver"),
            "-C",
            str(conf),
            "-f",
            "carol@remote.example",
            "-d",
        ]
        for user in ("plain", "rules"):
            t = time_processes(prog + [f"{user}@example.test"], args.n, data, env)
            rows.append((f"exec: {'INBOX, no rules' if user == 'plain' else '50-recipe rules'}", args.n, t))

        from pymda.deliver import deliver_message
        from pymta.lib import config
        from pymta.lib.users import UsersFile

        cfg = config.load(conf)
        users = UsersFile(cfg.path_of("users"))
        saved_stderr = sys.stderr
        sys.stderr = open(os.devnull, "w")  # one log line per delivery would dominate
        try:
            inproc = run_inproc(cfg, users, data, args.inproc_n, deliver_message)
        finally:
            sys.stderr.close()
            sys.stderr = saved_stderr
        rows.extend(inproc)

        assert count(mail / "plain") == args.n + args.inproc_n + 1, count(mail / "plain")
        assert count(mail / "rules" / ".Lists.bench") == args.n + args.inproc_n + 1

        print(f"message size {len(data)} bytes; python {sys.version.split()[0]}")
        print(f"{'run':<34} {'msgs':>6} {'seconds':>8} {'msgs/s':>9} {'ms/msg':>8} {'cpu ms/msg':>11}")
        for name, n, (t, cpu) in rows:
            print(f"{name:<34} {n:>6} {t:>8.2f} {n / t:>9.1f} {1000 * t / n:>8.2f} {1000 * cpu / n:>11.2f}")
        per_bare, cpu_bare = bare[0] / args.n, bare[1] / args.n
        for name, n, (t, cpu) in rows[1:3]:
            print(
                f"start-up ratio {name.split(': ')[1]:<20} wall {t / n / per_bare:.2f}, cpu {cpu / n / cpu_bare:.2f}"
                " x bare python (goal <= 2.0)"
            )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
