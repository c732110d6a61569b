"""pymta-qrunner: take queue entries, route each recipient, deliver, retry.

::

    pymta-qrunner [-C FILE] [--once [QUEUE-ID ...]]

This module is the scheduler: it decides *when* entries are tried.  The
runner wakes at once when a message is committed (a datagram on
``queue/wake.sock``) or dropped into the maildrop (``maildrop/.wake``),
and otherwise every ``qrunner.scan_interval`` seconds; deferred entries are
found by retry-time buckets (``Queue.due_paths``, ``Queue.next_due``), so
only due entries cost anything.  *What* happens to one entry is
``pymta.delivery`` (recipient state in ``pymta.recipient``, transports in
``pymta.local`` and ``pymta.remote``); the maildrop pickup is
``pymta.maildrop``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from pymda.deliver import DELIVERY_MODULES, DELIVERY_OTHERS
from pymta import maildrop
from pymta.delivery import EntryDelivery
from pymta.lib import config, log, metrics, sysexits
from pymta.lib.cliargs import CONFIG_HELP, click_main
from pymta.lib.cpusched import use_batch_policy
from pymta.lib.daemon import preload
from pymta.lib.pdeathsig import keep_across_uid_change
from pymta.lib.privilege import PrivilegeError, become_account, daemon_account
from pymta.queue import Queue, is_queue_id

# Seconds after a targeted wake-up before new/ is listed again: wake-ups are
# datagrams, and a full socket queue (net.unix.max_dgram_qlen) drops some.
CATCH_UP = 0.5

# Seconds a delivery process may take to finish its deliveries when told
# to stop, before it is killed (a delivery cut short is made again).
STOP_TIMEOUT = 60.0

# What the runner may import after leaving root (see daemon.preload).
PRELOAD = (
    "pymta.qrunner",
    "pymta.delivery",
    "pymta.recipient",
    "pymta.local",
    "pymta.remote",
    "pymta.bounce",
    "pymta.maildrop",
    "pymta.maildrop_bounce",
    "pymta.sendmail",  # format_mailq, for the .mailq listing
    "pymta.smtp_client",
    "pymta.routing",
    "pymta.aliases",
    "pymta.dkim_sign",
    "pymda.index",
    *DELIVERY_MODULES,  # the runner delivers in process too
)
PRELOAD_OTHERS = ("dns.resolver", "dkim", "ssl", "json", "email.parser", *DELIVERY_OTHERS)


MAILQ_CLIENTS = 4  # mailq listings sent at once (for users who cannot read the queue)


class Runner:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.queue = Queue(cfg.queue_dir)
        self.delivery = EntryDelivery(cfg, self.queue)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._mailq_slots = threading.BoundedSemaphore(MAILQ_CLIENTS)
        self.stopping = False
        self._stop_pipe: tuple[int, int] | None = None

    @property
    def remote(self):
        """The RemoteDelivery (its connection cache), once a remote recipient was seen."""
        return self.delivery.remote

    def process_path(self, path: Path) -> None:
        self.delivery.process_path(path)

    # -- passes ------------------------------------------------------------------
    def due_paths(self) -> list[Path]:
        return self.queue.due_paths()

    def pickup(self) -> None:
        """Move what ordinary users dropped with sendmail into the queue."""
        folder = maildrop.ensure(self.cfg)
        if folder is None:
            return
        try:
            maildrop.pickup(self.cfg, self.queue, folder)
        except Exception as exc:  # a full disk must not stop the runner; the files wait in the maildrop
            log.warning(f"maildrop pickup failed, will retry: {exc}")

    def run_pass(self, pool: ThreadPoolExecutor | None = None, pickup: bool = True) -> int:
        if pickup:
            self.pickup()
        paths = self.due_paths()
        if pool is None:
            for path in paths:
                self.process_path(path)
            return len(paths)
        return self.submit(pool, paths)

    def run_ids(self, queue_ids: list[str]) -> int:
        """Try exactly these entries now, wherever they wait (new or deferred; not held)."""
        done = 0
        for qid in queue_ids:
            path = self.queue.locate(qid)
            if path is not None and path != self.queue.path_for(qid, "hold"):
                self.process_path(path)
                done += 1
        return done

    def submit(self, pool: ThreadPoolExecutor, paths: list[Path]) -> int:
        submitted = 0
        for path in paths:
            with self._busy_lock:
                if path.name in self._busy:
                    continue
                self._busy.add(path.name)
            pool.submit(self._work, path)
            submitted += 1
        return submitted

    def _work(self, path: Path) -> None:
        try:
            self.process_path(path)
        except Exception as exc:  # one bad entry must not stop the runner
            log.error(f"unexpected error on {path.name}: {exc!r}")
        finally:
            with self._busy_lock:
                self._busy.discard(path.name)

    def clean_tmp(self, max_age: float = 86400.0) -> None:
        self.queue.clean_tmp(max_age)

    def answer_mailq(self, listener) -> None:
        """A mailq client connected to ``.mailq``: the listing goes out from
        a thread of its own (at most MAILQ_CLIENTS at once; more are closed
        unanswered), so a client that does not read never holds up delivery."""
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        if not self._mailq_slots.acquire(blocking=False):
            conn.close()
            return

        def answer() -> None:
            try:
                from pymta.sendmail import format_mailq  # noqa: PLC0415 lazy

                conn.settimeout(10)
                conn.sendall(format_mailq(self.queue).encode("utf-8", "replace"))
            except Exception as exc:  # a client gone, a queue read error: only that answer is lost
                log.warning(f"mailq answer failed: {exc}")
            finally:
                conn.close()
                self._mailq_slots.release()

        threading.Thread(target=answer, name="mailq", daemon=True).start()

    def processes(self) -> int:
        """Delivery processes: ``qrunner.processes`` (0: one per CPU), at most one per delivery slot."""
        wanted = self.cfg["qrunner.processes"] or os.cpu_count() or 1
        return max(1, min(wanted, self.cfg["qrunner.concurrency"]))

    def serve(self) -> None:
        """Run until SIGTERM: wake on datagrams, scan on a timer.

        With several processes the parent forks the workers (pymta.lib.prefork)
        and only watches them.  Every worker serves the wake-up socket (a
        datagram reaches one of them) and scans on its own timer; the entry
        lock (``Queue.open_entry``) keeps two from delivering one entry.
        Worker 0 alone picks up the maildrop: a maildrop file has no lock.
        Why processes: in one process the delivery threads take turns at the
        interpreter lock at every system call, and a backlog then costs about
        half as much CPU again per message as in two processes with half the
        threads each (pymta-qrunner(8), Delivery processes).
        """
        sock = self.queue.listen()
        drop_sock = maildrop.listen(self.cfg)
        mailq_sock = maildrop.listen(self.cfg, maildrop.MAILQ_NAME)
        processes = self.processes()
        concurrency = max(1, self.cfg["qrunner.concurrency"])
        threads = concurrency // processes  # at least 1: processes() is at most concurrency
        log.info(f"started; queue {self.queue.path}, {processes} process(es) of {threads} delivery threads")
        try:
            if processes > 1:
                from pymta.lib.prefork import run_workers  # noqa: PLC0415 lazy

                self.delivery.share = processes

                def worker(slot: int) -> None:
                    first = slot == 0
                    self.serve_sockets(threads, sock, drop_sock if first else None, mailq_sock, pickup=first)

                run_workers(processes, worker, stop_timeout=STOP_TIMEOUT)
            else:
                self.serve_sockets(threads, sock, drop_sock, mailq_sock)
        finally:
            for extra in (drop_sock, mailq_sock):
                if extra is not None:
                    extra.close()
            self.queue.stop_listening(sock)
        log.info("stopped")

    def stop(self) -> None:
        """From a signal handler: end ``serve_sockets`` after the deliveries under way."""
        self.stopping = True
        if self._stop_pipe is not None:
            os.write(self._stop_pipe[1], b"x")

    def serve_sockets(self, workers: int, sock, drop_sock, mailq_sock, pickup: bool = True) -> None:
        """One delivery process: ``workers`` threads, until ``stop()``.
        ``pickup`` False: another process picks up the maildrop."""
        self._stop_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # this process's own: a wake-up may go to another
        # The sockets every delivery process shares wake one of them
        # (EPOLLEXCLUSIVE), not all of them for one datagram each time.
        poller = select.epoll()
        shared = select.EPOLLIN | select.EPOLLEXCLUSIVE
        ready_for = {}
        for each, events in (
            (sock, shared),
            (self._stop_pipe[0], select.EPOLLIN),
            (drop_sock, select.EPOLLIN),
            (mailq_sock, shared),
        ):
            if each is not None:
                fd = each if isinstance(each, int) else each.fileno()
                poller.register(fd, events)
                ready_for[fd] = each
        interval = self.cfg["qrunner.scan_interval"]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
            next_scan = 0.0
            full, ids = True, set()
            catch_up = None  # when to list new/ after targeted wake-ups
            while not self.stopping:
                now = time.time()
                if full or now >= next_scan or (catch_up is not None and now >= catch_up):
                    self.run_pass(pool, pickup=pickup)
                    next_scan = now + interval
                    metrics.compact_if_big(self.cfg.root)  # the event log stays bounded without a scraper
                    catch_up = None
                elif ids:
                    # Woken with queue IDs: take exactly those, without listing
                    # new/ each time (under load that listing grows with the
                    # backlog).  A wake-up can be lost (a full socket queue
                    # drops datagrams), so new/ is listed again soon after.
                    self.submit(pool, [self.queue.path_for(qid) for qid in sorted(ids)])
                    if catch_up is None:
                        catch_up = now + CATCH_UP
                # Wait for a wake-up, the next due bucket, a catch-up or the scan timer.
                wake_at = min(next_scan, self.queue.next_due(now), catch_up if catch_up is not None else next_scan)
                timeout = max(0.0, wake_at - time.time())
                try:
                    if self.remote is not None:
                        self.remote.expire_idle()
                        timeout = min(timeout, 1.0) if self.remote.has_idle() else timeout
                    ready = [ready_for[fd] for fd, _events in poller.poll(timeout)]
                except InterruptedError:
                    continue
                full, ids = not ready, set()  # a timeout means a due bucket, a catch-up or the scan timer
                for ready_sock in ready:
                    if ready_sock is mailq_sock:
                        self.answer_mailq(mailq_sock)
                        continue
                    if ready_sock == self._stop_pipe[0]:
                        continue  # stopping: the loop test ends it
                    payloads = _drain(ready_sock)
                    if ready_sock is sock and not payloads:
                        continue  # another process took the datagram first
                    for payload in payloads:
                        text = payload.decode("ascii", "replace")
                        if ready_sock is sock and is_queue_id(text):
                            ids.add(text)
                        else:
                            full = True  # "*", the maildrop, or anything else: look everywhere
            pool.shutdown(cancel_futures=True)  # the deliveries under way end; the rest wait on disk
        poller.close()
        self.delivery.close()


def _drain(sock) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(256))
        except (BlockingIOError, InterruptedError):
            return got


def leave_root(cfg, runner: Runner) -> int:
    """Like Postfix's qmgr, the runner does not run as root: started as root
    it hands the queue and the maildrop to ``daemon_user`` and becomes that
    user for good, before it reads any message.  Deliveries into mailboxes
    of other uids go through pymda-local (pymta/local.py).  Returns 0, or
    the exit status when it cannot run."""
    name = cfg["daemon_user"]
    if os.geteuid() != 0 or name == "root":  # "root": the admin's explicit choice (pymail-security(7))
        return 0
    if not name:
        log.error(
            'refusing to run as root: set daemon_user (pymail init does), or daemon_user = "root" '
            "to run the queue as root on purpose"
        )
        return sysexits.EX_CONFIG

    pw, problem = daemon_account(name)
    if problem:
        log.error(problem)
        return sysexits.EX_CONFIG
    folder = maildrop.ensure(cfg)
    try:
        hand_over(runner.queue.path, pw.pw_uid, pw.pw_gid)
        if folder is not None:
            os.chown(folder, pw.pw_uid, pw.pw_gid)
            os.chmod(folder, 0o1733)

        preload(PRELOAD, PRELOAD_OTHERS)  # the interpreter's files may be out of the new user's reach

        restore_pdeathsig = keep_across_uid_change()  # `pymail run`'s, cleared by the switch
        become_account(pw)
        restore_pdeathsig()
    except (OSError, PrivilegeError) as exc:
        log.error(f"daemon_user = {name!r}: {exc}")
        return sysexits.EX_NOPERM
    log.info(f"running as {name} (uid {pw.pw_uid})")
    return 0


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Give the queue to ``uid`` when it is not already its: the directories
    and what is in them (a queue first used by root, e.g. an older setup)."""
    if all(os.stat(p).st_uid == uid for p in [path, *(e.path for e in os.scandir(path) if e.is_dir())]):
        return
    from pymta.lib.setup import chown_tree  # noqa: PLC0415 lazy

    chown_tree(path, uid, gid)


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymta-qrunner")
    return click_main(command, argv, "pymta-qrunner")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "config_file", metavar="FILE", help=CONFIG_HELP)
@click.option("--once", is_flag=True, help="Process what is due now, then exit.")
@click.argument("queue_ids", nargs=-1, metavar="[QUEUE-ID]...")
def command(config_file: str | None, once: bool, queue_ids: tuple[str, ...]) -> int:
    """Deliver the messages in the pymail queue.

    With --once and QUEUE-IDs: only these entries (sendmail -odi), without
    the maildrop pickup."""
    if queue_ids and not once:
        raise click.UsageError("queue IDs go with --once")
    cfg = config.load_logged(config_file)
    if cfg is None:
        return sysexits.EX_CONFIG
    metrics.setup(cfg.root)
    runner = Runner(cfg)
    runner.queue.create()
    failed = leave_root(cfg, runner)
    if failed:
        return failed
    runner.clean_tmp()
    if once:
        if queue_ids:
            runner.run_ids(list(queue_ids))
        else:
            runner.run_pass()
        runner.delivery.close()
        return sysexits.EX_OK

    def stop(signum, frame):
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    use_batch_policy(cfg)  # before the delivery threads: they inherit it
    try:
        runner.serve()
    except OSError as exc:
        log.error(f"fatal: {exc}")
        return sysexits.EX_OSERR
    return sysexits.EX_OK


if __name__ == "__main__":
    sys.exit(main())
