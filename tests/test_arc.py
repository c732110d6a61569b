"""ARC (RFC 8617, issue 12 §1): verification of a chain on port 25, trusted sealers letting a
forwarded message through DMARC p=reject, and sealing of mail pymail forwards.

Real smtpd and queue-runner processes, a real DNS server on 127.0.0.1 (tests/fakedns.py); ARC
sets made and checked by dkimpy, as another MTA would."""

from __future__ import annotations

import re
import subprocess

import dkim
import pytest

from fakedns import FakeDNS
from pymta.queue import Queue
from test_authcheck import ZONE, ar_field, checked_system, crlf, msg, only_message, queued, send, smtpd_log
from test_relay import SENDER, aio_peer, relay_config, run_once  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def dns_zone():
    server = FakeDNS(dict(ZONE))
    yield server
    server.close()


def rsa_key(tmp_path, name: str) -> tuple[bytes, str]:
    from pymta import dkim_sign

    path = tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes(), dkim_sign.public_key_b64(path)


def forwarded(tmp_path, dns_zone, sealer: str = "lists.test") -> bytes:
    """A message From: signed.test (SPF -all, DMARC p=reject), DKIM-signed by signed.test and
    then changed by a mailing list at SEALER (a subject tag), which checked it first and sealed
    it (ARC i=1, cv=none): DKIM now fails, and the list's SPF is not signed.test's."""
    from pymta import dkim_sign

    pem, public = rsa_key(tmp_path, "signed")
    dns_zone.zone["sel._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=rsa; p={public}"]}
    text = msg("alice@signed.test", "hello", body="Signed text.\n").replace(b"\r\n", b"\n")
    original = dkim_sign.sign(text, "signed.test", "sel", pem) + text
    # the list checks it (its own Authentication-Results), changes it, seals it
    changed = original.replace(b"Subject: hello", b"Subject: [list] hello")
    checked = (
        f"Authentication-Results: {sealer}; spf=pass smtp.mailfrom=signed.test; "
        f"dkim=pass header.d=signed.test; dmarc=pass header.from=signed.test\n"
    ).encode() + changed
    seal_pem, seal_public = rsa_key(tmp_path, "seal")
    dns_zone.zone[f"arc._domainkey.{sealer}."] = {"TXT": [f"v=DKIM1; k=rsa; p={seal_public}"]}
    fields = dkim.arc_sign(crlf(checked), b"arc", sealer.encode(), seal_pem, sealer.encode())
    assert len(fields) == 3
    return b"".join(fields) + crlf(checked)


def test_p_reject_refuses_the_forwarded_message_without_a_trusted_sealer(make_mailsys, dns_zone, tmp_path):
    message = forwarded(tmp_path, dns_zone)
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    code, text = send(port, "list-bounces@lists.test", message)
    assert (code, text) == (550, "5.7.1 Email rejected per DMARC policy for signed.test")
    assert queued(system) == []
    assert "spf=none dkim=fail dmarc=fail arc=pass" in smtpd_log(system)


def test_trusted_sealer_lets_it_through_with_arc_pass_and_the_override(make_mailsys, dns_zone, tmp_path):
    message = forwarded(tmp_path, dns_zone)
    system = checked_system(make_mailsys, dns_zone.port, 'arc_trusted_sealers = ["Lists.Test"]\n')
    port = system.start_smtpd()
    assert send(port, "list-bounces@lists.test", message)[0] == 250
    field = ar_field(only_message(system))
    lines = field.split("\n")
    assert lines[1] == "\tspf=none smtp.mailfrom=lists.test;"
    assert lines[2].startswith("\tdkim=fail (body hash mismatch) header.d=signed.test header.s=sel") or lines[
        2
    ].startswith("\tdkim=fail (signature did not verify) header.d=signed.test header.s=sel")
    assert lines[3] == "\tarc=pass (as[1].d=lists.test) header.oldest-pass=0 smtp.remote-ip=127.0.0.2;"
    assert lines[4] == (
        "\tdmarc=fail (p=reject sp=reject dis=none override=trusted_forwarder arc=pass as[1].d=lists.test) "
        "header.from=signed.test"
    )
    assert "dmarc=fail arc=pass override=(trusted_forwarder" in smtpd_log(system)


def test_a_broken_chain_is_arc_fail_and_does_not_help(make_mailsys, dns_zone, tmp_path):
    message = forwarded(tmp_path, dns_zone).replace(b"Signed text.", b"Changed after the seal.")
    system = checked_system(make_mailsys, dns_zone.port, 'arc_trusted_sealers = ["lists.test"]\n')
    port = system.start_smtpd()
    code, _ = send(port, "list-bounces@lists.test", message)
    assert code == 550
    assert "dmarc=fail arc=fail" in smtpd_log(system)


def test_untrusted_sealer_is_recorded_when_dmarc_only_records(make_mailsys, dns_zone, tmp_path):
    message = forwarded(tmp_path, dns_zone, sealer="other.test")
    system = checked_system(
        make_mailsys, dns_zone.port, 'arc_trusted_sealers = ["lists.test"]\ndmarc_reject = "record"\n'
    )
    port = system.start_smtpd()
    assert send(port, "list-bounces@other.test", message)[0] == 250
    field = ar_field(only_message(system))
    assert "\tarc=pass (as[1].d=other.test) header.oldest-pass=0 smtp.remote-ip=127.0.0.2;\n" in field
    assert "\tdmarc=fail (p=reject sp=reject dis=reject) header.from=signed.test" in field


# -- sealing -----------------------------------------------------------------------------------


def test_forwarded_mail_is_sealed_and_the_chain_verifies(make_mailsys, aio_peer, tmp_path):
    """A message that came in through smtpd's checks (our Authentication-Results on top) and
    leaves again for a remote address gets an ARC set by the forwarding domain's DKIM key; a
    message we did not check (submission, local) gets none."""
    handler, port = aio_peer
    system = make_mailsys(relay_config(port, "") + '[dkim]\nselector = "sel1"\n')
    made = system.run("pymta.cli", "dkim", "keygen", "example.test", "sel1")
    assert made.returncode == 0, made.stderr
    strings = made.stdout.decode().split("( ", 1)[1].rsplit(" )", 1)[0]
    record = "".join(re.findall(r'"([^"]*)"', strings))
    zone = {"sel1._domainkey.example.test.": {"TXT": [record]}}
    arrived = (
        b"Authentication-Results: mx.example.test;\n\tspf=pass smtp.mailfrom=sender.test;\n\tdkim=none;\n"
        b"\tdmarc=pass (p=reject sp=reject dis=none) header.from=sender.test\n"
        b"Received: from client.example.net ([127.0.0.2]) by mx.example.test\n"
        b"From: <news@sender.test>\nTo: <fwd@example.test>\nSubject: forwarded\n"
        b"Message-ID: <f1@sender.test>\n\nForwarded body.\n"
    )
    queue = Queue(system.root / "queue")
    queue.enqueue("news@sender.test", ["ok@remote.test"], arrived)
    queue.enqueue(SENDER, ["ok@remote.test"], b"From: <alice@example.test>\nSubject: mine\n\nhi\n")
    run_once(system)
    by_subject = {re.search(rb"Subject: (\w+)", m[2]).group(1): m[2] for m in handler.messages}
    sealed, mine = by_subject[b"forwarded"], by_subject[b"mine"]
    assert sealed.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test; s=sel1;")
    assert b"\r\nARC-Message-Signature: i=1;" in sealed and b"\r\nARC-Authentication-Results: i=1;" in sealed
    assert b"ARC-Seal" not in mine

    def dnsfunc(name, timeout=5):
        found = zone.get(name.decode().rstrip(".") + ".")
        return "".join(found["TXT"]).encode() if found else None

    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert results[0]["as-domain"] == b"example.test"
