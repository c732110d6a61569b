"""sendmail / mailq / newaliases, including sendmail run by an ordinary user (nobody).

The unprivileged tests need root to drop to nobody (setpriv); they are
skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, MailSystem, env_with_repo

SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def sendmail(system, *args, input=b"", as_nobody=False, prog="pymta.sendmail", timeout=60):
    argv = [sys.executable, "-m", prog, "-C", str(system.config), *args]
    if as_nobody:
        argv = SETPRIV + argv
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env_with_repo(), cwd="/")


def run_once(system) -> str:
    proc = system.run("pymta.qrunner", "--once")
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def entries(system):
    from pymta.queue import Queue

    q = Queue(system.root / "queue")
    out = []
    for _, path in q.all_entries():
        head, _, body = path.read_bytes().partition(b"\n")
        out.append((json.loads(head), body))
    return out


def test_sendmail_t_removes_bcc_and_completes_headers(mailsys):
    proc = sendmail(
        mailsys,
        "-t",
        "-i",
        "-f",
        "alice@example.test",
        "-F",
        "Alice Example",
        input=b"To: bob@example.test\r\nCc: Carol <carol@remote.test>\r\nBcc: secret@example.test,\r\n"
        b" hidden@remote.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\nafter dot\r\n",
    )
    assert proc.returncode == 0, proc.stderr
    [(env, body)] = entries(mailsys)
    assert env["sender"] == "alice@example.test"
    assert sorted(env["recipients"]) == [
        "bob@example.test",
        "carol@remote.test",
        "hidden@remote.test",
        "secret@example.test",
    ]
    head, _, text = body.partition(b"\n\n")
    assert b"Bcc" not in head and b"secret@" not in head and b"hidden@" not in head
    assert b'From: "Alice Example" <alice@example.test>\n' in head
    assert re.search(rb"^Date: \w{3}, \d", head, re.M)
    assert re.search(rb"^Message-ID: <.+@mx\.example\.test>$", head, re.M)
    assert text == b"body\n.\nafter dot\n"  # -i: a lone dot does not end the message
    assert b"\r" not in body


def test_sendmail_dot_ends_message_without_i_and_keeps_existing_headers(mailsys):
    proc = sendmail(
        mailsys,
        "bob@example.test",
        input=b"From: x@example.test\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <a@b>\n\nkept\n.\nlost\n",
    )
    assert proc.returncode == 0, proc.stderr
    [(env, body)] = entries(mailsys)
    assert env["sender"] == "root@example.test"  # the caller's login name
    received, rest = body.split(b"\n", 2)[:2], body.split(b"\n", 2)[2]
    assert received[0].startswith(b"Received: by mx.example.test") and received[1].startswith(b"\tid ")
    assert rest == b"From: x@example.test\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <a@b>\n\nkept\n"


def test_sendmail_errors_use_sysexits_and_queue_nothing(mailsys):
    assert sendmail(mailsys, input=b"Subject: x\n\n").returncode == 64  # no recipients
    assert sendmail(mailsys, "-t", input=b"Subject: no to\n\nx\n").returncode == 64
    assert sendmail(mailsys, "bad address@x", input=b"x\n").returncode == 65
    assert sendmail(mailsys, "-f", "a\r\nb@x", "bob@example.test", input=b"x\n").returncode == 65
    assert sendmail(mailsys, "-Z", "bob@example.test", input=b"x\n").returncode == 64
    assert sendmail(mailsys, "-bd").returncode == 64
    assert not entries(mailsys)
    # a queue that cannot take the file: 75, and nothing is lost silently
    tmp = mailsys.root / "queue" / "tmp"
    tmp.rmdir()
    tmp.write_text("")
    os.chmod(tmp, 0o644)
    proc = sendmail(mailsys, "bob@example.test", input=b"Subject: x\n\nbody\n")
    assert proc.returncode in (75, 0)
    if proc.returncode == 0:  # root cannot write the queue -> went to the maildrop instead
        assert list((mailsys.root / "maildrop").iterdir())


def test_sendmail_ignores_the_usual_flags_silently(mailsys):
    proc = sendmail(
        mailsys,
        "-oi",
        "-odb",
        "-oem",
        "-oep",
        "-N",
        "failure,delay",
        "-B",
        "8BITMIME",
        "-v",
        "-m",
        "-oMrfoo",
        "-L",
        "label",
        "-r",
        "alice@example.test",
        "--",
        "bob@example.test",
        input=b"Subject: flags\n\nx\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert b"queued as" in proc.stderr  # -v
    [(env, _)] = entries(mailsys)
    assert env["meta"]["notify"] == "failure,delay" and env["meta"]["body"] == "8BITMIME"


# Runs a command in a mount namespace whose /dev has a /dev/log socket of its
# own (the test machine has no syslog daemon); prints the command's exit
# status, stderr and the syslog datagrams it sent, as JSON.
SYSLOG_CATCHER = r"""
import json, os, socket, subprocess, sys, tempfile
d = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "none", d], check=True)
for n in ("null", "zero", "random", "urandom", "full"):
    open(os.path.join(d, n), "w").close()
    subprocess.run(["mount", "--bind", "/dev/" + n, os.path.join(d, n)], check=True)
os.symlink("/proc/self/fd", d + "/fd")
subprocess.run(["mount", "--bind", d, "/dev"], check=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
proc = subprocess.run(sys.argv[1:], stdin=sys.stdin, capture_output=True)
sock.setblocking(False)
lines = []
while True:
    try:
        lines.append(sock.recv(65536).decode("utf-8", "replace"))
    except BlockingIOError:
        break
print(json.dumps({"code": proc.returncode, "stderr": proc.stderr.decode(), "syslog": lines}))
"""


def with_private_syslog(argv: list[str], input: bytes) -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private /dev/log")
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SYSLOG_CATCHER, *argv]
    done = subprocess.run(cmd, input=input, capture_output=True, timeout=120, env=env_with_repo(), cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sendmail_is_silent_on_success_and_logs_to_syslog(mailsys):
    # cron mails whatever a job prints: Postfix's sendmail says nothing on success
    prog = [sys.executable, "-m", "pymta.sendmail", "-C", str(mailsys.config)]
    got = with_private_syslog([*prog, "bob@example.test"], b"Subject: quiet\n\nx\n")
    assert (got["code"], got["stderr"]) == (0, "")
    [line] = got["syslog"]
    assert re.match(r"<22>.*sendmail\[\d+\]: \w+: uid=0, from=<root@example.test>, nrcpt=1 \(queued\)$", line), line
    # -odi: the queue runner it starts logs there too
    got = with_private_syslog([*prog, "-odi", "alice@example.test"], b"Subject: now\n\nx\n")
    assert (got["code"], got["stderr"]) == (0, "")
    assert any("status=sent" in line or "delivered" in line for line in got["syslog"]), got["syslog"]
    assert len(mailsys.messages("alice")) == 1
    # -v: the line on stderr too
    proc = sendmail(mailsys, "-v", "bob@example.test", input=b"Subject: loud\n\nx\n")
    assert proc.returncode == 0
    assert re.fullmatch(rb"sendmail: queued as \w+: from=<root@example.test>, nrcpt=1 \(queued\)\n", proc.stderr)


def test_sendmail_odi_delivers_before_returning_and_q_runs_the_queue(mailsys):
    proc = sendmail(mailsys, "-odi", "bob@example.test", input=b"Subject: now\n\nx\n")
    assert proc.returncode == 0, proc.stderr
    assert len(mailsys.messages("bob")) == 1
    assert not entries(mailsys)
    sendmail(mailsys, "-odq", "alice@example.test", input=b"Subject: later\n\nx\n")
    assert sendmail(mailsys, "-q").returncode == 0
    assert len(mailsys.messages("alice")) == 1


def test_sendmail_q_and_odi_with_a_running_runner_only_wake_it(mailsys):
    """-q flushes (under the lock) and wakes; -odi wakes with the queue ID; neither runs a pass itself."""
    from pymta.queue import Queue

    q = Queue(mailsys.root / "queue")
    qid = q.enqueue("alice@example.test", ["bob@example.test"], b"Subject: waiting\n\nx\n")
    entry = q.open_entry(q.locate(qid))
    with entry:
        q.defer(entry, time.time() + 3600)
    mailsys.start_qrunner()
    proc = sendmail(mailsys, "-q")
    assert proc.returncode == 0, proc.stderr
    mailsys.wait_messages(1, "bob", timeout=10)
    assert b"qrunner" not in proc.stderr  # the running runner delivered it, not a pass run by sendmail
    proc = sendmail(mailsys, "-odi", "alice@example.test", input=b"Subject: now\n\nx\n")
    assert proc.returncode == 0 and b"qrunner" not in proc.stderr, proc.stderr
    mailsys.wait_messages(1, "alice", timeout=10)


def test_sendmail_bs_is_an_smtp_session(mailsys):
    session = (
        b"EHLO me\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: via -bs\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    )
    proc = sendmail(mailsys, "-bs", input=session)
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.decode()
    assert replies.startswith("220 ")
    assert "250 2.0.0" in replies or re.search(r"^250 .*queued", replies, re.M), replies
    assert replies.rstrip().splitlines()[-1].startswith("221")
    [(env, body)] = entries(mailsys)
    assert env["sender"] == "alice@example.test" and env["recipients"] == ["bob@example.test"]
    assert b"Subject: via -bs\n\nhello\n" in body


def test_mailq_and_newaliases_entry_points(mailsys):
    assert sendmail(mailsys, "-bp").stdout == b"Mail queue is empty\n"
    sendmail(mailsys, "-f", "alice@example.test", "someone@remote.test", input=b"Subject: q\n\nx\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bin" / "mailq"), "-C", str(mailsys.config)], capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert re.match(r"[0-9A-F]{19}\*\s+\d+ \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d\s+alice@example.test$", lines[1]), lines
    assert lines[2].strip() == "someone@remote.test"
    assert lines[-1] == "-- 1 Kbytes in 1 Request."
    proc = subprocess.run(
        [sys.executable, str(REPO / "bin" / "newaliases"), "-C", str(mailsys.config)], capture_output=True, timeout=30
    )
    assert proc.returncode == 0 and b"1 aliases" in proc.stderr


CRON_MAIL = b"From: root (Cron Daemon)\nTo: carol, Bob <bob>, alice@example.test\nCc: undisclosed-recipients:;\n"


def test_local_submission_gets_received_and_qualified_header_addresses(mailsys):
    # Postfix: "Received: by HOST (Postfix, from userid N) id ID; DATE", and append_at_myorigin
    proc = sendmail(mailsys, "bob", input=CRON_MAIL + b"Subject: cron\n\nout\n")
    assert proc.returncode == 0, proc.stderr
    [(env, body)] = entries(mailsys)
    received = rf"Received: by mx\.example\.test \(pymail, from userid 0\)\n\tid {env['id']}; \w{{3}}, \d\d \w{{3}} "
    assert re.match(received.encode(), body), body
    assert b"\nFrom: root@example.test (Cron Daemon)\n" in body
    assert b"\nTo: carol@example.test, Bob <bob@example.test>, alice@example.test\n" in body
    assert b"\nCc: undisclosed-recipients:;\n" in body
    assert env["recipients"] == ["bob@example.test"]


def test_maildrop_submission_gets_received_from_the_pickup(public_sys):
    system = public_sys
    proc = sendmail(system, "bob", as_nobody=True, input=CRON_MAIL + b"Subject: cron\n\nout\n")
    assert proc.returncode == 0, proc.stderr
    log = run_once(system)
    qid = re.search(r"(\w+): uid=65534, user=nobody, .*queued from maildrop", log).group(1)
    data = system.messages("bob")[0].read_bytes()
    assert re.search(rf"\nReceived: by mx\.example\.test \(pymail, from userid 65534\)\n\tid {qid}; ".encode(), data)
    assert data.count(b"Received:") == 1  # sendmail adds none on this path: a user could forge it
    assert b"\nTo: carol@example.test, Bob <bob@example.test>, alice@example.test\n" in data


def test_sendmail_bv_reports_each_route_and_sends_nothing(make_mailsys):
    system = make_mailsys('[relay]\ntransport_map = {"remote.test" = "[127.0.0.1]:2525"}\n')
    (system.root / "aliases").write_text("postmaster: alice\nteam: bob, |cat >/dev/null, carol@remote.test\n")
    proc = sendmail(system, "-bv", "alice", "postmaster@example.test", "team", input=b"")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    box = system.root / "mail" / "example.test"
    assert proc.stdout.decode().splitlines() == [
        f"alice@example.test: deliverable: local user alice@example.test, Maildir {box}/alice/",
        f"postmaster@example.test -> alice@example.test: deliverable: local user alice@example.test, "
        f"Maildir {box}/alice/",
        f"team@example.test -> bob@example.test: deliverable: local user bob@example.test, Maildir {box}/bob/",
        "team@example.test: deliverable: alias command |cat >/dev/null",
        "team@example.test -> carol@remote.test: deliverable: smtp via relay.transport_map [127.0.0.1]:2525: "
        "127.0.0.1[127.0.0.1]:2525",
    ]
    proc = sendmail(system, "-bv", "alice@example.test", "nobody@example.test")
    assert proc.returncode == 67
    assert proc.stdout.decode().splitlines()[1] == "nobody@example.test: undeliverable: 5.1.1 unknown user"
    assert sendmail(system, "-bv").returncode == 64
    assert not entries(system) and not system.messages("alice")


def test_newaliases_warns_about_a_bad_line_and_the_rest_works(mailsys):
    # Postfix's newaliases warns and builds the rest (exit 0)
    (mailsys.root / "aliases").write_text("postmaster: alice\nthis line is wrong\nteam: bob\n")
    proc = sendmail(mailsys, "-bi")
    assert proc.returncode == 0, proc.stderr
    assert re.search(rb"newaliases: warning: \S+/aliases, line 2: expected 'name: target, \.\.\.'", proc.stderr)
    assert b": 2 aliases" in proc.stderr
    assert sendmail(mailsys, "team", input=b"Subject: to the team\n\nx\n").returncode == 0
    run_once(mailsys)
    assert len(mailsys.messages("bob")) == 1


# -- an ordinary user ---------------------------------------------------------------------


@pytest.fixture
def public_sys(tls_files):
    """A pymail tree nobody can reach (mode 0755 path), queue 0750 root-only."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as an ordinary user")
    root = Path(tempfile.mkdtemp(prefix="pymail-sendmail-"))
    os.chmod(root, 0o755)
    system = MailSystem(root, tls_files)
    os.chmod(system.config, 0o644)
    (root / "maildrop").mkdir()
    os.chmod(root / "maildrop", 0o1733)
    yield system
    system.stop_all()
    shutil.rmtree(root, ignore_errors=True)


def test_unprivileged_sendmail_goes_through_the_maildrop(public_sys):
    system = public_sys
    proc = sendmail(
        system,
        "-t",
        "-F",
        "No Body",
        as_nobody=True,
        input=b"To: bob@example.test\nBcc: alice@example.test\nSubject: from nobody\n\nhello\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert not entries(system)  # not in the queue yet: nobody cannot write it
    [dropped] = [p for p in (system.root / "maildrop").iterdir() if not p.name.startswith(".")]
    assert dropped.stat().st_uid == 65534
    log = run_once(system)
    assert "queued from maildrop" in log
    assert not [p for p in (system.root / "maildrop").iterdir() if not p.name.startswith(".")]
    [bob] = system.messages("bob")
    data = bob.read_bytes()
    assert b'From: "No Body" <nobody@example.test>' in data
    assert b"X-Authentication-Warning" not in data  # nobody's own address
    assert b"Bcc" not in data
    assert len(system.messages("alice")) == 1


def test_unprivileged_sender_forgery_is_marked_and_logged(public_sys):
    system = public_sys
    proc = sendmail(
        system,
        "-f",
        "ceo@example.test",
        "bob@example.test",
        as_nobody=True,
        input=b"From: ceo@example.test\nSubject: forged\n\nsend money\n",
    )
    assert proc.returncode == 0, proc.stderr
    log = run_once(system)
    assert "uid=65534 (nobody) set sender to <ceo@example.test>" in log
    [bob] = system.messages("bob")
    data = bob.read_bytes()
    assert b"X-Authentication-Warning: mx.example.test: nobody set sender to <ceo@example.test> using -f\n" in data


def test_unprivileged_maildrop_rejects_junk_and_links(public_sys):
    system = public_sys
    drop = system.root / "maildrop"
    # junk written directly by a user, and a symlink to a root-only file
    subprocess.run(
        SETPRIV + ["sh", "-c", f'printf "not json\\nx\\n" > {drop}/JUNK1; ln -s /etc/shadow {drop}/LINK1'], check=True
    )
    log = run_once(system)
    assert "refused" in log or "cannot open" in log
    assert not entries(system)
    assert not [p for p in drop.iterdir() if not p.name.startswith(".")]


def test_unprivileged_sendmail_bs(public_sys):
    system = public_sys
    session = (
        b"HELO me\r\nMAIL FROM:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    proc = sendmail(system, "-bs", input=session, as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    assert b"\r\n250 " in proc.stdout and b"221" in proc.stdout
    run_once(system)
    assert len(system.messages("bob")) == 1


def test_running_runner_picks_up_the_maildrop_promptly(public_sys):
    system = public_sys
    system.start_qrunner()  # scan_interval is 60 s: only the maildrop wake socket can make this quick
    assert stat.S_IMODE(os.stat(system.root / "maildrop" / ".wake").st_mode) == 0o666
    start = time.time()
    proc = sendmail(system, "bob@example.test", as_nobody=True, input=b"Subject: quick\n\nx\n")
    assert proc.returncode == 0, proc.stderr
    system.wait_messages(1, "bob", timeout=10)
    assert time.time() - start < 3.0


def test_maildrop_is_picked_up_once_by_a_runner_of_several_processes(public_sys):
    """A maildrop file has no lock: of the runner's delivery processes only
    the first picks it up, so none is queued twice."""
    system = public_sys
    system.write_config("[qrunner]\nprocesses = 2\n")
    total = 20
    for n in range(total):
        proc = sendmail(system, "bob@example.test", as_nobody=True, input=f"Subject: drop {n}\n\nx\n".encode())
        assert proc.returncode == 0, proc.stderr
    system.start_qrunner()
    system.wait_messages(total, "bob", timeout=20)
    time.sleep(1.0)  # a second copy would come now
    subjects = sorted(re.search(rb"^Subject: (.*)$", p.read_bytes(), re.M).group(1) for p in system.messages("bob"))
    assert subjects == sorted(f"drop {n}".encode() for n in range(total))


def test_mailq_as_an_ordinary_user_through_the_runner(public_sys):
    # Postfix lets anyone list the queue (its showq service); nobody cannot read ours, the runner can
    system = public_sys
    proc = sendmail(system, "-bp", as_nobody=True)  # no runner yet: a clear refusal
    assert proc.returncode == 69 and b"queue runner does not answer" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr
    from pymta.queue import Queue

    q = Queue(system.root / "queue")
    qid = q.enqueue("alice@example.test", ["someone@remote.test"], b"Subject: held\n\nsecret body\n")
    assert q.move(qid, "hold")
    system.start_qrunner()
    deadline = time.time() + 10
    while not (system.root / "maildrop" / ".mailq").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc = sendmail(system, "-bp", as_nobody=True, prog="pymta.sendmail")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert re.match(rf"{qid}!\s+\d+ \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d\s+alice@example.test$", lines[1]), lines
    assert lines[2].strip() == "someone@remote.test" and lines[-1] == "-- 1 Kbytes in 1 Request."
    assert b"secret body" not in proc.stdout
    # the same listing as root's, which reads the queue itself
    assert sendmail(system, "-bp").stdout == proc.stdout


def test_mailq_dates_are_padded_as_postfix_pads_them(mailsys):
    from pymta.queue import Queue
    from pymta.sendmail import format_mailq

    q = Queue(mailsys.root / "queue")
    qid = q.enqueue("alice@example.test", ["bob@example.test"], b"Subject: x\n\nx\n")
    arrival = time.mktime((2026, 12, 4, 9, 5, 7, 0, 0, -1))
    path = q.locate(qid)
    head, _, rest = path.read_bytes().partition(b"\n")
    record = json.loads(head)
    record["arrival"] = arrival
    path.write_bytes(json.dumps(record).encode() + b"\n" + rest)
    line = format_mailq(q).splitlines()[1]
    assert f"{qid}* " in line and " Fri Dec  4 09:05:07 " in line, line
