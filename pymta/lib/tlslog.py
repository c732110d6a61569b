"""The log line of a failed TLS handshake, the same from both drivers.

``TLS handshake failed: client=[IP]: KIND: TEXT``, where KIND is the
exception's name (``SSLError``: the library's reason, e.g. a client that
rejects our certificate, ``TLSV1_ALERT_UNKNOWN_CA``, or a plain-text
client, ``HTTP_REQUEST``/``WRONG_VERSION_NUMBER``), ``timeout`` (no
handshake within the time allowed) or ``EOF`` (the client closed before
the handshake was done).

A listening daemon keeps these lines within a budget (``Budget``) so a
scanner cannot flood the log: a burst, then one line a second; the next
line logged says how many were left out.  Under inetd each connection is
a process of its own and is logged; the per-client connection limits
bound those.  No ``ssl`` import: the failure is read from the exception.
"""

from __future__ import annotations

import time

from pymta.lib import log

BURST = 20  # lines logged at once before the budget applies
PER_SECOND = 1.0  # lines a second after the burst


def reason(exc: BaseException, timeout: float = 0.0) -> str:
    """What went wrong, as ``KIND: TEXT``."""
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "longer than" in text):
        # blocking: TimeoutError; asyncio: "SSL handshake is taking longer than N seconds"
        return f"timeout: no handshake within {timeout:g}s" if timeout else "timeout: no handshake in time"
    if name == "SSLEOFError" or (isinstance(exc, ConnectionError) and not text) or isinstance(exc, BrokenPipeError):
        return "EOF: connection closed during the handshake"
    return f"{name}: {text}" if text else name


class Budget:
    """At most ``burst`` lines at once, then ``per_second``; counts the rest."""

    def __init__(self, burst: int = BURST, per_second: float = PER_SECOND) -> None:
        self.burst = burst
        self.per_second = per_second
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.dropped = 0

    def take(self) -> int | None:
        """None: leave this line out; else the number of lines left out before it."""
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.per_second)
        self.last = now
        if self.tokens < 1.0:
            self.dropped += 1
            return None
        self.tokens -= 1.0
        dropped, self.dropped = self.dropped, 0
        return dropped


def handshake_failed(peer_ip: str, exc: BaseException, timeout: float = 0.0, budget: Budget | None = None) -> None:
    dropped = budget.take() if budget is not None else 0
    if dropped is None:
        return
    more = f" ({dropped} more failed handshakes not logged)" if dropped else ""
    log.info(f"TLS handshake failed: client=[{peer_ip}]: {reason(exc, timeout)}{more}")
