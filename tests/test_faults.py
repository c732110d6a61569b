"""Faults (issue 7): a full disk, a read-only disk, a missing users file, a
corrupt folder index, corrupt queue entries, a DNS server that never answers.

The full disk is real, not simulated: each test that needs one mounts a 2 MB
tmpfs under its tmp_path (``mount -t tmpfs -o size=2m``), puts the queue
(``paths.queue``) or the mail store (``paths.mail``) on it and fills it with a
filler file, so the daemons meet a true ENOSPC from the kernel -- partial
writes included.  Freeing the filler shows recovery.  Without the right to
mount (not root, no CAP_SYS_ADMIN) these tests are skipped, with the reason.
The same tmpfs remounted read-only gives EROFS: an unwritable directory that
root cannot write either (chmod does not stop root).

Covered elsewhere, not repeated here: an unwritable queue tmp/ -> smtpd 451
(test_mail_in.test_full_queue_disk_gives_451_and_no_entry), pymta-queue 75
(test_queue_runner.test_pymta_queue_refuses_bad_addresses_and_full_queue),
pymda-deliver 75 into an unwritable Maildir (test_queue_runner.test_pymda_deliver_exit_codes),
a corrupt entry quarantined by ``qrunner --once``
(test_queue_runner.test_corrupt_queue_entry_is_quarantined), a dead relay
(test_relay.test_connection_refused_defers: 4.4.1, deferred), a DNS port
nobody listens on (test_relay_mx.test_dns_server_down_defers), a missing
users file in the users library (unit/test_users.py).
"""

from __future__ import annotations

import base64
import errno
import imaplib
import json
import os
import re
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, env_with_repo, free_port, wait_port
from pymda import maildir as md
from pymda.index import INDEX_NAME, FolderIndex
from pymta.queue import Queue

ALICE = "alice@example.test"
SENDER = "carol@remote.example"
NO_SPACE = "No space left on device"


def body(subject: str, size: int = 0) -> bytes:
    """A message with LF line ends; ``size`` adds about that many octets of text."""
    text = "".join(f"line {n:06d} of the filler text that makes this message big\n" for n in range(size // 60))
    head = f"From: {SENDER}\nTo: {ALICE}\nSubject: {subject}\nMessage-ID: <{subject}@remote.example>\n\n"
    return f"{head}{text}end\n".encode()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


# -- the small disk ------------------------------------------------------------------------


class SmallDisk:
    """A mounted 2 MB tmpfs and a filler file that eats its free space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Grow the filler until ENOSPC, then give back ``leave`` octets."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = 1 << 16
            while chunk:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    chunk //= 2
            size = os.fstat(fd).st_size
            if leave:
                os.ftruncate(fd, size - leave)
        finally:
            os.close(fd)
        assert self.free_bytes() <= leave + 4096

    def free(self) -> None:
        os.unlink(self.filler)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs under tmp_path, unmounted afterwards (also when the test fails).

    Ask for it before make_mailsys/mailsys: fixtures end in reverse order,
    so the daemons are stopped before the unmount."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount(8): cannot make the small tmpfs the full-disk tests need")
    if done.returncode != 0:
        pytest.skip(
            f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    try:
        yield SmallDisk(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def start_logged(system, module: str, *args: str) -> tuple[int, Path]:
    """A daemon on --listen with its log (stderr) in a file; stopped by the fixture."""
    port = free_port()
    logfile = system.root / f"{module}.log"
    with open(logfile, "wb") as err:
        proc = subprocess.Popen(
            system.program(module, *args, "--listen", f"127.0.0.1:{port}"),
            env=env_with_repo(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    system.procs.append(proc)
    wait_port(port, proc=proc)
    return port, logfile


def logged(logfile: Path, text: str, timeout: float = 10.0) -> str:
    """The daemon's log once ``text`` is in it (a queued message's line follows its 250)."""
    deadline = time.monotonic() + timeout
    log = logfile.read_text()
    while text not in log and time.monotonic() < deadline:
        time.sleep(0.02)
        log = logfile.read_text()
    return log


def queue_leftovers(qdir: Path) -> list[str]:
    """Every file anywhere in the queue except the runner's wake socket."""
    return sorted(str(p.relative_to(qdir)) for p in qdir.rglob("*") if p.is_file() and p.name != "wake.sock")


def maildir_files(box: Path) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(box / sub)) if (box / sub).is_dir() else [] for sub in ("tmp", "new", "cur")}


def run_once(system) -> str:
    proc = system.run("pymta.qrunner", "--once", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def rcpt_state(system, qid: str) -> dict:
    return json.loads((system.root / "queue" / "state" / qid).read_text())["rcpts"][0]


# -- full disk: smtpd ------------------------------------------------------------------------


def test_smtpd_full_queue_disk_answers_452_leaves_nothing_and_recovers(small_disk, make_mailsys):
    qdir = small_disk.path / "queue"
    system = make_mailsys(f'[paths]\nqueue = "{qdir}"\n[smtpd]\nprocesses = 1\n')
    Queue(qdir).create()
    port, logfile = start_logged(system, "pymta.smtpd")
    big = body("big", 200_000)  # streamed: part of it reaches the file before ENOSPC
    small = body("small")
    small_disk.fill(leave=16 * 1024)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail(SENDER, [ALICE], crlf(big))
        assert (failed.value.smtp_code, failed.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        small_disk.fill()  # not a page left: even the envelope line cannot be written
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail(SENDER, [ALICE], crlf(small))
        assert (failed.value.smtp_code, failed.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        assert smtp.noop() == (250, b"2.0.0 Ok")  # the session goes on
        assert queue_leftovers(qdir) == []  # nothing committed, no partial file in tmp/
        small_disk.free()
        # the client retries in the same session, as a real MTA would later
        assert smtp.mail(SENDER) == (250, b"2.1.0 Ok")
        assert smtp.rcpt(ALICE) == (250, b"2.1.5 Ok")
        code, text = smtp.data(crlf(big))
        assert code == 250 and re.fullmatch(rb"2\.0\.0 Ok: queued as [0-9A-F]{19}", text), text
    qid = text.decode().rsplit(" ", 1)[1]
    log = logged(logfile, f"{qid}: client=")  # written just after the 250 went out
    # the failures are logged with the queue ID the Received: header carried
    failed_ids = re.findall(
        r"error: ([0-9A-F]{19}): cannot queue message from <carol@remote\.example>: "
        r"cannot write queue file: No space left on device",
        log,
    )
    assert len(failed_ids) == 2 and qid not in failed_ids, log
    assert f"{qid}: client=client.example[127.0.0.1], from=<{SENDER}>" in log
    assert "Traceback" not in log
    run_once(system)
    [path] = system.messages()
    assert path.read_bytes().endswith(big) and path.read_bytes().count(b"Subject: big") == 1
    assert queue_leftovers(qdir) == []


def test_pymta_queue_and_sendmail_exit_75_on_full_disk(small_disk, make_mailsys):
    qdir = small_disk.path / "queue"
    system = make_mailsys(f'[paths]\nqueue = "{qdir}"\n')
    Queue(qdir).create()
    small_disk.fill(leave=8 * 1024)
    message = body("door", 100_000)
    door = ("pymta.queue_cmd", "-f", SENDER, ALICE)
    sendmail = ("pymta.sendmail", "-f", SENDER, ALICE)
    expected = {
        door: r"pymta-queue\[\d+\]: error: message not queued: cannot write queue file: No space left on device\n",
        sendmail: r"sendmail: fatal: message not queued: cannot write queue file: No space left on device\n",
    }
    for argv, line in expected.items():
        proc = system.run(*argv, input=message)
        assert proc.returncode == 75, proc.stderr
        assert re.fullmatch(line, proc.stderr.decode()), proc.stderr  # one line, no traceback
        assert proc.stdout == b""
        assert queue_leftovers(qdir) == []
    small_disk.free()
    for argv in expected:
        proc = system.run(*argv, input=message)
        assert proc.returncode == 0, proc.stderr
    run_once(system)
    got = system.messages()
    assert len(got) == 2 and all(p.read_bytes().count(b"\nend\n") == 1 for p in got)
    assert queue_leftovers(qdir) == []


# -- full disk: the runner delivering into a full mail store ---------------------------------------


def test_qrunner_defers_on_full_mail_store_then_delivers_exactly_one_copy(small_disk, make_mailsys):
    store = small_disk.path / "mail"
    system = make_mailsys(f'[paths]\nmail = "{store}"\n[qrunner]\nretry_min = 0.0\n')
    box = store / "example.test" / "alice"
    md.ensure_maildir(box)
    message = body("stored", 200_000)
    qid = Queue(system.root / "queue").enqueue(SENDER, [ALICE], message)
    small_disk.fill(leave=16 * 1024)
    log = run_once(system)
    line = re.search(rf"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=deferred \(4\.2\.0 [^\n]*\)", log)
    assert line and NO_SPACE in line.group(0), log
    assert f"{qid}: deferred 1 recipient(s), next attempt in 0s" in log
    st = rcpt_state(system, qid)
    assert (st["status"], st["attempts"]) == ("deferred", 1) and st["reason"].startswith("4.2.0 ")
    assert Queue(system.root / "queue").locate(qid).parent.parent.name == "deferred"
    assert maildir_files(box) == {"tmp": [], "new": [], "cur": []}  # no partial file anywhere
    # still full: a second try defers again and still writes nothing
    log = run_once(system)
    assert f"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=deferred" in log
    assert rcpt_state(system, qid)["attempts"] == 2
    assert maildir_files(box) == {"tmp": [], "new": [], "cur": []}
    small_disk.free()
    log = run_once(system)
    assert f"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=sent (2.0.0 delivered to maildir)" in log
    assert f"{qid}: removed" in log
    files = maildir_files(box)
    assert files["tmp"] == [] and files["cur"] == [] and len(files["new"]) == 1
    assert (
        box / "new" / files["new"][0]
    ).read_bytes() == f"Return-Path: <{SENDER}>\nDelivered-To: {ALICE}\n".encode() + message
    assert queue_leftovers(system.root / "queue") == []


# -- full disk: imapd and pop3d ----------------------------------------------------------------------


def imap_login(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert m.login(ALICE, PASSWORD)[0] == "OK"
    return m


def test_imap_append_copy_move_on_full_store_say_overquota(small_disk, make_mailsys):
    store = small_disk.path / "mail"
    system = make_mailsys(f'[paths]\nmail = "{store}"\n[imapd]\nprocesses = 1\n')
    store.mkdir()
    port, logfile = start_logged(system, "pyimap.imapd")
    m = imap_login(port)
    one = crlf(body("one"))
    typ, data = m.append("INBOX", None, None, one)
    assert typ == "OK"
    uidvalidity = int(re.match(rb"\[APPENDUID (\d+) 1\]", data[0]).group(1))
    assert m.select("INBOX") == ("OK", [b"1"])
    assert m.status("Archive", "(MESSAGES)") == ("OK", [b'"Archive" (MESSAGES 0)'])  # Archive's index exists
    inbox, archive = store / "example.test" / "alice", store / "example.test" / "alice" / ".Archive"
    indexes = {p: p.read_bytes() for p in (inbox / INDEX_NAME, archive / INDEX_NAME)}
    on_disk = {p: maildir_files(p) for p in (inbox, archive)}

    small_disk.fill()
    overquota = ("NO", [b"[OVERQUOTA] Not enough disk space, try again later"])
    assert m.append("INBOX", None, None, crlf(body("two"))) == overquota  # small: spooled from memory
    assert m.append("INBOX", None, None, crlf(body("three", 400_000))) == overquota  # big: streamed to tmp/
    assert m.copy("1", "Archive") == overquota  # the links cost nothing; the index rewrite fails
    assert m._simple_command("MOVE", "1", "Archive") == overquota
    assert m._simple_command("UID", "COPY", "1", "Archive") == overquota
    # nothing half-written anywhere, both indexes untouched and readable, the session goes on
    assert {p: maildir_files(p) for p in (inbox, archive)} == on_disk
    assert {p: p.read_bytes() for p in indexes} == indexes
    assert not [n for p in (inbox, archive) for n in os.listdir(p) if n.startswith(f".{INDEX_NAME}.tmp")]
    snap = FolderIndex(inbox).read()
    assert snap is not None and snap.uidvalidity == uidvalidity and list(snap.entries) == [1]
    assert m.noop()[0] == "OK"
    assert m.select("INBOX") == ("OK", [b"1"])
    assert m.uid("FETCH", "1", "(BODY.PEEK[])")[1][0][1] == one
    assert m.status("Archive", "(MESSAGES)") == ("OK", [b'"Archive" (MESSAGES 0)'])
    log = logfile.read_text()
    assert "Traceback" not in log and NO_SPACE in log

    small_disk.free()  # space returns: the same commands work, with fresh UIDs and no ghosts
    typ, data = m.append("INBOX", None, None, crlf(body("two")))
    assert (typ, data) == ("OK", [f"[APPENDUID {uidvalidity} 2] APPEND completed".encode()])
    typ, data = m.copy("1", "Archive")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1 1\] COPY completed", data[0]), data
    assert m.status("Archive", "(MESSAGES)") == ("OK", [b'"Archive" (MESSAGES 1)'])
    assert m.select("INBOX") == ("OK", [b"2"])
    assert m.logout()[0] == "BYE"


class RawPOP:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_pop3_quit_with_deletions_works_on_a_full_disk(small_disk, make_mailsys):
    """Deleting needs no space (unlink), so QUIT on a full disk deletes and says so."""
    store = small_disk.path / "mail"
    system = make_mailsys(f'[paths]\nmail = "{store}"\n[pop3d]\nprocesses = 1\n')
    box = store / "example.test" / "alice"
    md.ensure_maildir(box)
    keep = md.deliver(box, body("keep")).name
    md.deliver(box, body("gone"))
    port, _ = start_logged(system, "pypop.pop3d")
    small_disk.fill()
    pop = RawPOP(port)
    assert pop.cmd(b"USER " + ALICE.encode()) == b"+OK\r\n"
    assert pop.cmd(b"PASS " + PASSWORD.encode()).startswith(b"+OK Logged in, 2 messages")
    assert pop.cmd(b"DELE 2") == b"+OK Message 2 deleted\r\n"
    assert pop.cmd(b"QUIT") == b"+OK Logging out, 1 message deleted\r\n"
    assert pop.file.readline() == b""
    pop.close()
    assert maildir_files(box) == {"tmp": [], "new": [keep], "cur": []}


# -- read-only disk: unwritable queue and Maildir (EROFS, which stops root too) ---------------------


def test_read_only_queue_and_store_give_451_unavailable_and_deferral(small_disk, make_mailsys):
    qdir, store = small_disk.path / "queue", small_disk.path / "mail"
    runner_config = f'[paths]\nmail = "{store}"\n[qrunner]\nretry_min = 0.0\n'
    system = make_mailsys(runner_config)
    Queue(qdir).create()
    md.ensure_maildir(store / "example.test" / "alice")
    qid = Queue(system.root / "queue").enqueue(SENDER, [ALICE], body("later"))
    # smtpd and pymta-queue get the queue on the small disk; the runner keeps its own
    system.write_config(
        f'[paths]\nmail = "{store}"\nqueue = "{qdir}"\n'
        f"[smtpd]\nprocesses = 1\n[imapd]\nprocesses = 1\n[pop3d]\nprocesses = 1\n"
    )
    port, logfile = start_logged(system, "pymta.smtpd")
    imap_port, _ = start_logged(system, "pyimap.imapd")
    pop_port, _ = start_logged(system, "pypop.pop3d")
    m = imap_login(imap_port)  # logged in, INBOX indexed, while it is writable
    assert m.select("INBOX") == ("OK", [b"0"])
    pop = RawPOP(pop_port)
    small_disk.remount("ro")
    try:
        # other I/O errors than ENOSPC: IMAP says UNAVAILABLE, not OVERQUOTA; the session goes on
        assert m.append("INBOX", None, None, crlf(body("ro"))) == (
            "NO",
            [b"[UNAVAILABLE] Temporary failure, try again"],
        )
        assert m.noop()[0] == "OK"
        assert m.select("INBOX") == ("OK", [b"0"])  # a fresh index needs no rewrite
        assert m.logout()[0] == "BYE"
        assert pop.cmd(b"USER " + ALICE.encode()) == b"+OK\r\n"
        assert (
            pop.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n"
        )  # its lock file cannot be opened
        pop.close()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                smtp.sendmail(SENDER, [ALICE], crlf(body("refused")))
            # not a full disk: the general local-error answer, not 452 4.3.1
            assert (failed.value.smtp_code, failed.value.smtp_error) == (
                451,
                b"4.3.0 Requested action aborted: local error in processing",
            )
        door = system.run("pymta.queue_cmd", ALICE, input=body("door"))
        assert door.returncode == 75 and b"Read-only file system" in door.stderr
        # the runner, with its queue elsewhere, meets the read-only Maildir: deferred
        system.write_config(runner_config)
        log = run_once(system)
        deferred = rf"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=deferred \(4\.2\.0 [^\n]*Read-only file system"
        assert re.search(deferred, log), log
    finally:
        small_disk.remount("rw")
    assert queue_leftovers(qdir) == []
    assert re.search(
        r"error: [0-9A-F]{19}: cannot queue message from <carol@remote\.example>: "
        r"cannot create queue file: Read-only file system",
        logfile.read_text(),
    )
    log = run_once(system)
    assert f"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=sent" in log
    assert len(maildir_files(store / "example.test" / "alice")["new"]) == 1


# -- a missing users file ------------------------------------------------------------------------------


def test_missing_users_file_is_a_temporary_failure_everywhere(make_mailsys):
    system = make_mailsys("[smtpd]\nprocesses = 1\n[pop3d]\nprocesses = 1\n[imapd]\nprocesses = 1\n")
    smtp_port, smtp_log = start_logged(system, "pymta.smtpd")
    pop_port, _ = start_logged(system, "pypop.pop3d")
    imap_port, _ = start_logged(system, "pyimap.imapd")
    qid = Queue(system.root / "queue").enqueue(SENDER, [ALICE], body("waiting"))
    users = system.root / "users"
    users.rename(system.root / "users.away")  # e.g. being replaced by hand, or a broken NFS mount

    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail(SENDER) == (250, b"2.1.0 Ok")
        assert smtp.rcpt(ALICE) == (451, b"4.3.0 <alice@example.test>: Temporary lookup failure")
        assert smtp.rcpt("nobody@example.test") == (451, b"4.3.0 <nobody@example.test>: Temporary lookup failure")
        assert smtp.rset() == (250, b"2.0.0 Ok")
        plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert smtp.docmd("AUTH", "PLAIN " + plain) == (454, b"4.7.0 Temporary authentication failure")
    pop = RawPOP(pop_port)
    assert pop.cmd(b"USER " + ALICE.encode()) == b"+OK\r\n"
    assert pop.cmd(b"PASS " + PASSWORD.encode()) == b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n"
    assert pop.cmd(b"QUIT").startswith(b"+OK")
    pop.close()
    m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
    typ, data = m._simple_command("LOGIN", ALICE, PASSWORD)
    assert (typ, data) == ("NO", [b"[UNAVAILABLE] Temporary authentication failure, try again later"])
    m.logout()
    log = run_once(system)  # the runner: deferred, never "unknown user"
    assert re.search(rf"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=deferred \(4\.", log), log
    assert "bounced" not in log and rcpt_state(system, qid)["status"] == "deferred"
    assert "Traceback" not in smtp_log.read_text()

    (system.root / "users.away").rename(users)  # back: everything works again
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        assert smtp.sendmail(SENDER, [ALICE], crlf(body("after"))) == {}
    m = imap_login(imap_port)
    m.logout()


# -- a corrupt folder index ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "empty", "low-uidnext"])
def test_corrupt_folder_index_is_rebuilt_without_reusing_uids(make_mailsys, damage):
    system = make_mailsys("[imapd]\nprocesses = 1\n")
    port, logfile = start_logged(system, "pyimap.imapd")
    m = imap_login(port)
    for n in range(3):
        assert m.append("INBOX", None, None, crlf(body(f"m{n}")))[0] == "OK"
    assert m.select("INBOX") == ("OK", [b"3"])
    uidvalidity = int(m.response("UIDVALIDITY")[1][0])
    assert m.uid("STORE", "1", "+FLAGS", r"(\Deleted)")[0] == "OK"
    assert m.expunge() == ("OK", [b"1"])  # UIDs 2 and 3 are left
    assert m.logout()[0] == "BYE"
    index = system.maildir() / INDEX_NAME
    if damage == "garbage":
        index.write_bytes(b"\x00\xffnot an index\n" * 20)
    elif damage == "empty":
        index.write_bytes(b"")  # what a crash on a file system without data journaling can leave
    else:  # a header whose UIDNEXT went down: it must never hand out UID 2 or 3 again
        head, rest = index.read_bytes().split(b"\n", 1)
        fields = head.split()
        fields[2] = b"1"
        index.write_bytes(b" ".join(fields) + b"\n" + rest)

    m = imap_login(port)
    assert m.select("INBOX") == ("OK", [b"2"])
    new_validity = int(m.response("UIDVALIDITY")[1][0])
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    uids = [int(re.search(rb"UID (\d+)", d[0]).group(1)) for d in data if isinstance(d, tuple)]
    subjects = [d[1].strip() for d in data if isinstance(d, tuple)]
    assert subjects == [b"Subject: m1", b"Subject: m2"]
    if damage == "low-uidnext":
        assert (new_validity, uids) == (uidvalidity, [2, 3])  # the index was still readable: same UIDs
        typ, data = m.append("INBOX", None, None, crlf(body("m3")))
        assert (typ, data) == ("OK", [f"[APPENDUID {uidvalidity} 4] APPEND completed".encode()])
    else:
        # rebuilt: renumbered from 1, so UIDVALIDITY must change (RFC 3501 2.3.1.1),
        # even though the rebuild happens within the second the old index was made
        assert uids == [1, 2] and new_validity != uidvalidity
        assert new_validity > uidvalidity
    assert m.logout()[0] == "BYE"
    assert FolderIndex(system.maildir()).read() is not None  # rewritten, parsable
    assert "Traceback" not in logfile.read_text()


# -- corrupt queue entries while the runner is running ------------------------------------------


def test_running_qrunner_quarantines_corrupt_entries_logs_them_and_goes_on(mailsys):
    new = mailsys.root / "queue" / "new"
    corrupt = {
        "0123456789ABC000001": b"not json\nbody\n",
        "0123456789ABC000002": b'{"v":1,"id":"0123456789ABC000002","arrival":1.0,"sender":"a@b"',  # no newline: cut off
        "0123456789ABC000003": b'{"v":1,"id":"x","arrival":1.0,"sender":7,"recipients":[1]}\nbody\n',  # wrong types
        "0123456789ABC000004": b'{"v":9}\nbody\n',  # unknown version
        "0123456789ABC000005": b"\xff\xfe\x00\x01" * 50,  # binary junk
    }
    for name, data in corrupt.items():
        (new / name).write_bytes(data)
    logfile = mailsys.root / "qrunner.log"
    with open(logfile, "wb") as err:
        proc = subprocess.Popen(
            mailsys.program("pymta.qrunner"), env=env_with_repo(), stdout=subprocess.DEVNULL, stderr=err
        )
    mailsys.procs.append(proc)
    good = [Queue(mailsys.root / "queue").enqueue(SENDER, [ALICE], body(f"good{n}")) for n in range(3)]
    mailsys.wait_messages(3, timeout=30)
    assert mailsys.wait_queue_empty() == []
    assert proc.poll() is None  # still running
    assert sorted(os.listdir(mailsys.root / "queue" / "corrupt")) == sorted(corrupt)
    deadline = time.time() + 10
    while time.time() < deadline and logfile.read_text().count("removed") < 3:
        time.sleep(0.05)
    log = logfile.read_text()
    for name in corrupt:
        assert re.search(rf"error: corrupt queue entry {name}: .+; moved to corrupt/", log), (name, log)
    for qid in good:
        assert f"{qid}: to=<{ALICE}>, orig_to=<{ALICE}>, status=sent (2.0.0 delivered to maildir)" in log
    assert "Traceback" not in log and "unexpected error" not in log


# -- a DNS server that never answers -----------------------------------------------------------------


def test_silent_dns_server_defers_without_bouncing_or_stalling_the_runner(make_mailsys):
    """A UDP socket that takes every query and answers none: the lookup times out
    after relay.dns_timeout, the remote recipient is deferred (4.4.3), nothing
    bounces, and the local message in the same pass is delivered."""
    swallow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    swallow.bind(("127.0.0.1", 0))
    swallow.settimeout(0.2)
    queries = []
    stop = threading.Event()

    def drink():
        while not stop.is_set():
            try:
                queries.append(swallow.recvfrom(4096)[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=drink, daemon=True)
    thread.start()
    try:
        system = make_mailsys(
            f'[relay]\ndns_servers = ["127.0.0.1:{swallow.getsockname()[1]}"]\n'
            f"dns_timeout = 1.5\n[qrunner]\nretry_min = 60.0\n"
        )
        queue = Queue(system.root / "queue")
        remote = queue.enqueue(SENDER, ["rita@silent.test"], body("remote"))
        local = queue.enqueue(SENDER, [ALICE], body("local"))
        started = time.monotonic()
        log = run_once(system)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=5)
        swallow.close()
    assert queries, "the resolver never asked the silent server"
    assert elapsed >= 1.4, elapsed  # it did wait for the DNS timeout ...
    assert elapsed < 30, elapsed  # ... and no longer than a bounded time
    assert re.search(
        rf"{remote}: to=<rita@silent\.test>, orig_to=<rita@silent\.test>, status=deferred \(4\.4\.3 "
        rf"domain silent\.test: MX lookup failed \((LifetimeTimeout|Timeout)\)\)",
        log,
    ), log
    st = rcpt_state(system, remote)
    assert st["status"] == "deferred" and "notified" not in st
    assert f"{local}: to=<{ALICE}>, orig_to=<{ALICE}>, status=sent" in log
    # no bounce: the only entry left is the deferred one
    assert [p.name for _, p in queue.all_entries()] == [remote]
    assert len(system.messages()) == 1
