"""Remote delivery: the queue runner's SMTP (and LMTP) transport.

Remote recipients of one entry are routed (pymta.routing), grouped per
destination and sent over SMTP (pymta.smtp_client), or LMTP where the
transport map says ``lmtp:`` (each recipient then gets the server's own
reply after the message); each recipient gets a ``Status`` with the
reply's code and enhanced code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from pymta import dkim_sign, routing
from pymta.lib import log
from pymta.queue import Entry
from pymta.recipient import BOUNCED, DEFERRED, DUPLICATE_NOTE, SENT, Recipient, Status
from pymta.smtp_client import Connection, Transaction


class RemoteDelivery:
    """Remote recipients of one entry: routed, grouped per destination, sent over SMTP.

    Each destination (MX domain or next hop) gets one transaction for all
    its recipients in the entry.  ``qrunner.destination_concurrency`` caps
    the sessions to one destination (the pool size caps them all), shared
    out over the runner's ``share`` processes (rounded down, at least 1); idle
    sessions are kept ``relay.connection_cache_time`` seconds for the next
    message to the same server.  Results per recipient: 2xx sent, 4xx and
    connection trouble deferred (the next MX is tried first), 5xx bounced.
    """

    def __init__(self, cfg, share: int = 1) -> None:
        self.cfg = cfg
        self.per_destination = max(1, cfg["qrunner.destination_concurrency"] // max(1, share))
        self.helo = cfg["relay.helo_name"] or cfg["hostname"]
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._idle: dict[tuple, list] = {}

    # -- connection cache -------------------------------------------------------------
    def _sem(self, key: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._sems.get(key)
            if sem is None:
                sem = self._sems[key] = threading.BoundedSemaphore(self.per_destination)
            return sem

    def _connect(self, route, host: str, ip: str, port: int, fresh: bool = False):
        key = (ip, port, route.tls, route.auth, route.protocol)
        if not fresh:
            with self._lock:
                idle = self._idle.get(key) or []
                while idle:
                    conn = idle.pop()
                    if conn.ok and time.monotonic() - conn.last_used < self.cfg["relay.connection_cache_time"]:
                        conn.reused = True
                        return conn
                    conn.close()
        ca_file = self.cfg["relay.tls_ca_file"]
        conn = Connection(
            host,
            ip,
            port,
            self.helo,
            tls=route.tls,
            auth=route.auth,
            connect_timeout=self.cfg["relay.connect_timeout"],
            timeout=self.cfg["relay.command_timeout"],
            ca_file=str(self.cfg.root / ca_file) if ca_file else "",
            lmtp=route.protocol == "lmtp",
        )
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
    def deliver(self, entry: Entry, rcpts: list[Recipient]) -> None:
        groups: dict[str, tuple] = {}
        for rcpt in rcpts:
            domain = rcpt.to.rpartition("@")[2]
            try:
                r = routing.route(self.cfg, domain)
            except ValueError as exc:
                self._set(entry, rcpt, DEFERRED, Status.of("4.3.5", f"bad relay configuration: {exc}"))
                continue
            groups.setdefault(r.key, (r, []))[1].append(rcpt)
        for r, members in groups.values():
            sem = self._sem(r.key)
            with sem:
                self._deliver_group(entry, r, members)

    def _set(self, entry: Entry, rcpt: Recipient, state: str, reason: Status, relay: str = "", diag: str = "") -> None:
        if rcpt.dup and state == SENT:
            reason = replace(reason, text=reason.text + DUPLICATE_NOTE)
        rcpt.set(state, reason)
        if relay:
            rcpt.remote = relay
        if diag:
            rcpt.diag = diag
        where = f", relay={relay}" if relay else ""
        log.info(f"to=<{rcpt.to}>, orig_to=<{rcpt.orig}>{where}, status={state} ({reason})", entry.envelope.queue_id)

    def _transaction(self, entry: Entry, rcpts: list[Recipient]):
        env = entry.envelope
        prefix = b""
        if self.cfg["dkim.selector"]:
            prefix = dkim_sign.signature_for(self.cfg, env.sender, entry) or b""
            prefix = dkim_sign.arc_seal_for(self.cfg, entry, rcpts, prefix) + prefix  # forwarded mail: ARC
        eightbit = False
        for chunk in entry.message_chunks():
            if not chunk.isascii():
                eightbit = True
                break
        addresses = [env.sender] + [r.to for r in rcpts]

        def chunks():
            if prefix:
                yield prefix
            yield from entry.message_chunks()

        return Transaction(
            env.sender,
            [r.to for r in rcpts],
            chunks,
            entry.size + len(prefix),
            eightbit,
            not all(a.isascii() for a in addresses),
        )

    def _deliver_group(self, entry: Entry, r, rcpts: list[Recipient]) -> None:
        try:
            routing.resolve(self.cfg, r)
        except routing.RouteError as exc:
            state = DEFERRED if exc.temporary else BOUNCED
            for rcpt in rcpts:
                self._set(entry, rcpt, state, Status.of(exc.status, exc.text), diag=f"X-Pymail; {exc.text}")
            return
        except ValueError as exc:
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED, Status.of("4.3.5", f"bad relay configuration: {exc}"))
            return
        txn = self._transaction(entry, rcpts)
        last = None
        for host, ip, port in r.hosts:
            relay = f"{host}[{ip}]:{port}" if host != "unix" else f"unix:{ip}"
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
            if (
                result.failure is not None
                and (result.mail is None or result.mail.code // 100 == 4)
                and result.failure.temporary
            ):
                last = (relay, result.failure)  # MAIL deferred or session lost before it: next MX
                continue
            self._record(entry, rcpts, relay, result)
            return
        relay, failure = last if last else ("", None)
        if failure is None:
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED, Status.of("4.4.1", "no server to deliver to"))
            return
        state = DEFERRED if failure.temporary else BOUNCED
        if failure.local:
            text = failure.text if relay.split("[")[0] in failure.text else f"{failure.text} ({relay})"
            reason, diag = _status(failure, text), f"X-Pymail; {text}"
        else:
            reason, diag = _status(failure, f"{failure.enhanced} {relay} said: {failure}"), f"smtp; {failure}"
        for rcpt in rcpts:
            self._set(entry, rcpt, state, reason, relay, diag)

    def _record(self, entry: Entry, rcpts: list[Recipient], relay: str, result) -> None:
        if result.failure is not None:  # MAIL refused, SIZE too big, SMTPUTF8 not supported, lost
            f = result.failure
            if f.local:
                reason, diag = _status(f, f"{f.text} ({relay})"), f"X-Pymail; {f.text}"
            else:
                reason, diag = _status(f, f"{f.enhanced} {relay} said: {f}"), f"smtp; {f}"
            for rcpt in rcpts:
                self._set(entry, rcpt, DEFERRED if f.temporary else BOUNCED, reason, relay, diag)
            return
        for i, rcpt in enumerate(rcpts):
            reply = result.rcpt[i] if i < len(result.rcpt) else None
            data = result.data_reply(i)  # LMTP: this recipient's own
            if reply is None:
                self._set(entry, rcpt, DEFERRED, Status.of("4.4.2", f"{relay}: lost connection during RCPT"), relay)
            elif reply.code // 100 != 2:
                self._set(
                    entry,
                    rcpt,
                    DEFERRED if reply.temporary else BOUNCED,
                    _status(reply, f"{reply.enhanced} {relay} said: {reply} (in reply to RCPT TO)"),
                    relay,
                    f"smtp; {reply}",
                )
            elif data is None:
                self._set(
                    entry,
                    rcpt,
                    DEFERRED,
                    Status.of("4.4.2", f"{relay}: lost connection while sending the message"),
                    relay,
                    "smtp; 421 lost connection",
                )
            elif data.code // 100 == 2:
                self._set(
                    entry, rcpt, SENT, Status(data.code, "2.0.0", f"2.0.0 {relay}: {data}"), relay, f"smtp; {data}"
                )
            else:
                d = data
                self._set(
                    entry,
                    rcpt,
                    DEFERRED if d.temporary else BOUNCED,
                    _status(d, f"{d.enhanced} {relay} said: {d} (in reply to end of DATA)"),
                    relay,
                    f"smtp; {d}",
                )


def _status(reply, text: str) -> Status:
    """A reply (the server's, or one made up here) as a recipient's status."""
    return Status(reply.code, reply.enhanced, text)
