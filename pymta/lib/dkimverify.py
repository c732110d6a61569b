"""DKIM verification (RFC 6376) of every signature of a message, with dkimpy.

Each DKIM-Signature (topmost first, up to a maximum) gets its own result:

* ``pass``      -- the signature verifies (RSA-SHA256, or Ed25519 of RFC 8463);
                   a body-length tag ``l=`` is kept as a warning, since text
                   after that length is not covered;
* ``fail``      -- the body hash or the signature does not match;
* ``policy``    -- verifies only with ``rsa-sha1``, which RFC 8301 3.1 forbids
                   a verifier to accept, or a key smaller than the minimum;
* ``neutral``   -- the signature cannot be parsed (RFC 8601 2.7.1);
* ``permerror`` -- no key, or an unusable key record;
* ``temperror`` -- DNS did not answer within the time given.

``txt(name, timeout)`` returns the TXT record at ``name`` as bytes (None when
there is none) and raises ``TempFail`` when DNS does not answer.

Speed, for a listening smtpd that verifies every message: a key record is
parsed once per process (``_KEYS``, by its text), and once a process has
verified ``FAST_RSA_AFTER`` RSA signatures it checks them with OpenSSL
(``cryptography``, about 25 us) instead of dkimpy's pure-Python RSA (about
200 us).  The import costs about 27 ms, more than a one-message inetd
process would save, hence the count.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# result as above; domain, selector, algorithm from d=, s=, a=; bprefix: the
# first 8 characters of b= (RFC 6008); reason: a short explanation or "";
# length: the l= value or None
Signature = namedtuple("Signature", "result domain selector algorithm bprefix reason length")


class TempFail(Exception):
    """DNS did not answer the key lookup."""


FAST_RSA_AFTER = 20
KEY_CACHE_SIZE = 256
_KEYS: dict = {}  # key record text -> dkimpy's (pk, keysize, ktag, seqtlsrpt)
_rsa_verified = 0
_pure_rsa_verify: Any = None  # dkimpy's own, kept for small keys and the first signatures
_openssl: Any = None  # cryptography's names, once imported
_OPENSSL_KEYS: dict = {}  # (modulus, exponent) -> cryptography's public key


def printable(value) -> str:
    """``value`` (bytes or anything) as text without unprintable characters, for results and logs."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    value = str(value)
    return value if value.isprintable() else "".join(c for c in value if c.isprintable())


def has_field(message: bytes, name: bytes) -> bool:
    """Whether the header of ``message`` (CRLF or LF line ends) has a field
    ``name`` (lower case, without the colon)."""
    end = message.find(b"\r\n\r\n")
    lf_end = message.find(b"\n\n")
    if lf_end >= 0 and (end < 0 or lf_end < end):
        end = lf_end
    block = (message if end < 0 else message[:end]).lower()
    if not block.startswith(name) and b"\n" + name not in block:
        return False
    return any(line.split(b":", 1)[0].rstrip(b" \t") == name for line in block.split(b"\n") if line.startswith(name))


def verify_all(message: bytes, txt, max_signatures: int = 5, min_key_bits: int = 1024) -> list[Signature]:
    """The results of the first ``max_signatures`` signatures of ``message``
    (bytes with CRLF line ends); [] when it carries none.  dkimpy (about
    15 ms of CPU to import, with its logging, nacl and authres) is imported
    only for a message that has a DKIM-Signature field."""
    if not has_field(message, b"dkim-signature"):
        return []
    import dkim  # noqa: PLC0415 lazy

    from pymta.lib import dkimfast  # noqa: PLC0415 lazy (with dkim)

    dkimfast.install(dkim)
    try:
        verifier = dkim.DKIM(message, minkey=min_key_bits)
    except dkim.DKIMException as exc:
        return [Signature("permerror", "", "", "", "", f"message not parsed: {printable(exc)}", None)]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [_verify_one(dkim, verifier, idx, txt) for idx in range(min(count, max_signatures))]


def _verify_one(dkim, verifier, idx: int, txt) -> Signature:
    found = []

    def dnsfunc(name, timeout=5):
        key = txt(printable(name), timeout)
        found.append(key is not None)
        return key

    try:
        prep = verifier.verify_headerprep(idx)
    except dkim.DKIMException as exc:
        fields = getattr(verifier, "signature_fields", {}) or {}
        return _signature(fields, "neutral", f"bad signature: {printable(exc)}")
    sig, include_headers, sigheaders = prep
    algorithm = printable(sig.get(b"a", b"")).lower()
    verifier.pk = verifier.keysize = None  # set by the key lookup: None after it means an unusable key
    try:
        ok = _verify_sig(dkim, verifier, sig, include_headers, sigheaders[idx], dnsfunc)
    except TempFail as exc:
        return _signature(sig, "temperror", f"key lookup failed: {printable(exc)}")
    except dkim.ValidationError as exc:
        text = printable(exc)
        if text.startswith("body hash mismatch"):
            return _signature(sig, "fail", "body hash mismatch")
        return _signature(sig, "permerror", text)
    except dkim.KeyFormatError as exc:
        text = printable(exc)
        if text.startswith("public key too small"):
            return _signature(sig, "policy", text)
        return _signature(sig, "permerror", f"bad key: {text}")
    except dkim.DKIMException as exc:
        return _signature(sig, "permerror", printable(exc))
    except Exception as exc:  # dkimpy on hostile input: a result, never a lost message
        return _signature(sig, "permerror", f"{type(exc).__name__}")
    if found and not found[-1]:
        return _signature(sig, "permerror", "no key for signature")
    if not ok and verifier.pk is None:
        return _signature(sig, "permerror", "unusable key record")
    if not ok:
        if verifier.keysize and verifier.keysize < verifier.minkey:
            return _signature(sig, "policy", f"key of {verifier.keysize} bits too small")
        return _signature(sig, "fail", "signature did not verify")
    if algorithm == "rsa-sha1":
        return _signature(sig, "policy", "rsa-sha1 not accepted (RFC 8301)")
    if b"l" in sig:
        return _signature(sig, "pass", "body length limit l= (text after it is unsigned)")
    return _signature(sig, "pass", "")


def _signature(sig: dict, result: str, reason: str) -> Signature:
    length = sig.get(b"l")
    return Signature(
        result,
        printable(sig.get(b"d", b"")).lower(),
        printable(sig.get(b"s", b"")),
        printable(sig.get(b"a", b"")).lower(),
        printable(b"".join(sig.get(b"b", b"")[:40].split())[:8]),
        reason,
        int(length) if length and length.isdigit() else None,
    )


def _verify_sig(dkim, verifier, sig: dict, include_headers, sig_header, dnsfunc) -> bool:
    """dkimpy's ``DomainSigner.verify_sig`` with the parsed key kept per process."""
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    record = dnsfunc(name, timeout=verifier.timeout)
    try:
        key = _parsed_key(dkim, name, record)
    except (dkim.KeyFormatError, ValueError):  # as verify_sig: the key is unusable (pk stays None)
        return False
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key
    if verifier.ktag == b"rsa":
        _use_fast_rsa(dkim)
    return verifier.verify_sig_process(sig, include_headers, sig_header, dnsfunc)


def _parsed_key(dkim, name: bytes, record):
    if record is None:  # dkimpy's error for it
        return dkim.evaluate_pk(name, record)
    found = _KEYS.get(record)
    if found is None:
        found = dkim.evaluate_pk(name, record)
        if len(_KEYS) >= KEY_CACHE_SIZE:
            _KEYS.clear()  # plain dict operations: safe from the check threads without a lock
        _KEYS[record] = found
    return found


def _use_fast_rsa(dkim) -> None:
    """After FAST_RSA_AFTER RSA signatures, dkimpy checks RSA through ``_openssl_rsa_verify``."""
    global _rsa_verified, _pure_rsa_verify, _openssl
    _rsa_verified += 1  # a count lost between threads only delays the switch, which is idempotent
    if _rsa_verified < FAST_RSA_AFTER or _openssl is not None:
        return
    try:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 lazy
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 lazy
        from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: PLC0415 lazy
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: PLC0415 lazy
    except ImportError:
        return
    _openssl = (InvalidSignature, hashes, padding, rsa, Prehashed)
    _pure_rsa_verify = dkim.crypto.RSASSA_PKCS1_v1_5_verify  # the original, whoever switches
    dkim.RSASSA_PKCS1_v1_5_verify = _openssl_rsa_verify  # verify_sig_process looks it up there


def _openssl_rsa_verify(hasher, signature: bytes, pk: dict) -> bool:
    """RSASSA-PKCS1-v1_5 (RFC 8017 8.2.2) as dkimpy's ``RSASSA_PKCS1_v1_5_verify``, by OpenSSL:
    True or False for the same inputs (tests/unit/test_dkimverify_fast.py)."""
    modulus, exponent = pk["modulus"], pk["publicExponent"]
    algorithm = {"sha256": "SHA256", "sha1": "SHA1"}.get(hasher.name.lower())
    if algorithm is None or modulus.bit_length() < 1024:  # small keys: dkimpy's errors and results
        return _pure_rsa_verify(hasher, signature, pk)
    InvalidSignature, hashes, padding, rsa, Prehashed = _openssl
    key = _OPENSSL_KEYS.get((modulus, exponent))
    if key is None:
        if len(_OPENSSL_KEYS) >= KEY_CACHE_SIZE:
            _OPENSSL_KEYS.clear()
        try:
            key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError:
            return _pure_rsa_verify(hasher, signature, pk)
        _OPENSSL_KEYS[(modulus, exponent)] = key
    try:
        key.verify(signature, hasher.digest(), padding.PKCS1v15(), Prehashed(getattr(hashes, algorithm)()))
    except (InvalidSignature, ValueError):
        return False
    return True
