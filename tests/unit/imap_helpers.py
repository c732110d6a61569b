"""A tiny in-process driver for the sans-I/O IMAP machine (shared by the IMAP unit tests)."""

from __future__ import annotations

import re
from pathlib import Path

from pyimap.imap_server import IMAPServer, IMAPSettings
from pyimap.store import UserStore
from pymta.lib.sansio import CLOSE, STARTTLS, ConnectionInfo, Job, Stream

PASSWORD = b"pw"


class FakeBackend:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.logins = []

    def authenticate(self, info, user, password):
        self.logins.append((user, password))
        if user in ("alice", "bob") and password == PASSWORD:
            return user
        return None

    def open_store(self, account):
        store = UserStore(self.root / account)
        store.ensure()
        return store


class Client:
    """Feeds the machine bytes and collects what it answers."""

    def __init__(self, root: Path, *, tls_available=False, plaintext_ok=True, settings=None, backend=None) -> None:
        self.backend = backend or FakeBackend(root)
        self.settings = settings or IMAPSettings(plaintext_ok=plaintext_ok)
        self.server = IMAPServer(self.settings, self.backend)
        self.closed = False
        self.starttls = False
        info = ConnectionInfo(peer_ip="127.0.0.1", service="imap", tls_available=tls_available)
        self.greeting = self._run(self.server.connection_made(info))

    def _run(self, actions) -> bytes:
        out = bytearray()
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, (bytes, bytearray)):
                out += a
            elif isinstance(a, Stream):
                for chunk in a.chunks:
                    out += chunk
            elif isinstance(a, Job):
                pending = list(self.server.job_done(a.run())) + pending
            elif a is STARTTLS:
                self.starttls = True
            elif a is CLOSE:
                self.closed = True
        return bytes(out)

    def send(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode()
        return self._run(self.server.data_received(data))

    def cmd(self, line: str) -> str:
        return self.send(line + "\r\n").decode("utf-8", "replace")

    def lines(self, line: str) -> list[str]:
        return self.cmd(line).split("\r\n")[:-1]

    def timeout(self) -> bytes:
        return self._run(self.server.timed_out())

    def login(self, user="alice"):
        r = self.cmd(f"L1 LOGIN {user} pw")
        assert "L1 OK" in r, r
        return r


def make_message(subject="hi", frm="a@example.org", to="b@example.org", body="body\n", extra="") -> bytes:
    return (
        f"From: {frm}\nTo: {to}\nSubject: {subject}\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n{extra}\n{body}"
    ).encode()


def deliver(root: Path, user="alice", data: bytes | None = None, folder: str = "") -> Path:
    from pymda.maildir import deliver as mdeliver

    path = Path(root) / user
    if folder:
        path = path / folder
    return mdeliver(path, data or make_message(), folder=bool(folder), fsync=False)


def tagged(text: str, tag: str) -> str:
    for line in text.split("\r\n"):
        if line.startswith(tag + " "):
            return line
    raise AssertionError(f"no tagged reply {tag} in {text!r}")


def strip_uidvalidity(text: str) -> str:
    return re.sub(r"UIDVALIDITY \d+", "UIDVALIDITY V", text)
