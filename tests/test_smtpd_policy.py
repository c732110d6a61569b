"""Port 25 policy against real daemons: DNSBL/DNSWL (a real dnsmasq on
127.0.0.1), greylisting, and the whole-session limits (issue 11 3).

Test clients connect from different loopback addresses (127.0.0.2,
127.0.0.3, ...: all of 127/8 is the loopback on Linux) so one DNS zone can
list some of them and not others; trusted_networks is emptied so loopback
clients are checked like strangers.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import PASSWORD

LISTED = "127.0.0.2"  # zen.test (*3) and bl.test=127.0.0.2 (*2)
CLEAN = "127.0.0.3"  # listed nowhere
ALLOWED = "127.0.0.4"  # zen.test (*3), but wl.test (*-5) too
WRONG_CODE = "127.0.0.5"  # bl.test answers 127.0.0.9, which the filter does not count
SITES = '["zen.test*3", "bl.test=127.0.0.2*2", "wl.test*-5"]'
RECORDS = {
    "2.0.0.127.zen.test": "127.0.0.2",
    "2.0.0.127.bl.test": "127.0.0.2",
    "4.0.0.127.zen.test": "127.0.0.2",
    "4.0.0.127.wl.test": "127.0.0.2",
    "5.0.0.127.bl.test": "127.0.0.9",
}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dnsmasq_binary() -> str | None:
    found = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"  # sbin is not on every PATH
    return found if os.access(found, os.X_OK) else None


@pytest.fixture
def dnsmasq():
    """dnsmasq answering only RECORDS (NXDOMAIN for anything else under .test)."""
    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq not installed (.ci/run installs it)")
    for _attempt in range(5):  # the port is free for UDP; TCP (which dnsmasq also binds) may not be
        port = free_udp_port()
        argv = [
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file",
            "--local=/test/",
            "--log-facility=-",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")  # else it changes to a user that may not exist here
        argv += [f"--host-record={name},{ip}" for name, ip in RECORDS.items()]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_dns(port, proc):
            break
    else:
        raise RuntimeError(f"dnsmasq would not start (exit {proc.returncode})")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_dns(port: int, proc) -> bool:
    import dns.message
    import dns.query

    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            dns.query.udp(dns.message.make_query("2.0.0.127.zen.test.", "A"), "127.0.0.1", port=port, timeout=0.2)
            return True
        except Exception:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    return False


def smtp_from(source_ip: str, port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=15, source_address=(source_ip, 0))
    client.ehlo("client.example.net")
    return client


def rcpt(source_ip: str, port: int, to: str = "alice@example.test", sender: str = "someone@remote.test"):
    with smtp_from(source_ip, port) as client:
        assert client.mail(sender)[0] == 250
        return client.rcpt(to)


def dnsbl_system(make_mailsys, dns_port: int, extra: str = ""):
    return make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dns_port}"]\n'
        f"[smtpd]\ntrusted_networks = []\ndnsbl_sites = {SITES}\ndnsbl_timeout = 2.0\n{extra}"
    )


# -- DNSBL / DNSWL ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_listed_client_gets_554_naming_the_list(make_mailsys, dnsmasq, mode):
    system = dnsbl_system(make_mailsys, dnsmasq)
    port = system.start_smtpd(mode)
    code, text = rcpt(LISTED, port)
    assert code == 554
    assert text.decode() == f"5.7.1 Service unavailable; client [{LISTED}] blocked using zen.test, bl.test"


def test_listed_client_still_reaches_postmaster(make_mailsys, dnsmasq):
    system = dnsbl_system(make_mailsys, dnsmasq)
    port = system.start_smtpd()
    with smtp_from(LISTED, port) as client:
        client.mail("someone@remote.test")
        assert client.rcpt("alice@example.test")[0] == 554
        assert client.rcpt("postmaster@example.test")[0] == 250
        assert client.rcpt("<postmaster>")[0] == 250
        assert client.data(b"Subject: why am I blocked?\r\n\r\nhi\r\n")[0] == 250


def test_unlisted_client_gets_through(make_mailsys, dnsmasq):
    system = dnsbl_system(make_mailsys, dnsmasq)
    port = system.start_smtpd()
    with smtp_from(CLEAN, port) as client:
        client.sendmail("someone@remote.test", ["alice@example.test"], b"Subject: clean\r\n\r\nhi\r\n")


def test_allowlist_weight_offsets_a_block(make_mailsys, dnsmasq):
    system = dnsbl_system(make_mailsys, dnsmasq)
    port = system.start_smtpd()
    assert rcpt(ALLOWED, port)[0] == 250
    # the same client without the allowlist: blocked by zen.test
    strict = make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dnsmasq}"]\n'
        f'[smtpd]\ntrusted_networks = []\ndnsbl_sites = ["zen.test*3"]\n'
    )
    assert rcpt(ALLOWED, strict.start_smtpd())[0] == 554


def test_answer_filter_counts_only_the_named_codes(make_mailsys, dnsmasq):
    system = dnsbl_system(make_mailsys, dnsmasq)
    port = system.start_smtpd()
    assert rcpt(WRONG_CODE, port)[0] == 250
    # the same list without a filter counts any answer
    unfiltered = make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dnsmasq}"]\n[smtpd]\ntrusted_networks = []\ndnsbl_sites = ["bl.test*2"]\n'
    )
    code, text = rcpt(WRONG_CODE, unfiltered.start_smtpd())
    assert code == 554 and text.endswith(b"blocked using bl.test")


def test_threshold_decides(make_mailsys, dnsmasq):
    # threshold 4: 127.0.0.2 scores 3 + 2 = 5 and is blocked; 127.0.0.4 scores 3 - 5 and 127.0.0.5 scores 0
    system = dnsbl_system(make_mailsys, dnsmasq, "dnsbl_threshold = 4\n")
    port = system.start_smtpd()
    assert rcpt(LISTED, port)[0] == 554
    # threshold 6: nobody reaches it
    lenient = dnsbl_system(make_mailsys, dnsmasq, "dnsbl_threshold = 6\n")
    assert rcpt(LISTED, lenient.start_smtpd())[0] == 250


def test_silent_dns_server_never_refuses_mail(make_mailsys):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        system = make_mailsys(
            f'[relay]\ndns_servers = ["127.0.0.1:{silent.getsockname()[1]}"]\n'
            f"[smtpd]\ntrusted_networks = []\ndnsbl_sites = {SITES}\ndnsbl_timeout = 1.0\n"
        )
        port = system.start_smtpd()
        started = time.monotonic()
        with smtp_from(LISTED, port) as client:
            client.sendmail("someone@remote.test", ["alice@example.test"], b"Subject: dns down\r\n\r\nhi\r\n")
        assert time.monotonic() - started < 10
    finally:
        silent.close()


def test_trusted_and_submission_clients_are_not_looked_up(make_mailsys, dnsmasq):
    system = make_mailsys(
        f'[relay]\ndns_servers = ["127.0.0.1:{dnsmasq}"]\n'
        f'[smtpd]\ntrusted_networks = ["{LISTED}/32"]\ndnsbl_sites = {SITES}\n'
    )
    port = system.start_smtpd()
    assert rcpt(LISTED, port)[0] == 250  # trusted network
    submission = system.start_smtpd("listen", "--service", "submission")
    with smtp_from(LISTED, submission) as client:
        client.login("bob@example.test", PASSWORD)
        client.sendmail("bob@example.test", ["alice@example.test"], b"Subject: sub\r\n\r\nhi\r\n")


# -- greylisting -------------------------------------------------------------------------------


def greylist_system(make_mailsys, extra: str = ""):
    return make_mailsys(f"[smtpd]\ntrusted_networks = []\ngreylist = true\ngreylist_delay = 1.0\n{extra}")


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_greylisting_first_450_then_250_after_the_delay_then_allowlisted(make_mailsys, mode):
    system = greylist_system(make_mailsys)
    port = system.start_smtpd(mode)
    assert rcpt(CLEAN, port) == (450, b"4.2.0 Greylisted, try again later")
    assert rcpt(CLEAN, port)[0] == 450  # a retry before the delay
    time.sleep(1.2)
    with smtp_from(CLEAN, port) as client:
        client.sendmail("someone@remote.test", ["alice@example.test"], b"Subject: retried\r\n\r\nhi\r\n")
    # the client's network passed once: other triplets from it go straight through
    assert rcpt("127.0.0.77", port, to="bob@example.test", sender="other@remote.test")[0] == 250
    assert (system.root / "run" / "greylist.sqlite").exists()


def test_greylisting_is_per_triplet(make_mailsys):
    system = greylist_system(make_mailsys, "greylist_auto_allowlist = 0\n")
    port = system.start_smtpd()
    assert rcpt(CLEAN, port)[0] == 450
    time.sleep(1.2)
    assert rcpt(CLEAN, port)[0] == 250
    assert rcpt(CLEAN, port)[0] == 250  # remembered as passed
    assert rcpt(CLEAN, port, to="bob@example.test")[0] == 450  # a new recipient starts again


def test_greylisting_skips_trusted_and_authenticated_clients(make_mailsys):
    system = make_mailsys(f'[smtpd]\ntrusted_networks = ["{CLEAN}/32"]\ngreylist = true\n')
    port = system.start_smtpd()
    assert rcpt(CLEAN, port)[0] == 250
    system.stop_all()
    system = make_mailsys("[smtpd]\ntrusted_networks = []\ngreylist = true\n")
    port = system.start_smtpd()
    with smtp_from(CLEAN, port) as client:
        client.login("bob@example.test", PASSWORD)  # AUTH on port 25 (loopback: no TLS needed)
        assert client.mail("bob@example.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250


def test_greylisting_is_off_by_default(make_mailsys):
    system = make_mailsys("[smtpd]\ntrusted_networks = []\n")
    port = system.start_smtpd()
    assert rcpt(CLEAN, port)[0] == 250
    assert not (system.root / "run" / "greylist.sqlite").exists()


# -- whole-session limits ----------------------------------------------------------------------


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_busy_client_is_cut_at_the_session_deadline(make_mailsys, mode):
    system = make_mailsys("[smtpd]\nmax_session_time = 2.0\ncommand_timeout = 300.0\n")
    port = system.start_smtpd(mode)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(4096)  # greeting
        for _ in range(3):  # a NOOP every 0.4 s: never silent long enough for command_timeout
            sock.sendall(b"NOOP\r\n")
            assert sock.recv(4096).startswith(b"250")
            time.sleep(0.4)
        rest = read_until_closed(sock, 10)  # then idle: the session deadline, not the 300 s, ends it
    elapsed = time.monotonic() - started
    assert rest.startswith(b"421 4.4.2 mx.example.test Error: session time limit exceeded"), rest
    assert 1.8 < elapsed < 6


def test_junk_commands_close_the_session(make_mailsys):
    system = make_mailsys("[smtpd]\nmax_junk_commands = 5\n")
    port = system.start_smtpd()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("x")  # junk 1
        for _ in range(4):
            assert client.noop()[0] == 250
        code, text = client.noop()
    assert code == 421 and b"too many junk commands" in text
