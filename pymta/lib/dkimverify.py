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
"""

from __future__ import annotations

from collections import namedtuple

# result as above; domain, selector, algorithm from d=, s=, a=; bprefix: the
# first 8 characters of b= (RFC 6008); reason: a short explanation or "";
# length: the l= value or None
Signature = namedtuple("Signature", "result domain selector algorithm bprefix reason length")


class TempFail(Exception):
    """DNS did not answer the key lookup."""


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return "".join(c for c in str(value) if c.isprintable())


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

    try:
        verifier = dkim.DKIM(message, minkey=min_key_bits)
    except dkim.DKIMException as exc:
        return [Signature("permerror", "", "", "", "", f"message not parsed: {_text(exc)}", None)]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [_verify_one(dkim, verifier, idx, txt) for idx in range(min(count, max_signatures))]


def _verify_one(dkim, verifier, idx: int, txt) -> Signature:
    found = []

    def dnsfunc(name, timeout=5):
        key = txt(_text(name), timeout)
        found.append(key is not None)
        return key

    try:
        prep = verifier.verify_headerprep(idx)
    except dkim.DKIMException as exc:
        fields = getattr(verifier, "signature_fields", {}) or {}
        return _signature(fields, "neutral", f"bad signature: {_text(exc)}")
    sig, include_headers, sigheaders = prep
    algorithm = _text(sig.get(b"a", b"")).lower()
    verifier.pk = verifier.keysize = None  # set by the key lookup: None after it means an unusable key
    try:
        ok = verifier.verify_sig(sig, include_headers, sigheaders[idx], dnsfunc)
    except TempFail as exc:
        return _signature(sig, "temperror", f"key lookup failed: {_text(exc)}")
    except dkim.ValidationError as exc:
        text = _text(exc)
        if text.startswith("body hash mismatch"):
            return _signature(sig, "fail", "body hash mismatch")
        return _signature(sig, "permerror", text)
    except dkim.KeyFormatError as exc:
        text = _text(exc)
        if text.startswith("public key too small"):
            return _signature(sig, "policy", text)
        return _signature(sig, "permerror", f"bad key: {text}")
    except dkim.DKIMException as exc:
        return _signature(sig, "permerror", _text(exc))
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
        _text(sig.get(b"d", b"")).lower(),
        _text(sig.get(b"s", b"")),
        _text(sig.get(b"a", b"")).lower(),
        _text(b"".join(sig.get(b"b", b"").split()))[:8],
        reason,
        int(length) if length and length.isdigit() else None,
    )
