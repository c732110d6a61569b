"""Limit password guessing: a delay per client address, a budget per account.

Two rules, the way Dovecot and fail2ban split the work:

* **Per address** (IPv6: per /64, which one subscriber usually holds): each
  recent failure doubles the wait before the next password check from that
  address -- 1, 2, 4, ... up to ``auth.max_failure_delay`` seconds (Dovecot's
  auth penalty) -- and a failed answer waits as long.  Account failures no
  longer slow anyone: a clean address is answered at once.
* **Per account**: at most ``auth.account_failure_limit`` failed checks in
  any ``auth.failure_window`` seconds, from all addresses together.  Once the
  budget is spent, a login is refused *without checking the password*
  (``LoginRefused``: a temporary failure, so a right guess is not told
  apart from a wrong one), except from the addresses that logged in to the
  account before (the last ``KNOWN_ADDRESSES`` within
  ``auth.known_address_days``): the owner's phone keeps working while
  someone sprays guesses from a thousand other addresses.

Under inetd every connection is a new process and listening daemons fork
workers, so the state lives on disk under ``ROOT/run/authfail/`` (mode
0700): one small file per address and per account, read and rewritten in
place under ``flock``.  A check takes its slot in the account's budget
*before* the password is checked (given back when it was right), so a
thousand parallel connections cannot all slip in under the limit.  A
corrupt file counts as empty, entries dated in the future are dropped, and
a file that cannot be written (full disk) lets the check go on: an abuse
limit never locks anyone out for longer than the window.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple
from pathlib import Path

from pymta.lib import log, metrics
from pymta.lib.log import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymta.lib.users import UsersFile

# Known-good addresses remembered per account: enough for a phone, a laptop,
# home and office; bounded so the file stays small.
KNOWN_ADDRESSES = 16
# Failures kept per account file, whatever auth.account_failure_limit says.
MAX_FAILURES_KEPT = 1000
# Bytes read from a state file: more than a full one holds (junk is cut off).
MAX_STATE_BYTES = 64 * 1024
# Idle files are swept at most this often (seconds), when a new one is made.
SWEEP_INTERVAL = 300.0


class LoginRefused(Exception):
    """The account's failure budget is spent: answer a temporary failure
    without checking the password.  The message is the log line."""


# A password check admitted by the guard: whose slot to give back if it was right.
Attempt = namedtuple("Attempt", "address account token")


def address_key(peer_ip: str) -> str:
    """The unit an address is counted in: an IPv4 address, or an IPv6 /64
    (a subscriber gets at least a /64; counting single v6 addresses would
    give an attacker 2**64 fresh ones).  IPv4-mapped IPv6 is IPv4."""
    import ipaddress  # noqa: PLC0415 lazy

    try:
        addr = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return "".join(c for c in peer_ip if c.isprintable() and not c.isspace())[:100] or "unknown"
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class AuthGuard:
    def __init__(self, cfg, canonical=None) -> None:
        self.dir = Path(cfg.root) / "run" / "authfail"
        # account name -> the key it is counted under (LoginBackend: the
        # users-file account the name logs in as)
        self.canonical = canonical or (lambda account: account)
        self.base = cfg["auth.failure_delay"]
        self.maximum = cfg["auth.max_failure_delay"]
        self.window = cfg["auth.failure_window"]
        self.limit = cfg["auth.account_failure_limit"]
        self.known_for = cfg["auth.known_address_days"] * 86400.0

    # -- the two rules ---------------------------------------------------------------

    def admit(self, peer_ip: str, account: str | None) -> Attempt:
        """Take a slot in the account's failure budget for one password check,
        or raise LoginRefused (the budget is spent and this address never
        logged in to the account).  Cheap: no password is looked at."""
        address = address_key(peer_ip)
        if not account or self.limit <= 0:
            return Attempt(address, None, "")
        key = self.canonical(account)
        token = os.urandom(6).hex()
        now = time.time()

        def take_slot(data: bytes):
            failures, known = self._parse_account(data, now)
            if len(failures) >= self.limit and not self._may_pass(address, known, now):
                return len(failures), None
            failures.append((now, token))
            return None, self._format_account(failures, known)

        spent = self._update(self._path("user", key), take_slot, now)
        if spent is not None:
            raise LoginRefused(
                f"login refused without a password check: user=<{printable(account, 100)}>, "
                f"rip={peer_ip}: {spent} failed logins for this account in the last "
                f"{self.window:.0f} s (auth.account_failure_limit = {self.limit})"
            )
        return Attempt(address, key, token)

    def penalty(self, peer_ip: str) -> float:
        """Seconds to wait before checking a password from this address at all
        (Dovecot's auth penalty), so parallel connections from one address do
        not multiply its guesses.  Failures for the account do not count here:
        they must not slow the owner on a clean address."""
        return self.delay_for(self._address_failures(address_key(peer_ip), time.time()))

    def record(self, attempt: Attempt, ok: bool) -> float:
        """Note the outcome of an admitted check; return seconds to wait before answering."""
        now = time.time()
        if ok:
            # The slot goes back and the address becomes known-good.  The
            # account's other failures stay: the owner reading mail must not
            # hand an attacker a fresh budget.  The address's failures stay
            # too: one valid password must not buy it a fresh run at others.
            if attempt.account is not None:
                self._update(
                    self._path("user", attempt.account),
                    lambda data: (None, self._login_succeeded(data, attempt, now)),
                    now,
                )
            return 0.0

        def count_failure(data: bytes):
            count = self._parse_address(data, now) + 1
            return count, f"{count} {now:.3f}\n".encode()

        count = self._update(self._path("ip", attempt.address), count_failure, now)
        return self.delay_for(count or 1)

    def release(self, attempt: Attempt) -> None:
        """Give back the slot of a check that could not be made (users file unreadable)."""
        if attempt.account is not None:
            now = time.time()
            self._update(
                self._path("user", attempt.account),
                lambda data: (None, self._without_slot(data, attempt.token, now)),
                now,
            )

    def delay_for(self, count: int) -> float:
        return min(self.maximum, self.base * 2 ** min(count - 1, 64)) if count > 0 else 0.0

    def _may_pass(self, address: str, known: list, now: float) -> bool:
        """Over budget, an address the account logged in from still gets checks,
        unless it has spent a budget of failures itself."""
        return any(a == address for a, _ in known) and self._address_failures(address, now) < self.limit

    def _address_failures(self, address: str, now: float) -> int:
        try:
            with open(self._path("ip", address), "rb") as fh:
                return self._parse_address(fh.read(100), now)
        except OSError:
            return 0

    # -- the state files -------------------------------------------------------------
    # address: "<failures> <time of the last one>"
    # account: "f <time> <slot token>" per failure (or check in progress),
    #          "g <address> <time>" per known-good address, newest first

    def _path(self, kind: str, value: str) -> Path:
        import hashlib  # noqa: PLC0415 lazy

        digest = hashlib.sha256(f"{kind}:{value.lower()}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.dir / digest

    def _fresh(self, when: float, now: float, lifetime: float) -> bool:
        # a time in the future is a corrupt entry or a clock jump: drop it, so
        # nothing can keep a budget spent for ever (NaN compares False too)
        return now - lifetime < when <= now + 60

    def _parse_address(self, data: bytes, now: float) -> int:
        try:
            count_text, last_text = data.split()
            count, last = int(count_text), float(last_text)
        except ValueError:
            return 0
        return max(0, min(count, 10**6)) if self._fresh(last, now, self.window) else 0

    def _parse_account(self, data: bytes, now: float) -> tuple[list, list]:
        failures, known = [], []
        for line in data.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            try:
                if parts[0] == "f" and self._fresh(float(parts[1]), now, self.window):
                    failures.append((float(parts[1]), parts[2]))
                elif parts[0] == "g" and self._fresh(float(parts[2]), now, self.known_for):
                    known.append((parts[1], float(parts[2])))
            except ValueError:
                continue
        return sorted(failures)[-MAX_FAILURES_KEPT:], known[:KNOWN_ADDRESSES]

    def _format_account(self, failures: list, known: list) -> bytes:
        lines = [f"f {when:.3f} {token}" for when, token in failures[-MAX_FAILURES_KEPT:]]
        lines += [f"g {address} {when:.3f}" for address, when in known[:KNOWN_ADDRESSES]]
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def _without_slot(self, data: bytes, token: str, now: float) -> bytes:
        failures, known = self._parse_account(data, now)
        return self._format_account([f for f in failures if f[1] != token], known)

    def _login_succeeded(self, data: bytes, attempt: Attempt, now: float) -> bytes:
        failures, known = self._parse_account(data, now)
        known = [(attempt.address, now)] + [k for k in known if k[0] != attempt.address]
        return self._format_account([f for f in failures if f[1] != attempt.token], known)

    def _update(self, path: Path, change, now: float):
        """Read-modify-write one state file under flock; ``change(data)`` returns
        (result, new bytes or None).  Returns the result, or None when the file
        cannot be used (full disk, no permission): the check goes on uncounted."""
        import fcntl  # noqa: PLC0415 lazy

        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:
                os.makedirs(self.dir, mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                result, new = change(os.pread(fd, MAX_STATE_BYTES, 0))
                if new is not None:
                    # in place, write before truncating: a rewrite of a small
                    # file needs no new block, so it still works on a full disk
                    os.pwrite(fd, new, 0)
                    if size > len(new):
                        os.ftruncate(fd, len(new))
            finally:
                os.close(fd)  # also lets go of the lock
        except OSError as exc:
            log.warning(f"authguard: {path.name}: cannot keep count: {exc.strerror}; not counted")
            return None
        if size == 0:
            self._sweep(now)
        return result

    def _sweep(self, now: float) -> None:
        """Remove files idle for a whole window that remember no known-good
        address, so names an attacker makes up do not fill the disk.  Runs
        when a file was made, at most every SWEEP_INTERVAL seconds."""
        marker = self.dir / ".swept"
        try:
            if now - marker.stat().st_mtime < min(SWEEP_INTERVAL, self.window):
                return
        except OSError:
            pass
        try:
            marker.touch()
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or now - entry.stat(follow_symlinks=False).st_mtime < self.window:
                        continue
                    with open(entry.path, "rb") as fh:
                        if self._parse_account(fh.read(MAX_STATE_BYTES), now)[1]:
                            continue
                    os.unlink(entry.path)  # a racing update loses one count, no more
        except OSError:
            pass


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
        self._users: UsersFile | None = None
        self._guard: AuthGuard | None = None

    @property
    def users(self):
        if self._users is None:
            from pymta.lib.users import UsersFile  # noqa: PLC0415 lazy

            self._users = UsersFile(
                self.cfg.path_of("users"), cache_size=self.cfg["auth.cache_size"], cache_ttl=self.cfg["auth.cache_ttl"]
            )
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
        from pymta.lib.users import UsersError  # noqa: PLC0415 lazy

        try:
            record = self.users.lookup(name)
        except (UsersError, OSError):
            record = None
        return record.address if record is not None else name

    def check_login(self, info, username: str, password, check=None) -> tuple[bool, float]:
        """A password check under the guard: (right?, seconds to wait before
        answering a failure).  ``check()`` replaces the users-file check (APOP).

        Raises LoginRefused, before any password is looked at, when the
        account's failure budget is spent: answer a temporary failure."""
        guard = self.guard
        try:
            attempt = guard.admit(info.peer_ip, username)
        except LoginRefused:
            metrics.count("pymail_logins_total", service=info.service, result="refused")
            raise
        try:
            delay = guard.penalty(info.peer_ip)
            if delay:
                time.sleep(delay)
            if check is not None:
                ok = bool(check())
            else:
                ok = self.users.verify(username, password, allow_plain_scheme=self.cfg["auth.allow_plain_scheme"])
        except BaseException:
            guard.release(attempt)  # no answer was given: not a guess
            raise
        metrics.count("pymail_logins_total", service=info.service, result="ok" if ok else "failed")
        return ok, guard.record(attempt, ok)

    def plaintext_ok(self, info) -> bool:
        return plaintext_allowed(self.cfg, info)
