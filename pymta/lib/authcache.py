"""A cache of successful logins, like Dovecot's auth_cache_size/auth_cache_ttl.

A client that logs in many times an hour (phones, desktop clients, fetchmail)
would otherwise pay for the slow hash (bcrypt cost 10: ~50 ms of CPU) every
time.  After a successful check, the cache keeps, per address, the stored
hash it was checked against and an HMAC of the password under a key drawn
at random for this process: never the password, and nothing that outlives
the process.  A later login within ``ttl`` seconds hits only when

* the users file still holds the same stored hash for the address (a
  ``pymail user passwd`` or ``del``, or any edit, changes it: miss), and
* the HMAC of the offered password is the same.

Failures are never remembered, so a wrong password always pays the full
check (and the auth guard's budget).  The owner clears the whole cache when
the users file changes on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict


class AuthCache:
    def __init__(self, size: int, ttl: float, clock=time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    def _digest(self, stored: str, password: str | bytes) -> bytes:
        secret = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else bytes(password)
        return hmac.new(self._key, stored.encode("utf-8", "surrogateescape") + b"\0" + secret, hashlib.sha256).digest()

    def hit(self, address: str, stored: str, password: str | bytes) -> bool:
        """Did ``password`` log in as ``address`` against ``stored`` within the TTL?"""
        if not self.enabled:
            return False
        with self._lock:
            entry = self._entries.get(address)
            if entry is None:
                return False
            if entry[0] != stored or entry[2] <= self._clock():
                del self._entries[address]
                return False
        return hmac.compare_digest(entry[1], self._digest(stored, password))

    def remember(self, address: str, stored: str, password: str | bytes) -> None:
        """Record a successful check (the only kind ever recorded)."""
        if not self.enabled:
            return
        digest = self._digest(stored, password)
        with self._lock:
            self._entries[address] = (stored, digest, self._clock() + self.ttl)
            self._entries.move_to_end(address)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
