"""A renewed certificate (certbot) is taken on SIGHUP, without dropping sessions (issue 15 §1).

Every listening daemon reloads paths.tls_cert/tls_key on SIGHUP: implicit
TLS and STARTTLS, one process or forked workers (the parent passes the
signal on).  Sessions already running go on with the old certificate; a
broken renewal is refused and the old certificate stays in use.
`pymail run` passes SIGHUP on to the daemons only (the queue runner would
die of it).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time

import pytest

from conftest import MailSystem, client_tls
from pymta.lib.setup import hand_tree_to
from pymta.lib.tls import make_self_signed
from pymta.supervisor import Program, Supervisor
from test_access_control import TEST_USER, test_user  # noqa: F401  (fixture)
from test_privileges import open_dir  # noqa: F401  (fixture)

# (module, extra arguments, config, how a session starts TLS, a command that answers, its reply)
CASES = {
    "smtps, 2 workers": ("pymta.smtpd", ["--tls"], "[smtpd]\nprocesses = 2\n", None, b"NOOP\r\n", b"250"),
    "imap STARTTLS": ("pyimap.imapd", [], "[imapd]\nprocesses = 1\n", b"a STARTTLS\r\n", b"b NOOP\r\n", b"b OK"),
    "pop3s": ("pypop.pop3d", ["--tls"], "[pop3d]\nprocesses = 1\n", None, b"NOOP\r\n", b"-ERR"),
}


def _read_until(sock, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}: {data!r}")
        data += chunk
    return data


def _open(port: int, starttls: bytes | None):
    """A TLS session (after the greeting for STARTTLS); returns it and the server's certificate (DER)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if starttls is not None:
        _read_until(raw, b"\r\n")
        raw.sendall(starttls)
        _read_until(raw, b"\r\n")
    tls = client_tls().wrap_socket(raw, server_hostname="mx.example.test")
    if starttls is None:
        _read_until(tls, b"\r\n")
    return tls, tls.getpeercert(binary_form=True)


def _renew(mailsys, tmp_path, name: str) -> bytes:
    """Write a new pair the way certbot's deploy hook does (new files renamed into place); its DER."""
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    make_self_signed(cert, key, "mx.example.test", days=2)
    os.replace(key, mailsys.root / "tls" / "key.pem")
    os.replace(cert, mailsys.root / "tls" / "cert.pem")
    return ssl.PEM_cert_to_DER_cert((mailsys.root / "tls" / "cert.pem").read_text())


def _wait_for_cert(port: int, starttls, wanted: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sock, der = _open(port, starttls)
        sock.close()
        if der == wanted:
            return
        assert time.monotonic() < deadline, "the daemon still shows the old certificate"
        time.sleep(0.1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sighup_takes_a_renewed_certificate_and_keeps_sessions(make_mailsys, tmp_path, case):
    module, args, config, starttls, command, reply = CASES[case]
    mailsys = make_mailsys(config)
    port = mailsys.start_daemon(module, "listen", *args)
    daemon = mailsys.procs[-1]
    old_session, first = _open(port, starttls)
    new = _renew(mailsys, tmp_path, "renewed")
    assert new != first

    sock, der = _open(port, starttls)  # not before the signal: the files alone change nothing
    sock.close()
    assert der == first
    daemon.send_signal(signal.SIGHUP)
    _wait_for_cert(port, starttls, new)
    # every worker has it (connections spread over the processes)
    assert all(_open(port, starttls)[1] == new for _ in range(6))

    old_session.sendall(command)  # the session from before the reload goes on
    assert reply in _read_until(old_session, b"\r\n")
    old_session.close()
    assert daemon.poll() is None


def test_a_daemon_that_left_root_reads_the_renewed_key(open_dir, test_user, tls_files, tmp_path):  # noqa: F811
    """Started as root, the daemon is daemon_user when SIGHUP comes: the key
    pymail init (hand_tree_to) leaves root's and readable by its group is
    still readable."""
    mailsys = MailSystem(open_dir / "tree", tls_files, f'daemon_user = "{TEST_USER}"\n[smtpd]\nprocesses = 1\n')
    os.chmod(mailsys.root, 0o755)
    hand_tree_to(mailsys.root, test_user)
    key = mailsys.root / "tls" / "key.pem"
    assert (key.stat().st_uid, key.stat().st_gid, key.stat().st_mode & 0o777) == (0, test_user.pw_gid, 0o640)
    try:
        port = mailsys.start_daemon("pymta.smtpd", "listen", "--tls")
        daemon = mailsys.procs[-1]
        new = _renew(mailsys, tmp_path, "renewed")
        hand_tree_to(mailsys.root, test_user)  # the deploy hook's install -m 640 -g pymail
        daemon.send_signal(signal.SIGHUP)
        try:
            _wait_for_cert(port, None, new)
        except Exception:
            daemon.terminate()
            raise AssertionError(daemon.stderr.read().decode()[-3000:]) from None
    finally:
        mailsys.stop_all()


def test_a_broken_renewal_keeps_the_certificate_in_use(make_mailsys, tmp_path):
    mailsys = make_mailsys("[smtpd]\nprocesses = 1\n")
    port = mailsys.start_daemon("pymta.smtpd", "listen", "--tls")
    daemon = mailsys.procs[-1]
    sock, first = _open(port, None)
    sock.close()
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    make_self_signed(other_cert, other_key, "mx.example.test", days=2)
    os.replace(other_cert, mailsys.root / "tls" / "cert.pem")  # a certificate without its key: a mismatch
    daemon.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    for _ in range(3):
        sock, der = _open(port, None)
        sock.close()
        assert der == first
    daemon.terminate()
    daemon.wait(10)
    assert b"TLS certificate not reloaded, the old one stays in use" in daemon.stderr.read()


RECORDER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGHUP, lambda *a: open(sys.argv[1], 'a').write('HUP\\n'))\n"
    "open(sys.argv[1], 'a').write('up\\n')\n"
    "while True: time.sleep(0.05)\n"
)


def test_pymail_run_passes_sighup_to_the_daemons_only(tmp_path):
    daemon_log, runner_log = tmp_path / "daemon", tmp_path / "runner"
    daemon = Program("imap", [sys.executable, "-c", RECORDER, str(daemon_log)], reloads=True)
    runner = Program("qrunner", [sys.executable, "-c", RECORDER, str(runner_log)])
    sup = Supervisor([daemon, runner], poll_interval=0.02)
    old = signal.getsignal(signal.SIGHUP)
    try:
        import threading

        def hup_then_stop():
            deadline = time.monotonic() + 10
            while not (daemon_log.exists() and runner_log.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGHUP)
            while "HUP" not in (daemon_log.read_text() if daemon_log.exists() else "") and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            sup.request_stop()

        thread = threading.Thread(target=hup_then_stop)
        thread.start()
        assert sup.run() == 0
        thread.join()
    finally:
        signal.signal(signal.SIGHUP, old)
    assert daemon_log.read_text().splitlines() == ["up", "HUP"]
    assert runner_log.read_text().splitlines() == ["up"]
    assert daemon.restarts == 0 and runner.restarts == 0
