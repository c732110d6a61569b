"""Every directory of a mailbox is private (0700), as Dovecot makes them,
whoever makes it: the deliverer and the rules (tests/test_rules.py), IMAP
CREATE and RENAME, pymail user add."""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import PASSWORD, REPO, MailSystem, env_with_repo


def open_dirs(top: Path) -> list[str]:
    """The directories under ``top`` (itself included) that others may enter."""
    dirs = [d for d in [top, *top.rglob("*")] if d.is_dir()]
    return [f"{d} {oct(d.stat().st_mode & 0o777)}" for d in dirs if d.stat().st_mode & 0o077]


def test_imap_created_folders_are_private(mailsys):
    port = mailsys.start_daemon("pyimap.imapd", "inetd")
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert m.login("alice@example.test", PASSWORD)[0] == "OK"
    for name in ("Work", "Work/Projects", "Lists"):
        assert m.create(name)[0] == "OK"
    assert m.rename("Lists", "Old")[0] == "OK"
    m.logout()
    box = mailsys.maildir()
    assert {d.name for d in box.rglob("*") if d.is_dir()} >= {".Work", ".Work.Projects", ".Old", "cur", "new", "tmp"}
    assert open_dirs(box) == []


def test_user_add_with_uid_gid_home_owns_its_maildir(tls_files):
    # pymail user add --uid/--gid/--home: the users-file fields, the Maildir given to them,
    # and a delivery as root runs as them (pymda-deliver -d with the bare name)
    if os.geteuid() != 0:
        pytest.skip("needs root to give the Maildir away")
    top = Path(tempfile.mkdtemp(prefix="pymail-uid-"))
    os.chmod(top, 0o755)  # reachable by uid 4242
    try:
        system = MailSystem(top, tls_files)
        argv = [sys.executable, str(REPO / "bin" / "pymail"), "user", "add", "-C", str(system.config)]
        argv += ["carol@example.test", "--uid", "4242", "--gid", "4343", "--home", "/srv/carol", "--password-stdin"]
        done = subprocess.run(argv, input=b"pw of carol\n", capture_output=True, env=env_with_repo(), timeout=60)
        assert done.returncode == 0, done.stderr
        [line] = [x for x in (top / "users").read_text().splitlines() if x.startswith("carol@")]
        assert line.split(":")[2:] == ["4242", "4343", "", "/srv/carol", "", ""]
        box = system.maildir("carol")
        assert {(p.stat().st_uid, p.stat().st_gid) for p in [box, *box.rglob("*")]} == {(4242, 4343)}
        assert (box.parent.stat().st_uid, open_dirs(box)) == (0, [])
        proc = system.run("pymda.deliver", "-d", "carol", input=b"Subject: hi\n\nx\n")
        assert proc.returncode == 0, proc.stderr
        [msg] = system.messages("carol")
        assert (msg.stat().st_uid, msg.stat().st_gid) == (4242, 4343)
        bad = subprocess.run([*argv[:6], "dave@example.test", "--home", "relative"], capture_output=True, timeout=60)
        assert bad.returncode == 65 and b"absolute" in bad.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)
