"""Mail in, end to end: smtpd in each activation mode -> queue -> qrunner -> Maildir."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time

import pytest

from conftest import PASSWORD, client_tls

MESSAGE = (
    b"From: Carol <carol@remote.example>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\n"
    b"Hello Alice.\r\n.leading dot\r\n"
)


def stored_body(path) -> bytes:
    data = path.read_bytes()
    assert data.startswith(b"Return-Path: <carol@remote.example>\nDelivered-To: alice@example.test\nReceived: from ")
    return data.split(b"\n\n", 1)[1]


@pytest.mark.parametrize("mode", ["listen", "inetd", "fds"])
def test_message_reaches_maildir_in_every_activation_mode(mailsys, mode):
    port = mailsys.start_smtpd(mode)
    mailsys.start_qrunner()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        code, _ = smtp.ehlo("client.example")
        assert code == 250
        refused = smtp.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
        assert refused == {}
    [path] = mailsys.wait_messages(1)
    assert stored_body(path) == b"Hello Alice.\n.leading dot\n"
    name = path.name
    assert f",S={path.stat().st_size}," in name
    lines = path.read_bytes().count(b"\n")
    assert name.endswith(f",W={path.stat().st_size + lines}")
    assert not mailsys.wait_queue_empty()


def test_starttls_then_delivery(mailsys):
    port = mailsys.start_smtpd("listen")
    mailsys.start_qrunner()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("starttls")
        code, _ = smtp.starttls(context=client_tls())
        assert code == 220
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")
        smtp.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
    [path] = mailsys.wait_messages(1)
    assert b"with ESMTPS id" in path.read_bytes()
    assert b"(using TLSv1." in path.read_bytes()


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_implicit_tls_submission_with_auth(mailsys, mode):
    port = mailsys.start_smtpd(mode, "--tls")
    mailsys.start_qrunner()
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=client_tls()) as smtp:
        smtp.ehlo("client.example")
        code, _ = smtp.login("alice@example.test", PASSWORD)
        assert code == 235
        # From: alice, as submission asks of alice (test_submission_policy)
        smtp.sendmail(
            "alice@example.test",
            ["someone@remote.example", "bob@example.test"],
            MESSAGE.replace(b"Carol <carol@remote.example>", b"Alice <alice@example.test>"),
        )
    [path] = mailsys.wait_messages(1, user="bob")
    assert b"with ESMTPSA id" in path.read_bytes()
    assert b"(authenticated as alice@example.test)" in path.read_bytes()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_auth_good_and_bad_passwords(mailsys, mechanism):
    port = mailsys.start_smtpd("listen", "--service", "submission")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.starttls(context=client_tls())
        smtp.ehlo("client.example")
        assert "PLAIN" in smtp.esmtp_features["auth"] and "LOGIN" in smtp.esmtp_features["auth"]
        # Submission refuses MAIL before AUTH.
        code, _ = smtp.mail("alice@example.test")
        assert code == 530
        code, _ = _try_auth(smtp, mechanism, "alice@example.test", "wrong")
        assert code == 535
        code, _ = _try_auth(smtp, mechanism, "alice@example.test", PASSWORD)
        assert code == 235
        code, _ = smtp.mail("alice@example.test")
        assert code == 250


def _try_auth(smtp, mechanism, user, password):
    smtp.user, smtp.password = user, password
    try:
        return smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def test_auth_not_offered_without_tls_to_remote_peers(make_mailsys):
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    port = system.start_smtpd("listen", "--service", "submission")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert not smtp.has_extn("auth")
        code, msg = smtp.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzM2NyZXQtcGFzcw==")
        assert code == 538
        smtp.starttls(context=client_tls())
        smtp.ehlo("client.example")
        assert smtp.has_extn("auth")


def raw_session(port: int, payload: bytes, wait: float = 2.0) -> bytes:
    """Send raw bytes, return everything the server answered until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)  # greeting
        sock.sendall(payload)
        sock.settimeout(wait)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if out.endswith(b"221 2.0.0 Bye\r\n"):
                    break
        except TimeoutError:
            pass
    return out


def codes(reply: bytes) -> list[int]:
    return [int(line[:3]) for line in reply.split(b"\r\n") if line[:3].isdigit() and line[3:4] == b" "]


def test_refusals_with_exact_codes(make_mailsys):
    system = make_mailsys(
        "[smtpd]\ntrusted_networks = []\nmax_message_size = 1000\nmax_command_line = 512\n"
        "max_recipients = 2\nmax_errors = 20\n"
    )
    port = system.start_smtpd("listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        assert smtp.docmd("MAIL", "FROM:<a@remote.example>")[0] == 503  # before EHLO
        smtp.ehlo("client.example")
        assert smtp.esmtp_features["size"] == "1000"
        assert smtp.docmd("RCPT", "TO:<alice@example.test>")[0] == 503  # before MAIL
        assert smtp.docmd("DATA")[0] == 503
        assert smtp.docmd("MAIL", "FROM:<a@remote.example> SIZE=5000")[0] == 552
        assert smtp.docmd("MAIL", "FROM:<a@remote.example>")[0] == 250
        assert smtp.docmd("MAIL", "FROM:<a@remote.example>")[0] == 503  # nested
        assert smtp.docmd("RCPT", "TO:<nobody@example.test>")[0] == 550  # unknown user
        assert smtp.docmd("RCPT", "TO:<victim@elsewhere.example>")[0] == 554  # relay
        assert smtp.docmd("RCPT", "TO:<@elsewhere.example:alice@example.test>")[0] == 250  # source route ignored
        assert smtp.docmd("RCPT", "TO:<bob@example.test>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<postmaster@example.test>")[0] == 452  # over max_recipients
        assert smtp.docmd("VRFY", "alice")[0] == 252
        assert smtp.docmd("X" * 600)[0] == 500  # command line too long
        assert smtp.docmd("BOGUS")[0] == 500
        assert smtp.docmd("RSET")[0] == 250
    # Oversize DATA: one 552 at the end, nothing queued.
    big = b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + b"x" * 70 + b"\r\n"
    big += (b"y" * 70 + b"\r\n") * 40 + b".\r\nQUIT\r\n"
    reply = raw_session(port, b"EHLO c\r\n" + big)
    assert codes(reply) == [250, 250, 250, 354, 552, 221]
    assert not system.queue_files()


def test_too_many_errors_closes_with_421(mailsys):
    port = mailsys.start_smtpd("listen")
    reply = raw_session(port, b"BOGUS\r\n" * 12)
    assert codes(reply) == [500] * 10 + [421]


def test_relay_tricks_are_refused(make_mailsys):
    system = make_mailsys("[smtpd]\ntrusted_networks = []\n")
    port = system.start_smtpd("listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("a@remote.example")
        for rcpt in [
            "victim%elsewhere.example@example.test",
            '"victim@elsewhere.example"@example.test',
            "victim@[127.0.0.1]",
            "victim@ELSEWHERE.example",
            "victim@elsewhere.example.",
            "@example.test:victim@elsewhere.example",
        ]:
            code = smtp.docmd("RCPT", f"TO:<{rcpt}>")[0]
            assert code in (550, 554, 501), rcpt
        assert smtp.docmd("RCPT", "TO:<ALICE@EXAMPLE.TEST>")[0] == 250  # domain and local part are case-insensitive


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n"])
def test_smtp_smuggling_never_ends_data_early(mailsys, smuggle):
    port = mailsys.start_smtpd("listen")
    payload = (
        b"EHLO c\r\nMAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: one\r\n\r\nfirst"
        + smuggle
        + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
    )
    reply = raw_session(port, payload)
    assert codes(reply) == [250, 250, 250, 354, 550, 221]
    assert not mailsys.queue_files()


def test_starttls_command_injection_is_discarded(mailsys):
    """CVE-2011-0411: commands pipelined behind STARTTLS must not run inside TLS."""
    port = mailsys.start_smtpd("listen")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.recv(1024)
    raw.sendall(b"EHLO c\r\n")
    time.sleep(0.3)
    raw.recv(4096)
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@remote.example>\r\n")
    reply = b""
    while b"\r\n" not in reply:
        reply += raw.recv(1024)
    assert reply.startswith(b"220 ")
    tls = client_tls().wrap_socket(raw, server_hostname="mx.example.test")
    tls.sendall(b"RCPT TO:<alice@example.test>\r\n")
    answer = tls.recv(1024)
    # Had MAIL FROM been executed, RCPT would be accepted; the session was reset instead.
    assert answer.startswith(b"503"), answer
    tls.close()


def test_smtpd_killed_mid_data_leaves_no_queue_entry(mailsys):
    import os
    import signal

    port = mailsys.start_smtpd("listen")
    proc = mailsys.procs[-1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(1024)
    sock.sendall(b"EHLO c\r\nMAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    time.sleep(0.3)
    sock.sendall(b"Subject: half\r\n\r\n" + b"x" * 200_000 + b"\r\n")
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sock.close()
    # The half-written file may stay in tmp/ (never read); nothing is committed.
    q = mailsys.root / "queue"
    assert not list((q / "new").iterdir())
    assert not list((q / "deferred").iterdir())
    mailsys.run("pymta.qrunner", "--once")
    assert mailsys.messages() == []


def test_full_queue_disk_gives_451_and_no_entry(mailsys):
    """An unwritable queue (stand-in for a full disk) is a temporary failure."""
    import os

    if os.geteuid() == 0:
        # root ignores permissions: make tmp/ a file so creating entries fails
        tmp = mailsys.root / "queue" / "tmp"
        tmp.rmdir()
        tmp.write_text("")
    else:
        (mailsys.root / "queue" / "tmp").chmod(0o500)
    port = mailsys.start_smtpd("listen")
    reply = raw_session(
        port,
        b"EHLO c\r\nMAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    )
    assert codes(reply) == [250, 250, 250, 354, 451, 221]
    assert not list((mailsys.root / "queue" / "new").iterdir())


def test_bare_postmaster_is_accepted_and_delivered(mailsys):
    """RFC 5321 4.5.1: RCPT TO:<Postmaster> with no domain must be accepted."""
    port = mailsys.start_smtpd("listen")
    mailsys.start_qrunner()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.docmd("MAIL", "FROM:<carol@remote.example>")[0] == 250
        assert smtp.docmd("RCPT", "TO:<Postmaster>")[0] == 250
        assert smtp.data(b"Subject: to the postmaster\r\n\r\nhi\r\n")[0] == 250
    [path] = mailsys.wait_messages(1)  # the aliases file sends postmaster to alice
    assert b"Subject: to the postmaster" in path.read_bytes()


def test_session_limit_in_listening_mode(make_mailsys):
    system = make_mailsys("[smtpd]\nmax_sessions = 1\nprocesses = 1\n")
    port = system.start_smtpd("listen")
    time.sleep(0.5)  # let the start-up probe's session end
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert first.recv(1024).startswith(b"220 ")
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert second.recv(1024).startswith(b"421 4.3.2")
    second.close()
    first.sendall(b"QUIT\r\n")
    assert first.recv(1024).startswith(b"221")
    first.close()


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_idle_client_is_timed_out_with_421(make_mailsys, mode):
    system = make_mailsys("[smtpd]\ncommand_timeout = 1\n")
    port = system.start_smtpd(mode)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"EHLO c\r\n")
        time.sleep(0.2)
        data = b""
        deadline = time.time() + 8
        while b"421" not in data and time.time() < deadline:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        assert b"421 4.4.2 mx.example.test Error: timeout exceeded" in data


def test_classic_inetd_with_stderr_on_the_socket_keeps_logs_off_the_wire(mailsys):
    """inetd puts the connection on fds 0, 1 and 2: log lines must not reach the client."""
    import subprocess

    from conftest import env_with_repo

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=10)
    conn, _ = listener.accept()
    proc = subprocess.Popen(mailsys.program("pymta.smtpd"), stdin=conn, stdout=conn, stderr=conn, env=env_with_repo())
    conn.close()
    listener.close()
    client.sendall(
        b"EHLO c\r\nMAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    data = b""
    while True:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    proc.wait(timeout=10)
    lines = data.split(b"\r\n")[:-1]
    assert all(line[:3].isdigit() for line in lines), data  # SMTP replies only, no log text
    assert codes(data)[-2:] == [250, 221]


def test_broken_certificate_disables_starttls_and_never_leaks_a_traceback(mailsys):
    (mailsys.root / "tls" / "cert.pem").write_text("not a certificate\n")
    port = mailsys.start_smtpd("listen")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")
    inetd_port = mailsys.start_smtpd("inetd")
    with smtplib.SMTP("127.0.0.1", inetd_port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("starttls")  # inetd mode only finds out when asked
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, ssl.SSLError)):
            smtp.starttls(context=client_tls())
    from conftest import free_port

    implicit = mailsys.run("pymta.smtpd", "--tls", "--listen", f"127.0.0.1:{free_port()}")
    assert implicit.returncode == 78
    assert b"Traceback" not in implicit.stderr


def test_prefork_listening_smtpd_serves_from_every_process_and_stops_cleanly(make_mailsys):
    system = make_mailsys("[smtpd]\nprocesses = 2\n")
    port = system.start_smtpd("listen")
    system.start_qrunner()
    for n in range(6):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("carol@remote.example", ["alice@example.test"], b"Subject: %d\r\n\r\nx\r\n" % n)
    system.wait_messages(6)
    smtpd = system.procs[0]
    smtpd.terminate()
    assert smtpd.wait(timeout=15) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # no orphan still listening


def test_half_closed_client_still_gets_every_reply(mailsys):
    """A client that shuts down its sending side after QUIT still reads the
    250 for its message (the commit runs while its input has ended)."""
    port = mailsys.start_smtpd("listen")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"EHLO c\r\nMAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        time.sleep(0.3)
        sock.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert codes(data)[-2:] == [250, 221]
