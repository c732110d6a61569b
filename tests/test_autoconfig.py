"""Client autoconfiguration (issue 15 §4): Thunderbird autoconfig, Outlook autodiscover, Apple profile.

Each answer is parsed as its client does: Thunderbird's readFromXML (the
elements and values it accepts), Outlook's POX response schema, and the
plist keys of a com.apple.mail.managed payload.  Served by the real
listener over HTTP(S) with urllib, and written as static files.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import free_port, wait_port
from pymta.cli import cli

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = ["--daemon-user", "root"] if os.geteuid() == 0 else []
ADDRESS = "alice@example.test"
AD_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
AD_OUTLOOK_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
AD_REQUEST = f"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{ADDRESS}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>""".encode()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    d = tmp_path_factory.mktemp("template") / "mail"
    result = invoke("init", d, "--domain", "example.test", "--hostname", "mx.example.test", *AS_ROOT)
    assert result.exit_code == 0, result.output
    return d


@pytest.fixture
def tree(template, tmp_path):
    d = tmp_path / "pm"
    shutil.copytree(template, d)
    return d


def own_config(tree: Path, text: str, domains: str = '["example.test"]') -> Path:
    """A config of our own over the tree (init's file has every section already)."""
    path = tree / "autoconfig.toml"
    user = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""
    path.write_text(f'root = "{tree}"\nhostname = "mx.example.test"\ndomains = {domains}\n{user}{text}\n')
    return path


# -- what each client reads ------------------------------------------------------------------

# Thunderbird's readFromXML (comm-central mail/components/accountcreation/modules/readFromXML.sys.mjs)
TB_SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
TB_AUTH = {"password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM", "OAuth2", "none"}
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def thunderbird_servers(body: bytes) -> dict:
    """What Thunderbird takes from a clientConfig: {domains, incoming: [...], outgoing: [...]}."""
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    providers = root.findall("emailProvider")
    assert len(providers) == 1 and providers[0].get("id")
    provider = providers[0]
    found: dict = {"domains": [d.text for d in provider.findall("domain")], "incoming": [], "outgoing": []}
    assert provider.findtext("displayName")
    for tag, key, types in (("incomingServer", "incoming", {"imap", "pop3"}), ("outgoingServer", "outgoing", {"smtp"})):
        for server in provider.findall(tag):
            assert server.get("type") in types
            entry = {
                "type": server.get("type"),
                "hostname": server.findtext("hostname"),
                "port": int(server.findtext("port")),
                "socketType": server.findtext("socketType"),
                "username": server.findtext("username"),
                "authentication": server.findtext("authentication"),
            }
            assert HOSTNAME.match(entry["hostname"]), entry
            assert 0 < entry["port"] < 65536
            assert entry["socketType"] in TB_SOCKET_TYPES
            assert entry["authentication"] in TB_AUTH
            found[key].append(entry)
    assert found["domains"] and found["incoming"] and found["outgoing"]
    return found


def autodiscover_protocols(body: bytes) -> list[dict]:
    root = ET.fromstring(body)
    assert root.tag == f"{AD_NS}Autodiscover"
    account = root.find(f"{AD_OUTLOOK_NS}Response/{AD_OUTLOOK_NS}Account")
    assert account.findtext(f"{AD_OUTLOOK_NS}AccountType") == "email"
    assert account.findtext(f"{AD_OUTLOOK_NS}Action") == "settings"
    protocols = []
    for protocol in account.findall(f"{AD_OUTLOOK_NS}Protocol"):
        protocols.append({child.tag.removeprefix(AD_OUTLOOK_NS): child.text for child in protocol})
    return protocols


def mail_payload(body: bytes) -> dict:
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    assert profile["PayloadIdentifier"] and profile["PayloadUUID"]
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.mail.managed"
    assert payload["PayloadUUID"] != profile["PayloadUUID"]
    return payload


def check_defaults(tb: dict) -> None:
    assert tb["domains"] == ["example.test"]
    assert [(s["type"], s["port"], s["socketType"]) for s in tb["incoming"]] == [
        ("imap", 993, "SSL"),
        ("pop3", 995, "SSL"),
    ]
    assert [(s["port"], s["socketType"]) for s in tb["outgoing"]] == [(465, "SSL"), (587, "STARTTLS")]
    for server in tb["incoming"] + tb["outgoing"]:
        assert server["hostname"] == "mx.example.test"
        assert server["username"] == "%EMAILADDRESS%"
        assert server["authentication"] == "password-cleartext"


# -- static files --------------------------------------------------------------------------


def test_static_files_for_an_existing_web_server(tree, tmp_path):
    out = tmp_path / "www"
    result = invoke("autoconfig", tree, "--out", out)
    assert result.exit_code == 0, result.output
    names = {str(Path(line).relative_to(out)) for line in result.output.split()}
    assert names == {
        "mail/config-v1.1.xml",
        ".well-known/autoconfig/mail/config-v1.1.xml",
        "autodiscover/autodiscover.xml",
        "email.mobileconfig",
    }
    for name in names:
        assert (out / name).stat().st_mode & 0o777 == 0o644
    tb = (out / "mail/config-v1.1.xml").read_bytes()
    assert tb == (out / ".well-known/autoconfig/mail/config-v1.1.xml").read_bytes()
    assert tb.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    check_defaults(thunderbird_servers(tb))
    protocols = autodiscover_protocols((out / "autodiscover/autodiscover.xml").read_bytes())
    assert [(p["Type"], p["Port"], p["SSL"]) for p in protocols] == [
        ("IMAP", "993", "on"),
        ("POP3", "995", "on"),
        ("SMTP", "465", "on"),
        ("SMTP", "587", "off"),
    ]
    assert protocols[3]["Encryption"] == "TLS"
    assert all(p["Server"] == "mx.example.test" and "LoginName" not in p for p in protocols)
    payload = mail_payload((out / "email.mobileconfig").read_bytes())
    assert "EmailAddress" not in payload  # the device asks for it
    assert payload["EmailAccountType"] == "EmailTypeIMAP"
    assert (payload["IncomingMailServerHostName"], payload["IncomingMailServerPortNumber"]) == ("mx.example.test", 993)
    assert (payload["OutgoingMailServerHostName"], payload["OutgoingMailServerPortNumber"]) == ("mx.example.test", 465)
    assert payload["IncomingMailServerUseSSL"] is True and payload["OutgoingMailServerUseSSL"] is True
    # again: the same files (stable UUIDs), replaced whole
    assert invoke("autoconfig", tree, "--out", out).exit_code == 0
    assert (out / "email.mobileconfig").read_bytes() == plistlib.dumps(
        plistlib.loads((out / "email.mobileconfig").read_bytes())
    )


def test_advertised_names_and_ports_are_the_autoconfig_keys_not_listen(tree, tmp_path):
    conf = own_config(
        tree,
        "[autoconfig]\n"
        'hostname = "mail.example.org"\n'
        "imaps_port = 0\nimap_port = 143\npop3s_port = 0\nsmtps_port = 0\nsubmission_port = 2587",
        domains='["example.test", "Other.Example"]',
    )
    out = tmp_path / "www"
    result = invoke("autoconfig", "-C", conf, "--out", out)
    assert result.exit_code == 0, result.output
    tb = thunderbird_servers((out / "mail/config-v1.1.xml").read_bytes())
    assert tb["domains"] == ["example.test", "other.example"]
    assert [(s["hostname"], s["port"], s["socketType"]) for s in tb["incoming"]] == [
        ("mail.example.org", 143, "STARTTLS")
    ]
    assert [(s["hostname"], s["port"], s["socketType"]) for s in tb["outgoing"]] == [
        ("mail.example.org", 2587, "STARTTLS")
    ]
    payload = mail_payload((out / "email.mobileconfig").read_bytes())
    assert payload["IncomingMailServerPortNumber"] == 143 and payload["OutgoingMailServerPortNumber"] == 2587


def test_usage_and_config_errors(tree, tmp_path):
    assert invoke("autoconfig", tree).exit_code == 64
    assert invoke("autoconfig", tree, "--out", tmp_path / "a", "--listen", "127.0.0.1:1").exit_code == 64
    conf = own_config(tree, "[autoconfig]\nimaps_port = 0\npop3s_port = 0")
    result = invoke("autoconfig", "-C", conf, "--out", tmp_path / "www")
    assert result.exit_code == 78 and "no IMAP or POP3 port" in result.output


def test_listener_is_off_by_default(tree):
    from pymta.lib import config

    assert config.load(tree / "pymail.toml")["listen.autoconfig"] == ""


# -- the listener, over HTTP ------------------------------------------------------------------


def fetch(url: str, data: bytes | None = None, context=None, headers=None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_listener_answers_thunderbird_outlook_and_apple(tree):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "pymail"), "autoconfig", str(tree), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc=proc)
        base = f"http://127.0.0.1:{port}"
        for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
            status, ctype, body = fetch(f"{base}{path}?emailaddress={ADDRESS}")
            assert (status, ctype) == (200, "application/xml; charset=utf-8")
            check_defaults(thunderbird_servers(body))

        status, ctype, body = fetch(
            f"{base}/autodiscover/autodiscover.xml", AD_REQUEST, headers={"Content-Type": "text/xml"}
        )
        assert status == 200, body
        protocols = autodiscover_protocols(body)
        assert [p["Type"] for p in protocols] == ["IMAP", "POP3", "SMTP", "SMTP"]
        assert all(p["LoginName"] == ADDRESS and p["Server"] == "mx.example.test" for p in protocols)
        # Outlook capitalises the path
        assert fetch(f"{base}/Autodiscover/Autodiscover.xml", AD_REQUEST)[0] == 200

        status, ctype, body = fetch(f"{base}/email.mobileconfig?emailaddress={ADDRESS}")
        assert (status, ctype) == (200, "application/x-apple-aspen-config")
        payload = mail_payload(body)
        assert payload["EmailAddress"] == ADDRESS
        assert payload["IncomingMailServerUsername"] == payload["OutgoingMailServerUsername"] == ADDRESS

        # what is not an answer
        assert fetch(f"{base}/etc/passwd")[0] == 404
        assert fetch(f"{base}/email.mobileconfig?emailaddress=x%3Cy")[0] == 400
        assert fetch(f"{base}/mail/config-v1.1.xml", b"x")[0] == 405
        assert fetch(f"{base}/autodiscover/autodiscover.xml", b"<Autodiscover/>")[0] == 400
        evil = b'<!DOCTYPE a [<!ENTITY x "y">]><a><EMailAddress>&x;@a.b</EMailAddress></a>'
        assert fetch(f"{base}/autodiscover/autodiscover.xml", evil)[0] == 400
        assert fetch(f"{base}/autodiscover/autodiscover.xml", b"x" * 100_000)[0] == 413
    finally:
        if proc.poll() is None:
            err = stop(proc)
    assert "GET /mail/config-v1.1.xml?emailaddress=alice@example.test 200" in err


def test_listener_over_https_as_pymail_run_starts_it(tree):
    """listen.autoconfig + autoconfig.tls, started the way `pymail run` starts it."""
    port = free_port()
    conf = own_config(tree, f'[listen]\nautoconfig = "127.0.0.1:{port}"\n[autoconfig]\ntls = true')
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymta.autoconfig_http", "-C", str(conf), "--service", "autoconfig"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        wait_port(port, proc=proc)
        context = ssl.create_default_context(cafile=str(tree / "tls" / "cert.pem"))
        context.check_hostname = False
        status, _, body = fetch(
            f"https://127.0.0.1:{port}/.well-known/autoconfig/mail/config-v1.1.xml", context=context
        )
        assert status == 200
        check_defaults(thunderbird_servers(body))
        with pytest.raises(OSError):  # plain HTTP is not spoken there (URLError, or the connection dropped)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/mail/config-v1.1.xml", timeout=5).read()
    finally:
        if proc.poll() is None:
            err = stop(proc)
    assert "autoconfig[" in err and "on https://127.0.0.1:" in err
