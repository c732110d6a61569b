"""DKIM: `pymail dkim keygen` prints the TXT record; outbound mail verifies with dkimpy against it.

The published key is served by the small DNS server of test_relay_mx and
fetched by dkimpy through dnspython, as a receiving MTA would.
"""

from __future__ import annotations

import re

import dkim
import dns.resolver

from pymta.queue import Queue
from test_relay import SENDER, aio_peer, relay_config, run_once  # noqa: F401  (fixture)
from test_relay_mx import ZONE, TinyDNS


def keygen(system, domain="example.test", selector="sel1"):
    proc = system.run("pymta.cli", "dkim", "keygen", domain, selector)
    assert proc.returncode == 0, proc.stderr
    record = proc.stdout.decode().strip()
    m = re.fullmatch(rf"{selector}\._domainkey\.{re.escape(domain)}\. IN TXT \( (.*) \)", record)
    assert m, record
    return m.group(1)  # the quoted strings


def test_keygen_record_and_key_file(make_mailsys):
    system = make_mailsys()
    strings = keygen(system)
    value = "".join(re.findall(r'"([^"]*)"', strings))
    assert value.startswith("v=DKIM1; k=rsa; p=")
    key = system.root / "dkim" / "example.test" / "sel1.key"
    assert key.stat().st_mode & 0o777 == 0o600
    again = system.run("pymta.cli", "dkim", "keygen", "example.test", "sel1")
    assert again.returncode != 0  # never overwrites a key
    bad = system.run("pymta.cli", "dkim", "keygen", "../etc", "sel1")
    assert bad.returncode != 0


def test_outbound_mail_is_signed_and_verifies(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port, "") + '[dkim]\nselector = "sel1"\n')
    strings = keygen(sender)
    server = TinyDNS()
    ZONE["sel1._domainkey.example.test."] = {"TXT": [strings]}
    try:
        Queue(sender.root / "queue").enqueue(
            SENDER,
            ["ok@remote.test"],
            b"From: Alice <alice@example.test>\nTo: ok@remote.test\nSubject: signed\n"
            b"Date: Sat, 28 Nov 2026 07:00:00 +0000\n"
            b"Message-ID: <signed@example.test>\n\nbody line\n.leading dot\n",
        )
        run_once(sender)
        [(_, _, content)] = handler.messages
        assert content.startswith(b"DKIM-Signature: ")

        def dnsfunc(name, timeout=5):
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = ["127.0.0.1"]
            res.port = server.port
            answer = res.resolve(name.decode().rstrip(".") + ".", "TXT")
            return b"".join(b"".join(r.strings) for r in answer)

        assert dkim.verify(content, dnsfunc=dnsfunc)
        tampered = content.replace(b"body line", b"body lime")
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)
    finally:
        ZONE.pop("sel1._domainkey.example.test.", None)
        server.close()


def test_mail_from_other_domains_is_not_signed(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port, "") + '[dkim]\nselector = "sel1"\n')
    keygen(sender)
    Queue(sender.root / "queue").enqueue("someone@elsewhere.test", ["ok@remote.test"], b"Subject: x\n\nhi\n")
    run_once(sender)
    [(_, _, content)] = handler.messages
    assert b"DKIM-Signature" not in content
