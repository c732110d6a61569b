"""Filing spam (issue 12 §3): the site rules file `pymail init` writes files mail marked as
spam -- DMARC quarantine (X-Pymail-Quarantine, added by smtpd's checks), SpamAssassin's
X-Spam-Flag: YES, rspamd's X-Spam: Yes -- into the user's Junk folder; the user's own rules
still decide first.  On a real `pymail init` tree, delivered by pymda-deliver and, end to end,
by smtpd (DMARC against a DNS server on 127.0.0.1) and the queue runner."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import env_with_repo, free_port, wait_port
from fakedns import FakeDNS

ALICE = "alice@example.test"


def pymail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pymta.cli", *args], capture_output=True, text=True, env=env_with_repo(), timeout=60
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    d = tmp_path / "pm"
    as_root = ["--daemon-user", "root"] if os.geteuid() == 0 else []
    made = pymail("init", str(d), "--domain", "example.test", "--hostname", "mx.example.test", *as_root)
    assert made.returncode == 0, made.stderr
    added = pymail("-C", str(d / "pymail.toml"), "user", "add", ALICE)
    assert added.returncode == 0, added.stderr
    return d


def maildir(tree: Path) -> Path:
    return tree / "mail" / "example.test" / "alice"


def deliver(tree: Path, header: str) -> subprocess.CompletedProcess:
    message = f"From: <news@sender.example>\nTo: <{ALICE}>\nSubject: t\n{header}\nHello.\n".encode()
    done = subprocess.run(
        [sys.executable, "-m", "pymda.deliver", "-C", str(tree / "pymail.toml"), "-d", ALICE],
        input=message,
        capture_output=True,
        env=env_with_repo(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def where(tree: Path) -> dict[str, int]:
    """{folder ("" for the INBOX): messages in its new/}."""
    box = maildir(tree)
    found = {}
    for folder in [box, *sorted(p for p in box.glob(".*") if p.is_dir())]:
        new = folder / "new"
        if new.is_dir() and any(new.iterdir()):
            found["" if folder == box else folder.name] = len(list(new.iterdir()))
    return found


def test_init_writes_the_site_rules_and_config_uses_them(tree):
    rules = tree / "rules"
    assert rules.is_file() and (rules.stat().st_mode & 0o022) == 0
    checked = pymail("-C", str(tree / "pymail.toml"), "rules", "check", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shown = pymail("-C", str(tree / "pymail.toml"), "config", "show")
    assert re.search(r'site_rules = "rules"', shown.stdout), shown.stdout[-2000:]


@pytest.mark.parametrize(
    "header",
    [
        "X-Pymail-Quarantine: DMARC policy of sender.example\n",
        "X-Spam-Flag: YES\nX-Spam-Status: Yes, score=1000.0 required=5.0\n",
        "X-Spam: Yes\nX-Spamd-Result: default: True [15.00 / 15.00]\n",
        "x-spam: yes\n",
    ],
)
def test_marked_mail_goes_to_junk(tree, header):
    deliver(tree, header)
    assert where(tree) == {".Junk": 1}


@pytest.mark.parametrize("header", ["", "X-Spam-Flag: NO\n", "X-Spam: No\n", "X-Spam-Status: No, score=0.1\n"])
def test_other_mail_goes_to_the_inbox(tree, header):
    deliver(tree, header)
    assert where(tree) == {"": 1}


def test_the_users_own_rules_override(tree):
    rc = maildir(tree) / ".procmailrc"
    # a rule of the user's that delivers wins; DEFAULT=$MAILDIR/ keeps the rest in the INBOX
    rc.write_text(":0\n* ^Subject: list\n.Lists/\n\n:0\n* ^X-Spam-Flag: YES\n{ DEFAULT=$MAILDIR/ }\n")
    os.chmod(rc, 0o600)
    deliver(tree, "X-Spam-Flag: YES\n")
    assert where(tree) == {"": 1}
    deliver(tree, "X-Spam: Yes\n")  # the user said nothing about rspamd's mark
    assert where(tree) == {"": 1, ".Junk": 1}
    message = b"From: <a@b.example>\nSubject: list\nX-Spam-Flag: YES\n\nHello.\n"
    done = subprocess.run(
        [sys.executable, "-m", "pymda.deliver", "-C", str(tree / "pymail.toml"), "-d", ALICE],
        input=message,
        capture_output=True,
        env=env_with_repo(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert where(tree) == {"": 1, ".Junk": 1, ".Lists": 1}


def test_an_empty_site_rules_setting_turns_it_off(tree):
    conf = tree / "pymail.toml"
    conf.write_text(conf.read_text().replace('# site_rules = "rules"', 'site_rules = ""'))
    deliver(tree, "X-Spam-Flag: YES\n")
    assert where(tree) == {"": 1}


def test_dmarc_quarantine_end_to_end(tree):
    """smtpd marks a message failing DMARC p=quarantine; the queue runner files it into Junk."""
    dns = FakeDNS({"quar.test.": {"TXT": ["v=spf1 -all"]}, "_dmarc.quar.test.": {"TXT": ["v=DMARC1; p=quarantine"]}})
    conf = tree / "pymail.toml"
    text = conf.read_text()
    text = text.replace("# dns_servers = []", f'dns_servers = ["127.0.0.1:{dns.port}"]')
    text = re.sub(r"# trusted_networks = .*", "trusted_networks = []", text)
    conf.write_text(text)
    port = free_port()
    env = env_with_repo()
    smtpd = subprocess.Popen(
        [sys.executable, "-m", "pymta.smtpd", "-C", str(conf), "--listen", f"127.0.0.1:{port}"],
        env=env,
        stderr=subprocess.PIPE,
    )
    runner = subprocess.Popen([sys.executable, "-m", "pymta.qrunner", "-C", str(conf)], env=env, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=smtpd)
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
            client.ehlo("client.example.net")
            client.sendmail(
                "news@quar.test",
                [ALICE],
                b"From: <news@quar.test>\r\nTo: <alice@example.test>\r\nSubject: q\r\n\r\nHi.\r\n",
            )
            client.sendmail(
                "someone@elsewhere.test",
                [ALICE],
                b"From: <someone@elsewhere.test>\r\nTo: <alice@example.test>\r\nSubject: ok\r\n\r\nHi.\r\n",
            )
        deadline = time.time() + 20
        while time.time() < deadline and where(tree) != {"": 1, ".Junk": 1}:
            time.sleep(0.1)
        assert where(tree) == {"": 1, ".Junk": 1}
        junk = next((maildir(tree) / ".Junk" / "new").iterdir()).read_bytes()
        assert b"X-Pymail-Quarantine: DMARC policy of quar.test" in junk
        assert b"dmarc=fail (p=quarantine sp=quarantine dis=quarantine) header.from=quar.test" in junk
    finally:
        for proc in (smtpd, runner):
            proc.terminate()
            proc.wait(timeout=10)
        dns.close()
