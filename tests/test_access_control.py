"""Access control (issue 7), end to end with real daemons on 127.0.0.1.

* No open relay from any listener with any address trick: one table, every
  listener, exact codes; nothing for a remote domain reaches the queue or,
  with a running qrunner, the next hop.
* Password guessing is slowed per client address and per account (the
  address is varied by binding the client to 127.0.0.2, 127.0.0.3 ...), in
  SMTP AUTH, POP3 USER/PASS and AUTH, IMAP LOGIN and AUTHENTICATE.
* No password without TLS by default (what the protocol test files do not
  already show).
* Privileges: the shipped units and inetd lines run nothing as root;
  ``daemon_user`` makes a daemon started as root drop to that user before it
  serves anyone; exec delivery and pipes run as the mailbox owner.
* No user reaches another user's mail (or the users file, aliases, queue)
  through any protocol command.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, REPO, MailSystem, client_tls

ALICE, BOB = "alice@example.test", "bob@example.test"
TEST_USER, TEST_GROUP = "pymailh5", "pymailh5x"  # made by useradd for the privilege tests


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Line:
    """A line client with exact replies; every read has a timeout.

    ``source`` binds the client to another loopback address (127.0.0.2 ...),
    which is how one machine plays several clients."""

    def __init__(
        self, port: int, *, source: str = "127.0.0.1", implicit_tls: bool = False, timeout: float = 20
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        if implicit_tls:
            sock = client_tls().wrap_socket(sock)
        self._attach(sock)

    def _attach(self, sock) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise EOFError("server closed the connection")
        return line

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def starttls(self) -> None:
        self.file.close()
        self._attach(client_tls().wrap_socket(self.sock))

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class SMTP(Line):
    def __init__(self, port: int, **kw) -> None:
        super().__init__(port, **kw)
        self.greeting = self.reply()
        assert self.greeting.startswith(b"220 "), self.greeting

    def reply(self) -> bytes:
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"".join(lines)

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def ehlo(self) -> bytes:
        reply = self.cmd("EHLO client.example")
        assert reply.startswith(b"250-mx.example.test\r\n"), reply
        return reply

    def starttls(self) -> None:
        assert self.cmd("STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        super().starttls()

    def quit(self) -> None:
        assert self.cmd("QUIT") == b"221 2.0.0 Bye\r\n"
        self.close()


def code_of(reply: bytes) -> tuple[int, str]:
    """(code, enhanced code) of the last line of a reply."""
    last = reply.rstrip(b"\r\n").split(b"\r\n")[-1]
    parts = last.decode("ascii", "replace").split(" ")
    return int(parts[0][:3]), parts[1] if len(parts) > 1 else ""


# -- a next hop that records everything -------------------------------------------


class SMTPSink:
    """A minimal SMTP server on 127.0.0.1 that accepts anything and remembers it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.rcpts: list[str] = []
        self.messages: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        rfile = conn.makefile("rb")
        try:
            conn.sendall(b"220 sink.test ESMTP\r\n")
            while True:
                line = rfile.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-sink.test\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    self.rcpts.append(line[8:].strip().decode("utf-8", "replace"))
                    conn.sendall(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    data = b""
                    while True:
                        text = rfile.readline()
                        if not text or text == b".\r\n":
                            break
                        data += text
                    self.messages.append(data)
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 Ok\r\n")
        except OSError:
            pass
        finally:
            rfile.close()
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


def queued_envelopes(system: MailSystem) -> list[dict]:
    """The JSON envelope line of every queue file (tmp/ included)."""
    envelopes = []
    for path in system.queue_files():
        with open(path, "rb") as fh:
            first = fh.readline()
        if first.endswith(b"\n"):
            envelopes.append(json.loads(first))
    return envelopes


def is_local(address: str) -> bool:
    return address.rpartition("@")[2].lower() == DOMAIN


def remote_in_queue(system: MailSystem) -> list[str]:
    return [r for env in queued_envelopes(system) for r in env["recipients"] if not is_local(r)]


# =================================================================================
# 1. No open relay
# =================================================================================

# (id, RCPT TO argument, reply code, enhanced code) on the smtp listener for a
# client outside smtpd.trusted_networks.  Decisions:
# * a '%', '!' or quoted '@' in the local part of a local address is just a
#   local part: nobody has it, so 550 5.1.1 (never a route to evil.example);
# * two '@', a trailing dot, no brackets, no domain, a null or empty path are
#   not RFC 5321 paths: 501 5.1.3;
# * any domain that is not one of ours -- literals of our own address, our
#   host name, localhost, look-alike suffixes, upper case -- is relaying:
#   554 5.7.1;
# * a source route is ignored (RFC 5321 4.1.2 MAY): only the final mailbox counts.
RELAY_TRICKS = [
    ("source-route", "<@a.example:bob@evil.example>", 554, "5.7.1"),
    ("source-route-via-us", "<@example.test,@a.example:bob@evil.example>", 554, "5.7.1"),
    ("percent-hack", "<bob%evil.example@example.test>", 550, "5.1.1"),
    ("quoted-percent-hack", '<"bob%evil.example"@example.test>', 550, "5.1.1"),
    ("quoted-at", '<"bob@evil.example"@example.test>', 550, "5.1.1"),
    ("quoted-at-remote-first", '<"bob@example.test"@evil.example>', 554, "5.7.1"),
    ("two-ats", "<bob@evil.example@example.test>", 501, "5.1.3"),
    ("two-ats-reversed", "<bob@example.test@evil.example>", 501, "5.1.3"),
    ("ip-literal", "<bob@[192.0.2.1]>", 554, "5.7.1"),
    ("own-ip-literal", "<bob@[127.0.0.1]>", 554, "5.7.1"),
    ("ipv6-literal", "<bob@[IPv6:::1]>", 554, "5.7.1"),
    ("percent-hack-to-literal", "<bob%evil.example@[127.0.0.1]>", 554, "5.7.1"),
    ("local-trailing-dot", "<bob@EXAMPLE.TEST.>", 501, "5.1.3"),
    ("remote-trailing-dot", "<bob@evil.example.>", 501, "5.1.3"),
    ("uppercase-remote", "<BOB@EVIL.EXAMPLE>", 554, "5.7.1"),
    ("mixed-case-remote", "<bob@Evil.Example>", 554, "5.7.1"),
    ("local-domain-as-prefix", "<bob@example.test.evil.example>", 554, "5.7.1"),
    ("local-domain-as-suffix", "<bob@evilexample.test>", 554, "5.7.1"),
    ("subdomain-of-local", "<bob@sub.example.test>", 554, "5.7.1"),
    ("own-hostname", "<bob@mx.example.test>", 554, "5.7.1"),
    ("localhost", "<bob@localhost>", 554, "5.7.1"),
    ("bang-path", "<evil.example!bob@example.test>", 550, "5.1.1"),
    ("remote-postmaster", "<postmaster@evil.example>", 554, "5.7.1"),
    ("null-recipient", "<>", 501, "5.1.3"),
    ("empty-recipient", "", 501, "5.1.3"),
    ("route-without-mailbox", "<@evil.example:>", 501, "5.1.3"),
    ("no-brackets", "bob@evil.example", 501, "5.1.3"),
    ("no-domain", "<bob>", 501, "5.1.3"),
    ("utf8-domain-without-smtputf8", "<bob@\u00e9vil.example>", 553, "5.6.7"),
    ("rcpt-parameter", "<bob@evil.example> NOTIFY=NEVER", 555, "5.5.4"),
    ("nul-in-address", "<bob@example.test\x00@evil.example>", 500, "5.5.2"),
    ("cr-in-address", "<bob@example.test\rRCPT TO:<x@evil.example>>", 500, "5.5.2"),
]
# Forms of a local address that are accepted -- as local mail, never relayed.
LOCAL_FORMS = [
    "<BOB@Example.Test>",
    "<@evil.example:bob@example.test>",
    "<bob+evil.example@example.test>",
    '<"bob"@example.test>',
]
LISTENERS = ["smtp", "submission", "smtps"]
RELAY_CONFIG = "[smtpd]\ntrusted_networks = []\nmax_errors = 1000\nprocesses = 1\n"


@pytest.fixture(scope="module")
def relay_sys(tmp_path_factory, tls_files):
    """One tree, the three listeners, no qrunner: whatever is accepted stays in the queue."""
    system = MailSystem(tmp_path_factory.mktemp("relay"), tls_files, RELAY_CONFIG)
    system.ports = {
        "smtp": system.start_smtpd("listen", "--service", "smtp"),
        "submission": system.start_smtpd("listen", "--service", "submission"),
        "smtps": system.start_smtpd("listen", "--tls", "--service", "smtps"),
    }
    yield system
    system.stop_all()


def open_listener(system: MailSystem, listener: str, port: int | None = None) -> SMTP:
    s = SMTP(port or system.ports[listener], implicit_tls=listener == "smtps")
    s.ehlo()
    return s


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("name,rcpt,code,enhanced", RELAY_TRICKS, ids=[t[0] for t in RELAY_TRICKS])
def test_relay_trick_is_refused(relay_sys, listener, name, rcpt, code, enhanced):
    s = open_listener(relay_sys, listener)
    mail = s.cmd("MAIL FROM:<spammer@evil.example>")
    if listener == "smtp":
        assert mail == b"250 2.1.0 Ok\r\n"
        reply = s.cmd(f"RCPT TO:{rcpt}".encode())
        assert code_of(reply) == (code, enhanced), reply
        if code == 554:
            assert reply.endswith(b": Relay access denied\r\n"), reply
    else:  # unauthenticated submission: nothing gets past MAIL
        assert mail == b"530 5.7.0 Authentication required\r\n"
        reply = s.cmd(f"RCPT TO:{rcpt}".encode())
        if code == 500:  # refused as a command line before any state is looked at
            assert code_of(reply) == (500, "5.5.2"), reply
        else:
            assert reply == b"503 5.5.1 Error: need MAIL command\r\n"
    assert s.cmd("DATA") in (b"503 5.5.1 Error: need RCPT command\r\n", b"503 5.5.1 Error: need MAIL command\r\n")
    s.quit()
    assert remote_in_queue(relay_sys) == []


@pytest.mark.parametrize("listener", LISTENERS)
def test_pipelined_and_split_recipients(relay_sys, listener):
    """A second RCPT hidden behind CRLF, a bare LF or in one write is its own
    command and is judged on its own; the queued envelope holds only the local one."""
    s = open_listener(relay_sys, listener)
    if listener != "smtp":
        s.send(b"MAIL FROM:<spammer@evil.example>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<x@evil.example>\r\n")
        assert [s.reply() for _ in range(3)] == [
            b"530 5.7.0 Authentication required\r\n",
            b"503 5.5.1 Error: need MAIL command\r\n",
            b"503 5.5.1 Error: need MAIL command\r\n",
        ]
        s.quit()
        return
    before = len(queued_envelopes(relay_sys))
    s.send(
        b"MAIL FROM:<spammer@evil.example>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<x@evil.example>\r\n"
        b"RCPT TO:<alice@example.test>\nRCPT TO:<y@evil.example>\r\n"
        b"RCPT TO:<bob@example.test\r\nRCPT TO:<z@evil.example>>\r\n"
    )
    replies = [s.reply() for _ in range(7)]
    assert [code_of(r) for r in replies] == [
        (250, "2.1.0"),
        (250, "2.1.5"),
        (554, "5.7.1"),
        (250, "2.1.5"),
        (554, "5.7.1"),
        (501, "5.1.3"),
        (555, "5.5.4"),
    ], replies
    for form in LOCAL_FORMS:
        assert s.cmd(f"RCPT TO:{form}") == b"250 2.1.5 Ok\r\n", form
    assert s.cmd("DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert code_of(s.cmd("Subject: local\r\n\r\nlocal only\r\n.")) == (250, "2.0.0")
    s.quit()
    envelopes = queued_envelopes(relay_sys)
    assert len(envelopes) == before + 1
    recipients = envelopes[-1]["recipients"] if before == 0 else [r for e in envelopes for r in e["recipients"]]
    assert all(is_local(r) for r in recipients), recipients
    assert {r.lower() for r in recipients} >= {BOB, ALICE, "bob+evil.example@example.test"}


def test_no_relay_through_a_running_qrunner_to_the_next_hop(make_mailsys):
    """The table once more in one session per listener (smtp started by inetd),
    with a qrunner whose transport map sends every remote domain to a sink:
    the sink sees nothing until an authenticated user sends remote mail."""
    sink = SMTPSink()
    try:
        system = make_mailsys(RELAY_CONFIG + f'[relay]\ntransport_map = {{ "*" = "[127.0.0.1]:{sink.port}" }}\n')
        ports = {
            "smtp": system.start_smtpd("inetd", "--service", "smtp"),
            "submission": system.start_smtpd("listen", "--service", "submission"),
            "smtps": system.start_smtpd("listen", "--tls", "--service", "smtps"),
        }
        system.start_qrunner()
        for listener in LISTENERS:
            s = open_listener(system, listener, ports[listener])
            mail = s.cmd("MAIL FROM:<spammer@evil.example>")
            assert code_of(mail) == ((250, "2.1.0") if listener == "smtp" else (530, "5.7.0"))
            for name, rcpt, code, enhanced in RELAY_TRICKS:
                reply = s.cmd(f"RCPT TO:{rcpt}".encode())
                if listener == "smtp" or code == 500:
                    assert code_of(reply) == (code, enhanced), (listener, name, reply)
                else:
                    assert code_of(reply) == (503, "5.5.1"), (listener, name, reply)
            if listener == "smtp":  # a local recipient makes the transaction real
                assert s.cmd("RCPT TO:<BOB@Example.Test>") == b"250 2.1.5 Ok\r\n"
                assert s.cmd("DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
                assert code_of(s.cmd("Subject: tricks\r\n\r\nfor bob\r\n.")) == (250, "2.0.0")
            s.quit()
        [delivered] = system.wait_messages(1, user="bob")
        assert b"Subject: tricks" in delivered.read_bytes()
        assert system.wait_queue_empty() == []
        time.sleep(0.3)
        assert (sink.connections, sink.rcpts) == (0, [])
        # Control: the sink does receive what an authenticated user sends out.
        s = open_listener(system, "submission", ports["submission"])
        s.starttls()
        s.ehlo()
        assert s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}")) == b"235 2.7.0 Authentication successful\r\n"
        assert s.cmd(f"MAIL FROM:<{ALICE}>") == b"250 2.1.0 Ok\r\n"
        assert s.cmd("RCPT TO:<carol@remote.example>") == b"250 2.1.5 Ok\r\n"
        assert s.cmd("DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
        assert code_of(s.cmd("Subject: out\r\n\r\nallowed\r\n.")) == (250, "2.0.0")
        s.quit()
        deadline = time.time() + 15
        while not sink.messages and time.time() < deadline:
            time.sleep(0.05)
        assert sink.rcpts == ["<carol@remote.example>"], sink.rcpts
    finally:
        sink.close()


# =================================================================================
# 2. Password guessing is slowed per address and per account
# =================================================================================

BASE, CAP = 0.1, 0.25
GUARD_CONFIG = (
    f"[auth]\nfailure_delay = {BASE}\nmax_failure_delay = {CAP}\n"
    "[smtpd]\nprocesses = 1\n[pop3d]\nprocesses = 1\n[imapd]\nprocesses = 1\n"
)
DAEMONS = {"smtp": ("pymta.smtpd", "submission"), "pop3": ("pypop.pop3d", "pop3"), "imap": ("pyimap.imapd", "imap")}


def smtp_login(port: int, source: str, user: str, password: str, variant: int) -> tuple[bool, float]:
    """AUTH PLAIN (even variants) or AUTH LOGIN; (success, seconds from the
    line carrying the password to the reply)."""
    s = SMTP(port, source=source)
    s.ehlo()
    if variant % 2 == 0:
        started = time.monotonic()
        reply = s.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
    else:
        assert s.cmd("AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
        assert s.cmd(b64(user)) == b"334 UGFzc3dvcmQ6\r\n"
        started = time.monotonic()
        reply = s.cmd(b64(password))
    elapsed = time.monotonic() - started
    assert reply in (b"235 2.7.0 Authentication successful\r\n", b"535 5.7.8 Authentication credentials invalid\r\n")
    s.quit()
    return reply.startswith(b"235 "), elapsed


def pop3_login(port: int, source: str, user: str, password: str, variant: int) -> tuple[bool, float]:
    """USER/PASS (even variants) or AUTH PLAIN with an initial response."""
    c = Line(port, source=source)
    assert c.line().startswith(b"+OK ")
    if variant % 2 == 0:
        c.send(f"USER {user}\r\n")
        assert c.line() == b"+OK\r\n"
        started = time.monotonic()
        c.send(f"PASS {password}\r\n")
    else:
        started = time.monotonic()
        c.send(f"AUTH PLAIN {b64(f'{chr(0)}{user}{chr(0)}{password}')}\r\n")
    reply = c.line()
    elapsed = time.monotonic() - started
    ok = reply.startswith(b"+OK Logged in, ")
    assert ok or reply == b"-ERR [AUTH] Authentication failed\r\n", reply
    c.send("QUIT\r\n")
    assert c.line().startswith(b"+OK ")
    c.close()
    return ok, elapsed


def imap_tagged(c: Line, tag: bytes) -> tuple[list[bytes], bytes]:
    untagged = []
    while True:
        line = c.line()
        if line.startswith(tag + b" "):
            return untagged, line
        untagged.append(line)


def imap_login(port: int, source: str, user: str, password: str, variant: int) -> tuple[bool, float]:
    """LOGIN (even variants) or AUTHENTICATE PLAIN with an initial response (SASL-IR)."""
    c = Line(port, source=source)
    assert c.line().startswith(b"* OK ")
    started = time.monotonic()
    if variant % 2 == 0:
        c.send(f'a LOGIN "{user}" "{password}"\r\n')
    else:
        c.send(f"a AUTHENTICATE PLAIN {b64(f'{chr(0)}{user}{chr(0)}{password}')}\r\n")
    _, reply = imap_tagged(c, b"a")
    elapsed = time.monotonic() - started
    ok = reply.startswith(b"a OK ")
    assert ok or reply == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", reply
    c.send("z LOGOUT\r\n")
    imap_tagged(c, b"z")
    c.close()
    return ok, elapsed


LOGINS = {"smtp": smtp_login, "pop3": pop3_login, "imap": imap_login}


@pytest.mark.parametrize("proto", ["smtp", "pop3", "imap"])
def test_guessing_is_slowed_per_address_and_per_account(make_mailsys, proto):
    system = make_mailsys(GUARD_CONFIG)
    for i in range(6):  # real accounts: an unknown one costs a full-cost dummy hash
        system.add_user(f"guess{i}@example.test", "other-pass")
    module, service = DAEMONS[proto]
    port = system.start_daemon(module, "listen", "--service", service)
    login = LOGINS[proto]

    # One address trying a new account each time: the address is slowed,
    # doubling up to auth.max_failure_delay, and the wait comes before the reply.
    tries = 5 if proto == "smtp" else 3
    times = []
    for i in range(tries):
        ok, elapsed = login(port, "127.0.0.2", f"guess{i}@example.test", "guess", i)
        assert not ok
        times.append(elapsed)
    assert times[0] >= BASE and times[1] >= 2 * BASE and times[2] >= CAP, times
    if proto == "smtp":  # capped: 0.25 s, where doubling would give 1.6 s
        assert times[4] >= CAP and times[4] < 1.2, times

    # One account tried from a new address each time: failures for the
    # account do not slow other addresses (each pays only its own first
    # delay); the account's failure budget bounds them instead
    # (tests/test_auth_guard.py, where other spellings count for alice too).
    for i, name in enumerate([ALICE, ALICE, "ALICE@Example.Test", "alice+x@example.test", "alice+y@example.test."]):
        ok, elapsed = login(port, f"127.0.0.{3 + i}", name, "guess", i)
        assert not ok and BASE <= elapsed < CAP, (name, elapsed)

    # The right password still works after the failures, from a fresh and
    # from the slowed address; it never clears the address.
    assert login(port, "127.0.0.9", ALICE, PASSWORD, 0)[0]
    # An address with recent failures waits before every password check, a
    # right one included (Dovecot's auth penalty): parallel connections cannot
    # each make a guess at full speed.
    ok, elapsed = login(port, "127.0.0.2", ALICE, PASSWORD, 1)
    assert ok and elapsed >= CAP, elapsed
    ok, elapsed = login(port, "127.0.0.2", "guess5@example.test", "guess", 0)
    assert not ok and elapsed >= CAP, elapsed
    guard_dir = system.root / "run" / "authfail"  # the memory of failures is private
    assert list(guard_dir.iterdir()) and guard_dir.stat().st_mode & 0o777 == 0o700


# =================================================================================
# 3. No password without TLS by default
# =================================================================================
# Already shown elsewhere: tests/test_mail_in.py::test_auth_not_offered_without_tls_to_remote_peers
# (submission: no AUTH in EHLO, AUTH PLAIN -> 538, AUTH after STARTTLS);
# tests/test_pop3.py::test_plaintext_refused_without_tls_unless_configured (CAPA
# without USER/SASL, USER and AUTH PLAIN refused with the exact reply, USER/PASS
# after STLS); tests/test_imap.py::test_starttls_and_logindisabled (LOGINDISABLED,
# no AUTH=PLAIN, LOGIN -> NO [PRIVACYREQUIRED], LOGIN after STARTTLS, 3 modes).
# Added here: the defaults themselves, the exact enhanced code, AUTH LOGIN, the
# smtp listener, POP3 PASS alone and AUTH PLAIN after STLS, IMAP AUTHENTICATE.

NO_LOOPBACK = "[auth]\nallow_plaintext_loopback = false\n"


def test_the_defaults_refuse_plaintext_passwords():
    from pymta.lib.config import PARAM_BY_NAME

    assert PARAM_BY_NAME["auth.allow_plaintext"].default is False
    assert PARAM_BY_NAME["smtpd.require_tls_for_auth"].default is True
    assert PARAM_BY_NAME["daemon_user"].default == ""


@pytest.mark.parametrize("service", ["smtp", "submission"])
def test_smtp_auth_needs_tls(make_mailsys, service):
    system = make_mailsys(NO_LOOPBACK)
    port = system.start_smtpd("listen", "--service", service)
    s = SMTP(port)
    ehlo = s.ehlo()
    assert b"AUTH" not in ehlo and ehlo.endswith(b"250 STARTTLS\r\n")
    refused = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    assert s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}")) == refused
    assert s.cmd("AUTH LOGIN") == refused
    assert s.cmd("AUTH PLAIN") == refused
    s.starttls()
    assert b"250 AUTH PLAIN LOGIN\r\n" in s.ehlo()
    assert s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}")) == b"235 2.7.0 Authentication successful\r\n"
    s.quit()


def test_pop3_and_imap_passwords_need_tls(make_mailsys):
    system = make_mailsys(NO_LOOPBACK)
    pop_port = system.start_daemon("pypop.pop3d", "listen")
    imap_port = system.start_daemon("pyimap.imapd", "listen")
    refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n"
    c = Line(pop_port)
    c.line()
    c.send(f"PASS {PASSWORD}\r\nAUTH\r\nAUTH PLAIN\r\n")
    assert [c.line(), c.line(), c.line(), c.line()] == [refused, b"+OK\r\n", b".\r\n", refused]
    c.send("STLS\r\n")
    assert c.line() == b"+OK Begin TLS negotiation\r\n"
    c.starttls()
    c.send("AUTH\r\n")
    assert [c.line(), c.line(), c.line()] == [b"+OK\r\n", b"PLAIN\r\n", b".\r\n"]
    c.send(f"AUTH PLAIN {b64(f'{chr(0)}{ALICE}{chr(0)}{PASSWORD}')}\r\n")
    assert c.line().startswith(b"+OK Logged in, ")
    c.send("QUIT\r\n")
    c.line()
    c.close()

    c = Line(imap_port)
    assert c.line().startswith(b"* OK ")
    c.send("x CAPABILITY\r\n")
    [caps], done = imap_tagged(c, b"x")
    assert done.startswith(b"x OK ") and b" LOGINDISABLED" in caps and b" STARTTLS" in caps and b"AUTH=" not in caps
    privacy = b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections\r\n"
    c.send(f"a AUTHENTICATE PLAIN {b64(f'{chr(0)}{ALICE}{chr(0)}{PASSWORD}')}\r\n")
    assert imap_tagged(c, b"a")[1] == b"a " + privacy
    c.send("b AUTHENTICATE PLAIN\r\n")
    assert imap_tagged(c, b"b")[1] == b"b " + privacy
    c.send(f'c LOGIN "{ALICE}" "{PASSWORD}"\r\n')
    assert imap_tagged(c, b"c")[1] == b"c " + privacy
    c.send("d STARTTLS\r\n")
    assert imap_tagged(c, b"d")[1] == b"d OK Begin TLS negotiation now\r\n"
    c.starttls()
    c.send(f"e AUTHENTICATE PLAIN {b64(f'{chr(0)}{ALICE}{chr(0)}{PASSWORD}')}\r\n")
    assert imap_tagged(c, b"e")[1].startswith(b"e OK ")
    c.send("z LOGOUT\r\n")
    imap_tagged(c, b"z")
    c.close()


# =================================================================================
# 4. Privileges
# =================================================================================

UNITS = sorted((REPO / "etc" / "systemd").glob("*.service"))


def test_shipped_units_run_nothing_as_root():
    """Every unit runs as pymail, but pymda-local: the one step that must
    switch to the mailbox owner keeps root (Postfix's local(8))."""
    assert len(UNITS) >= 15 and any(u.name == "pymta-qrunner.service" for u in UNITS)
    for unit in UNITS:
        keys: dict[str, list[str]] = {}
        for line in unit.read_text().splitlines():
            key, eq, value = line.partition("=")
            if eq and not line.startswith(("#", ";")):
                keys.setdefault(key.strip(), []).append(value.strip())
        if unit.name == "pymda-local.service":
            assert "User" not in keys and keys["ExecStart"] == ["/usr/bin/pymda-local -C /etc/pymail/pymail.toml"]
            socket_unit = (REPO / "etc" / "systemd" / "pymda-local.socket").read_text()
            assert "SocketUser=pymail" in socket_unit and "SocketMode=0600" in socket_unit
            continue
        assert keys.get("User") and keys.get("Group"), unit.name
        for key in ("User", "Group"):
            assert all(v not in ("", "root", "0") for v in keys[key]), (unit.name, key, keys[key])
        assert keys.get("NoNewPrivileges") == ["yes"], unit.name
        assert "DynamicUser" not in keys and "AmbientCapabilities" not in keys, unit.name
    page = (REPO / "man" / "pymail.7").read_text()
    privileges = page[page.index('.SH "PRIVILEGES"') :]
    privileges = privileges[: privileges.index("\n.SH ", 1)]
    assert "pymda\\-local" in privileges and "root" in privileges and "daemon_user" in privileges


def test_inetd_lines_run_nothing_as_root():
    lines = []
    for line in (REPO / "etc" / "inetd.conf").read_text().splitlines():
        fields = line.lstrip("#").split()
        if len(fields) >= 7 and fields[1] == "stream" and fields[2] in ("tcp", "tcp6"):
            lines.append(fields)
    assert {f[0] for f in lines} == {"smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"}
    for fields in lines:
        user = re.split(r"[.:]", fields[4])[0]
        assert user not in ("root", "0"), fields
        assert fields[3] == "nowait" and fields[5].startswith("/usr/bin/py"), fields


@pytest.fixture(scope="module")
def test_user():
    """A system user with a supplementary group, made for these tests (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: starts daemons as root and watches them switch users")
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        pytest.skip("needs useradd and groupadd")

    def run(*argv):
        for _ in range(20):  # another process may hold the passwd lock for a moment
            if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.2)
        subprocess.run(argv, check=True)

    made = []
    try:
        grp.getgrnam(TEST_GROUP)
    except KeyError:
        run("groupadd", "--system", TEST_GROUP)
        made.append(("groupdel", TEST_GROUP))
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        run(
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            "-G",
            TEST_GROUP,
            TEST_USER,
        )
        made.append(("userdel", TEST_USER))
    run("usermod", "-a", "-G", TEST_GROUP, TEST_USER)  # also when left over from an earlier run
    yield pwd.getpwnam(TEST_USER)
    for cmd, name in reversed(made):
        for _ in range(10):  # userdel refuses while a process of the user is still exiting
            if subprocess.run([cmd, name], capture_output=True, check=False).returncode in (0, 6):
                break
            time.sleep(0.2)


@pytest.fixture
def open_root(tls_files):
    """A MailSystem in a folder other uids can reach (pytest's are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="pymail-h5-"))
    os.chmod(path, 0o755)
    made = []

    def make(extra: str = "") -> MailSystem:
        system = MailSystem(path, tls_files, extra)
        made.append(system)
        return system

    yield make
    for system in made:
        system.stop_all()
    shutil.rmtree(path, ignore_errors=True)


def hand_over(system: MailSystem, pw) -> None:
    """Everything to the user but the TLS key, which stays root's (0600): the
    daemon can only have read it before switching."""
    for dirpath, dirnames, filenames in os.walk(system.root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)
    os.chown(system.root, pw.pw_uid, pw.pw_gid)
    key = system.root / "tls" / "key.pem"
    os.chown(key, 0, 0)
    os.chmod(key, 0o600)
    os.chmod(system.config, 0o644)
    os.chown(system.config, 0, 0)


def status_ids(pid: int) -> dict[str, list[int]]:
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(v) for v in value.split()]
    return ids


def daemon_pids(root_pid: int, module: str) -> list[int]:
    """The pid and the descendants of ``root_pid`` that run ``python -m module``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    family, grew = {root_pid}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    found = []
    for pid in sorted(family):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" in os.path.basename(argv[0]) and module.encode() in argv:  # not systemd-socket-activate
            found.append(pid)
    return found


def serving_pid(pids: list[int], server_port: int, client_port: int) -> int:
    """Which of ``pids`` has our connection on its fd 0 (inetd style)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inode = fields[9]
    assert inode is not None
    owners = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/fd/0") == f"socket:[{inode}]":
                owners.append(pid)
        except OSError:  # a probe's process that has just exited
            pass
    assert len(owners) == 1, (pids, owners)
    return owners[0]


def assert_runs_as(pids: list[int], pw, extra_gid: int) -> None:
    assert pids
    for pid in pids:
        ids = status_ids(pid)
        assert ids["Uid"] == [pw.pw_uid] * 4, (pid, ids)
        assert ids["Gid"] == [pw.pw_gid] * 4, (pid, ids)
        assert sorted(ids["Groups"]) == sorted({pw.pw_gid, extra_gid}), (pid, ids)


def smtp_session_as_user(port: int, system: MailSystem, check) -> None:
    s = SMTP(port)
    s.ehlo()
    s.starttls()  # the key is root's: read before the switch
    s.ehlo()
    assert s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}")) == b"235 2.7.0 Authentication successful\r\n"
    check(s)
    assert s.cmd(f"MAIL FROM:<{ALICE}>") == b"250 2.1.0 Ok\r\n"
    assert s.cmd(f"RCPT TO:<{BOB}>") == b"250 2.1.5 Ok\r\n"
    assert s.cmd("DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert code_of(s.cmd("Subject: as user\r\n\r\nhi\r\n.")) == (250, "2.0.0")
    s.quit()


def pop3_session_as_user(port: int, system: MailSystem, check) -> None:
    c = Line(port)
    assert c.line().startswith(b"+OK ")
    c.send("STLS\r\n")
    assert c.line() == b"+OK Begin TLS negotiation\r\n"
    c.starttls()
    c.send(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n")
    assert c.line() == b"+OK\r\n"
    assert c.line().startswith(b"+OK Logged in, 1 messages")
    check(c)
    c.send("RETR 1\r\n")
    assert c.line().startswith(b"+OK ")
    body = b""
    while not body.endswith(b"\r\n.\r\n"):
        body += c.line()
    assert b"Subject: stored" in body
    c.send("QUIT\r\n")
    assert c.line().startswith(b"+OK ")
    c.close()


def imap_session_as_user(port: int, system: MailSystem, check) -> None:
    c = Line(port)
    assert c.line().startswith(b"* OK ")
    c.send("a STARTTLS\r\n")
    assert imap_tagged(c, b"a")[1] == b"a OK Begin TLS negotiation now\r\n"
    c.starttls()
    c.send(f'b LOGIN "{ALICE}" "{PASSWORD}"\r\n')
    assert imap_tagged(c, b"b")[1].startswith(b"b OK ")
    check(c)
    c.send("c SELECT INBOX\r\n")
    untagged, done = imap_tagged(c, b"c")
    assert done.startswith(b"c OK [READ-WRITE]") and b"* 1 EXISTS\r\n" in untagged
    c.send("d FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n")
    untagged, done = imap_tagged(c, b"d")
    assert done.startswith(b"d OK ") and b"Subject: stored" in b"".join(untagged)
    message = b"Subject: appended\r\n\r\nby the user\r\n"
    c.send(f"e APPEND INBOX {{{len(message)}+}}\r\n".encode() + message + b"\r\n")
    assert imap_tagged(c, b"e")[1].startswith(b"e OK [APPENDUID ")
    c.send("z LOGOUT\r\n")
    imap_tagged(c, b"z")
    c.close()


SESSIONS = {
    "pymta.smtpd": smtp_session_as_user,
    "pypop.pop3d": pop3_session_as_user,
    "pyimap.imapd": imap_session_as_user,
}


@pytest.mark.parametrize("mode", ["listen", "fds", "inetd"])
@pytest.mark.parametrize("module", ["pymta.smtpd", "pypop.pop3d", "pyimap.imapd"])
def test_daemon_started_as_root_serves_as_daemon_user(open_root, test_user, module, mode):
    pw = test_user
    extra_gid = grp.getgrnam(TEST_GROUP).gr_gid
    system = open_root(
        f'daemon_user = "{TEST_USER}"\n[smtpd]\nprocesses = 2\n[pop3d]\nprocesses = 2\n[imapd]\nprocesses = 2\n'
    )
    from pymda import maildir as md

    md.ensure_maildir(system.maildir("alice"))
    md.deliver(system.maildir("alice"), b"Subject: stored\n\nalice's mail\n", fsync=False)
    hand_over(system, pw)
    port = system.start_daemon(module, mode)
    proc = system.procs[-1]
    before = set(system.maildir("alice").rglob("*"))

    def check(client: Line):  # while the session is open
        pids = daemon_pids(proc.pid, module)
        if mode == "inetd":  # the process serving this connection (others may be starting for wait_port's probe)
            pids = [serving_pid(pids, port, client.sock.getsockname()[1])]
        else:
            assert len(pids) == 3, pids  # the parent that watches, and its two pre-forked workers
        assert_runs_as(pids, pw, extra_gid)

    SESSIONS[module](port, system, check)
    if module == "pymta.smtpd":
        [entry] = [p for p in system.queue_files() if p.parent.name == "new"]
        assert entry.stat().st_uid == pw.pw_uid
    if module == "pyimap.imapd":
        made = [p for p in set(system.maildir("alice").rglob("*")) - before if p.is_file()]
        assert made and all(p.stat().st_uid == pw.pw_uid for p in made)
    assert proc.poll() is None


def test_unknown_daemon_user_refuses_to_start(make_mailsys):
    system = make_mailsys('daemon_user = "no-such-user-h5"\n')
    proc = system.run("pymta.smtpd", "--listen", "127.0.0.1:1", timeout=30)
    assert proc.returncode == 78
    assert b"config: daemon_user: no such user 'no-such-user-h5'" in proc.stderr
    if os.geteuid() == 0:  # root becoming root is no switch at all
        system.write_config('daemon_user = "root"\n')
        port = system.start_smtpd("listen")
        s = SMTP(port)
        s.quit()


@pytest.mark.parametrize("identity", ["users-file", "maildir-owner"])
def test_exec_delivery_and_pipes_run_as_the_mailbox_owner(open_root, test_user, identity):
    """qrunner as root in exec mode: pymda-deliver switches to the users-file
    uid/gid of the recipient -- or, when the entry has none and no system
    account is named like the user, to the owner of the user's Maildir --
    before writing the Maildir or running a pipe.
    (pymda-deliver run directly is tests/test_rules.py::test_privileges_dropped_to_mailbox_owner.)"""
    pw = test_user
    system = open_root('[deliver]\nmode = "exec"\n')
    ids_field = f"{pw.pw_uid}:{pw.pw_gid}" if identity == "users-file" else ":"
    with open(system.root / "users", "a") as fh:
        fh.write(f"dave@example.test:{{PLAIN}}x:{ids_field}::::\n")
    box = system.maildir("dave")
    box.mkdir(parents=True)
    (box / ".procmailrc").write_text(":0 c\n| id > ids\n:0\n.Sub/\n")
    for path in (box, box / ".procmailrc"):
        os.chown(path, pw.pw_uid, pw.pw_gid)
    for path in (system.root, system.root / "mail", system.root / "mail" / DOMAIN):
        os.chmod(path, 0o755)
    os.chmod(system.config, 0o644)
    os.chmod(system.root / "users", 0o644)
    queued = system.run(
        "pymta.queue_cmd", "-f", "carol@remote.example", "dave@example.test", input=b"Subject: for dave\n\nhello\n"
    )
    assert queued.returncode == 0, queued.stderr
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    [message] = list((box / ".Sub" / "new").iterdir())
    assert b"Subject: for dave" in message.read_bytes()
    assert (message.stat().st_uid, message.stat().st_gid) == (pw.pw_uid, pw.pw_gid)
    ids = (box / "ids").read_text()
    assert ids.startswith(f"uid={pw.pw_uid}({TEST_USER}) gid={pw.pw_gid}("), ids
    assert "(root)" not in ids
    assert (box / "ids").stat().st_uid == pw.pw_uid
    assert system.wait_queue_empty() == []


# =================================================================================
# 5. No user reaches another user's mail, or the system's files
# =================================================================================

SECRET = b"BOB-ONLY-SECRET"
# Every way of naming bob's mailbox, the users file or the queue from alice's session.
FOREIGN_NAMES = [
    "../bob",
    "..",
    "../../example.test/bob",
    "#shared",
    "#shared/bob",
    "~bob",
    "~bob/INBOX",
    "~/../bob",
    "/abs/path",
    "Other Users/bob",
    "Other Users",
    "bob",
    "INBOX/../../bob",
    "&AC4-&AC4-/bob",
    "..\\bob",
    "./bob",
    "INBOX/..",
    "../../../users",
    "../../../queue/new",
    "../../../aliases",
]


@pytest.fixture
def two_users(make_mailsys):
    from pymda import maildir as md

    mailsys = make_mailsys("[auth]\nfailure_delay = 0.05\nmax_failure_delay = 0.1\n")

    for user in ("alice", "bob"):
        md.ensure_maildir(mailsys.maildir(user))
    md.deliver(mailsys.maildir("alice"), b"Subject: alice one\n\nfor alice\n", fsync=False)
    md.deliver(mailsys.maildir("bob"), b"Subject: " + SECRET + b"\n\n" + SECRET + b"\n", fsync=False)
    bob_folder = mailsys.maildir("bob") / ".BobPrivate"
    md.ensure_maildir(bob_folder)
    md.deliver(bob_folder, b"Subject: " + SECRET + b" folder\n\nx\n", fsync=False)
    return mailsys


def tree_state(path: Path) -> dict:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.name not in ("dovecot-uidlist", "pymail-index")
    }


def outside_alice(system: MailSystem) -> set[str]:
    """Every path of the tree but alice's Maildir and the auth guard's memory."""
    alice, run = system.maildir("alice"), system.root / "run"
    return {
        str(p)
        for p in system.root.rglob("*")
        if alice not in p.parents and p != alice and run not in p.parents and p != run
    }


def test_imap_alice_cannot_reach_bobs_mailbox_by_any_name(two_users):
    system = two_users
    port = system.start_daemon("pyimap.imapd", "listen")
    bob_before = tree_state(system.maildir("bob"))
    root_files = {name: (system.root / name).read_bytes() for name in ("users", "aliases")}
    outside_before = outside_alice(system)
    c = Line(port)
    c.line()
    c.send(f'a LOGIN "{ALICE}" "{PASSWORD}"\r\n')
    assert imap_tagged(c, b"a")[1].startswith(b"a OK ")
    transcript = []

    def cmd(tag: str, text: str | bytes) -> tuple[list[bytes], bytes]:
        c.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        untagged, done = imap_tagged(c, tag.encode())
        transcript.extend(untagged + [done])
        return untagged, done

    invalid = re.compile(rb"^t NO \[CANNOT\] Invalid mailbox name: .+\r\n$")
    for name in FOREIGN_NAMES:
        q = '"' + name.replace("\\", "\\\\") + '"'
        results = {
            "SELECT": cmd("t", f"t SELECT {q}")[1],
            "EXAMINE": cmd("t", f"t EXAMINE {q}")[1],
            "STATUS": cmd("t", f"t STATUS {q} (MESSAGES UIDNEXT)")[1],
            "APPEND": cmd("t", f"t APPEND {q} {{6+}}\r\nx: y\r\n")[1],
            "DELETE": cmd("t", f"t DELETE {q}")[1],
            "RENAME": cmd("t", f"t RENAME {q} Stolen")[1],
        }
        for verb, done in results.items():
            # Refused as a name, or (a plain relative name) simply not there:
            # never bob's mailbox.
            assert invalid.match(done) or done.startswith((b"t NO [NONEXISTENT]", b"t NO [TRYCREATE]")), (
                name,
                verb,
                done,
            )
    # COPY and MOVE out of alice's INBOX towards bob, and CREATE there.
    assert cmd("s", "s SELECT INBOX")[1].startswith(b"s OK [READ-WRITE]")
    for name in FOREIGN_NAMES:
        q = '"' + name.replace("\\", "\\\\") + '"'
        for verb in ("COPY", "UID MOVE"):
            done = cmd("t", f"t {verb} 1:* {q}")[1]
            assert invalid.match(done) or done.startswith(b"t NO [TRYCREATE]"), (name, verb, done)
        done = cmd("t", f"t CREATE {q}")[1]
        assert invalid.match(done) or done.startswith(b"t OK "), (name, done)
    # LIST with any reference shows alice's folders only.
    for ref, pattern in [
        ('""', '"*"'),
        ('"../"', '"*"'),
        ('"~bob/"', '"*"'),
        ('"/"', '"*"'),
        ('""', '"../*"'),
        ('"#shared/"', '"*"'),
        ('""', '"%/%"'),
    ]:
        untagged, done = cmd("l", f"l LIST {ref} {pattern}")
        assert done.startswith((b"l OK ", b"l NO [CANNOT]")), (ref, pattern, done)
        assert not any(b"BobPrivate" in line for line in untagged), untagged
    c.send("z LOGOUT\r\n")
    imap_tagged(c, b"z")
    c.close()
    everything = b"".join(transcript)
    assert SECRET not in everything and b"BobPrivate" not in everything
    assert b"{BLF-CRYPT}" not in everything and b"postmaster:" not in everything
    assert tree_state(system.maildir("bob")) == bob_before
    assert {name: (system.root / name).read_bytes() for name in ("users", "aliases")} == root_files
    # What alice created (CREATE "#shared", "bob" ...) stayed inside her own Maildir.
    assert outside_alice(system) == outside_before
    assert (system.maildir("alice") / ".#shared").is_dir() and (system.maildir("alice") / ".Other Users.bob").is_dir()


def test_pop3_alice_sees_only_her_own_messages(two_users):
    system = two_users
    port = system.start_daemon("pypop.pop3d", "listen")
    # Names that try to lead elsewhere log in as alice or not at all.
    for name, expect in [
        (ALICE, True),
        ("alice+../../bob@example.test", True),
        ("ALICE@EXAMPLE.TEST", True),
        (BOB, False),
        ("../bob@example.test", False),
        ("alice@example.test/../bob", False),
        ("bob@example.test/../../alice@example.test", False),
    ]:
        c = Line(port)
        c.line()
        c.send(f"USER {name}\r\nPASS {PASSWORD if name != BOB else 'not-bobs-password'}\r\n")
        assert c.line() == b"+OK\r\n"
        reply = c.line()
        if not expect:
            assert reply == b"-ERR [AUTH] Authentication failed\r\n", (name, reply)
            c.close()
            continue
        assert reply == b"+OK Logged in, 1 messages (" + reply.split(b"(", 1)[1], (name, reply)
        c.send("UIDL\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n")
        data = b""
        while not data.endswith(b"+OK Logging out\r\n") and b"+OK Logging out" not in data:
            data += c.line()
        assert SECRET not in data and b"Subject: alice one" in data, (name, data)
        assert b"-ERR No such message\r\n" in data
        c.close()


def test_smtp_reads_no_file_and_tells_no_one_who_exists(relay_sys):
    s = open_listener(relay_sys, "smtp")
    assert s.cmd("VRFY bob") == b"252 2.0.0 Send some mail, I'll try my best\r\n"
    assert s.cmd("VRFY ../../users") == b"252 2.0.0 Send some mail, I'll try my best\r\n"
    assert s.cmd("EXPN postmaster") == b"502 5.5.1 Error: command not implemented\r\n"
    help_text = s.cmd("HELP")
    assert help_text.startswith(b"214 2.0.0 ") and b"/" not in help_text
    s.quit()
