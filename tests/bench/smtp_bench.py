"""SMTP throughput benchmark for pymta-smtpd (a script that prints numbers, not a test).

::

    python3 tests/bench/smtp_bench.py [-n 5000] [-c 20] [--size 1024]
                                      [--modes listen,inetd,bare] [--inetd-n 500] [--keep]
                                      [--repeat R] [--settle S] [--config-extra TOML]

For each mode it builds a throwaway pymail tree, starts the daemons, loads
them with Postfix's ``smtp-source`` (one connection per message: no ``-d``)
and measures:

* accepted/s  -- messages / wall time of the smtp-source run (each ``250``
  after DATA means the message is fsynced in the queue);
* delivered/s -- messages / time from the start of sending until all of them
  are files in ``mail/example.test/alice/new`` (the qrunner running alongside).

Modes:

* ``listen`` -- ``pymta.smtpd --listen`` (one asyncio process) + ``pymta.qrunner``;
* ``inetd``  -- ``systemd-socket-activate --inetd -a`` starts one
  ``pymta.smtpd`` process per connection (+ ``pymta.qrunner``);
* ``postfix`` -- the anchor: a private Postfix (``tests/bench/postfix_side.py``,
  needs root) over the same kind of tree, delivering with virtual(8) into
  the same Maildir; with ``listen`` and ``--repeat R`` the runs alternate
  and the table prints the per-round ratios pymail/Postfix and their median;
* ``checks`` / ``nochecks`` -- ``listen`` with the inbound checks on
  (SPF, DKIM, DMARC and Authentication-Results, issue 12) or off
  (``[checks] enabled = false``); both treat 127.0.0.1 as a stranger
  (``trusted_networks = []``), look up a DNS server that the bench runs on
  127.0.0.1 (``tests/fakedns.py``: SPF pass, DMARC ``p=reject``, the DKIM
  key) and send the same message, signed by pymail's DKIM signer, with
  ``smtp-source -F``.  With both and ``--repeat R`` the table prints the
  per-round ratios checks/nochecks (goal >= 0.70);
* ``bare``   -- the same socket activation around ``tests/bench/bare_responder.py``,
  a Python responder that imports only ``sys`` and ``os``: the yardstick for
  inetd mode.  The table shows the ratio pymta-inetd / bare (goal >= 0.67).

The inetd and bare modes use ``--inetd-n`` messages (each connection starts
Python).  Daemon stderr goes to files in the temporary tree; their last lines
are printed when something goes wrong.  The CPU each program used per
message is printed too (from /proc; it is less at the mercy of other load on
the machine than the rates are).  ``--profile`` runs the listening smtpd under
cProfile (main thread only), then drains the queue with ``qrunner --once``
under cProfile, and prints the top entries of both.

Each run first prints what creating a file costs right now.  This
machine's root is ext4 without a journal, whose inode allocator steps over
every inode freed in the last one to five minutes: after a test suite (or
a previous run's clean-up) deleted thousands of files, each creation costs
10 to 30 times more, and so does every message.  ``--settle S`` syncs and
waits (up to S seconds) before each run until creating is cheap again, so
that repeated runs start alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
# The bench trees are root's alone when run as root: the queue runner may then
# stay root only when the config says so (pymail-security(7)).
AS_ROOT = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""
HERE = Path(__file__).resolve().parent
DOMAIN = "example.test"
RCPT = f"alice@{DOMAIN}"
SENDER = "a@example.org"
CHECKED_DOMAIN = "bench.test"  # the sender's domain in the checks/nochecks modes
CHECKED_SENDER = f"news@{CHECKED_DOMAIN}"
LISTENING = ("listen", "checks", "nochecks")

sys.path.insert(0, str(REPO))


class Failure(Exception):
    pass


# -- helpers -----------------------------------------------------------------------


def find_smtp_source() -> str:
    found = shutil.which("smtp-source")
    if found:
        return found
    for candidate in ("/usr/sbin/smtp-source", "/usr/lib/postfix/smtp-source", "/usr/lib/postfix/sbin/smtp-source"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise Failure("smtp-source not found (Debian package: postfix)")


def find_socket_activate() -> str:
    found = shutil.which("systemd-socket-activate")
    if not found:
        raise Failure("systemd-socket-activate not found (Debian package: systemd)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def count_files(path: Path) -> int:
    try:
        return sum(1 for e in os.scandir(path) if e.is_file())
    except FileNotFoundError:
        return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU of a live process and every process under it, live or reaped, from /proc.

    Under socket activation the children are the per-connection servers; a
    listening smtpd serves in forked workers; Postfix's master has its daemons.
    """
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stats[int(entry)] = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    if pid not in stats:
        return 0.0, 0.0
    tree, grown = {pid}, True
    while grown:
        more = {p for p, fields in stats.items() if int(fields[1]) in tree and p not in tree}
        tree |= more
        grown = bool(more)
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
    user = sum(int(stats[p][11]) + int(stats[p][13]) for p in tree)
    system = sum(int(stats[p][12]) + int(stats[p][14]) for p in tree)
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


class Procs:
    """Processes started by the benchmark; each leads its own process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path | None]] = []

    def start(self, name: str, argv: list[str], errfile: Path | None, **kw) -> subprocess.Popen:
        err = open(errfile, "wb") if errfile else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                argv,
                env=env_with_repo(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                **kw,
            )
        finally:
            if errfile:
                err.close()
        self.procs.append((name, proc, errfile))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        # Sessions forked by socket activation stay in its group: end them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()

    def died(self) -> list[str]:
        """Daemons (not the load generator, which is meant to exit) that are gone."""
        return [
            f"{name} exited with {proc.returncode}"
            for name, proc, _ in self.procs
            if name != "smtp-source" and proc.poll() is not None
        ]

    def report(self, lines: int = 15) -> None:
        for name, _, errfile in self.procs:
            if errfile:
                text = tail(errfile, lines)
                print(f"--- last lines of {name} stderr ({errfile}) ---\n{text or '(empty)'}")


def wait_port(port: int, proc: subprocess.Popen, errfile: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Failure(f"daemon exited with {proc.returncode} before listening:\n{tail(errfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"port {port} not open after {timeout:g}s:\n{tail(errfile)}")


# -- the pymail tree ------------------------------------------------------------------


class Tree:
    def __init__(self, root: Path, extra: str = "") -> None:
        from passlib.hash import bcrypt

        from pymta.queue import Queue

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "pymail.toml"
        self.config.write_text(
            f'hostname = "mx.example.test"\n'
            f'domains = ["{DOMAIN}"]\n'
            f'root = "{root}"\n'
            f"{AS_ROOT}"
            f"\n[smtpd]\nmax_sessions = 1000\nprocesses = {int(os.environ.get('SMTPD_PROCESSES', '1'))}\n"
            f"{extra}"
            f"{os.environ.get('BENCH_EXTRA_CONFIG', '')}"
        )
        Queue(root / "queue").create()
        (root / "mail").mkdir(exist_ok=True)
        (root / "aliases").write_text("")
        entry = "{BLF-CRYPT}" + bcrypt.using(rounds=4).hash("s3cret-pass")
        (root / "users").write_text(f"{RCPT}:{entry}::::::\n")
        self.maildir_new = root / "mail" / DOMAIN / "alice" / "new"

    def program(self, module: str, *args: str, python: str = sys.executable, profile: Path | None = None) -> list[str]:
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        return [python, *prof, "-m", module, "-C", str(self.config), *args]

    def state_reasons(self, limit: int = 5) -> list[str]:
        """Why entries are still queued: the recipients' status lines from state/ID."""
        import json

        out = []
        for path in sorted((self.root / "queue" / "state").glob("*"))[:limit]:
            try:
                state = json.loads(path.read_bytes())
                out.extend(
                    f"{path.name}: <{r.get('to')}> {r.get('status')}: {r.get('reason')}" for r in state.get("rcpts", [])
                )
            except (OSError, ValueError, AttributeError) as exc:
                out.append(f"{path.name}: unreadable state ({exc})")
        return out

    def queue_leftovers(self) -> dict[str, int]:
        q = self.root / "queue"
        out = {}
        for sub in ("tmp", "new", "deferred", "hold", "corrupt", "state"):
            n = sum(1 for p in (q / sub).rglob("*") if p.is_file()) if (q / sub).is_dir() else 0
            if n:
                out[sub] = n
        return out


# -- the checks modes: a DNS server and a signed message ---------------------------------


class CheckedSender:
    """What the checks/nochecks modes share: a DNS server on 127.0.0.1 that
    publishes the sender domain's SPF (pass for 127.0.0.1), DMARC (p=reject)
    and DKIM key, and a message of about ``size`` octets signed with that key."""

    def __init__(self, workdir: Path, size: int) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from fakedns import FakeDNS
        from pymta import dkim_sign

        key = workdir / "dkim.key"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
            check=True,
            capture_output=True,
        )
        d = CHECKED_DOMAIN
        self.dns = FakeDNS(
            {
                f"{d}.": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
                f"_dmarc.{d}.": {"TXT": ["v=DMARC1; p=reject"]},
                f"sel._domainkey.{d}.": {"TXT": [f"v=DKIM1; k=rsa; p={dkim_sign.public_key_b64(key)}"]},
            }
        )
        line = "The quick brown fox jumps over the lazy dog, again and again.\n"
        body = (line * (size // len(line) + 1))[:size]
        text = (
            f"From: News <{CHECKED_SENDER}>\nTo: {RCPT}\nSubject: bench\n"
            f"Date: Fri, 04 Dec 2026 12:00:00 +0000\nMessage-ID: <bench@{d}>\n\n{body}"
        ).encode()
        self.message = workdir / "signed.eml"
        self.message.write_bytes(dkim_sign.sign(text, d, "sel", key.read_bytes()) + text)

    def config(self, checks: bool) -> str:
        """Lines that follow the tree's [smtpd] section."""
        return (
            "trusted_networks = []\n"
            f'[relay]\ndns_servers = ["127.0.0.1:{self.dns.port}"]\n'
            f"[checks]\nenabled = {'true' if checks else 'false'}\n"
        )

    def close(self) -> None:
        self.dns.close()


# -- one measurement --------------------------------------------------------------------


class Result:
    def __init__(self, mode: str, n: int, conc: int) -> None:
        self.mode, self.n, self.conc = mode, n, conc
        self.send_time = 0.0
        self.deliver_time: float | None = None
        self.delivered = 0
        self.problems: list[str] = []
        self.leftovers: dict[str, int] = {}
        self.cpu: dict[str, tuple[float, float]] = {}  # (user, sys) CPU seconds per program
        self.note = ""
        self.load = 0.0  # 1-minute load average when the run started

    @property
    def server_cpu_ms(self) -> float | None:
        """CPU of the server side (everything but smtp-source) per message, in ms."""
        parts = [u + s for name, (u, s) in self.cpu.items() if name != "smtp-source"]
        return sum(parts) / self.n * 1000 if parts else None

    @property
    def accepted_rate(self) -> float:
        return self.n / self.send_time if self.send_time else 0.0

    @property
    def delivered_rate(self) -> float | None:
        return self.n / self.deliver_time if self.deliver_time else None


def run_smtp_source(
    smtp_source: str, port: int, args, n: int, procs: Procs, errfile: Path, checked: CheckedSender | None = None
) -> tuple[float, int]:
    argv = [
        smtp_source,
        "-s",
        str(args.concurrency),
        "-m",
        str(n),
        *(["-F", str(checked.message)] if checked else ["-l", str(args.size)]),
        "-f",
        CHECKED_SENDER if checked else SENDER,
        "-t",
        RCPT,
        "-M",
        "client.example.org",
        f"127.0.0.1:{port}",
    ]
    t0 = time.perf_counter()
    proc = procs.start("smtp-source", argv, errfile)
    try:
        rc = proc.wait(timeout=args.send_timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise Failure(f"smtp-source did not finish within {args.send_timeout}s:\n{tail(errfile)}") from None
    return time.perf_counter() - t0, rc


def children_cpu() -> tuple[float, float]:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def wait_delivery(tree: Tree, n: int, t0: float, stall: float, procs: Procs) -> tuple[float | None, int]:
    """Seconds from t0 until N messages are in new/ (None if they never all came)."""
    last, last_change = -1, time.perf_counter()
    while True:
        got = count_files(tree.maildir_new)
        now = time.perf_counter()
        if got >= n:
            return now - t0, got
        if got != last:
            last, last_change = got, now
        elif now - last_change > stall:
            return None, got
        elif procs.died():
            # The daemons are gone: nothing more will arrive.
            return None, got
        time.sleep(0.02)


def creation_cost(workdir: Path) -> float:
    """Microseconds to create one empty file under ``workdir`` now (200 files, kept till the end).

    On ext4 without a journal (this machine's root) the inode allocator
    steps over every inode freed in the last 1 to 5 minutes, so a creation
    can cost 20 us on a quiet file system and 500 us after a test run that
    deleted thousands of files: the single largest source of noise here."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=workdir))
    t0 = time.perf_counter()
    for i in range(200):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.perf_counter() - t0) / 200 * 1e6


def settle(workdir: Path, limit: float, target: float = 60.0) -> float:
    """Flush the file system and wait (up to ``limit`` seconds) until a file creation costs under ``target`` us."""
    deadline = time.time() + limit
    while True:
        os.sync()
        cost = creation_cost(workdir)
        if cost <= target or time.time() >= deadline:
            return cost
        time.sleep(min(10.0, max(0.0, deadline - time.time())))


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def bench(
    mode: str, n: int, args, workdir: Path, smtp_source: str, run: int = 0, checked: CheckedSender | None = None
) -> Result:
    result = Result(mode, n, args.concurrency)
    result.load = load_average()
    if mode not in ("checks", "nochecks"):
        checked = None
    tree = Tree(workdir / f"{mode}-{run}", checked.config(mode == "checks") if checked else "")
    procs = Procs()
    port = free_port()
    smtpd_err = tree.root / "smtpd.stderr"
    anchor = None
    try:
        if mode == "postfix":
            from postfix_side import PostfixSide

            anchor = PostfixSide(tree.root, port)
            try:
                anchor.start()
            except RuntimeError as exc:
                raise Failure(str(exc)) from None
            smtpd = procs.start("postfix-wait", ["sleep", "infinity"], None)  # stands in for a daemon to watch
            smtpd_err = anchor.pfx / "postfix.log"
        elif mode in LISTENING:
            prof = tree.root / "smtpd.prof" if args.profile else None
            smtpd = procs.start(
                "smtpd", tree.program("pymta.smtpd", "--listen", f"127.0.0.1:{port}", profile=prof), smtpd_err
            )
        else:
            activate = [find_socket_activate(), "--inetd", "-a", "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={REPO}"]
            if mode == "inetd":
                target = tree.program("pymta.smtpd", python=args.python)
                target[1:1] = args.python_arg
            else:
                target = [args.python, *args.python_arg, str(HERE / "bare_responder.py")]
            smtpd = procs.start("socket-activate" if mode == "bare" else "smtpd", activate + target, smtpd_err)
        wait_port(port, smtpd, smtpd_err, args.start_timeout)
        # With --profile the listening run keeps the runner out of the way and
        # drains the queue afterwards with "qrunner --once" under cProfile: the
        # daemon's deliveries happen in worker threads, which cProfile misses.
        profile_once = args.profile and mode == "listen" and not args.no_qrunner
        run_qrunner = mode not in ("bare", "postfix") and not args.no_qrunner and not profile_once
        qerr = tree.root / "qrunner.stderr"
        if run_qrunner:
            qrunner = procs.start("qrunner", tree.program("pymta.qrunner"), qerr)
            deadline = time.time() + args.start_timeout
            while not (tree.root / "queue" / "wake.sock").exists():
                if qrunner.poll() is not None:
                    raise Failure(f"qrunner exited with {qrunner.returncode} at start:\n{tail(qerr)}")
                if time.time() > deadline:
                    raise Failure(f"qrunner had no wake.sock after {args.start_timeout:g}s:\n{tail(qerr)}")
                time.sleep(0.05)
        # The probe connection of wait_port may still be finishing; let it.
        time.sleep(0.3)

        t0 = time.perf_counter()
        src_err = tree.root / "smtp-source.stderr"
        before = children_cpu()
        result.send_time, rc = run_smtp_source(smtp_source, port, args, n, procs, src_err, checked)
        after = children_cpu()
        result.cpu["smtp-source"] = (after[0] - before[0], after[1] - before[1])
        if rc != 0:
            result.problems.append(f"smtp-source exited {rc}: {tail(src_err, 5)}")
        elif src_err.stat().st_size:
            result.problems.append(f"smtp-source stderr: {tail(src_err, 5)}")
        if run_qrunner or anchor is not None:
            result.deliver_time, result.delivered = wait_delivery(tree, n, t0, args.stall, procs)
            if result.deliver_time is None:
                why = "a daemon exited" if procs.died() else f"no progress for {args.stall:g}s"
                result.problems.append(f"only {result.delivered} of {n} messages reached the Maildir ({why})")
            time.sleep(0.2)  # let the runner remove the last entries
        result.problems.extend(procs.died())
        for name, proc, _ in procs.procs:
            if name not in ("smtp-source", "postfix-wait") and proc.poll() is None:
                result.cpu[name] = cpu_seconds(proc.pid)
        if anchor is not None:
            master = anchor.master_pid()
            result.cpu["postfix"] = cpu_seconds(master) if master else (0.0, 0.0)
        if profile_once:
            argv = tree.program("pymta.qrunner", "--once", profile=tree.root / "qrunner.prof")
            before = children_cpu()
            t1 = time.perf_counter()
            with open(qerr, "wb") as err:
                subprocess.run(
                    argv,
                    env=env_with_repo(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=3600,
                )
            result.deliver_time = time.perf_counter() - t1
            after = children_cpu()
            result.cpu["qrunner --once"] = (after[0] - before[0], after[1] - before[1])
            result.delivered = count_files(tree.maildir_new)
            result.note = "delivered/s: qrunner --once, one thread, after sending, under cProfile"
            if result.delivered < n:
                result.problems.append(f"only {result.delivered} of {n} messages reached the Maildir")
        if run_qrunner or profile_once:
            result.leftovers = tree.queue_leftovers()
            if result.leftovers:
                result.problems.append(f"queue leftovers: {result.leftovers}")
                result.problems.extend(tree.state_reasons())
    finally:
        if anchor is not None:
            if result.problems:
                print(f"--- last lines of the Postfix log ---\n{anchor.log_tail()}")
            anchor.stop()
        started = list(procs.procs)
        procs.stop_all()
        procs.procs = started  # for report()
    traceback_in = [
        name for name, _, errfile in started if errfile and errfile.exists() and b"Traceback" in errfile.read_bytes()
    ]
    if traceback_in:
        result.problems.append(f"Traceback in stderr of: {', '.join(traceback_in)}")
    if result.problems:
        procs.report()
    if args.profile and mode == "listen":
        show_profiles(tree)
    return result


def show_profiles(tree: Tree) -> None:
    import pstats

    for name in ("smtpd", "qrunner"):
        path = tree.root / f"{name}.prof"
        if not path.exists():
            print(f"(no profile written for {name})")
            continue
        print(f"--- cProfile of {name} (main thread only), top by tottime ---", flush=True)
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(20)
        print(f"--- cProfile of {name}, top by cumulative ---", flush=True)
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)


def python_startup(python: list[str], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*python, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


# -- main ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_rounds(runs: dict[str, list[Result]], mode: str, anchor: str) -> None:
    """With --repeat: the ratio of each round (the modes alternate) and their median."""
    import statistics

    if len(runs[mode]) < 2 or len(runs[anchor]) != len(runs[mode]):
        return
    rounds = zip(runs[mode], runs[anchor], strict=True)
    pairs = [a.accepted_rate / b.accepted_rate for a, b in rounds if b.accepted_rate]
    if not pairs:
        return
    print(
        f"per-round ratios {mode}/{anchor}: "
        + " ".join(f"{x:.2f}" for x in pairs)
        + f"; median {statistics.median(pairs):.2f}; medians of the rates: "
        f"{statistics.median(x.accepted_rate for x in runs[mode]):.0f} / "
        f"{statistics.median(x.accepted_rate for x in runs[anchor]):.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="messages in listening mode (default 5000)")
    parser.add_argument("--inetd-n", type=int, default=500, help="messages in inetd and bare modes (default 500)")
    parser.add_argument("-c", "--concurrency", type=int, default=20, help="parallel SMTP sessions (default 20)")
    parser.add_argument("--size", type=int, default=1024, help="message payload in octets (default 1024)")
    parser.add_argument(
        "--modes",
        default="listen,inetd,bare",
        help="comma list of listen, inetd, bare, postfix, checks, nochecks (default: the first three)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the per-connection processes (default: this one, %(default)s)",
    )
    parser.add_argument(
        "--python-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="option for that interpreter in inetd and bare modes, repeatable "
        "(e.g. --python-arg=-S to leave out site-packages .pth start-up hooks)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="give up waiting for delivery after this many seconds without progress (default 30)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=30.0, help="seconds a daemon may take to start (default 30)"
    )
    parser.add_argument("--send-timeout", type=float, default=900.0, help="limit for one smtp-source run")
    parser.add_argument("--processes", type=int, default=0, help="smtpd.processes for listening mode (0: one per CPU)")
    parser.add_argument(
        "--no-qrunner", action="store_true", help="do not run the qrunner (measures accepting alone; no delivered/s)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="listen mode: smtpd under cProfile; the queue is then drained by "
        "'qrunner --once' under cProfile (delivered/s is then that run's)",
    )
    parser.add_argument(
        "--dir",
        default="/var/tmp" if os.path.isdir("/var/tmp") else None,
        metavar="PARENT",
        help="where to make the temporary tree (default: %(default)s: disk-backed, unlike a "
        "tmpfs /tmp where fsync is free; the file system decides much of the result)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="run the modes R times, interleaved, and report the best run of each: the rates "
        "suffer from whatever else the machine is doing (default 1)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run, sync and wait up to S seconds until creating a file is cheap "
        "again (under 60 us): see the 'file creation' figure each run prints (default 0)",
    )
    parser.add_argument(
        "--config-extra",
        default="",
        metavar="TOML",
        help="text added at the end of pymail.toml in the pymail modes; a typed \\n is a line break, "
        "e.g. '[qrunner]\\nconcurrency = 2'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees and logs")
    args = parser.parse_args(argv)
    os.environ["SMTPD_PROCESSES"] = str(args.processes)  # read where the tree is made
    os.environ["BENCH_EXTRA_CONFIG"] = "\n" + args.config_extra.replace("\\n", "\n") + "\n"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in (*LISTENING, "inetd", "bare", "postfix"):
            parser.error(f"unknown mode {mode!r}")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    workdir = Path(tempfile.mkdtemp(prefix="pymail-bench-", dir=args.dir))
    results: list[Result] = []
    checked = None
    try:
        if "checks" in modes or "nochecks" in modes:
            checked = CheckedSender(workdir, args.size)
        smtp_source = find_smtp_source()
        print(
            f"smtp-source: {smtp_source}; python: {args.python}; size {args.size} octets; "
            f"{os.cpu_count()} CPUs; tree: {workdir}"
        )
        if "inetd" in modes or "bare" in modes:
            python = [args.python, *args.python_arg]
            startup = python_startup(python)
            print(f"'{' '.join(python)} -c pass': {startup * 1000:.1f} ms (average of 20)")
        for run, mode in ((r, m) for r in range(max(1, args.repeat)) for m in modes):
            n = args.n if mode in (*LISTENING, "postfix") else args.inetd_n
            cost = settle(workdir, args.settle) if args.settle > 0 else creation_cost(workdir)
            print(
                f"[{mode}] {n} messages, {args.concurrency} sessions (load average {load_average():.1f}, "
                f"file creation {cost:.0f} us) ...",
                flush=True,
            )
            try:
                res = bench(mode, n, args, workdir, smtp_source, run, checked)
            except Failure as exc:  # this mode could not run; go on with the others
                res = Result(mode, n, args.concurrency)
                res.problems.append(f"FAILED: {exc}")
            results.append(res)
            if res.send_time:
                print(
                    f"[{mode}] sent in {res.send_time:.2f}s -> {res.accepted_rate:.0f}/s accepted"
                    + (
                        f"; in Maildir after {fmt(res.deliver_time, '.2f')}s ({res.delivered}/{n} files)"
                        if mode != "bare" and not args.no_qrunner and not (args.profile and mode == "listen")
                        else ""
                    ),
                    flush=True,
                )
            if res.cpu:
                print(
                    f"[{mode}] CPU per message (user+sys): "
                    + ", ".join(
                        f"{name} {(u + s) / n * 1000:.2f} ms ({u / n * 1000:.2f}+{s / n * 1000:.2f})"
                        for name, (u, s) in res.cpu.items()
                    )
                )
            if res.note:
                print(f"[{mode}] {res.note}")
            for problem in res.problems:
                print(f"[{mode}] PROBLEM: {problem}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except Failure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if checked:
            checked.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    runs: dict[str, list[Result]] = {}
    for r in results:
        runs.setdefault(r.mode, []).append(r)
    best = {mode: max(rs, key=lambda r: r.accepted_rate) for mode, rs in runs.items()}
    bare = best.get("bare")
    print()
    title = "best of each mode's runs" if args.repeat > 1 else ""
    print(
        f"{'mode':<8} {'N':>6} {'conc':>5} {'accepted/s':>11} {'delivered/s':>12} {'ratio':>7} "
        f"{'srv CPU ms/msg':>15} {'load':>5}  notes {title}"
    )
    for mode, r in best.items():
        ratio = None
        if mode == "inetd" and bare and bare.accepted_rate:
            ratio = r.accepted_rate / bare.accepted_rate
        elif mode == "bare":
            ratio = 1.0
        elif mode == "listen" and "postfix" in best and best["postfix"].accepted_rate:
            ratio = r.accepted_rate / best["postfix"].accepted_rate
        elif mode == "checks" and "nochecks" in best and best["nochecks"].accepted_rate:
            ratio = r.accepted_rate / best["nochecks"].accepted_rate
        elif mode in ("postfix", "nochecks"):
            ratio = 1.0
        problems = sum(len(x.problems) for x in runs[mode])
        note = "ok" if not problems else f"{problems} problem(s)"
        if len(runs[mode]) > 1:
            note += "; all runs: " + " ".join(f"{x.accepted_rate:.0f}" for x in runs[mode])
        print(
            f"{mode:<8} {r.n:>6} {r.conc:>5} {r.accepted_rate:>11.0f} {fmt(r.delivered_rate):>12} "
            f"{fmt(ratio, '.2f'):>7} {fmt(r.server_cpu_ms, '.2f'):>15} {r.load:>5.1f}  {note}"
        )
    if "listen" in best and "postfix" in best:
        print(
            "ratio (listen) = pymta-smtpd accepted/s / Postfix accepted/s, the same load in the same run; goal >= 1.5"
        )
        print_rounds(runs, "listen", "postfix")
    if "checks" in best and "nochecks" in best:
        print("ratio (checks) = accepted/s with the inbound checks on / off, the same load in one run; goal >= 0.70")
        print_rounds(runs, "checks", "nochecks")
    if "inetd" in best and bare:
        print("ratio = pymta-smtpd (inetd) connections/s / bare responder connections/s; goal >= 0.67")
        inetd_cpu, bare_cpu = best["inetd"].server_cpu_ms, bare.server_cpu_ms
        if inetd_cpu and bare_cpu:
            print(
                f"CPU ratio (bare CPU / pymta CPU per connection, qrunner included) = {bare_cpu / inetd_cpu:.2f}: "
                f"steadier than the rates when the machine is busy"
            )
    print(
        "srv CPU = user+sys CPU of the server side per message (smtpd or the socket-activated processes, "
        "plus the qrunner); load = 1-minute load average at the start of the run"
    )
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
