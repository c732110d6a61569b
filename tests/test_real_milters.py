"""Real milters from Debian packages (issue 12 §2, acceptance: "each real
milter above is exercised in the test suite"): opendkim in verify mode,
opendmarc, spamass-milter with SpamAssassin's spamd, rspamd's proxy in
milter mode -- started once per session by tests/realmilters.py, offline,
their DNS a FakeDNS on 127.0.53.N:53.

First each is driven straight through pymta.lib.milterconn (negotiation,
the events, the verdict and the modifications it sends); then end to end:
pymta-smtpd with the milter in milter.smtpd_milters, mail sent with
smtplib, the SMTP reply and the delivered message (filed by the rules
`pymail init` writes) asserted."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

import realmilters as rm
from conftest import env_with_repo, free_port, wait_port
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


# -- end to end: pymta-smtpd with milter.smtpd_milters, the queue runner, the default rules ------


def set_keys(conf: Path, settings: dict[str, str]) -> None:
    """Set "section.key" = TOML value in a config `pymail init` wrote
    (where each key is written commented out under its section)."""
    text = conf.read_text()
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        head = text.index(f"\n[{section}]\n") + len(f"\n[{section}]\n")
        end = text.find("\n[", head)
        end = len(text) if end < 0 else end
        body = text[head:end]
        line = re.search(rf"^#? ?{key} = .*$", body, re.M)
        body = body[: line.start()] + f"{key} = {value}" + body[line.end() :] if line else f"{key} = {value}\n" + body
        text = text[:head] + body + text[end:]
    conf.write_text(text)


class Site:
    """A `pymail init` tree (its default rules file Junk for spam) with
    pymta-smtpd on port 25's service and the queue runner running, the
    inbound checks off and MILTERS in milter.smtpd_milters."""

    def __init__(self, root: Path, milters: list[rm.Daemon], dns_address: str, extra: dict | None = None) -> None:
        self.root = root
        as_root = ["--daemon-user", "root"] if os.geteuid() == 0 else []
        made = pymail("init", str(root), "--domain", "example.test", "--hostname", rm.AUTHSERV_ID, *as_root)
        assert made.returncode == 0, made.stderr
        self.conf = root / "pymail.toml"
        added = pymail("-C", str(self.conf), "user", "add", ALICE)
        assert added.returncode == 0, added.stderr
        specs = ", ".join(f'"{d.spec}"' for d in milters)
        settings = {
            "relay.dns_servers": f'["{dns_address}"]',
            "smtpd.trusted_networks": "[]",
            "checks.enabled": "false",
            "milter.smtpd_milters": f"[{specs}]",
            **(extra or {}),
        }
        set_keys(self.conf, settings)
        self.port = free_port()
        env = env_with_repo()
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "pymta.smtpd", "-C", str(self.conf), "--listen", f"127.0.0.1:{self.port}"],
                env=env,
                stderr=subprocess.PIPE,
            ),
            subprocess.Popen([sys.executable, "-m", "pymta.qrunner", "-C", str(self.conf)], env=env),
        ]
        wait_port(self.port, proc=self.procs[0])

    def send(self, message: bytes, sender: str = "news@sender.test") -> tuple[int, str]:
        """MAIL, RCPT, DATA from CLIENT; the end-of-DATA reply."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=90, source_address=(CLIENT, 0)) as client:
            client.ehlo("client.example.net")
            assert client.mail(sender)[0] == 250
            assert client.rcpt(ALICE)[0] == 250
            code, reply = client.data(message.replace(b"\n", b"\r\n"))
            return code, reply.decode()

    def folders(self) -> dict[str, list[bytes]]:
        """{folder ("" for the INBOX): its new messages}."""
        box = self.root / "mail" / "example.test" / "alice"
        found: dict[str, list[bytes]] = {}
        for folder in [box, *sorted(p for p in box.glob(".*") if p.is_dir())]:
            new = folder / "new"
            if new.is_dir() and any(new.iterdir()):
                found["" if folder == box else folder.name] = [p.read_bytes() for p in sorted(new.iterdir())]
        return found

    def wait_delivered(self, count: int, timeout: float = 30.0) -> dict[str, list[bytes]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.folders()
            if sum(len(v) for v in found.values()) >= count:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"expected {count} messages, found {self.folders()}")

    def stop(self) -> str:
        """Stop smtpd and the runner; smtpd's log."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=15)
        return self.procs[0].stderr.read().decode() if self.procs[0].stderr else ""


def pymail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pymta.cli", *args], capture_output=True, text=True, env=env_with_repo(), timeout=60
    )


@pytest.fixture
def site(tmp_path, milter_dns):
    made: list[Site] = []

    def make(*milters: rm.Daemon, extra: dict | None = None) -> Site:
        s = Site(tmp_path / f"site{len(made)}", list(milters), f"{milter_dns.host}:{milter_dns.port}", extra)
        made.append(s)
        return s

    yield make
    for s in made:
        print(s.stop())  # smtpd's log, shown with a failure


def field(message: bytes, name: bytes) -> list[str]:
    """Every NAME field of MESSAGE, unfolded."""
    head = message.split(b"\n\n", 1)[0]
    return [
        re.sub(r"\r?\n[ \t]+", " ", m_.group(1).decode()).strip()
        for m_ in re.finditer(rb"^" + name + rb":(.*(?:\n[ \t].*)*)", head, re.M | re.I)
    ]


def test_smtpd_with_opendkim_and_opendmarc(site, opendkim, opendmarc, dkim_key):
    """The chain opendkim -> opendmarc behind pymta-smtpd: a message signed by
    our signer is delivered with both verdicts; the same with its body
    changed is refused at the end of DATA by opendmarc (p=reject)."""
    s = site(opendkim, opendmarc)
    message = signed(dkim_key)
    assert s.send(message, "alice@signed.test")[0] == 250
    delivered = s.wait_delivered(1)[""][0]
    results = field(delivered, b"Authentication-Results")
    b = message.split(b"b=")[-1][:8].decode()
    assert results == [
        "mx.example.test; dmarc=pass (p=reject dis=none) header.from=signed.test",
        "mx.example.test; dkim=pass (2048-bit key; unprotected) header.d=signed.test header.i=@signed.test "
        f"header.a=rsa-sha256 header.s=sel header.b={b}; dkim-atps=neutral",
    ]
    changed = signed(dkim_key).replace(b"Signed text.", b"Changed text.")
    assert s.send(changed, "alice@signed.test") == (550, "5.7.1 rejected by DMARC policy for signed.test")
    # a pass forged in our name is removed by opendkim (RemoveARFrom) before opendmarc reads it
    forged = b"Authentication-Results: mx.example.test; dkim=pass header.d=signed.test header.s=sel\n" + changed
    assert s.send(forged, "alice@signed.test") == (550, "5.7.1 rejected by DMARC policy for signed.test")
    time.sleep(1)
    assert sum(len(v) for v in s.folders().values()) == 1


def test_smtpd_checks_feed_opendmarc(site, opendmarc, dkim_key):
    """pymail's own checks on: opendmarc judges by the SPF and DKIM results
    smtpd put on top (its forged look-alikes already removed)."""
    s = site(opendmarc, extra={"checks.enabled": "true"})
    forged = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=signed.test\n"
    assert s.send(forged + signed(dkim_key), "alice@signed.test")[0] == 250
    results = field(s.wait_delivered(1)[""][0], b"Authentication-Results")
    assert len(results) == 2
    assert results[0] == "mx.example.test; dmarc=pass (p=reject dis=none) header.from=signed.test"
    assert results[1].startswith("mx.example.test; spf=fail smtp.mailfrom=signed.test; dkim=pass header.d=signed.test")


def test_smtpd_with_spamassassin_tagging_files_gtube_into_junk(site, spamass_tag):
    s = site(spamass_tag)
    assert s.send(text(subject="spam", body=rm.GTUBE + "\n"))[0] == 250
    assert s.send(text(subject="ham"))[0] == 250
    found = s.wait_delivered(2)
    assert {k: len(v) for k, v in found.items()} == {"": 1, ".Junk": 1}
    junk, inbox = found[".Junk"][0], found[""][0]
    assert field(junk, b"X-Spam-Flag") == ["YES"]
    status = field(junk, b"X-Spam-Status")[0]
    assert status.startswith("Yes, score=") and "GTUBE" in status
    # SpamAssassin's report replaced the body (SMFIR_REPLBODY), the original attached
    assert field(junk, b"Content-Type")[0].startswith("multipart/mixed")
    assert b"Spam detection software" in junk and rm.GTUBE.encode() in junk
    assert field(inbox, b"X-Spam-Status")[0].startswith("No, score=")
    assert field(inbox, b"X-Spam-Flag") == []


def test_smtpd_with_spamassassin_rejecting_refuses_gtube(site, spamass_reject):
    s = site(spamass_reject)
    assert s.send(text(body=rm.GTUBE + "\n")) == (550, "5.7.1 Blocked by SpamAssassin")
    assert s.send(text(subject="ham"))[0] == 250
    found = s.wait_delivered(1)
    time.sleep(0.5)
    assert list(found) == [""] and len(s.folders()[""]) == 1


def test_smtpd_with_rspamd(site, rspamd):
    """rspamd's headers on delivered mail; its "add header" action (X-Spam:
    Yes) filed into Junk by the default rules; its reject refused."""
    s = site(rspamd)
    assert s.send(text(subject="ham"))[0] == 250
    assert s.send(text(subject="spam", body=rm.GTUBE_ADD_HEADER + "\n"))[0] == 250
    assert s.send(text(subject="worse", body=rm.GTUBE + "\n")) == (554, "5.7.1 Gtube pattern")
    found = s.wait_delivered(2)
    assert {k: len(v) for k, v in found.items()} == {"": 1, ".Junk": 1}
    inbox, junk = found[""][0], found[".Junk"][0]
    assert field(inbox, b"X-Spamd-Result")[0].startswith("default: False [")
    assert field(inbox, b"X-Spam-Status")[0].startswith("No, score=")
    assert field(inbox, b"X-Spam") == []
    assert field(junk, b"X-Spam") == ["Yes"]
