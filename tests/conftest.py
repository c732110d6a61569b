"""Shared fixtures: a real pymail tree on disk and real daemons on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DOMAIN = "example.test"
PASSWORD = "s3cret-pass"

# Files whose tests start real daemons, run external programs or fuzz at length: marked
# "slow", so that `pytest -m "not slow"` (the developers' fast path) stays under 30 s.
SLOW_FILES = {
    "test_access_control.py",
    "test_authcheck.py",
    "test_auth_guard.py",
    "test_backscatter.py",
    "test_conn_limits.py",
    "test_crash_quick.py",
    "test_dkim.py",
    "test_faults.py",
    "test_hostile_input.py",
    "test_imap.py",
    "test_imap_dovecot.py",
    "test_imap_dovecot_corpus.py",
    "test_imap_mbsync.py",
    "test_lmtp.py",
    "test_lmtpd.py",
    "test_lmtpd_postfix.py",
    "test_mail_in.py",
    "test_mailbox_modes.py",
    "test_pop3.py",
    "test_privileges.py",
    "test_procmail_differential.py",
    "test_queue_runner.py",
    "test_queue_tools.py",
    "test_real_milters.py",
    "test_relay.py",
    "test_relay_mx.py",
    "test_rules.py",
    "test_rules_confinement.py",
    "test_sendmail.py",
    "test_sendmail_limits.py",
    "test_session_log.py",
    "test_smtpd_policy.py",
    "test_submission_policy.py",
    "test_supervisor.py",
    "test_fuzz_protocols.py",
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def client_tls():
    """A TLS client context for the tests' self-signed certificate (no verification)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    from pymta.lib.tls import make_self_signed

    make_self_signed(cert, key, "mx.example.test", days=2)
    return cert, key


class MailSystem:
    """A pymail tree (config, users, queue, mail store) in a temporary folder."""

    def __init__(self, root: Path, tls_files, extra_config: str = "") -> None:
        self.root = root
        self.config = root / "pymail.toml"
        (root / "tls").mkdir(parents=True, exist_ok=True)
        shutil.copy(tls_files[0], root / "tls" / "cert.pem")
        shutil.copy(tls_files[1], root / "tls" / "key.pem")
        self.write_config(extra_config)
        from pymta.queue import Queue

        Queue(root / "queue").create()
        (root / "mail").mkdir(exist_ok=True)
        (root / "aliases").write_text("postmaster: alice\n")
        self.procs: list[subprocess.Popen] = []
        self.add_user("alice@example.test", PASSWORD)
        self.add_user("bob@example.test", PASSWORD)

    def write_config(self, extra: str = "") -> None:
        # The tests run as root in a tree only root can reach: the queue
        # runner may stay root only when the config says so (pymail-security(7)).
        as_root = 'daemon_user = "root"\n' if os.geteuid() == 0 and "daemon_user" not in extra else ""
        self.config.write_text(
            f'hostname = "mx.example.test"\ndomains = ["{DOMAIN}"]\nroot = "{self.root}"\n{as_root}{extra}\n'
        )

    def add_user(self, address: str, password: str) -> None:
        from passlib.hash import bcrypt

        entry = "{BLF-CRYPT}" + bcrypt.using(rounds=4).hash(password)
        with open(self.root / "users", "a") as fh:
            fh.write(f"{address}:{entry}::::::\n")

    def maildir(self, user: str = "alice") -> Path:
        return self.root / "mail" / DOMAIN / user

    def messages(self, user: str = "alice", sub: str = "new") -> list[Path]:
        d = self.maildir(user) / sub
        return sorted(d.iterdir()) if d.is_dir() else []

    def wait_messages(self, count: int, user: str = "alice", timeout: float = 15.0) -> list[Path]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.messages(user)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"expected {count} messages for {user}, found {len(self.messages(user))}")

    def wait_queue_empty(self, timeout: float = 10.0) -> list[Path]:
        """Committed entries left once the runner had time to finish (it removes
        an entry just after the delivery a test waits for)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            left = [p for p in self.queue_files() if p.parent.name != "tmp"]
            if not left:
                return []
            time.sleep(0.05)
        return left

    def queue_files(self) -> list[Path]:
        q = self.root / "queue"
        return [p for sub in ("tmp", "new", "deferred", "hold") for p in (q / sub).rglob("*") if p.is_file()]

    def program(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, "-C", str(self.config), *args]

    def run(
        self, module: str, *args: str, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.program(module, *args), input=input, capture_output=True, timeout=timeout, env=env_with_repo()
        )

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env_with_repo(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        self.procs.append(proc)
        return proc

    def start_daemon(self, module: str, mode: str = "listen", *args: str) -> int:
        """Start a daemon (pymta.smtpd, pypop.pop3d, pyimap.imapd) in MODE --
        'listen', 'inetd' (systemd-socket-activate --inetd -a) or 'fds'
        (LISTEN_FDS) -- and return its port."""
        port = free_port()
        prog = self.program(module, *args)
        if mode == "listen":
            proc = self.start(prog + ["--listen", f"127.0.0.1:{port}"])
        else:
            activate = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={REPO}"]
            if mode == "inetd":
                activate += ["--inetd", "-a"]
            proc = self.start(activate + prog)
        wait_port(port, proc=proc)
        return port

    def start_smtpd(self, mode: str = "listen", *args: str) -> int:
        return self.start_daemon("pymta.smtpd", mode, *args)

    def start_qrunner(self) -> subprocess.Popen:
        proc = self.start(self.program("pymta.qrunner"))
        deadline = time.time() + 10
        while not (self.root / "queue" / "wake.sock").exists():
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("qrunner did not start")
            time.sleep(0.05)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def mailsys(tmp_path, tls_files):
    system = MailSystem(tmp_path, tls_files)
    yield system
    system.stop_all()


@pytest.fixture
def make_mailsys(tmp_path, tls_files):
    made = []

    def make(extra_config: str = "") -> MailSystem:
        root = tmp_path / f"sys{len(made)}"
        root.mkdir()
        system = MailSystem(root, tls_files, extra_config)
        made.append(system)
        return system

    yield make
    for system in made:
        system.stop_all()
