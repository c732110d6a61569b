"""Start-up cost under inetd (man/pymail.7 "HOW DAEMONS ARE STARTED"): every connection starts a
fresh Python, so that path "imports neither asyncio nor ssl (unless the session uses TLS)".

Each daemon serves one real session (greeting, then QUIT) on a TCP connection handed to it as
fd 0 and 1, the way inetd and Accept=yes units do, under ``python3 -X importtime``; the modules it
imported are read from that report on stderr.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import client_tls, env_with_repo

# (module, what the client says to end the session, how the reply to it starts)
DAEMONS = {
    "pymta.smtpd": (b"QUIT\r\n", b"221"),
    "pymta.lmtpd": (b"QUIT\r\n", b"221"),
    "pypop.pop3d": (b"QUIT\r\n", b"+OK"),
    "pyimap.imapd": (b"a1 LOGOUT\r\n", b"* BYE"),
}
GREETINGS = {"pymta.smtpd": b"220", "pymta.lmtpd": b"220", "pypop.pop3d": b"+OK", "pyimap.imapd": b"* OK"}


def imported_modules(importtime_report: str) -> set[str]:
    """The module names in ``-X importtime`` lines ("import time: self | cumulative | name")."""
    found = set()
    for line in importtime_report.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                found.add(name)
    return found


def session_as_inetd(mailsys, module: str, talk, source: str = "127.0.0.1") -> tuple[set[str], str]:
    """Run MODULE on one accepted connection (fd 0 and 1) from SOURCE, let TALK(client socket) hold
    the session, and return (the modules it imported, its stderr)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=20, source_address=(source, 0))
        served, _ = listener.accept()
    argv = [sys.executable, "-X", "importtime", "-m", module, "-C", str(mailsys.config)]
    with served, client:
        proc = subprocess.Popen(
            argv, stdin=served.fileno(), stdout=served.fileno(), stderr=subprocess.PIPE, env=env_with_repo()
        )
        served.close()
        try:
            talk(client)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    report = stderr.decode(errors="replace")
    assert proc.returncode == 0, report[-2000:]
    return imported_modules(report), report


def read_reply(sock: socket.socket, starts: bytes) -> bytes:
    """Lines up to and including the first that starts with STARTS."""
    data = b""
    while not any(line.startswith(starts) for line in data.split(b"\r\n")[:-1]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {starts!r}: {data!r}"
        data += chunk
    return data


def greet_and_quit(module: str):
    quit_line, bye = DAEMONS[module]

    def talk(sock: socket.socket) -> None:
        read_reply(sock, GREETINGS[module])
        sock.sendall(quit_line)
        read_reply(sock, bye)

    return talk


def loaded(modules: set[str], package: str) -> set[str]:
    return {name for name in modules if name == package or name.startswith(package + ".")}


@pytest.mark.parametrize("module", sorted(DAEMONS))
def test_inetd_session_imports_neither_asyncio_nor_ssl(mailsys, module):
    modules, report = session_as_inetd(mailsys, module, greet_and_quit(module))
    assert loaded(modules, "pymta.lib"), "no -X importtime report on stderr:\n" + report[-2000:]
    assert not loaded(modules, "asyncio"), f"{module} under inetd imported asyncio"
    assert not loaded(modules, "ssl") and "_ssl" not in modules, f"{module} under inetd imported ssl without TLS"
    assert "socket" not in modules, f"{module} under inetd imported socket.py (~2.5 ms; _socket is enough)"
    modules, _ = session_as_inetd(mailsys, module, greet_and_quit(module))  # the config's parse is kept now
    assert "tomllib" not in modules, f"{module} under inetd parsed the config again (configcache)"


def test_starttls_is_what_brings_ssl(mailsys):
    """The check above can see ssl: a session that starts TLS imports it (and still not asyncio)."""

    def talk(sock: socket.socket) -> None:
        read_reply(sock, b"220")
        sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in read_reply(sock, b"250 ")
        sock.sendall(b"STARTTLS\r\n")
        read_reply(sock, b"220")
        with client_tls().wrap_socket(sock, server_hostname="mx.example.test") as tls:
            tls.sendall(b"QUIT\r\n")
            read_reply(tls, b"221")
            tls.detach()

    modules, _ = session_as_inetd(mailsys, "pymta.smtpd", talk)
    assert "ssl" in modules
    assert not loaded(modules, "asyncio")


def test_checked_message_without_signature_imports_neither_dkimpy_nor_the_suffix_list(mailsys):
    """Port 25 checks under inetd (issue 12): a message without DKIM-Signature, From: a domain of two
    labels, runs SPF and DMARC without importing dkimpy (~15 ms) or building the public suffix list
    (~30 ms); DNS is a real server on 127.0.0.1, the client 127.0.0.2 a stranger."""
    from fakedns import FakeDNS

    dns = FakeDNS(
        {"pass.test.": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]}, "_dmarc.pass.test.": {"TXT": ["v=DMARC1; p=reject"]}}
    )
    mailsys.write_config(f'[relay]\ndns_servers = ["127.0.0.1:{dns.port}"]\n[smtpd]\ntrusted_networks = []\n')

    def talk(sock: socket.socket) -> None:
        read_reply(sock, b"220")
        for line in (b"EHLO client.example.net", b"MAIL FROM:<news@pass.test>", b"RCPT TO:<alice@example.test>"):
            sock.sendall(line + b"\r\n")
            read_reply(sock, b"250 ")
        sock.sendall(b"DATA\r\n")
        read_reply(sock, b"354")
        sock.sendall(b"From: <news@pass.test>\r\nSubject: hi\r\n\r\nHello.\r\n.\r\n")
        assert read_reply(sock, b"250 ").startswith(b"250")
        sock.sendall(b"QUIT\r\n")
        read_reply(sock, b"221")

    try:
        modules, report = session_as_inetd(mailsys, "pymta.smtpd", talk, source="127.0.0.2")
    finally:
        dns.close()
    assert "spf=pass dkim=none dmarc=pass" in report
    assert "spf" in modules and not loaded(modules, "dkim") and not loaded(modules, "publicsuffixlist")
