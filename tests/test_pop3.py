"""pypop-pop3d end to end: real processes, real sockets, stdlib poplib and fetchmail.

Every start mode (``--listen``, ``systemd-socket-activate --inetd`` and
``LISTEN_FDS``), plain, STLS and implicit TLS; the RFC 1939 states; the
exact error replies; the maildrop lock; IMAP's new/ -> cur/ moves; mail
arriving during a session; fetchmail downloading 100 messages.
"""

from __future__ import annotations

import hashlib
import os
import poplib
import shutil
import socket
import subprocess
import time

import pytest

from conftest import PASSWORD, REPO, client_tls
from pymda import maildir as md

ALICE = "alice@example.test"


def start_pop3d(system, mode: str = "listen", *args: str) -> int:
    return system.start_daemon("pypop.pop3d", mode, *args)


def fill(system, bodies, user: str = "alice") -> list[str]:
    path = system.maildir(user)
    md.ensure_maildir(path)
    return [md.deliver(path, body, fsync=False).name for body in bodies]


def wire(body: bytes) -> list[bytes]:
    """What poplib's retr() returns for a stored (LF) message: lines, dot-unstuffed."""
    return body.rstrip(b"\n").split(b"\n")


class Raw:
    """A line-level POP3 client for exact replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def cmd(self, line: bytes, lines: int = 1) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return b"".join(self.file.readline() for _ in range(lines))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


BODIES = [
    b"From: a@remote.example\nSubject: first\n\nHello.\n.leading dot\n..two dots\n",
    b"From: b@remote.example\nSubject: second\n\n" + b"line\n" * 50,
    b"From: c@remote.example\nSubject: third\n\nno final newline",
]


@pytest.mark.parametrize("mode", ["listen", "inetd", "fds"])
@pytest.mark.parametrize("security", ["plain", "stls", "implicit"])
def test_every_command_in_every_mode(mailsys, mode, security):
    names = fill(mailsys, BODIES)
    args = ["--tls", "--service", "pop3s"] if security == "implicit" else ["--service", "pop3"]
    port = start_pop3d(mailsys, mode, *args)
    if security == "implicit":
        pop = poplib.POP3_SSL("127.0.0.1", port, context=client_tls(), timeout=20)
    else:
        pop = poplib.POP3("127.0.0.1", port, timeout=20)
    assert pop.getwelcome() == b"+OK mx.example.test POP3 server ready"
    capa = pop.capa()
    for cap in ("USER", "TOP", "UIDL", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"):
        assert cap in capa
    assert capa["SASL"] == ["PLAIN"]
    assert ("STLS" in capa) == (security != "implicit")
    if security == "stls":
        assert pop.stls(client_tls()).startswith(b"+OK")
        assert "STLS" not in pop.capa()
    assert pop.user(ALICE) == b"+OK"
    assert pop.pass_(PASSWORD).startswith(b"+OK Logged in, 3 messages")
    sizes = [md.crlf_size(b) for b in BODIES]
    assert pop.stat() == (3, sum(sizes))
    resp, listing, _ = pop.list()
    assert listing == [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)]
    assert pop.list(2) == b"+OK 2 %d" % sizes[1]
    resp, uids, _ = pop.uidl()
    assert uids == [b"%d %s" % (i + 1, n.encode()) for i, n in enumerate(names)]
    assert pop.uidl(3) == b"+OK 3 " + names[2].encode()
    for i, body in enumerate(BODIES):
        resp, lines, octets = pop.retr(i + 1)
        assert resp == b"+OK %d octets" % sizes[i]
        assert lines == wire(body)
    assert pop.top(2, 3)[1] == wire(BODIES[1])[: 3 + 3]
    assert pop.noop() == b"+OK"
    assert pop.dele(1) == b"+OK Message 1 deleted"
    assert pop.stat() == (2, sum(sizes[1:]))
    assert pop.rset().startswith(b"+OK Maildrop has 3 messages")
    assert pop.dele(3) == b"+OK Message 3 deleted"
    with pytest.raises(poplib.error_proto, match="already deleted"):
        pop.retr(3)
    assert pop.quit() == b"+OK Logging out, 1 message deleted"
    assert {p.name for p in mailsys.messages()} == set(names[:2])


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_auth_plain_with_initial_response(mailsys, mode):
    fill(mailsys, BODIES[:1])
    port = start_pop3d(mailsys, mode)
    import base64

    raw = Raw(port)
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    assert raw.cmd(b"AUTH PLAIN " + token) == b"+OK Logged in, 1 messages (%d octets)\r\n" % md.crlf_size(BODIES[0])
    assert raw.cmd(b"QUIT") == b"+OK Logging out\r\n"
    raw.close()


def test_error_paths_exact_replies(make_mailsys):
    system = make_mailsys("[auth]\nfailure_delay = 0.2\n")
    fill(system, BODIES[:2])
    port = start_pop3d(system, "listen")
    raw = Raw(port)
    assert raw.cmd(b"FOOBAR") == b"-ERR Unknown command\r\n"
    assert raw.cmd(b"STAT") == b"-ERR Command not valid in this state\r\n"
    assert raw.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR No username given\r\n"
    assert raw.cmd(b"USER " + b"x" * 300) == b"-ERR Line too long\r\n"
    assert raw.cmd(b"USER " + ALICE.encode()) == b"+OK\r\n"
    started = time.monotonic()
    assert raw.cmd(b"PASS wrong") == b"-ERR [AUTH] Authentication failed\r\n"
    first = time.monotonic() - started
    raw.cmd(b"USER " + ALICE.encode())
    started = time.monotonic()
    assert raw.cmd(b"PASS wrong again") == b"-ERR [AUTH] Authentication failed\r\n"
    second = time.monotonic() - started
    assert first >= 0.2 and second >= 0.4  # a failure costs a delay, repeated ones more
    raw.cmd(b"USER " + ALICE.encode())
    assert raw.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK Logged in, 2 messages")
    assert raw.cmd(b"USER alice") == b"-ERR Command not valid in this state\r\n"
    assert raw.cmd(b"RETR 3") == b"-ERR No such message\r\n"
    assert raw.cmd(b"RETR 0") == b"-ERR No such message\r\n"
    assert raw.cmd(b"RETR one") == b"-ERR Invalid message number\r\n"
    assert raw.cmd(b"RETR") == b"-ERR Syntax: RETR msg\r\n"
    assert raw.cmd(b"TOP 1") == b"-ERR Syntax: TOP msg lines\r\n"
    assert raw.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
    assert raw.cmd(b"DELE 1") == b"-ERR Message 1 already deleted\r\n"
    assert raw.cmd(b"LIST 1") == b"-ERR Message 1 already deleted\r\n"
    assert raw.cmd(b"TOP 1 0") == b"-ERR Message 1 already deleted\r\n"
    assert raw.cmd(b"X" * 1000) == b"-ERR Line too long\r\n"
    assert raw.cmd(b"HELO") == b"-ERR Unknown command\r\n"
    assert raw.cmd(b"STLS") == b"-ERR Command not valid in this state\r\n"
    assert raw.cmd(b"QUIT") == b"+OK Logging out, 1 message deleted\r\n"
    assert raw.file.readline() == b""  # closed
    raw.close()


def test_plaintext_refused_without_tls_unless_configured(make_mailsys):
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    fill(system, BODIES[:1])
    port = start_pop3d(system, "listen")
    raw = Raw(port)
    capa = raw.cmd(b"CAPA", 9)
    assert b"STLS\r\n" in capa and b"USER\r\n" not in capa and b"SASL" not in capa
    refused = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n"
    assert raw.cmd(b"USER " + ALICE.encode()) == refused
    assert raw.cmd(b"AUTH PLAIN AGFsaWNlAHg=") == refused
    raw.close()
    pop = poplib.POP3("127.0.0.1", port, timeout=20)
    pop.stls(client_tls())
    pop.user(ALICE)
    assert pop.pass_(PASSWORD).startswith(b"+OK Logged in")
    pop.quit()


def test_stls_discards_pipelined_plaintext(mailsys):
    """CVE-2011-0411: a command pipelined behind STLS must never run inside TLS."""
    port = start_pop3d(mailsys, "listen")
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"STLS\r\nUSER evil@example.test\r\n")
    assert f.readline() == b"+OK Begin TLS negotiation\r\n"
    tls = client_tls().wrap_socket(sock)
    tls.settimeout(1)
    with pytest.raises(TimeoutError):
        tls.recv(100)  # no answer to the injected USER
    tls.settimeout(20)
    tls.sendall(f"PASS {PASSWORD}\r\n".encode())
    assert tls.recv(100) == b"-ERR No username given\r\n"
    tls.close()


def test_pipelined_commands_answered_in_order(mailsys):
    fill(mailsys, BODIES)
    port = start_pop3d(mailsys, "inetd")
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(
        f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nRETR 3\r\nDELE 2\r\nUIDL 2\r\nNOOP\r\nQUIT\r\n".encode()
    )
    out = f.read()
    size = md.crlf_size(BODIES[2])
    assert out == (
        b"+OK\r\n"
        + b"+OK Logged in, 3 messages (%d octets)\r\n" % sum(map(md.crlf_size, BODIES))
        + b"+OK 3 %d\r\n" % sum(map(md.crlf_size, BODIES))
        + b"+OK 1 %d\r\n" % md.crlf_size(BODIES[0])
        + b"+OK %d octets\r\n" % size
        + BODIES[2].replace(b"\n", b"\r\n")
        + b"\r\n.\r\n"
        + b"+OK Message 2 deleted\r\n"
        + b"-ERR Message 2 already deleted\r\n"
        + b"+OK\r\n"
        + b"+OK Logging out, 1 message deleted\r\n"
    )
    sock.close()


def test_sessions_lock_imap_moves_and_new_mail(mailsys):
    names = fill(mailsys, BODIES)
    port = start_pop3d(mailsys, "listen")
    first = poplib.POP3("127.0.0.1", port, timeout=20)
    first.user(ALICE)
    first.pass_(PASSWORD)
    uids = first.uidl()[1]
    # a second POP3 session is refused, not blocked
    second = poplib.POP3("127.0.0.1", port, timeout=20)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\] "):
        second.pass_(PASSWORD)
    # an IMAP server reads message 1: new/ -> cur/ with flags
    maildir = mailsys.maildir()
    os.rename(maildir / "new" / names[0], maildir / "cur" / (names[0] + ":2,S"))
    # a delivery during the session (not blocked by the lock) is not shown
    late = fill(mailsys, [b"Subject: late\n\nlate\n"])[0]
    assert first.stat()[0] == 3
    assert first.uidl()[1] == uids
    assert first.retr(1)[1] == wire(BODIES[0])
    first.dele(1)
    first.dele(2)
    assert first.quit() == b"+OK Logging out, 2 messages deleted"
    assert os.listdir(maildir / "cur") == []
    # the lock went with the session; the next one sees the new message
    second.user(ALICE)
    assert second.pass_(PASSWORD).startswith(b"+OK Logged in, 2 messages")
    assert [u.split()[1] for u in second.uidl()[1]] == [names[2].encode(), late.encode()]
    # a dropped connection deletes nothing and releases the lock
    second.dele(1)
    second.dele(2)
    second.file.close()
    second.sock.close()
    deadline = time.time() + 10
    while True:
        third = poplib.POP3("127.0.0.1", port, timeout=20)
        third.user(ALICE)
        try:
            assert third.pass_(PASSWORD).startswith(b"+OK Logged in, 2 messages")
            break
        except poplib.error_proto:
            third.close()
            assert time.time() < deadline
            time.sleep(0.05)
    third.quit()


def test_killed_session_releases_lock(mailsys):
    """Under inetd a session is a process: killing it must free the maildrop."""
    fill(mailsys, BODIES[:1])
    path = mailsys.maildir()
    proc = subprocess.Popen(
        mailsys.program("pypop.pop3d"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    proc.stdin.write(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    proc.stdin.flush()
    proc.stdout.readline()
    proc.stdout.readline()
    assert proc.stdout.readline().startswith(b"+OK Logged in")
    from pypop.maildrop import Maildrop, MaildropInUse

    with pytest.raises(MaildropInUse):
        Maildrop.open(path)
    proc.kill()
    proc.wait()
    Maildrop.open(path).close()


def test_large_message_streamed_byte_identical(mailsys):
    body = b"Subject: big\n\n" + b"".join(b"%07d .dotted? no\n.dotted yes\n" % i for i in range(60000))
    [name] = fill(mailsys, [body])
    port = start_pop3d(mailsys, "listen")
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    resp, lines, octets = pop.retr(1)
    assert resp == b"+OK %d octets" % md.crlf_size(body)
    assert b"\n".join(lines) + b"\n" == body
    pop.quit()


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
def test_fetchmail_downloads_100_messages_byte_identical(mailsys, tmp_path):
    bodies = [
        b"From: sender%d@remote.example\nTo: alice@example.test\nSubject: message %d\n"
        b"Message-ID: <%d@remote.example>\n\n"
        b"Body of message %d.\n.a line with a leading dot\n\n%s\n" % (i, i, i, i, b"x" * (i * 37 % 3000))
        for i in range(100)
    ]
    fill(mailsys, bodies)
    port = start_pop3d(mailsys, "listen")
    out = tmp_path / "fetched"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol pop3 port {port} auth password\n"
        f'  user "{ALICE}" password "{PASSWORD}" is "someone" here\n'
        f'  fetchall keep sslproto "" mda "cat > {out}/msg.$$"\n'
    )
    rc.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [
            "fetchmail",
            "-f",
            str(rc),
            "--nosyslog",
            "--invisible",
            "--norewrite",
            "--nodetach",
            "-i",
            str(tmp_path / "fetchids"),
            "--pidfile",
            str(tmp_path / "fetchmail.pid"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert len(got) == 100
    assert got == sorted(bodies)
    assert len(mailsys.messages()) == 100  # "keep"
    # fetchmail remembers UIDLs: a second run fetches nothing new without fetchall
    assert hashlib.sha256(b"".join(got)).hexdigest() == hashlib.sha256(b"".join(sorted(bodies))).hexdigest()
