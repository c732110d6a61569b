"""Where a remote recipient's mail goes: transport map, relay host or MX.

Order (first match wins):

1. ``relay.transport_map`` -- ``{"domain" = "[host]:port"}``; a key
   ``".example.org"`` matches every subdomain, ``"*"`` matches everything.
   A value ``lmtp:[host]:port`` (port 24 by default) or ``lmtp:unix:/path``
   (relative to root) speaks LMTP (RFC 2033) to that next hop: Dovecot's
   LMTP, or another pymail's; ``smtp:`` in front of a value is the default.
2. ``relay.host`` (the smart host; AUTH with ``relay.username`` /
   ``relay.password_file``).
3. MX records from DNS (dnspython; ``relay.dns_servers`` picks the servers,
   e.g. ``["127.0.0.1:5353"]`` in tests): by preference, shuffled within a
   preference; no MX -> the domain's A/AAAA (RFC 5321 5.1); a null MX
   (RFC 7505: one MX ``0 .``) -> the recipient bounces at once.

A nexthop ``[host]:port`` (brackets) is used as it is, no MX lookup;
``host:port`` without brackets is looked up by A/AAAA only too -- the
transport map and relay host name machines, not mail domains.

``resolve`` returns a ``Route``: the destination key (recipients with the
same key share one SMTP transaction and one concurrency slot) and, when
resolved, the list of ``(host, ip, port)`` to try in order.  Errors are
``RouteError`` with an enhanced status code; ``temporary`` decides defer
or bounce.  dnspython is imported only when a lookup is really made.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path


class RouteError(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    @property
    def temporary(self) -> bool:
        return not self.status.startswith("5")


@dataclass
class Route:
    key: str  # destination: "mx:domain", "relay:[host]:port", "transport:[host]:port", "transport:lmtp:..."
    kind: str  # "transport" | "relay" | "mx"
    nexthop: str  # "[host]:port", "unix:/path" (LMTP) or the mail domain (mx)
    tls: str = "opportunistic"
    auth: tuple[str, str] | None = None
    hosts: list = field(default_factory=list)  # [(host, ip, port)]; ("unix", path, 0) for a UNIX socket
    protocol: str = "smtp"  # "smtp" | "lmtp"


def parse_nexthop(spec: str, default_port: int = 25) -> tuple[str, int]:
    """'[host]:port', 'host:port', '[host]', 'host', '[::1]:25' -> (host, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError(f"{spec!r}: missing ']'")
        if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
            raise ValueError(f"{spec!r}: bad port")
        port = int(rest[1:]) if rest else default_port
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep:
            host, port = spec, default_port
        elif port_text.isdigit():
            port = int(port_text)
        else:
            raise ValueError(f"{spec!r}: bad port")
    if not host or any(c.isspace() or c in "/\\@" for c in host) or not 0 < port < 65536:
        raise ValueError(f"{spec!r} is not [host]:port")
    return host, port


LMTP_PORT = 24  # Postfix's lmtp(8) default; RFC 2033 forbids only 25


def parse_transport(spec: str, default_port: int = 25) -> tuple[str, str, int | str]:
    """A transport map value -> (protocol, host, port), or ("lmtp", "unix", path):
    '[host]:port', 'smtp:[host]:port', 'lmtp:[host]:port', 'lmtp:host', 'lmtp:unix:/path'."""
    spec = spec.strip()
    protocol, sep, rest = spec.partition(":")
    if sep and protocol.lower() in ("smtp", "lmtp") and not rest.isdigit():
        protocol, spec = protocol.lower(), rest
    else:
        protocol = "smtp"
    if protocol == "lmtp":
        if spec.startswith("unix:"):
            path = spec[5:]
            if not path or "\0" in path:
                raise ValueError(f"{spec!r}: no socket path")
            return protocol, "unix", path
        if spec.startswith("inet:"):
            spec = spec[5:]
        default_port = LMTP_PORT
    host, port = parse_nexthop(spec, default_port)
    if protocol == "lmtp" and port == 25:
        raise ValueError(f"{spec!r}: LMTP must not use port 25 (RFC 2033)")
    return protocol, host, port


def transport_lookup(table: dict, domain: str) -> str | None:
    domain = domain.lower().rstrip(".")
    if domain in table:
        return table[domain]
    parts = domain.split(".")
    for i in range(1, len(parts)):
        key = "." + ".".join(parts[i:])
        if key in table:
            return table[key]
    return table.get("*")


def tls_policy(cfg, domain: str) -> str:
    policies = cfg["relay.tls_policy"]
    found = transport_lookup(policies, domain) if policies else None
    return found or cfg["relay.tls"]


def _relay_auth(cfg) -> tuple[str, str] | None:
    user = cfg["relay.username"]
    if not user:
        return None
    path = cfg["relay.password_file"]
    if not path:
        return None

    p = Path(path)
    if not p.is_absolute():
        p = cfg.root / p
    try:
        password = p.read_text().strip("\r\n")
    except OSError as exc:
        raise RouteError("4.7.0", f"cannot read relay.password_file: {exc.strerror}") from None
    return user, password


def route(cfg, domain: str) -> Route:
    """Decide where mail for ``domain`` goes (no DNS yet)."""
    domain = domain.lower().rstrip(".")
    table = cfg["relay.transport_map"]
    spec = transport_lookup(table, domain) if table else None
    if spec:
        protocol, host, port = parse_transport(spec, cfg["relay.smtp_port"])
        if host == "unix":  # LMTP over a UNIX socket: no TLS, no DNS
            path = str(cfg.root / str(port))  # an absolute path stays itself
            return Route(f"transport:lmtp:unix:{path}", "transport", f"unix:{path}", "none", protocol="lmtp")
        nexthop = f"[{host}]:{port}"
        prefix = "lmtp:" if protocol == "lmtp" else ""
        return Route(f"transport:{prefix}{nexthop}", "transport", nexthop, tls_policy(cfg, domain), protocol=protocol)
    if cfg["relay.host"]:
        host, port = parse_nexthop(cfg["relay.host"], cfg["relay.port"])
        return Route(f"relay:[{host}]:{port}", "relay", f"[{host}]:{port}", cfg["relay.tls"])
    return Route(f"mx:{domain}", "mx", domain, tls_policy(cfg, domain))


def resolve(cfg, r: Route) -> Route:
    """Fill ``r.hosts`` (and ``r.auth`` for the relay host); raise RouteError."""
    if r.kind == "relay":
        r.auth = _relay_auth(cfg)
    if r.nexthop.startswith("unix:"):
        r.hosts = [("unix", r.nexthop[5:], 0)]
        return r
    if r.kind in ("transport", "relay"):
        host, port = parse_nexthop(r.nexthop, 25)
        r.hosts = [(host, ip, port) for ip in _addresses(cfg, host)]
        return r
    r.hosts = mx_hosts(cfg, r.nexthop)
    return r


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _resolver(cfg):
    import dns.resolver  # noqa: PLC0415 lazy

    servers = cfg["relay.dns_servers"]
    if not servers:
        res = dns.resolver.Resolver()
    else:
        import dns.nameserver  # noqa: PLC0415 lazy

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(*_server(s)) for s in servers]
    res.lifetime = cfg["relay.dns_timeout"]
    res.timeout = min(res.lifetime, 5.0)
    return res


def _server(spec: str) -> tuple[str, int]:
    host, port = parse_nexthop(spec if (spec.startswith("[") or spec.count(":") <= 1) else f"[{spec}]", 53)
    return host, port


def _addresses(cfg, host: str) -> list[str]:
    """A and AAAA of a host name (IPv4 first); a literal is itself."""
    literal = _ip_literal(host)
    if literal:
        return [literal]
    if host.lower() == "localhost":
        return ["127.0.0.1"]
    if not cfg["relay.dns_servers"]:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                raise RouteError("5.1.2", f"host {host} not found") from None
            raise RouteError("4.4.3", f"host {host}: lookup failed ({exc.strerror})") from None
        ips = []
        for _family, _, _, _, addr in sorted(infos, key=lambda i: i[0] != socket.AF_INET):
            if addr[0] not in ips:
                ips.append(addr[0])
        return ips
    import dns.exception  # noqa: PLC0415 lazy
    import dns.resolver  # noqa: PLC0415 lazy

    res = _resolver(cfg)
    ips, nx = [], 0
    for rdtype in ("A", "AAAA"):
        try:
            ips += [r.address for r in res.resolve(host, rdtype, search=False)]
        except dns.resolver.NXDOMAIN:
            nx += 1
        except dns.resolver.NoAnswer:
            pass
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise RouteError("4.4.3", f"host {host}: DNS lookup failed ({type(exc).__name__})") from None
    if not ips:
        if nx:
            raise RouteError("5.1.2", f"host {host} not found (NXDOMAIN)")
        raise RouteError("5.1.2", f"host {host} has no address records")
    return ips


def mx_hosts(cfg, domain: str) -> list[tuple[str, str, int]]:
    """[(mx host, ip, port)] in the order to try them."""
    port = cfg["relay.smtp_port"]
    literal = domain[1:-1] if domain.startswith("[") and domain.endswith("]") else None
    if literal:
        return [(literal, literal.removeprefix("IPv6:"), port)]
    import dns.exception  # noqa: PLC0415 lazy
    import dns.resolver  # noqa: PLC0415 lazy

    res = _resolver(cfg)
    try:
        answer = list(res.resolve(domain, "MX", search=False))
    except dns.resolver.NXDOMAIN:
        raise RouteError("5.1.2", f"domain {domain} not found (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        answer = []
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
        raise RouteError("4.4.3", f"domain {domain}: MX lookup failed ({type(exc).__name__})") from None
    if not answer:  # RFC 5321 5.1: the implicit MX is the domain itself
        return [(domain, ip, port) for ip in _addresses(cfg, domain)]
    if any(str(r.exchange) == "." for r in answer):
        if len(answer) == 1 and answer[0].preference == 0:
            raise RouteError("5.1.10", f"domain {domain} accepts no mail (null MX, RFC 7505)")
        answer = [r for r in answer if str(r.exchange) != "."]
    by_pref: dict[int, list[str]] = {}
    for r in answer:
        by_pref.setdefault(r.preference, []).append(str(r.exchange).rstrip("."))
    hosts = []
    errors = []
    for pref in sorted(by_pref):
        names = by_pref[pref]
        random.shuffle(names)
        for name in names:
            try:
                hosts += [(name, ip, port) for ip in _addresses(cfg, name)]
            except RouteError as exc:
                errors.append(exc)
    if not hosts:
        temporary = [e for e in errors if e.temporary]
        raise temporary[0] if temporary else RouteError("5.4.4", f"domain {domain}: no MX host has an address")
    return hosts
