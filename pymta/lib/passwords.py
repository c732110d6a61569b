"""Password hashes: making them and checking them, for every scheme Dovecot writes.

Hashes are made with passlib (bcrypt) and checked for every scheme Dovecot
writes (``{SCHEME}hash``, as the users file stores them: see
``pymta.lib.users``).  bcrypt and SHA-crypt hashes are checked with the
system's libxcrypt (``crypt_rn``, through ctypes) when it is there -- the
same code Dovecot checks them with, and faster than passlib's backends;
passlib checks everything else and is the fallback (the only checker when
the environment sets ``PYMAIL_NO_SYSTEM_CRYPT``).  Neither is imported until
a hash is actually made or checked: under inetd every connection pays a
daemon's import time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re

from . import log

DEFAULT_ROUNDS = 10
_BCRYPT_MAX = 72  # bcrypt reads at most 72 bytes; crypt(3) and Dovecot truncate, so do we

# A fixed cost-10 hash of a password nobody has: checking an unknown user
# against it costs what checking a real (default-cost) user costs, without
# hashing anything at start-up.
_DUMMY_BCRYPT_10 = "{BLF-CRYPT}$2b$10$KA/OM0W7QEKgt0bO5Vjp2O/lgZk3W8aq05IQZqV5ySw9UFGU7u9qq"


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
    from passlib.hash import bcrypt  # noqa: PLC0415 lazy

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
        import ctypes  # noqa: PLC0415 optional
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
    import hmac  # noqa: PLC0415 lazy

    return hmac.compare_digest(result, setting)


def _passlib_verify(handler_name: str, prefixes: tuple[str, ...], body: str, secret: bytes) -> bool:
    if not body.startswith(prefixes):
        raise _Malformed(f"expected a hash starting with {' or '.join(prefixes)}")
    if handler_name in _SYSTEM_CRYPT:
        verdict = _system_crypt_verify(body, secret[:_BCRYPT_MAX] if handler_name == "bcrypt" else secret)
        if verdict is not None:
            return verdict
    import passlib.hash  # noqa: PLC0415 lazy

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
        from argon2 import PasswordHasher  # noqa: PLC0415 optional
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError  # noqa: PLC0415 optional
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
    import hashlib  # noqa: PLC0415 lazy: only here: it loads OpenSSL, which an inetd session rarely needs

    size = hashlib.new(algo).digest_size
    raw = _decode(body, encoding or default, None if salted else size)
    if len(raw) < size or (not salted and len(raw) != size):
        raise _Malformed(f"wrong length for {scheme}")
    digest, salt = raw[:size], raw[size:]
    import hmac  # noqa: PLC0415 lazy

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
            import hmac  # noqa: PLC0415 lazy

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
