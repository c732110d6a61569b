"""A real client: isync's mbsync syncs a 500-message mailbox both ways, byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PASSWORD
from test_imap import ALICE, start_imapd

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) not installed")


def message(i: int, side: str) -> bytes:
    body = "".join(f"line {n} of message {i} from the {side}\n" for n in range(i % 40 + 1))
    return (
        f"From: sender{i}@example.org\nTo: {ALICE}\nSubject: {side} message {i}\n"
        f"Message-ID: <{side}{i}@example.org>\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n\n{body}"
    ).encode()


def contents(maildir: Path) -> dict[bytes, bytes]:
    out = {}
    for sub in ("new", "cur"):
        for p in (maildir / sub).iterdir():
            data = p.read_bytes().replace(b"\r\n", b"\n")
            # mbsync's own bookkeeping header (isync adds X-TUID to messages it
            # propagates, to find them again); everything else must be identical.
            data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"X-TUID: "))
            mid = [line for line in data.split(b"\n") if line.lower().startswith(b"message-id:")][0]
            out[mid] = data
    return out


def test_mbsync_both_ways(mailsys, tmp_path):
    from pymda import maildir

    server_box = mailsys.maildir("alice")
    for i in range(500):
        maildir.deliver(server_box, message(i, "server"), fsync=False)
    port = start_imapd(mailsys, "listen")
    local = tmp_path / "local"
    local.mkdir()
    (tmp_path / "state").mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount test
Host 127.0.0.1
Port {port}
User {ALICE}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel inbox
Far :remote:INBOX
Near :local:INBOX
Create Both
Expunge Both
SyncState {tmp_path}/state/
Sync All
""")

    def sync():
        r = subprocess.run(["mbsync", "-c", str(rc), "inbox"], capture_output=True, timeout=300)
        assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-2000:]

    sync()
    got = contents(local / "INBOX")
    want = contents(server_box)
    assert len(got) == 500 and got == want
    # push 500 new messages the other way
    for i in range(500):
        maildir.deliver(local / "INBOX", message(i, "client"), fsync=False)
    sync()
    server = contents(server_box)
    assert len(server) == 1000
    assert server == contents(local / "INBOX")
    # flags travel too: mark 10 seen locally, sync, check the server's :2,S
    files = sorted(list((local / "INBOX" / "new").iterdir()) + list((local / "INBOX" / "cur").iterdir()))[:10]
    for p in files:
        base = p.name.split(":2,")[0]
        flags = p.name.split(":2,")[1] if ":2," in p.name else ""
        os.rename(p, local / "INBOX" / "cur" / f"{base}:2,{''.join(sorted(set(flags + 'F')))}")
    sync()
    flagged = [p for p in (server_box / "cur").iterdir() if "F" in p.name.split(":2,")[-1]]
    assert len(flagged) == 10
    sync()  # idempotent second run
    assert len(contents(server_box)) == 1000
