"""pyimap-imapd as a real process: --listen, systemd-socket-activate --inetd and LISTEN_FDS;
plain, STARTTLS and implicit TLS; two clients; the deliverer; big APPENDs."""

from __future__ import annotations

import imaplib
import re
import socket
import threading
import time

import pytest

from conftest import PASSWORD, client_tls

ALICE = "alice@example.test"
MODES = ["listen", "inetd", "fds"]


def start_imapd(system, mode: str = "listen", *args: str) -> int:
    return system.start_daemon("pyimap.imapd", mode, *args)


def msg(subject="hello", body="Hi there.\r\n") -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}"
    ).encode()


def login(port, *, ssl_mode=False) -> imaplib.IMAP4:
    m = (
        imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=30)
        if ssl_mode
        else imaplib.IMAP4("127.0.0.1", port, timeout=30)
    )
    typ, _ = m.login(ALICE, PASSWORD)
    assert typ == "OK"
    return m


def session_checks(m: imaplib.IMAP4) -> None:
    typ, data = m.append("INBOX", r"(\Flagged)", None, msg("one"))
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = m.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][0] == b"1 (FLAGS (\\Flagged) RFC822.SIZE 140 BODY[HEADER.FIELDS (SUBJECT)] {16}"
    assert data[0][1] == b"Subject: one\r\n\r\n"
    typ, data = m.fetch("1", "(BODY[])")
    assert data[0][1] == msg("one")
    assert m.fetch("1", "FLAGS")[1] == [b"1 (FLAGS (\\Flagged \\Seen))"]
    assert m.store("1", "+FLAGS", "(\\Answered)")[1] == [b"1 (FLAGS (\\Flagged \\Answered \\Seen))"]
    assert m.uid("SEARCH", "FROM", '"ann"') == ("OK", [b"1"])
    assert m.search(None, "UNSEEN") == ("OK", [b""])
    typ, data = m._simple_command("UID", "COPY", "1", "Archive")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1 1\]", data[0])
    assert m.status("Archive", "(MESSAGES UNSEEN)") == ("OK", [b'"Archive" (MESSAGES 1 UNSEEN 0)'])
    assert m.logout()[0] == "BYE"


@pytest.mark.parametrize("mode", MODES)
def test_plain_session_in_every_start_mode(mailsys, mode):
    port = start_imapd(mailsys, mode)
    session_checks(login(port))


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_implicit_tls(mailsys, mode):
    port = start_imapd(mailsys, mode, "--tls")
    m = login(port, ssl_mode=True)
    session_checks(m)


@pytest.mark.parametrize("mode", ["listen", "inetd", "fds"])
def test_starttls_and_logindisabled(make_mailsys, mode):
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    port = start_imapd(system, mode)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
    assert "AUTH=PLAIN" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login(ALICE, PASSWORD)
    m.starttls(ssl_context=client_tls())
    assert "AUTH=PLAIN" in m.capabilities and "STARTTLS" not in m.capabilities
    m.login(ALICE, PASSWORD)
    session_checks(m)


def test_starttls_injection_is_not_executed(make_mailsys):  # CVE-2011-0411
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    port = start_imapd(system, "inetd")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.recv(4096)
    raw.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    time.sleep(0.3)
    first = raw.recv(4096)
    assert first == b"a OK Begin TLS negotiation now\r\n"
    tls = client_tls().wrap_socket(raw)
    tls.sendall(b"c NOOP\r\n")
    time.sleep(0.3)
    assert tls.recv(4096) == b"c OK NOOP completed\r\n"  # no answer to b
    tls.close()


def test_authenticate_plain_sasl_ir_and_failure_delay(mailsys):
    import base64

    port = start_imapd(mailsys)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    t = time.time()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(ALICE, "wrong")
    assert time.time() - t >= 0.9  # auth.failure_delay
    m2 = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    m2.sock.sendall(b"a AUTHENTICATE PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()) + b"\r\n")
    assert m2.sock.recv(4096).startswith(b"a OK [CAPABILITY IMAP4rev1")


def test_two_clients_idle_sees_append_store_expunge_move(mailsys):
    port = start_imapd(mailsys, "inetd")
    a, b = login(port), login(port)
    for i in range(3):
        b.append("INBOX", None, None, msg(f"m{i}"))
    a.select("INBOX")
    b.select("INBOX")
    sock = a.sock
    sock.sendall(b"i1 IDLE\r\n")
    assert sock.recv(100) == b"+ idling\r\n"

    def expect(pattern: bytes, timeout=2.0):
        sock.settimeout(timeout)
        buf = b""
        deadline = time.time() + timeout
        while not re.search(pattern, buf):
            if time.time() > deadline:
                raise AssertionError(f"{pattern!r} not seen in {buf!r}")
            buf += sock.recv(4096)
        return buf

    b.append("INBOX", None, None, msg("m3"))
    expect(rb"\* 4 EXISTS\r\n")
    b.store("2", "+FLAGS", "(\\Flagged)")
    expect(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\)\)\r\n")
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    expect(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Deleted\)\)\r\n\* 1 EXPUNGE\r\n|\* 1 EXPUNGE\r\n")
    b._simple_command("MOVE", "1", "Trash")
    expect(rb"\* 1 EXPUNGE\r\n")
    sock.sendall(b"DONE\r\n")
    expect(rb"i1 OK IDLE terminated\r\n")
    # what a sees by number is what is there: UIDs 3 and 4, no reuse
    sock.settimeout(10)
    typ, data = a.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [(re.search(rb"UID (\d+)", d[0]).group(1), d[1].strip()) for d in data if isinstance(d, tuple)]
    assert subjects == [(b"3", b"Subject: m2"), (b"4", b"Subject: m3")]
    assert b.append("INBOX", None, None, msg("m4"))[1][0].split()[2] == b"5]"


def test_idle_sees_pymda_deliver_within_two_seconds(mailsys):
    port = start_imapd(mailsys, "listen")
    a = login(port)
    a.select("INBOX")
    sock = a.sock
    sock.sendall(b"i IDLE\r\n")
    assert sock.recv(100) == b"+ idling\r\n"
    for n in (1, 2):
        r = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "ann@example.org", input=msg(f"d{n}"))
        assert r.returncode == 0, r.stderr
        t = time.time()
        sock.settimeout(2.0)
        buf = b""
        while b"* %d EXISTS\r\n" % n not in buf:
            buf += sock.recv(4096)
        assert time.time() - t < 2.0
    sock.sendall(b"DONE\r\n")
    sock.settimeout(10)
    assert b"i OK IDLE terminated" in sock.recv(4096)
    typ, data = a.fetch("1:2", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [d[1] for d in data if isinstance(d, tuple)] == [b"Subject: d1\r\n\r\n", b"Subject: d2\r\n\r\n"]


def test_noop_while_deliverer_and_other_process_write(mailsys):
    """Many writers at once (deliverer + another imapd appending + expunging): UIDs stay unique and ordered."""
    port = start_imapd(mailsys, "inetd")
    a, b = login(port), login(port)
    a.select("INBOX")

    def writer():
        for i in range(10):
            b.append("INBOX", None, None, msg(f"b{i}"))

    th = threading.Thread(target=writer)
    th.start()
    for i in range(10):
        mailsys.run("pymda.deliver", "-d", ALICE, "-f", "x@y", input=msg(f"d{i}"))
    th.join()
    a.noop()
    typ, data = a.fetch("1:*", "(UID)")
    uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
    assert len(uids) == 20 and uids == sorted(uids) and len(set(uids)) == 20


def test_big_append_streams_to_disk(mailsys):
    port = start_imapd(mailsys, "listen")
    pid = None
    for p in mailsys.procs:
        pid = p.pid
    m = login(port)
    body = (b"x" * 76 + b"\r\n") * (50 * 1024 * 1024 // 78)
    data = b"Subject: big\r\n\r\n" + body
    typ, resp = m.append("INBOX", None, None, data)
    assert typ == "OK"
    with open(f"/proc/{pid}/status") as fh:
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", fh.read()).group(1))
    assert hwm < 40 * 1024, f"peak RSS {hwm} kB"
    m.select("INBOX")
    typ, d = m.fetch("1", "(RFC822.SIZE)")
    assert d == [b"1 (RFC822.SIZE %d)" % len(data)]


def test_too_big_literal_refused_without_reading(make_mailsys):
    system = make_mailsys("[imapd]\nmax_literal = 1000\n")
    port = start_imapd(system, "inetd")
    m = login(port)
    s = m.sock
    s.sendall(b"a APPEND INBOX {5000000}\r\n")
    s.settimeout(5)
    assert s.recv(4096) == b"a NO [TOOBIG] Literal too big\r\n"
    s.sendall(b"b NOOP\r\n")
    assert s.recv(4096) == b"b OK NOOP completed\r\n"
