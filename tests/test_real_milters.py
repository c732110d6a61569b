"""Real milters from Debian packages (issue 12 §2, acceptance: "each real
milter above is exercised in the test suite"): opendkim in verify mode,
opendmarc, spamass-milter with SpamAssassin's spamd, rspamd's proxy in
milter mode -- started once per session by tests/realmilters.py, offline,
their DNS a FakeDNS on 127.0.53.N:53.

First each is driven straight through pymta.lib.milterconn (negotiation,
the events, the verdict and the modifications it sends)."""

from __future__ import annotations

import subprocess
import time

import pytest

import realmilters as rm
from pymta.lib import milter as m
from pymta.lib.milterconn import Message, Timeouts, Verdict, run_message

CLIENT = "127.0.0.2"
ALICE = "alice@example.test"
TIMEOUTS = Timeouts(connect=10, command=60, content=60)

ZONE = {
    # DKIM-signed mail from signed.test (key added by the dkim_key fixture); SPF fails, DMARC p=reject
    "signed.test.": {"TXT": ["v=spf1 -all"]},
    "_dmarc.signed.test.": {"TXT": ["v=DMARC1; p=reject"]},
}


@pytest.fixture(scope="session")
def milter_dns():
    server = rm.port53_dns(dict(ZONE))
    yield server
    server.close()


@pytest.fixture(scope="session")
def dkim_key(milter_dns, tmp_path_factory) -> bytes:
    """A key for signed.test's selector "sel", published in milter_dns."""
    from pymta import dkim_sign

    path = tmp_path_factory.mktemp("dkim") / "sel.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    public = dkim_sign.public_key_b64(path)
    milter_dns.zone["sel._domainkey.signed.test."] = {"TXT": [f"v=DKIM1; k=rsa; p={public}"]}
    return path.read_bytes()


def daemon(start, *args):
    d = start(*args)
    yield d
    rm.remove(d)


@pytest.fixture(scope="session")
def opendkim(milter_dns):
    yield from daemon(rm.start_opendkim, milter_dns)


@pytest.fixture(scope="session")
def opendmarc(milter_dns):
    yield from daemon(rm.start_opendmarc, milter_dns)


@pytest.fixture(scope="session")
def spamd():
    yield from daemon(rm.start_spamd)


@pytest.fixture(scope="session")
def spamass_reject(spamd):
    yield from daemon(rm.start_spamass_milter, spamd, True)


@pytest.fixture(scope="session")
def spamass_tag(spamd):
    yield from daemon(rm.start_spamass_milter, spamd, False)


@pytest.fixture(scope="session")
def rspamd(milter_dns):
    yield from daemon(rm.start_rspamd, milter_dns)


# -- messages ----------------------------------------------------------------------------------


def text(from_addr: str = "news@sender.test", subject: str = "Lunch", body: str = "See you at noon.\n") -> bytes:
    return (
        f"From: <{from_addr}>\nTo: <{ALICE}>\nSubject: {subject}\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n"
        f"Message-ID: <{time.time_ns()}@sender.test>\n\n{body}"
    ).encode()


def signed(key: bytes, body: str = "Signed text.\n") -> bytes:
    from pymta import dkim_sign

    message = text("alice@signed.test", "signed", body)
    return dkim_sign.sign(message, "signed.test", "sel", key) + message


def milter_message(raw: bytes, sender: str, rcpts: tuple[str, ...] = (ALICE,)) -> Message:
    """RAW (LF line ends) as a milter is told it from a client on CLIENT:
    header values after ": " with folded lines kept, the body in CRLF."""
    head, _, body = raw.partition(b"\n\n")
    headers: list[tuple[str, str]] = []
    for line in head.decode().split("\n"):
        if line[:1] in (" ", "\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + "\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value.removeprefix(" ")))
    return Message(
        client_name="client.example.net",
        family=m.FAMILY_INET,
        port=40000,
        address=CLIENT,
        helo="client.example.net",
        sender=sender,
        recipients=[(r, []) for r in rcpts],
        headers=headers,
        body=body.replace(b"\n", b"\r\n"),
        macros={
            m.SMFIC_CONNECT: {"j": rm.AUTHSERV_ID, "{client_addr}": CLIENT, "{client_name}": "client.example.net"},
            m.SMFIC_MAIL: {"i": "4F2A9C01", "{mail_addr}": sender},
            m.SMFIC_RCPT: {"{rcpt_addr}": rcpts[0]},
        },
    )


def run(milter: rm.Daemon, raw: bytes, sender: str = "news@sender.test") -> Verdict:
    v = run_message(milter.spec, milter_message(raw, sender), TIMEOUTS)
    assert v.error == "", (v.error, milter.output())
    return v


def added(v: Verdict) -> dict[str, str]:
    """Header fields the milter added or set: name -> value."""
    kinds = ("addheader", "insheader", "chgheader")
    return {mod.name: mod.value for mod in v.modifications if mod.kind in kinds}


# -- opendkim ----------------------------------------------------------------------------------


def test_opendkim_verifies_our_signature(opendkim, dkim_key):
    message = signed(dkim_key)
    v = run(opendkim, message, "alice@signed.test")
    assert v.action == "accept"
    assert [(mod.kind, mod.name, mod.index) for mod in v.modifications] == [("insheader", "Authentication-Results", 0)]
    ar = v.modifications[0].value
    b = message.split(b"b=")[-1][:8].decode()
    assert ar == (
        "mx.example.test;\n\tdkim=pass (2048-bit key; unprotected) header.d=signed.test header.i=@signed.test "
        f"header.a=rsa-sha256 header.s=sel header.b={b};\n\tdkim-atps=neutral"
    )


def test_opendkim_fails_a_changed_body(opendkim, dkim_key):
    message = signed(dkim_key).replace(b"Signed text.", b"Changed text.")
    v = run(opendkim, message, "alice@signed.test")
    assert v.action == "accept"
    ar = added(v)["Authentication-Results"]
    assert ar.startswith("mx.example.test;\n\tdkim=fail reason=")
    assert "header.d=signed.test" in ar


def test_opendkim_removes_results_forged_in_our_name(opendkim, dkim_key):
    forged = (
        "Authentication-Results: mx.example.test; dkim=pass header.d=signed.test\n"
        "Authentication-Results: other.example; spf=pass smtp.mailfrom=signed.test\n"
        "Authentication-Results: MX.example.test;\n\tspf=pass smtp.mailfrom=signed.test\n"
    )
    message = forged.encode() + signed(dkim_key).replace(b"Signed text.", b"Changed text.")
    v = run(opendkim, message, "alice@signed.test")
    assert v.action == "accept"
    assert [(mod.kind, mod.name, mod.index, mod.value[:27]) for mod in v.modifications] == [
        ("chgheader", "Authentication-Results", 3, ""),  # delete the third (case does not matter)
        ("chgheader", "Authentication-Results", 1, ""),  # then the first
        ("insheader", "Authentication-Results", 0, "mx.example.test;\n\tdkim=fail"),
    ]


# -- opendmarc ---------------------------------------------------------------------------------


def test_opendmarc_passes_on_an_aligned_dkim_pass(opendkim, opendmarc, dkim_key):
    """opendkim's verdict, added to the message, is what opendmarc judges by
    (TrustedAuthservIDs), as in a Postfix chain opendkim -> opendmarc."""
    message = signed(dkim_key)
    v = run(opendkim, message, "alice@signed.test")
    dkim_ar = f"Authentication-Results: {added(v)['Authentication-Results']}\n".encode()
    v = run(opendmarc, dkim_ar + message, "alice@signed.test")
    assert v.action == "accept"
    assert added(v) == {
        "Authentication-Results": "mx.example.test; dmarc=pass (p=reject dis=none) header.from=signed.test"
    }


def test_opendmarc_rejects_when_p_reject_and_nothing_passes(opendkim, opendmarc, dkim_key):
    message = signed(dkim_key).replace(b"Signed text.", b"Changed text.")
    verdict = added(run(opendkim, message, "alice@signed.test"))["Authentication-Results"]
    dkim_ar = f"Authentication-Results: {verdict}\n"
    spf_ar = "Authentication-Results: mx.example.test; spf=fail smtp.mailfrom=signed.test\n"
    v = run(opendmarc, (spf_ar + dkim_ar).encode() + message, "alice@signed.test")
    assert (v.action, v.code, v.text) == ("replycode", "550", "5.7.1 rejected by DMARC policy for signed.test")
    assert v.modifications == []


# -- spamass-milter + spamd --------------------------------------------------------------------


def test_spamassassin_rejects_gtube(spamass_reject):
    v = run(spamass_reject, text(body=rm.GTUBE + "\n"))
    assert (v.action, v.code, v.text) == ("replycode", "550", "5.7.1 Blocked by SpamAssassin")


def test_spamassassin_tags_gtube(spamass_tag):
    v = run(spamass_tag, text(body=rm.GTUBE + "\n"))
    assert v.action == "accept"
    fields = added(v)
    assert fields["X-Spam-Flag"] == "YES"
    assert fields["X-Spam-Status"].startswith("Yes, score=10")
    assert "GTUBE" in fields["X-Spam-Status"]


def test_spamassassin_passes_clean_mail(spamass_reject):
    v = run(spamass_reject, text())
    assert v.action == "accept"
    fields = added(v)
    assert "X-Spam-Flag" not in fields
    assert fields["X-Spam-Status"].startswith("No, score=")
    assert fields["X-Spam-Checker-Version"].startswith("SpamAssassin 4")


# -- rspamd ------------------------------------------------------------------------------------


def test_rspamd_headers_on_clean_mail(rspamd):
    v = run(rspamd, text())
    assert v.action == "accept"
    fields = added(v)
    assert fields["X-Spamd-Result"].startswith("default: False [")
    assert fields["X-Spam-Status"].startswith("No, score=")
    assert fields["X-Rspamd-Queue-Id"] == "4F2A9C01"  # the "i" macro
    assert "X-Spam" not in fields


def test_rspamd_marks_spam_with_x_spam_yes(rspamd):
    """rspamd's "add header" action comes as a change of X-Spam's first
    occurrence, which the message does not have: the milter protocol's way
    to add it."""
    v = run(rspamd, text(body=rm.GTUBE_ADD_HEADER + "\n"))
    assert v.action == "accept"
    assert m.Modification("chgheader", name="X-Spam", value="Yes", index=1) in v.modifications


def test_rspamd_rejects_gtube(rspamd):
    v = run(rspamd, text(body=rm.GTUBE + "\n"))
    assert (v.action, v.code, v.text) == ("replycode", "554", "5.7.1 Gtube pattern")
