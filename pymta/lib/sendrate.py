"""Outbound rate per user: messages and recipients per hour.

A stolen password must not send 100,000 spams before anyone notices.  Each
account (an authenticated login, or ``uid-N`` for a local user's sendmail)
has two token buckets, messages and recipients, each holding at most an
hour's allowance and refilled at that rate: a user may send the hour's
allowance at once, then keeps the hourly pace.

Under inetd every session is a process of its own, so the buckets live on
disk: one small file per account under ``ROOT/run/sendrate/`` holding
``<message tokens> <recipient tokens> <time>``, read and rewritten under
``flock`` so parallel sessions cannot both spend the last token.  A broken
state file or a full disk lets mail through (with a log line): an abuse
limit must not stop everyone's mail.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pymta.lib import log

HOUR = 3600.0


class SendRate:
    def __init__(self, cfg, clock=time.time) -> None:
        self.dir = Path(cfg.root) / "run" / "sendrate"
        self.limits = (cfg["submission.max_messages_per_hour"], cfg["submission.max_recipients_per_hour"])
        self.clock = clock

    def _path(self, account: str) -> Path:
        # addresses are safe file names once '/', '%' and controls are quoted
        name = "".join(c if c.isalnum() or c in "@.+-_" else f"%{ord(c):02X}" for c in account.lower())
        return self.dir / (name if not name.startswith(".") else "%2E" + name[1:])

    def charge(self, account: str, messages: int = 0, recipients: int = 0) -> str | None:
        """Take ``messages`` and ``recipients`` from the account's budget.

        None when allowed; else which limit is exceeded ("messages" or
        "recipients") and nothing is taken."""
        # a message with more recipients than an hour's allowance waits for a full bucket, not for ever
        wanted = tuple(
            min(n, limit) if limit else n for n, limit in zip((messages, recipients), self.limits, strict=True)
        )
        if not any(n and limit for n, limit in zip(wanted, self.limits, strict=True)):
            return None  # nothing to count, or unlimited
        import fcntl  # noqa: PLC0415 lazy

        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(self._path(account), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning(f"sendrate: {account}: cannot keep count: {exc.strerror}; not limited")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self.clock()
            tokens = self._tokens(os.pread(fd, 100, 0), now)
            for kind, n, limit, have in zip(("messages", "recipients"), wanted, self.limits, tokens, strict=True):
                if n and limit and have < n:
                    return kind
            left = [have - n if limit else have for n, limit, have in zip(wanted, self.limits, tokens, strict=True)]
            data = f"{left[0]:.4f} {left[1]:.4f} {now:.3f}\n".encode()
            os.pwrite(fd, data, 0)  # write, then cut: a full disk leaves the old count, never an empty file
            os.ftruncate(fd, len(data))
            return None
        except OSError as exc:
            log.warning(f"sendrate: {account}: cannot keep count: {exc.strerror}; not limited")
            return None
        finally:
            os.close(fd)  # also lets go of the lock

    def _tokens(self, data: bytes, now: float) -> list[float]:
        """The buckets as they stand now: full for a new account."""
        try:
            msgs, rcpts, then = (float(x) for x in data.split())
        except ValueError:
            return [float(limit) for limit in self.limits]
        elapsed = max(0.0, now - then)
        return [
            min(float(limit), have + limit * elapsed / HOUR)
            for have, limit in zip((msgs, rcpts), self.limits, strict=True)
        ]


def charge_local_user(cfg, uid: int, recipients: int) -> str | None:
    """sendmail's maildrop: one message to ``recipients`` paid by the local
    user ``uid`` (account ``uid-N``); root and the mail system's own uid
    send bounces and system mail and are never limited.  As ``charge``."""
    if uid == 0 or uid == os.getuid():
        return None
    return SendRate(cfg).charge(f"uid-{uid}", messages=1, recipients=recipients)
