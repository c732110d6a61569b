"""LMTP (RFC 2033) out of the queue runner (issue 15 §2): ``lmtp:`` next hops in relay.transport_map.

The peer is Debian's Dovecot LMTP (package dovecot-lmtpd), a private
instance over its own users file and Maildirs, on TCP and on a UNIX
socket; a user with a tiny quota makes Dovecot refuse that one recipient
after the message while it takes the other, which is what one reply per
recipient is for.  A scripted socket peer checks the order of the replies
and a connection lost between them.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port
from pymta.queue import Queue
from pymta.routing import parse_transport
from pymta.smtp_client import SMTPClient, Transaction

SENDER = "alice@example.test"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

DOVECOT_CONF = """\
base_dir = {run}/base
state_dir = {run}/state
log_path = {run}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 0
default_login_user = dovenull
default_internal_user = dovenull
mail_location = maildir:{store}/%d/%n
mail_plugins = quota
lmtp_rcpt_check_quota = no
passdb {{
  driver = passwd-file
  args = username_format=%u {run}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {run}/users
  default_fields = uid={uid} gid={gid} home={store}/%d/%n
}}
plugin {{
  quota = maildir:User quota
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener {run}/lmtp {{
    mode = 0666
  }}
}}
"""


def have_dovecot_lmtp() -> bool:
    return os.path.exists("/usr/lib/dovecot/lmtp") and os.path.exists(DOVECOT)


@pytest.fixture
def dovecot_lmtp():
    """A private Dovecot LMTP: (tcp port, unix socket path, mail store)."""
    if not have_dovecot_lmtp():
        pytest.skip("Debian's dovecot-lmtpd is not installed")
    # not under pytest's tmp_path: Dovecot's auth process (dovenull) must reach the users file
    run = Path(tempfile.mkdtemp(prefix="pymail-dovecot-lmtp-"))
    store = run / "store"
    for sub in ("base", "state", "store"):
        (run / sub).mkdir(parents=True)
    mail = pwd.getpwnam("mail")
    os.chown(store, mail.pw_uid, mail.pw_gid)
    os.chmod(run, 0o755)
    (run / "users").write_text(
        "rita@remote.test:{PLAIN}x::::::\n"
        "bob@remote.test:{PLAIN}x::::::\n"
        "full@remote.test:{PLAIN}x::::::userdb_quota_rule=*:bytes=10\n"
    )
    os.chmod(run / "users", 0o644)
    port = free_port()
    conf = run / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(run=run, store=store, port=port, uid=mail.pw_uid, gid=mail.pw_gid))
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log = (run / "dovecot.log").read_text() if (run / "dovecot.log").exists() else ""
                    raise RuntimeError(f"dovecot did not start: {proc.stderr.read()!r} {log}") from None
                time.sleep(0.05)
        yield port, run / "lmtp", store
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def lmtp_config(spec: str) -> str:
    return (
        f'[relay]\ntransport_map = {{ "remote.test" = "{spec}" }}\n'
        "connect_timeout = 3.0\ncommand_timeout = 10.0\nconnection_cache_time = 0.0\n"
        "[qrunner]\nretry_min = 1.0\nretry_max = 4.0\n"
    )


def msg(subject: str, body: str = "line one\n.dotted line\nend\n") -> bytes:
    return (
        f"From: Alice <{SENDER}>\nTo: rita@remote.test\nSubject: {subject}\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\n\n{body}"
    ).encode()


def state(system, qid: str) -> dict:
    path = system.root / "queue" / "state" / qid
    if not path.exists():
        return {}
    return {r["to"]: r for r in json.loads(path.read_text())["rcpts"]}


def run_once(system) -> str:
    proc = system.run("pymta.qrunner", "--once", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def delivered(store: Path, user: str) -> list[bytes]:
    box = store / "remote.test" / user
    return [p.read_bytes() for d in ("new", "cur") if (box / d).is_dir() for p in sorted((box / d).iterdir())]


# -- the transport map's syntax ------------------------------------------------------------------


def test_transport_values():
    assert parse_transport("[mx.test]:2525") == ("smtp", "mx.test", 2525)
    assert parse_transport("smtp:[mx.test]") == ("smtp", "mx.test", 25)
    assert parse_transport("lmtp:[127.0.0.1]:2424") == ("lmtp", "127.0.0.1", 2424)
    assert parse_transport("lmtp:mail.test") == ("lmtp", "mail.test", 24)
    assert parse_transport("lmtp:inet:mail.test:2424") == ("lmtp", "mail.test", 2424)
    assert parse_transport("lmtp:unix:/run/dovecot/lmtp") == ("lmtp", "unix", "/run/dovecot/lmtp")
    assert parse_transport("smtp:2525") == ("smtp", "smtp", 2525)  # a host named smtp
    for bad in ("lmtp:[h]:25", "lmtp:unix:", "lmtp:[h"):
        with pytest.raises(ValueError):
            parse_transport(bad)


# -- against Dovecot's LMTP ----------------------------------------------------------------------


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_lmtp_to_dovecot_one_reply_per_recipient(make_mailsys, dovecot_lmtp, over):
    port, unix_path, store = dovecot_lmtp
    spec = f"lmtp:[127.0.0.1]:{port}" if over == "tcp" else f"lmtp:unix:{unix_path}"
    sender = make_mailsys(lmtp_config(spec))
    q = Queue(sender.root / "queue")
    rcpts = ["rita@remote.test", "ghost@remote.test", "full@remote.test", "bob@remote.test"]
    qid = q.enqueue(SENDER, rcpts, msg(f"over {over}", "x" * 200 + "\n.dotted line\nend\n"))
    log = run_once(sender)
    # rita and bob got the message, once each, with the text intact
    for user in ("rita", "bob"):
        [data] = delivered(store, user)
        assert f"Subject: over {over}".encode() in data
        assert b"\n.dotted line\nend\n" in data.replace(b"\r\n", b"\n")
    assert delivered(store, "full") == [] and delivered(store, "ghost") == []
    relay = f"unix:{unix_path}" if over == "unix" else f"127.0.0.1[127.0.0.1]:{port}"
    assert f"to=<rita@remote.test>, orig_to=<rita@remote.test>, relay={relay}, status=sent" in log
    assert f"to=<bob@remote.test>, orig_to=<bob@remote.test>, relay={relay}, status=sent" in log
    # ghost: refused at RCPT (550 5.1.1); full: refused after the message by its quota (Dovecot: 552 5.2.2,
    # or 452 4.2.2 with quota_full_tempfail), while the others in the same transaction were taken
    assert re.search(r"to=<ghost@remote.test>.*status=bounced \(5\.1\.1 .*in reply to RCPT TO", log), log
    assert re.search(r"to=<full@remote.test>.*status=(bounced|deferred) \([45]\.2\.2 .*end of DATA", log), log
    assert not (sender.root / "queue" / "state" / qid).exists()  # all final


# -- a scripted LMTP peer: order of the replies, a session lost between them ----------------------


def scripted_peer(after_data: list[bytes]):
    """An LMTP server on 127.0.0.1 that accepts every RCPT and answers the message with AFTER_DATA."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    seen: list[bytes] = []

    def serve():
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as f:
            conn.sendall(b"220 peer.test LMTP ready\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                seen.append(line)
                verb = line[:4].upper()
                if verb == b"LHLO":
                    conn.sendall(b"250-peer.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    for reply in after_data:
                        conn.sendall(reply)
                    if not after_data or not after_data[-1]:
                        return
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.1.0 ok\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], seen, lambda: (t.join(5), srv.close())


def test_each_recipient_gets_its_own_reply_in_order(make_mailsys):
    port, seen, done = scripted_peer(
        [b"250 2.0.0 <a@remote.test> saved\r\n", b"452 4.2.2 <b@remote.test> mailbox full\r\n", b"550 5.7.1 no\r\n"]
    )
    sender = make_mailsys(lmtp_config(f"lmtp:[127.0.0.1]:{port}"))
    qid = Queue(sender.root / "queue").enqueue(
        SENDER, ["a@remote.test", "b@remote.test", "c@remote.test"], msg("three")
    )
    run_once(sender)
    done()
    assert seen[0].startswith(b"LHLO ") and not any(line.startswith((b"EHLO", b"HELO")) for line in seen)
    st = state(sender, qid)
    assert (
        st["a@remote.test"]["status"] == "sent"
        and st["a@remote.test"]["diag"] == "smtp; 250 2.0.0 <a@remote.test> saved"
    )
    assert st["b@remote.test"]["status"] == "deferred" and st["b@remote.test"]["reason"].startswith("4.2.2")
    assert st["c@remote.test"]["status"] == "bounced" and st["c@remote.test"]["reason"].startswith("5.7.1")


def test_lost_between_replies_defers_the_rest(make_mailsys):
    port, seen, done = scripted_peer([b"250 2.0.0 saved\r\n", b""])  # then the connection closes
    sender = make_mailsys(lmtp_config(f"lmtp:[127.0.0.1]:{port}"))
    qid = Queue(sender.root / "queue").enqueue(SENDER, ["a@remote.test", "b@remote.test"], msg("lost"))
    log = run_once(sender)
    done()
    st = state(sender, qid)
    assert "to=<a@remote.test>" in log and st["a@remote.test"]["status"] == "sent"
    assert st["b@remote.test"]["status"] == "deferred" and "lost connection" in st["b@remote.test"]["reason"]


def test_machine_lhlo_refused_is_not_retried_with_helo():
    client = SMTPClient("me.test", tls="none", lmtp=True)
    assert client.data_received(b"220 lmtp\r\n") == [b"LHLO me.test\r\n"]
    actions = client.data_received(b"500 what\r\n")
    assert actions == [b"QUIT\r\n"] and "LHLO refused" in client.failure.text
    client = SMTPClient("me.test", tls="none", lmtp=True)
    client.data_received(b"220 lmtp\r\n")
    client.data_received(b"250 ok\r\n")
    assert client.ready
    client.transaction(Transaction("s@x.test", ["a@y.test", "b@y.test"], lambda: [b"hi\n"], 3))
    for reply in (b"250 ok\r\n", b"550 no\r\n", b"250 ok\r\n"):  # MAIL, a, b (not pipelined: one at a time)
        client.data_received(reply)
    client.data_received(b"354 go\r\n")
    client.data_received(b"250 2.0.0 b saved\r\n")  # only b was accepted: one reply, for b
    assert client.ready
    assert client.result.data_reply(0) is None and client.result.data_reply(1).code == 250
