"""MX routing against a real DNS server on 127.0.0.1.

The server is a small authoritative UDP server written with dnspython (a
real socket and real DNS packets; the resolver under test is not mocked).
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from conftest import PASSWORD, free_port
from pymta.queue import Queue

SENDER = "alice@example.test"

# name -> {type: [rdata text]}
ZONE = {
    "mx.test.": {"MX": ["10 dead.mx.test.", "20 live.mx.test."]},
    "dead.mx.test.": {"A": ["127.0.0.2"]},  # nothing listens there: the next MX is tried
    "live.mx.test.": {"A": ["127.0.0.1"]},
    "bare.test.": {"A": ["127.0.0.1"]},  # no MX: the A record is the implicit MX
    "nullmx.test.": {"MX": ["0 ."]},  # RFC 7505
    "shuffle.test.": {"MX": ["10 live.mx.test.", "10 live2.mx.test."]},
    "live2.mx.test.": {"A": ["127.0.0.1"]},
}


class TinyDNS:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = []
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
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            q = query.question[0]
            name = q.name.to_text().lower()
            rtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rtype))
            if name not in ZONE:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif rtype in ZONE[name]:
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", rtype, ZONE[name][rtype]))
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def tinydns():
    server = TinyDNS()
    yield server
    server.close()


@pytest.fixture
def mx_peer(make_mailsys):
    """Our own smtpd on 127.0.0.1:PORT (PORT is relay.smtp_port of the sender)."""
    peer = make_mailsys()
    text = peer.config.read_text().replace(
        'domains = ["example.test"]', 'domains = ["mx.test", "bare.test", "shuffle.test"]'
    )
    peer.config.write_text(text)
    for domain in ("mx.test", "bare.test", "shuffle.test"):
        peer.add_user(f"rita@{domain}", PASSWORD)
    port = peer.start_smtpd()
    return peer, port


def sender_system(make_mailsys, dns_port: int, smtp_port: int):
    return make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dns_port}"]\nsmtp_port = {smtp_port}\n'
        f"dns_timeout = 3.0\nconnect_timeout = 2.0\ncommand_timeout = 5.0\n"
        f"[qrunner]\nretry_min = 1.0\n"
    )


def run_once(system) -> str:
    proc = system.run("pymta.qrunner", "--once", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def test_mx_by_preference_with_fallback_to_next_mx(make_mailsys, tinydns, mx_peer):
    peer, port = mx_peer
    sender = sender_system(make_mailsys, tinydns.port, port)
    Queue(sender.root / "queue").enqueue(SENDER, ["rita@mx.test"], b"Subject: via mx\n\nhi\n")
    log = run_once(sender)
    assert ("mx.test.", "MX") in tinydns.queries
    assert "relay=live.mx.test[127.0.0.1]" in log and "status=sent" in log
    # the preference-10 host was looked up (and failed) first
    assert tinydns.queries.index(("dead.mx.test.", "A")) < tinydns.queries.index(("live.mx.test.", "A"))
    run_once(peer)
    assert len(list((peer.root / "mail" / "mx.test" / "rita" / "new").iterdir())) == 1


def test_no_mx_falls_back_to_address_record(make_mailsys, tinydns, mx_peer):
    peer, port = mx_peer
    sender = sender_system(make_mailsys, tinydns.port, port)
    Queue(sender.root / "queue").enqueue(SENDER, ["rita@bare.test"], b"Subject: implicit mx\n\nhi\n")
    log = run_once(sender)
    assert "relay=bare.test[127.0.0.1]" in log and "status=sent" in log


def test_null_mx_and_nxdomain_bounce_at_once(make_mailsys, tinydns, mx_peer):
    peer, port = mx_peer
    sender = sender_system(make_mailsys, tinydns.port, port)
    Queue(sender.root / "queue").enqueue(SENDER, ["x@nullmx.test", "y@nowhere.test"], b"Subject: nope\n\nhi\n")
    log = run_once(sender)
    assert "to=<x@nullmx.test>" in log and "5.1.10" in log
    assert "to=<y@nowhere.test>" in log and "5.1.2" in log
    assert log.count("status=bounced") == 2
    run_once(sender)
    [dsn] = sender.messages("alice")
    text = dsn.read_text()
    assert "Status: 5.1.10" in text and "Status: 5.1.2" in text


def test_dns_server_down_defers(make_mailsys, mx_peer):
    peer, port = mx_peer
    sender = make_mailsys(f'[relay]\ndns_servers = ["127.0.0.1:{free_port()}"]\ndns_timeout = 1.0\n')
    Queue(sender.root / "queue").enqueue(SENDER, ["rita@mx.test"], b"Subject: later\n\nhi\n")
    log = run_once(sender)
    assert "status=deferred" in log and "4.4.3" in log


def test_same_preference_is_shuffled(make_mailsys, tinydns):
    from pymta.lib import config
    from pymta.routing import mx_hosts

    cfg = config.Config(dict(config.check({"relay": {"dns_servers": [f"127.0.0.1:{tinydns.port}"]}})[0]))
    seen = {tuple(h[0] for h in mx_hosts(cfg, "shuffle.test")) for _ in range(30)}
    assert seen == {("live.mx.test", "live2.mx.test"), ("live2.mx.test", "live.mx.test")}
    assert [h[0] for h in mx_hosts(cfg, "mx.test")] == ["dead.mx.test", "live.mx.test"]
