"""QRESYNC (RFC 7162 3.2) over the CONDSTORE index: ENABLE QRESYNC, SELECT/EXAMINE ... (QRESYNC (...)),
VANISHED (EARLIER), UID FETCH ... (CHANGEDSINCE n VANISHED), VANISHED instead of EXPUNGE, [CLOSED];
the index's kept expunges (bounded, old indexes loading); imapclient as a second real client resynchronising."""

from __future__ import annotations

import imaplib
import random
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


def _strip_expunges(index_file) -> None:
    """Make ``index_file`` look written before the index kept expunges (no E or V lines)."""
    import os

    lines = [line for line in index_file.read_bytes().split(b"\n") if not line.startswith((b"E ", b"V "))]
    tmp = index_file.with_name(index_file.name + ".old")
    tmp.write_bytes(b"\n".join(lines))
    os.replace(tmp, index_file)


@pytest.mark.parametrize("mode", BOTH)
def test_old_index_loads_and_qresync_falls_back(mailsys, mode):
    """An index from before the expunges were kept: every absent known UID is
    VANISHED (EARLIER) for a MODSEQ before it (RFC 7162 3.2.5.1), less what the
    sequence match data shows the client knows (3.2.5.2); precise again after."""
    port = start_imapd(mailsys, mode)
    b = six_messages(port)
    uv = uidvalidity(b)
    b.select("INBOX")
    b.store("2,4", "+FLAGS.SILENT", "(\\Deleted)")  # MODSEQ 8, 9
    b.expunge()  # 10
    index_file = mailsys.maildir() / "pymail-index"
    assert b"\nE 0\n" in index_file.read_bytes() and b"\nV 10 2,4\n" in index_file.read_bytes()
    _strip_expunges(index_file)
    a = login(port)
    exchange(a, "ENABLE QRESYNC")
    assert exchange(a, f"SELECT INBOX (QRESYNC ({uv} 9))") == [
        *select_lines(4, 0, 1, uv, 7, 10),
        "* VANISHED (EARLIER) 2,4",
        "OK [READ-WRITE] SELECT completed",
    ]
    for params, last in [
        (f"{uv} 10", "* OK [HIGHESTMODSEQ 10] Highest"),  # not older than the floor: precise, nothing gone
        (f"{uv} 9 3:6", "* VANISHED (EARLIER) 4"),
        # the client says message 2 was UID 3: UIDs up to 3 it knows already (Dovecot's reading)
        (f"{uv} 9 1:6 (1:2 1,3)", "* VANISHED (EARLIER) 4"),
        (f"{uv} 9 1:6 (1:2 2,3)", "* VANISHED (EARLIER) 2,4"),  # message 1 is not UID 2: no help
    ]:
        assert exchange(a, f"SELECT INBOX (QRESYNC ({params}))")[-2:] == [last, "OK [READ-WRITE] SELECT completed"]
    assert exchange(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 9 VANISHED)") == [
        "* VANISHED (EARLIER) 2,4",
        "OK FETCH completed",
    ]
    # new expunges are kept from now on
    exchange(a, "STORE 1 +FLAGS.SILENT (\\Deleted)")  # 11
    assert exchange(a, "EXPUNGE") == ["* VANISHED 1", "OK [HIGHESTMODSEQ 12] EXPUNGE completed"]
    data = index_file.read_bytes()
    assert b"\nE 10\n" in data and b"\nV 12 1\n" in data
    assert exchange(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 10 VANISHED)") == [
        "* VANISHED (EARLIER) 1",
        "OK FETCH completed",
    ]
    assert exchange(a, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 9 VANISHED)")[0] == "* VANISHED (EARLIER) 1:2,4"


def test_kept_expunges_are_bounded(tmp_path, monkeypatch):
    """The index keeps MAX_VANISHED_RANGES ranges; past them the oldest go and the
    floor rises: vanished_since() before it says None, and QRESYNC falls back."""
    from pyimap import qresync
    from pymda import index as idx
    from pymda import maildir

    monkeypatch.setattr(idx, "MAX_VANISHED_RANGES", 3)
    box = tmp_path / "box"
    for i in range(10):
        maildir.deliver(box, b"Subject: %d\n\nx\n" % i, fsync=False)
    folder = idx.FolderIndex(box)
    assert folder.sync().highestmodseq == 2
    for uid in (1, 3, 5, 7):
        folder.expunge([uid])  # MODSEQ 3, 4, 5, 6
    snap = idx.FolderIndex(box).sync()  # as read back from the file
    assert (snap.expunge_floor, snap.vanished) == (3, [(4, [(3, 3)]), (5, [(5, 5)]), (6, [(7, 7)])])
    assert sorted(snap.vanished_since(3)) == [(3, 3), (5, 5), (7, 7)]
    assert snap.vanished_since(4) == [(7, 7), (5, 5)]
    assert snap.vanished_since(2) is None
    view = list(snap.entries)
    assert qresync.vanished(snap, view, 4, qresync.ALL_UIDS) == [(5, 5), (7, 7)]
    assert qresync.vanished(snap, view, 2, qresync.ALL_UIDS) == [(1, 1), (3, 3), (5, 5), (7, 7)]
    assert qresync.vanished(snap, view, 2, [(4, 20)]) == [(5, 5), (7, 7)]
    # one expunge of many UIDs is one line, its UIDs as ranges
    folder.expunge([2, 4, 6, 8, 9])
    snap = idx.FolderIndex(box).sync()
    assert snap.vanished[-1] == (7, [(2, 2), (4, 4), (6, 6), (8, 9)]) and snap.expunge_floor == 6
    assert b"\nV 7 2,4,6,8:9\n" in (box / idx.INDEX_NAME).read_bytes()


# -- a second real client: imapclient keeps a copy of INBOX and resynchronises with QRESYNC --


class Mirror:
    """What a QRESYNC client keeps of INBOX: UIDVALIDITY, HIGHESTMODSEQ and, per UID,
    (flags without \\Recent, MODSEQ); kept up to date only from the server's answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.uv = 0
        self.hms = 0
        self.cache: dict[int, tuple[frozenset, int]] = {}
        self.told: dict[bytes, int] = {}  # what the answers held: b"VANISHED", b"EARLIER", b"FETCH" -> count

    def connect(self):
        from imapclient import IMAPClient

        from conftest import PASSWORD
        from test_imap import ALICE

        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        c.login(ALICE, PASSWORD)
        assert c.enable("QRESYNC") == [b"QRESYNC"]
        return c

    @staticmethod
    def _uids(token) -> list[int]:
        if isinstance(token, int):
            return [token]
        out = []
        for part in token.decode().split(","):
            lo, _, hi = part.partition(":")
            out.extend(range(int(lo), int(hi or lo) + 1))
        return out

    def apply(self, resps) -> None:
        """Untagged responses -> the cache: VANISHED (EARLIER or not), FETCH, HIGHESTMODSEQ."""
        for r in resps:
            if r[0] == b"VANISHED":
                kind = b"EARLIER" if isinstance(r[1], tuple) else b"VANISHED"
                self.told[kind] = self.told.get(kind, 0) + 1
                for uid in self._uids(r[-1]):
                    self.cache.pop(uid, None)
            elif len(r) == 3 and r[1] == b"FETCH":
                items = dict(zip(r[2][::2], r[2][1::2], strict=True))
                self.told[b"FETCH"] = self.told.get(b"FETCH", 0) + 1
                self.cache[items[b"UID"]] = (frozenset(items[b"FLAGS"]) - {b"\\Recent"}, items[b"MODSEQ"][0])
            elif r[0] == b"OK" and r[1].startswith(b"[HIGHESTMODSEQ "):
                self.hms = int(r[1].split(b"]")[0].split()[1])

    def fetch_new(self, c) -> None:
        """Messages above the last UID known (UID n:* names the last message when none is)."""
        top = max(self.cache, default=0)
        new = [u for u in c.search(["UID", f"{top + 1}:*"]) if u > top]
        for uid, d in c.fetch(new, ["FLAGS", "MODSEQ"]).items() if new else ():
            self.cache[uid] = (frozenset(d[b"FLAGS"]) - {b"\\Recent"}, d[b"MODSEQ"][0])

    def first_sync(self) -> None:
        c = self.connect()
        info = c.select_folder("INBOX")
        self.uv, self.hms, self.cache = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"], {}
        self.fetch_new(c)
        c.logout()

    def resync_at_select(self) -> None:
        """A new connection: SELECT INBOX (QRESYNC (uidvalidity modseq known-uids)), then the new mail."""
        from pyimap.qresync import merge, text

        c = self.connect()
        known = text(merge((u, u) for u in self.cache))
        tag = c._imap._command(
            "SELECT", "INBOX", f"(QRESYNC ({self.uv} {self.hms} {known or '1:*'}))".replace(" 1:*", "")
        )
        _, resps = c._consume_until_tagged_response(tag, "SELECT")
        c._imap.state = "SELECTED"
        self.apply(resps)
        self.fetch_new(c)
        c.logout()

    def resync_by_uid_fetch(self, c) -> None:
        """Still selected: UID FETCH 1:* (FLAGS) (CHANGEDSINCE hms VANISHED), then the new mail."""
        tag = c._imap._command("UID", "FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {self.hms} VANISHED)")
        _, resps = c._consume_until_tagged_response(tag, "FETCH")
        self.apply(resps)
        self.fetch_new(c)

    def server_view(self) -> tuple[int, dict]:
        c = self.connect()
        info = c.select_folder("INBOX", readonly=True)
        uids = c.search("ALL")
        data = c.fetch(uids, ["FLAGS", "MODSEQ"]) if uids else {}
        c.logout()
        view = {u: (frozenset(d[b"FLAGS"]) - {b"\\Recent"}, d[b"MODSEQ"][0]) for u, d in data.items()}
        return info[b"HIGHESTMODSEQ"], view


def _other_session_changes(rng: random.Random, other: imaplib.IMAP4, mailsys, round_no: int) -> None:
    """Flags and keywords set and cleared, expunges, new mail (APPEND and delivery), a file removed by hand."""
    from pymda import maildir

    other.select("INBOX")
    n = int(other.select("INBOX")[1][0])
    for _ in range(4):
        if n:
            seqs = ",".join(str(rng.randint(1, n)) for _ in range(3))
            flags = rng.choice(["\\Seen", "\\Flagged", "$Label1", "\\Answered $Work", "\\Draft"])
            other.store(seqs, rng.choice(["+FLAGS.SILENT", "-FLAGS.SILENT"]), f"({flags})")
    if n > 3:
        other.store(f"{rng.randint(1, n)},{rng.randint(1, n)}", "+FLAGS.SILENT", "(\\Deleted)")
        other.expunge()
    for i in range(rng.randint(1, 3)):
        other.append("INBOX", rng.choice([None, "(\\Seen)", "($Label2)"]), None, msg(f"round{round_no}-{i}"))
    maildir.deliver(mailsys.maildir(), msg(f"delivered{round_no}"), fsync=False)
    cur = sorted((mailsys.maildir() / "cur").iterdir())
    if cur:
        rng.choice(cur).unlink()  # another program (pop3d, mutt) removed a message
    other.noop()


@pytest.mark.parametrize("mode", BOTH)
def test_imapclient_resynchronises_with_qresync(mailsys, mode):
    """imapclient keeps two copies of INBOX while another session (and the deliverer,
    and a program removing a file) changes it: one client comes back each round
    with SELECT ... (QRESYNC (...)), one stays selected and asks UID FETCH ...
    (CHANGEDSINCE n VANISHED) or NOOP.  Each time both copies, brought up to date
    from the server's answers alone, equal a fresh full view of the server."""
    port = start_imapd(mailsys, mode)
    other = six_messages(port)
    away, live = Mirror(port), Mirror(port)
    away.first_sync()
    assert (away.hms, away.cache) == away.server_view()
    conn = live.connect()
    info = conn.select_folder("INBOX")
    live.uv, live.hms = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]
    live.fetch_new(conn)
    rng = random.Random(7162)
    for round_no in range(6):
        _other_session_changes(rng, other, mailsys, round_no)
        away.resync_at_select()
        if round_no % 2:
            live.resync_by_uid_fetch(conn)
        else:
            _text, resps = conn.noop()
            live.apply(resps)
            live.fetch_new(conn)
        hms, view = away.server_view()
        assert len(view) > 3
        assert (away.hms, away.cache) == (hms, view), round_no
        assert live.cache == view, round_no
    conn.logout()
    assert away.told[b"EARLIER"] == 6 and away.told[b"FETCH"] > 6 and b"VANISHED" not in away.told
    assert live.told[b"EARLIER"] == 3 and live.told[b"VANISHED"] >= 3 and live.told[b"FETCH"] > 6


def test_qresync_parameters_and_fallback_never_go_wrong():
    """Any QRESYNC list gives Params or a ParseError (BAD), never another exception; the
    fallback's VANISHED lies within the known UIDs, below UIDNEXT, outside the mailbox."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pyimap import qresync
    from pyimap.parser import Atom, ParseError

    number = st.one_of(st.integers(0, 2**64).map(str), st.sampled_from(["*", "\u00b2", "", "1:*", "x", "0"]))
    uid_set = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=5).map(
        lambda rs: ",".join(f"{a}:{b}" if a != b else str(a) for a, b in rs)
    )
    atom = st.one_of(number, uid_set).map(Atom)
    token = st.recursive(atom, lambda inner: st.lists(inner, max_size=4), max_leaves=8)

    class Snap:
        def __init__(self, uidnext):
            self.uidnext = uidnext

        def vanished_since(self, modseq):
            return None

    @settings(max_examples=400, deadline=None)
    @given(token, st.sets(st.integers(1, 40)), st.integers(1, 45))
    def check(params, present, uidnext):
        try:
            p = qresync.parse_params(params if isinstance(params, list) else [params])
        except ParseError:
            return
        view = sorted(u for u in present if u < uidnext)
        gone = qresync.vanished(Snap(uidnext), view, p.modseq, p.known, p.sample)
        for lo, hi in gone:
            for u in range(lo, hi + 1):
                assert qresync.contains(p.known, u) and u < uidnext and u not in view

    check()
