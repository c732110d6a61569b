"""pymta-qrunner: take queue entries, route each recipient, deliver, retry.

::

    pymta-qrunner [-C FILE] [--once]

The runner wakes at once when pymta-queue commits a message (a datagram on
``queue/wake.sock``) and otherwise every ``qrunner.scan_interval`` seconds;
deferred entries are found by retry-time buckets, so only due entries cost
anything.  Progress per recipient goes to ``state/ID`` before and after each
delivery: a recipient marked ``attempting`` when the runner starts again may
have been delivered already; it is delivered again and logged as a possible
duplicate (a crash repeats a delivery, it never loses one).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pymta.lib import log, sysexits
from pymta.queue import CorruptEntry, Entry, Queue

# Recipient states kept in state/ID
PENDING, ATTEMPTING, SENT, DEFERRED, BOUNCED = "pending", "attempting", "sent", "deferred", "bounced"
FINAL = (SENT, BOUNCED)


class Runner:
    def __init__(self, cfg) -> None:
        from pymta.aliases import Aliases
        from pymta.lib.users import UsersFile

        self.cfg = cfg
        self.queue = Queue(cfg.queue_dir)
        self.users = UsersFile(cfg.path_of("users"))
        self.aliases = Aliases(cfg.path_of("aliases"))
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self.stopping = False

    # -- routing ----------------------------------------------------------------
    def is_local(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    def initial_state(self, entry: Entry) -> dict:
        rcpts = []
        for rcpt in entry.envelope.recipients:
            for orig, target in self.aliases.expand(rcpt, self.is_local):
                rcpts.append({"to": target.value, "kind": target.kind, "orig": orig,
                              "status": PENDING, "attempts": 0, "reason": ""})
        return {"rcpts": rcpts, "first": time.time()}

    # -- one entry ----------------------------------------------------------------
    def process_path(self, path: Path) -> None:
        try:
            entry = self.queue.open_entry(path)
        except CorruptEntry as exc:
            log.error(f"corrupt queue entry {path.name}: {exc.reason}; moved to corrupt/")
            try:
                self.queue.quarantine(path)
            except OSError as err:
                log.error(f"cannot quarantine {path}: {err}")
            return
        if entry is None:
            return
        with entry:
            try:
                self.process(entry)
            except OSError as exc:
                # Disk trouble while recording progress: leave the entry where
                # it is; the next pass tries again.
                log.warning(f"queue trouble, will retry: {exc}", entry.envelope.queue_id)

    def process(self, entry: Entry) -> None:
        env = entry.envelope
        qid = env.queue_id
        state = self.queue.read_state(qid)
        if state is None:
            state = self.initial_state(entry)
            log.info(f"from=<{env.sender}>, size={entry.size}, nrcpt={len(state['rcpts'])} (queue active)", qid)
        todo = []
        for rcpt in state["rcpts"]:
            if rcpt["status"] == ATTEMPTING:
                rcpt["dup"] = True  # a crash interrupted this one: it may be there already
                rcpt["status"] = PENDING
            if rcpt["status"] in (PENDING, DEFERRED):
                todo.append(rcpt)
        if todo:
            for rcpt in todo:
                rcpt["status"] = ATTEMPTING
                rcpt["attempts"] += 1
            self.queue.write_state(qid, state)
            for rcpt in todo:
                self.deliver_one(entry, rcpt)
        self.finish(entry, state)

    def deliver_one(self, entry: Entry, rcpt: dict) -> None:
        from pymda.deliver import DeliveryError

        env = entry.envelope
        qid = env.queue_id
        dup = " (possible duplicate after a crash)" if rcpt.get("dup") else ""
        if rcpt["kind"] != "address":
            self._result(rcpt, BOUNCED, f"5.3.0 {rcpt['kind']} delivery in aliases is not supported")
        elif not self.is_local(rcpt["to"]):
            self._result(rcpt, DEFERRED, "4.4.1 remote delivery is not available")
        else:
            try:
                if self.cfg["deliver.mode"] == "exec":
                    self._exec_deliver(entry, rcpt)
                else:
                    from pymda.deliver import deliver_message

                    deliver_message(self.cfg, self.users, rcpt["to"], entry.message_chunks(), env.sender,
                                    original=rcpt["orig"], qid=qid)
                self._result(rcpt, SENT, "2.0.0 delivered to maildir" + dup)
            except DeliveryError as exc:
                if exc.temporary:
                    self._result(rcpt, DEFERRED, f"4.2.0 {exc}")
                elif exc.exit_code == 67:
                    self._result(rcpt, BOUNCED, "5.1.1 unknown user")
                else:
                    self._result(rcpt, BOUNCED, f"5.2.0 {exc}")
        log.info(f"to=<{rcpt['to']}>, orig_to=<{rcpt['orig']}>, status={rcpt['status']} ({rcpt['reason']})", qid)

    def _exec_deliver(self, entry: Entry, rcpt: dict) -> None:
        import subprocess

        from pymda.deliver import DeliveryError

        cmd = [sys.executable, "-m", "pymda.deliver", "-d", rcpt["to"], "-f", entry.envelope.sender or "MAILER-DAEMON",
               "-a", rcpt["orig"]]
        if self.cfg.path:
            cmd[3:3] = ["-C", str(self.cfg.path)]
        entry.fh.seek(entry.offset)
        proc = subprocess.run(cmd, stdin=entry.fh, stdout=subprocess.DEVNULL, timeout=600)
        if proc.returncode != 0:
            raise DeliveryError(f"pymda-deliver exited {proc.returncode}", proc.returncode)

    @staticmethod
    def _result(rcpt: dict, status: str, reason: str) -> None:
        rcpt["status"] = status
        rcpt["reason"] = reason

    def finish(self, entry: Entry, state: dict) -> None:
        env = entry.envelope
        qid = env.queue_id
        deferred = [r for r in state["rcpts"] if r["status"] in (DEFERRED, PENDING)]
        now = time.time()
        if deferred and now - env.arrival > self.cfg["qrunner.max_lifetime"]:
            for rcpt in deferred:
                self._result(rcpt, BOUNCED, f"5.4.7 delivery time expired ({rcpt['reason']})")
                log.info(f"to=<{rcpt['to']}>, status=bounced ({rcpt['reason']})", qid)
            deferred = []
        bounced = [r for r in state["rcpts"] if r["status"] == BOUNCED and not r.get("notified")]
        if bounced:
            self.notify_bounce(entry, bounced)
            for rcpt in bounced:
                rcpt["notified"] = True
        if deferred:
            attempts = max(r["attempts"] for r in deferred)
            delay = min(self.cfg["qrunner.retry_max"], self.cfg["qrunner.retry_min"] * 2 ** max(attempts - 1, 0))
            state["next"] = now + delay
            self.queue.write_state(qid, state)
            self.queue.defer(entry, now + delay)
            log.info(f"deferred {len(deferred)} recipient(s), next attempt in {int(delay)}s", qid)
        else:
            self.queue.remove(entry)
            log.info("removed", qid)

    def notify_bounce(self, entry: Entry, bounced: list[dict]) -> None:
        """Hand failed recipients to the bounce maker (when one is installed)."""
        try:
            from pymta import bounce
        except ImportError:
            log.warning(f"{len(bounced)} recipient(s) failed; no bounce sent (bounce support not installed)",
                        entry.envelope.queue_id)
            return
        bounce.send_bounce(self.cfg, self.queue, entry, bounced)

    # -- passes ------------------------------------------------------------------
    def due_paths(self) -> list[Path]:
        paths = [self.queue.path / "new" / qid for qid in self.queue.new_ids()]
        paths += [self.queue.path / "deferred" / bucket / qid for bucket, qid in self.queue.due_ids()]
        return paths

    def run_pass(self, pool: ThreadPoolExecutor | None = None) -> int:
        paths = self.due_paths()
        if pool is None:
            for path in paths:
                self.process_path(path)
            return len(paths)
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
        tmp = self.queue.path / "tmp"
        now = time.time()
        for name in os.listdir(tmp) if tmp.is_dir() else []:
            try:
                if now - os.lstat(tmp / name).st_mtime > max_age:
                    os.unlink(tmp / name)
            except OSError:
                pass

    def serve(self) -> None:
        """Run until SIGTERM: wake on datagrams, scan on a timer."""
        sock_path = self.queue.wake_socket
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        os.chmod(sock_path, 0o660)
        sock.setblocking(False)
        interval = self.cfg["qrunner.scan_interval"]
        workers = max(1, self.cfg["qrunner.concurrency"])
        log.info(f"started; queue {self.queue.path}, {workers} workers")
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
            next_scan = 0.0
            while not self.stopping:
                now = time.time()
                self.run_pass(pool)
                next_scan = now + interval
                # Wait for a wake-up, the next due bucket or the scan timer.
                timeout = max(0.0, min(next_scan, self._next_due(now)) - time.time())
                try:
                    ready, _, _ = select.select([sock], [], [], timeout)
                except InterruptedError:
                    continue
                if ready:
                    self._drain(sock)
        sock.close()
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        log.info("stopped")

    def _next_due(self, now: float) -> float:
        buckets = [b for b in _listdir(self.queue.path / "deferred") if b.isdigit()]
        if not buckets:
            return now + 3600
        return max(now, int(min(buckets)) * 60 + 60)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymta-qrunner")
    parser = argparse.ArgumentParser(prog="pymta-qrunner", description="Deliver the messages in the pymail queue.")
    parser.add_argument("-C", dest="config", metavar="FILE", help="configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)")
    parser.add_argument("--once", action="store_true", help="process what is due now, then exit")
    args = parser.parse_args(argv)
    from pymta.lib import config

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        for key, message in exc.problems:
            print(f"pymta-qrunner: {key}: {message}", file=sys.stderr)
        return sysexits.EX_CONFIG
    runner = Runner(cfg)
    runner.queue.create()
    runner.clean_tmp()
    if args.once:
        runner.run_pass()
        return sysexits.EX_OK

    def stop(signum, frame):
        runner.stopping = True
        runner.queue.wake()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        runner.serve()
    except OSError as exc:
        log.error(f"fatal: {exc}")
        return sysexits.EX_OSERR
    return sysexits.EX_OK


if __name__ == "__main__":
    sys.exit(main())
