"""DNS block and allow lists (DNSBL / DNSWL) for port 25, the postscreen way.

``smtpd.dnsbl_sites`` names the lists as ``zone[=filter]*weight``
(postscreen_dnsbl_sites syntax):

* ``zen.example.org*3`` -- any answer from the zone adds 3;
* ``bl.example.net=127.0.0.2*2`` -- only the answer 127.0.0.2 adds 2;
* ``bl.example.net=127.0.0.[2..11]``, ``=127.0.0.[2;4;9..11]`` -- per-octet
  ranges and lists, as postscreen writes them;
* ``wl.example.org*-5`` -- a negative weight is an allowlist.

A client is asked about as its reversed address under each zone (IPv4
octets, IPv6 nibbles: 1.2.3.4 -> 4.3.2.1.zone).  All zones are asked at once,
within ``smtpd.dnsbl_timeout``; the weights of the zones that list the
client add up to its score, and a score of ``smtpd.dnsbl_threshold`` or more
blocks it.  A zone that does not answer counts as not listing the client:
a DNS failure never refuses mail.

The servers asked are ``relay.dns_servers`` (else the system resolver), as
for MX lookups.  dnspython is imported only when a lookup is really made.
"""

from __future__ import annotations

import ipaddress
import time
from collections import namedtuple

from pymta.lib import log

Site = namedtuple("Site", "zone filter weight")  # filter: None, or 4 sets of allowed octets
Verdict = namedtuple("Verdict", "score blocked listed allowed failed")  # listed/allowed/failed: zone names

CACHE_TTL = 300.0  # seconds a complete answer is reused (several RCPTs, sessions from one client)
CACHE_MAX = 10000  # entries; the cache is emptied when full


def parse_site(spec: str) -> Site:
    """``zone[=filter][*weight]`` -> Site; ValueError if it is not that."""
    text, star, weight_text = spec.strip().partition("*")
    try:
        weight = int(weight_text) if star else 1
    except ValueError:
        raise ValueError(f"{spec!r}: weight must be an integer") from None
    zone, eq, filter_text = text.partition("=")
    zone = zone.strip().rstrip(".").lower()
    labels = zone.split(".")
    if (
        not zone
        or len(zone) > 200
        or not all(label and all(c.isalnum() or c in "-_" for c in label) for label in labels)
    ):
        raise ValueError(f"{spec!r}: {zone!r} is not a DNS zone")
    return Site(zone, _parse_filter(spec, filter_text) if eq else None, weight)


def _parse_filter(spec: str, text: str) -> tuple:
    """'127.0.0.[2..11]' -> four frozensets of allowed octet values."""
    octets = []
    for part in _split_octets(text):
        allowed: set[int] = set()
        items = part[1:-1].split(";") if part.startswith("[") and part.endswith("]") else [part]
        for item in items:
            low, dots, high = item.partition("..")
            if not low.isdigit() or (dots and not high.isdigit()):
                raise ValueError(f"{spec!r}: bad answer filter {text!r}")
            low_n, high_n = int(low), int(high) if dots else int(low)
            if not 0 <= low_n <= high_n <= 255:
                raise ValueError(f"{spec!r}: bad answer filter {text!r}")
            allowed.update(range(low_n, high_n + 1))
        octets.append(frozenset(allowed))
    if len(octets) != 4:
        raise ValueError(f"{spec!r}: the answer filter must be an IPv4 address pattern")
    return tuple(octets)


def _split_octets(text: str) -> list[str]:
    """Split at the dots that separate octets, not at the '..' inside [ ]."""
    parts, depth, current = [], 0, ""
    for c in text:
        depth += (c == "[") - (c == "]")
        if c == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    return parts


def matches(site: Site, answer: str) -> bool:
    if site.filter is None:
        return True
    try:
        octets = [int(o) for o in answer.split(".")]
    except ValueError:
        return False
    return len(octets) == 4 and all(o in allowed for o, allowed in zip(octets, site.filter, strict=True))


def query_name(ip: str, zone: str) -> str:
    """The name to look up: reversed IPv4 octets or IPv6 nibbles under ``zone``."""
    pointer = ipaddress.ip_address(ip).reverse_pointer  # 4.3.2.1.in-addr.arpa / ....ip6.arpa
    return pointer.rsplit(".", 2)[0] + "." + zone + "."


class DNSBL:
    """The configured lists; ``verdict(ip)`` asks them all.  One per process:
    its cache serves every session, and lookups may run in several threads."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.sites = []
        for spec in cfg["smtpd.dnsbl_sites"]:
            try:
                self.sites.append(parse_site(spec))
            except ValueError as exc:  # `pymail config check` reports it too; never refuse mail over it
                log.error(f"config: smtpd.dnsbl_sites: {exc}; ignored")
        self.threshold = cfg["smtpd.dnsbl_threshold"]
        self.timeout = cfg["smtpd.dnsbl_timeout"]
        self._cache: dict[str, tuple[float, Verdict]] = {}

    def verdict(self, ip: str) -> Verdict:
        if not self.sites:
            return Verdict(0, False, (), (), ())
        try:
            ipaddress.ip_address(ip)
        except ValueError:  # "local", "unix": nothing to ask
            return Verdict(0, False, (), (), ())
        now = time.monotonic()
        cached = self._cache.get(ip)
        if cached is not None and cached[0] > now:
            return cached[1]
        verdict = self._lookup(ip)
        if not verdict.failed:  # a failure is asked again next time
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = (now + CACHE_TTL, verdict)
        return verdict

    def _lookup(self, ip: str) -> Verdict:
        from concurrent.futures import ThreadPoolExecutor, wait  # noqa: PLC0415 lazy

        pool = ThreadPoolExecutor(max_workers=len(self.sites), thread_name_prefix="dnsbl")
        try:
            futures = {pool.submit(self._ask, site, ip): site for site in self.sites}
            done, _ = wait(futures, timeout=self.timeout + 1.0)
        finally:
            pool.shutdown(wait=False)
        score, listed, allowed, failed = 0, [], [], []
        for future, site in futures.items():
            answer = future.result() if future in done else None
            if answer is None:
                failed.append(site.zone)
            elif any(matches(site, a) for a in answer):
                score += site.weight
                (listed if site.weight > 0 else allowed).append(site.zone)
        return Verdict(score, score >= self.threshold and bool(listed), tuple(listed), tuple(allowed), tuple(failed))

    def _ask(self, site: Site, ip: str):
        """The zone's A records for the client ([] if not listed), or None when
        the lookup failed -- logged, and counted as not listed."""
        import dns.exception  # noqa: PLC0415 lazy
        import dns.resolver  # noqa: PLC0415 lazy

        from pymta.routing import _resolver  # noqa: PLC0415 lazy: relay.dns_servers, as MX lookups use

        res = _resolver(self.cfg)
        res.lifetime = self.timeout
        res.timeout = self.timeout
        name = query_name(ip, site.zone)
        try:
            return [r.address for r in res.resolve(name, "A", search=False)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as exc:
            log.warning(f"dnsbl: {site.zone}: lookup of [{ip}] failed ({type(exc).__name__}); counted as not listed")
            return None
