"""pymda-deliver with procmail-style rules: real messages, exact bytes in each folder or pipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pymta.queue import Queue
from test_mailbox_modes import open_dirs

MSG = (
    b"From: Carol <carol@remote.example>\n"
    b"To: alice@example.test\n"
    b"Subject: Python list digest\n"
    b"List-Id: <python.lists.example.org>\n"
    b"\n"
    b"line one\n"
    b"From the list\n"
)
TRACE = b"Return-Path: <carol@remote.example>\nDelivered-To: alice@example.test\n"

RECORDER = """#!/bin/sh
# records argv, stdin and the environment of a program the rules run
out="$1"; shift
printf '%s\\n' "$@" > "$out.args"
env | sort > "$out.env"
cat > "$out.msg"
"""


def setup_rules(mailsys, text: str, user: str = "alice") -> Path:
    box = mailsys.maildir(user)
    box.mkdir(parents=True, exist_ok=True)
    (box / ".procmailrc").write_text(text)
    return box


def deliver(mailsys, *args, input=MSG, rcpt="alice@example.test", sender="carol@remote.example"):
    return mailsys.run("pymda.deliver", "-d", rcpt, "-f", sender, *args, input=input)


def inbox_empty(box: Path) -> bool:
    return not (box / "new").exists() or not list((box / "new").iterdir())


def only_message(folder: Path) -> bytes:
    files = sorted((folder / "new").iterdir())
    assert len(files) == 1, files
    return files[0].read_bytes()


@pytest.fixture
def recorder(tmp_path) -> Path:
    path = tmp_path / "record.sh"
    path.write_text(RECORDER)
    path.chmod(0o755)
    return path


def test_no_rules_file_inbox_unchanged(mailsys):
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    assert only_message(mailsys.maildir()) == TRACE + MSG


def test_maildirplusplus_folder_created_with_marker(mailsys):
    box = setup_rules(mailsys, ":0\n* ^List-Id:.*<\\/[a-z]+\n.Lists.$MATCH/\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    folder = box / ".Lists.python"
    assert (folder / "maildirfolder").is_file()
    assert only_message(folder) == TRACE + MSG
    assert inbox_empty(box)


def test_extension_in_variable_and_dollar_one(mailsys, recorder):
    box = setup_rules(mailsys, f":0 c\n.$EXTENSION/\n:0 w\n| {recorder} {box_path(mailsys)}/rec\n")
    proc = deliver(mailsys, "-a", "alice+news@example.test", rcpt="alice+news@example.test")
    assert proc.returncode == 0, proc.stderr
    assert only_message(box / ".news") == TRACE + MSG
    env = (box / "rec.env").read_text().splitlines()
    assert "EXTENSION=news" in env and "RECIPIENT=alice+news@example.test" in env
    assert "SENDER=carol@remote.example" in env


def box_path(mailsys) -> Path:
    return mailsys.maildir("alice")


def test_mbox_from_line_quoting_and_lock(mailsys):
    box = setup_rules(mailsys, ":0:\nsaved.mbox\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    data = (box / "saved.mbox").read_bytes()
    first, rest = data.split(b"\n", 1)
    assert re.fullmatch(rb"From carol@remote\.example  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", first)
    assert rest == TRACE + MSG.replace(b"\nFrom the list", b"\n>From the list") + b"\n"
    assert not (box / "saved.mbox.lock").exists()
    # a second message appends after an empty line
    assert deliver(mailsys).returncode == 0
    assert (box / "saved.mbox").read_bytes().count(b"\nFrom carol@remote.example  ") == 1


ENVELOPE = b"From carol@remote.example  Fri Dec  4 10:00:00 2026\n"  # Postfix's mailbox_command prepends it
FORGED_FROM_ = (
    b"From victim@bank.example Mon Jan  1 00:00:00 2024\n"
    b"From: Bank <victim@bank.example>\n"
    b"Subject: forged envelope\n"
    b"\n"
    b"From the bank\n"
    b">From quoted once\n"
    b">>From quoted twice\n"
)
FORGED_QUOTED = (
    b">From victim@bank.example Mon Jan  1 00:00:00 2024\n"
    b"From: Bank <victim@bank.example>\n"
    b"Subject: forged envelope\n"
    b"\n"
    b">From the bank\n"
    b">>From quoted once\n"
    b">>>From quoted twice\n"
)


def mbox_separators(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.startswith(b"From ")]


def test_mbox_quotes_a_forged_from_line_at_the_top_of_the_message(mailsys):
    # the message's own first line is "From victim@... date": unquoted, mbox readers see two messages
    # (pymda-deliver -d takes a first such line as the envelope line: here it follows the real one)
    box = setup_rules(mailsys, ":0:\nsaved.mbox\n")
    proc = deliver(mailsys, input=ENVELOPE + FORGED_FROM_)
    assert proc.returncode == 0, proc.stderr
    data = (box / "saved.mbox").read_bytes()
    assert [s.split(b" ")[1] for s in mbox_separators(data)] == [b"carol@remote.example"]
    assert data.split(b"\n", 1)[1] == TRACE + FORGED_QUOTED + b"\n"  # mboxrd: >*From gets one more >
    import mailbox

    assert len(mailbox.mbox(str(box / "saved.mbox"))) == 1


def test_mbox_quotes_from_lines_in_the_header_of_an_alias_file_target(mailsys, open_tmp):
    out = open_tmp / "alias-mbox"
    out.mkdir()
    os.chmod(out, 0o777)
    (mailsys.root / "aliases").write_text(f"archive: {out}/archive.mbox\n")
    Queue(mailsys.root / "queue").enqueue("carol@remote.example", ["archive@example.test"], FORGED_FROM_)
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    data = (out / "archive.mbox").read_bytes()
    assert [s.split(b" ")[1] for s in mbox_separators(data)] == [b"carol@remote.example"]
    trace = b"Return-Path: <carol@remote.example>\nDelivered-To: archive@example.test\n"
    assert data.split(b"\n", 1)[1] == trace + FORGED_QUOTED + b"\n"


def test_pipe_gets_message_clean_env_and_user_variables(mailsys, recorder, monkeypatch):
    box = setup_rules(mailsys, f'TAG="tag $LOGNAME"\n:0 w\n| {recorder} $MAILDIR/out --subject="$SENDER"\n')
    env = dict(os.environ, LEAKY_SECRET="should-not-pass", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        mailsys.program("pymda.deliver", "-d", "alice@example.test", "-f", "carol@remote.example"),
        input=MSG,
        capture_output=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (box / "out.msg").read_bytes() == TRACE + MSG + b"\n"  # procmail: ends with an empty line
    assert (box / "out.args").read_text() == "--subject=carol@remote.example\n"
    names = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in (box / "out.env").read_text().splitlines()}
    assert "LEAKY_SECRET" not in names
    assert names["TAG"] == "tag alice" and names["HOME"] == str(box) and names["USER"] == "alice@example.test"
    assert inbox_empty(box)


def test_hostile_subject_is_data_not_shell(mailsys, tmp_path):
    evil = MSG.replace(b"Subject: Python list digest", b"Subject: $(touch /tmp/pwned-pymda-test); `id`")
    box = setup_rules(mailsys, ":0\n* ^Subject:\\/.*\n{ SUBJ=$MATCH }\n:0 w\n| printf '%s' \"$SUBJ\" > subj.txt\n")
    proc = deliver(mailsys, input=evil)
    assert proc.returncode == 0, proc.stderr
    assert (box / "subj.txt").read_text() == " $(touch /tmp/pwned-pymda-test); `id`"
    assert not os.path.exists("/tmp/pwned-pymda-test")


def test_filter_rewrites_message(mailsys):
    box = setup_rules(mailsys, ":0 fw\n| sed -e 's/digest/DIGEST/'\n:0 fhw\n| formail -A 'X-Seen: yes'\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    expected = TRACE + MSG.replace(b"digest", b"DIGEST").replace(b"\n\nline", b"\nX-Seen: yes\n\nline") + b"\n"
    assert only_message(box) == expected


def test_forward_runs_sendmail_with_flags_and_addresses(mailsys, recorder):
    box = setup_rules(mailsys, f'SENDMAIL="{recorder} $MAILDIR/fwd"\n:0\n! bob@elsewhere.example carol@x.example\n')
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    assert (box / "fwd.args").read_text() == "-oi\nbob@elsewhere.example\ncarol@x.example\n"
    assert (box / "fwd.msg").read_bytes() == TRACE + MSG + b"\n"
    assert inbox_empty(box)


def test_forward_refuses_option_like_address(mailsys, recorder):
    box = setup_rules(mailsys, f'SENDMAIL="{recorder} $MAILDIR/fwd"\nX=-oQ/tmp\n:0\n! $X\n')
    proc = deliver(mailsys)
    assert proc.returncode == 0
    assert not (box / "fwd.args").exists()
    assert only_message(box) == TRACE + MSG


def test_dev_null_discards(mailsys):
    box = setup_rules(mailsys, ":0\n* ^Subject:.*digest\n/dev/null\n")
    assert deliver(mailsys).returncode == 0
    assert inbox_empty(box)


def test_syntax_error_goes_to_inbox_and_is_logged(mailsys):
    box = setup_rules(mailsys, ":0\n* ^Subject\nfolder/\n:0 Q\n/dev/null\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0
    assert b".procmailrc:4: unknown flag(s) 'Q'" in proc.stderr
    assert only_message(box) == TRACE + MSG
    assert not (box / "folder").exists()


def test_failing_delivering_pipe_is_temporary_and_nothing_written(mailsys):
    box = setup_rules(mailsys, ":0 w\n| exit 3\n")
    proc = deliver(mailsys)
    assert proc.returncode == 75
    assert b"exited 3" in proc.stderr
    assert inbox_empty(box)


def test_pipe_without_w_ignores_exit_status_as_procmail(mailsys):
    # procmail does not look at the status without w: delivered, no fall-through
    box = setup_rules(mailsys, ":0\n| cat > piped; exit 3\n:0\n.After/\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    assert (box / "piped").read_bytes() == TRACE + MSG + b"\n"
    assert not (box / ".After").exists()
    assert inbox_empty(box)


def test_every_mailbox_directory_is_private(mailsys):
    # Dovecot's modes: the Maildir, its folders (made by rules here) and their cur/new/tmp are 0700
    box = mailsys.maildir("bob")
    assert deliver(mailsys, rcpt="bob@example.test").returncode == 0
    (box / ".procmailrc").write_text(":0 c\nplain/\n:0\n.Lists.python/\n")
    proc = deliver(mailsys, rcpt="bob@example.test")
    assert proc.returncode == 0, proc.stderr
    assert only_message(box / ".Lists.python")
    assert open_dirs(box) == []


@pytest.mark.parametrize("rules", [None, ":0\n.Lists/\n"], ids=["inbox", "rules"])
def test_envelope_line_is_stripped_and_gives_the_sender(mailsys, rules):
    # Postfix's mailbox_command and pipe(8) flag F prepend "From sender date": procmail and dovecot-lda take the
    # sender from it and drop it
    box = setup_rules(mailsys, rules) if rules else mailsys.maildir()
    folder = box / ".Lists" if rules else box
    argv = ["-d", "alice@example.test"]
    proc = mailsys.run("pymda.deliver", *argv, input=ENVELOPE + MSG)
    assert proc.returncode == 0, proc.stderr
    assert only_message(folder) == TRACE + MSG
    # -f wins over the line; the line goes all the same
    for path in (folder / "new").iterdir():
        path.unlink()
    proc = mailsys.run("pymda.deliver", *argv, "-f", "", input=ENVELOPE.replace(b"\n", b"\r\n") + MSG)
    assert proc.returncode == 0, proc.stderr
    assert only_message(folder) == TRACE.replace(b"<carol@remote.example>", b"<>") + MSG
    # the null sender Postfix writes as MAILER-DAEMON; --dry-run reads the same message
    for path in (folder / "new").iterdir():
        path.unlink()
    bounce = b"From MAILER-DAEMON  Fri Dec  4 10:00:00 2026\n" + MSG
    proc = mailsys.run("pymda.deliver", *argv, input=bounce)
    assert proc.returncode == 0, proc.stderr
    assert only_message(folder) == TRACE.replace(b"<carol@remote.example>", b"<>") + MSG
    proc = mailsys.run("pymda.deliver", *argv, "--dry-run", input=ENVELOPE + MSG)
    assert proc.returncode == 0 and b"would deliver to" in proc.stdout, proc.stderr


def test_bare_user_name_gets_the_first_local_domain(mailsys):
    # mailbox_command = pymda-deliver -d "$USER", as sendmail carol qualifies carol
    proc = mailsys.run("pymda.deliver", "-d", "alice", input=ENVELOPE + MSG)
    assert proc.returncode == 0, proc.stderr
    assert only_message(mailsys.maildir()) == TRACE + MSG
    assert b"to=<alice@example.test>" in proc.stderr
    proc = mailsys.run("pymda.deliver", "-d", "nobody-here", input=MSG)
    assert proc.returncode == 67 and b"nobody-here@example.test: no such user" in proc.stderr


def test_failing_pipe_rescued_by_e_recipe(mailsys):
    box = setup_rules(mailsys, ":0 w\n| exit 3\n:0 e\n.Failed/\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    assert only_message(box / ".Failed") == TRACE + MSG


def test_pipe_timeout_is_temporary(mailsys):
    setup_rules(mailsys, "TIMEOUT=1\n:0\n| sleep 30\n")
    start = time.time()
    proc = deliver(mailsys)
    assert proc.returncode == 75
    assert time.time() - start < 15
    assert b"timed out" in proc.stderr


def test_full_disk_is_temporary_with_nothing_half_written(mailsys):
    box = setup_rules(mailsys, ":0\n.Folder/\n")
    (box / "tmp").mkdir(parents=True, exist_ok=True)
    folder = box / ".Folder"
    folder.write_text("")  # the folder cannot be made: like a full disk
    for sub in ("tmp",):
        (box / sub).rmdir()
    (box / "tmp").write_text("")  # and the INBOX cannot take files either
    proc = deliver(mailsys)
    assert proc.returncode == 75, proc.stderr
    assert inbox_empty(box)


def test_unknown_user(mailsys):
    proc = deliver(mailsys, rcpt="ghost@example.test")
    assert proc.returncode == 67
    assert not (mailsys.root / "mail" / "example.test" / "ghost").exists()


def test_exitcode_variable(mailsys):
    setup_rules(mailsys, "EXITCODE=67\n:0\n/dev/null\n")
    assert deliver(mailsys).returncode == 67


def test_dry_run_reports_and_delivers_nothing(mailsys):
    box = setup_rules(mailsys, ":0\n* ^Subject: nothing\nno/\n:0\n* ^List-Id:.*python\n.Lists.python/\n")
    proc = deliver(mailsys, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert ".procmailrc:1: no match" in out
    assert ".procmailrc:4: match (1 condition)" in out
    assert f"would deliver to: {box}/.Lists.python/" in out
    assert not (box / ".Lists.python").exists() and not (box / "new").exists()


def test_site_rules_run_first(mailsys):
    mailsys.write_config('[deliver]\nsite_rules = "site.rc"\n')
    (mailsys.root / "site.rc").write_text("SITE=yes\n:0\n* ^Subject:.*viagra\n/dev/null\n")
    box = setup_rules(mailsys, ":0\n* SITE ?? yes\n.FromSite/\n")
    assert deliver(mailsys).returncode == 0
    assert only_message(box / ".FromSite") == TRACE + MSG
    spam = MSG.replace(b"Python list digest", b"cheap viagra")
    assert deliver(mailsys, input=spam).returncode == 0
    assert len(list((box / ".FromSite" / "new").iterdir())) == 1


def test_logfile_and_log(mailsys):
    box = setup_rules(mailsys, 'LOGFILE=$MAILDIR/rules.log\nLOG="hello log\n"\n:0\n.Logged/\n')
    assert deliver(mailsys).returncode == 0
    text = (box / "rules.log").read_text()
    assert "hello log\n" in text and "Subject: Python list digest" in text and ".Logged/new/" in text


def test_catastrophic_regex_does_not_hang(mailsys):
    # built at run time through $, so the parser cannot see it: refused when used
    box = setup_rules(mailsys, 'P="(a+)+$"\n:0 B\n* $ $P\n.Never/\n')
    body = MSG + b"a" * 40 + b"b\n"
    start = time.time()
    proc = deliver(mailsys, input=body)
    assert proc.returncode == 0
    assert time.time() - start < 10
    assert only_message(box) == TRACE + body
    assert b"exponential" in proc.stderr


@pytest.fixture
def open_tmp():
    """A folder other uids can reach (pytest's own tmp folders are 0700 root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pymda-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_privileges_dropped_to_mailbox_owner(open_tmp, tls_files):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from conftest import MailSystem

    ms = MailSystem(open_tmp, tls_files)
    with open(ms.root / "users", "a") as fh:
        fh.write("dave@example.test:{PLAIN}x:65534:65534::::\n")
    box = ms.maildir("dave")
    box.mkdir(parents=True)
    os.chown(box, 65534, 65534)
    for d in (ms.root, ms.root / "mail", ms.root / "mail" / "example.test"):
        os.chmod(d, 0o755)
    os.chmod(ms.config, 0o644)
    (box / ".procmailrc").write_text(":0 c\n| id -u > uid.txt\n:0\n.Sub/\n")
    proc = deliver(ms, rcpt="dave@example.test")
    assert proc.returncode == 0, proc.stderr
    [msg] = list((box / ".Sub" / "new").iterdir())
    assert msg.stat().st_uid == 65534
    assert (box / "uid.txt").read_text().strip() == "65534"
    assert (box / "uid.txt").stat().st_uid == 65534


def test_qrunner_inprocess_applies_rules(mailsys):
    box = setup_rules(mailsys, ":0\n* ^List-Id:.*python\n.Lists.python/\n")
    Queue(mailsys.root / "queue").enqueue("carol@remote.example", ["alice@example.test"], MSG)
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    assert only_message(box / ".Lists.python") == TRACE + MSG
    assert not mailsys.queue_files()


def test_qrunner_defers_on_failing_pipe(make_mailsys):
    for mode in ("inprocess", "exec"):
        ms = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
        setup_rules(ms, ":0 w\n| exit 1\n")
        q = Queue(ms.root / "queue")
        q.enqueue("carol@remote.example", ["alice@example.test"], MSG)
        run = ms.run("pymta.qrunner", "--once")
        assert run.returncode == 0, run.stderr
        [(bucket, qid)] = q.due_ids(now=time.time() + 10 * 3600)
        state = json.loads((ms.root / "queue" / "state" / qid).read_text())
        assert [r["status"] for r in state["rcpts"]] == ["deferred"], (mode, state)


def test_alias_pipe_and_file_targets(mailsys, open_tmp):
    out = open_tmp / "alias-out"
    out.mkdir()
    os.chmod(out, 0o777)
    mbox_path = out / "archive.mbox"
    (mailsys.root / "aliases").write_text(
        f'archive: {mbox_path}, "|cat > {out}/piped; printf %s $RECIPIENT > {out}/rcpt"\nbroken: "|exit 1"\n'
    )
    q = Queue(mailsys.root / "queue")
    q.enqueue("carol@remote.example", ["archive@example.test"], MSG)
    run = mailsys.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    trace = b"Return-Path: <carol@remote.example>\nDelivered-To: archive@example.test\n"
    assert (out / "piped").read_bytes() == trace + MSG
    assert (out / "rcpt").read_text() == "archive@example.test"
    data = mbox_path.read_bytes()
    assert data.startswith(b"From carol@remote.example  ")
    assert data.split(b"\n", 1)[1] == trace + MSG.replace(b"\nFrom the", b"\n>From the") + b"\n"
    q.enqueue("carol@remote.example", ["broken@example.test"], MSG)
    run = mailsys.run("pymta.qrunner", "--once")
    assert b"status=bounced (5.3.0 pipe delivery" in run.stderr


def test_dot_forward_forwards_and_keeps_copy(mailsys, recorder):
    box = setup_rules(mailsys, ":0\n.Kept/\n")
    mailsys.write_config(f'[deliver]\nsendmail = "{recorder} {box}/fwd"\n')
    (box / ".forward").write_text("\\alice, alice@elsewhere.example\n")
    proc = deliver(mailsys)
    assert proc.returncode == 0, proc.stderr
    assert (box / "fwd.args").read_text() == "-oi\nalice@elsewhere.example\n"
    assert (box / "fwd.msg").read_bytes() == TRACE + MSG + b"\n"
    assert only_message(box / ".Kept") == TRACE + MSG


def test_m_mode_without_default_is_not_delivered(tmp_path):
    rc = tmp_path / "rc"
    rc.write_text(":0\n* ^Subject: nope\nx/\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        [sys.executable, "-m", "pymda.deliver", "-m", f"MAILDIR={tmp_path}", str(rc)],
        input=MSG,
        capture_output=True,
        env=env,
    )
    assert proc.returncode == 73
    proc = subprocess.run(
        [sys.executable, "-m", "pymda.deliver", "-m", f"MAILDIR={tmp_path}", f"DEFAULT={tmp_path}/inbox/", str(rc)],
        input=MSG,
        capture_output=True,
        env=env,
    )
    assert proc.returncode == 0
    assert only_message(tmp_path / "inbox") == MSG


def test_rules_check_command(mailsys, tmp_path):
    bad = tmp_path / "bad.rc"
    bad.write_text(":0\n* ^Subject\nok/\n\n:0 Z\n* (x*)*\n{\n")
    good = tmp_path / "good.rc"
    good.write_text(":0\n* ^Subject\nok/\n:0\n{\n :0 c\n a/\n}\n")
    proc = mailsys.run("pymta.cli", "rules", "check", str(bad), str(good))
    out = proc.stdout.decode()
    assert proc.returncode == 65
    assert f"{bad}:5: unknown flag(s) 'Z' on recipe" in out
    assert f"{bad}:6: bad regular expression" in out
    assert f"{bad}:7: block '{{' is never closed" in out
    assert f"{good}: ok (3 recipes)" in out


def test_virtual_users_in_several_domains(mailsys):
    mailsys.write_config('domains = ["example.test", "other.test"]\n')
    mailsys.config.write_text(mailsys.config.read_text().replace('domains = ["example.test"]\n', ""))
    mailsys.add_user("alice@other.test", "pw-other")
    other = mailsys.root / "mail" / "other.test" / "alice"
    other.mkdir(parents=True)
    (other / ".procmailrc").write_text(":0\n.OtherDomain/\n")
    box = setup_rules(mailsys, ":0\n.ThisDomain/\n")
    assert deliver(mailsys, rcpt="alice@other.test").returncode == 0
    assert deliver(mailsys, rcpt="alice@example.test").returncode == 0
    assert only_message(other / ".OtherDomain") == TRACE.replace(b"example.test", b"other.test") + MSG
    assert only_message(box / ".ThisDomain") == TRACE + MSG


def test_m_mode_dry_run(tmp_path):
    rc = tmp_path / "rc"
    rc.write_text("FOLDER=lists\n:0\n* ^List-Id:.*python\n$FOLDER/\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pymda.deliver",
            "--dry-run",
            "-m",
            f"MAILDIR={tmp_path}",
            f"DEFAULT={tmp_path}/inbox/",
            str(rc),
        ],
        input=MSG,
        capture_output=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{rc}:2: match (1 condition)" in proc.stdout.decode()
    assert f"would deliver to: {tmp_path}/lists/" in proc.stdout.decode()
    assert not (tmp_path / "lists").exists() and not (tmp_path / "inbox").exists()


def test_alias_include_file_cannot_add_pipes_or_files(tmp_path):
    from pymta.aliases import Aliases

    (tmp_path / "members").write_text("bob\n|/bin/sh -c evil\n/etc/passwd\n")
    (tmp_path / "aliases").write_text(f"list: :include:{tmp_path}/members\n")
    targets = Aliases(tmp_path / "aliases").expand("list@example.test", lambda a: True)
    assert [(t.kind, t.value) for _, t in targets] == [("address", "bob@example.test")]
