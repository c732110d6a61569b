"""Every directory of a mailbox is private (0700), as Dovecot makes them,
whoever makes it: the deliverer and the rules (tests/test_rules.py), IMAP
CREATE and RENAME, pymail user add (tests/test_cli.py)."""

from __future__ import annotations

import imaplib
from pathlib import Path

from conftest import PASSWORD


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
