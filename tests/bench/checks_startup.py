"""CPU an inetd smtpd process spends on one checked session (a script that prints numbers, not a test).

::

    python3 tests/bench/checks_startup.py [-n 20] [--repo DIR ...]

Each session is a fresh ``python3 -m pymta.smtpd`` on an accepted TCP
connection (fd 0 and 1, as inetd and ``systemd-socket-activate --inetd``
hand it), from 127.0.0.2 with ``smtpd.trusted_networks`` empty, so that
SPF, DKIM and DMARC run against a DNS server on 127.0.0.1
(tests/fakedns.py).  The CPU time of the child (user + system, from
``wait4``) is taken for these kinds of session:

* ``greet``     -- greeting and QUIT;
* ``off``       -- one message with ``checks.enabled = false``;
* ``plain``     -- one message without DKIM-Signature, From: a domain with a
                   DMARC record (SPF and DMARC run, DKIM has nothing to do);
* ``nodmarc``   -- one message From: a domain without DMARC record whose
                   organizational domain is itself;
* ``signed``    -- one message with a DKIM signature (dkimpy runs).

Each ``--repo`` (default: this checkout) is run alternately in the same
run, so that the figures of an older tree (``git archive HEAD | tar x``)
and of the working tree meet the same load; medians and minimums are
printed (the minimum is the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakedns import FakeDNS  # noqa: E402

AS_ROOT = 'daemon_user = "root"\n' if os.geteuid() == 0 else ""
ZONE = {
    "pass.test.": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
    "_dmarc.pass.test.": {"TXT": ["v=DMARC1; p=reject"]},
    "plain.test.": {"TXT": ["v=spf1 ip4:127.0.0.2 -all"]},
}


def make_tree(root: Path, dns_port: int, enabled: bool) -> Path:
    from pymta.queue import Queue

    (root / "mail").mkdir(parents=True)
    Queue(root / "queue").create()
    (root / "aliases").write_text("postmaster: alice\n")
    (root / "users").write_text("alice@example.test:{PLAIN}x::::::\n")
    config = root / "pymail.toml"
    config.write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\nroot = "{root}"\n{AS_ROOT}'
        f'[relay]\ndns_servers = ["127.0.0.1:{dns_port}"]\n'
        f"[smtpd]\ntrusted_networks = []\n[checks]\nenabled = {'true' if enabled else 'false'}\n"
    )
    return config


def signed_message(key_dir: Path, zone: dict) -> bytes:
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    zone["sel._domainkey.pass.test."] = {"TXT": ["v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()]}
    body = message("news@pass.test")
    sig = dkim.sign(body, b"sel", b"pass.test", pem, include_headers=[b"from", b"to", b"subject"])
    return sig + body


def message(from_addr: str) -> bytes:
    return (
        f"From: <{from_addr}>\r\nTo: alice@example.test\r\nSubject: bench\r\nMessage-ID: <{time.time_ns()}@x>\r\n"
        "\r\nHello.\r\n"
    ).encode()


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed: {data!r}")
        data += chunk
        lines = data.split(b"\r\n")[:-1]
        if lines and lines[-1][3:4] == b" ":
            return data


def session(repo: Path, config: Path, text: bytes | None, sender: str) -> float:
    """One inetd session; the child's CPU seconds."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.bind(("127.0.0.2", 0))
        client.settimeout(30)
        client.connect(listener.getsockname())
        served, _ = listener.accept()
    env = dict(os.environ, PYTHONPATH=str(repo))
    with served, client:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pymta.smtpd", "-C", str(config)],
            stdin=served.fileno(),
            stdout=served.fileno(),
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=config.parent,  # not the checkout: python -m puts the working directory first on sys.path
        )
        served.close()
        read_reply(client)
        if text is not None:
            for line in (b"EHLO client.example.net", f"MAIL FROM:<{sender}>".encode(), b"RCPT TO:<alice@example.test>"):
                client.sendall(line + b"\r\n")
                read_reply(client)
            client.sendall(b"DATA\r\n")
            read_reply(client)
            client.sendall(text + b".\r\n")
            reply = read_reply(client)
            if not reply.startswith(b"250"):
                raise RuntimeError(reply)
        client.sendall(b"QUIT\r\n")
        read_reply(client)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--repo", action="append", type=Path)
    args = parser.parse_args()
    repos = args.repo or [REPO]
    zone = dict(ZONE)
    dns = FakeDNS(zone)
    with tempfile.TemporaryDirectory() as tmp:
        on = make_tree(Path(tmp) / "on", dns.port, True)
        off = make_tree(Path(tmp) / "off", dns.port, False)
        signed = signed_message(Path(tmp), zone)
        kinds = {
            "greet": (on, None, ""),
            "off": (off, message("news@pass.test"), "bounce@pass.test"),
            "plain": (on, message("news@pass.test"), "bounce@pass.test"),
            "nodmarc": (on, message("news@plain.test"), "bounce@plain.test"),
            "signed": (on, signed, "bounce@pass.test"),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.n):
            for kind, (config, text, sender) in kinds.items():
                for repo in repos:
                    times.setdefault((str(repo), kind), []).append(session(repo, config, text, sender))
    dns.close()
    print(f"CPU ms per inetd session, median and minimum of {args.n}:")
    print(f"{'kind':10}" + "".join(f"{str(r)[-24:]:>26}" for r in repos))
    for kind in kinds:
        row = "".join(
            f"{statistics.median(times[(str(r), kind)]) * 1000:18.1f} {min(times[(str(r), kind)]) * 1000:7.1f}"
            for r in repos
        )
        print(f"{kind:10}{row}")


if __name__ == "__main__":
    main()
