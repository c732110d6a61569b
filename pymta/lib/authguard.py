"""Slow down password guessing, per client address and per account.

Under inetd every connection is a new process, so the memory of recent
failures lives on disk: one tiny file per client address and per account
under ``ROOT/run/authfail/`` holding ``<failures> <last failure time>``.
Races between processes only lose a count, never lock anyone out.

Every daemon waits ``penalty(ip, account)`` seconds before a password
check, calls ``record(ip, account, ok)`` after it and waits the returned
number of seconds before answering (in a Job, so other sessions of a
listening daemon go on).  The wait doubles with each recent
failure from that address or for that account: 1, 2, 4, ... up to
``auth.max_failure_delay``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class AuthGuard:
    def __init__(self, cfg, canonical=None) -> None:
        self.dir = Path(cfg.root) / "run" / "authfail"
        # account name -> the key it is counted under (LoginBackend: the
        # users-file account the name logs in as)
        self.canonical = canonical or (lambda account: account)
        self.base = cfg["auth.failure_delay"]
        self.maximum = cfg["auth.max_failure_delay"]
        self.window = cfg["auth.failure_window"]

    def _path(self, kind: str, value: str) -> Path:
        import hashlib

        digest = hashlib.sha256(f"{kind}:{value.lower()}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.dir / digest

    def _read(self, path: Path, now: float) -> int:
        try:
            with open(path, "rb") as fh:
                count, last = fh.read(64).split()
            if now - float(last) > self.window:
                return 0
            return int(count)
        except (OSError, ValueError):
            return 0

    def _write(self, path: Path, count: int, now: float) -> None:
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(f"{count} {now:.0f}".encode())
            os.replace(tmp, path)
        except OSError:
            pass  # a full disk must not stop logins; it only loses the count

    def failures(self, peer_ip: str, account: str | None) -> int:
        now = time.time()
        counts = [self._read(self._path("ip", peer_ip), now)]
        if account:
            counts.append(self._read(self._path("user", self.canonical(account)), now))
        return max(counts)

    def delay_for(self, count: int) -> float:
        return min(self.maximum, self.base * 2 ** (count - 1)) if count > 0 else 0.0

    def penalty(self, peer_ip: str, account: str | None) -> float:
        """Seconds to wait before checking a password at all (Dovecot's auth
        penalty): an address or account with recent failures pays on every
        attempt, so parallel connections do not multiply its guesses."""
        return self.delay_for(self.failures(peer_ip, account))

    def record(self, peer_ip: str, account: str | None, ok: bool) -> float:
        """Note the outcome of a login; return seconds to wait before answering."""
        now = time.time()
        keys = [self._path("ip", peer_ip)] + ([self._path("user", self.canonical(account))] if account else [])
        if ok:
            # Forget the account's failures, not the address's: one valid
            # password must not buy an address a fresh run at other accounts.
            if account:
                try:
                    os.unlink(keys[-1])
                except OSError:
                    pass
            return 0.0
        worst = 0
        for path in keys:
            count = self._read(path, now) + 1
            self._write(path, count, now)
            worst = max(worst, count)
        return self.delay_for(worst)


def plaintext_allowed(cfg, info) -> bool:
    """May a password cross this connection (``info``: sansio.ConnectionInfo)?

    Over TLS always; without TLS only when the config allows it, for
    loopback peers by default.  SMTP, POP3 and IMAP all ask here.
    """
    if info.tls or cfg["auth.allow_plaintext"]:
        return True
    return cfg["auth.allow_plaintext_loopback"] and info.is_loopback


class LoginBackend:
    """What the daemons' backends share (smtpd, pop3d, imapd): the users file
    and the guard, both loaded on first use -- an inetd session that only
    says QUIT pays for neither."""

    def __init__(self, cfg, service: str) -> None:
        self.cfg = cfg
        self.service = service
        self._users = None
        self._guard = None

    @property
    def users(self):
        if self._users is None:
            from pymta.lib.users import UsersFile

            self._users = UsersFile(self.cfg.path_of("users"))
        return self._users

    @property
    def guard(self) -> AuthGuard:
        if self._guard is None:
            self._guard = AuthGuard(self.cfg, self.account_key)
        return self._guard

    def account_key(self, name: str) -> str:
        """The account a login name is counted under: ``Alice+x@Example.Test.``
        logs in as alice@example.test, so its failures are alice's (else every
        spelling would get a fresh count); an unknown name counts as itself."""
        from pymta.lib.users import UsersError

        try:
            record = self.users.lookup(name)
        except (UsersError, OSError):
            record = None
        return record.address if record is not None else name

    def verify_password(self, info, username: str, password) -> bool:
        """The users-file check, after the guard's penalty for this address and account."""
        delay = self.guard.penalty(info.peer_ip, username)
        if delay:
            time.sleep(delay)
        return self.users.verify(username, password, allow_plain_scheme=self.cfg["auth.allow_plain_scheme"])

    def plaintext_ok(self, info) -> bool:
        return plaintext_allowed(self.cfg, info)
