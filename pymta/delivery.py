"""One queue entry, start to finish: the queue runner's work on a message.

Recipients are expanded through the aliases (``pymta.recipient``), each is
delivered through its transport -- local users through ``pymta.local``,
pipes and files through pymda, remote addresses through
``pymta.remote`` -- and the results are recorded in ``state/ID`` before
and after each delivery: a recipient marked ``attempting`` when a runner
starts again may have been delivered already; it is delivered again and
logged as a possible duplicate (a crash repeats a delivery, it never loses
one).  Then the entry is removed, or deferred with a backoff; failed
recipients are bounced (``pymta.bounce``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pymda.deliver import DeliveryError, deliver_alias_target
from pymta import bounce
from pymta.aliases import Aliases
from pymta.lib import log, metrics, sysexits
from pymta.lib.users import UsersFile
from pymta.local import LocalDelivery
from pymta.queue import CorruptEntry, Entry, Queue
from pymta.recipient import (
    ATTEMPTING,
    BOUNCED,
    DEFERRED,
    DUPLICATE_NOTE,
    PENDING,
    SENT,
    EntryState,
    Recipient,
    Status,
    expand,
    reexpand_deferred_aliases,
)
from pymta.remote import RemoteDelivery

PERMANENT_EXITS = sysexits.PERMANENT


class EntryDelivery:
    def __init__(self, cfg, queue: Queue) -> None:
        self.cfg = cfg
        self.queue = queue
        self.users = UsersFile(cfg.path_of("users"))
        self.aliases = Aliases(cfg.path_of("aliases"))
        self.remote = None  # RemoteDelivery, made for the first remote recipient
        self.share = 1  # delivery processes sharing qrunner.destination_concurrency
        self._local = None
        self._remote_lock = threading.Lock()

    def is_local(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    def is_remote(self, rcpt: Recipient) -> bool:
        return rcpt.kind == "address" and not self.is_local(rcpt.to)

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
        state, has_state = self.queue.find_state(qid)
        fresh = state is None
        if state is None:
            state = EntryState(expand(self.aliases, self.is_local, env.recipients, set()))
            log.info(f"from=<{env.sender}>, size={entry.size}, nrcpt={len(state.rcpts)} (queue active)", qid)
            if self.queue.attempted(entry):  # a runner died during the first attempt
                for rcpt in state.rcpts:
                    rcpt.dup = True
        else:
            reexpand_deferred_aliases(self.aliases, self.is_local, state)
        todo = []
        for rcpt in state.rcpts:
            if rcpt.state == ATTEMPTING:
                rcpt.dup = True  # a crash interrupted this one: it may be there already
                rcpt.state = PENDING
            if rcpt.state in (PENDING, DEFERRED):
                todo.append(rcpt)
        if todo:
            for rcpt in todo:
                rcpt.state = ATTEMPTING
                rcpt.attempts += 1
            # A crash from here on may repeat a delivery: say so on the entry
            # (the state file is written only when something is left to do).
            if not (fresh and self.queue.mark_attempt(entry)):
                self.queue.save_state(qid, state, durable=False)
                has_state = True
            remote = [r for r in todo if self.is_remote(r)]
            for rcpt in todo:
                if not self.is_remote(rcpt):
                    self.deliver_one(entry, rcpt)
            if remote:
                self.deliver_remote(entry, remote)
        self.finish(entry, state, has_state)
        for rcpt in todo:  # this attempt's outcome, one count per recipient (after finish: expiry bounces)
            result = "delivered" if rcpt.state == SENT else "bounced" if rcpt.state == BOUNCED else "deferred"
            metrics.count("pymail_deliveries_total", result=result)

    def deliver_one(self, entry: Entry, rcpt: Recipient) -> None:
        env = entry.envelope
        qid = env.queue_id
        dup = DUPLICATE_NOTE if rcpt.dup else ""
        if rcpt.kind in ("error", "defer"):  # the alias expansion's own verdict
            failed = rcpt.kind == "error"
            rcpt.set(BOUNCED if failed else DEFERRED, Status.from_text(rcpt.verdict, failed))
        elif rcpt.kind != "address":
            try:
                where = deliver_alias_target(
                    self.cfg, rcpt.kind, rcpt.to, entry.message_chunks(), env.sender, original=rcpt.orig, qid=qid
                )
                rcpt.set(SENT, Status.of("2.0.0", f"delivered to {where}{dup}"))
            except DeliveryError as exc:
                rcpt.set(
                    DEFERRED if exc.temporary else BOUNCED,
                    Status.of("4.3.0" if exc.temporary else "5.3.0", f"{rcpt.kind} delivery: {exc}"),
                )
        elif not self.is_local(rcpt.to):
            self.deliver_remote(entry, [rcpt])
            return
        else:
            try:
                self.local_delivery().deliver(entry, rcpt.to, rcpt.orig, once=rcpt.dup)
                rcpt.set(SENT, Status.of("2.0.0", f"delivered to maildir{dup}"))
            except DeliveryError as exc:
                rcpt.dup = rcpt.dup or exc.uncertain  # the next attempt looks for a copy first
                if exc.temporary or exc.exit_code not in PERMANENT_EXITS:
                    rcpt.set(DEFERRED, Status.of(exc.enhanced or "4.2.0", str(exc)))
                elif exc.exit_code == sysexits.EX_NOUSER:
                    rcpt.set(BOUNCED, Status.of("5.1.1", "unknown user"))
                else:
                    rcpt.set(BOUNCED, Status.of("5.2.0", str(exc)))
        log.info(f"to=<{rcpt.to}>, orig_to=<{rcpt.orig}>, status={rcpt.state} ({rcpt.reason})", qid)

    def deliver_remote(self, entry: Entry, rcpts: list[Recipient]) -> None:
        """Remote recipients: grouped per destination, one SMTP transaction each (pymta.remote)."""
        with self._remote_lock:
            if self.remote is None:
                self.remote = RemoteDelivery(self.cfg, self.share)
        self.remote.deliver(entry, rcpts)

    def local_delivery(self):
        """The seam into pymda (pymta/local.py), made for the first local recipient."""
        if self._local is None:
            self._local = LocalDelivery(self.cfg, self.users)
        return self._local

    def finish(self, entry: Entry, state: EntryState, has_state: bool = True) -> None:
        """Bounce, warn, defer or remove; ``has_state=False``: no state file was
        found or written for this entry (one unlink fewer on removal)."""
        env = entry.envelope
        qid = env.queue_id
        deferred = [r for r in state.rcpts if r.state in (DEFERRED, PENDING)]
        now = time.time()
        if deferred and now - env.arrival > self.cfg["qrunner.max_lifetime"]:
            for rcpt in deferred:
                rcpt.set(BOUNCED, Status.of("5.4.7", f"delivery time expired ({rcpt.reason})"))
                log.info(f"to=<{rcpt.to}>, status=bounced ({rcpt.reason})", qid)
            deferred = []
        bounced = [r for r in state.rcpts if r.state == BOUNCED and not r.notified]
        if bounced:
            bounce.send_bounce(self.cfg, self.queue, entry, bounced)
            for rcpt in bounced:
                rcpt.notified = True
        if (
            deferred
            and self.cfg["qrunner.delay_warning"]
            and not state.warned
            and now - env.arrival >= self.cfg["qrunner.delay_warning"]
        ):
            bounce.send_delay_warning(self.cfg, self.queue, entry, deferred)
            state.warned = True
        if deferred:
            attempts = max(r.attempts for r in deferred)
            delay = min(self.cfg["qrunner.retry_max"], self.cfg["qrunner.retry_min"] * 2 ** max(attempts - 1, 0))
            state.next = now + delay
            self.queue.save_state(qid, state)
            self.queue.defer(entry, now + delay)
            log.info(f"deferred {len(deferred)} recipient(s), next attempt in {int(delay)}s", qid)
        else:
            self.queue.remove(entry, state=has_state)
            log.info("removed", qid)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close_all()
