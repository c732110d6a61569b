"""SPF, DKIM, DMARC and Authentication-Results on port 25 (issue 12 §1),
against real smtpd processes and a real DNS server on 127.0.0.1
(tests/fakedns.py).  Clients connect from 127.0.0.2 and trusted_networks is
emptied, so they are checked like strangers from the Internet."""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
import time

import pytest

from conftest import PASSWORD
from fakedns import FakeDNS

CLIENT = "127.0.0.2"
AR = b"Authentication-Results: mx.example.test;"

ZONE = {
    # SPF pass, DMARC p=reject
    "pass.test.": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
    "_dmarc.pass.test.": {"TXT": ["v=DMARC1; p=reject"]},
    "mail.pass.test.": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
    # SPF fail, no DMARC: SPF decides
    "fail.test.": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "soft.test.": {"TXT": ["v=spf1 ip4:192.0.2.1 ~all"]},
    "nospf.test.": {"A": ["192.0.2.9"]},
    # more than 10 DNS-querying terms: permerror
    "loop.test.": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.loop.test" for i in range(11)) + " -all"]},
    **{f"h{i}.loop.test.": {"A": ["192.0.2.50"]} for i in range(11)},
    # DKIM-signed domains: SPF fails, DMARC p=reject, so only an aligned signature saves a message
    "signed.test.": {"TXT": ["v=spf1 -all"]},
    "_dmarc.signed.test.": {"TXT": ["v=DMARC1; p=reject"]},
    # quarantine, pct, subdomain policy
    "quar.test.": {"TXT": ["v=spf1 -all"]},
    "_dmarc.quar.test.": {"TXT": ["v=DMARC1; p=quarantine"]},
    "pct.test.": {"TXT": ["v=spf1 -all"]},
    "_dmarc.pct.test.": {"TXT": ["v=DMARC1; p=reject; pct=0"]},
    "org.test.": {"TXT": ["v=spf1 -all"]},
    "_dmarc.org.test.": {"TXT": ["v=DMARC1; p=none; sp=reject"]},
    "sub.org.test.": {"TXT": ["v=spf1 -all"]},
}


@pytest.fixture
def dns_zone():
    server = FakeDNS(dict(ZONE))
    yield server
    server.close()


def checked_system(make_mailsys, dns_port: int, extra: str = "", trusted: str = "[]"):
    return make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dns_port}"]\ndns_timeout = 3.0\n'
        f"[smtpd]\ntrusted_networks = {trusted}\n[checks]\ntime_budget = 3.0\n{extra}"
    )


def send(port: int, sender: str, message: bytes, rcpt: str = "alice@example.test", helo: str = "client.example.net"):
    """MAIL, RCPT, DATA from CLIENT; the end-of-DATA reply (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(CLIENT, 0)) as client:
        client.ehlo(helo)
        assert client.mail(sender)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(message)
        return code, text.decode()


def queued(system) -> list[bytes]:
    """The messages in the queue (the envelope line cut off)."""
    found = []
    deadline = time.time() + 5
    while time.time() < deadline and not found:
        found = [p.read_bytes().split(b"\n", 1)[1] for p in system.queue_files() if p.parent.name == "new"]
        time.sleep(0.02)
    return found


def only_message(system) -> bytes:
    messages = queued(system)
    assert len(messages) == 1
    return messages[0]


def ar_field(message: bytes) -> str:
    """Our Authentication-Results field, unfolded lines kept, as text."""
    head = message.split(b"\n\n", 1)[0]
    assert head.startswith(AR), head[:200]
    lines = head.split(b"\n")
    field = [lines[0]]
    for line in lines[1:]:
        if not line.startswith(b"\t"):
            break
        field.append(line)
    return b"\n".join(field).decode()


def smtpd_log(system) -> str:
    proc = system.procs[-1]
    proc.terminate()
    proc.wait(timeout=10)
    return proc.stderr.read().decode()


def msg(from_addr: str, subject: str = "test", extra: str = "", body: str = "Hello.\n") -> bytes:
    return crlf(
        (
            f"From: <{from_addr}>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@x>\r\n{extra}\r\n{body}"
        ).encode()
    )


# -- SPF ---------------------------------------------------------------------------------------


def test_spf_pass_and_dmarc_pass_by_relaxed_alignment(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "bounce@mail.pass.test", msg("news@pass.test"))[0] == 250
    message = only_message(system)
    assert ar_field(message) == (
        "Authentication-Results: mx.example.test;\n"
        "\tspf=pass smtp.mailfrom=mail.pass.test;\n"
        "\tdkim=none;\n"
        "\tdmarc=pass (p=reject sp=reject dis=none) header.from=pass.test"
    )
    # above our Received: field
    assert message.split(b"\n")[4].startswith(b"Received: from client.example.net ([127.0.0.2])")
    assert "spf=pass dkim=none dmarc=pass (queued)" in smtpd_log(system)


def test_dns_answers_are_cached_for_their_ttl_within_a_process(make_mailsys, dns_zone):
    """Three messages from one domain to one smtpd process: the SPF and DMARC records are
    asked once (the zone's TTL is 60 s), and every message still gets its results."""
    system = checked_system(make_mailsys, dns_zone.port, trusted="[]\nprocesses = 1")
    port = system.start_smtpd()
    for n in range(3):
        assert send(port, "bounce@mail.pass.test", msg("news@pass.test", subject=f"n{n}"))[0] == 250
    messages = []
    deadline = time.time() + 5
    while len(messages) < 3 and time.time() < deadline:
        messages = queued(system)
    assert len(messages) == 3
    for message in messages:
        assert "spf=pass smtp.mailfrom=mail.pass.test" in ar_field(message)
        assert "dmarc=pass (p=reject sp=reject dis=none) header.from=pass.test" in ar_field(message)
    assert dns_zone.queries.count(("mail.pass.test.", "TXT")) == 1, dns_zone.queries
    assert dns_zone.queries.count(("_dmarc.pass.test.", "TXT")) == 1, dns_zone.queries


def test_an_spf_result_is_kept_while_its_dns_answers_are(make_mailsys, dns_zone):
    """The same client, sender and HELO again: the result computed before, while
    every answer it came from is the cached one; once one is asked again (its
    TTL ran out), the result follows the new record.  Another sender (SPF
    macros may use the local part) is computed afresh."""
    from pymta.authcheck import Checker
    from pymta.lib import config

    system = checked_system(make_mailsys, dns_zone.port)
    checker = Checker(config.load(system.config, write_cache=False))
    first = checker.spf("127.0.0.2", "bounce@mail.pass.test", "client.example")
    assert first.result == "pass"
    assert checker.spf("127.0.0.2", "bounce@mail.pass.test", "client.example") is first
    other = checker.spf("127.0.0.2", "news@mail.pass.test", "client.example")
    assert other.result == "pass" and other is not first
    assert dns_zone.queries.count(("mail.pass.test.", "TXT")) == 1

    dns_zone.zone["mail.pass.test."] = {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]}
    key = ("mail.pass.test", "TXT")
    checker.dns._cache[key] = (0.0, checker.dns._cache[key][1])  # its TTL is over
    again = checker.spf("127.0.0.2", "bounce@mail.pass.test", "client.example")
    assert again.result == "fail"
    assert dns_zone.queries.count(("mail.pass.test.", "TXT")) == 2


def test_strict_spf_alignment_fails_dmarc(make_mailsys, dns_zone):
    dns_zone.zone["_dmarc.pass.test."] = {"TXT": ["v=DMARC1; p=reject; aspf=s"]}
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    before = _stats(system)
    code, text = send(port, "bounce@mail.pass.test", msg("news@pass.test"))
    assert (code, text) == (550, "5.7.1 Email rejected per DMARC policy for pass.test")
    assert queued(system) == []
    after = _stats(system)
    refused = 'pymail_smtp_refused_total{service="smtp",reason="dmarc"}'
    assert after.get(refused, 0) == before.get(refused, 0) + 1
    assert after["pymail_checked_messages_total"] == before.get("pymail_checked_messages_total", 0) + 1
    log = smtpd_log(system)
    assert "reject: END-OF-MESSAGE from [127.0.0.2]: 550 5.7.1" in log
    assert "spf=pass dkim=none dmarc=fail" in log


def test_spf_fail_without_dmarc_is_refused_with_5_7_23(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    code, text = send(port, "someone@fail.test", msg("someone@fail.test"))
    assert code == 550
    assert text == "5.7.23 SPF validation failed: fail.test does not permit [127.0.0.2] to send as <someone@fail.test>"
    assert queued(system) == []


def test_spf_fail_only_recorded_when_configured(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port, "spf_reject = []\n")
    port = system.start_smtpd()
    assert send(port, "someone@fail.test", msg("someone@fail.test"))[0] == 250
    assert "\tspf=fail smtp.mailfrom=fail.test;\n" in ar_field(only_message(system))


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("someone@soft.test", "spf=softfail smtp.mailfrom=soft.test"),
        ("someone@nospf.test", "spf=none smtp.mailfrom=nospf.test"),
        ("someone@loop.test", "spf=permerror (SPF Permanent Error: Too many DNS lookups) smtp.mailfrom=loop.test"),
    ],
)
def test_spf_results_recorded_and_accepted(make_mailsys, dns_zone, sender, expected):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, sender, msg(sender))[0] == 250
    field = ar_field(only_message(system))
    assert f"\t{expected};\n" in field
    assert field.endswith(f"dmarc=none header.from={sender.split('@')[1]}")


def test_null_sender_checks_the_helo_name(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "", msg("mailer-daemon@pass.test"), helo="pass.test")[0] == 250
    assert "\tspf=pass smtp.helo=pass.test;\n" in ar_field(only_message(system))


@pytest.fixture
def dns_broken():
    """A DNS server that answers SERVFAIL to everything."""
    server = FakeDNS(servfail=True)
    yield server
    server.close()


def test_dns_failure_is_temperror_recorded_and_accepted(make_mailsys, dns_broken):
    system = checked_system(make_mailsys, dns_broken.port)
    port = system.start_smtpd()
    assert send(port, "someone@pass.test", msg("someone@pass.test"))[0] == 250
    field = ar_field(only_message(system))
    assert "\tspf=temperror (SPF Temporary Error: DNS NoNameservers) smtp.mailfrom=pass.test;\n" in field
    assert "\tdmarc=temperror (policy lookup failed: NoNameservers) header.from=pass.test" in field


def test_dns_failure_deferred_when_configured(make_mailsys, dns_broken):
    system = checked_system(make_mailsys, dns_broken.port, 'temperror = "defer"\n')
    port = system.start_smtpd()
    code, text = send(port, "someone@pass.test", msg("someone@pass.test"))
    assert (code, text) == (451, "4.7.1 Temporary DNS failure checking the DMARC policy of pass.test")
    assert queued(system) == []


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_silent_dns_server_costs_at_most_the_time_budget(make_mailsys, mode):
    silent = FakeDNS(silent=True)
    try:
        system = make_mailsys(
            f'[relay]\ndns_servers = ["127.0.0.1:{silent.port}"]\n'
            f"[smtpd]\ntrusted_networks = []\n[checks]\ntime_budget = 2.0\n"
        )
        port = system.start_smtpd(mode)
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(CLIENT, 0)) as client:
            client.ehlo("client.example.net")
            assert client.mail("someone@pass.test")[0] == 250
            assert client.rcpt("alice@example.test")[0] == 250
            started = time.monotonic()
            code, _ = client.data(msg("someone@pass.test"))
            waited = time.monotonic() - started
        assert code == 250
        assert waited < 2.0 + 1.5, waited
        field = ar_field(only_message(system))
        assert "spf=temperror" in field and "dmarc=temperror" in field
        assert silent.queries  # the lookups were really sent
    finally:
        silent.close()


# -- DKIM --------------------------------------------------------------------------------------


def rsa_key(tmp_path, bits: int = 2048) -> tuple[bytes, str]:
    from pymta import dkim_sign

    path = tmp_path / f"rsa{bits}.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes(), dkim_sign.public_key_b64(path)


def signed_by_us(tmp_path, dns_zone, from_addr: str = "alice@signed.test", body: str = "Signed text.\n") -> bytes:
    """A message signed by pymail's own signer (pymta.dkim_sign), its key published."""
    from pymta import dkim_sign

    pem, public = rsa_key(tmp_path)
    dns_zone.zone["sel._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=rsa; p={public}"]}
    text = msg(from_addr, "signed", body=body).replace(b"\r\n", b"\n")
    return dkim_sign.sign(text, "signed.test", "sel", pem) + text


def crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_dkim_pass_from_our_signer_makes_dmarc_pass_despite_spf_fail(make_mailsys, dns_zone, tmp_path):
    message = signed_by_us(tmp_path, dns_zone)
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "alice@signed.test", crlf(message))[0] == 250
    field = ar_field(only_message(system))
    signature = re.sub(rb"\s", b"", message.split(b"\nFrom:")[0])
    b = re.search(rb";b=([^;]+)", signature).group(1)[:8].decode()
    expected_b = f'"{b}"' if "/" in b else b  # "/" is a tspecial (RFC 2045): quoted; "+" is a token character
    assert field == (
        "Authentication-Results: mx.example.test;\n"
        "\tspf=fail smtp.mailfrom=signed.test;\n"
        f"\tdkim=pass header.d=signed.test header.s=sel header.a=rsa-sha256 header.b={expected_b};\n"
        "\tdmarc=pass (p=reject sp=reject dis=none) header.from=signed.test"
    )
    assert "spf=fail dkim=pass dmarc=pass (queued)" in smtpd_log(system)


def test_changed_body_fails_dkim_and_p_reject_refuses_it(make_mailsys, dns_zone, tmp_path):
    message = signed_by_us(tmp_path, dns_zone).replace(b"Signed text.", b"Changed text.")
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    code, text = send(port, "alice@signed.test", crlf(message))
    assert (code, text) == (550, "5.7.1 Email rejected per DMARC policy for signed.test")
    assert queued(system) == []
    assert "spf=fail dkim=fail dmarc=fail" in smtpd_log(system)


def test_changed_body_recorded_as_body_hash_mismatch(make_mailsys, dns_zone, tmp_path):
    message = signed_by_us(tmp_path, dns_zone).replace(b"Signed text.", b"Changed text.")
    system = checked_system(make_mailsys, dns_zone.port, 'dmarc_reject = "record"\n')
    port = system.start_smtpd()
    assert send(port, "alice@signed.test", crlf(message))[0] == 250
    field = ar_field(only_message(system))
    assert "\tdkim=fail (body hash mismatch) header.d=signed.test header.s=sel header.a=rsa-sha256" in field
    assert field.endswith("\tdmarc=fail (p=reject sp=reject dis=reject) header.from=signed.test")


def test_ed25519_signature_from_dkimpy_passes(make_mailsys, dns_zone):
    import dkim
    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    private = base64.b64encode(bytes(key))
    public = base64.b64encode(bytes(key.verify_key)).decode()
    dns_zone.zone["ed._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=ed25519; p={public}"]}
    text = crlf(msg("alice@signed.test", "ed25519"))
    signature = dkim.sign(
        text, b"ed", b"signed.test", private, signature_algorithm=b"ed25519-sha256", include_headers=[b"from", b"to"]
    )
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "alice@signed.test", signature + text)[0] == 250
    field = ar_field(only_message(system))
    assert "\tdkim=pass header.d=signed.test header.s=ed header.a=ed25519-sha256 header.b=" in field
    assert field.endswith("dmarc=pass (p=reject sp=reject dis=none) header.from=signed.test")


def test_rsa_sha1_is_marked_and_does_not_count(make_mailsys, dns_zone, tmp_path):
    import dkim

    pem, public = rsa_key(tmp_path)
    dns_zone.zone["old._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=rsa; p={public}"]}
    text = crlf(msg("alice@signed.test", "sha1"))
    signature = dkim.sign(text, b"old", b"signed.test", pem, signature_algorithm=b"rsa-sha1")
    system = checked_system(make_mailsys, dns_zone.port, 'dmarc_reject = "record"\n')
    port = system.start_smtpd()
    assert send(port, "alice@signed.test", signature + text)[0] == 250
    field = ar_field(only_message(system))
    assert "\tdkim=policy (rsa-sha1 not accepted RFC 8301) header.d=signed.test header.s=old header.a=rsa-sha1" in field
    assert "dmarc=fail" in field


def test_body_length_tag_is_a_warning(make_mailsys, dns_zone, tmp_path):
    import dkim

    pem, public = rsa_key(tmp_path)
    dns_zone.zone["len._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=rsa; p={public}"]}
    text = crlf(msg("alice@signed.test", "l="))
    signature = dkim.sign(text, b"len", b"signed.test", pem, length=True)
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "alice@signed.test", signature + text + b"Appended by someone else.\r\n")[0] == 250
    field = ar_field(only_message(system))
    assert "\tdkim=pass (body length limit l= text after it is unsigned) header.d=signed.test header.s=len" in field


# -- DMARC policies ------------------------------------------------------------------------------


def test_quarantine_marks_the_message_and_the_rules_file_it_into_junk(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port, '[deliver]\nsite_rules = "site.rules"\n')
    (system.root / "site.rules").write_text(":0\n* ^X-Pymail-Quarantine:\n.Junk/\n")
    for sub in ("cur", "new", "tmp"):  # the user's Maildir exists (a folder rule does not make it)
        (system.maildir() / sub).mkdir(parents=True)
    port = system.start_smtpd()
    assert send(port, "someone@quar.test", msg("someone@quar.test"))[0] == 250
    message = only_message(system)
    assert ar_field(message).endswith("\tdmarc=fail (p=quarantine sp=quarantine dis=quarantine) header.from=quar.test")
    assert b"\nX-Pymail-Quarantine: DMARC policy of quar.test\nReceived: " in message
    system.start_qrunner()
    junk = system.maildir() / ".Junk" / "new"
    deadline = time.time() + 15
    while time.time() < deadline and not (junk.is_dir() and list(junk.iterdir())):
        time.sleep(0.05)
    assert len(list(junk.iterdir())) == 1
    assert system.messages() == []


def test_pct_zero_downgrades_reject_to_quarantine(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "someone@pct.test", msg("someone@pct.test"))[0] == 250
    message = only_message(system)
    assert ar_field(message).endswith("\tdmarc=fail (p=reject sp=reject dis=quarantine) header.from=pct.test")
    assert b"\nX-Pymail-Quarantine: DMARC policy of pct.test\n" in message


def test_subdomain_policy_sp_applies_to_subdomains_only(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    code, text = send(port, "someone@sub.org.test", msg("someone@sub.org.test"))
    assert (code, text) == (550, "5.7.1 Email rejected per DMARC policy for sub.org.test")
    assert send(port, "someone@org.test", msg("someone@org.test"))[0] == 250
    assert ar_field(only_message(system)).endswith("\tdmarc=fail (p=none sp=reject dis=none) header.from=org.test")


def test_admin_may_quarantine_instead_of_reject(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port, 'dmarc_reject = "quarantine"\n')
    port = system.start_smtpd()
    assert send(port, "someone@sub.org.test", msg("someone@sub.org.test"))[0] == 250
    assert b"\nX-Pymail-Quarantine: DMARC policy of sub.org.test\n" in only_message(system)


# -- Authentication-Results forgeries, who is checked -----------------------------------------------


def test_forged_authentication_results_claiming_our_id_are_removed(make_mailsys, dns_zone):
    forged = (
        "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
        "Authentication-Results:\r\n\tMX.Example.Test;\r\n\tspf=pass smtp.mailfrom=bank.test\r\n"
        "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=bank.test\r\n"
    )
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    assert send(port, "someone@pass.test", msg("someone@pass.test", extra=forged))[0] == 250
    message = only_message(system)
    head = message.split(b"\n\n", 1)[0] + b"\n"
    assert head.lower().count(b"authentication-results: mx.example.test") == 1
    assert head.lower().count(b"mx.example.test;") == 1  # ours, on top
    assert b"bank.test\nAuthentication-Results: relay.other.test;" not in head
    assert b"Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=bank.test\n" in head
    assert "removed 2 Authentication-Results field(s)" in smtpd_log(system)


def test_trusted_networks_skip_the_checks(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port, trusted='["127.0.0.0/8"]')
    port = system.start_smtpd()
    assert send(port, "someone@fail.test", msg("someone@fail.test"))[0] == 250
    message = only_message(system)
    assert b"Authentication-Results" not in message
    assert dns_zone.queries == []


def test_authenticated_clients_skip_the_checks(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port)
    port = system.start_smtpd()
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(CLIENT, 0)) as client:
        client.ehlo("client.example.net")
        client.login("alice@example.test", PASSWORD)
        client.sendmail("alice@example.test", ["bob@example.test"], msg("alice@example.test"))
    assert b"Authentication-Results" not in only_message(system)
    assert dns_zone.queries == []


def test_checks_off(make_mailsys, dns_zone):
    system = checked_system(make_mailsys, dns_zone.port, "enabled = false\n")
    port = system.start_smtpd()
    assert send(port, "someone@fail.test", msg("someone@fail.test"))[0] == 250
    assert b"Authentication-Results" not in only_message(system)


def _stats(system) -> dict[str, int]:
    """pymail stats' counters, name{labels} -> value."""
    out = subprocess.run(
        [sys.executable, "-m", "pymta.cli", "stats", str(system.root)], capture_output=True, text=True, check=True
    ).stdout
    return {k: int(float(v)) for k, _, v in (ln.rpartition(" ") for ln in out.splitlines() if ln and ln[0] != "#")}


@pytest.mark.parametrize("dns", ["dns_zone", "dns_broken"])
def test_check_and_dns_latency_metrics_move(make_mailsys, request, dns):
    """issue 15 §3: DNS latency of the checks, by result, and the time checks hold the end of DATA."""
    server = request.getfixturevalue(dns)
    system = checked_system(make_mailsys, server.port)
    port = system.start_smtpd()
    before = _stats(system)
    assert send(port, "bounce@mail.pass.test", msg("news@pass.test"))[0] == 250
    accepted = 'pymail_smtp_accepted_total{service="smtp"}'
    after = _stats(system)
    deadline = time.monotonic() + 10
    while after.get(accepted, 0) == before.get(accepted, 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # the counters are written just after the 250 goes out
        after = _stats(system)
    assert after["pymail_checked_messages_total"] == before["pymail_checked_messages_total"] + 1
    assert after[accepted] == before.get(accepted, 0) + 1  # counted once, written with the checks' events
    assert after["pymail_check_milliseconds_total"] >= before["pymail_check_milliseconds_total"]
    result = "ok" if dns == "dns_zone" else "failed"
    key = f'pymail_dns_lookups_total{{result="{result}"}}'
    assert after[key] > before[key]
    assert f'pymail_dns_lookup_milliseconds_total{{result="{result}"}}' in after
