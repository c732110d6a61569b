"""The queue door, the runner and the deliverer as programs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pymta.queue import Queue


def message(n: int) -> bytes:
    return f"From: carol@remote.example\nSubject: test {n}\nMessage-ID: <m{n}@remote.example>\n\nbody {n}\n".encode()


def delivered_subjects(mailsys, user="alice") -> list[str]:
    out = []
    for sub in ("new", "cur"):
        for path in mailsys.messages(user, sub):
            m = re.search(rb"^Subject: (.*)$", path.read_bytes(), re.M)
            out.append(m.group(1).decode())
    return out


def test_pymta_queue_door_and_qrunner_once(mailsys):
    proc = mailsys.run(
        "pymta.queue_cmd",
        "-f",
        "carol@remote.example",
        "alice@example.test",
        input=b"Subject: via door\r\n\r\nline one\r\nline two\r\n",
    )
    assert proc.returncode == 0, proc.stderr
    qid = proc.stdout.decode().strip()
    assert re.fullmatch(r"[0-9A-F]{19}", qid)
    assert qid.encode() in proc.stderr  # logged with its queue ID
    assert (mailsys.root / "queue" / "new" / qid).exists()
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert f"{qid}: to=<alice@example.test>".encode() in run.stderr
    [path] = mailsys.messages()
    assert path.read_bytes() == (
        b"Return-Path: <carol@remote.example>\nDelivered-To: alice@example.test\n"
        b"Subject: via door\n\nline one\nline two\n"
    )
    assert not mailsys.queue_files()


def test_pymta_queue_refuses_bad_addresses_and_full_queue(mailsys):
    bad = mailsys.run("pymta.queue_cmd", "-f", "a@b", "bob\r\n@example.test", input=b"x\n")
    assert bad.returncode == 65
    tmp = mailsys.root / "queue" / "tmp"
    tmp.rmdir()
    tmp.write_text("")  # the queue cannot take files: like a full disk
    full = mailsys.run("pymta.queue_cmd", "alice@example.test", input=b"Subject: x\n\nbody\n")
    assert full.returncode == 75
    assert not list((mailsys.root / "queue" / "new").iterdir())


def test_qrunner_wakes_promptly_for_new_mail(mailsys):
    mailsys.start_qrunner()
    start = time.time()
    Queue(mailsys.root / "queue").enqueue("carol@remote.example", ["alice@example.test"], message(1))
    mailsys.wait_messages(1, timeout=5)
    assert time.time() - start < 2.0  # no multi-second polling delay


def test_aliases_unknown_users_and_remote_recipients(mailsys):
    (mailsys.root / "aliases").write_text("team: alice, bob\nloop: loop2\nloop2: loop, alice\n")
    # remote.example is unreachable (nothing listens on port 1): its recipient is deferred
    mailsys.write_config('[relay]\ntransport_map = { "remote.example" = "[127.0.0.1]:1" }\n')
    q = Queue(mailsys.root / "queue")
    q.enqueue(
        "carol@remote.example",
        ["team@example.test", "loop@example.test", "ghost@example.test", "someone@remote.example"],
        message(1),
    )
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert delivered_subjects(mailsys, "alice") == ["test 1"]  # via team and via the loop: one copy
    assert delivered_subjects(mailsys, "bob") == ["test 1"]
    assert b"to=<ghost@example.test>, orig_to=<ghost@example.test>, status=bounced (5.1.1 unknown user)" in run.stderr
    # The remote recipient waits in a retry bucket with its state on disk.
    [(bucket, qid)] = q.due_ids(now=time.time() + 10 * 3600)
    assert q.due_ids() == []
    state = json.loads((mailsys.root / "queue" / "state" / qid).read_text())
    statuses = {r["to"]: r["status"] for r in state["rcpts"]}
    assert statuses["someone@remote.example"] == "deferred"
    assert statuses["ghost@example.test"] == "bounced"


def test_alias_loops_and_unreadable_includes_never_lose_a_recipient(mailsys):
    members = mailsys.root / "members"
    (mailsys.root / "aliases").write_text(f"ring: ring2\nring2: ring\nlist: :include:{members}\n")
    q = Queue(mailsys.root / "queue")
    q.enqueue(
        "carol@remote.example",
        ["ring@example.test", "list@example.test", "alice@example.test", "postmaster@example.test"],
        message(3),
    )
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert b"to=<ring@example.test>, orig_to=<ring@example.test>, status=bounced (5.4.6 alias loop" in run.stderr
    assert b"status=deferred (4.3.0 cannot read include file" in run.stderr
    assert delivered_subjects(mailsys, "alice") == ["test 3"]  # alice and postmaster->alice: one copy
    # The include file appears; the retry expands the list and delivers, alice gets no second copy.
    members.write_text("bob\nalice\n")
    for _bucket, qid in q.due_ids(now=time.time() + 10 * 3600):
        q.move(qid, "new")
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert delivered_subjects(mailsys, "bob") == ["test 3"]
    assert delivered_subjects(mailsys, "alice") == ["test 3"]
    # What is left is bounce traffic about the loop (from <>), not the message.
    for left in mailsys.wait_queue_empty(timeout=1):
        assert b'"sender":""' in left.read_bytes().split(b"\n")[0]


def test_corrupt_queue_entry_is_quarantined(mailsys):
    (mailsys.root / "queue" / "new" / "0123456789ABCDEF012").write_bytes(b"not json\nbody\n")
    Queue(mailsys.root / "queue").enqueue("", ["alice@example.test"], message(2))
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0
    assert (mailsys.root / "queue" / "corrupt" / "0123456789ABCDEF012").exists()
    assert delivered_subjects(mailsys) == ["test 2"]


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (none once it is gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def kill_with_workers(pid: int) -> None:
    """A crash of the whole runner: SIGKILL to its parent and its delivery
    processes at once (the parent stopped first, so it forks no replacement)."""
    os.kill(pid, signal.SIGSTOP)
    for child in children(pid):
        os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_qrunner_killed_during_delivery_loses_nothing(mailsys):
    """SIGKILL the runner mid-run: after a restart every message is delivered,
    and any message delivered twice was logged as a possible duplicate."""
    q = Queue(mailsys.root / "queue")
    total = 300
    for n in range(total):
        q.enqueue("carol@remote.example", ["alice@example.test"], message(n))
    proc = mailsys.start(mailsys.program("pymta.qrunner"))
    deadline = time.time() + 30
    while len(mailsys.messages()) < 20 and time.time() < deadline:
        time.sleep(0.005)
    kill_with_workers(proc.pid)
    proc.wait()
    before = len(mailsys.messages())
    assert before < total, "runner finished before it could be killed; raise the load"
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    subjects = delivered_subjects(mailsys)
    counts = {s: subjects.count(s) for s in set(subjects)}
    assert set(counts) == {f"test {n}" for n in range(total)}  # nothing lost
    duplicated = [s for s, c in counts.items() if c > 1]
    logged = run.stderr.decode().count("possible duplicate")
    assert logged >= len(duplicated)
    # Only tmp/ may hold a file the killed runner was writing; it is never read.
    assert not [p for p in mailsys.queue_files() if p.parent.name != "tmp"]


def test_a_first_attempt_is_marked_on_the_entry_not_in_a_state_file(mailsys):
    """A runner that dies during a first attempt leaves its mark on the entry
    (an xattr: no state file is made and unlinked per message); the next
    runner delivers and logs the possible duplicate."""
    q = Queue(mailsys.root / "queue")
    qid = q.enqueue("carol@remote.example", ["alice@example.test"], message(1))
    with q.open_entry(q.path / "new" / qid) as entry:
        assert not q.attempted(entry)
        if not q.mark_attempt(entry):
            pytest.skip("this file system has no user extended attributes (the runner writes a state file)")
        assert q.attempted(entry)
    assert not q.state_path(qid).exists()
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert "possible duplicate after a crash" in run.stderr.decode()
    assert delivered_subjects(mailsys) == ["test 1"]
    assert not mailsys.queue_files() or all(p.parent.name == "tmp" for p in mailsys.queue_files())


def test_pymda_deliver_exit_codes(mailsys):
    ok = mailsys.run(
        "pymda.deliver",
        "-d",
        "Bob+lists@example.test",
        "-f",
        "x@remote.example",
        input=b"Subject: direct\r\n\r\nhi\r\n",
    )
    assert ok.returncode == 0, ok.stderr
    [path] = mailsys.messages("bob")
    assert (
        path.read_bytes() == b"Return-Path: <x@remote.example>\nDelivered-To: bob@example.test\nSubject: direct\n\nhi\n"
    )
    assert mailsys.run("pymda.deliver", "-d", "nobody@example.test", input=b"x\n").returncode == 67
    assert mailsys.run("pymda.deliver", input=b"x\n").returncode == 64
    bad_config = subprocess.run(
        [
            *mailsys.program("pymda.deliver", "-d", "bob@example.test")[:3],
            "-C",
            str(mailsys.root / "missing.toml"),
            "-d",
            "bob@example.test",
        ],
        input=b"x\n",
        capture_output=True,
    )
    assert bad_config.returncode == 78
    # An unwritable Maildir is a temporary failure: the MTA keeps the message.
    new = mailsys.maildir("alice") / "tmp"
    new.mkdir(parents=True, exist_ok=True)
    new.rmdir()
    new.write_text("")
    assert mailsys.run("pymda.deliver", "-d", "alice@example.test", input=b"x\n").returncode == 75


def test_pymta_queue_usage_and_size_limit(make_mailsys):
    system = make_mailsys("[smtpd]\nmax_message_size = 100\n")
    assert system.run("pymta.queue_cmd").returncode == 64  # no recipient
    big = system.run("pymta.queue_cmd", "alice@example.test", input=b"Subject: big\n\n" + b"x" * 500 + b"\n")
    assert big.returncode == 65
    assert not list((system.root / "queue" / "new").iterdir())
    assert not list((system.root / "queue" / "tmp").iterdir())  # the partial file is gone too


def test_queue_objects_hold_no_descriptor_after_a_commit(tmp_path):
    """A Queue keeps nothing open per object: a process (or a test run) that
    makes many of them must not run out of descriptors."""
    before = len(os.listdir("/proc/self/fd"))
    for n in range(50):
        q = Queue(tmp_path / f"q{n}")
        q.create()
        q.enqueue("a@b.example", ["alice@example.test"], b"Subject: x\n\nbody\n")
        if q._wake is not None:  # the wake-up socket is the one thing a Queue keeps, closed with it
            q._wake.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_an_unreadable_state_file_goes_with_its_delivered_entry(mailsys):
    """The runner skips the state file's unlink only when there was none:
    one it could not read (restarting from the envelope) is removed with
    the entry, and no state file is left for an entry that had none."""
    q = Queue(mailsys.root / "queue")
    torn = q.enqueue("carol@remote.example", ["alice@example.test"], message(1))
    q.state_path(torn).write_bytes(b"{not json")
    plain = q.enqueue("carol@remote.example", ["alice@example.test"], message(2))
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert sorted(delivered_subjects(mailsys)) == ["test 1", "test 2"]
    assert not q.state_path(torn).exists()
    assert not q.state_path(plain).exists()
    assert not list((q.path / "state").iterdir())
