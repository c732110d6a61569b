"""SPF (RFC 7208) of one SMTP client, evaluated by pyspf over the caller's DNS.

pyspf (module ``spf``) knows the record language, the macros and the
RFC's limits (10 DNS-querying terms, 2 void lookups, 10 MX/PTR names); its
DNS comes through its module-level ``DNSLookup`` hook, which this module
replaces once with one that asks the lookup function of the calling
thread.  So each check uses the servers the caller chose
(``relay.dns_servers``) and its time budget, without a global resolver.

``lookup(name, rdtype, timeout)`` returns dnspython rdata objects ([] for
NXDOMAIN or no answer) and raises ``TempFail`` when DNS does not answer.
"""

from __future__ import annotations

import threading
from collections import namedtuple

# result: pass, fail, softfail, neutral, none, temperror, permerror (RFC 7208 2.6)
# identity: "mailfrom" or "helo"; domain: the domain checked; reason: pyspf's words
# for errors ("" otherwise)
Result = namedtuple("Result", "result identity domain reason")

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


class TempFail(Exception):
    """DNS did not answer (timeout, SERVFAIL, no server): never a "no record"."""


_local = threading.local()
_installed = False


def _dns_lookup(name, qtype, strict=True, timeout=30):
    """pyspf's DNSLookup: [((name, qtype), value)] from the thread's lookup."""
    import spf  # noqa: PLC0415 lazy

    try:
        answers = _local.lookup(name, qtype, timeout)
    except TempFail as exc:
        raise spf.TempError(f"DNS {exc}") from None
    found = []
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


def check(ip: str, sender: str, helo: str, lookup, budget: float) -> Result:
    """SPF of ``ip`` for MAIL FROM ``sender``, or for the HELO name when the
    reverse path is null (RFC 7208 2.4); every lookup within ``budget`` seconds."""
    global _installed
    import spf  # noqa: PLC0415 lazy

    if not _installed:
        spf.DNSLookup = _dns_lookup
        _installed = True
    identity = "mailfrom" if sender else "helo"
    domain = (sender.rpartition("@")[2] if sender else helo).lower().rstrip(".")
    if not domain or "." not in domain or domain.startswith("["):
        return Result("none", identity, domain, "no domain to check")
    _local.lookup = lookup
    try:
        query = spf.query(i=ip, s=sender, h=helo, querytime=max(budget, 0.01))
        result, _code, text = query.check()
    except Exception as exc:  # a pyspf bug on strange input must not cost the message
        return Result("permerror", identity, domain, f"{type(exc).__name__}: {exc}")
    finally:
        _local.lookup = None
    reason = text if result in ("temperror", "permerror") else ""
    return Result(result, identity, domain, reason)
