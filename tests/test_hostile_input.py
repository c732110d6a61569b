"""Hostile input against the running daemons (issue 7, "Hostile input").

Every test talks to real pymta.smtpd / pypop.pop3d / pyimap.imapd processes
started by ``MailSystem.start_daemon`` over real sockets on 127.0.0.1 and
asserts exact replies, that the daemon survives (no traceback in its stderr)
and that a normal client is served afterwards.

Sizes: the "1 GB line" tests send the full 1 GB per line (under a second on
loopback); ``PYMAIL_HOSTILE_LINE_MB=N`` sends N megabytes instead.  The
server answers after a few KB and its peak RSS is checked.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import selectors
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import PASSWORD

LINE_MB = int(os.environ.get("PYMAIL_HOSTILE_LINE_MB", "1024"))
RSS_LIMIT_KB = 100 * 1024
TIMEOUT = 2.0  # the short protocol timeouts the slow-loris tests configure

BASE_CONFIG = f"""
[smtpd]
processes = 1
command_timeout = {TIMEOUT}
data_timeout = {TIMEOUT}
tls_handshake_timeout = {TIMEOUT}
[pop3d]
processes = 1
timeout = {TIMEOUT}
enable_apop = true
[imapd]
processes = 1
login_timeout = {TIMEOUT}
autologout = {TIMEOUT}
"""

GREETING = {"pymta.smtpd": b"220 ", "pypop.pop3d": b"+OK ", "pyimap.imapd": b"* OK "}
SERVICES = ("pymta.smtpd", "pypop.pop3d", "pyimap.imapd")


# -- helpers ---------------------------------------------------------------------------


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (or EOF) within ``timeout`` seconds; poll(),
    not select(): run after other tests, descriptor numbers pass 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class Wire:
    """A raw client socket; every read has a timeout."""

    def __init__(self, port: int, timeout: float = 10.0, greeting: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        if greeting:
            self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer; have {self.buf[:200]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        self.buf += data
        return bool(data)

    def line(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                raise EOFError(f"closed; have {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def until(self, marker: bytes, timeout: float | None = None) -> bytes:
        """Lines up to and including the one starting with ``marker``."""
        out = b""
        while True:
            line = self.line(timeout)
            out += line
            if line.startswith(marker):
                return out

    def cmd(self, data: bytes, marker: bytes | None = None) -> bytes:
        self.send(data)
        return self.until(marker) if marker else self.line()

    def rest(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out

    def ready(self) -> bool:
        return readable(self.sock, 0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stderr:
    """Collects a daemon's stderr without ever letting its pipe fill."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.data = b""
        os.set_blocking(proc.stderr.fileno(), False)

    def read(self) -> str:
        while True:
            try:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.data += chunk
        return self.data.decode("utf-8", "replace")

    def assert_clean(self) -> str:
        text = self.read()
        assert "Traceback" not in text, text
        assert "session error" not in text, text
        return text

    def ours(self) -> list[str]:
        """Our daemons' log lines (not systemd-socket-activate's)."""
        return [x for x in self.read().splitlines() if re.match(r"(pymta-smtpd|pypop-pop3d|pyimap-imapd)\[\d+\]: ", x)]


def start(system, module: str, mode: str = "listen", *args: str) -> tuple[int, subprocess.Popen, Stderr]:
    port = system.start_daemon(module, mode, *args)
    proc = system.procs[-1]
    return port, proc, Stderr(proc)


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def smtp_ok(port: int) -> None:
    """A normal client is served: a whole message is accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.ehlo()[0] == 250
        assert client.mail("carol@elsewhere.test") == (250, b"2.1.0 Ok")
        assert client.rcpt("alice@example.test") == (250, b"2.1.5 Ok")
        code, msg = client.data(b"Subject: after\r\n\r\nstill here\r\n")
        assert code == 250 and msg.startswith(b"2.0.0 Ok: queued as "), msg


def pop3_ok(port: int) -> None:
    with Wire(port) as w:
        assert w.greeting.startswith(b"+OK ")
        assert w.cmd(b"USER alice@example.test\r\n").startswith(b"+OK")
        assert w.cmd(b"PASS " + PASSWORD.encode() + b"\r\n").startswith(b"+OK")
        assert w.cmd(b"QUIT\r\n").startswith(b"+OK")


def imap_ok(port: int) -> None:
    with Wire(port) as w:
        assert w.greeting.startswith(b"* OK ")
        r = w.cmd(b"a LOGIN alice@example.test " + PASSWORD.encode() + b"\r\n", b"a ")
        assert r.splitlines()[-1].startswith(b"a OK"), r
        r = w.cmd(b"b SELECT INBOX\r\n", b"b ")
        assert r.splitlines()[-1].startswith(b"b OK [READ-WRITE]"), r
        assert w.cmd(b"c LOGOUT\r\n", b"c ").splitlines()[-1] == b"c OK LOGOUT completed"


SERVED = {"pymta.smtpd": smtp_ok, "pypop.pop3d": pop3_ok, "pyimap.imapd": imap_ok}


def imap_login(port: int, user: str = "alice") -> Wire:
    w = Wire(port)
    r = w.cmd(f"a LOGIN {user}@example.test {PASSWORD}\r\n".encode(), b"a ")
    assert r.splitlines()[-1].startswith(b"a OK"), r
    return w


@pytest.fixture
def hostile(make_mailsys):
    return make_mailsys(BASE_CONFIG)


# -- 1 GB lines ------------------------------------------------------------------------


def stream_line(w: Wire, megabytes: int, stop_on_reply: bool = False) -> float:
    """Send MEGABYTES of 'x' with no line end, in 1 MB chunks; seconds taken."""
    chunk = b"x" * (1 << 20)
    started = time.monotonic()
    for _ in range(megabytes):
        try:
            w.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        if stop_on_reply and w.ready():
            break
    return time.monotonic() - started


def serving_pid(proc: subprocess.Popen, mode: str) -> int:
    """The process serving the (one) open connection: in inetd mode the child
    systemd-socket-activate spawned for it."""
    if mode == "listen":
        return proc.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children:
            return int(children[-1])
        time.sleep(0.02)
    raise AssertionError("no inetd child")


@pytest.mark.parametrize("mode", ["listen", "inetd"])
@pytest.mark.parametrize("where", ["smtp-command", "smtp-data", "pop3", "imap"])
def test_gigabyte_line_is_refused_without_buffering(hostile, where, mode):
    module = {"smtp-command": "pymta.smtpd", "smtp-data": "pymta.smtpd", "pop3": "pypop.pop3d", "imap": "pyimap.imapd"}[
        where
    ]
    port, proc, err = start(hostile, module, mode)
    with Wire(port, timeout=30) as w:
        pid = serving_pid(proc, mode)
        if where == "smtp-data":
            assert w.cmd(b"EHLO client.test\r\n", b"250 ").startswith(b"250-mx.example.test")
            assert w.cmd(b"MAIL FROM:<carol@elsewhere.test>\r\n") == b"250 2.1.0 Ok\r\n"
            assert w.cmd(b"RCPT TO:<alice@example.test>\r\n") == b"250 2.1.5 Ok\r\n"
            assert w.cmd(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
            w.send(b"Subject: long\r\n\r\n")
        elif where == "imap":
            w.send(b"t1 NOOP ")
        seconds = stream_line(w, LINE_MB)
        if where == "smtp-data":
            w.send(b"\r\n.\r\n")
            assert w.line() == b"500 5.5.2 Line too long\r\n"
            assert w.cmd(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
        elif where == "smtp-command":
            assert w.line() == b"500 5.5.2 Line too long\r\n"  # answered once, at once
            w.send(b"\r\n")
            assert w.cmd(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
        elif where == "pop3":
            assert w.line() == b"-ERR Line too long\r\n"
            w.send(b"\r\n")
            assert w.cmd(b"USER alice@example.test\r\n") == b"+OK\r\n"
        else:
            assert w.line() == b"t1 BAD Line too long\r\n"
            w.send(b"\r\n")
            assert w.cmd(b"t2 NOOP\r\n") == b"t2 OK NOOP completed\r\n"
        hwm = vm_hwm_kb(pid)
    print(f"{mode} {where}: {LINE_MB} MB in {seconds:.2f} s, daemon VmHWM {hwm} kB")
    assert hwm < RSS_LIMIT_KB
    SERVED[module](port)
    err.assert_clean()
    if where == "smtp-data":
        assert not [p for p in hostile.queue_files() if p.parent.name == "new" and b"Subject: long" in p.read_bytes()]


# -- slow-loris -------------------------------------------------------------------------


TIMEOUT_REPLY = {
    "pymta.smtpd": b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n",
    "pypop.pop3d": b"-ERR Disconnected for inactivity\r\n",
    "pyimap.imapd": b"* BYE Autologout; idle for too long\r\n",
}


def slow_loris(port: int, results: dict, key) -> None:
    """One byte a second, no line end, until the server hangs up (or 5 timeouts)."""
    with Wire(port, timeout=30) as w:
        started = time.monotonic()
        got = b""
        while time.monotonic() - started < 5 * TIMEOUT + 5:
            try:
                w.send(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            if readable(w.sock, 1.0):
                try:
                    data = w.sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                got += data
                if not data:
                    break
        results[key] = (time.monotonic() - started, got)


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_slow_loris_is_cut_at_the_timeout(hostile, mode):
    ports = {m: start(hostile, m, mode) for m in SERVICES}
    results: dict = {}
    threads = [threading.Thread(target=slow_loris, args=(ports[m][0], results, m)) for m in SERVICES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for m in SERVICES:
        seconds, got = results[m]
        print(f"{mode} {m}: cut after {seconds:.1f} s")
        assert got == TIMEOUT_REPLY[m], (m, got)
        assert TIMEOUT - 0.5 <= seconds <= TIMEOUT + 4, (m, seconds)
        SERVED[m](ports[m][0])
        ports[m][2].assert_clean()


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_progress_keeps_a_session_alive(make_mailsys, mode):
    """The other side of the slow-loris fix: lines, and big blocks without a
    line end (a long DATA transfer), rearm the timeout every time."""
    timeout = 1.0
    port, _, err = start(make_mailsys(BASE_CONFIG.replace(f"= {TIMEOUT}", f"= {timeout}")), "pymta.smtpd", mode)
    with Wire(port, timeout=10) as w:
        assert w.cmd(b"EHLO client.test\r\n", b"250 ").startswith(b"250-mx.example.test")
        for _ in range(3):  # outlives the timeout, one line at a time
            time.sleep(timeout * 0.6)
            assert w.cmd(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
        assert w.cmd(b"MAIL FROM:<carol@elsewhere.test>\r\n") == b"250 2.1.0 Ok\r\n"
        assert w.cmd(b"RCPT TO:<alice@example.test>\r\n") == b"250 2.1.5 Ok\r\n"
        assert w.cmd(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
        w.send(b"Subject: slow but steady\r\n\r\n")
        for _ in range(3):
            time.sleep(timeout * 0.6)
            w.send(b"y" * 5000)  # no line end, but more than PROGRESS_BYTES
            w.send(b"\r\n")
        assert w.cmd(b".\r\n").startswith(b"250 2.0.0 Ok: queued as ")
    err.assert_clean()


# -- 4 GB literals, nesting ----------------------------------------------------------------


def test_huge_literal_announcements(hostile):
    port, proc, err = start(hostile, "pyimap.imapd")
    with Wire(port) as w:
        # before login: LOGIN literals
        assert w.cmd(b"a LOGIN {4294967296}\r\n") == b"a NO [TOOBIG] Literal too big\r\n"  # no "+ " first
        assert w.cmd(b"b LOGIN {99999999999999999999}\r\n") == b"b NO [TOOBIG] Literal too big\r\n"
        assert w.cmd(b"c LOGIN {999999999999999999999}\r\n") == b"c BAD Misplaced literal\r\n"  # 21 digits: no literal
        assert w.cmd(b"d NOOP\r\n") == b"d OK NOOP completed\r\n"
    with imap_login(port) as w:
        assert w.cmd(b"e APPEND INBOX {4294967296}\r\n") == b"e NO [TOOBIG] Literal too big\r\n"
        assert w.cmd(b"f APPEND INBOX (\\Seen) {99999999999999999999}\r\n") == b"f NO [TOOBIG] Literal too big\r\n"
        assert w.cmd(b"g SEARCH TEXT {4294967296}\r\n") == b"g NO [TOOBIG] Literal too big\r\n"
        assert w.cmd(b"h NOOP\r\n") == b"h OK NOOP completed\r\n"
    # a non-synchronizing literal cannot be refused before it is sent: the
    # session ends at once instead of reading (or storing) 4 GB
    for command in (
        b"i APPEND INBOX {4294967296+}\r\n",
        b"i LOGIN {99999999999999999999+}\r\n",
        b"i SEARCH TEXT {4294967296+}\r\n",
    ):
        with imap_login(port) if b"LOGIN" not in command else Wire(port) as w:
            started = time.monotonic()
            w.send(command + b"x" * 65536)
            assert w.rest() == b"i BAD [TOOBIG] Literal too big\r\n* BYE Literal too big to skip; closing\r\n"
            assert time.monotonic() - started < 5
    assert vm_hwm_kb(proc.pid) < RSS_LIMIT_KB
    assert not hostile.messages("alice", "new") and not hostile.messages("alice", "cur")
    assert not list((hostile.maildir() / "tmp").iterdir())
    imap_ok(port)
    err.assert_clean()


DEEP = b"Too deeply nested"
NESTED = [
    (b"SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000, DEEP),
    (b"SEARCH " + b"(" * 30000, DEEP),
    (b"SEARCH " + b"NOT " * 5000 + b"ALL", b"Search too complex"),  # recursion without parentheses
    (b"SEARCH " + b"OR ALL " * 5000 + b"ALL", b"Search too complex"),
    (b"SEARCH " + b"OR (" * 5000 + b"ALL" + b") ALL" * 5000, DEEP),
    (b"FETCH 1 " + b"(" * 5000 + b"FLAGS" + b")" * 5000, DEEP),
    (b"FETCH 1 (BODY[HEADER.FIELDS " + b"(" * 5000 + b"Subject" + b")" * 5000 + b"])", DEEP),
    (b"STORE 1 +FLAGS " + b"(" * 5000 + b"\\Seen" + b")" * 5000, DEEP),
    (b"APPEND INBOX " + b"(" * 5000 + b"\\Seen" + b")" * 5000 + b" {3+}\r\nabc", DEEP),
    (b"SEARCH " + b")" * 30000, b"Unbalanced parenthesis"),
]


def test_thousands_of_nested_parentheses(hostile):
    port, _, err = start(hostile, "pyimap.imapd")
    with imap_login(port) as w:
        assert w.cmd(b"p APPEND INBOX {12+}\r\nSubject: x\r\n\r\n", b"p ").startswith(b"p OK [APPENDUID ")
        assert w.cmd(b"s SELECT INBOX\r\n", b"s ").splitlines()[-1].startswith(b"s OK [READ-WRITE]")
        for i, (command, why) in enumerate(NESTED):
            tag = b"n%d" % i
            assert w.cmd(tag + b" " + command + b"\r\n", tag + b" ") == tag + b" BAD " + why + b"\r\n"
        assert w.cmd(b"z FETCH 1 (FLAGS)\r\n", b"z ").endswith(b"z OK FETCH completed\r\n")
    text = err.assert_clean()
    assert "RecursionError" not in text


def nested_mime(depth: int) -> bytes:
    lines = [b"From: carol@elsewhere.test", b"To: alice@example.test", b"Subject: deep", b"MIME-Version: 1.0"]
    for i in range(depth):
        lines += [b'Content-Type: multipart/mixed; boundary="b%d"' % i, b"", b"--b%d" % i]
    lines += [b"Content-Type: text/plain", b"", b"the bottom"]
    for i in reversed(range(depth)):
        lines += [b"--b%d--" % i]
    return b"\r\n".join(lines) + b"\r\n"


def test_thousand_deep_mime_is_delivered_and_fetched(hostile):
    smtp = hostile.start_smtpd()
    hostile.start_qrunner()
    port, _, err = start(hostile, "pyimap.imapd")
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
        client.sendmail("carol@elsewhere.test", ["alice@example.test"], nested_mime(1000))
    hostile.wait_messages(1)
    with imap_login(port) as w:
        assert w.cmd(b"s SELECT INBOX\r\n", b"s ").splitlines()[-1].startswith(b"s OK [READ-WRITE]")
        reply = w.cmd(b"f FETCH 1 (BODYSTRUCTURE)\r\n", b"f ")
        assert reply.startswith(b"* 1 FETCH (BODYSTRUCTURE (") and reply.endswith(b"f OK FETCH completed\r\n"), reply[
            -300:
        ]
        print(f"BODYSTRUCTURE of a 1000 deep message: {len(reply)} bytes, depth {reply.count(b'(')}")
        reply = w.cmd(b"g FETCH 1 (BODY[" + b".".join([b"1"] * 1000) + b"])\r\n", b"g ")
        assert reply.startswith(b"* 1 FETCH (BODY[1.1.1.") and reply.endswith(b"g OK FETCH completed\r\n"), reply[-200:]
        # the text sits below the nesting cap, in a part read as application/octet-stream,
        # which SEARCH BODY does not look in: Dovecot 2.3 does not find it either (checked
        # side by side); the search is answered, and the message's own header is found
        reply = w.cmd(b"h SEARCH BODY bottom\r\n", b"h ")
        assert reply == b"* SEARCH\r\nh OK SEARCH completed\r\n"
        reply = w.cmd(b"h2 SEARCH TEXT deep\r\n", b"h2 ")
        assert reply == b"* SEARCH 1\r\nh2 OK SEARCH completed\r\n"
        assert w.cmd(b"i NOOP\r\n", b"i ").endswith(b"i OK NOOP completed\r\n")
    text = err.assert_clean()
    assert "RecursionError" not in text


# -- 1,000 idle connections -----------------------------------------------------------------


BUSY_REPLY = {
    "pymta.smtpd": b"421 4.3.2 Too many connections, try again later\r\n",
    "pypop.pop3d": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    "pyimap.imapd": b"* BYE Too many connections, try again later\r\n",
}


def open_idle(port: int, count: int) -> list[socket.socket]:
    """COUNT connections, opened in parallel (non-blocking connects)."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        assert sock.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
        socks.append(sock)
    pending = set(socks)
    deadline = time.monotonic() + 30
    with selectors.DefaultSelector() as sel:  # epoll: the numbers may pass select()'s FD_SETSIZE
        for sock in socks:
            sel.register(sock, selectors.EVENT_WRITE)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                pending.discard(key.fileobj)
                sel.unregister(key.fileobj)
    assert not pending, f"{len(pending)} connections not established"
    for sock in socks:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        sock.setblocking(True)
    return socks


def first_lines(socks: list[socket.socket], timeout: float = 10.0) -> list[bytes]:
    """The first line (or what came before EOF) of each socket, all read
    together with one deadline (epoll: fds may be above FD_SETSIZE)."""
    data = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        left = len(socks)
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                sock = key.fileobj
                try:
                    chunk = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                data[sock] += chunk
                if not chunk or b"\n" in data[sock]:
                    sel.unregister(sock)
                    left -= 1
    for sock in socks:
        sock.setblocking(True)
    return [data[sock] for sock in socks]


def test_thousand_idle_connections(make_mailsys):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard) if hard != resource.RLIM_INFINITY else 4096, hard))
    # imapd's default max_sessions is 1,000: the same 100 for all three here
    system = make_mailsys(
        "[smtpd]\nprocesses = 1\n[pop3d]\nprocesses = 1\n[imapd]\nprocesses = 1\nmax_sessions = 100\n"
    )
    for module in SERVICES:
        port, proc, err = start(system, module)
        t0 = time.monotonic()
        socks = open_idle(port, 1000)
        t1 = time.monotonic()
        try:
            lines = first_lines(socks)
            print(f"open {t1 - t0:.2f} s, read {time.monotonic() - t1:.2f} s")
            greeted = [x for x in lines if x.startswith(GREETING[module])]
            busy = [x for x in lines if x == BUSY_REPLY[module]]
            # max_sessions = 100 (start_daemon's port probe may still hold a slot for a moment)
            assert 98 <= len(greeted) <= 100 and len(greeted) + len(busy) == 1000, (
                module,
                len(greeted),
                len(busy),
                set(lines) - set(greeted) - set(busy),
            )
            assert proc.poll() is None
            deadline = time.monotonic() + 10
            while (fds := len(os.listdir(f"/proc/{proc.pid}/fd"))) >= 120 and time.monotonic() < deadline:
                time.sleep(0.1)  # the refused ones are closed once their reply is out
            print(f"{module}: {len(greeted)} served, {len(busy)} refused, daemon holds {fds} fds")
            assert fds < 120
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.3)
        SERVED[module](port)
        err.assert_clean()


def test_daemon_out_of_file_descriptors_keeps_serving(make_mailsys):
    """A daemon whose fd limit is below what max_sessions needs: accept() fails
    with EMFILE.  asyncio then logged a traceback for each failed accept (100
    per wake-up), which filled the stderr pipe and froze the daemon; now it
    logs one line a second, and serves again once descriptors are free."""
    system = make_mailsys("[smtpd]\nprocesses = 1\n")
    port, proc, err = start(system, "pymta.smtpd")
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (40, 40))
    started = time.monotonic()
    socks = open_idle(port, 120)
    try:
        time.sleep(0.5)
        greeted = [x for x in first_lines(socks, timeout=1) if x]
        assert 10 < len(greeted) < 40 and all(x == b"220 mx.example.test ESMTP pymail\r\n" for x in greeted)
        time.sleep(3)  # without the fix the daemon blocks on its full stderr pipe here
        assert proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
    time.sleep(1.5)  # asyncio retries accept() after a second
    smtp_ok(port)
    elapsed = time.monotonic() - started
    text = err.read()
    assert "Traceback" not in text, text[-2000:]
    lines = [x for x in text.splitlines() if "socket.accept() out of system resource" in x]
    assert 1 <= len(lines) <= elapsed + 2, (len(lines), elapsed)
    assert all(
        x.endswith("error: socket.accept() out of system resource: OSError(24, 'Too many open files')") for x in lines
    ), lines[:3]


# -- malformed TLS ---------------------------------------------------------------------------


def client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.example.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


SSLV2_HELLO = bytes.fromhex("802e0100020015000000100700c00500800300800100800600400400800200") + b"\x01" * 16


def tls_client_ok(port: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx) as client:
        assert client.ehlo()[0] == 250
        assert client.noop() == (250, b"2.0.0 Ok")


def hangs_up(w: Wire, limit: float) -> tuple[bytes, float]:
    """What the server sends before closing, and when it closed."""
    started = time.monotonic()
    got = w.rest(timeout=limit)
    return got, time.monotonic() - started


def is_alert_or_nothing(data: bytes) -> bool:
    return data == b"" or data.startswith(b"\x15\x03")  # a TLS alert record


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_malformed_tls_on_the_implicit_tls_port(hostile, mode):
    port, proc, err = start(hostile, "pymta.smtpd", mode, "--tls")
    hello = client_hello()
    cases = {
        "garbage": b"\xff\x00garbage\x16\x03" * 50,
        "sslv2": SSLV2_HELLO,
        "plain smtp": b"EHLO client.test\r\n",
        "http": b"GET / HTTP/1.0\r\n\r\n",
        "record too long": b"\x16\x03\x01\xff\xff" + b"\x00" * 100,
    }
    for name, data in cases.items():
        with Wire(port, greeting=False) as w:
            w.send(data)
            got, seconds = hangs_up(w, TIMEOUT + 8)
            assert is_alert_or_nothing(got), (name, got)
            assert seconds < TIMEOUT + 4, (name, seconds)
    # cut at smtpd.tls_handshake_timeout: a truncated hello, an abandoned one,
    # and one byte a second (each byte must not restart the clock)
    with Wire(port, greeting=False) as w:
        w.send(hello[:40])
        got, seconds = hangs_up(w, TIMEOUT + 8)
        assert is_alert_or_nothing(got) and TIMEOUT - 0.5 <= seconds <= TIMEOUT + 4, (got, seconds)
    with Wire(port, greeting=False) as w:
        w.send(hello)
        assert w.sock.recv(5)[:1] == b"\x16"  # the ServerHello... then the client walks away
    results: dict = {}
    slow = threading.Thread(target=slow_bytes, args=(port, hello, results))
    slow.start()
    slow.join(30)
    got, seconds = results["slow"]
    assert is_alert_or_nothing(got) and TIMEOUT - 0.5 <= seconds <= TIMEOUT + 4, (got, seconds)
    assert proc.poll() is None
    tls_client_ok(port)
    err.assert_clean()
    failed = [x for x in err.ours() if "TLS handshake failed" in x]
    # one line per failed handshake in both modes (listen: the driver makes the handshake itself)
    assert len(failed) == len(cases) + 4, err.ours()  # + truncated, abandoned, slow, start_daemon's probe
    assert all(
        re.fullmatch(r"pymta-smtpd\[\d+\]: TLS handshake failed: client=\[127\.0\.0\.1\]: \w+: .+", x) for x in failed
    ), failed
    assert len(err.ours()) <= len(cases) + 4 + (mode == "listen"), err.ours()  # + "listening on"


def send_slowly(w: Wire, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` a byte a second-or-so until the server hangs up: what it
    sent meanwhile, and how long that took.  A reset (the server closed with
    our last byte unread) is a hang-up like a FIN."""
    started = time.monotonic()
    got = b""
    for byte in data:
        try:
            w.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if readable(w.sock, 1.0):
            try:
                chunk = w.sock.recv(4096)
            except ConnectionResetError:
                break
            got += chunk
            if not chunk:
                break
    return got, time.monotonic() - started


def slow_bytes(port: int, data: bytes, results: dict) -> None:
    with Wire(port, greeting=False) as w:
        results["slow"] = send_slowly(w, data)


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_malformed_tls_after_starttls(hostile, mode):
    port, proc, err = start(hostile, "pymta.smtpd", mode)
    hello = client_hello()
    with Wire(port) as w:  # garbage instead of a hello
        assert w.cmd(b"EHLO client.test\r\n", b"250 ").endswith(b"250 AUTH PLAIN LOGIN\r\n")
        assert w.cmd(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        w.send(b"\xff\x00garbage\r\n" * 20)
        got, seconds = hangs_up(w, TIMEOUT + 8)
        assert is_alert_or_nothing(got) and seconds < TIMEOUT + 4, (got, seconds)
    with Wire(port) as w:  # a hello a byte at a time
        assert w.cmd(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        got, seconds = send_slowly(w, hello)
        assert is_alert_or_nothing(got) and TIMEOUT - 0.5 <= seconds <= TIMEOUT + 4, (got, seconds)
    with Wire(port) as w:  # STARTTLS refused, the client sends its hello anyway
        assert w.cmd(b"STARTTLS now\r\n") == b"501 5.5.4 Syntax: STARTTLS\r\n"
        w.send(hello.replace(b"\n", b"\x01") + b"\r\n")
        assert w.line() == b"500 5.5.2 Error: invalid characters in command\r\n"
        assert w.cmd(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    with Wire(port) as w:  # a handshake abandoned half way
        assert w.cmd(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
        w.send(hello)
        assert w.sock.recv(5)[:1] == b"\x16"
    assert proc.poll() is None
    smtp_ok(port)
    err.assert_clean()
    failed = [x for x in err.ours() if "TLS handshake failed" in x]
    assert len(failed) == 3, err.ours()  # garbage, slow, abandoned: one line each


@pytest.mark.parametrize("module", ["pypop.pop3d", "pyimap.imapd"])
def test_malformed_tls_pop3_imap(hostile, module):
    port, proc, err = start(hostile, module, "listen", "--tls")
    for data in (b"\xff\x00garbage" * 50, SSLV2_HELLO, b"a LOGIN x y\r\n", b"USER x\r\n"):
        with Wire(port, greeting=False) as w:
            w.send(data)
            got, seconds = hangs_up(w, TIMEOUT + 8)
            assert is_alert_or_nothing(got) and seconds < TIMEOUT + 4, (got, seconds)
    assert proc.poll() is None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="mx.example.test") as tls:
            assert tls.recv(100).startswith(GREETING[module])
    err.assert_clean()


# -- invalid UTF-8, NUL, bare CR --------------------------------------------------------------

BAD_CHARS = b"500 5.5.2 Error: invalid characters in command\r\n"
SMTP_SESSIONS = [
    [
        (b"EHLO \xff\xfe", BAD_CHARS),
        (b"EHLO a\x00b", BAD_CHARS),
        (b"EHLO a\rb", BAD_CHARS),
        (b"HELO \xc3\x28", BAD_CHARS),
        (b"\xff\xfe", BAD_CHARS),
        (b"EHLO ok.test", None),
        (b"MAIL FROM:<\xff@x.test>", BAD_CHARS),
        (b"MAIL FROM:<a\x00b@x.test>", BAD_CHARS),
        (b"MAIL FROM:<a\rb@x.test>", BAD_CHARS),
        (b"MAIL FROM:<a@x.test>", b"250 2.1.0 Ok\r\n"),
    ],
    [
        (b"EHLO ok.test", None),
        (b"MAIL FROM:<a@x.test>", b"250 2.1.0 Ok\r\n"),
        (b"RCPT TO:<\xff@example.test>", BAD_CHARS),
        (b"RCPT TO:<al\x00ice@example.test>", BAD_CHARS),
        (b"RCPT TO:<alice\r@example.test>", BAD_CHARS),
        (b"RCPT TO:<alice@example.test>", b"250 2.1.5 Ok\r\n"),
        (b"VRFY \xff", BAD_CHARS),
        (b"VRFY a\x00b", BAD_CHARS),
        (b"VRFY a\rb", BAD_CHARS),
    ],
    [
        (b"EHLO ok.test", None),
        (b"AUTH PLAIN \xff\xfe", BAD_CHARS),
        (b"AUTH \xff", BAD_CHARS),
        (b"AUTH PLAIN", b"334 \r\n"),
        (b"\xff\x00", b"501 5.5.2 Invalid base64\r\n"),
        (b"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n"),
        (b"\xc3\x28\r", b"501 5.5.2 Invalid base64\r\n"),
        (
            b"AUTH PLAIN " + __import__("base64").b64encode(b"\0al\xffice@example.test\0\x00\r"),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        ),
    ],
]


def test_invalid_bytes_smtp(hostile):
    port, _, err = start(hostile, "pymta.smtpd")
    for session in SMTP_SESSIONS:
        with Wire(port) as w:
            for command, reply in session:
                if reply is None:
                    w.cmd(command + b"\r\n", b"250 ")
                else:
                    assert w.cmd(command + b"\r\n") == reply, command
            assert w.cmd(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    with Wire(port) as w:  # message text: 8-bit and NUL are data; a bare CR is refused (RFC 5321 2.3.8)
        w.cmd(b"EHLO ok.test\r\n", b"250 ")
        for text, reply in (
            (b"Subject: \xff\xfe bad\r\nX-Nul: a\x00b\r\n\r\nbody \xc3\x28\r\n", b"250 2.0.0 Ok: queued as "),
            (
                b"Subject: x\r\nX-CR: a\rb\r\n\r\nbody\r\n",
                b"550 5.6.0 Message contains bare CR or LF; refused (see RFC 5321 2.3.8)\r\n",
            ),
        ):
            assert w.cmd(b"MAIL FROM:<a@x.test>\r\n") == b"250 2.1.0 Ok\r\n"
            assert w.cmd(b"RCPT TO:<alice@example.test>\r\n") == b"250 2.1.5 Ok\r\n"
            assert w.cmd(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
            assert w.cmd(text + b".\r\n").startswith(reply)
    [entry] = [p for p in hostile.queue_files() if p.parent.name == "new"]
    assert b"Subject: \xff\xfe bad\nX-Nul: a\x00b\n" in entry.read_bytes()  # kept byte for byte
    err.assert_clean()


def test_invalid_bytes_pop3(hostile):
    port, _, err = start(hostile, "pypop.pop3d")
    with Wire(port) as w:
        for command, reply in (
            (b"USER \xff\xfe", b"-ERR Syntax: USER name\r\n"),
            (b"USER a\x00b", b"-ERR Invalid characters in command\r\n"),
            (b"USER a\rb", b"-ERR Invalid characters in command\r\n"),
            (b"\xff\xfe", b"-ERR Invalid characters in command\r\n"),
            (b"APOP \xff 0123456789abcdef0123456789abcdef", b"-ERR Syntax: APOP name digest\r\n"),
            (b"APOP a\x00b 0123456789abcdef0123456789abcdef", b"-ERR Invalid characters in command\r\n"),
            (b"USER alice@example.test", b"+OK\r\n"),
            (b"PASS \xff\x00", b"-ERR Invalid characters in command\r\n"),
            (b"USER alice@example.test", b"+OK\r\n"),
            (b"PASS a\rb", b"-ERR Invalid characters in command\r\n"),
            (b"USER alice@example.test", b"+OK\r\n"),
            (b"PASS \xff\xfe", b"-ERR [AUTH] Authentication failed\r\n"),
        ):
            assert w.cmd(command + b"\r\n", b"") == reply, command
    pop3_ok(port)
    err.assert_clean()


def test_invalid_bytes_imap(hostile):
    port, _, err = start(hostile, "pyimap.imapd")
    with Wire(port) as w:
        for command, reply in (
            (b"a LOGIN \xff \xfe", b"a BAD 8-bit characters in atom"),
            (b'b LOGIN "\xff" "\xfe"', b"b BAD String is not UTF-8"),
            (b'c LOGIN "a\x00b" "x"', b"c BAD Bad character in quoted string"),
            (b'd LOGIN "a\rb" "x"', b"d BAD Bad character in quoted string"),
            (b"\xff\xfe NOOP", b"* BAD 8-bit characters in atom"),  # the tag is not echoed
            (b"e\x00f NOOP", b"* BAD Control character in command"),
            (b"g NOOP", b"g OK NOOP completed"),
        ):
            assert w.cmd(command + b"\r\n") == reply + b"\r\n", command
        assert w.cmd(b"\xff\xfe LOGIN {3}\r\n") == b"+ Ready for literal data\r\n"
        assert w.cmd(b"abc x\r\n") == b"* BAD 8-bit characters in atom\r\n"
        assert w.cmd(b"h LOGIN {3}\r\n") == b"+ Ready for literal data\r\n"
        assert w.cmd(b"a\x00b {1}\r\n") == b"+ Ready for literal data\r\n"
        assert w.cmd(b"x\r\n", b"h ") == b"h NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    with imap_login(port) as w:
        for command, reply in (
            (b'b SELECT "\xff\xfe"', b"b BAD String is not UTF-8"),
            (b"c SELECT \xff", b"c BAD 8-bit characters in atom"),
            (b'd CREATE "\xc3\x28"', b"d BAD String is not UTF-8"),
            (
                b'e CREATE "caf\xc3\xa9"',
                b"e NO [CANNOT] Invalid mailbox name: 8-bit or control character in mailbox name",
            ),
            (b'f CREATE "a\rb"', b"f BAD Bad character in quoted string"),
            (b'g SEARCH SUBJECT "\xff\xfe"', b"g BAD Command SEARCH not valid in this state"),
        ):
            assert w.cmd(command + b"\r\n") == reply + b"\r\n", command
        assert w.cmd(b"e CREATE {3}\r\n") == b"+ Ready for literal data\r\n"
        assert (
            w.cmd(b"a\x00b\r\n")
            == b"e NO [CANNOT] Invalid mailbox name: 8-bit or control character in mailbox name\r\n"
        )
        assert w.cmd(b"s SELECT INBOX\r\n", b"s ").splitlines()[-1].startswith(b"s OK [READ-WRITE]")
        for command, reply in (
            (b'f SEARCH SUBJECT "\xff\xfe"', b"f BAD String not in the given charset"),
            (b'h SEARCH SUBJECT "a\x00b"', b"h BAD Bad character in quoted string"),
            (b"i APPEND INBOX (\\Seen \xff) {3+}\r\nabc", b"i BAD 8-bit characters in atom"),
            (b"j APPEND INBOX (\\Seen a\x00b) {3+}\r\nabc", b"j BAD Control character in command"),
            (b"k APPEND INBOX (\\Seen a\rb) {3+}\r\nabc", b"k BAD Unexpected character in command"),
            (b"l NOOP", b"l OK NOOP completed"),
        ):
            assert w.cmd(command + b"\r\n") == reply + b"\r\n", command
        assert w.cmd(b"g SEARCH CHARSET UTF-8 SUBJECT {2}\r\n") == b"+ Ready for literal data\r\n"
        assert w.cmd(b"\xff\xfe\r\n") == b"g BAD String not in the given charset\r\n"
    assert not hostile.messages("alice", "new") and not hostile.messages("alice", "cur")
    imap_ok(port)
    err.assert_clean()


# -- sendmail header injection -------------------------------------------------------------------


def queued(system) -> list[tuple[dict, bytes]]:
    out = []
    for path in sorted(p for p in system.queue_files() if p.parent.name == "new"):
        envelope, _, message = path.read_bytes().partition(b"\n")
        out.append((json.loads(envelope), message))
    return out


def header_names(message: bytes) -> list[bytes]:
    head = message.split(b"\n\n", 1)[0]
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\n") if line and not line[:1].isspace()]


@pytest.mark.parametrize(
    "args, code",
    [
        (["-f", "a@b.test\nBcc: x@y.test", "bob@example.test"], 65),
        (["-f", "a@b.test\rBcc: x@y.test", "bob@example.test"], 65),
        (["-f", "<a@b.test>\r\nBcc: x@y.test", "bob@example.test"], 65),
        (["bob@example.test\nBcc: evil@x.test"], 65),
        (["bob@example.test\r\nevil@x.test"], 65),
        (["--", "bob@example.test\revil@x.test"], 65),
        (["<bob@example.test>\n"], 65),
    ],
)
def test_sendmail_refuses_line_ends_in_addresses(hostile, args, code):
    result = hostile.run("pymta.sendmail", *args, input=b"Subject: t\n\nhi\n")
    assert result.returncode == code, result.stderr
    assert re.match(rb"sendmail: fatal: bad (sender|recipient) address ", result.stderr), result.stderr
    assert queued(hostile) == []


def test_sendmail_full_name_cannot_add_headers(hostile):
    result = hostile.run(
        "pymta.sendmail",
        "-f",
        "alice@example.test",
        "-F",
        "Name\r\nBcc: evil@x.test\nX-Evil: 1",
        "bob@example.test",
        input=b"Subject: t\n\nhi\n",
    )
    assert result.returncode == 0, result.stderr
    [(envelope, message)] = queued(hostile)
    assert envelope["sender"] == "alice@example.test"
    assert envelope["recipients"] == ["bob@example.test"]
    # sendmail's own Received: (as Postfix's), then the message's fields and the ones it completes
    assert header_names(message) == [b"received", b"subject", b"from", b"date", b"message-id"]
    assert b'From: "Name  Bcc: evil@x.test X-Evil: 1" <alice@example.test>\n' in message


def test_sendmail_commas_and_header_recipients(hostile):
    # a comma separates recipients on the command line (as in sendmail): exactly those two
    result = hostile.run("pymta.sendmail", "bob@example.test,carol@elsewhere.test", input=b"Subject: t\n\nhi\n")
    assert result.returncode == 0, result.stderr
    # -t: folded and repeated header fields are read as RFC 5322 says, Bcc: is removed
    message = (
        b"To: bob@example.test,\n  dave@elsewhere.test\nTo: erin@elsewhere.test\n"
        b'Cc: "x\\"\n Bcc: y@z.test" <frank@elsewhere.test>\nBcc: grace@elsewhere.test\n'
        b"Subject: t\n\nTo: not-a-header@elsewhere.test\n"
    )
    result = hostile.run("pymta.sendmail", "-t", input=message)
    assert result.returncode == 0, result.stderr
    (env1, _), (env2, msg2) = queued(hostile)
    assert env1["recipients"] == ["bob@example.test", "carol@elsewhere.test"]
    assert sorted(env2["recipients"]) == sorted(
        [
            "bob@example.test",
            "dave@elsewhere.test",
            "erin@elsewhere.test",
            "frank@elsewhere.test",
            "grace@elsewhere.test",
        ]
    )
    assert b"bcc" not in header_names(msg2)
    assert b"\nTo: not-a-header@elsewhere.test\n" in msg2  # the body is not a header


# -- path traversal ------------------------------------------------------------------------------

TRAVERSAL_NAMES = [
    b'"../bob"',
    b'"../../x"',
    b'"/etc"',
    b'"~bob"',
    b'"INBOX/../../bob"',
    b'"a/./b"',
    b'"."',
    b'".."',
    b'"a/.."',
    b'"a//b"',
    b'"&AC4-&AC4-/bob"',
    b'"INBOX/.."',
    b'"../bob/INBOX"',
]
TRAVERSAL_COMMANDS = [
    b"CREATE %s",
    b"SELECT %s",
    b"EXAMINE %s",
    b"RENAME INBOX %s",
    b"RENAME %s y",
    b"SUBSCRIBE %s",
    b"STATUS %s (MESSAGES)",
    b"APPEND %s {3+}\r\nabc",
    b"DELETE %s",
    b"COPY 1 %s",
    b"MOVE 1 %s",
    b"UID COPY 1 %s",
]


def tree(root: Path) -> dict[str, bytes]:
    """Every file and folder under ROOT (file contents included)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else b"<dir>"
    return out


def changed_outside(before: dict, after: dict, allowed: str) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not k.startswith(allowed))


@pytest.fixture
def traversal(make_mailsys):
    system = make_mailsys(BASE_CONFIG + "[auth]\nfailure_delay = 0.0\n")
    system.add_user("carol@example.test", PASSWORD)
    return system


def test_mailbox_names_cannot_leave_the_maildir(traversal):
    port, _, err = start(traversal, "pyimap.imapd")
    imap_ok(port)  # creates alice's Maildir
    with imap_login(port, "bob") as w:  # bob has mail and a folder to aim at
        assert w.cmd(b"c CREATE Target\r\n") == b"c OK CREATE completed\r\n"
        assert w.cmd(b"p APPEND INBOX {12+}\r\nSubject: b\r\n\r\n", b"p ").startswith(b"p OK [APPENDUID ")
    with imap_login(port) as w:
        assert w.cmd(b"p APPEND INBOX {12+}\r\nSubject: a\r\n\r\n", b"p ").startswith(b"p OK [APPENDUID ")
        assert w.cmd(b"s SELECT INBOX\r\n", b"s ").splitlines()[-1].startswith(b"s OK [READ-WRITE]")
        before = tree(traversal.root / "mail")
        n = 0
        for name in TRAVERSAL_NAMES:
            for command in TRAVERSAL_COMMANDS:
                tag = b"t%d" % n
                n += 1
                reply = w.cmd(tag + b" " + command.replace(b"%s", name) + b"\r\n", tag + b" ")
                assert reply.startswith(tag + b" NO [CANNOT] Invalid mailbox name: "), (command, name, reply)
            for pattern in (b'LIST "" %s', b"LIST %s *", b"LSUB %s *"):
                reply = w.cmd(b"l " + pattern.replace(b"%s", name) + b"\r\n", b"l ")
                assert reply == b"l OK LIST completed\r\n" or reply == b"l OK LSUB completed\r\n", (
                    pattern,
                    name,
                    reply,
                )
        for literal in (b"a\x00b", b"../\x00", b"\x00"):  # NUL arrives only in a literal
            head = b"x CREATE {%d}\r\n" % len(literal)
            assert w.cmd(head) == b"+ Ready for literal data\r\n"
            assert w.cmd(literal + b"\r\n") == (
                b"x NO [CANNOT] Invalid mailbox name: 8-bit or control character in mailbox name\r\n"
            )
        for pattern in (b"*", b"%", b"../*", b"/*", b"~*"):  # what LIST shows is alice's alone
            reply = w.cmd(b'l LIST "" "' + pattern + b'"\r\n', b"l ")
            assert b"Target" not in reply and b"bob" not in reply, reply
        assert w.cmd(b"z NOOP\r\n", b"z ").endswith(b"z OK NOOP completed\r\n")
    after = tree(traversal.root / "mail")
    assert changed_outside(before, after, "example.test/alice/") == []
    assert [k for k in after if k.startswith("example.test/bob/")] == [
        k for k in before if k.startswith("example.test/bob/")
    ]
    err.assert_clean()


def test_user_names_with_dot_dot(traversal):
    smtp, _, smtp_err = start(traversal, "pymta.smtpd")
    pop, _, pop_err = start(traversal, "pypop.pop3d")
    imap, _, imap_err = start(traversal, "pyimap.imapd")
    before = tree(traversal.root)
    names = [
        b"../bob@example.test",
        b"alice/../bob@example.test",
        b"alice@example.test/../bob",
        b"alice@../example.test",
        b"../../../etc/passwd",
        b"bob@example.test/..",
        b"./bob@example.test",
    ]
    for name in names:
        with Wire(pop) as w:
            assert w.cmd(b"USER " + name + b"\r\n") == b"+OK\r\n"
            assert w.cmd(b"PASS " + PASSWORD.encode() + b"\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
        with Wire(imap) as w:
            assert (
                w.cmd(b'a LOGIN "' + name + b'" ' + PASSWORD.encode() + b"\r\n")
                == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
            )
        with Wire(smtp) as w:
            w.cmd(b"EHLO client.test\r\n", b"250 ")
            token = __import__("base64").b64encode(b"\0" + name + b"\0" + PASSWORD.encode())
            assert w.cmd(b"AUTH PLAIN " + token + b"\r\n") == b"535 5.7.8 Authentication credentials invalid\r\n"
    with Wire(smtp) as w:
        w.cmd(b"EHLO client.test\r\n", b"250 ")
        assert w.cmd(b"MAIL FROM:<../../x@example.test>\r\n") == b"501 5.1.7 Bad sender address syntax\r\n"
        assert w.cmd(b"MAIL FROM:<carol@elsewhere.test>\r\n") == b"250 2.1.0 Ok\r\n"
        for rcpt, reply in (
            (b"../bob@example.test", b"501 5.1.3 Bad recipient address syntax"),
            (b"bob/../alice@example.test", b"501 5.1.3 Bad recipient address syntax"),
            (b"alice@../example.test", b"501 5.1.3 Bad recipient address syntax"),
            (b"alice@example.test/../bob", b"501 5.1.3 Bad recipient address syntax"),
            (
                b'"../bob"@example.test',
                b'550 5.1.1 <"../bob"@example.test>: Recipient address rejected: User unknown in local recipient table',
            ),
        ):
            assert w.cmd(b"RCPT TO:<" + rcpt + b">\r\n") == reply + b"\r\n", rcpt
    after = tree(traversal.root)
    changed = [k for k in changed_outside(before, after, "run") if not k.startswith("queue/")]  # authfail records
    assert changed == [], changed
    for err in (smtp_err, pop_err, imap_err):
        err.assert_clean()


RULES = """\
:0c
../bob/
:0c
../bob/.Target/
:0c
{bob}/
:0c
{bob}/.Target/
:0c
{bob}/new/../../bob/
:0c
{root}/outside-mbox
:0c
{bob}/.Target/../mbox-in-bob
:0c
link-to-bob/
MAILDIR={bob}
:0c
.Evil/
MAILDIR={alice}
:0
.Mine/
"""


@pytest.mark.parametrize("mode", ["inprocess", "exec"])
def test_rules_folders_cannot_reach_another_mailbox(make_mailsys, mode):
    """alice's rules aim at bob's Maildir (../, absolute paths, a symlink,
    MAILDIR=).  In inprocess mode every mailbox has the runner's uid, so the
    engine must refuse; in exec mode pymda-deliver runs as root here (no
    per-user uids in this tree), so the kernel allows what it allows and
    only ../ is refused -- the same rule as procmail."""
    system = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
    root, alice, bob = system.root, system.maildir("alice"), system.maildir("bob")
    for box in (alice, bob):
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
    (bob / ".Target" / "new").mkdir(parents=True)
    (alice / "link-to-bob").symlink_to(bob)
    (alice / ".procmailrc").write_text(RULES.format(alice=alice, bob=bob, root=root))
    before = tree(root / "mail")
    smtp = system.start_smtpd()
    system.start_qrunner()
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
        client.sendmail("carol@elsewhere.test", ["alice@example.test"], b"Subject: aimed at bob\r\n\r\nhi\r\n")
    deadline = time.time() + 15
    while not list((alice / ".Mine" / "new").glob("*")) and time.time() < deadline:
        time.sleep(0.1)
    assert system.wait_queue_empty() == []
    after = tree(root / "mail")
    outside = changed_outside(before, after, "example.test/alice/")
    if mode == "inprocess":
        assert outside == [], outside
        assert not (root / "outside-mbox").exists()
    else:
        assert all("bob" in k for k in outside) and not any("../" in k for k in outside), outside
    assert len(list((alice / ".Mine" / "new").iterdir())) == 1  # the last recipe still delivers
    assert len(list((alice / "new").iterdir())) == 0  # nothing fell back to the INBOX
