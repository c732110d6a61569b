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
from pymta.lib.cliargs import ArgumentParser
from pymta.queue import CorruptEntry, Entry, Queue, is_queue_id

# Recipient states kept in state/ID
PENDING, ATTEMPTING, SENT, DEFERRED, BOUNCED = "pending", "attempting", "sent", "deferred", "bounced"
PERMANENT_EXITS = sysexits.PERMANENT
# Seconds after a targeted wake-up before new/ is listed again: wake-ups are
# datagrams, and a full socket queue (net.unix.max_dgram_qlen) drops some.
CATCH_UP = 0.5


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
        self.remote = None  # RemoteDelivery (below), made for the first remote recipient
        self._local = None
        self._remote_lock = threading.Lock()

    # -- routing ----------------------------------------------------------------
    def is_local(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    def expand(self, addresses, seen: set) -> list[dict]:
        """Recipients after aliases, each final target once per message
        (``alice`` and ``postmaster -> alice`` give alice one copy)."""
        rcpts = []
        for rcpt in addresses:
            for orig, target in self.aliases.expand(rcpt, self.is_local):
                key = (target.kind, target.value.lower())
                if key in seen:
                    continue
                seen.add(key)
                rcpt_state = {"to": target.value, "kind": target.kind, "orig": orig,
                              "status": PENDING, "attempts": 0, "reason": ""}
                if target.kind in ("error", "defer"):  # logged and bounced under the address itself
                    rcpt_state.update(to=orig, verdict=target.value)
                rcpts.append(rcpt_state)
        return rcpts

    def initial_state(self, entry: Entry) -> dict:
        return {"rcpts": self.expand(entry.envelope.recipients, set()), "first": time.time()}

    def reexpand_deferred_aliases(self, state: dict) -> None:
        """An alias that could not be expanded (unreadable :include:) is tried again."""
        waiting = [r for r in state["rcpts"] if r["kind"] == "defer"]
        if not waiting:
            return
        keep = [r for r in state["rcpts"] if r["kind"] != "defer"]
        seen = {(r["kind"], r["to"].lower()) for r in keep}
        fresh = self.expand([r["orig"] for r in waiting], seen)
        for r in fresh:
            old = next((w for w in waiting if w["orig"] == r["orig"]), None)
            if old is not None:
                r["attempts"] = old["attempts"]
        state["rcpts"] = keep + fresh

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
        fresh = state is None
        if fresh:
            state = self.initial_state(entry)
            log.info(f"from=<{env.sender}>, size={entry.size}, nrcpt={len(state['rcpts'])} (queue active)", qid)
            if self.queue.attempted(entry):  # a runner died during the first attempt
                for rcpt in state["rcpts"]:
                    rcpt["dup"] = True
        else:
            self.reexpand_deferred_aliases(state)
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
            # A crash from here on may repeat a delivery: say so on the entry
            # (the state file is written only when something is left to do).
            if not (fresh and self.queue.mark_attempt(entry)):
                self.queue.write_state(qid, state, durable=False)
            remote = [r for r in todo if r["kind"] == "address" and not self.is_local(r["to"])]
            for rcpt in todo:
                if not (rcpt["kind"] == "address" and not self.is_local(rcpt["to"])):
                    self.deliver_one(entry, rcpt)
            if remote:
                self.deliver_remote(entry, remote)
        self.finish(entry, state)

    def deliver_one(self, entry: Entry, rcpt: dict) -> None:
        from pymda.deliver import DeliveryError

        env = entry.envelope
        qid = env.queue_id
        dup = " (possible duplicate after a crash)" if rcpt.get("dup") else ""
        if rcpt["kind"] in ("error", "defer"):  # the alias expansion's own verdict
            self._result(rcpt, BOUNCED if rcpt["kind"] == "error" else DEFERRED, rcpt["verdict"])
        elif rcpt["kind"] != "address":
            from pymda.deliver import deliver_alias_target

            try:
                where = deliver_alias_target(self.cfg, rcpt["kind"], rcpt["to"], entry.message_chunks(), env.sender,
                                             original=rcpt["orig"], qid=qid)
                self._result(rcpt, SENT, f"2.0.0 delivered to {where}" + dup)
            except DeliveryError as exc:
                self._result(rcpt, DEFERRED if exc.temporary else BOUNCED,
                             f"{'4' if exc.temporary else '5'}.3.0 {rcpt['kind']} delivery: {exc}")
        elif not self.is_local(rcpt["to"]):
            self.deliver_remote(entry, [rcpt])
            return
        else:
            try:
                self.local_delivery().deliver(entry, rcpt["to"], rcpt["orig"], once=bool(rcpt.get("dup")))
                self._result(rcpt, SENT, "2.0.0 delivered to maildir" + dup)
            except DeliveryError as exc:
                if exc.temporary or exc.exit_code not in PERMANENT_EXITS:
                    self._result(rcpt, DEFERRED, f"4.2.0 {exc}")
                elif exc.exit_code == 67:
                    self._result(rcpt, BOUNCED, "5.1.1 unknown user")
                else:
                    self._result(rcpt, BOUNCED, f"5.2.0 {exc}")
        log.info(f"to=<{rcpt['to']}>, orig_to=<{rcpt['orig']}>, status={rcpt['status']} ({rcpt['reason']})", qid)

    def deliver_remote(self, entry: Entry, rcpts: list[dict]) -> None:
        """Remote recipients: grouped per destination, one SMTP transaction each (RemoteDelivery)."""
        with self._remote_lock:
            if self.remote is None:
                self.remote = RemoteDelivery(self.cfg)
        self.remote.deliver(entry, rcpts)

    def local_delivery(self):
        """The seam into pymda (pymta/local.py), made for the first local recipient."""
        if self._local is None:
            from pymta.local import LocalDelivery

            self._local = LocalDelivery(self.cfg, self.users)
        return self._local

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
        if deferred and self.cfg["qrunner.delay_warning"] and not state.get("warned") \
                and now - env.arrival >= self.cfg["qrunner.delay_warning"]:
            try:
                from pymta import bounce

                bounce.send_delay_warning(self.cfg, self.queue, entry, deferred)
            except ImportError:
                pass
            state["warned"] = True
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

    def pickup(self) -> None:
        """Move what ordinary users dropped with sendmail into the queue."""
        maildrop = self._ensure_maildrop()
        if maildrop is None:
            return
        from pymta.sendmail import pickup_maildrop

        try:
            pickup_maildrop(self.cfg, self.queue, maildrop)
        except Exception as exc:  # a full disk must not stop the runner; the files wait in the maildrop
            log.warning(f"maildrop pickup failed, will retry: {exc}")

    def run_pass(self, pool: ThreadPoolExecutor | None = None) -> int:
        self.pickup()
        paths = self.due_paths()
        if pool is None:
            for path in paths:
                self.process_path(path)
            return len(paths)
        return self.submit(pool, paths)

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
        socks = [sock]
        drop_sock = self._maildrop_wake_socket()
        if drop_sock is not None:
            socks.append(drop_sock)
        interval = self.cfg["qrunner.scan_interval"]
        workers = max(1, self.cfg["qrunner.concurrency"])
        log.info(f"started; queue {self.queue.path}, {workers} workers")
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
            next_scan = 0.0
            full, ids = True, set()
            catch_up = None  # when to list new/ after targeted wake-ups
            while not self.stopping:
                now = time.time()
                if full or now >= next_scan or (catch_up is not None and now >= catch_up):
                    self.run_pass(pool)
                    next_scan = now + interval
                    catch_up = None
                else:
                    # Woken with queue IDs: take exactly those, without listing
                    # new/ each time (under load that listing grows with the
                    # backlog).  A wake-up can be lost (a full socket queue
                    # drops datagrams), so new/ is listed again soon after.
                    self.submit(pool, [self.queue.path / "new" / qid for qid in sorted(ids)])
                    if catch_up is None:
                        catch_up = now + CATCH_UP
                # Wait for a wake-up, the next due bucket, a catch-up or the scan timer.
                wake_at = min(next_scan, self._next_due(now), catch_up if catch_up is not None else next_scan)
                timeout = max(0.0, wake_at - time.time())
                try:
                    if self.remote is not None:
                        self.remote.expire_idle()
                        timeout = min(timeout, 1.0) if self.remote.has_idle() else timeout
                    ready, _, _ = select.select(socks, [], [], timeout)
                except InterruptedError:
                    continue
                full, ids = not ready, set()  # a timeout means a due bucket, a catch-up or the scan timer
                for ready_sock in ready:
                    for payload in self._drain(ready_sock):
                        text = payload.decode("ascii", "replace")
                        if ready_sock is sock and is_queue_id(text):
                            ids.add(text)
                        else:
                            full = True  # "*", the maildrop, or anything else: look everywhere
        if self.remote is not None:
            self.remote.close_all()
        for extra in socks[1:]:
            extra.close()
        sock.close()
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        log.info("stopped")

    def _ensure_maildrop(self) -> Path | None:
        """The maildrop folder (mode 1733, made on first use), or None when it cannot be had."""
        maildrop = self.cfg.root / self.cfg["sendmail.maildrop"]
        if not maildrop.is_dir():
            try:
                os.mkdir(maildrop, 0o700)
                os.chmod(maildrop, 0o1733)
            except FileExistsError:
                pass
            except OSError as exc:
                log.warning(f"cannot create the maildrop {maildrop}: {exc.strerror}")
                return None
        return maildrop

    def _maildrop_wake_socket(self) -> socket.socket | None:
        """maildrop/.wake: a datagram socket any local user may poke (like Postfix's public/pickup)."""
        maildrop = self._ensure_maildrop()
        if maildrop is None:
            return None
        path = maildrop / ".wake"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return None
        drop = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            drop.bind(str(path))
            os.chmod(path, 0o666)
        except OSError as exc:
            log.warning(f"cannot listen on {path}: {exc}")
            drop.close()
            return None
        drop.setblocking(False)
        return drop

    def _next_due(self, now: float) -> float:
        buckets = [b for b in _listdir(self.queue.path / "deferred") if b.isdigit()]
        if not buckets:
            return now + 3600
        # At least a second away: a due entry still being worked on (or locked
        # by another runner) must not turn the wait into a busy loop.
        return max(now + 1.0, int(min(buckets)) * 60 + 60)

    @staticmethod
    def _drain(sock: socket.socket) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(sock.recv(256))
            except (BlockingIOError, InterruptedError):
                return got


class RemoteDelivery:
    """Remote recipients of one entry: routed, grouped per destination, sent over SMTP.

    Each destination (MX domain or next hop) gets one transaction for all
    its recipients in the entry.  ``qrunner.destination_concurrency`` caps
    the sessions to one destination (the pool size caps them all); idle
    sessions are kept ``relay.connection_cache_time`` seconds for the next
    message to the same server.  Results per recipient: 2xx sent, 4xx and
    connection trouble deferred (the next MX is tried first), 5xx bounced.
    """

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.helo = cfg["relay.helo_name"] or cfg["hostname"]
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._idle: dict[tuple, list] = {}

    # -- connection cache -------------------------------------------------------------
    def _sem(self, key: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._sems.get(key)
            if sem is None:
                sem = self._sems[key] = threading.BoundedSemaphore(max(1, self.cfg["qrunner.destination_concurrency"]))
            return sem

    def _connect(self, route, host: str, ip: str, port: int, fresh: bool = False):
        from pymta.smtp_client import Connection

        key = (ip, port, route.tls, route.auth)
        if not fresh:
            with self._lock:
                idle = self._idle.get(key) or []
                while idle:
                    conn = idle.pop()
                    if conn.ok and time.monotonic() - conn.last_used < self.cfg["relay.connection_cache_time"]:
                        conn.reused = True
                        return conn
                    conn.close()
        conn = Connection(host, ip, port, self.helo, tls=route.tls, auth=route.auth,
                          connect_timeout=self.cfg["relay.connect_timeout"], timeout=self.cfg["relay.command_timeout"],
                          ca_file=str(self.cfg.root / self.cfg["relay.tls_ca_file"]) if self.cfg["relay.tls_ca_file"] else "")
        conn.reused = False
        conn.key = key
        return conn

    def _release(self, conn) -> None:
        if conn.ok and self.cfg["relay.connection_cache_time"] > 0:
            with self._lock:
                self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close() if not conn.ok else conn.quit()

    def has_idle(self) -> bool:
        return any(self._idle.values())

    def expire_idle(self) -> None:
        limit = self.cfg["relay.connection_cache_time"]
        stale = []
        with self._lock:
            for key, conns in self._idle.items():
                keep = [c for c in conns if time.monotonic() - c.last_used < limit]
                stale += [c for c in conns if c not in keep]
                self._idle[key] = keep
        for conn in stale:
            conn.quit()

    def close_all(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for conn in conns:
            conn.quit()

    # -- delivery -----------------------------------------------------------------------
    def deliver(self, entry: Entry, rcpts: list[dict]) -> None:
        from pymta import routing

        groups: dict[str, tuple] = {}
        for rcpt in rcpts:
            domain = rcpt["to"].rpartition("@")[2]
            try:
                r = routing.route(self.cfg, domain)
            except ValueError as exc:
                self._set(entry, rcpt, DEFERRED, f"4.3.5 bad relay configuration: {exc}")
                continue
            groups.setdefault(r.key, (r, []))[1].append(rcpt)
        for r, members in groups.values():
            sem = self._sem(r.key)
            with sem:
                self._deliver_group(entry, r, members)

    def _set(self, entry: Entry, rcpt: dict, status: str, reason: str, relay: str = "", diag: str = "") -> None:
        dup = " (possible duplicate after a crash)" if rcpt.get("dup") and status == SENT else ""
        rcpt["status"] = status
        rcpt["reason"] = reason + dup
        if relay:
            rcpt["remote"] = relay
        if diag:
            rcpt["diag"] = diag
        where = f", relay={relay}" if relay else ""
        log.info(f"to=<{rcpt['to']}>, orig_to=<{rcpt['orig']}>{where}, status={status} ({rcpt['reason']})",
                 entry.envelope.queue_id)

    def _transaction(self, entry: Entry, rcpts: list[dict]):
        from pymta.smtp_client import Transaction

        env = entry.envelope
        prefix = b""
        if self.cfg["dkim.selector"]:
            from pymta import dkim_sign

            prefix = dkim_sign.signature_for(self.cfg, env.sender, entry) or b""
        eightbit = False
        for chunk in entry.message_chunks():
            if not chunk.isascii():
                eightbit = True
                break
        addresses = [env.sender] + [r["to"] for r in rcpts]

        def chunks():
            if prefix:
                yield prefix
            yield from entry.message_chunks()

        return Transaction(env.sender, [r["to"] for r in rcpts], chunks, entry.size + len(prefix), eightbit,
                           not all(a.isascii() for a in addresses))

    def _deliver_group(self, entry: Entry, r, rcpts: list[dict]) -> None:
        from pymta import routing

        try:
            routing.resolve(self.cfg, r)
        except routing.RouteError as exc:
            status = DEFERRED if exc.temporary else BOUNCED
            for rcpt in rcpts:
                self._set(entry, rcpt, status, f"{exc.status} {exc.text}", diag=f"X-Pymail; {exc.text}")
            return
        except ValueError as exc:
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED, f"4.3.5 bad relay configuration: {exc}")
            return
        txn = self._transaction(entry, rcpts)
        last = None
        for host, ip, port in r.hosts:
            relay = f"{host}[{ip}]:{port}"
            conn = self._connect(r, host, ip, port)
            if conn.ok:
                result = conn.send(txn)
                if conn.reused and result.mail is None and result.failure is not None and result.failure.temporary:
                    conn.close()  # a cached session the server had closed: once more on a fresh one
                    conn = self._connect(r, host, ip, port, fresh=True)
                    result = conn.send(txn) if conn.ok else None
            else:
                result = None
            if result is None:
                last = (relay, conn.failure)
                conn.close()
                continue
            self._release(conn)
            if result.failure is not None and (result.mail is None or result.mail.code // 100 == 4) \
                    and result.failure.temporary:
                last = (relay, result.failure)  # MAIL deferred or session lost before it: next MX
                continue
            self._record(entry, rcpts, relay, result)
            return
        relay, failure = last if last else ("", None)
        if failure is None:
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED, "4.4.1 no server to deliver to")
            return
        status = DEFERRED if failure.temporary else BOUNCED
        if failure.local:
            text = failure.text if relay.split("[")[0] in failure.text else f"{failure.text} ({relay})"
            reason, diag = text, f"X-Pymail; {text}"
        else:
            reason, diag = f"{failure.enhanced} {relay} said: {failure}", f"smtp; {failure}"
        for rcpt in rcpts:
            self._set(entry, rcpt, status, reason, relay, diag)

    def _record(self, entry: Entry, rcpts: list[dict], relay: str, result) -> None:
        if result.failure is not None:  # MAIL refused, SIZE too big, SMTPUTF8 not supported, lost
            f = result.failure
            if f.local:
                reason, diag = f"{f.text} ({relay})", f"X-Pymail; {f.text}"
            else:
                reason, diag = f"{f.enhanced} {relay} said: {f}", f"smtp; {f}"
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED if f.temporary else BOUNCED, reason, relay, diag)
            return
        for i, rcpt in enumerate(rcpts):
            reply = result.rcpt[i] if i < len(result.rcpt) else None
            if reply is None:
                self._set(entry, rcpt, DEFERRED, f"4.4.2 {relay}: lost connection during RCPT", relay)
            elif reply.code // 100 != 2:
                self._set(entry, rcpt, DEFERRED if reply.temporary else BOUNCED,
                          f"{reply.enhanced} {relay} said: {reply} (in reply to RCPT TO)", relay, f"smtp; {reply}")
            elif result.data is None:
                self._set(entry, rcpt, DEFERRED, f"4.4.2 {relay}: lost connection while sending the message",
                          relay, "smtp; 421 lost connection")
            elif result.data.code // 100 == 2:
                self._set(entry, rcpt, SENT, f"2.0.0 {relay}: {result.data}", relay, f"smtp; {result.data}")
            else:
                d = result.data
                self._set(entry, rcpt, DEFERRED if d.temporary else BOUNCED,
                          f"{d.enhanced} {relay} said: {d} (in reply to end of DATA)", relay, f"smtp; {d}")


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


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
        log.error('refusing to run as root: set daemon_user (pymail init does), or daemon_user = "root" '
                  "to run the queue as root on purpose")
        return sysexits.EX_CONFIG
    from pymta.lib.privilege import PrivilegeError, become_account, daemon_account

    pw, problem = daemon_account(name)
    if problem:
        log.error(problem)
        return sysexits.EX_CONFIG
    maildrop = runner._ensure_maildrop()
    try:
        hand_over(runner.queue.path, pw.pw_uid, pw.pw_gid)
        if maildrop is not None:
            os.chown(maildrop, pw.pw_uid, pw.pw_gid)
            os.chmod(maildrop, 0o1733)
        from pymta.lib.daemon import preload

        preload("qrunner")  # the interpreter's files may be out of the new user's reach
        from pymta.lib.pdeathsig import keep_across_uid_change

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
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.chown(path, uid, gid)


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymta-qrunner")
    parser = ArgumentParser(prog="pymta-qrunner", description="Deliver the messages in the pymail queue.")
    parser.add_argument("-C", dest="config", metavar="FILE", help="configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)")
    parser.add_argument("--once", action="store_true", help="process what is due now, then exit")
    args = parser.parse_args(argv)
    from pymta.lib import config

    cfg = config.load_logged(args.config)
    if cfg is None:
        return sysexits.EX_CONFIG
    runner = Runner(cfg)
    runner.queue.create()
    failed = leave_root(cfg, runner)
    if failed:
        return failed
    runner.clean_tmp()
    if args.once:
        runner.run_pass()
        if runner.remote is not None:
            runner.remote.close_all()
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
