"""Backlog drain benchmark: how fast the queue runner empties a full queue,
side by side with Postfix (a script that prints numbers, not a test).

::

    python3 tests/bench/drain_bench.py [-n 8000] [-c 20] [--size 1024] [--rounds 3] [--settle 60]
                                       [--config-extra TOML]

Each round fills two queues with the same ``smtp-source`` load (one
connection per message) while nothing delivers, then times the drain to
the Maildir:

* ``pymail`` -- ``pymta.smtpd --listen`` takes the mail and stops; then
  ``pymta.qrunner`` starts and the clock runs from its start until all N
  messages are files in ``mail/example.test/alice/new``;
* ``postfix`` -- a private Postfix (``postfix_side.py``, needs root) takes
  the mail with its queue manager switched off
  (``master_service_disable = qmgr.unix``: the messages wait in
  ``incoming/``, as pymail's wait in ``new/``, and ``in_flow_delay = 0``,
  since no queue manager hands out the tokens cleanup would wait for);
  then the parameter is
  cleared and Postfix reloaded, and the clock runs from the reload until
  all N messages are in the same Maildir, delivered by virtual(8).

Both start from a settled file system (``--settle``, see smtp_bench.py).
It prints per round the drain rate of each side, the CPU each spent per
message while draining (pymail: the runner and every process under it;
Postfix: the master and every process under it), the ratio pymail/Postfix
per round and its median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import smtp_bench as sb  # noqa: E402 the bench's own helpers
from postfix_side import PostfixSide  # noqa: E402


def fill(tree, port: int, proc, errfile: Path, args, procs, smtp_source: str) -> None:
    sb.wait_port(port, proc, errfile, args.start_timeout)
    time.sleep(0.3)
    src_err = tree.root / "smtp-source.stderr"
    _took, rc = sb.run_smtp_source(smtp_source, port, args, args.n, procs, src_err)
    if rc != 0:
        raise sb.Failure(f"smtp-source exited {rc}: {sb.tail(src_err, 5)}")


def drain_pymail(args, workdir: Path, run: int, smtp_source: str) -> tuple[float, float]:
    tree = sb.Tree(workdir / f"pymail-{run}", args.config_extra)
    procs = sb.Procs()
    port = sb.free_port()
    try:
        err = tree.root / "smtpd.stderr"
        smtpd = procs.start("smtpd", tree.program("pymta.smtpd", "--listen", f"127.0.0.1:{port}"), err)
        fill(tree, port, smtpd, err, args, procs, smtp_source)
        procs.stop(smtpd)
        procs.procs.clear()
        print(f"[pymail] {args.n} queued; file creation {sb.settle(workdir, args.settle):.0f} us")
        t0 = time.perf_counter()
        runner = procs.start("qrunner", tree.program("pymta.qrunner"), tree.root / "qrunner.stderr")
        took, got = sb.wait_delivery(tree, args.n, t0, args.stall, procs)
        user, system = sb.cpu_seconds(runner.pid)
        if took is None:
            procs.report()
            raise sb.Failure(f"pymail: only {got} of {args.n} delivered")
        return took, (user + system) / args.n * 1000
    finally:
        procs.stop_all()


def drain_postfix(args, workdir: Path, run: int, smtp_source: str) -> tuple[float, float]:
    tree = sb.Tree(workdir / f"postfix-{run}")
    procs = sb.Procs()
    port = sb.free_port()
    # in_flow_delay: without a queue manager handing out tokens, cleanup would wait a second per message
    anchor = PostfixSide(tree.root, port, main_cf="master_service_disable = qmgr.unix\nin_flow_delay = 0\n")
    try:
        anchor.start()
        waiter = procs.start("postfix-wait", ["sleep", "infinity"], None)
        fill(tree, port, waiter, anchor.pfx / "postfix.log", args, procs, smtp_source)
        incoming = sb.count_files(anchor.pfx / "queue" / "incoming")
        if incoming < args.n or sb.count_files(tree.maildir_new):
            raise sb.Failure(f"postfix: {incoming} of {args.n} waiting in incoming/, some delivered already")
        print(f"[postfix] {args.n} queued; file creation {sb.settle(workdir, args.settle):.0f} us")
        master = anchor.master_pid()
        before = sb.cpu_seconds(master) if master else (0.0, 0.0)
        t0 = time.perf_counter()
        anchor.set("master_service_disable", "")
        took, got = sb.wait_delivery(tree, args.n, t0, args.stall, procs)
        after = sb.cpu_seconds(master) if master else (0.0, 0.0)
        if took is None:
            raise sb.Failure(f"postfix: only {got} of {args.n} delivered\n{anchor.log_tail()}")
        return took, (after[0] - before[0] + after[1] - before[1]) / args.n * 1000
    finally:
        anchor.stop()
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=8000, help="messages queued before each drain (default 8000)")
    parser.add_argument("-c", "--concurrency", type=int, default=20, help="smtp-source sessions while filling")
    parser.add_argument("--size", type=int, default=1024, help="message payload in octets (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each pymail then Postfix (default 3)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for a settled file system")
    parser.add_argument("--stall", type=float, default=30.0, help="give up after this many seconds without progress")
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds a daemon may take to start")
    parser.add_argument("--send-timeout", type=float, default=None, help="limit for one smtp-source run")
    parser.add_argument("--config-extra", default="", help="TOML lines added to pymail's config (after [smtpd])")
    parser.add_argument("--dir", default="/var/tmp", help="where to make the temporary trees (disk-backed)")
    args = parser.parse_args(argv)
    smtp_source = sb.find_smtp_source()
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="pymail-drain-", dir=args.dir))
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for run in range(args.rounds):
            took, cpu = drain_pymail(args, workdir, run, smtp_source)
            ours.append(args.n / took)
            print(f"[pymail]  drained in {took:.2f}s -> {args.n / took:.0f}/s; CPU {cpu:.2f} ms/msg")
            took, cpu = drain_postfix(args, workdir, run, smtp_source)
            theirs.append(args.n / took)
            print(f"[postfix] drained in {took:.2f}s -> {args.n / took:.0f}/s; CPU {cpu:.2f} ms/msg")
    except sb.Failure as exc:
        print(f"failed: {exc}")
        return 1
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"drain/s pymail {' '.join(f'{r:.0f}' for r in ours)}; Postfix {' '.join(f'{r:.0f}' for r in theirs)}\n"
        f"per-round ratios pymail/Postfix: {' '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
