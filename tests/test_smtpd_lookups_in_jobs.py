"""smtpd answers MAIL and RCPT on the event loop from memory only (issue 14,
goal 4: no disk I/O on the loop).  The users file, the aliases file, an
``:include:`` list and a login's rate file are read in Jobs: a known
recipient is accepted from the tables a Job read, as long as inotify
(``dirwatch.FileChanges``) reported no change to either file since; an
unknown one is looked up again from the disk (a user added this instant
is accepted); a login's MAIL and RCPT are Jobs."""

from __future__ import annotations

import base64
import builtins
import os

import pytest

from conftest import PASSWORD
from pymta import smtpd
from pymta.lib import config, jobslots
from pymta.lib.sansio import ConnectionInfo, Job


class Loop:
    """Runs one session as the asyncio driver does, minus the socket: a Job
    runs flagged as one (the driver's thread); any stat or open of a file in
    the tree outside a Job is recorded in ``touched``."""

    def __init__(self, system, monkeypatch, service: str = "smtp", peer: str = "192.0.2.9") -> None:
        self.root = str(system.root)
        self.in_job = False
        self.touched: list[str] = []
        self.jobs: list[str] = []
        self.replies: list[str] = []
        monkeypatch.setattr(jobslots, "_submit", lambda fn: fn())  # as under the asyncio driver
        self.m = smtpd.build(config.load(system.config), service)()  # as a daemon before its first client
        for module, name in ((os, "stat"), (os, "open"), (builtins, "open")):
            monkeypatch.setattr(module, name, self._guard(getattr(module, name)))
        self._run(self.m.connection_made(ConnectionInfo(peer_ip=peer, service=service, local_ip="127.0.0.1")))

    def _guard(self, real):
        def guarded(path, *args, **kw):
            if not self.in_job and str(path).startswith(self.root):
                self.touched.append(str(path))
            return real(path, *args, **kw)

        return guarded

    def _run(self, actions) -> None:
        for action in actions:
            if isinstance(action, bytes):
                self.replies += action.decode().split("\r\n")[:-1]
            elif isinstance(action, Job):
                self.jobs.append(repr(action))
                self.in_job = True
                try:
                    result = action.run()
                finally:
                    self.in_job = False
                self._run(self.m.job_done(result))

    def say(self, line: str) -> str:
        """Send one command; its last reply line."""
        before = len(self.replies)
        self._run(self.m.data_received(line.encode() + b"\r\n"))
        assert len(self.replies) > before, f"no reply to {line!r}"
        return self.replies[-1]


def test_a_known_recipient_is_answered_from_memory_an_unknown_one_from_the_disk(mailsys, monkeypatch):
    loop = Loop(mailsys, monkeypatch)
    assert loop.say("EHLO client.example.net").startswith("250 ")
    assert loop.say("MAIL FROM:<a@example.net>").startswith("250 ")
    assert loop.say("RCPT TO:<alice@example.test>").startswith("250 ")  # nothing read yet: a Job
    assert len(loop.jobs) == 1
    assert loop.say("RCPT TO:<bob@example.test>").startswith("250 ")  # from memory: no Job
    assert len(loop.jobs) == 1
    assert loop.say("RCPT TO:<nobody@example.test>").startswith("550 5.1.1")  # confirmed from the disk
    assert len(loop.jobs) == 2
    users = mailsys.root / "users"  # a user added this instant (pathlib: not the guarded open)
    users.write_text(users.read_text() + users.read_text().splitlines()[0].replace("alice@", "carol@", 1) + "\n")
    assert loop.say("RCPT TO:<carol@example.test>").startswith("250 ")
    assert len(loop.jobs) == 3
    assert loop.touched == []


@pytest.mark.parametrize("change", ["rewrite", "replace", "alias"])
def test_a_change_to_the_files_is_seen_by_the_next_rcpt(mailsys, monkeypatch, change):
    """A user removed (the file written in place or replaced), or an alias
    leading nowhere now: the very next RCPT is refused, from the disk."""
    loop = Loop(mailsys, monkeypatch)
    loop.say("HELO client.example.net")
    loop.say("MAIL FROM:<a@example.net>")
    assert loop.say("RCPT TO:<bob@example.test>").startswith("250 ")
    assert loop.say("RCPT TO:<postmaster@example.test>").startswith("250 ")
    assert len(loop.jobs) == 1  # the second from memory
    users, aliases = mailsys.root / "users", mailsys.root / "aliases"
    if change == "alias":
        aliases.write_text("postmaster: ghost\n")
        gone = "postmaster@example.test"
    else:
        kept = "".join(line + "\n" for line in users.read_text().splitlines() if not line.startswith("bob@"))
        if change == "rewrite":
            users.write_text(kept)
        else:
            (mailsys.root / "users.new").write_text(kept)
            (mailsys.root / "users.new").rename(users)
        gone = "bob@example.test"
    loop.say("RSET")  # a new transaction: a recipient of this one is not asked again
    loop.say("MAIL FROM:<a@example.net>")
    assert loop.say(f"RCPT TO:<{gone}>").startswith("550 5.1.1")
    assert len(loop.jobs) == 2
    assert loop.say("RCPT TO:<alice@example.test>").startswith("250 ")  # read again: memory will do
    assert len(loop.jobs) == 2
    assert loop.touched == []


def test_an_include_list_is_read_in_a_job(mailsys, monkeypatch):
    (mailsys.root / "team.list").write_text("bob\n")
    (mailsys.root / "aliases").write_text(f"postmaster: alice\nteam: :include:{mailsys.root}/team.list\n")
    loop = Loop(mailsys, monkeypatch)
    loop.say("HELO client.example.net")
    loop.say("MAIL FROM:<a@example.net>")
    assert loop.say("RCPT TO:<alice@example.test>").startswith("250 ")
    assert loop.say("RCPT TO:<team@example.test>").startswith("250 ")
    assert len(loop.jobs) == 2  # the include needed the disk, alice did not after the first look
    assert loop.touched == []


@pytest.mark.parametrize("sender", ["alice@example.test", "bob@example.test"])
def test_a_logins_mail_and_rcpt_are_jobs(mailsys, monkeypatch, sender):
    """The sender check (users, aliases) and the rate file with its lock: never on the loop."""
    loop = Loop(mailsys, monkeypatch, service="submission", peer="127.0.0.1")
    loop.say("EHLO client.example.net")
    token = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()
    assert loop.say(f"AUTH PLAIN {token}").startswith("235 ")
    jobs = len(loop.jobs)
    reply = loop.say(f"MAIL FROM:<{sender}>")
    assert len(loop.jobs) == jobs + 1
    if sender.startswith("bob@"):
        assert reply.startswith("553 5.7.1")  # not alice's address
        return
    assert reply.startswith("250 ")
    assert loop.say("RCPT TO:<bob@example.test>").startswith("250 ")
    assert loop.say("RCPT TO:<someone@example.net>").startswith("250 ")  # relayed for a login
    assert len(loop.jobs) == jobs + 3
    assert loop.touched == []


@pytest.mark.parametrize("cause", ["no inotify", "inetd"])
def test_without_a_watch_every_local_rcpt_is_a_job(mailsys, monkeypatch, capfd, cause):
    """Out of inotify instances; or under inetd, where one session has no
    loop to keep free and makes no inotify instance (nor imports ctypes)."""
    from pymta.lib import dirwatch

    def no_inotify(paths):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(dirwatch, "FileChanges", no_inotify)
    loop = Loop(mailsys, monkeypatch)
    if cause == "inetd":
        monkeypatch.setattr(jobslots, "_submit", None)
    loop.say("HELO client.example.net")
    loop.say("MAIL FROM:<a@example.net>")
    for user in ("alice", "bob", "postmaster"):
        assert loop.say(f"RCPT TO:<{user}@example.test>").startswith("250 ")
    assert len(loop.jobs) == 3
    assert loop.touched == []
    assert capfd.readouterr().err.count("each lookup is a job") == (1 if cause == "no inotify" else 0)
