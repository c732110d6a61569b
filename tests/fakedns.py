"""A small authoritative DNS server on 127.0.0.1 for the checks' tests,
written with dnspython: real UDP packets, the resolver under test is not
mocked (as tests/test_relay_mx.py's).

``zone`` maps names ("spf.test.") to {type: [rdata text]}; TXT texts are
given unquoted and split into 255-octet strings here.  ``silent=True``
makes a server that reads queries and never answers (a DNS server down),
``servfail=True`` one that answers SERVFAIL to everything (a broken zone).
``address`` is where it listens (a free port on 127.0.0.1 by default); a
program that can only ask port 53 gets ``("127.0.53.N", 53)``, see
tests/realmilters.py.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def txt(text: str) -> str:
    """One TXT rdata in zone-file form: quoted strings of at most 255 octets."""
    parts = [text[i : i + 250] for i in range(0, len(text), 250)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


class FakeDNS:
    def __init__(
        self,
        zone: dict | None = None,
        silent: bool = False,
        servfail: bool = False,
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.zone = zone if zone is not None else {}
        self.silent = silent
        self.servfail = servfail
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(address)
        except OSError:
            self.sock.close()
            raise
        self.host, self.port = self.sock.getsockname()[:2]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            q = query.question[0]
            name = q.name.to_text().lower()
            rtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rtype))
            if self.silent:
                continue
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            records = self.zone.get(name)
            if self.servfail:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif records is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif rtype in records:
                texts = [txt(t) for t in records[rtype]] if rtype == "TXT" else records[rtype]
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", rtype, texts))
            self.sock.sendto(reply.to_wire(max_size=4096), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
