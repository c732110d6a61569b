"""What an admin sees in the log (issue 15 §1): failed handshakes on the
implicit-TLS ports, the end of each IMAP and POP3 session, and the
per-user protocol trace (rawlog).  Real daemons on real sockets, in both
start modes; the lines are read from the daemon's stderr."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import time

import pytest

from conftest import PASSWORD, client_tls

PROGRAMS = {"pyimap.imapd": "pyimap-imapd", "pypop.pop3d": "pypop-pop3d", "pymta.smtpd": "pymta-smtpd"}
GREETING = {"pyimap.imapd": b"* OK ", "pypop.pop3d": b"+OK ", "pymta.smtpd": b"220 "}


class Stderr:
    """A daemon's stderr, read without blocking (the pipe never fills)."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.data = b""
        os.set_blocking(proc.stderr.fileno(), False)

    def text(self) -> str:
        while True:
            try:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.data += chunk
        return self.data.decode("utf-8", "replace")

    def lines(self, word: str) -> list[str]:
        return [x for x in self.text().splitlines() if word in x]

    def wait_for(self, word: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines(word)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} lines with {word!r} expected:\n{self.text()}")


def start(system, module: str, mode: str, *args: str) -> tuple[int, Stderr]:
    port = system.start_daemon(module, mode, *args)
    return port, Stderr(system.procs[-1])


# -- 1. failed handshakes on the implicit-TLS ports ----------------------------------------


def verifying_client() -> ssl.SSLContext:
    """A client that checks our (self-signed) certificate, and so rejects it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_default_certs()
    return ctx


@pytest.mark.parametrize("mode", ["listen", "inetd"])
@pytest.mark.parametrize("module", ["pyimap.imapd", "pypop.pop3d", "pymta.smtpd"])
def test_failed_implicit_tls_handshakes_are_logged(make_mailsys, module, mode):
    system = make_mailsys("smtpd.tls_handshake_timeout = 2\n")
    port, err = start(system, module, mode, "--tls")
    prog = PROGRAMS[module]
    head = rf"{prog}\[\d+\]: TLS handshake failed: client=\[127\.0\.0\.1\]: "
    err.wait_for("TLS handshake failed")  # start_daemon's probe: connected and closed
    assert re.fullmatch(head + r"EOF: connection closed during the handshake", err.lines("TLS handshake failed")[0])

    # a client that rejects our certificate
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            verifying_client().wrap_socket(raw, server_hostname="mx.example.test")
    line = err.wait_for("TLS handshake failed", 2)[1]
    assert re.fullmatch(head + r"SSLError: \[SSL: TLSV1_ALERT_UNKNOWN_CA\] .+", line), line

    # a plain-text client on the TLS port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"a LOGIN alice secret\r\nUSER alice\r\nEHLO x\r\n")
        raw.settimeout(5)
        try:
            raw.recv(100)
        except OSError:
            pass
    line = err.wait_for("TLS handshake failed", 3)[2]
    assert re.fullmatch(head + r"SSLError: \[SSL: (WRONG_VERSION_NUMBER|HTTP_REQUEST|UNKNOWN_PROTOCOL)\] .+", line)

    # a client that says nothing: cut at smtpd.tls_handshake_timeout
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(100) == b""
        assert 1.5 < time.monotonic() - started < 6
    line = err.wait_for("TLS handshake failed", 4)[3]
    assert re.fullmatch(head + r"timeout: no handshake within 2s", line), line

    # a good client is still served, and logs no failure
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_tls().wrap_socket(raw, server_hostname="mx.example.test") as tls:
            assert tls.recv(100).startswith(GREETING[module])
    time.sleep(0.3)
    assert len(err.lines("TLS handshake failed")) == 4, err.text()
    assert "Traceback" not in err.text()


def test_failed_handshakes_are_rate_limited(make_mailsys):
    """A scanner's connections make a burst of lines, then one a second, and
    the next line says how many were left out (the budget is each process's: one here)."""
    system = make_mailsys("imapd.processes = 1\n")
    port, err = start(system, "pyimap.imapd", "listen", "--tls")
    for _ in range(60):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
    time.sleep(1.5)
    logged = err.lines("TLS handshake failed")
    assert 20 <= len(logged) <= 23, len(logged)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
    last = err.wait_for("TLS handshake failed", len(logged) + 1)[-1]
    left_out = re.search(r" \((\d+) more failed handshakes not logged\)$", last)
    assert left_out and len(logged) + int(left_out.group(1)) == 61, (last, len(logged))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_tls().wrap_socket(raw, server_hostname="mx.example.test") as tls:
            assert tls.recv(100).startswith(b"* OK ")
    assert "Traceback" not in err.text()


# -- 2. the end of each IMAP and POP3 session ------------------------------------------------

ALICE = "alice@example.test"


class Wire:
    """A line-level client, plain or TLS."""

    def __init__(self, port: int, tls: bool = False) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = client_tls().wrap_socket(raw, server_hostname="mx.example.test") if tls else raw
        self.file = self.sock.makefile("rb")
        self.sent = 0
        self.received = 0
        self.greeting = self.line()

    def line(self) -> bytes:
        data = self.file.readline()
        self.received += len(data)
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def until(self, data: bytes, prefix: bytes) -> bytes:
        self.send(data)
        got = b""
        while True:
            line = self.line()
            assert line, got
            got += line
            if line.startswith(prefix):
                return got

    def rest(self) -> bytes:
        got = b""
        while line := self.line():
            got += line
        return got

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def imap_login(w: Wire) -> None:
    assert b"a OK" in w.until(f"a LOGIN {ALICE} {PASSWORD}\r\n".encode(), b"a ")


def pop3_login(w: Wire) -> None:
    assert w.until(f"USER {ALICE}\r\n".encode(), b"+OK").startswith(b"+OK")
    assert w.until(f"PASS {PASSWORD}\r\n".encode(), b"+OK").startswith(b"+OK Logged in")


IMAP_END = (
    r"pyimap-imapd\[\d+\]: imap\(alice@example\.test\): Disconnected: {reason} in={inb} out={outb} rip=127\.0\.0\.1"
)
POP3_END = (
    r"pypop-pop3d\[\d+\]: pop3\(alice@example\.test\): Disconnected: {reason} in={inb} out={outb} "
    r"top=0, retr=\d+/\d+, del=\d+/\d+, size=\d+ rip=127\.0\.0\.1"
)


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_imap_session_end_is_logged(make_mailsys, mode):
    system = make_mailsys("imapd.autologout = 2\nimapd.processes = 1\n")
    port, err = start(system, "pyimap.imapd", mode)
    ends: list[tuple[str, Wire]] = []

    w = Wire(port)  # LOGOUT: the byte counts are the whole session's, login included
    imap_login(w)
    w.until(b"b SELECT INBOX\r\n", b"b ")
    w.until(b"c LOGOUT\r\n", b"c ")
    assert w.rest() == b""
    w.close()
    ends.append(("Logged out", w))

    w = Wire(port)  # the client goes away
    imap_login(w)
    w.until(b"b NOOP\r\n", b"b ")
    w.close()
    ends.append(("Connection closed", w))

    w = Wire(port)  # too many invalid commands
    imap_login(w)
    for _ in range(20):
        w.send(b"x BOGUS\r\n")
    w.rest()
    w.close()
    ends.append((r"Too many invalid IMAP commands\.", w))

    w = Wire(port)  # silent past imapd.autologout
    imap_login(w)
    assert b"BYE Autologout" in w.rest()
    w.close()
    ends.append(("Inactivity - no input for 2 secs", w))

    w = Wire(port)  # TLS: the counts are of the IMAP bytes inside it
    w.until(b"s STARTTLS\r\n", b"s ")
    w.sock = client_tls().wrap_socket(w.sock, server_hostname="mx.example.test")
    w.file = w.sock.makefile("rb")
    imap_login(w)
    w.until(b"c LOGOUT\r\n", b"c ")
    w.close()
    ends.append(("Logged out", w))

    w = Wire(port)  # never logged in: no line (the login lines say what happened)
    w.until(b"a LOGOUT\r\n", b"a ")
    w.close()

    lines = err.wait_for("Disconnected", len(ends))
    time.sleep(0.3)
    assert len(err.lines("Disconnected")) == len(ends), err.text()
    for line, (reason, w) in zip(lines, ends, strict=True):
        assert re.fullmatch(IMAP_END.format(reason=reason, inb=w.sent, outb=w.received), line), (
            line,
            w.sent,
            w.received,
        )


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_pop3_session_end_is_logged(make_mailsys, mode):
    system = make_mailsys("pop3d.timeout = 2\npop3d.processes = 1\n")
    port, err = start(system, "pypop.pop3d", mode)
    ends: list[tuple[str, Wire]] = []

    w = Wire(port)
    pop3_login(w)
    w.until(b"STAT\r\n", b"+OK")
    w.until(b"QUIT\r\n", b"+OK")
    assert w.rest() == b""
    w.close()
    ends.append(("Logged out", w))

    w = Wire(port)
    pop3_login(w)
    w.close()
    ends.append(("Connection closed", w))

    w = Wire(port)
    pop3_login(w)
    for _ in range(20):
        w.send(b"BOGUS\r\n")
    w.rest()
    w.close()
    ends.append((r"Too many bad commands\.", w))

    w = Wire(port)
    pop3_login(w)
    assert w.rest() == b"-ERR Disconnected for inactivity\r\n"
    w.close()
    ends.append(("Inactivity - no input for 2 secs", w))

    lines = err.wait_for("Disconnected: ", len(ends))
    time.sleep(0.3)
    assert len(err.lines("Disconnected: ")) == len(ends), err.text()
    for line, (reason, w) in zip(lines, ends, strict=True):
        assert re.fullmatch(POP3_END.format(reason=reason, inb=w.sent, outb=w.received), line), (
            line,
            w.sent,
            w.received,
        )


def test_session_end_at_shutdown(make_mailsys):
    """A listening daemon stopped (SIGTERM) logs the sessions it cuts."""
    system = make_mailsys("imapd.processes = 1\n")
    port, err = start(system, "pyimap.imapd", "listen")
    w = Wire(port)
    imap_login(w)
    system.procs[-1].terminate()
    system.procs[-1].wait(10)
    w.close()
    (line,) = err.lines("Disconnected")
    assert re.fullmatch(IMAP_END.format(reason=r"Server shutting down\.", inb=w.sent, outb=w.received), line), line


# -- 3. the per-user protocol trace (rawlog) -------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
@pytest.mark.parametrize("module", ["pyimap.imapd", "pypop.pop3d"])
def test_rawlog_traces_a_listed_user_after_login(make_mailsys, tmp_path, module, mode):
    system = make_mailsys('rawlog.dir = "rawlog"\nrawlog.users = ["alice@example.test", "bob@example.test"]\n')
    (system.root / "rawlog").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (system.root / "rawlog" / "bob@example.test").symlink_to(elsewhere)  # never followed
    port, err = start(system, module, mode)
    imap = module == "pyimap.imapd"
    w = Wire(port)
    if imap:
        w.until(b"p CAPABILITY\r\n", b"p ")
        before = w.received
        imap_login(w)
        w.until(b"b SELECT INBOX\r\n", b"b ")
        w.until(b"c LOGOUT\r\n", b"c ")
        sent_after = b"b SELECT INBOX\r\nc LOGOUT\r\n"
    else:
        w.until(f"USER {ALICE}\r\n".encode(), b"+OK")
        before = w.received
        assert w.until(f"PASS {PASSWORD}\r\n".encode(), b"+OK").startswith(b"+OK Logged in")
        w.until(b"STAT\r\n", b"+OK")
        w.until(b"QUIT\r\n", b"+OK")
        sent_after = b"STAT\r\nQUIT\r\n"
    w.rest()
    w.close()
    received_after_login = w.received - before
    # bob is listed, but his folder is a symbolic link: no trace, the session goes on
    w = Wire(port)
    if imap:
        assert b"a OK" in w.until(f"a LOGIN bob@example.test {PASSWORD}\r\n".encode(), b"a ")
        w.until(b"c LOGOUT\r\n", b"c ")
    else:
        w.until(b"USER bob@example.test\r\n", b"+OK")
        assert w.until(f"PASS {PASSWORD}\r\n".encode(), b"+OK").startswith(b"+OK Logged in")
        w.until(b"QUIT\r\n", b"+OK")
    w.close()
    err.wait_for("Disconnected: ", 2)
    folder = system.root / "rawlog" / ALICE
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    proto = "imap" if imap else "pop3"
    assert [f.suffix for f in files] == [".in", ".out"], files
    assert all(re.fullmatch(rf"{proto}-\d{{8}}-\d{{6}}-\d+-\d+\.(in|out)", f.name) for f in files), files
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    incoming, outgoing = (f.read_bytes() for f in files)
    assert incoming == sent_after  # from the login on: no password, no command before it
    assert PASSWORD.encode() not in incoming + outgoing
    # from the reply to the login on, all of it
    assert outgoing.startswith(b"a OK" if imap else b"+OK Logged in") and len(outgoing) == received_after_login
    assert list(elsewhere.iterdir()) == []
    assert "rawlog: " in err.text() and "Traceback" not in err.text()
