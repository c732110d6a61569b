"""Users: the one place that reads and writes the users file.

The file is a Dovecot passwd-file, so existing ones move over unchanged::

    user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only the first two fields are required.  ``#`` comments, blank lines and even
lines we cannot parse are kept byte for byte when the file is rewritten: an
admin command must never destroy what it does not understand.

Lookups are case-insensitive and ``user+ext@domain`` finds ``user@domain``.
A user's quota is Dovecot's ``userdb_quota_rule`` extra field
(``quota_limits``); the Maildir++ usage behind it is ``pymda.quota``'s.
The password hashes themselves (making them, checking every scheme Dovecot
writes) are ``pymta.lib.passwords``; its names used here are importable
from this module as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from . import log
from .address import AddressError, account_address
from .passwords import (  # noqa: F401 -- importable from here as before the split
    _DUMMY_BCRYPT_10,
    DEFAULT_ROUNDS,
    _crypt_rn,
    _dummy_hash,
    _system_crypt_verify,
    hash_password,
    split_scheme,
    verify_hash,
)
from .record import Record

if TYPE_CHECKING:
    from .authcache import AuthCache

RECIPIENT_DELIMITER = "+"
FILE_MODE = 0o640
LOCK_TIMEOUT = 10.0


class UsersError(Exception):
    """A users-file change could not be made."""


class UsersUnavailable(UsersError):
    """The users file is missing or unreadable: a temporary failure (4xx / 75),
    never "no such user" -- a broken file must not bounce everyone's mail."""


class UserExists(UsersError):
    pass


class NoSuchUser(UsersError):
    pass


class InvalidAddress(UsersError, ValueError):
    pass


class UserRecord(Record):
    # a Record, not a dataclass: smtpd imports this on every inetd connection
    __slots__ = ("address", "password", "uid", "gid", "home", "extra", "fields")
    address: str
    password: str
    uid: int | None
    gid: int | None
    home: str
    extra: str
    fields: dict[str, str]
    FIELDS = (
        ("address", None),  # canonical, lower case
        ("password", ""),  # "{SCHEME}..." as stored
        ("uid", None),
        ("gid", None),
        ("home", ""),
        ("extra", ""),
        ("fields", {}),  # the extra fields as key -> value (parse_extra_fields)
    )


def parse_extra_fields(extra: str) -> dict[str, str]:
    """Dovecot's extra fields: ``key=value`` words separated by spaces; a
    bare ``key`` means ``key=yes``.  Keys are compared in lower case."""
    fields = {}
    for word in extra.split():
        key, eq, value = word.partition("=")
        if key:
            fields[key.lower()] = value if eq else "yes"
    return fields


# -- quota -----------------------------------------------------------------------

_QUOTA_UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_QUOTA_FIELD = re.compile(r"(?:userdb_)?quota_rule([0-9]*)")


def parse_quota_rule(rule: str, limits: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """One Dovecot ``quota_rule`` (``MASK:LIMIT[:LIMIT...]``) applied to
    ``limits`` (bytes, messages; 0 is no limit), as Dovecot 2.3 reads it:
    ``storage=N`` in kilobytes unless a unit follows (B, k, M, G, T: powers
    of 1024, only the unit's first letter counts), ``bytes=N`` in bytes,
    ``messages=N``.  Only the default rule (mask ``*`` or ``?``) sets the
    user's limits; a rule for one mailbox (``Trash:storage=+100M``) and
    ``ignore`` / ``backend=`` rules leave them as they are.  ValueError for
    what Dovecot refuses."""
    mask, colon, rest = rule.strip().partition(":")
    if not colon or not mask:
        raise ValueError(f"invalid quota rule {rule!r}: expected MASK:LIMIT")
    if mask not in ("*", "?") or rest == "ignore" or rest.startswith("backend="):
        return limits
    nbytes, count = limits
    for part in rest.split(":"):
        key, _, value = part.partition("=")
        m = re.fullmatch(r"([0-9]+)(.*)", value)
        if key not in ("storage", "bytes", "messages"):
            raise ValueError(f"invalid quota rule {rule!r}: unknown limit {key!r}")
        if m is None:
            raise ValueError(f"invalid quota rule {rule!r}: {key} needs a number")
        number, unit = int(m.group(1)), m.group(2)[:1].upper()
        if unit:
            if unit not in _QUOTA_UNITS:
                raise ValueError(f"invalid quota rule {rule!r}: unknown unit {m.group(2)!r}")
            number *= _QUOTA_UNITS[unit]
        elif key == "storage":
            number *= 1024
        if key == "messages":
            count = number
        else:
            nbytes = number
    return nbytes, count


def has_quota_rule(record: UserRecord) -> bool:
    """Does the user's line carry a quota rule of its own?"""
    return any(_QUOTA_FIELD.fullmatch(key) for key in record.fields)


def quota_limits(record: UserRecord, default_rule: str = "") -> tuple[int, int]:
    """(bytes, messages) a user may keep, 0 meaning no limit: ``default_rule``
    (``quota.default_rule``), then the user's ``userdb_quota_rule``,
    ``userdb_quota_rule2``, ... (``quota_rule`` without the prefix too, as in
    a Dovecot userdb file); a user's ``quota_rule`` replaces the default.
    ValueError for a rule Dovecot would refuse."""
    rules = {1: default_rule} if default_rule else {}
    for key, value in record.fields.items():
        m = _QUOTA_FIELD.fullmatch(key)
        if m is not None:
            rules[int(m.group(1) or 1)] = value
    limits = (0, 0)
    for n in sorted(rules):
        limits = parse_quota_rule(rules[n], limits)
    return limits


# -- addresses -------------------------------------------------------------------


def normalize_address(address: str) -> str:
    """``Local@Domain`` -> ``local@domain``, or InvalidAddress (see address.account_address)."""
    try:
        return account_address(address)
    except AddressError as exc:
        raise InvalidAddress(str(exc)) from None


def _lookup_keys(address) -> list[str]:
    """Keys to try for a looked-up address: exact, then without +extension."""
    if not isinstance(address, str):
        return []
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return []
    local, domain = local.lower(), domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    keys = [f"{local}@{domain}"]
    base, delim, ext = local.partition(RECIPIENT_DELIMITER)
    if delim and base:
        keys.append(f"{base}@{domain}")
    return keys


# -- the file ----------------------------------------------------------------------


class _Parsed(Record):
    __slots__ = ("lines", "users", "line_of", "problems", "bcrypt_cost")
    lines: list[bytes]
    users: dict[str, UserRecord]
    line_of: dict[str, list[int]]
    problems: list[tuple[int, str]]
    bcrypt_cost: int
    FIELDS = (
        ("lines", []),  # raw lines without their b"\n"
        ("users", {}),  # first entry per address wins
        ("line_of", {}),  # address -> indexes of every line naming it
        ("problems", []),  # (line number, message)
        ("bcrypt_cost", 10),
    )


def _parse_line(text: str) -> UserRecord:
    fields = text.split(":", 7)
    if len(fields) < 2:
        raise ValueError("no password field")
    address = normalize_address(fields[0])
    ids: list[int | None] = []
    for name, value in (("uid", fields[2] if len(fields) > 2 else ""), ("gid", fields[3] if len(fields) > 3 else "")):
        if value == "":
            ids.append(None)
        elif value.isdigit():
            ids.append(int(value))
        else:
            raise ValueError(f"{name} is not a number")
    home = fields[5] if len(fields) > 5 else ""
    extra = fields[7] if len(fields) > 7 else ""
    return UserRecord(address, fields[1], ids[0], ids[1], home, extra, parse_extra_fields(extra))


def _parse(data: bytes) -> _Parsed:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed = _Parsed(lines, {}, {}, [], DEFAULT_ROUNDS)
    cost_seen = False
    for index, raw in enumerate(lines):
        lineno = index + 1
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            parsed.problems.append((lineno, "not UTF-8"))
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            record = _parse_line(text)
        except InvalidAddress:
            parsed.problems.append((lineno, "user is not a valid local@domain address"))
            continue
        except ValueError as exc:
            parsed.problems.append((lineno, str(exc)))
            continue
        parsed.line_of.setdefault(record.address, []).append(index)
        if record.address in parsed.users:
            first = parsed.line_of[record.address][0] + 1
            parsed.problems.append((lineno, f"duplicate entry for {record.address} (line {first} is used)"))
            continue
        parsed.users[record.address] = record
        if not cost_seen:
            m = re.match(r"\{BLF-CRYPT\}\$2[aby]\$(\d\d)\$", record.password, re.IGNORECASE)
            if m and 4 <= int(m.group(1)) <= 31:
                parsed.bcrypt_cost, cost_seen = int(m.group(1)), True
    return parsed


_EMPTY = _Parsed([], {}, {}, [], DEFAULT_ROUNDS)


class UsersFile:
    """The users file at ``path``; re-read only when it changes on disk.

    With ``cache_size`` and ``cache_ttl`` (``auth.cache_size``/``auth.cache_ttl``)
    successful password checks are remembered (``authcache.AuthCache``), and
    forgotten whenever the file changes."""

    def __init__(self, path: str | os.PathLike, *, cache_size: int = 0, cache_ttl: float = 0) -> None:
        self.path = Path(path)
        self._key: tuple | None = None
        self._parsed: _Parsed = _EMPTY
        self._cache_settings = (cache_size, cache_ttl)
        self._cache: AuthCache | None = None  # made at the first check: its imports cost an inetd session ~3 ms

    # -- reading --

    def _load(self, look: bool = True) -> _Parsed:
        """The parsed file; ``look=False``: what was read last, without a look
        at the disk (an event loop's lookup)."""
        if not look:
            return self._parsed
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._key, self._parsed = None, _EMPTY
            log.warning(f"{self.path}: {exc.strerror}")
            raise UsersUnavailable(f"{self.path}: {exc.strerror}") from None
        if self._key == (st.st_mtime_ns, st.st_size, st.st_ino):
            return self._parsed
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except OSError as exc:  # unreadable (or gone since stat): a temporary failure for everyone
            log.warning(f"{self.path}: {exc.strerror}")
            raise UsersUnavailable(f"{self.path}: {exc.strerror}") from None
        parsed = _parse(data)
        for lineno, message in parsed.problems:
            log.warning(f"{self.path}:{lineno}: line skipped: {message}")
        self._key, self._parsed = (st.st_mtime_ns, st.st_size, st.st_ino), parsed
        if self._cache is not None:
            self._cache.clear()
        return parsed

    def problems(self) -> list[tuple[int, str]]:
        """(line number, message) for every line that is skipped; raises OSError if unreadable."""
        return _parse(self.path.read_bytes()).problems

    def lookup(self, address: str, look: bool = True) -> UserRecord | None:
        users = self._load(look).users
        for key in _lookup_keys(address):
            record = users.get(key)
            if record is not None:
                return record
        return None

    def exists(self, address: str, look: bool = True) -> bool:
        return self.lookup(address, look) is not None

    def verify(self, address: str, password: str | bytes, *, allow_plain_scheme: bool = False) -> bool:
        record = self.lookup(address)
        if record is None:
            # same work as for a real user, so timing does not tell who exists
            verify_hash(_dummy_hash(self._parsed.bcrypt_cost), password)
            return False
        cache = self._auth_cache()
        if cache is not None and cache.hit(record.address, record.password, password):
            return True
        ok = verify_hash(record.password, password, allow_plain_scheme, who=record.address)
        if ok and cache is not None:
            cache.remember(record.address, record.password, password)
        return ok

    def _auth_cache(self) -> AuthCache | None:
        size, ttl = self._cache_settings
        if self._cache is None and size > 0 and ttl > 0:
            from pymta.lib.authcache import AuthCache  # noqa: PLC0415 lazy

            self._cache = AuthCache(size, ttl)
        return self._cache

    def list(self) -> list[UserRecord]:
        """Every user; [] when the file does not exist yet (a new setup)."""
        if not self.path.exists():
            return []
        return list(self._load().users.values())

    # -- changing --

    def add(
        self,
        address: str,
        password: str | bytes,
        *,
        rounds: int = DEFAULT_ROUNDS,
        uid: int | None = None,
        gid: int | None = None,
        home: str = "",
    ) -> UserRecord:
        """Add ``address``; ``uid``, ``gid`` and ``home`` fill the passwd-file
        fields of those names (``user:password:uid:gid:gecos:home:shell:extra``)."""
        address = normalize_address(address)
        for name, value in (("uid", uid), ("gid", gid)):
            if value is not None and not (isinstance(value, int) and 0 <= value < 2**32 - 1):
                raise UsersError(f"{name} {value!r}: must be a number from 0 to 4294967294")
        if home and (not os.path.isabs(home) or any(c in home for c in ":\n\r\0")):
            raise UsersError(f"home {home!r}: must be an absolute path without ':' or control characters")
        hashed = hash_password(password, rounds)  # before the lock: hashing is slow
        line = f"{address}:{hashed}"
        if uid is not None or gid is not None or home:
            line += f":{'' if uid is None else uid}:{'' if gid is None else gid}::{home}::"

        def change(parsed: _Parsed) -> list[bytes]:
            if address in parsed.line_of:
                raise UserExists(f"{address}: user exists")
            return parsed.lines + [line.encode()]

        self._modify(change)
        return _parse_line(line)

    def set_password(self, address: str, password: str | bytes, *, rounds: int = DEFAULT_ROUNDS) -> None:
        address = normalize_address(address)
        hashed = hash_password(password, rounds).encode("utf-8")

        def change(parsed: _Parsed) -> list[bytes]:
            indexes = parsed.line_of.get(address)
            if not indexes:
                raise NoSuchUser(f"{address}: no such user")
            lines = list(parsed.lines)
            for i in indexes:  # duplicates too, so no stale entry can win later
                fields = lines[i].split(b":", 2)  # user, password[, the rest kept as is]
                fields[1] = hashed
                lines[i] = b":".join(fields)
            return lines

        self._modify(change)

    def set_quota(self, address: str, rule: str | None) -> None:
        """Give ``address`` the quota ``rule`` (Dovecot's quota_rule syntax,
        checked by ``parse_quota_rule``) as its ``userdb_quota_rule`` extra
        field, replacing its quota rules; None removes them.  The other
        fields and extra fields are kept as they are."""
        address = normalize_address(address)
        if rule is not None:
            rule = rule.strip()
            try:
                parse_quota_rule(rule)
            except ValueError as exc:
                raise UsersError(str(exc)) from None
            if any(c.isspace() for c in rule):
                raise UsersError(f"invalid quota rule {rule!r}: no spaces")

        def change(parsed: _Parsed) -> list[bytes]:
            indexes = parsed.line_of.get(address)
            if not indexes:
                raise NoSuchUser(f"{address}: no such user")
            lines = list(parsed.lines)
            for i in indexes:
                fields = (lines[i].split(b":", 7) + [b""] * 8)[:8]
                words = [w for w in fields[7].split() if not _QUOTA_FIELD.fullmatch(w.split(b"=")[0].decode().lower())]
                if rule is not None:
                    words.append(f"userdb_quota_rule={rule}".encode())
                fields[7] = b" ".join(words)
                lines[i] = b":".join(fields)
            return lines

        self._modify(change)

    def delete(self, address: str) -> None:
        address = normalize_address(address)

        def change(parsed: _Parsed) -> list[bytes]:
            indexes = set(parsed.line_of.get(address, ()))
            if not indexes:
                raise NoSuchUser(f"{address}: no such user")
            return [line for i, line in enumerate(parsed.lines) if i not in indexes]

        self._modify(change)

    def _modify(self, change) -> None:
        """Read, change and atomically replace the file under ``<path>.lock``."""
        from filelock import FileLock, Timeout  # noqa: PLC0415 lazy: only admin changes lock

        try:
            with FileLock(f"{self.path}.lock", timeout=LOCK_TIMEOUT):
                try:
                    data = self.path.read_bytes()
                except FileNotFoundError:
                    data = b""  # an unreadable file raises: never rewrite what we could not read
                self._write(b"".join(line + b"\n" for line in change(_parse(data))))
        except Timeout:
            raise UsersError(f"{self.path}: locked by another process for {LOCK_TIMEOUT:.0f} s") from None
        finally:
            self._key = None  # re-read next time

    def _write(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            tmp.unlink()  # a leftover from a crash; we hold the lock
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # whatever the umask
                old = os.stat(self.path)
                os.fchown(fd, old.st_uid, old.st_gid)  # keep e.g. root:mail
            except (FileNotFoundError, PermissionError):
                pass
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
