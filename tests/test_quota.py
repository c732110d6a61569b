"""QUOTA (issue 13 §2, RFC 9208): Dovecot's userdb_quota_rule in the users file,
Maildir++ maildirsize, enforcement at delivery (pymda-deliver 75, the queue's
4.2.2 deferral and expiry bounce, 452 4.2.2 at RCPT and in LMTP) and in IMAP
(GETQUOTAROOT, GETQUOTA, SETQUOTA, NO [OVERQUOTA] for APPEND and COPY)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from pymda import quota
from pymta.lib.users import UsersFile, parse_quota_rule, quota_limits
from pymta.queue import Queue

ALICE = "alice@example.test"
BOTH = ["listen", "inetd"]


def set_quota(mailsys, user: str, rule: str) -> None:
    """Give ``user`` a quota the way a Dovecot users file does (extra field userdb_quota_rule)."""
    path = mailsys.root / "users"
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith(user + "@"):
            fields = (line.split(":", 7) + [""] * 8)[:8]
            fields[7] = f"userdb_quota_rule={rule}"
            line = ":".join(fields)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def message(subject: str, body: str = "body\n") -> bytes:
    return f"From: carol@remote.example\nSubject: {subject}\n\n{body}".encode()


# -- the rules and the file ----------------------------------------------------------


def test_quota_rules_parse_as_dovecot_does():
    assert parse_quota_rule("*:storage=1G") == (1 << 30, 0)
    assert parse_quota_rule("*:storage=1") == (1024, 0)  # storage without a unit: kilobytes
    assert parse_quota_rule("*:storage=10k") == (10240, 0)
    assert parse_quota_rule("*:storage=100MB") == (100 << 20, 0)  # only the unit's first letter counts
    assert parse_quota_rule("*:bytes=1000") == (1000, 0)
    assert parse_quota_rule("*:bytes=2T") == (2 << 40, 0)
    assert parse_quota_rule("*:messages=3") == (0, 3)
    assert parse_quota_rule("*:storage=1M:messages=2") == (1 << 20, 2)
    assert parse_quota_rule("?:storage=5b") == (5, 0)
    assert parse_quota_rule("Trash:storage=+100M", (7, 8)) == (7, 8)  # one mailbox's rule: not the user's limit
    assert parse_quota_rule("*:ignore", (7, 8)) == (7, 8)
    for bad in ("storage=1G", "*:storage=", "*:storage=1X", "*:size=1", "*:storage=+1G", "*:storage=-1", "*:bytes=5%"):
        with pytest.raises(ValueError):
            parse_quota_rule(bad)


def test_users_file_quota_fields(tmp_path):
    path = tmp_path / "users"
    path.write_text(
        "a@x.org:{PLAIN}p::::::userdb_quota_rule=*:storage=10k userdb_quota_rule2=*:messages=3\n"
        "b@x.org:{PLAIN}p::::::quota_rule=*:messages=5\n"  # a Dovecot userdb file's spelling
        "c@x.org:{PLAIN}p\n"
        "d@x.org:{PLAIN}p::::::userdb_quota_rule=*:storage=oops\n"
    )
    users = UsersFile(path)
    assert quota_limits(users.lookup("a@x.org")) == (10240, 3)
    assert quota_limits(users.lookup("b@x.org"), "*:storage=1M") == (0, 5)  # the user's rule replaces the default
    assert quota_limits(users.lookup("c@x.org")) == (0, 0)
    assert quota_limits(users.lookup("c@x.org"), "*:storage=1M") == (1 << 20, 0)
    assert quota_limits(users.lookup("a@x.org"), "*:storage=1M:messages=9") == (10240, 3)  # the user's replaces it
    with pytest.raises(ValueError):
        quota_limits(users.lookup("d@x.org"))


def test_maildirsize_is_written_read_and_recalculated(tmp_path):
    from pymda import maildir

    box = tmp_path / "box"
    for _ in range(2):
        maildir.deliver(box, b"x" * 100, fsync=False)
    maildir.deliver(box / ".Sent", b"y" * 50, folder=True, fsync=False)
    limits = (10240, 3)
    assert quota.usage(box, limits) == (250, 3)
    assert (box / "maildirsize").read_text() == "10240S,3C\n250 3\n"  # Dovecot's header and summary line
    quota.record(box, limits, 30, 1)
    quota.record(box, limits, -100, -1)
    assert (box / "maildirsize").read_text() == "10240S,3C\n250 3\n30 1\n-100 -1\n"
    assert quota.usage(box, limits) == (180, 3)
    assert not quota.over((180, 2), limits, 100)
    assert quota.over((180, 3), limits, 1)  # at the message limit: no room
    assert quota.over((10200, 0), limits, 41) and not quota.over((10200, 0), limits, 40)
    assert not quota.over((10240, 0), limits, 0) and quota.over((10241, 0), limits, 0)  # size unknown: over already?
    with pytest.raises(quota.QuotaExceeded) as caught:
        quota.check(box, limits, 10)
    assert caught.value.strerror == "Quota exceeded (mailbox for user is full)"
    # other limits in the header, a corrupt line, a file grown past 5120 octets: counted again
    assert quota.usage(box, (1 << 20, 0)) == (250, 3)
    assert (box / "maildirsize").read_text() == "1048576S\n250 3\n"
    (box / "maildirsize").write_text("1048576S\n250 3\nnonsense\n")
    assert quota.usage(box, (1 << 20, 0)) == (250, 3)
    (box / "maildirsize").write_text("1048576S\n250 3\n" + "1 0\n" * 2600)
    assert quota.usage(box, (1 << 20, 0)) == (250, 3)
    # over quota by many lines (or an old file): not trusted
    (box / "maildirsize").write_text("1000S\n250 3\n900 1\n")
    assert quota.usage(box, (1000, 0)) == (250, 3)
    (box / "maildirsize").write_text("1000S\n2000 3\n")
    assert quota.usage(box, (1000, 0)) == (2000, 3)  # one fresh summary line: believed
    os.utime(box / "maildirsize", (time.time() - 3600, time.time() - 3600))
    assert quota.usage(box, (1000, 0)) == (250, 3)
    # a missing file is made when a change is recorded
    (box / "maildirsize").unlink()
    quota.record(box, (1000, 0), 5, 1)
    assert (box / "maildirsize").read_text() == "1000S\n250 3\n"


# -- delivery ---------------------------------------------------------------------------


def test_pymda_deliver_exits_75_over_quota(mailsys):
    set_quota(mailsys, "alice", "*:bytes=200")
    ok = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "carol@remote.example", input=message("fits"))
    assert ok.returncode == 0, ok.stderr
    size = sum(quota.size_of(str(p.parent), p.name) for p in mailsys.messages())
    assert (mailsys.maildir() / "maildirsize").read_text() == f"200S\n0 0\n{size} 1\n"  # counted, then a line
    full = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "carol@remote.example", input=message("big", "x" * 200))
    assert full.returncode == 75
    assert b"alice@example.test: Quota exceeded (mailbox for user is full)" in full.stderr
    assert len(mailsys.messages()) == 1 and not os.listdir(mailsys.maildir() / "tmp")
    # through the user's rules: checked once before them, each folder they file into counted
    (mailsys.maildir() / ".procmailrc").write_text(":0c\n.Lists/\n\n:0\n$DEFAULT\n")
    set_quota(mailsys, "alice", "*:messages=3")
    ok = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "carol@remote.example", input=message("two copies"))
    assert ok.returncode == 0, ok.stderr
    assert quota.usage(mailsys.maildir(), (0, 3))[1] == 3
    again = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "carol@remote.example", input=message("no room"))
    assert again.returncode == 75


def test_queue_defers_with_4_2_2_then_bounces(mailsys):
    set_quota(mailsys, "alice", "*:messages=1")
    q = Queue(mailsys.root / "queue")
    q.enqueue("bob@example.test", [ALICE], message("first"))
    q.enqueue("bob@example.test", [ALICE], message("second"))
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert len(mailsys.messages()) == 1
    assert (
        b"to=<alice@example.test>, orig_to=<alice@example.test>, status=deferred "
        b"(4.2.2 alice@example.test: Quota exceeded (mailbox for user is full))" in run.stderr
    )
    [(_bucket, qid)] = q.due_ids(now=time.time() + 10 * 3600)
    state = json.loads((mailsys.root / "queue" / "state" / qid).read_text())
    assert [r["status"] for r in state["rcpts"]] == ["deferred"]
    # past the queue lifetime: bounced to the sender, the reason kept
    mailsys.write_config("[qrunner]\nmax_lifetime = 0.0\n")
    q.move(qid, "new")
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert (
        b"to=<alice@example.test>, status=bounced (5.4.7 delivery time expired "
        b"(4.2.2 alice@example.test: Quota exceeded (mailbox for user is full)))" in run.stderr
    )
    assert mailsys.run("pymta.qrunner", "--once").returncode == 0  # the DSN, queued by the first pass
    [dsn] = mailsys.messages("bob")
    text = dsn.read_bytes()
    assert b"Status: 5.4.7" in text and b"Quota exceeded (mailbox for user is full)" in text


# -- at RCPT ---------------------------------------------------------------------------


def fill(mailsys, user: str, count: int, size: int = 100) -> None:
    from pymda import maildir

    for _ in range(count):
        maildir.deliver(mailsys.maildir(user), b"x" * size, fsync=False)


@pytest.mark.parametrize("mode", BOTH)
def test_smtp_rcpt_452_over_quota(mailsys, mode):
    import smtplib

    set_quota(mailsys, "alice", "*:storage=1k:messages=2")
    (mailsys.root / "aliases").write_text("postmaster: alice\nteam: alice, bob\n")
    fill(mailsys, "alice", 1, 900)
    port = mailsys.start_smtpd(mode)
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.example")
    full = (452, b"4.2.2 <alice@example.test>: Recipient address rejected: Quota exceeded (mailbox for user is full)")
    assert client.mail("carol@remote.example", ["SIZE=200"]) == (250, b"2.1.0 Ok")
    assert client.rcpt("alice@example.test") == full  # 900 + 200 > 1024
    assert client.rcpt("alice+tag@example.test") == (
        452,
        b"4.2.2 <alice+tag@example.test>: Recipient address rejected: Quota exceeded (mailbox for user is full)",
    )
    assert client.rcpt("bob@example.test") == (250, b"2.1.5 Ok")
    assert client.rcpt("team@example.test") == (250, b"2.1.5 Ok")  # an alias: the queue defers alice's copy
    client.rset()
    assert client.mail("carol@remote.example") == (250, b"2.1.0 Ok")
    assert client.rcpt("alice@example.test") == (250, b"2.1.5 Ok")  # no SIZE: is she over already? not yet
    client.rset()
    fill(mailsys, "alice", 1, 10)  # now at the message limit (smtpd, root here, counts and writes nothing)
    assert not (mailsys.maildir("alice") / "maildirsize").exists()
    assert client.mail("carol@remote.example") == (250, b"2.1.0 Ok")
    assert client.rcpt("alice@example.test") == full
    client.quit()


@pytest.mark.parametrize("mode", BOTH)
def test_lmtp_452_at_rcpt_and_after_data(mailsys, mode):
    import smtplib

    from test_lmtpd import connect, start_lmtpd

    (mailsys.root / "run").mkdir(exist_ok=True)
    set_quota(mailsys, "alice", "*:bytes=300")
    set_quota(mailsys, "bob", "*:messages=1")
    fill(mailsys, "bob", 1)
    client = connect(start_lmtpd(mailsys, mode, "tcp"))
    assert client.mail("carol@remote.example") == (250, b"2.1.0 Ok")
    assert client.rcpt("bob@example.test") == (
        452,
        b"4.2.2 <bob@example.test>: Quota exceeded (mailbox for user is full)",
    )
    assert client.rcpt("alice@example.test") == (250, b"2.1.5 Ok")
    big = message("big", "x" * 400).replace(b"\n", b"\r\n")
    assert client.data(big) == (452, b"4.2.2 <alice@example.test>: Mailbox full")
    assert not mailsys.messages("alice")
    client.quit()
    assert isinstance(client, smtplib.LMTP)


# -- IMAP -------------------------------------------------------------------------------

FULL = "NO [OVERQUOTA] Quota exceeded (mailbox for user is full)"


@pytest.mark.parametrize("mode", BOTH)
def test_imap_quota(mailsys, mode):
    from conftest import PASSWORD
    from test_imap import exchange, login, start_imapd

    set_quota(mailsys, "alice", "*:storage=10k userdb_quota_rule2=*:messages=3")
    fill(mailsys, "alice", 1, 30)
    port = start_imapd(mailsys, mode)
    m = login(port)
    caps = exchange(m, "CAPABILITY")[0]
    assert " QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE " in caps
    assert exchange(m, "GETQUOTAROOT INBOX") == [
        '* QUOTAROOT INBOX "User quota"',
        '* QUOTA "User quota" (STORAGE 1 10 MESSAGE 1 3)',  # 30 octets: 1 unit of 1024, rounded up as Dovecot does
        "OK GETQUOTAROOT completed",
    ]
    assert exchange(m, 'GETQUOTAROOT "Some Folder"')[0] == '* QUOTAROOT "Some Folder" "User quota"'
    assert exchange(m, 'GETQUOTA "User quota"') == [
        '* QUOTA "User quota" (STORAGE 1 10 MESSAGE 1 3)',
        "OK GETQUOTA completed",
    ]
    assert exchange(m, 'GETQUOTA ""') == ["NO Quota root doesn't exist"]
    assert exchange(m, 'SETQUOTA "User quota" (STORAGE 100)') == ["NO Quota can be changed only by admin"]
    assert exchange(m, 'SETQUOTA "User quota" (STORAGE)') == ["BAD Invalid arguments"]
    assert m.append("INBOX", None, None, b"x" * 994 + b"\r\n")[0] == "OK"
    assert exchange(m, "GETQUOTAROOT INBOX")[1] == '* QUOTA "User quota" (STORAGE 2 10 MESSAGE 2 3)'  # 30 + 995
    assert m.append("INBOX", None, None, b"y" * 20000)[1] == [FULL.removeprefix("NO ").encode()]  # over 10k
    assert m.append("INBOX", None, None, b"hello")[0] == "OK"
    assert exchange(m, "APPEND INBOX {5+}\r\nhello") == [FULL]  # the message limit
    assert not os.listdir(mailsys.maildir() / "tmp")  # nothing kept of either
    assert exchange(m, "CREATE Keep") == ["OK CREATE completed"]
    m.select("INBOX")
    assert exchange(m, "COPY 1 Keep") == [FULL]
    assert exchange(m, "MOVE 1 Keep")[-1] == "OK MOVE completed"  # takes no more room
    assert exchange(m, "GETQUOTAROOT Keep")[1] == '* QUOTA "User quota" (STORAGE 2 10 MESSAGE 3 3)'
    m.store("1", "+FLAGS", "(\\Deleted)")
    m.expunge()
    assert exchange(m, 'GETQUOTA "User quota"')[0] == '* QUOTA "User quota" (STORAGE 1 10 MESSAGE 2 3)'
    assert exchange(m, "COPY 1 Keep")[-1].startswith("OK [COPYUID ")
    assert (mailsys.maildir() / "maildirsize").read_text().splitlines()[0] == "10240S,3C"
    assert quota.usage(mailsys.maildir(), (10240, 3)) == quota.recalculate(mailsys.maildir(), (10240, 3), write=False)
    m.logout()
    # a user without a quota: no root (RFC 9208; Dovecot answers only "OK No quota")
    b = __import__("imaplib").IMAP4("127.0.0.1", port, timeout=30)
    b.login("bob@example.test", PASSWORD)
    assert exchange(b, "GETQUOTAROOT INBOX") == ["* QUOTAROOT INBOX", "OK GETQUOTAROOT completed"]
    assert exchange(b, 'GETQUOTA "User quota"') == ["NO Quota root doesn't exist"]
    b.logout()


# -- the admin's side ---------------------------------------------------------------------


def test_pymail_user_add_and_mod_quota(tmp_path):
    from test_cli import AS_ROOT, invoke

    tree = tmp_path / "pm"
    assert invoke("init", tree, "--domain", "example.test", *AS_ROOT).exit_code == 0
    add = invoke("user", "add", tree, "ann@example.test", "--password-stdin", "--quota", "*:storage=1G", input="pw\n")
    assert add.exit_code == 0, add.output
    users = tree / "users"
    [line] = [x for x in users.read_text().splitlines() if x.startswith("ann@")]
    assert line.endswith(":::::userdb_quota_rule=*:storage=1G")
    assert quota_limits(UsersFile(users).lookup("ann@example.test")) == (1 << 30, 0)
    mod = invoke("user", "mod", tree, "ann@example.test", "--quota", "*:storage=2M:messages=100")
    assert (mod.exit_code, mod.output) == (0, "quota of ann@example.test: *:storage=2M:messages=100\n")
    assert quota_limits(UsersFile(users).lookup("ann@example.test")) == (2 << 20, 100)
    assert invoke("user", "mod", tree, "ann@example.test", "--quota", "*:storage=lots").exit_code == 65
    assert invoke("user", "mod", tree, "nobody@example.test", "--quota", "*:storage=1G").exit_code == 67
    assert invoke("user", "mod", tree, "ann@example.test", "--quota", "none").exit_code == 0
    assert "quota_rule" not in users.read_text()
    assert UsersFile(users).verify("ann@example.test", "pw")  # the rest of the line kept
    with open(users, "a") as fh:
        fh.write("bad@example.test:{PLAIN}x::::::userdb_quota_rule=*:storage=lots\n")
    check = invoke("config", "check", tree)
    assert "bad@example.test: invalid quota rule '*:storage=lots': storage needs a number (no quota enforced)" in (
        check.output
    )


DOVECOT_LINE = (  # a Dovecot passwd-file line (doveadm pw -s SHA512-CRYPT) with its quota extra fields
    "{user}:{{SHA512-CRYPT}}{hash}::::::userdb_quota_rule=*:storage=1k userdb_quota_rule2=*:messages=10 "
    "userdb_quota_rule3=Trash:storage=+100M\n"
)


@pytest.mark.parametrize("mode", BOTH)
def test_users_line_from_a_dovecot_setup(mailsys, mode):
    from passlib.hash import sha512_crypt

    from conftest import PASSWORD
    from test_imap import exchange, login, start_imapd

    path = mailsys.root / "users"
    others = [x for x in path.read_text().splitlines() if not x.startswith("alice@")]
    line = DOVECOT_LINE.format(user=ALICE, hash=sha512_crypt.using(rounds=5000).hash(PASSWORD))
    path.write_text("\n".join(others) + "\n" + line)
    fill(mailsys, "alice", 1, 1010)
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert exchange(m, "GETQUOTAROOT INBOX") == [
        '* QUOTAROOT INBOX "User quota"',
        '* QUOTA "User quota" (STORAGE 1 1 MESSAGE 1 10)',
        "OK GETQUOTAROOT completed",
    ]
    assert exchange(m, "APPEND INBOX {25+}\r\nSubject: x\r\n\r\n0123456789") == [FULL]
    m.logout()
    full = mailsys.run("pymda.deliver", "-d", ALICE, input=message("too much"))
    assert full.returncode == 75


def test_quota_answers_like_dovecot(mailsys, tmp_path):
    """The same Maildir and users file through Debian's Dovecot 2.3 (quota = maildir:User quota)
    and pyimap-imapd: the same untagged QUOTAROOT/QUOTA lines and the same refusals."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from conftest import REPO, free_port, wait_port
    from test_imap import exchange, login, start_imapd

    if shutil.which("dovecot") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's dovecot-imapd and root")
    set_quota(mailsys, "alice", "*:storage=10k userdb_quota_rule2=*:messages=3")
    fill(mailsys, "alice", 1, 30)
    fill(mailsys, "alice", 1, 1500)
    short = tempfile.mkdtemp(prefix="dq", dir="/tmp")  # Dovecot's socket paths must stay short
    try:
        os.chmod(short, 0o755)
        twin = Path(short) / "t"
        shutil.copytree(mailsys.root, twin)
        pop3, imap = free_port(), free_port()
        proc = mailsys.start(
            [sys.executable, str(REPO / "tests/bench/dovecot_side.py"), str(twin), str(pop3), str(imap), "--quota"]
        )
        wait_port(imap, proc=proc)
        commands = [
            "GETQUOTAROOT INBOX",
            "GETQUOTAROOT Trash",
            'GETQUOTA "User quota"',
            'GETQUOTA ""',
            'SETQUOTA "User quota" (STORAGE 100)',
            "APPEND INBOX {20+}\r\n" + "y" * 20,
            "GETQUOTAROOT INBOX",
            "APPEND INBOX {5+}\r\nhello",
            "APPEND INBOX {9000+}\r\n" + "z" * 9000,
        ]
        answers = []
        for port in (start_imapd(mailsys, "listen"), imap):
            m = login(port)
            got = []
            for command in commands:
                lines = exchange(m, command)
                # the tagged OK's words differ ("GETQUOTAROOT completed", Dovecot's "Getquotaroot completed (0.001 ...")
                tagged = lines[-1] if lines[-1].startswith("NO") else lines[-1].split(" ", 1)[0]
                got.append([*lines[:-1], re.sub(r" \(\d+\.\d+ .*secs\)\.$", "", tagged)])
            m.logout()
            answers.append(got)
        assert answers[0] == answers[1]
        quota_lines = ['* QUOTAROOT INBOX "User quota"', '* QUOTA "User quota" (STORAGE 2 10 MESSAGE 2 3)']
        assert answers[0][0] == [*quota_lines, "OK"]
        assert answers[0][7] == [FULL]
    finally:
        shutil.rmtree(short, ignore_errors=True)
