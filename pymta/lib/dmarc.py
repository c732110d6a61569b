"""DMARC (RFC 7489): policy discovery, identifier alignment, the disposition.

Sans-I/O: the caller gives the From: domain, the SPF and DKIM results and a
``txt(name)`` function (TXT strings at a name, [] when none, raising
``TempFail`` when DNS does not answer); this module decides.

The organizational domain is the public suffix plus one label, from the
Public Suffix List of the ``publicsuffixlist`` package.  Building that
package's whole list costs about 30 ms of CPU (it IDNA-encodes every one of
its 10,000 rules), which an inetd smtpd -- one Python a connection -- would
pay for every message; so the list is looked at only when the answer is not
known without it (a domain of two labels is its own organizational domain;
two domains whose last two labels differ are never aligned), and then only
the rules of the domain's top-level domain are handed to ``PublicSuffixList``
(a regular-expression pass over the file, well under a millisecond), one
list per top-level domain, kept for the process.  The library still does the
matching (wildcards, exceptions, IDNA forms).
"""

from __future__ import annotations

import random
import re
import threading
from collections import namedtuple

# result: pass, fail, none (no policy published), temperror, permerror (no usable From:)
# domain: the From: domain; policy: the record's p= or sp= that applies ("" when none);
# disposition: none, quarantine or reject -- what the record asks for this message,
# after pct sampling; record: the tags found (empty when none); reason: for the header
Result = namedtuple("Result", "result domain policy disposition record reason")

POLICIES = ("none", "quarantine", "reject")


class TempFail(Exception):
    """DNS did not answer."""


_psl_text: bytes | None = None
_psl_by_tld: dict = {}  # top-level domain -> PublicSuffixList of its rules only
_psl_lock = threading.Lock()


def _tld_list(tld: str):
    """A ``PublicSuffixList`` of the rules whose last label is ``tld``
    (given in its ASCII, xn-- form), cached per process."""
    global _psl_text
    with _psl_lock:
        found = _psl_by_tld.get(tld)
        if found is not None:
            return found
        from publicsuffixlist import PSLFILE, PublicSuffixList  # noqa: PLC0415 lazy

        if _psl_text is None:
            with open(PSLFILE, "rb") as fh:
                _psl_text = fh.read()
        forms = {tld.encode()}
        if tld.startswith("xn--"):
            try:
                forms.add(tld.encode().decode("idna").encode())  # the list writes IDN rules in Unicode
            except UnicodeError:
                pass
        pattern = rb"^(?:[^\s/]*\.)?(?:" + b"|".join(re.escape(f) for f in forms) + rb")[ \t]*$"
        rules = re.findall(pattern, _psl_text, re.MULTILINE)  # the list is lower case
        found = _psl_by_tld[tld] = PublicSuffixList(rules)
        return found


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix and one more label (the domain itself
    when it is a public suffix or unknown)."""
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    if len(labels) <= 2:  # the TLD, or one label under it (a public suffix or not): itself
        return domain
    return _tld_list(labels[-1]).privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict is equality, relaxed is the
    same organizational domain."""
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not identifier or not from_domain:
        return False
    if identifier == from_domain:
        return True
    if mode == "s" or identifier.split(".")[-2:] != from_domain.split(".")[-2:]:
        return False  # an organizational domain holds at least the last two labels of both
    return organizational_domain(identifier) == organizational_domain(from_domain)


def parse_record(text: str) -> dict | None:
    """The tags of a DMARC record, or None when ``text`` is not one
    (it must start with v=DMARC1).  Unknown tags are ignored; a p= that is
    missing or wrong makes it p=none when rua= is there, else no record
    (RFC 7489 6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip())
        elif part.strip():
            return None if not tags else tags
    if tags.get("v") != "DMARC1" or not text.lstrip().lower().startswith("v"):
        return None
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if not tags.get("rua"):
            return None
        policy = "none"
    tags["p"] = policy
    sub = tags.get("sp", "").lower()
    tags["sp"] = sub if sub in POLICIES else policy
    for key in ("adkim", "aspf"):
        tags[key] = "s" if tags.get(key, "r").lower() == "s" else "r"
    pct = tags.get("pct", "100")
    tags["pct"] = pct if pct.isdigit() and int(pct) <= 100 else "100"
    return tags


def _find(txt, name: str) -> dict | None:
    records = [r for r in (parse_record(t) for t in txt(name)) if r is not None]
    return records[0] if len(records) == 1 else None  # several: none applies (6.6.3)


def evaluate(
    from_domain: str | None,
    txt,
    spf_result: str,
    spf_domain: str,
    dkim_passes: list[str],
    temperrors: bool = False,
    sample: float | None = None,
) -> Result:
    """The DMARC result for a message whose single From: domain is
    ``from_domain`` (None: none or several, so no DMARC can apply).

    ``spf_domain``: the domain SPF checked (MAIL FROM, or HELO for <>);
    ``dkim_passes``: the d= of each passing signature; ``temperrors``: SPF or
    a signature met a DNS failure -- then a message that has no aligned pass
    is a temperror, never a false fail.  ``sample`` in [0, 100) picks the
    pct= draw (default: random)."""
    if not from_domain:
        return Result("permerror", "", "", "none", {}, "no single From: domain")
    domain = from_domain.lower().rstrip(".")
    try:
        record = _find(txt, f"_dmarc.{domain}")
        org = organizational_domain(domain)
        at_org = False
        if record is None and org != domain:
            record = _find(txt, f"_dmarc.{org}")
            at_org = record is not None
    except TempFail as exc:
        return Result("temperror", domain, "", "none", {}, f"policy lookup failed: {exc}")
    if record is None:
        return Result("none", domain, "", "none", {}, "")
    policy = record["sp"] if at_org else record["p"]
    spf_ok = spf_result == "pass" and aligned(spf_domain, domain, record["aspf"])
    dkim_ok = any(aligned(d, domain, record["adkim"]) for d in dkim_passes)
    if spf_ok or dkim_ok:
        return Result("pass", domain, policy, "none", record, "")
    if temperrors:
        return Result("temperror", domain, policy, "none", record, "SPF or DKIM could not be checked")
    disposition = policy
    draw = random.random() * 100 if sample is None else sample
    if disposition != "none" and draw >= int(record["pct"]):
        # not sampled: the next policy down (RFC 7489 6.6.4)
        disposition = "quarantine" if disposition == "reject" else "none"
    return Result("fail", domain, policy, disposition, record, "")
