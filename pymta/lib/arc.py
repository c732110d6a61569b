"""ARC (RFC 8617) with dkimpy: verify the chain of a message that arrives,
seal a message that is forwarded.

``verify`` checks every ARC set (ARC-Seal, ARC-Message-Signature,
ARC-Authentication-Results) of a message and gives:

* ``pass``      -- the chain validates: every ARC-Seal, and the most recent
                   ARC-Message-Signature;
* ``fail``      -- it does not (a seal or the latest message signature does
                   not verify, a set is missing or doubled, a sealer said
                   cv=fail);
* ``none``      -- the message carries no ARC set;
* ``temperror`` -- DNS did not answer a key lookup.

``sealer`` is the d= of the most recent ARC-Seal: the intermediary that
vouches for the ARC-Authentication-Results it recorded, which the receiving
side may trust (``checks.arc_trusted_sealers``) to override a DMARC failure
the forward itself caused (RFC 7489 6.7, RFC 8617 7.2).

``seal`` adds the next ARC set to a message whose Authentication-Results
field of ``authserv_id`` (ours) records the checks made when it came in,
including ``arc=`` when it already had a chain (the new seal's cv= comes
from it).  dkimpy is imported only here, and only when there is an ARC
header to verify or a message to seal.
"""

from __future__ import annotations

from collections import namedtuple

from pymta.lib.dkimverify import TempFail, has_field, printable

# result: pass, fail, none, temperror; instance: the highest i= (0: none); sealer: the
# d= of that instance's ARC-Seal; oldest_pass: the lowest instance whose
# ARC-Message-Signature still verifies, 0 when all do (RFC 8617 5.2); reason: for a comment
Result = namedtuple("Result", "result instance sealer oldest_pass reason")

NONE = Result("none", 0, "", 0, "")


def verify(message: bytes, txt, min_key_bits: int = 1024) -> Result:
    """The ARC result of ``message`` (CRLF line ends); ``txt(name, timeout)``
    as for ``dkimverify.verify_all``."""
    if not has_field(message, b"arc-seal"):
        return NONE
    import dkim  # noqa: PLC0415 lazy

    def dnsfunc(name, timeout=5):
        return txt(printable(name), timeout)

    try:
        verifier = dkim.ARC(message, minkey=min_key_bits)
        cv, sets, reason = verifier.verify(dnsfunc=dnsfunc)
    except TempFail as exc:
        return Result("temperror", 0, "", 0, f"key lookup failed: {printable(exc)}")
    except dkim.DKIMException as exc:
        return Result("fail", 0, "", 0, printable(exc))
    except Exception as exc:  # dkimpy on hostile input: a result, never a lost message
        return Result("fail", 0, "", 0, type(exc).__name__)
    instance = sets[0]["instance"] if sets else 0
    sealer = printable(sets[0].get("as-domain", b"")).lower() if sets else ""
    if cv == dkim.CV_Pass:
        valid = sorted(s["instance"] for s in sets if s.get("ams-valid"))
        oldest = 0 if len(valid) == len(sets) else (valid[0] if valid else instance)
        return Result("pass", instance, sealer, oldest, "")
    if cv == dkim.CV_None and not sets:
        return NONE
    return Result("fail", instance, sealer, 0, printable(reason))


def seal(message_lf: bytes, domain: str, selector: str, key_pem: bytes, authserv_id: str) -> bytes:
    """The next ARC set (three header fields, LF line ends) for ``message_lf``
    (LF line ends), sealed by ``domain`` with the key of ``selector``; b""
    when the message has no Authentication-Results field of ``authserv_id``
    or its chain ended (a failed chain is not sealed over, RFC 8617 5.1)."""
    if not has_field(message_lf, b"authentication-results"):
        return b""
    import dkim  # noqa: PLC0415 lazy

    crlf = message_lf.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    fields = dkim.arc_sign(crlf, selector.encode(), domain.encode(), key_pem, authserv_id.encode())
    return b"".join(fields).replace(b"\r\n", b"\n")
