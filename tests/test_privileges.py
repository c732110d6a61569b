"""The privilege model (pymail-security(7), issue 11 section 1): nothing a user
controls runs with another identity.

* ``pymail run`` as root runs every daemon and the queue runner as
  ``daemon_user``; only pymda-local keeps root.
* A user's pipe runs as the mailbox owner: the runner's own uid in process,
  another uid through pymda-local -- never root.
* The runner refuses root unless the config says ``daemon_user = "root"``.
* pymda-local serves only root and daemon_user, and checks every request.
* A rules file another user could write is not run by a root delivery.
* A local delivery repeated after a crash finds its earlier copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, env_with_repo, free_port, wait_port
from test_access_control import TEST_USER, daemon_pids, status_ids, test_user  # noqa: F401  (fixture)

MSG = b"Subject: privileges\n\nbody\n"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: watches processes switch users")


def pymail(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bin" / "pymail"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env_with_repo(),
        timeout=120,
        **kw,
    )


@pytest.fixture
def open_dir():
    """A folder every uid can search (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="pymail-priv-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def send(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.sendmail("someone@remote.example", [rcpt], MSG.replace(b"\n", b"\r\n"))


@needs_root
def test_pymail_run_as_root_serves_as_daemon_user_and_pipes_run_as_the_owner(open_dir, test_user):
    pw = test_user
    tree = open_dir / "pm"
    made = pymail("init", tree, "--domain", "example.test", "--hostname", "mx.example.test", "--daemon-user", TEST_USER)
    assert made.returncode == 0, made.stderr
    assert 'daemon_user = "pymailh5"' in (tree / "pymail.toml").read_text()
    for sub in ("queue", "mail", "run"):  # what the daemons write is theirs; the config and users stay root's
        assert (tree / sub).stat().st_uid == pw.pw_uid, sub
    assert (tree / "pymail.toml").stat().st_uid == 0 and (tree / "tls" / "key.pem").stat().st_uid == 0
    key = (tree / "tls" / "key.pem").stat()  # root's, read by the daemons' group for a reload (SIGHUP)
    assert (key.st_gid, key.st_mode & 0o777) == (pw.pw_gid, 0o640)
    assert pymail("user", "add", tree, "alice@example.test").returncode == 0
    # bob's mailbox belongs to another uid (nobody), with a pipe in his rules
    with open(tree / "users", "a") as fh:
        fh.write("bob@example.test:{PLAIN}x:65534:65534::::\n")
    bob = tree / "mail" / "example.test" / "bob"
    for sub in ("new", "cur", "tmp"):
        (bob / sub).mkdir(parents=True)
    (bob / ".procmailrc").write_text(":0 c\n| id -u > uid.txt\n:0\n.Sub/\n")
    for path in [bob, *bob.iterdir()]:
        os.chown(path, 65534, 65534)
    alice = tree / "mail" / "example.test" / "alice"
    (alice / ".procmailrc").write_text(":0 c\n| id -u > uid.txt\n:0\n.Sub/\n")  # root's file, run as the owner
    check = pymail("config", "check", tree)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "delivery in process: alice@example.test" in check.stdout
    assert "delivery pymda-local: bob@example.test (uid 65534)" in check.stdout

    services = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
    ports = {s: free_port() for s in services}
    args = [a for s, p in ports.items() for a in (f"--{s}-port", str(p))]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "pymail"), "run", str(tree), *args],
        env=env_with_repo(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for port in ports.values():
            wait_port(port, timeout=30, proc=proc)
        wait_for(
            lambda: (tree / "run" / "local.sock").exists() and (tree / "queue" / "wake.sock").exists(),
            what="runner and pymda-local",
        )
        send(ports["smtp"], "alice@example.test")
        send(ports["smtp"], "bob@example.test")
        wait_for(
            lambda: list((alice / ".Sub" / "new").glob("*")) if (alice / ".Sub" / "new").is_dir() else [],
            what="alice's delivery",
        )
        wait_for(
            lambda: list((bob / ".Sub" / "new").glob("*")) if (bob / ".Sub" / "new").is_dir() else [],
            what="bob's delivery",
        )
        assert (alice / "uid.txt").read_text().strip() == str(pw.pw_uid)  # in process, the runner's uid
        assert (bob / "uid.txt").read_text().strip() == "65534"  # pymda-local became bob's owner
        [bobs] = list((bob / ".Sub" / "new").iterdir())
        assert bobs.stat().st_uid == 65534
        everyone = [p for p in daemon_pids(proc.pid, "") if p != proc.pid]
        roots = []
        for pid in everyone:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                uids = status_ids(pid)["Uid"]
            except (OSError, KeyError):
                continue  # gone meanwhile
            if b"pymda.localserver" in cmdline:  # the one step that keeps root (its children switch)
                roots += [pid] if uids == [0] * 4 else []
                continue
            assert uids == [pw.pw_uid] * 4, (cmdline, uids)
        assert roots
        assert len(everyone) >= 9  # seven listeners, the runner, pymda-local (and their workers)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_root
def test_queue_runner_refuses_root_without_daemon_user(make_mailsys):
    system = make_mailsys('daemon_user = ""\n')
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 78
    assert b"refusing to run as root" in run.stderr
    check = pymail("config", "check", system.root)
    assert check.returncode == 78 and "daemon_user" in check.stdout


@needs_root
def test_queue_runner_started_as_root_becomes_daemon_user(open_dir, test_user, tls_files):
    from conftest import MailSystem

    pw = test_user
    system = MailSystem(open_dir, tls_files, f'daemon_user = "{TEST_USER}"\n')
    for path in (system.root / "mail", system.root / "queue"):
        shutil.chown(path, pw.pw_uid, pw.pw_gid)
    for path in (system.root / "users", system.config):
        os.chmod(path, 0o644)
    (system.maildir("alice") / "new").mkdir(parents=True)
    (system.maildir("alice") / ".procmailrc").parent.mkdir(exist_ok=True)
    (system.maildir("alice") / ".procmailrc").write_text(":0 c\n| id -u > uid.txt\n:0\n.Sub/\n")
    for dirpath, dirnames, _filenames in os.walk(system.root / "mail"):
        for name in dirnames:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)
    from pymta.queue import Queue

    Queue(system.root / "queue").enqueue("carol@remote.example", ["alice@example.test"], MSG)
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert f"running as {TEST_USER}".encode() in run.stderr
    assert (system.maildir("alice") / "uid.txt").read_text().strip() == str(pw.pw_uid)
    assert all(p.stat().st_uid == pw.pw_uid for p in (system.root / "queue").rglob("*"))


def _ask(path: Path, request: bytes, fd: int | None = None, as_uid: int | None = None) -> dict | None:
    """One request to pymda-local, from a child that may first become ``as_uid``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if as_uid is not None:
                os.setgid(as_uid)
                os.setuid(as_uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                socket.send_fds(sock, [request], [fd] if fd is not None else [])
                answer = sock.recv(4096)
            os.write(w, answer)
        except OSError as exc:
            os.write(w, json.dumps({"error": str(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


@needs_root
def test_pymda_local_serves_only_its_clients_and_checks_requests(mailsys, open_dir):
    sock_path = open_dir / "local.sock"
    proc = mailsys.start(mailsys.program("pymda.localserver", "--listen", str(sock_path)))
    wait_for(sock_path.exists, what="pymda-local socket")
    assert sock_path.stat().st_mode & 0o777 == 0o600
    os.chmod(sock_path, 0o666)  # so that the kernel's check, not the file mode, is what refuses
    message = open_dir / "msg"
    message.write_bytes(b'{"v":1}\n' + MSG)
    fd = os.open(message, os.O_RDONLY)
    try:
        good = (
            json.dumps(
                {"rcpt": "alice@example.test", "sender": "a@remote.example", "qid": "ABC123", "offset": 8}
            ).encode()
            + b"\n"
        )
        assert _ask(sock_path, good, fd, as_uid=65534)["code"] == 77  # not root, not daemon_user
        for bad in (
            b"not json\n",
            b'{"rcpt": "-oQ/tmp/x@example.test", "offset": 8}\n',
            b'{"rcpt": "alice@example.test", "qid": "../x", "offset": 8}\n',
            b'{"rcpt": "alice@example.test\\nX: y", "offset": 8}\n',
        ):
            assert _ask(sock_path, bad, fd)["code"] == 64, bad
        assert _ask(sock_path, good)["code"] == 64  # no descriptor
        assert _ask(sock_path, good, fd)["code"] == 0
        [delivered] = mailsys.messages("alice")
        assert delivered.read_bytes().endswith(MSG) and "VABC123" in delivered.name
        assert proc.poll() is None
    finally:
        os.close(fd)


@needs_root
def test_root_delivery_does_not_run_rules_another_user_could_write(open_dir, test_user, tls_files):
    """A root-owned Maildir with no uid is root's own; a rules file in a home
    that belongs to someone else is skipped (procmail's suspicious rcfile)."""
    from conftest import MailSystem

    pw = test_user
    system = MailSystem(open_dir, tls_files)
    home = open_dir / "home-of-dave"
    home.mkdir()
    (home / ".procmailrc").write_text(":0\n| id -u > /tmp/pymail-priv-pwned\n")
    shutil.chown(home, pw.pw_uid, pw.pw_gid)
    shutil.chown(home / ".procmailrc", pw.pw_uid, pw.pw_gid)
    with open(system.root / "users", "a") as fh:
        fh.write(f"dave@example.test:{{PLAIN}}x::::{home}::\n")
    proc = system.run("pymda.deliver", "-d", "dave@example.test", "-f", "a@remote.example", input=MSG)
    assert proc.returncode == 0, proc.stderr
    assert b"not used: owned by uid" in proc.stderr
    assert not os.path.exists("/tmp/pymail-priv-pwned")
    [msg] = system.messages("dave")
    assert msg.read_bytes().endswith(MSG)


@pytest.mark.parametrize("mode", ["inprocess", "exec"])
@pytest.mark.parametrize("rules", [False, True])
def test_local_delivery_repeated_after_a_crash_finds_its_earlier_copy(make_mailsys, mode, rules):
    """The runner died after writing the Maildir file and before recording it:
    the next run knows the delivery may be a repeat, and the file named with
    the queue ID and recipient is found instead of written twice."""
    system = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
    box = system.maildir("alice")
    folder = box / ".Sub" if rules else box
    if rules:
        box.mkdir(parents=True, exist_ok=True)
        (box / ".procmailrc").write_text(":0\n.Sub/\n")
    from pymda.deliver import deliver_message
    from pymta.lib import config
    from pymta.lib.users import UsersFile
    from pymta.queue import Queue

    queue = Queue(system.root / "queue")
    qid = queue.enqueue("carol@remote.example", ["alice@example.test"], MSG)
    cfg = config.load(system.config)
    deliver_message(
        cfg, UsersFile(cfg.path_of("users")), "alice@example.test", MSG, "carol@remote.example", qid=qid
    )  # the attempt the crash interrupted
    [entry] = [queue.open_entry(p) for p in (system.root / "queue" / "new").iterdir()]
    with entry:
        if not queue.mark_attempt(entry):
            queue.write_state(
                qid,
                {
                    "first": time.time(),
                    "rcpts": [
                        {
                            "to": "alice@example.test",
                            "kind": "address",
                            "orig": "alice@example.test",
                            "status": "attempting",
                            "attempts": 1,
                            "reason": "",
                        }
                    ],
                },
            )
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert b"possible duplicate" in run.stderr
    assert len(list((folder / "new").iterdir())) == 1
    assert not system.queue_files()
    # a second message (another queue ID) is not mistaken for the first
    queue.enqueue("carol@remote.example", ["alice@example.test"], MSG)
    assert system.run("pymta.qrunner", "--once").returncode == 0
    assert len(list((folder / "new").iterdir())) == 2


def test_maildir_once_finds_a_tagged_copy_in_cur(tmp_path):
    from pymda import maildir

    tag = maildir.queue_tag("0123456789ABCDEF012", "Alice@Example.Test")
    assert tag == maildir.queue_tag("0123456789ABCDEF012", "alice@example.test")
    first = maildir.deliver(tmp_path, b"one\n", tag=tag, fsync=False)
    os.rename(first, tmp_path / "cur" / (first.name + ":2,S"))
    again = maildir.deliver(tmp_path, b"one\n", tag=tag, once=True, fsync=False)
    assert again.parent.name == "cur" and not list((tmp_path / "new").iterdir())
    other = maildir.deliver(
        tmp_path, b"two\n", tag=maildir.queue_tag("0123456789ABCDEF012", "bob@x.test"), once=True, fsync=False
    )
    assert other.parent.name == "new"
    assert maildir.deliver(tmp_path, b"three\n", tag=tag, fsync=False).parent.name == "new"  # without once: written


@needs_root
def test_init_as_root_refuses_a_folder_the_daemon_user_cannot_reach(tmp_path, test_user):
    """pytest's folders are mode 0700: the daemons could never reach a tree
    there, so init says so at once instead of leaving a crash loop to run."""
    made = pymail("init", tmp_path / "pm", "--daemon-user", TEST_USER)
    assert made.returncode == 73
    assert f"{TEST_USER} (daemon_user) cannot reach" in made.stderr and "mode 700" in made.stderr
    assert not (tmp_path / "pm").exists()


def test_repeat_finds_the_journal_when_the_user_already_deleted_the_copy(tmp_path):
    """The crash test's readers delete what they fetched: a retry after that
    must still write nothing (pymda/delivered.py)."""
    from pymda import delivered, maildir

    tag = maildir.queue_tag("0123456789ABCDEF012", "alice@example.test")
    first = maildir.deliver(tmp_path, b"one\n", tag=tag, fsync=False)
    first.unlink()  # read and deleted by POP3
    again = maildir.deliver(tmp_path, b"one\n", tag=tag, once=True, fsync=False)
    assert "since removed" in again.name and not list((tmp_path / "new").iterdir())
    assert not delivered.recorded(tmp_path, maildir.queue_tag("0123456789ABCDEF012", "bob@example.test"))
    # the journal keeps two generations, then forgets
    for i in range(delivered.LIMIT // 40 * 3):
        delivered.remember(tmp_path, f"{i:019d}", f"name{i:019d}")
    assert delivered.recorded(tmp_path, f"{delivered.LIMIT // 40 * 3 - 1:019d}")
    assert not delivered.recorded(tmp_path, tag)
    assert (tmp_path / "pymail-delivered").stat().st_size <= delivered.LIMIT + 60


def test_deliverer_killed_after_writing_makes_the_retry_look_first(make_mailsys):
    """pymda-deliver (exec mode) killed by a signal after it filed the message:
    the runner cannot know, so the retry is made with --once and finds it."""
    system = make_mailsys('[deliver]\nmode = "exec"\n')
    box = system.maildir("alice")
    box.mkdir(parents=True, exist_ok=True)
    (box / ".procmailrc").write_text(
        ":0 c\n.Sub/\n:0\n| test -e $HOME/killed || { touch $HOME/killed; kill -9 $PPID; }\n"
    )
    from pymta.queue import Queue

    queue = Queue(system.root / "queue")
    queue.enqueue("carol@remote.example", ["alice@example.test"], MSG)
    first = system.run("pymta.qrunner", "--once")
    assert first.returncode == 0 and b"exited -9" in first.stderr, first.stderr
    assert len(list((box / ".Sub" / "new").iterdir())) == 1
    assert queue.flush() == 1
    again = system.run("pymta.qrunner", "--once")
    assert b"possible duplicate" in again.stderr, again.stderr
    assert len(list((box / ".Sub" / "new").iterdir())) == 1  # found, not written twice
    assert not system.queue_files()


def test_repeat_finishes_a_copy_whose_rename_never_happened(tmp_path):
    """The attempt died after its tmp/ file was complete and journalled, before
    the rename into new/: the repeat moves that file in instead of writing."""
    from pymda import delivered, maildir

    tag = maildir.queue_tag("0123456789ABCDEF013", "alice@example.test")
    maildir.ensure_maildir(tmp_path)
    stranded = tmp_path / "tmp" / maildir.unique_name(tag)
    stranded.write_bytes(b"Subject: x\n\nbody\n")
    delivered.remember(tmp_path, tag, stranded.name)
    again = maildir.deliver(tmp_path, b"Subject: x\n\nbody\n", tag=tag, once=True, fsync=False)
    assert again.parent.name == "new" and again.read_bytes() == b"Subject: x\n\nbody\n"
    assert ",S=17,W=20" in again.name
    assert not list((tmp_path / "tmp").iterdir()) and len(list((tmp_path / "new").iterdir())) == 1


def test_repeat_never_finishes_a_tmp_file_that_was_not_journalled(tmp_path):
    """An attempt killed while writing leaves a tmp/ file that may be cut short
    and was never journalled; a later attempt's copy was read and deleted.
    The next repeat must not move the stale tmp/ file in (the crash test
    found this one)."""
    from pymda import maildir

    tag = maildir.queue_tag("0123456789ABCDEF014", "alice@example.test")
    maildir.ensure_maildir(tmp_path)
    stale = tmp_path / "tmp" / maildir.unique_name(tag)
    stale.write_bytes(b"Subject: x\n\nbo")  # the first attempt, killed mid-write
    second = maildir.deliver(tmp_path, b"Subject: x\n\nbody\n", tag=tag, once=True, fsync=False)
    second.unlink()  # read and deleted by POP3
    third = maildir.deliver(tmp_path, b"Subject: x\n\nbody\n", tag=tag, once=True, fsync=False)
    assert "since removed" in third.name
    assert not list((tmp_path / "new").iterdir()) and stale.exists()
