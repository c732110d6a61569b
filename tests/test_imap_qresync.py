"""QRESYNC (RFC 7162 3.2) over the CONDSTORE index: ENABLE QRESYNC, SELECT/EXAMINE ... (QRESYNC (...)),
VANISHED (EARLIER), UID FETCH ... (CHANGEDSINCE n VANISHED), VANISHED instead of EXPUNGE, [CLOSED];
the index's kept expunges (bounded, old indexes loading); imapclient as a second real client resynchronising."""

from __future__ import annotations

import imaplib
import re
import socket
import time

import pytest

from test_imap import BOTH, exchange, login, msg, start_imapd

pytestmark = pytest.mark.slow

FLAGS = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)"
PERMANENT = "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)] Flags permitted"


def select_lines(exists, recent, unseen, uv, uidnext, hms, readonly=False):
    """What SELECT (or EXAMINE) answers before any QRESYNC lines."""
    return [
        FLAGS,
        "* OK [PERMANENTFLAGS ()] Read-only mailbox" if readonly else PERMANENT,
        f"* {exists} EXISTS",
        f"* {recent} RECENT",
        *([f"* OK [UNSEEN {unseen}] First unseen"] if unseen else []),
        f"* OK [UIDVALIDITY {uv}] UIDs valid",
        f"* OK [UIDNEXT {uidnext}] Predicted next UID",
        f"* OK [HIGHESTMODSEQ {hms}] Highest",
    ]


def uidvalidity(m: imaplib.IMAP4, name: str = "INBOX") -> int:
    line = exchange(m, f"STATUS {name} (UIDVALIDITY)")[0]
    return int(re.search(r"UIDVALIDITY (\d+)", line).group(1))


def six_messages(port) -> imaplib.IMAP4:
    """A session that appended six messages (UIDs 1-6, MODSEQ 2-7; HIGHESTMODSEQ 7)."""
    b = login(port)
    for i in range(6):
        b.append("INBOX", None, None, msg(f"q{i}"))
    return b


@pytest.mark.parametrize("mode", BOTH)
def test_select_qresync_after_changes_by_another_session(mailsys, mode):
    port = start_imapd(mailsys, mode)
    b = six_messages(port)
    a = login(port)
    uv = uidvalidity(a)
    assert "QRESYNC" in exchange(a, "CAPABILITY")[0].split()
    assert exchange(a, "ENABLE QRESYNC") == ["* ENABLED QRESYNC", "OK ENABLE completed"]
    assert exchange(a, "SELECT INBOX") == [*select_lines(6, 6, 1, uv, 7, 7), "OK [READ-WRITE] SELECT completed"]
    exchange(b, "SELECT INBOX")
    assert exchange(b, "STORE 2 +FLAGS (\\Seen)") == ["* 2 FETCH (FLAGS (\\Seen))", "OK STORE completed"]  # MODSEQ 8
    exchange(b, "STORE 3 +FLAGS.SILENT (\\Deleted)")  # 9
    assert exchange(b, "EXPUNGE") == ["* 3 EXPUNGE", "OK EXPUNGE completed"]  # 10: b did not enable QRESYNC
    # a, selected with QRESYNC, learns of the expunge by VANISHED and of the new HIGHESTMODSEQ in the tagged OK
    assert exchange(a, "NOOP") == [
        "* VANISHED 3",
        "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (8))",
        "OK [HIGHESTMODSEQ 10] NOOP completed",
    ]
    assert exchange(a, "NOOP") == ["OK NOOP completed"]
    assert exchange(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 7 VANISHED)") == [
        "* VANISHED (EARLIER) 3",
        "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (8))",
        "OK FETCH completed",
    ]
    assert exchange(a, "UID FETCH 4:* (FLAGS) (VANISHED CHANGEDSINCE 7)") == ["OK FETCH completed"]
    assert exchange(a, "UID FETCH 1:3 (FLAGS) (CHANGEDSINCE 8 VANISHED)") == [
        "* VANISHED (EARLIER) 3",
        "OK FETCH completed",
    ]
    # a client that cached the mailbox at HIGHESTMODSEQ 7 comes back
    c = login(port)
    assert exchange(c, "ENABLE QRESYNC") == ["* ENABLED QRESYNC", "OK ENABLE completed"]
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv} 7))") == [
        *select_lines(5, 0, 1, uv, 7, 10),
        "* VANISHED (EARLIER) 3",
        "* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (8))",
        "OK [READ-WRITE] SELECT completed",
    ]
    # known UIDs limit both; a MODSEQ after the flag change leaves only the expunge; [CLOSED] first
    assert exchange(c, f"EXAMINE INBOX (QRESYNC ({uv} 7 3:10))") == [
        "* OK [CLOSED] Previous mailbox closed",
        *select_lines(5, 0, 1, uv, 7, 10, readonly=True),
        "* VANISHED (EARLIER) 3",
        "OK [READ-ONLY] EXAMINE completed",
    ]
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv} 8 1:6))")[-2:] == [
        "* VANISHED (EARLIER) 3",
        "OK [READ-WRITE] SELECT completed",
    ]
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv} 10))") == [
        "* OK [CLOSED] Previous mailbox closed",
        *select_lines(5, 0, 1, uv, 7, 10),
        "OK [READ-WRITE] SELECT completed",
    ]
    # another UIDVALIDITY: the client's cache is void, nothing more is said (RFC 7162 3.2.5)
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv + 1} 7))") == [
        "* OK [CLOSED] Previous mailbox closed",
        *select_lines(5, 0, 1, uv, 7, 10),
        "OK [READ-WRITE] SELECT completed",
    ]
    # a MODSEQ of 0 (Dovecot takes it too): every message is new to the client
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv} 0 1:4))")[-5:] == [
        "* VANISHED (EARLIER) 3",
        "* 1 FETCH (UID 1 FLAGS () MODSEQ (2))",
        "* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (8))",
        "* 3 FETCH (UID 4 FLAGS () MODSEQ (5))",
        "OK [READ-WRITE] SELECT completed",
    ]


@pytest.mark.parametrize("mode", BOTH)
def test_qresync_errors(mailsys, mode):
    port = start_imapd(mailsys, mode)
    b = six_messages(port)
    uv = uidvalidity(b)
    b.select("INBOX")
    # not enabled: SELECT's QRESYNC and FETCH's VANISHED are BAD; the failed SELECT closed INBOX
    assert exchange(b, f"SELECT INBOX (QRESYNC ({uv} 1))") == ["BAD QRESYNC not enabled"]
    assert exchange(b, "FETCH 1 UID") == ["BAD Command FETCH not valid in this state"]
    b.select("INBOX")
    assert exchange(b, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)") == ["BAD QRESYNC not enabled"]
    assert exchange(b, "ENABLE QRESYNC") == ["BAD Command ENABLE not valid in this state"]  # RFC 5161 3.1
    exchange(b, "UNSELECT")
    assert exchange(b, "ENABLE QRESYNC CONDSTORE") == ["* ENABLED QRESYNC CONDSTORE", "OK ENABLE completed"]
    assert exchange(b, "SELECT INBOX")[-1] == "OK [READ-WRITE] SELECT completed"
    assert exchange(b, "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)") == ["BAD Bad FETCH modifier"]  # UID FETCH only
    assert exchange(b, "UID FETCH 1:* (FLAGS) (VANISHED)") == ["BAD VANISHED used without CHANGEDSINCE"]
    assert exchange(b, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE x VANISHED)") == ["BAD Bad FETCH modifier"]
    for params, answer in [
        (f"({uv})", "BAD Invalid QRESYNC parameters"),
        (f"({uv} 1 1:* )", "BAD Invalid QRESYNC known-uids"),
        (f"({uv} 1 1:6 (1:3 1,2))", "BAD Invalid QRESYNC sets"),
        (f"({uv} 1 1:6 (1:2))", "BAD Invalid QRESYNC known set"),
        (f"({uv} 1 1:6 (1:2 1:2) x)", "BAD Invalid QRESYNC parameters"),
        ("(x 1)", "BAD Invalid QRESYNC parameters"),
    ]:
        assert exchange(b, f"SELECT INBOX (QRESYNC {params})") == [
            "* OK [CLOSED] Previous mailbox closed",
            answer,
        ], params
        assert exchange(b, "SELECT INBOX")[-1] == "OK [READ-WRITE] SELECT completed"
    assert exchange(b, "SELECT INBOX (QRESYNC)") == [
        "* OK [CLOSED] Previous mailbox closed",
        "BAD QRESYNC parameters missing",
    ]
    assert exchange(b, "SELECT Nowhere (QRESYNC (1 1))") == ["NO [NONEXISTENT] Mailbox does not exist"]


@pytest.mark.parametrize("mode", BOTH)
def test_vanished_replaces_expunge(mailsys, mode):
    """EXPUNGE, UID EXPUNGE, MOVE and another session's expunges (NOOP, IDLE) give VANISHED
    once QRESYNC is on; no VANISHED during FETCH; STORE answers carry the UID."""
    port = start_imapd(mailsys, mode)
    b = six_messages(port)
    a = login(port)
    archive_uv = uidvalidity(a, "Archive")
    exchange(a, "ENABLE QRESYNC")
    exchange(a, "SELECT INBOX")
    assert exchange(a, "STORE 1 +FLAGS (\\Flagged)") == [
        "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (8))",
        "OK STORE completed",
    ]
    exchange(a, "STORE 2:3 +FLAGS.SILENT (\\Deleted)")  # 9, 10
    assert exchange(a, "EXPUNGE") == ["* VANISHED 2:3", "OK [HIGHESTMODSEQ 11] EXPUNGE completed"]
    exchange(a, "STORE 2:3 +FLAGS.SILENT (\\Deleted)")  # UIDs 4, 5: 12, 13
    assert exchange(a, "UID EXPUNGE 5:6") == ["* VANISHED 5", "OK [HIGHESTMODSEQ 14] EXPUNGE completed"]
    assert exchange(a, "EXPUNGE") == ["* VANISHED 4", "OK [HIGHESTMODSEQ 15] EXPUNGE completed"]
    assert exchange(a, "EXPUNGE") == ["OK EXPUNGE completed"]
    assert exchange(a, "MOVE 1 Archive") == [
        f"* OK [COPYUID {archive_uv} 1 1] Moved",
        "* VANISHED 1",
        "OK [HIGHESTMODSEQ 16] MOVE completed",
    ]
    # another session expunges: nothing during FETCH, VANISHED at NOOP
    for i in range(3):
        b.append("INBOX", None, None, msg(f"r{i}"))  # UIDs 7-9, MODSEQ 17-19
    assert exchange(a, "NOOP") == ["* 4 EXISTS", "* 4 RECENT", "OK NOOP completed"]
    b.select("INBOX")
    b.store("2", "+FLAGS.SILENT", "(\\Deleted)")  # UID 7: 20
    b.expunge()  # 21
    assert exchange(a, "FETCH 1:2 (UID)") == [
        "* 1 FETCH (UID 6)",
        "* 2 FETCH (UID 7)",
        "OK [EXPUNGEISSUED] Some messages were already expunged",
    ]
    assert exchange(a, "NOOP") == ["* VANISHED 7", "OK [HIGHESTMODSEQ 21] NOOP completed"]
    # and while idling
    sock = a.sock
    sock.sendall(b"i1 IDLE\r\n")
    assert sock.recv(100) == b"+ idling\r\n"
    time.sleep(0.3)
    b.store("3", "+FLAGS.SILENT", "(\\Deleted)")  # UID 9
    b.expunge()
    assert _read_until(sock, b"* VANISHED 9\r\n") == b"* VANISHED 9\r\n"
    sock.sendall(b"DONE\r\n")
    assert _read_until(sock, b"i1 OK") == b"i1 OK IDLE terminated\r\n"
    # a file another program removed (pop3d, mutt) is an expunge too
    assert exchange(a, "FETCH 1:* (UID)") == ["* 1 FETCH (UID 6)", "* 2 FETCH (UID 8)", "OK FETCH completed"]
    [victim] = [p for p in (mailsys.maildir() / "cur").iterdir() if p.name.startswith(_base_of(mailsys, 8))]
    victim.unlink()
    assert exchange(a, "NOOP") == ["* VANISHED 8", "OK [HIGHESTMODSEQ 24] NOOP completed"]
    uv = uidvalidity(a)
    c = login(port)
    exchange(c, "ENABLE QRESYNC")
    assert exchange(c, f"SELECT INBOX (QRESYNC ({uv} 20 1:9))")[-2:] == [
        "* VANISHED (EARLIER) 7:9",
        "OK [READ-WRITE] SELECT completed",
    ]


def _base_of(system, uid: int) -> str:
    """The Maildir base name of INBOX's message ``uid``, from its index."""
    for line in (system.maildir() / "pymail-index").read_text().splitlines():
        parts = line.split(" ")
        if parts[0] == str(uid) and len(parts) == 8:
            return parts[7]
    raise KeyError(uid)


def _read_until(sock: socket.socket, want: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    deadline = time.time() + timeout
    while want not in buf:
        if time.time() > deadline:
            raise AssertionError(f"{want!r} not seen in {buf!r}")
        buf += sock.recv(4096)
    return buf
