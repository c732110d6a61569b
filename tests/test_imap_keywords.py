"""Keywords in Maildir file names, Dovecot's layout (issue 13 §3): the first 26 keywords of a
folder as the letters a-z after the standard flags (``:2,FSab``), its ``dovecot-keywords`` file
saying which letter is which keyword; names changed by other programs are read back.  Exact
server responses in both start modes; Debian's Dovecot reads what pymail wrote and the other way
round (skipped without dovecot-imapd)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import PASSWORD, REPO, free_port, wait_port
from test_imap import ALICE, BOTH, exchange, login, msg, start_imapd

FLAGS_LINE = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded{})"
PERMANENT = "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded{} \\*)] Flags permitted"


def names(folder: Path) -> list[str]:
    """The info parts (after ``:2,``) of the folder's messages in cur/, in delivery order."""
    from pymda import maildir

    return [n.partition(":2,")[2] for _sub, n in maildir.list_messages(folder)]


def kwfile(folder: Path) -> str:
    return (folder / "dovecot-keywords").read_text()


@pytest.mark.parametrize("mode", BOTH)
def test_keywords_go_into_file_names(mailsys, mode):
    """APPEND, STORE, COPY and MOVE write the letters of the folder they write into; the 27th
    keyword of a folder has no letter and lives in the index only."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    box = mailsys.maildir("alice")
    work = box / ".Work"
    assert exchange(m, "CREATE Work") == ["OK CREATE completed"]
    m.append("Work", "(Project)", None, msg("w1"))  # Work's letter a is Project
    assert kwfile(work) == "0 Project\n"
    m.append("INBOX", "(\\Seen $Label1 Junk)", None, msg("k1"))
    m.append("INBOX", "(\\Flagged)", None, msg("k2"))
    assert names(box) == ["Sab", "F"]
    assert kwfile(box) == "0 $Label1\n1 Junk\n"
    m.select("INBOX")
    assert exchange(m, "STORE 2 +FLAGS (Project \\Answered)") == [
        FLAGS_LINE.format(" $Label1 Junk Project"),
        PERMANENT.format(" $Label1 Junk Project"),
        "* 2 FETCH (FLAGS (\\Flagged \\Answered Project \\Recent))",
        "OK STORE completed",
    ]
    assert names(box) == ["Sab", "FRc"]
    assert kwfile(box) == "0 $Label1\n1 Junk\n2 Project\n"
    assert exchange(m, "STORE 1 -FLAGS ($Label1)") == ["* 1 FETCH (FLAGS (\\Seen Junk \\Recent))", "OK STORE completed"]
    assert exchange(m, "STORE 1 FLAGS (\\Draft Junk)") == [
        "* 1 FETCH (FLAGS (\\Draft Junk \\Recent))",
        "OK STORE completed",
    ]
    assert names(box) == ["Db", "FRc"]
    # $Forwarded is P, and Dovecot's keyword letter for it too
    assert exchange(m, "STORE 2 +FLAGS.SILENT ($Forwarded)") == ["OK STORE completed"]
    assert names(box) == ["Db", "FPRcd"]
    assert kwfile(box) == "0 $Label1\n1 Junk\n2 Project\n3 $Forwarded\n"
    assert exchange(m, "FETCH 2 FLAGS") == [
        "* 2 FETCH (FLAGS (\\Flagged $Forwarded \\Answered Project \\Recent))",
        "OK FETCH completed",
    ]
    # COPY and MOVE: the target folder's own letters (Project is a there, Junk gets b)
    assert exchange(m, "COPY 1:2 Work")[-1].startswith("OK [COPYUID ")
    assert exchange(m, "MOVE 1 Work")[-1] == "OK MOVE completed"
    assert names(work) == ["a", "Db", "FPRac", "Db"]
    assert kwfile(work) == "0 Project\n1 Junk\n2 $Forwarded\n"
    # past 26 keywords: no letter, kept by the index
    many = " ".join(f"K{i:02}" for i in range(30))
    assert exchange(m, f"STORE 1 FLAGS.SILENT ({many})") == [
        FLAGS_LINE.format(f" $Label1 Junk {many} Project"),
        PERMANENT.format(f" $Label1 Junk {many} Project"),
        "OK STORE completed",
    ]
    assert names(box) == ["efghijklmnopqrstuvwxyz"]  # FLAGS took P away; K00-K21 got e-z
    assert kwfile(box).splitlines()[-1] == "25 K21"
    assert exchange(m, "FETCH 1 FLAGS") == [f"* 1 FETCH (FLAGS ({many} \\Recent))", "OK FETCH completed"]
    m.logout()
    # a new session (another process in inetd mode) reads the same
    m = login(port)
    m.select("INBOX")
    assert exchange(m, "FETCH 1 FLAGS") == [f"* 1 FETCH (FLAGS ({many}))", "OK FETCH completed"]
    m.select("Work")
    assert exchange(m, "FETCH 1:* FLAGS") == [
        "* 1 FETCH (FLAGS (Project \\Recent))",
        "* 2 FETCH (FLAGS (\\Draft Junk \\Recent))",
        "* 3 FETCH (FLAGS (\\Flagged $Forwarded \\Answered Project \\Recent))",
        "* 4 FETCH (FLAGS (\\Draft Junk \\Recent))",
        "OK FETCH completed",
    ]


def rename_info(folder: Path, number: int, info: str) -> None:
    """What mutt (or Dovecot) does: message ``number`` (delivery order) renamed to carry ``info``."""
    from pymda import maildir

    sub, name = maildir.list_messages(folder)[number - 1]
    base = name.partition(":")[0]
    os.rename(folder / sub / name, folder / "cur" / f"{base}:2,{info}")


def write_kwfile(folder: Path, text: str) -> None:
    """As Dovecot writes it: a new file renamed over the old one."""
    (folder / "kw.tmp").write_text(text)
    os.rename(folder / "kw.tmp", folder / "dovecot-keywords")


@pytest.mark.parametrize("mode", BOTH)
def test_names_changed_by_other_programs(mailsys, mode):
    """A name changed by mutt or Dovecot gives the message the flags and keywords its letters
    say (the keyword names from dovecot-keywords); keywords without a letter stay."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    box = mailsys.maildir("alice")
    m.append("INBOX", "(\\Seen $Label1)", None, msg("o1"))
    m.append("INBOX", None, None, msg("o2"))
    m.select("INBOX")
    # mutt marks message 2 seen, and flags message 1 keeping its letters
    rename_info(box, 2, "S")
    rename_info(box, 1, "FSa")
    assert exchange(m, "NOOP") == [
        "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen $Label1 \\Recent))",
        "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))",
        "OK NOOP completed",
    ]
    # Dovecot gives message 2 a keyword of its own
    write_kwfile(box, "0 $Label1\n1 Later\n")
    rename_info(box, 2, "Sb")
    assert exchange(m, "NOOP") == [
        FLAGS_LINE.format(" $Label1 Later"),
        PERMANENT.format(" $Label1 Later"),
        "* 2 FETCH (UID 2 FLAGS (\\Seen Later \\Recent))",
        "OK NOOP completed",
    ]
    # a tool that drops the letters drops the keywords; a letter nobody named gets a name,
    # as Dovecot gives it, and keeps its slot
    rename_info(box, 1, "FS")
    rename_info(box, 2, "Sbe")
    assert exchange(m, "NOOP") == [
        FLAGS_LINE.format(" $Label1 Later unknown-4"),
        PERMANENT.format(" $Label1 Later unknown-4"),
        "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen \\Recent))",
        "* 2 FETCH (UID 2 FLAGS (\\Seen Later unknown-4 \\Recent))",
        "OK NOOP completed",
    ]
    assert kwfile(box) == "0 $Label1\n1 Later\n4 unknown-4\n"
    assert exchange(m, "STORE 1 +FLAGS (Next)") == [
        FLAGS_LINE.format(" $Label1 Later Next unknown-4"),
        PERMANENT.format(" $Label1 Later Next unknown-4"),
        "* 1 FETCH (FLAGS (\\Flagged \\Seen Next \\Recent))",
        "OK STORE completed",
    ]
    assert names(box) == ["FSc", "Sbe"]  # the first free letter
    # Dovecot's $Forwarded is its keyword letter: read as P, which the name gets too
    write_kwfile(box, kwfile(box) + "3 $Forwarded\n")
    rename_info(box, 1, "FScd")
    assert exchange(m, "NOOP") == [
        "* 1 FETCH (UID 1 FLAGS (\\Flagged $Forwarded \\Seen Next \\Recent))",
        "OK NOOP completed",
    ]
    assert names(box) == ["FPScd", "Sbe"]
    # Dovecot takes $Forwarded away: its letter goes, P (unknown to Dovecot) stays, and goes here
    rename_info(box, 1, "FPSc")
    assert exchange(m, "NOOP") == ["* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen Next \\Recent))", "OK NOOP completed"]
    assert names(box) == ["FSc", "Sbe"]
    # every letter taken: a new keyword lives in the index only, and survives a rename by mutt
    write_kwfile(box, kwfile(box) + "".join(f"{i} L{i}\n" for i in range(5, 26)))
    assert exchange(m, "STORE 2 +FLAGS.SILENT (Extra)") == [
        FLAGS_LINE.format(" $Label1 Extra Later Next unknown-4"),
        PERMANENT.format(" $Label1 Extra Later Next unknown-4"),
        "OK STORE completed",
    ]
    assert names(box) == ["FSc", "Sbe"]
    rename_info(box, 2, "RSbe")
    assert exchange(m, "NOOP") == [
        "* 2 FETCH (UID 2 FLAGS (\\Answered \\Seen Extra Later unknown-4 \\Recent))",
        "OK NOOP completed",
    ]


DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)


def dovecot_exchange(m, command: str) -> list[str]:
    lines = exchange(m, command)
    lines[-1] = lines[-1].split(" (")[0]  # Dovecot adds its timings: "(0.001 + 0.000 secs)."
    return lines


@pytest.mark.skipif(DOVECOT is None or os.geteuid() != 0, reason="needs Debian's dovecot-imapd (and root)")
@pytest.mark.parametrize("mode", BOTH)
def test_switching_between_dovecot_and_pymail_keeps_flags_and_keywords(mailsys, mode, tmp_path_factory):
    """(a) flags and keywords set through pymail show in Dovecot over the same Maildir; (b) those
    Dovecot sets (and a rename by mutt) show in pymail, in folders it indexed before and in one
    only Dovecot knew."""
    import imaplib

    box = mailsys.maildir("alice")
    port = start_imapd(mailsys, mode)
    m = login(port)
    m.create("Work")
    m.append("INBOX", "(\\Seen $Label1 Junk)", None, msg("d1"))
    m.append("INBOX", "(\\Flagged \\Answered)", None, msg("d2"))
    m.append("INBOX", None, None, msg("d3"))
    m.append("Work", "(\\Draft Project)", None, msg("d4"))
    m.select("INBOX")
    m.store("3", "+FLAGS", "(\\Deleted $Forwarded Later)")
    assert exchange(m, "FETCH 1:* FLAGS") == [
        "* 1 FETCH (FLAGS (\\Seen $Label1 Junk \\Recent))",
        "* 2 FETCH (FLAGS (\\Flagged \\Answered \\Recent))",
        "* 3 FETCH (FLAGS ($Forwarded \\Deleted Later \\Recent))",
        "OK FETCH completed",
    ]
    m.logout()

    # (a) Dovecot over the same Maildir (a copy: Dovecot hands its tree to the mail user)
    twin = Path(shutil.copytree(mailsys.root, Path("/tmp") / f"dvk{os.getpid()}{mode}"))
    try:
        imap = free_port()
        proc = mailsys.start(
            [sys.executable, str(REPO / "tests" / "bench" / "dovecot_side.py"), str(twin), str(free_port()), str(imap)]
        )
        wait_port(imap, proc=proc)
        d = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
        d.login(ALICE, PASSWORD)
        d.select("INBOX")
        assert dovecot_exchange(d, "FETCH 1:* FLAGS") == [
            "* 1 FETCH (FLAGS (\\Seen \\Recent $Label1 Junk))",
            "* 2 FETCH (FLAGS (\\Answered \\Flagged \\Recent))",
            "* 3 FETCH (FLAGS (\\Deleted \\Recent $Forwarded Later))",
            "OK Fetch completed",
        ]
        d.select("Work")
        assert dovecot_exchange(d, "FETCH 1:* FLAGS") == [
            "* 1 FETCH (FLAGS (\\Draft \\Recent Project))",
            "OK Fetch completed",
        ]
        # (b) Dovecot changes them, and makes a folder pymail never saw
        d.select("INBOX")
        assert dovecot_exchange(d, "STORE 1 -FLAGS.SILENT ($Label1)") == ["OK Store completed"]
        assert dovecot_exchange(d, "STORE 1 +FLAGS.SILENT (Dove \\Flagged)")[-1] == "OK Store completed"
        assert dovecot_exchange(d, "STORE 2 +FLAGS.SILENT ($Forwarded $Label1)") == ["OK Store completed"]
        assert dovecot_exchange(d, "STORE 3 -FLAGS.SILENT (\\Deleted $Forwarded)") == ["OK Store completed"]
        d.select("Work")
        assert dovecot_exchange(d, "STORE 1 +FLAGS.SILENT (Junk)")[-1] == "OK Store completed"
        d.create("Fresh")
        d.append("Fresh", "(\\Seen Fresh1 $Label2 $Forwarded)", None, msg("d5"))
        d.logout()
        proc.terminate()
        proc.wait(timeout=30)
        # mutt marks message 2 seen: a plain rename
        rename_info(twin / box.relative_to(mailsys.root), 2, "FRSac")
        shutil.rmtree(box)
        shutil.copytree(twin / box.relative_to(mailsys.root), box)
        m = login(port)
        m.select("INBOX")
        assert exchange(m, "FETCH 1:* FLAGS") == [
            "* 1 FETCH (FLAGS (\\Flagged \\Seen Dove Junk))",
            "* 2 FETCH (FLAGS (\\Flagged $Forwarded \\Answered \\Seen $Label1))",
            "* 3 FETCH (FLAGS (Later))",
            "OK FETCH completed",
        ]
        m.select("Work")
        assert exchange(m, "FETCH 1:* FLAGS") == [
            "* 1 FETCH (FLAGS (\\Draft Junk Project \\Recent))",  # no session selected it before
            "OK FETCH completed",
        ]
        m.select("Fresh")
        assert exchange(m, "FETCH 1:* FLAGS") == [
            "* 1 FETCH (FLAGS ($Forwarded \\Seen $Label2 Fresh1))",  # a first index: cur/ was seen
            "OK FETCH completed",
        ]
        m.logout()
    finally:
        shutil.rmtree(twin, ignore_errors=True)


@pytest.mark.parametrize("mode", BOTH)
def test_concurrent_sessions_agree_on_the_letters(mailsys, mode):
    """Four sessions (four processes in inetd mode) give new keywords to their own messages at
    once: every keyword gets one letter of its own, and every name carries the right ones."""
    import threading

    from pymda import maildir

    port = start_imapd(mailsys, mode)
    box = mailsys.maildir("alice")
    m = login(port)
    for i in range(4):
        m.append("INBOX", None, None, msg(f"c{i}"))
    sessions = [login(port) for _ in range(4)]
    for s in sessions:
        s.select("INBOX")
    answers: dict[int, list[str]] = {}

    def store(i: int) -> None:
        kws = " ".join(f"S{i}K{k}" for k in range(6))
        answers[i] = exchange(sessions[i], f"STORE {i + 1} +FLAGS.SILENT ({kws})")

    threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(answers[i][-1] == "OK STORE completed" for i in range(4))
    kmap = maildir.KeywordMap.load(box)
    assert sorted(n for n in kmap.slots if n) == sorted(f"S{i}K{k}" for i in range(4) for k in range(6))
    for i, info in enumerate(names(box)):
        assert kmap.keywords(info)[1] == {f"S{i}K{k}" for k in range(6)}
    m.select("INBOX")
    assert exchange(m, "FETCH 1:* FLAGS") == [
        f"* {i + 1} FETCH (FLAGS ({' '.join(f'S{i}K{k}' for k in range(6))}))" for i in range(4)
    ] + ["OK FETCH completed"]


def test_keywords_set_before_names_carried_letters_stay(tmp_path):
    """A keyword the index had for a message whose name never carried its letter (set before
    this layout) survives a rename by another program, though it has a letter by now."""
    from pymda import maildir
    from pymda.index import FolderIndex

    box = tmp_path / "box"
    maildir.ensure_maildir(box)
    for n in (1, 2):
        (box / "cur" / f"170000000{n}.M1P1.host,S=5,W=6:2,S").write_bytes(b"abcd\n")
    idx = FolderIndex(box)
    idx.sync()

    def old_style(snap):  # what an index of before kept: the keyword, no letter in the name
        e = snap.entries[1].copy()
        e.kw = frozenset({"Old"})
        snap.entries[1] = e

    idx._mutate(old_style)
    idx.set_flags({2: ("S", {"Old"})})  # Old gets the letter a now
    assert names(box) == ["S", "Sa"]
    rename_info(box, 1, "FS")  # mutt flags message 1
    os.utime(box / "cur", ns=(0, 0))
    snap = FolderIndex(box).sync()
    assert (snap.entries[1].flags, snap.entries[1].kw) == ("FS", {"Old"})
    assert (snap.entries[2].flags, snap.entries[2].kw) == ("Sa", {"Old"})


def test_a_bad_keywords_file_is_read_safely(tmp_path):
    """Lines that are not 'N name' with N below 26 and an IMAP atom for a name are skipped; a
    link in the file's place is not followed, and the next save replaces the link itself."""
    from pymda import maildir

    (tmp_path / "dovecot-keywords").write_bytes(
        b"0 $Junk\n1 two words\nx y\n26 big\n2\n3 \n4 caf\xc3\xa9\n5 a(b\n6 ok\r\n7 Fine\n" + b"9" * 70000
    )
    kmap = maildir.KeywordMap.load(tmp_path)
    assert [(i, n) for i, n in enumerate(kmap.slots) if n] == [(0, "$Junk"), (7, "Fine")]
    assert kmap.info("S", {"New"}) == "Sb"  # the first free letter
    (tmp_path / "secret").write_text("0 Secret\n")
    (tmp_path / "dovecot-keywords").unlink()
    os.symlink(tmp_path / "secret", tmp_path / "dovecot-keywords")
    kmap = maildir.KeywordMap.load(tmp_path)
    assert kmap.slots == [None] * 26
    assert kmap.info("", {"Mine"}) == "a"
    kmap.save(tmp_path)
    assert not os.path.islink(tmp_path / "dovecot-keywords")
    assert kwfile(tmp_path) == "0 Mine\n" and (tmp_path / "secret").read_text() == "0 Secret\n"
