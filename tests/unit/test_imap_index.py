"""The per-folder index (pymda.index): UIDs, flags, keywords, MODSEQ, several writers."""

import os
import time
from pathlib import Path

from pymda import maildir
from pymda.index import INDEX_NAME, FolderIndex


def put(box: Path, text=b"Subject: x\n\nbody\n"):
    return maildir.deliver(box, text, fsync=False)


def test_uids_are_assigned_in_delivery_order_and_never_reused(tmp_path):
    box = tmp_path / "box"
    a, b = put(box), put(box)
    idx = FolderIndex(box)
    snap = idx.sync()
    assert list(snap.entries) == [1, 2]
    assert [e.base for e in snap.entries.values()] == [a.name, b.name]
    assert snap.uidnext == 3
    os.unlink(b)
    os.utime(box / "new", ns=(0, 0))  # make sure the change is noticed whatever the clock says
    snap = idx.sync()
    assert list(snap.entries) == [1]
    put(box)
    snap = FolderIndex(box).sync()  # another process
    assert list(snap.entries) == [1, 3]
    assert snap.uidnext == 4


def test_a_twin_reads_the_same_folder_with_a_cache_of_its_own(tmp_path):
    """IDLE's shared look runs in a job thread beside the sessions' own jobs: through a twin."""
    box = tmp_path / "box"
    put(box)
    idx = FolderIndex(box)
    snap = idx.sync()
    twin = idx.twin()
    assert twin is not idx and twin.path == idx.path and twin._cache is None
    put(box)
    assert list(twin.sync().entries) == [1, 2]
    assert idx._cache is snap  # untouched by the twin
    assert list(idx.sync().entries) == [1, 2]


def test_new_uids_follow_the_time_stamps_not_string_order(tmp_path):
    """Microseconds in Maildir names are not zero-padded: M99999 comes before
    M100000 although it sorts after it as text (a rebuilt index once numbered
    such messages backwards)."""
    box = tmp_path / "box"
    maildir.ensure_maildir(box)
    names = ["1700000000.M99999P1Q1.host", "1700000000.M100000P1Q2.host", "1700000001.M5P1Q3.host"]
    for name in reversed(names):
        (box / "cur" / f"{name},S=2,W=3:2,S").write_bytes(b"x\n")
    snap = FolderIndex(box).sync()
    assert [snap.entries[uid].base.split(",")[0] for uid in sorted(snap.entries)] == names


def test_sizes_come_from_names_without_opening_files(tmp_path, monkeypatch):
    box = tmp_path / "box"
    put(box, b"a\nb\n")
    import builtins

    opened = []
    real_open = builtins.open

    def spy(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    snap = FolderIndex(box).sync()
    assert [str(p) for p in opened if "/new/" in str(p) or "/cur/" in str(p)] == []
    assert next(iter(snap.entries.values())).size == 6  # CRLF size


def test_flags_keywords_and_modseq(tmp_path):
    box = tmp_path / "box"
    put(box)
    idx = FolderIndex(box)
    s0 = idx.sync()
    e = s0.entries[1]
    done = idx.set_flags({1: ("SF", {"$Label1", "work"})})
    e2 = done[1]
    assert e2.flags == "FSab" and e2.kw == {"$Label1", "work"} and e2.sub == "cur"
    assert e2.modseq > e.modseq
    assert (box / "cur" / f"{e.base}:2,FSab").exists()  # keywords as Dovecot's letters
    assert (box / "dovecot-keywords").read_text() == "0 $Label1\n1 work\n"
    # A fresh reader (another process) sees the same.
    s = FolderIndex(box).sync()
    assert s.entries[1].kw == {"$Label1", "work"} and s.entries[1].flags == "FSab"
    assert s.highestmodseq == e2.modseq
    # A flag change by someone else (pop3d, mutt) shows up with a new MODSEQ.
    os.rename(box / "cur" / f"{e.base}:2,FSab", box / "cur" / f"{e.base}:2,FRSb")
    os.utime(box / "cur", ns=(0, 0))
    s2 = FolderIndex(box).sync()
    assert s2.entries[1].flags == "FRSb" and s2.entries[1].modseq > e2.modseq
    assert s2.entries[1].kw == {"work"}  # the letter a ($Label1) went with the rename


def test_add_copy_expunge(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    maildir.ensure_maildir(src)
    tmp = src / "tmp" / "123.abc,S=5,W=6"
    tmp.write_bytes(b"abcd\n")
    isrc = FolderIndex(src)
    uv, uid = isrc.add(tmp, flags="S", keywords={"k"}, idate=1000, size=6)
    assert uid == 1
    e = isrc.sync().entries[1]
    assert e.idate == 1000 and e.flags == "Sa" and e.kw == {"k"}
    idst = FolderIndex(dst)
    duv, pairs = isrc.copy_into(idst, [1])
    assert pairs == [(1, 1)]
    de = idst.sync().entries[1]
    assert de.kw == {"k"} and de.flags == "Sa" and de.idate == 1000
    assert (dst / de.relpath()).read_bytes() == b"abcd\n"
    assert isrc.expunge([1]) == [1]
    assert isrc.sync().entries == {}
    assert isrc.sync().uidnext == 2


def test_index_file_is_replaced_atomically_and_parsable(tmp_path):
    box = tmp_path / "box"
    for _ in range(3):
        put(box)
    FolderIndex(box).sync()
    text = (box / INDEX_NAME).read_text()
    assert text.startswith("PYMAILIDX1 ")
    assert not [p for p in box.iterdir() if p.name.startswith(f".{INDEX_NAME}.tmp")]


def test_many_processes_agree_on_uids(tmp_path):
    """Four processes deliver and sync at once: every message gets exactly one UID."""
    import subprocess
    import sys

    box = tmp_path / "box"
    maildir.ensure_maildir(box)
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from pymda import maildir\nfrom pymda.index import FolderIndex\n"
        f"idx = FolderIndex({str(box)!r})\n"
        "for i in range(25):\n"
        f"    maildir.deliver({str(box)!r}, b'x\\n', fsync=False)\n"
        "    idx.sync()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    time.sleep(0.01)
    os.utime(box / "new", ns=(0, 0))
    snap = FolderIndex(box).sync()
    bases = [e.base for e in snap.entries.values()]
    assert len(bases) == 100 == len(set(bases))
    assert sorted(snap.entries) == list(snap.entries)
    assert snap.uidnext == max(snap.entries) + 1


def test_select_of_a_big_folder_is_cheap_when_nothing_changed(tmp_path):
    box = tmp_path / "box"
    maildir.ensure_maildir(box)
    for i in range(2000):
        (box / "cur" / f"{1700000000 + i}.M1P1Q{i}.h,S=10,W=11:2,S").write_bytes(b"x" * 10)
    idx = FolderIndex(box)
    idx.sync()
    os.utime(box / "cur", ns=(1, 1))
    os.utime(box / "new", ns=(1, 1))
    idx.sync()  # records the (old) mtimes
    t = time.perf_counter()
    snap = FolderIndex(box).sync()
    assert len(snap.entries) == 2000
    assert time.perf_counter() - t < 0.5


def test_index_lock_excludes_filelock_users(tmp_path):
    """pop3d or the deliverer may take the same lock with filelock.FileLock."""
    import threading

    from filelock import FileLock

    box = tmp_path / "box"
    put(box)
    idx = FolderIndex(box)
    idx.sync()
    done = []
    with FileLock(str(box / INDEX_NAME) + ".lock"):
        th = threading.Thread(target=lambda: done.append(idx.set_flags({1: ("S", set())})))
        th.start()
        time.sleep(0.3)
        assert not done
    th.join(5)
    assert done and done[0][1].flags == "S"


def test_a_reread_index_reuses_only_the_entries_of_unchanged_lines(tmp_path):
    """An index rewritten by another process is parsed again line by line only
    where lines changed; a changed keyword table parses every line afresh."""
    from pymda import index

    box = tmp_path / "box"
    for _ in range(3):
        put(box)
    FolderIndex(box).sync()
    data = (box / INDEX_NAME).read_bytes()
    first = index._parse(data, str(box))
    again = index._parse(data, str(box))  # what a re-read of the same file gives
    assert all(again.entries[u] is first.entries[u] for u in (1, 2, 3))

    FolderIndex(tmp_path / "box").set_flags({2: ("S", set())})  # another process, a new file
    changed = index._parse((box / INDEX_NAME).read_bytes(), str(box))
    assert changed.entries[1] is first.entries[1] and changed.entries[3] is first.entries[3]
    assert changed.entries[2] is not first.entries[2] and changed.entries[2].flags == "S"
    plain = index._parse((box / INDEX_NAME).read_bytes())  # without the memo: the same values
    for uid in (1, 2, 3):
        a, b = changed.entries[uid], plain.entries[uid]
        assert (a.uid, a.modseq, a.idate, a.size, a.sub, a.flags, a.kw, a.base) == (
            b.uid,
            b.modseq,
            b.idate,
            b.size,
            b.sub,
            b.flags,
            b.kw,
            b.base,
        )

    # keyword numbers in a line mean other names under another table: no reuse
    FolderIndex(box).set_flags({1: ("", {"zeta"})})
    FolderIndex(box).set_flags({3: ("", {"alpha"})})
    text = (box / INDEX_NAME).read_bytes()
    assert b"K zeta alpha" in text
    swapped = text.replace(b"K zeta alpha", b"K alpha zeta")
    reparsed = index._parse(swapped, str(box))
    assert reparsed.entries[1].kw == {"alpha"} and reparsed.entries[3].kw == {"zeta"}


def test_sessions_of_one_process_queue_for_the_lock_and_time_out(tmp_path, monkeypatch):
    """Threads of one process wait on the in-process lock: the next one gets the
    lock as soon as it is released, and one that waits too long gets
    IndexUnavailable, as with another process's flock."""
    import threading

    from pymda import index

    box = tmp_path / "box"
    put(box)
    idx = FolderIndex(box)
    idx.sync()
    got: list[float] = []
    holder = idx._lock()
    holder.__enter__()
    waiter = threading.Thread(target=lambda: (idx.set_flags({1: ("S", set())}), got.append(time.monotonic())))
    waiter.start()
    time.sleep(0.2)
    assert not got
    released = time.monotonic()
    holder.__exit__(None, None, None)
    waiter.join(5)
    assert got and got[0] - released < 1.0
    assert FolderIndex(box).sync().entries[1].flags == "S"

    monkeypatch.setattr(index, "LOCK_TIMEOUT", 0.3)
    holder = idx._lock()
    holder.__enter__()
    errors: list[Exception] = []

    def wait_in_vain():
        try:
            idx.set_flags({1: ("", set())})
        except index.IndexUnavailable as exc:
            errors.append(exc)

    try:
        late = threading.Thread(target=wait_in_vain)
        late.start()
        late.join(5)
        assert not late.is_alive() and errors and "locked for" in str(errors[0])
    finally:
        holder.__exit__(None, None, None)


def test_a_look_while_a_sibling_session_changes_the_folder_does_not_wait(tmp_path, monkeypatch):
    """While another session of this process holds the folder's lock (mid-STORE),
    a sync answers at once with the index as last written; while another
    process holds it, the sync waits (it may be the only one to see new mail)."""
    import threading

    from pymda import index

    box = tmp_path / "box"
    put(box)
    put(box)
    idx = FolderIndex(box)
    before = idx.sync()
    holder = idx._lock()
    holder.__enter__()  # a sibling session, mid-change
    try:
        os.utime(box / "cur", ns=(0, 0))  # the folder looks changed since the index was written
        started = time.monotonic()
        snap = FolderIndex(box).sync()
        assert time.monotonic() - started < 1.0
        assert list(snap.entries) == list(before.entries)
    finally:
        holder.__exit__(None, None, None)

    monkeypatch.setattr(index, "LOCK_TIMEOUT", 0.3)
    import fcntl

    other = os.open(str(box / INDEX_NAME) + ".lock", os.O_RDWR)  # another process's open file description
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        os.utime(box / "cur", ns=(0, 0))
        errors = []
        t = threading.Thread(target=lambda: errors.append(_sync_error(FolderIndex(box))))
        t.start()
        t.join(5)
        assert errors and isinstance(errors[0], index.IndexUnavailable)
    finally:
        os.close(other)


def _sync_error(idx):
    try:
        idx.sync()
    except Exception as exc:
        return exc
    return None
