"""Per-client connection limits and session limits (issue 11, section 3).

Real daemons started with ``--listen``, and under systemd-socket-activate
``--inetd -a`` (a process per connection, the counts in files under
ROOT/run/clients/), with limits shrunk by config.  One
machine plays several clients by binding to other loopback addresses
(127.0.0.2, 127.0.0.3 ...); the tests empty ``limits.exempt_networks``,
which exempts loopback by default.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import socket
import time

import pytest

from pymta.lib.connlimit import client_key
from test_access_control import daemon_pids
from test_hostile_input import Stderr, first_lines

SERVICES = ("pymta.smtpd", "pypop.pop3d", "pyimap.imapd")
SECTION = {"pymta.smtpd": "smtpd", "pypop.pop3d": "pop3d", "pyimap.imapd": "imapd"}
SERVICE_NAME = {"pymta.smtpd": "smtp", "pypop.pop3d": "pop3", "pyimap.imapd": "imap"}
GREETING = {"pymta.smtpd": b"220 ", "pypop.pop3d": b"+OK ", "pyimap.imapd": b"* OK "}
REFUSAL = {
    "pymta.smtpd": b"421 4.7.0 Too many connections from your address, try again later\r\n",
    "pypop.pop3d": b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
    "pyimap.imapd": b"* BYE Too many connections from your address, try again later\r\n",
}
QUIT = {"pymta.smtpd": b"QUIT\r\n", "pypop.pop3d": b"QUIT\r\n", "pyimap.imapd": b"z LOGOUT\r\n"}


def limits_config(
    module: str,
    *,
    sessions: int = 0,
    rate: int = 0,
    processes: int = 2,
    exempt: str = "[]",
    rate_time_unit: float = 60.0,
) -> str:
    return (
        f"[{SECTION[module]}]\nprocesses = {processes}\nmax_sessions_per_client = {sessions}\n"
        f"connection_rate_per_client = {rate}\n"
        f"[limits]\nexempt_networks = {exempt}\nrate_time_unit = {rate_time_unit}\n"
    )


def start(system, module: str) -> tuple[int, Stderr]:
    port = system.start_daemon(module, "listen")
    return port, Stderr(system.procs[-1])


def connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def first_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def greeted(module: str, port: int, source: str) -> socket.socket:
    sock = connect(port, source)
    line = first_line(sock)
    assert line.startswith(GREETING[module]), (source, line)
    return sock


def refused(module: str, port: int, source: str) -> None:
    """The client gets the refusal, and then the server hangs up."""
    with connect(port, source) as sock:
        assert first_line(sock) == REFUSAL[module]
        sock.settimeout(5)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass


def close_session(module: str, sock: socket.socket) -> None:
    """End a session the polite way and wait until the server has closed it."""
    sock.sendall(QUIT[module])
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    sock.close()


def workers(system, module: str, count: int = 2) -> list[int]:
    """The processes that accept connections (the prefork parent only watches them)."""
    proc = system.procs[-1]
    deadline = time.monotonic() + 10
    while True:
        found = [pid for pid in daemon_pids(proc.pid, module) if pid != proc.pid]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def wait_dead(pid: int) -> None:
    """Until ``pid`` has exited (a zombie has closed its files, and so dropped its locks)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} did not die")


def wait_logged(err: Stderr, text: str, count: int = 1) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = [x for x in err.read().splitlines() if text in x]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("module", SERVICES)
def test_one_address_over_its_session_limit_is_refused_and_others_are_served(make_mailsys, module):
    system = make_mailsys(limits_config(module, sessions=3))
    port, err = start(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(3)]
    refused(module, port, "127.0.0.2")
    other = greeted(module, port, "127.0.0.3")  # a second address still gets a session
    lines = wait_logged(err, "connection concurrency limit exceeded")
    assert len(lines) == 1 and lines[0].endswith(
        f"connection concurrency limit exceeded: 4 from [127.0.0.2] for service {SERVICE_NAME[module]}"
    ), lines
    # closing a session frees its place
    close_session(module, held.pop())
    time.sleep(0.2)
    held.append(greeted(module, port, "127.0.0.2"))
    refused(module, port, "127.0.0.2")
    for sock in held + [other]:
        close_session(module, sock)
    err.assert_clean()


def test_the_count_is_shared_by_the_worker_processes(make_mailsys):
    """Two sessions held by one worker, then the other worker alone accepts:
    it knows of the first two and greets only one more."""
    module = "pymta.smtpd"
    system = make_mailsys(limits_config(module, sessions=3, processes=2))
    port, err = start(system, module)
    first, second = workers(system, module)
    held = []
    try:
        os.kill(second, signal.SIGSTOP)  # a stopped worker does not accept
        held += [greeted(module, port, "127.0.0.2") for _ in range(2)]
        os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)
        held.append(greeted(module, port, "127.0.0.2"))
        refused(module, port, "127.0.0.2")
    finally:
        os.kill(first, signal.SIGCONT)
        os.kill(second, signal.SIGCONT)
    for sock in held:
        close_session(module, sock)
    err.assert_clean()


def test_a_dead_worker_leaves_no_count_behind(make_mailsys):
    module = "pymta.smtpd"
    system = make_mailsys(limits_config(module, sessions=2, processes=2))
    port, err = start(system, module)
    first, second = workers(system, module)
    try:
        os.kill(second, signal.SIGSTOP)
        held = [greeted(module, port, "127.0.0.2") for _ in range(2)]
        refused(module, port, "127.0.0.2")
        os.kill(first, signal.SIGKILL)  # its sessions die with it; their counts must too
        wait_dead(first)
    finally:
        os.kill(second, signal.SIGCONT)
    for sock in held:
        sock.close()
    again = [greeted(module, port, "127.0.0.2") for _ in range(2)]
    refused(module, port, "127.0.0.2")
    for sock in again:
        close_session(module, sock)


@pytest.mark.parametrize("module", SERVICES)
def test_connection_rate_limit(make_mailsys, module):
    system = make_mailsys(limits_config(module, rate=3, rate_time_unit=1.5))
    port, err = start(system, module)
    for _ in range(3):
        close_session(module, greeted(module, port, "127.0.0.2"))
    refused(module, port, "127.0.0.2")
    close_session(module, greeted(module, port, "127.0.0.3"))  # another address has its own count
    lines = wait_logged(err, "connection rate limit exceeded")
    assert len(lines) == 1 and lines[0].endswith(
        f"connection rate limit exceeded: 4 from [127.0.0.2] for service {SERVICE_NAME[module]}"
    ), lines
    time.sleep(1.6)  # a new time unit
    close_session(module, greeted(module, port, "127.0.0.2"))
    err.assert_clean()


def test_exempt_networks_are_not_counted(make_mailsys):
    module = "pyimap.imapd"
    system = make_mailsys(limits_config(module, sessions=2, rate=4, exempt='["127.0.0.2/32"]'))
    port, err = start(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(6)]  # over both limits, but exempt
    held += [greeted(module, port, "127.0.0.3") for _ in range(2)]
    refused(module, port, "127.0.0.3")
    for sock in held:
        close_session(module, sock)
    err.assert_clean()


def test_loopback_is_exempt_by_default(make_mailsys):
    module = "pymta.smtpd"
    system = make_mailsys("[smtpd]\nprocesses = 1\nmax_sessions_per_client = 2\nconnection_rate_per_client = 2\n")
    port, err = start(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(4)]
    for sock in held:
        close_session(module, sock)
    err.assert_clean()


def open_many(port: int, count: int) -> list[socket.socket]:
    """COUNT connections opened in parallel (epoll: descriptors above FD_SETSIZE)."""
    socks, pending = [], set()
    with selectors.DefaultSelector() as sel:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
            pending.add(sock)
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                sel.unregister(key.fileobj)
                pending.discard(key.fileobj)
    assert not pending, f"{len(pending)} connections not established"
    for sock in socks:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return socks


def test_default_imapd_serves_a_thousand_concurrent_sessions(make_mailsys):
    """Dovecot's imap process_limit is 1024; pymail's default allowed 200 in all."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1100:
        pytest.skip("this process may not open 1,000 sockets")
    system = make_mailsys()
    port, err = start(system, "pyimap.imapd")
    socks = open_many(port, 1000)
    try:
        lines = first_lines(socks, timeout=30)
        ok = [x for x in lines if x.startswith(b"* OK ")]
        assert len(ok) == 1000, (len(ok), set(lines) - set(ok))
    finally:
        for sock in socks:
            sock.close()
    err.assert_clean()


# -- inetd and systemd Accept=yes: a process per connection, the counts in ROOT/run/clients/


def start_inetd(system, module: str) -> tuple[int, Stderr]:
    port = system.start_daemon(module, "inetd")
    return port, Stderr(system.procs[-1])


def live_sessions(system, module: str) -> list[int]:
    """The session processes now running under systemd-socket-activate (zombies left out)."""
    found = []
    for pid in daemon_pids(system.procs[-1].pid, module):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(pid)
    return found


def wait_sessions(system, module: str, count: int) -> list[int]:
    """Until exactly ``count`` session processes run (a process gives its place back before it exits)."""
    deadline = time.monotonic() + 10
    while True:
        found = live_sessions(system, module)
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} session processes, not {count}")
        time.sleep(0.02)


@pytest.mark.parametrize("module", SERVICES)
def test_inetd_one_address_over_its_session_limit_is_refused_and_others_are_served(make_mailsys, module):
    system = make_mailsys(limits_config(module, sessions=3))
    port, err = start_inetd(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(3)]
    refused(module, port, "127.0.0.2")
    other = greeted(module, port, "127.0.0.3")  # a second address still gets a session
    lines = wait_logged(err, "connection concurrency limit exceeded")
    assert len(lines) == 1 and lines[0].endswith(
        f"connection concurrency limit exceeded: 4 from [127.0.0.2] for service {SERVICE_NAME[module]}"
    ), lines
    # closing a session frees its place
    close_session(module, held.pop())
    wait_sessions(system, module, 3)
    held.append(greeted(module, port, "127.0.0.2"))
    refused(module, port, "127.0.0.2")
    for sock in held + [other]:
        close_session(module, sock)
    wait_sessions(system, module, 0)
    err.assert_clean()
    assert [p.name for p in (system.root / "run" / "clients").iterdir()] == [SERVICE_NAME[module]]


@pytest.mark.parametrize("module", SERVICES)
def test_inetd_connection_rate_limit(make_mailsys, module):
    unit = 4.0  # the four connections must fit in one unit, each a new Python on a busy machine
    system = make_mailsys(limits_config(module, rate=3, rate_time_unit=unit))
    port, err = start_inetd(system, module)
    began = time.monotonic()
    for i in range(3):
        sock = greeted(module, port, "127.0.0.2")
        if i == 0:
            counted = time.monotonic()  # the window began before the greeting
        close_session(module, sock)
    refused(module, port, "127.0.0.2")
    assert time.monotonic() - began < unit
    close_session(module, greeted(module, port, "127.0.0.3"))  # another address has its own count
    lines = wait_logged(err, "connection rate limit exceeded")
    assert len(lines) == 1 and lines[0].endswith(
        f"connection rate limit exceeded: 4 from [127.0.0.2] for service {SERVICE_NAME[module]}"
    ), lines
    if module == "pymta.smtpd":  # a new time unit (once is enough: it is slow)
        time.sleep(max(0.0, counted + unit + 0.1 - time.monotonic()))
        close_session(module, greeted(module, port, "127.0.0.2"))
    err.assert_clean()


def test_inetd_a_killed_session_process_leaves_no_count_behind(make_mailsys):
    module = "pymta.smtpd"
    system = make_mailsys(limits_config(module, sessions=2))
    port, err = start_inetd(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(2)]
    refused(module, port, "127.0.0.2")
    victim = wait_sessions(system, module, 2)[0]
    os.kill(victim, signal.SIGKILL)  # no chance to give its place back
    wait_dead(victim)
    again = greeted(module, port, "127.0.0.2")  # the dead one's place, and only that
    refused(module, port, "127.0.0.2")
    for sock in held:
        sock.close()
    close_session(module, again)
    err.assert_clean()


def test_inetd_exempt_networks_are_not_counted(make_mailsys):
    module = "pypop.pop3d"
    system = make_mailsys(limits_config(module, sessions=1, rate=2, exempt='["127.0.0.2/32"]'))
    port, err = start_inetd(system, module)
    held = [greeted(module, port, "127.0.0.2") for _ in range(3)]  # over both limits, but exempt
    held.append(greeted(module, port, "127.0.0.3"))
    refused(module, port, "127.0.0.3")
    for sock in held:
        close_session(module, sock)
    err.assert_clean()
    files = {p.name for p in (system.root / "run" / "clients" / "pop3").iterdir()}
    assert f"{client_key('127.0.0.3', []):016x}" in files
    assert f"{client_key('127.0.0.2', []):016x}" not in files
