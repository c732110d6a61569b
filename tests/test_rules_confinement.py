"""Rules cannot reach out of the user's home and Maildir, in every delivery mode.

Each case is a user's ``.procmailrc`` naming a path outside (``LOGFILE``,
``INCLUDERC`` of the users file, ``MAILDIR``/``..``, an absolute mbox, a
symbolic link to the outside, a folder whose ``tmp/`` and ``new/`` are links,
a shell redirection): the queue runner delivers it (exec: through
pymda-deliver; inprocess: in the runner itself) and the outside stays
untouched, the log names the rules file and line, and the message lands in
the INBOX.  Then what programs get: a clean environment, a bounded output
and a time limit.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import env_with_repo
from pymta.queue import Queue

MSG = b"From: Carol <carol@remote.example>\nTo: alice@example.test\nSubject: confinement\n\nbody\n"
MODES = ("exec", "inprocess")


def run_queue(ms, rules: str, env_extra: dict | None = None) -> tuple[Path, str]:
    """Write alice's rules, queue one message to her, run the runner once;
    (her Maildir, the runner's log)."""
    box = ms.maildir("alice")
    box.mkdir(parents=True, exist_ok=True)
    (box / ".procmailrc").write_text(rules)
    Queue(ms.root / "queue").enqueue("carol@remote.example", ["alice@example.test"], MSG)
    env = env_with_repo()
    env.update(env_extra or {})
    run = subprocess.run(ms.program("pymta.qrunner", "--once"), capture_output=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return box, run.stderr.decode("utf-8", "replace")


def inbox(box: Path) -> list[bytes]:
    new = box / "new"
    return [p.read_bytes() for p in new.iterdir()] if new.is_dir() else []


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


@pytest.fixture(params=MODES)
def system(request, make_mailsys):
    ms = make_mailsys(f'[deliver]\nmode = "{request.param}"\n')
    outside = ms.root / "outside"
    (outside / "Maildir" / "tmp").mkdir(parents=True)
    (outside / "Maildir" / "new").mkdir()
    (outside / "Maildir" / "cur").mkdir()
    return ms, outside


def refusal(log: str, line: int) -> bool:
    return any(f".procmailrc:{line}:" in text and "refus" in text for text in log.splitlines())


def symlink_to_outside(box: Path, outside: Path) -> None:
    box.mkdir(parents=True, exist_ok=True)
    (box / "link").symlink_to(outside / "Maildir")


def swapped_components(box: Path, outside: Path) -> None:
    # the folder itself is inside; its tmp/ and new/ lead out (made before the
    # delivery, as a rule's own pipe could make them between check and write)
    folder = box / ".Swapped"
    folder.mkdir(parents=True)
    (folder / "tmp").symlink_to(outside / "Maildir" / "tmp")
    (folder / "new").symlink_to(outside / "Maildir" / "new")


CASES = {
    "logfile": ('LOGFILE={out}/rules.log\nLOG="hello\n"\n', 1, None),
    "includerc-users-file": ("INCLUDERC={root}/users\n", 1, None),
    "maildir-dotdot": ("MAILDIR=..\n:0 c\nbob/\n", 1, None),
    "folder-dotdot": (":0\n../bob/\n", 2, None),
    "absolute-mbox": (":0:\n{out}/stolen.mbox\n", 2, None),
    "default": ("DEFAULT={out}/Maildir/\n", 1, None),
    "lockfile": ("LOCKFILE={out}/global.lock\n:0\n* ^Subject: nothing\n/dev/null\n", 1, None),
    "symlink-out": (":0\nlink/\n", 2, symlink_to_outside),
    "symlinked-tmp-new": (":0\n.Swapped/\n", 2, swapped_components),
    "redirection": (":0\n| cat > {out}/x\n", 2, None),
    "redirection-append-quoted": (':0 w\n| cat >> "$HOME/../../bob/new/x" 2>&1\n', 2, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_paths_outside_home_are_refused(system, case):
    ms, outside = system
    text, line, prepare = CASES[case]
    if prepare:
        prepare(ms.maildir("alice"), outside)
    before = files_under(outside)
    box, log = run_queue(ms, text.format(out=outside, root=ms.root))
    assert refusal(log, line), log
    assert files_under(outside) == before, log
    assert not (ms.maildir("bob") / "new").exists() or not list((ms.maildir("bob") / "new").iterdir())
    [delivered] = inbox(box)
    assert delivered.endswith(MSG)
    if case == "includerc-users-file":
        assert "BLF-CRYPT" not in log  # nothing of the users file reaches the log


def test_symlink_inside_home_is_followed(make_mailsys):
    """Links that stay inside the user's directories keep working."""
    ms = make_mailsys()
    box = ms.maildir("alice")
    (box / "Archive").mkdir(parents=True)
    (box / "archive").symlink_to(box / "Archive")
    box, log = run_queue(ms, ":0\narchive/lists.mbox\n")
    assert (box / "Archive" / "lists.mbox").read_bytes().count(b"Subject: confinement") == 1, log
    assert inbox(box) == []


ALLOWED_ENV = {
    "HOME",
    "LOGNAME",
    "USER",
    "SHELL",
    "PATH",
    "SENDER",
    "RECIPIENT",
    "EXTENSION",
    "MAILDIR",
    "DEFAULT",
    "ORGMAIL",
    "SENDMAIL",
    "SENDMAILFLAGS",
    "LOCKEXT",
    "SHELLMETAS",
    "SHELLFLAGS",
    "MSGPREFIX",
    "TIMEOUT",
    "HOST",
    "LASTFOLDER",
    "MINE",
    "PWD",
    "SHLVL",
    "_",
    "OLDPWD",
}  # the last ones sh sets itself


@pytest.mark.parametrize("mode", MODES)
def test_pipe_sees_a_clean_environment(make_mailsys, mode):
    ms = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
    runner_env = {
        "PYMAIL_SECRET": "runner-only",
        "LISTEN_FDS": "3",
        "LISTEN_PID": "1",
        "NOTIFY_SOCKET": "/run/x",
        "LD_PRELOAD": "",
        "LEAKY": "yes",
    }
    box, log = run_queue(ms, "MINE=set-by-rules\n:0 c\n| env > $HOME/env.txt\n", runner_env)
    names = dict(line.split("=", 1) for line in (box / "env.txt").read_text().splitlines() if "=" in line)
    assert set(names) <= ALLOWED_ENV, sorted(set(names) - ALLOWED_ENV)
    assert names["MINE"] == "set-by-rules" and names["HOME"] == str(box)
    assert names["SENDER"] == "carol@remote.example" and names["USER"] == "alice@example.test"
    assert len(inbox(box)) == 1, log


@pytest.mark.parametrize("mode", MODES)
def test_filter_with_too_much_output_is_killed_and_the_message_kept(make_mailsys, mode):
    ms = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
    # 40 MB of output, more than the 25 MB floor (and twice the message)
    box, log = run_queue(ms, ":0 fw\n| cat; yes 0123456789abcdef | head -c 40000000\n")
    [delivered] = inbox(box)
    assert delivered.endswith(MSG) and len(delivered) < 1000
    assert "more output than allowed" in log and ".procmailrc:2:" in log, log


def test_backquote_output_is_bounded(make_mailsys):
    ms = make_mailsys()
    box, log = run_queue(ms, 'BIG=`yes | head -c 1000000`\n:0 c\n| printf %s "$BIG" | wc -c > $HOME/size\n')
    assert (box / "size").read_text().strip() == "0"
    assert ".procmailrc:1:" in log and "more output than allowed" in log, log
    assert len(inbox(box)) == 1


@pytest.mark.parametrize("mode", MODES)
def test_pipe_over_timeout_is_killed_with_its_whole_group(make_mailsys, mode):
    ms = make_mailsys(f'[deliver]\nmode = "{mode}"\n')
    start = time.time()
    box, log = run_queue(ms, "TIMEOUT=1\n:0 c\n| (sleep 2; touch $HOME/late) & sleep 30\n")
    assert time.time() - start < 15
    assert "timed out" in log, log
    assert len(inbox(box)) == 1
    time.sleep(2.5)
    assert not (box / "late").exists()  # the background child died with the group


def test_m_mode_is_confined_to_home_and_maildir(tmp_path):
    """pymda-deliver -m: the roots are HOME and MAILDIR as the command line set them."""
    home, maildir, outside = tmp_path / "home", tmp_path / "home" / "Mail", tmp_path / "outside"
    for d in (home, maildir, outside):
        d.mkdir(parents=True, exist_ok=True)
    rc = home / "rc"
    rc.write_text(f"LOGFILE={outside}/log\n:0\n{outside}/x.mbox\n")
    env = env_with_repo()
    env["HOME"] = str(home)
    proc = subprocess.run(
        [os.sys.executable, "-m", "pymda.deliver", "-m", f"MAILDIR={maildir}", f"DEFAULT={maildir}/inbox/", str(rc)],
        input=MSG,
        capture_output=True,
        env=env,
        cwd=home,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(outside.iterdir()) == []
    assert b"rc:1: LOGFILE" in proc.stderr and b"refusing folder" in proc.stderr
    assert len(list((maildir / "inbox" / "new").iterdir())) == 1
