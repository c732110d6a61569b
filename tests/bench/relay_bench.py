"""Relay benchmark: messages per second from our queue to a local SMTP sink (a script, not a test).

::

    python3 tests/bench/relay_bench.py [-n 5000] [--destinations 10] [--size 600]
                                       [--concurrency 20] [--dest-concurrency 4]
                                       [--cache 5] [--keep]

Builds a throwaway pymail tree, fills its queue with ``-n`` small messages
spread over ``--destinations`` remote domains d0.bench .. d9.bench, each
routed by the transport map to a distinct next hop 127.0.0.(i+1):PORT where
one Postfix ``smtp-sink`` listens (so the runner sees 10 destinations, each
with its own concurrency slot and connection cache), then starts
``pymta.qrunner`` and measures the time until the queue is empty.

Prints: messages, wall time, messages/second, and what the sink counted.
Goal: >= 500 small messages/second with 10 concurrent destinations.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""  # a tree only root can reach
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--destinations", type=int, default=10)
    ap.add_argument("--size", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--dest-concurrency", type=int, default=4)
    ap.add_argument(
        "--cache", type=float, default=5.0, help="relay.connection_cache_time (0: a connection per message)"
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not shutil.which("smtp-sink"):
        print("smtp-sink (Debian's postfix package) is needed", file=sys.stderr)
        return 1
    from pymta.queue import Queue

    root = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    port = free_port()
    sink_log = open(root / "sink.log", "wb")
    # -c: count, -C: no ESMTP disabled; -u needed as root; -m: concurrency; backlog 256
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-c", "-m", "500", f"0.0.0.0:{port}", "256"],
        stdout=sink_log,
        stderr=subprocess.STDOUT,
    )
    transport = ", ".join(f'"d{i}.bench" = "[127.0.0.{i + 1}]:{port}"' for i in range(args.destinations))
    (root / "pymail.toml").write_text(
        f'hostname = "bench.test"\ndomains = ["local.test"]\nroot = "{root}"\n'
        f"{AS_ROOT}"
        f'[relay]\ntransport_map = {{ {transport} }}\ntls = "none"\nconnection_cache_time = {args.cache}\n'
        f"[qrunner]\nconcurrency = {args.concurrency}\ndestination_concurrency = {args.dest_concurrency}\n"
        f"scan_interval = 1.0\n"
    )
    q = Queue(root / "queue")
    q.create()
    body = b"x" * 70 + b"\n"
    t0 = time.time()
    for i in range(args.n):
        msg = (
            f"From: a@local.test\nTo: r{i}@d{i % args.destinations}.bench\nSubject: bench {i}\n"
            f"Message-ID: <{i}@local.test>\n\n"
        ).encode()
        msg += body * max(1, (args.size - len(msg)) // len(body))
        q.enqueue("a@local.test", [f"r{i}@d{i % args.destinations}.bench"], msg)
    t_enqueue = time.time() - t0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    err = open(root / "qrunner.log", "wb")
    start = time.time()
    runner = subprocess.Popen(
        [sys.executable, "-m", "pymta.qrunner", "-C", str(root / "pymail.toml")], env=env, stderr=err
    )
    try:
        while True:
            left = [p for sub in ("new", "deferred") for p in (root / "queue" / sub).rglob("*") if p.is_file()]
            if not left:
                break
            if time.time() - start > 600 or runner.poll() is not None:
                print(f"gave up: {len(left)} entries left", file=sys.stderr)
                break
            time.sleep(0.02)
        elapsed = time.time() - start
    finally:
        runner.terminate()
        runner.wait(10)
        sink.terminate()
        sink.wait(10)
        err.close()
        sink_log.close()
    log = (root / "qrunner.log").read_text(errors="replace")
    sent = log.count("status=sent")
    deferred = log.count("status=deferred")
    print(f"messages:        {args.n} ({args.size} bytes, {args.destinations} destinations)")
    print(f"enqueue:         {args.n / t_enqueue:.0f} msg/s (fsynced queue commits, for reference)")
    print(f"relay wall time: {elapsed:.2f} s")
    print(f"relayed:         {sent / elapsed:.0f} msg/s  (sent={sent}, deferred={deferred})")
    print(
        f"settings:        concurrency={args.concurrency}, destination_concurrency={args.dest_concurrency}, "
        f"connection_cache_time={args.cache}"
    )
    if deferred:
        print("\n".join([line for line in log.splitlines() if "deferred" in line][:5]))
    if args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
