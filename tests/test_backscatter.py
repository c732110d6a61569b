"""No backscatter: postmaster always exists, every local recipient is checked
at RCPT (aliases expanded), and a bounce never returns a spammer's text.

Issue 11 2.1: from an untrusted client, bare <postmaster> was accepted
unchecked; a fresh `pymail init` had no postmaster at all; an alias to an
unknown user was accepted and then bounced to a (forged) sender with 264 KB
of the original quoted.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import REPO, env_with_repo, free_port, wait_port
from pymta.cli import cli
from pymta.queue import Queue

UNTRUSTED = "[smtpd]\ntrusted_networks = []\n"  # 127.0.0.1 is a stranger, like any Internet client


def rcpt_reply(port: int, *recipients: str, sender: str = "spammer@forged.example") -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail(sender)[0] == 250
        return [smtp.rcpt(r) for r in recipients]


def replace_aliases(system, text: str) -> None:
    tmp = system.root / "aliases.new"
    tmp.write_text(text)
    os.replace(tmp, system.root / "aliases")  # a new inode: no cached table survives


def test_bare_postmaster_from_an_untrusted_client_is_checked(make_mailsys):
    system = make_mailsys(UNTRUSTED)  # its aliases say postmaster: alice
    port = system.start_smtpd()
    [(code, _)] = rcpt_reply(port, "postmaster")
    assert code == 250
    replace_aliases(system, "postmaster: ghost\n")  # leads nowhere
    [(code, text)] = rcpt_reply(port, "postmaster")
    assert code == 550 and b"5.1.1" in text
    replace_aliases(system, "# nobody\n")
    assert [c for c, _ in rcpt_reply(port, "postmaster", "postmaster@example.test")] == [550, 550]


def test_alias_to_an_unknown_user_is_refused_at_rcpt(make_mailsys):
    system = make_mailsys(UNTRUSTED)
    replace_aliases(
        system,
        "postmaster: alice\nteam: alice, ghost\nsales: bob\nring: ring2\nring2: ring\n"
        "robot: |/bin/cat, someone@remote.example, /tmp/box\n",
    )
    port = system.start_smtpd()
    replies = rcpt_reply(
        port,
        "team@example.test",
        "sales@example.test",
        "ring@example.test",
        "robot@example.test",
        "alice+tag@example.test",
        "ghost@example.test",
    )
    assert [c for c, _ in replies] == [550, 250, 550, 250, 250, 550]
    assert b"5.1.1" in replies[0][1] and b"ghost" not in replies[0][1]  # the alias's insides stay private
    [proc] = system.procs
    proc.terminate()
    log = proc.stderr.read()
    assert b"alias <team@example.test> leads to <ghost@example.test>, which is no user" in log
    assert b"NOQUEUE: reject: RCPT from [127.0.0.1]: 550 5.1.1 <team@example.test>" in log


def pymail(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


@pytest.fixture
def fresh_tree(tmp_path):
    d = tmp_path / "fresh"
    as_root = ["--daemon-user", "root"] if os.geteuid() == 0 else []
    result = pymail("init", d, "--domain", "example.test", "--hostname", "mx.example.test", *as_root)
    assert result.exit_code == 0, result.output
    return d


def start_smtpd(tree):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymta.smtpd", "-C", str(tree / "pymail.toml"), "--listen", f"127.0.0.1:{port}"],
        env=env_with_repo(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return proc, port


def test_fresh_init_and_first_user_make_postmaster_work(fresh_tree):
    check = pymail("config", "check", fresh_tree)
    assert check.exit_code == 0, check.output  # a warning, not a failure
    assert "warning: postmaster@example.test: no alias or user takes postmaster's mail" in check.stderr
    added = pymail("user", "add", fresh_tree, "alice@example.test", "--password-stdin", input="pw-alice-1\n")
    assert added.exit_code == 0, added.output
    assert "postmaster mail goes to alice@example.test" in added.stdout
    pymail("user", "add", fresh_tree, "bob@example.test", "--password-stdin", input="pw-bob-1\n")
    aliases = (fresh_tree / "aliases").read_text()
    assert aliases.startswith("# aliases(5)")  # the comments are kept
    assert aliases.endswith("\npostmaster: alice@example.test\n")  # once, to the first user
    check = pymail("config", "check", fresh_tree)
    assert check.exit_code == 0 and "warning" not in check.stderr, check.output
    proc, port = start_smtpd(fresh_tree)
    try:
        assert [c for c, _ in rcpt_reply(port, "postmaster@example.test", "postmaster")] == [250, 250]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_init_postmaster_option_names_the_address(tmp_path):
    d = tmp_path / "named"
    as_root = ["--daemon-user", "root"] if os.geteuid() == 0 else []
    result = pymail("init", d, "--domain", "example.test", "--postmaster", "Admin@Elsewhere.Example", *as_root)
    assert result.exit_code == 0, result.output
    pymail("user", "add", d, "alice@example.test", "--password-stdin", input="pw-alice-1\n")
    aliases = (d / "aliases").read_text()
    assert aliases.count("postmaster:") == 2  # the example in the comment, and the alias
    assert aliases.endswith("\npostmaster: admin@elsewhere.example\n")
    bad = pymail("init", tmp_path / "bad", "--postmaster", "not an address", *as_root)
    assert bad.exit_code == 65 and "--postmaster" in bad.stderr


def test_config_check_warns_about_aliases_that_lead_nowhere(fresh_tree):
    pymail("user", "add", fresh_tree, "alice@example.test", "--password-stdin", input="pw-alice-1\n")
    with open(fresh_tree / "aliases", "a") as fh:
        fh.write("team: alice, ghost\n")
    check = pymail("config", "check", fresh_tree)
    assert check.exit_code == 0
    assert (
        "alias team leads to ghost@example.test, which is no user: mail to team@example.test is refused" in check.stderr
    )


SPAM_LINE = b"Buy cheap pills now, the best offer of the year, click here!!!\n"


@pytest.mark.parametrize("shape", ["body", "no empty line", "huge header"])
def test_bounce_of_a_264_kb_message_carries_only_headers(mailsys, shape):
    text = SPAM_LINE * (264 * 1024 // len(SPAM_LINE))
    head = b"From: alice@example.test\nTo: ghost@example.test\nSubject: the original\n"
    if shape == "body":
        message = head + b"\n" + text
    elif shape == "no empty line":  # smtpd takes it; all of it used to be quoted as "headers"
        message = head + text
    else:
        message = head + b"".join(b"X-Filler-%d: " % i + SPAM_LINE for i in range(len(text) // len(SPAM_LINE)))
        message += b"\nbody\n"
    assert len(message) > 264 * 1000
    Queue(mailsys.root / "queue").enqueue("alice@example.test", ["ghost@example.test"], message)
    for _ in range(2):  # the first pass bounces, the second delivers the notice to alice
        run = mailsys.run("pymta.qrunner", "--once")
        assert run.returncode == 0, run.stderr
    [dsn] = mailsys.messages("alice")
    data = dsn.read_bytes()
    assert b"Subject: the original" in data
    quoted = data.partition(b"Content-Type: text/rfc822-headers")[2]
    if shape == "huge header":
        assert b"X-Filler-0: " in quoted
        assert 45_000 < len(quoted) < 50_000 + 200  # bounce.size_limit, whole lines
    else:
        assert SPAM_LINE not in data
    assert len(data) < 60_000
