"""Users and password checks: the one place that reads and writes the users file.

The file is a Dovecot passwd-file, so existing ones move over unchanged::

    user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only the first two fields are required.  ``#`` comments, blank lines and even
lines we cannot parse are kept byte for byte when the file is rewritten: an
admin command must never destroy what it does not understand.

Lookups are case-insensitive and ``user+ext@domain`` finds ``user@domain``.
Hashes are made with passlib (bcrypt) and checked for every scheme Dovecot
writes.  bcrypt and SHA-crypt hashes are checked with the system's
libxcrypt (``crypt_rn``, through ctypes) when it is there -- the same code
Dovecot checks them with, and faster than passlib's backends; passlib checks
everything else and is the fallback (the only checker when the environment
sets ``PYMAIL_NO_SYSTEM_CRYPT``).  Neither is imported until a hash is
actually made or checked: under inetd every connection pays a daemon's
import time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
from pathlib import Path

from . import log
from .address import AddressError, account_address
from .record import Record

RECIPIENT_DELIMITER = "+"
DEFAULT_ROUNDS = 10
FILE_MODE = 0o640
LOCK_TIMEOUT = 10.0
_BCRYPT_MAX = 72  # bcrypt reads at most 72 bytes; crypt(3) and Dovecot truncate, so do we

# A fixed cost-10 hash of a password nobody has: checking an unknown user
# against it costs what checking a real (default-cost) user costs, without
# hashing anything at start-up.
_DUMMY_BCRYPT_10 = "{BLF-CRYPT}$2b$10$KA/OM0W7QEKgt0bO5Vjp2O/lgZk3W8aq05IQZqV5ySw9UFGU7u9qq"


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


# -- password hashes ----------------------------------------------------------------


def _secret(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def hash_password(password: str | bytes, rounds: int = DEFAULT_ROUNDS) -> str:
    """A new ``{BLF-CRYPT}$2b$...`` hash (passwords past 72 bytes are truncated, as crypt(3) does)."""
    secret = _secret(password)
    if not secret:
        raise ValueError("empty password")
    if b"\x00" in secret:
        raise ValueError("password contains NUL")
    if not 4 <= int(rounds) <= 31:
        raise ValueError("bcrypt rounds must be between 4 and 31")
    from passlib.hash import bcrypt

    return "{BLF-CRYPT}" + bcrypt.using(rounds=int(rounds), ident="2b").hash(secret[:_BCRYPT_MAX])


class _Malformed(Exception):
    pass


# crypt(3) hashes the system's libxcrypt checks faster than passlib's backends
# (bcrypt cost 10: 50 ms against 59 ms with pyca/bcrypt on this machine kind).
_SYSTEM_CRYPT = ("bcrypt", "sha512_crypt", "sha256_crypt")
_CRYPT_DATA = 64 * 1024  # >= sizeof(struct crypt_data) (32 KiB in libxcrypt)


@functools.lru_cache(maxsize=1)
def _crypt_rn():
    """libxcrypt's crypt_rn(3) -- the function Dovecot checks these hashes
    with -- or None.  Thread-safe (the caller's own buffer), and ctypes lets
    go of the GIL while it runs, so other sessions go on meanwhile."""
    if os.environ.get("PYMAIL_NO_SYSTEM_CRYPT"):
        return None
    try:
        import ctypes
    except ImportError:
        return None
    for name in ("libcrypt.so.1", "libcrypt.so.2"):
        try:
            func = ctypes.CDLL(name).crypt_rn
        except (OSError, AttributeError):
            continue
        func.restype = ctypes.c_char_p
        func.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
        return func, ctypes.create_string_buffer
    return None


def _system_crypt_verify(body: str, secret: bytes) -> bool | None:
    """True/False from the system's crypt_rn(3); None when it cannot say (no
    libxcrypt, a hash it does not take): passlib then decides."""
    found = _crypt_rn()
    if found is None:
        return None
    crypt_rn, make_buffer = found
    try:
        setting = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    result = crypt_rn(secret, setting, make_buffer(_CRYPT_DATA), _CRYPT_DATA)
    if not result or result.startswith(b"*"):
        return None
    import hmac

    return hmac.compare_digest(result, setting)


def _passlib_verify(handler_name: str, prefixes: tuple[str, ...], body: str, secret: bytes) -> bool:
    if not body.startswith(prefixes):
        raise _Malformed(f"expected a hash starting with {' or '.join(prefixes)}")
    if handler_name in _SYSTEM_CRYPT:
        verdict = _system_crypt_verify(body, secret[:_BCRYPT_MAX] if handler_name == "bcrypt" else secret)
        if verdict is not None:
            return verdict
    import passlib.hash

    handler = getattr(passlib.hash, handler_name)
    if handler_name == "bcrypt":
        secret = secret[:_BCRYPT_MAX]
    try:
        return handler.verify(secret, body)
    except ValueError as exc:  # passlib's "not a valid ... hash"
        raise _Malformed(str(exc)) from None


def _argon2_verify(kind: str, body: str, secret: bytes) -> bool:
    if not body.startswith(f"$argon2{kind}$"):
        raise _Malformed(f"expected a hash starting with $argon2{kind}$")
    try:
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
    except ImportError:
        raise _Malformed("argon2-cffi is not installed") from None
    try:
        return PasswordHasher().verify(body, secret)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError) as exc:  # e.g. "Decoding failed"
        raise _Malformed(f"argon2: {exc}") from None


def _crypt_verify(body: str, secret: bytes) -> bool:
    """{CRYPT}: whatever crypt(3) made, told apart by its prefix."""
    for prefix, handler in (("$2", "bcrypt"), ("$6$", "sha512_crypt"), ("$5$", "sha256_crypt"), ("$1$", "md5_crypt")):
        if body.startswith(prefix):
            return _passlib_verify(handler, (prefix,), body, secret)
    if body.startswith("$argon2id$"):
        return _argon2_verify("id", body, secret)
    if body.startswith("$argon2i$"):
        return _argon2_verify("i", body, secret)
    if body.startswith("_") and len(body) == 20:
        return _passlib_verify("bsdi_crypt", ("_",), body, secret)
    if len(body) == 13:
        return _passlib_verify("des_crypt", ("",), body, secret)
    raise _Malformed("not a crypt(3) hash this system knows")


# scheme -> (hashlib name, salted, default encoding)
_DIGESTS = {
    "SHA": ("sha1", False, "b64"),
    "SHA1": ("sha1", False, "b64"),
    "SHA256": ("sha256", False, "b64"),
    "SHA512": ("sha512", False, "b64"),
    "SSHA": ("sha1", True, "b64"),
    "SSHA256": ("sha256", True, "b64"),
    "SSHA512": ("sha512", True, "b64"),
    "PLAIN-MD5": ("md5", False, "hex"),
    "LDAP-MD5": ("md5", False, "b64"),
    "SMD5": ("md5", True, "b64"),
}

_PASSLIB = {
    "BLF-CRYPT": ("bcrypt", ("$2a$", "$2b$", "$2y$")),
    "SHA512-CRYPT": ("sha512_crypt", ("$6$",)),
    "SHA256-CRYPT": ("sha256_crypt", ("$5$",)),
    "MD5-CRYPT": ("md5_crypt", ("$1$",)),
    "MD5": ("md5_crypt", ("$1$",)),  # Dovecot's {MD5} is MD5-CRYPT, not a bare digest
}


def _decode(body: str, encoding: str, size: int | None = None) -> bytes:
    try:
        # Dovecot reads a hex digest even where base64 is the default
        if encoding == "hex" or (size is not None and len(body) == 2 * size and re.fullmatch(r"[0-9a-fA-F]+", body)):
            return bytes.fromhex(body)
        return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        raise _Malformed(f"not valid {encoding}") from None


def _digest_verify(scheme: str, body: str, secret: bytes, encoding: str | None) -> bool:
    algo, salted, default = _DIGESTS[scheme]
    import hashlib  # only here: it loads OpenSSL, which an inetd session rarely needs

    size = hashlib.new(algo).digest_size
    raw = _decode(body, encoding or default, None if salted else size)
    if len(raw) < size or (not salted and len(raw) != size):
        raise _Malformed(f"wrong length for {scheme}")
    digest, salt = raw[:size], raw[size:]
    import hmac

    return hmac.compare_digest(hashlib.new(algo, secret + salt).digest(), digest)


def split_scheme(stored: str) -> tuple[str, str, str | None]:
    """``{SHA256.HEX}abc`` -> ("SHA256", "abc", "hex"); no braces means {CRYPT} (Dovecot's default)."""
    if stored.startswith("{") and "}" in stored:
        scheme, _, body = stored[1:].partition("}")
    else:
        scheme, body = "CRYPT", stored
    scheme = scheme.upper()
    encoding = None
    name, dot, enc = scheme.rpartition(".")
    if dot and enc in ("HEX", "B64", "BASE64"):
        scheme, encoding = name, ("hex" if enc == "HEX" else "b64")
    return scheme, body, encoding


def verify_hash(stored: str, password: str | bytes, allow_plain_scheme: bool = False, *, who: str = "") -> bool:
    """Does ``password`` match ``stored`` ({SCHEME}hash)?  Never raises.

    Unknown schemes and malformed hashes give False and a warning (the admin
    needs to know why a login fails; the client only learns "no").
    """
    where = f"{who}: " if who else ""
    try:
        if not isinstance(stored, str) or not stored:
            return False  # no password set: the user cannot log in
        secret = _secret(password)
        if not secret or b"\x00" in secret:
            return False  # no real password is empty or holds NUL (AUTH PLAIN's separator)
        scheme, body, encoding = split_scheme(stored)
        if scheme in _PASSLIB:
            handler, prefixes = _PASSLIB[scheme]
            return _passlib_verify(handler, prefixes, body, secret)
        if scheme == "CRYPT":
            return _crypt_verify(body, secret)
        if scheme in ("ARGON2ID", "ARGON2I"):
            return _argon2_verify(scheme[6:].lower(), body, secret)
        if scheme in _DIGESTS:
            return _digest_verify(scheme, body, secret, encoding)
        if scheme in ("PLAIN", "CLEARTEXT"):
            if not allow_plain_scheme:
                log.warning(f"{where}{{{scheme}}} password refused (auth.allow_plain_scheme is off)")
                return False
            expected = _decode(body, encoding) if encoding else body.encode("utf-8")
            import hmac

            return hmac.compare_digest(expected, secret)
        log.warning(f"{where}unknown password scheme {{{scheme}}}")
        return False
    except _Malformed as exc:
        log.warning(f"{where}malformed password hash: {exc}")
        return False
    except Exception as exc:  # a bug or a broken backend must not become a traceback on the wire
        log.warning(f"{where}password check failed: {type(exc).__name__}: {exc}")
        return False


@functools.lru_cache(maxsize=4)
def _dummy_hash(cost: int) -> str:
    if cost == 10:
        return _DUMMY_BCRYPT_10
    return hash_password(b"pymail dummy password, never valid", rounds=cost)


# -- the file ----------------------------------------------------------------------


class _Parsed(Record):
    __slots__ = ("lines", "users", "line_of", "problems", "bcrypt_cost")
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
    ids = []
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
    """The users file at ``path``; re-read only when it changes on disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._key: tuple | None = None
        self._parsed: _Parsed = _EMPTY

    # -- reading --

    def _load(self) -> _Parsed:
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
        return parsed

    def problems(self) -> list[tuple[int, str]]:
        """(line number, message) for every line that is skipped; raises OSError if unreadable."""
        return _parse(self.path.read_bytes()).problems

    def lookup(self, address: str) -> UserRecord | None:
        users = self._load().users
        for key in _lookup_keys(address):
            record = users.get(key)
            if record is not None:
                return record
        return None

    def exists(self, address: str) -> bool:
        return self.lookup(address) is not None

    def verify(self, address: str, password: str | bytes, *, allow_plain_scheme: bool = False) -> bool:
        record = self.lookup(address)
        if record is None:
            # same work as for a real user, so timing does not tell who exists
            verify_hash(_dummy_hash(self._parsed.bcrypt_cost), password)
            return False
        return verify_hash(record.password, password, allow_plain_scheme, who=record.address)

    def list(self) -> list[UserRecord]:
        """Every user; [] when the file does not exist yet (a new setup)."""
        if not self.path.exists():
            return []
        return list(self._load().users.values())

    # -- changing --

    def add(self, address: str, password: str | bytes, *, rounds: int = DEFAULT_ROUNDS) -> UserRecord:
        address = normalize_address(address)
        hashed = hash_password(password, rounds)  # before the lock: hashing is slow

        def change(parsed: _Parsed) -> list[bytes]:
            if address in parsed.line_of:
                raise UserExists(f"{address}: user exists")
            return parsed.lines + [f"{address}:{hashed}".encode()]

        self._modify(change)
        return UserRecord(address, hashed)

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
        from filelock import FileLock, Timeout

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
