"""Greylisting for port 25: a new (client network, sender, recipient) is
told to come back later (450), and let in when it does.

Real mail servers retry; most spam engines do not.  The rules are
postgrey's:

* the client counts as its network, IPv4 /24 or IPv6 /64 (big senders
  retry from another address of the same pool);
* a triplet first seen less than ``delay`` seconds ago is refused again;
  a retry after the delay and within ``retry_window`` passes, and the
  triplet is remembered as passed for ``max_age`` seconds after its last mail;
* a network that has passed ``auto_allowlist`` triplets skips greylisting
  for ``max_age`` seconds after its last mail (0: never).

The triplets live in one SQLite file under ``ROOT/run`` -- under inetd
every connection is its own process, and SQLite's locking (one writer at a
time, ``BEGIN IMMEDIATE``) keeps their read-modify-write steps whole.
Expired entries are pruned and the table is kept below ``max_entries``
(the oldest go first), so a flood of forged senders cannot fill the disk.
Any failure of the file lets the mail through: greylisting is a filter,
never a reason to lose mail.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

from pymta.lib import log

MAX_ENTRIES = 100_000
PRUNE_EVERY = 256  # new triplets between two prunes (cheap: rowid arithmetic)
BUSY_TIMEOUT = 10.0  # seconds to wait for another process's write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (net TEXT, sender TEXT, rcpt TEXT, first REAL, last REAL, passed INTEGER,
                                     PRIMARY KEY (net, sender, rcpt));
CREATE TABLE IF NOT EXISTS clients (net TEXT PRIMARY KEY, passes INTEGER, last REAL);
"""


def client_network(ip: str) -> str:
    """The greylisted unit: the /24 of an IPv4 address, the /64 of an IPv6 one."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Greylist:
    def __init__(
        self,
        path: Path,
        *,
        delay: float,
        retry_window: float,
        max_age: float,
        auto_allowlist: int,
        max_entries: int = MAX_ENTRIES,
        clock=time.time,
    ) -> None:
        self.path = Path(path)
        self.delay = delay
        self.retry_window = retry_window
        self.max_age = max_age
        self.auto_allowlist = auto_allowlist
        self.max_entries = max_entries
        self.clock = clock

    @classmethod
    def from_config(cls, cfg) -> Greylist:
        return cls(
            Path(cfg.root) / "run" / "greylist.sqlite",
            delay=cfg["smtpd.greylist_delay"],
            retry_window=cfg["smtpd.greylist_retry_window"],
            max_age=cfg["smtpd.greylist_max_age"],
            auto_allowlist=cfg["smtpd.greylist_auto_allowlist"],
        )

    def check(self, ip: str, sender: str, recipient: str) -> tuple[bool, str]:
        """(let it in?, why): why is "new", "early" (refused), "retry" (the
        first pass), "known", "allowlisted" or "unavailable" (let in)."""
        import sqlite3  # noqa: PLC0415 lazy

        try:
            db = self._open()
            try:
                with db:  # one transaction; BEGIN IMMEDIATE takes the write lock at once
                    db.execute("BEGIN IMMEDIATE")
                    return self._check(db, client_network(ip), sender.lower(), recipient.lower())
            finally:
                db.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning(f"greylist: {self.path}: {type(exc).__name__}: {exc}; mail let through")
            return True, "unavailable"

    def _open(self):
        import sqlite3  # noqa: PLC0415 lazy

        os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")  # a lost entry only greylists again
        db.executescript(_SCHEMA)
        return db

    def _check(self, db, net: str, sender: str, rcpt: str) -> tuple[bool, str]:
        now = self.clock()
        client = db.execute("SELECT passes, last FROM clients WHERE net = ?", (net,)).fetchone()
        if (
            self.auto_allowlist > 0
            and client is not None
            and client[0] >= self.auto_allowlist
            and now - client[1] <= self.max_age
        ):
            db.execute("UPDATE clients SET last = ? WHERE net = ?", (now, net))
            return True, "allowlisted"
        key = (net, sender, rcpt)
        row = db.execute(
            "SELECT first, last, passed FROM triplets WHERE net = ? AND sender = ? AND rcpt = ?", key
        ).fetchone()
        if row is None or (not row[2] and now - row[0] > self.retry_window) or (row[2] and now - row[1] > self.max_age):
            cur = db.execute("INSERT OR REPLACE INTO triplets VALUES (?, ?, ?, ?, ?, 0)", key + (now, now))
            if cur.lastrowid % PRUNE_EVERY == 0:
                self._prune(db, now)
            return False, "new"
        first, _, passed = row
        if passed:
            db.execute("UPDATE triplets SET last = ? WHERE net = ? AND sender = ? AND rcpt = ?", (now,) + key)
            return True, "known"
        if now - first < self.delay:
            return False, "early"
        db.execute("UPDATE triplets SET last = ?, passed = 1 WHERE net = ? AND sender = ? AND rcpt = ?", (now,) + key)
        if client is None or now - client[1] > self.max_age:
            db.execute("INSERT OR REPLACE INTO clients VALUES (?, 1, ?)", (net, now))
        else:
            db.execute("UPDATE clients SET passes = passes + 1, last = ? WHERE net = ?", (now, net))
        return True, "retry"

    def prune(self) -> None:
        """Drop expired entries and keep the table under max_entries (also done
        every PRUNE_EVERY new triplets)."""
        db = self._open()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                self._prune(db, self.clock())
        finally:
            db.close()

    def _prune(self, db, now: float) -> None:
        db.execute(
            "DELETE FROM triplets WHERE (passed = 0 AND first < ?) OR (passed = 1 AND last < ?)",
            (now - self.retry_window, now - self.max_age),
        )
        db.execute("DELETE FROM clients WHERE last < ?", (now - self.max_age,))
        (count,) = db.execute("SELECT COUNT(*) FROM triplets").fetchone()
        if count > self.max_entries:
            db.execute(
                "DELETE FROM triplets WHERE rowid IN (SELECT rowid FROM triplets ORDER BY last LIMIT ?)",
                (count - self.max_entries,),
            )
        (count,) = db.execute("SELECT COUNT(*) FROM clients").fetchone()
        if count > self.max_entries:
            db.execute(
                "DELETE FROM clients WHERE rowid IN (SELECT rowid FROM clients ORDER BY last LIMIT ?)",
                (count - self.max_entries,),
            )
