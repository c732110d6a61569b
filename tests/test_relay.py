"""Remote delivery by pymta-qrunner against real SMTP peers on 127.0.0.1.

Peers: our own pymta-smtpd (another pymail tree), aiosmtpd from PyPI (an
independent implementation, scripted to accept / 4xx / 5xx per recipient)
and raw sockets that drop the connection.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time

import pytest

from conftest import PASSWORD, free_port
from pymta.queue import Queue

SENDER = "alice@example.test"


def relay_config(port: int, extra: str = "") -> str:
    return (
        f'[relay]\ntransport_map = {{ "remote.test" = "[127.0.0.1]:{port}", ".sub.test" = "[127.0.0.1]:{port}" }}\n'
        f"connect_timeout = 3.0\ncommand_timeout = 5.0\nconnection_cache_time = 0.0\n{extra}\n"
        f"[qrunner]\nretry_min = 1.0\nretry_max = 4.0\n"
    )


def msg(subject: str = "hello", body: str = "line one\n.dotted line\n..two dots\nend\n") -> bytes:
    return (
        f"From: Alice <{SENDER}>\nTo: rita@remote.test\nSubject: {subject}\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\n\n{body}"
    ).encode()


def state(system, qid: str) -> dict:
    return {r["to"]: r for r in json.loads((system.root / "queue" / "state" / qid).read_text())["rcpts"]}


def run_once(system):
    proc = system.run("pymta.qrunner", "--once", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.decode()


def dsn_parts(path):
    m = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = m.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status_blocks = parts[1].get_payload()  # message/delivery-status: a list of header blocks
    return m, parts, status_blocks


# -- peer: aiosmtpd ---------------------------------------------------------------------


class Scripted:
    """aiosmtpd handler: recipient local part decides the reply."""

    def __init__(self) -> None:
        self.messages = []  # (mail_from, rcpt_tos, content)
        self.transactions = 0
        self.mode = {}  # local part -> reply override

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        reply = self.mode.get(local)  # "" accepts
        if reply is None:
            if local.startswith("temp"):
                reply = "451 4.3.0 Try again later"
            elif local.startswith("rej"):
                reply = "550 5.1.1 No such user here"
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.transactions += 1
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Message accepted"


@pytest.fixture
def aio_peer():
    from aiosmtpd.controller import Controller

    handler = Scripted()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, data_size_limit=20000)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def dropper(mode: str):
    """A TCP server that drops connections: 'at-once' or 'after-mail'."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                if mode == "after-mail":
                    conn.sendall(b"220 drop.test ESMTP\r\n")
                    f = conn.makefile("rb")
                    while True:
                        line = f.readline()
                        if not line or line.upper().startswith(b"MAIL"):
                            break
                        conn.sendall(b"250 drop.test\r\n")
                    f.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], lambda: (stop.set(), t.join(2), srv.close())


# -- tests ----------------------------------------------------------------------------------


def test_relay_to_our_own_smtpd_with_starttls_and_bounce_dsn(make_mailsys):
    peer = make_mailsys()
    peer.config.write_text(peer.config.read_text().replace('domains = ["example.test"]', 'domains = ["remote.test"]'))
    peer.add_user("rita@remote.test", PASSWORD)
    port = peer.start_smtpd()
    sender = make_mailsys(relay_config(port))
    q = Queue(sender.root / "queue")
    qid = q.enqueue(SENDER, ["rita@remote.test", "ghost@remote.test"], msg("own smtpd"))
    log = run_once(sender)
    assert f"{qid}: to=<rita@remote.test>" in log
    st_path = sender.root / "queue" / "state" / qid
    assert not st_path.exists()  # all final: the entry is gone
    # the peer queued exactly one message (one transaction) and delivers it
    peer_log = run_once(peer)
    [path] = sorted((peer.root / "mail" / "remote.test" / "rita" / "new").iterdir())
    data = path.read_bytes()
    assert b"\n.dotted line\n..two dots\nend\n" in data  # dot-stuffing undone by the peer: text intact
    assert b"with ESMTPS id" in data  # STARTTLS was used (opportunistic)
    assert "rita@remote.test" in peer_log
    # ghost was refused at RCPT (550 5.1.1): a DSN went back to alice through the queue
    assert "to=<ghost@remote.test>" in log and "status=bounced" in log
    run_once(sender)
    [dsn] = sender.messages("alice")
    m, parts, blocks = dsn_parts(dsn)
    assert m["To"] == f"<{SENDER}>"
    assert "Return-Path: <>" in dsn.read_text()
    per_msg, per_rcpt = blocks[0], blocks[1:]
    assert per_msg["Reporting-MTA"] == "dns; mx.example.test"
    [r] = per_rcpt
    assert r["Final-Recipient"] == "rfc822; ghost@remote.test"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert r["Remote-MTA"] == "dns; 127.0.0.1"
    assert "Subject: own smtpd" in parts[2].get_payload()


def test_accept_tempfail_reject_in_one_transaction(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    q = Queue(sender.root / "queue")
    qid = q.enqueue(SENDER, ["ok@remote.test", "temp@remote.test", "rej@remote.test", "ok2@x.sub.test"], msg("mixed"))
    run_once(sender)
    # one transaction for the destination, with the two accepted recipients
    assert handler.transactions == 1
    [(mail_from, rcpts, content)] = handler.messages
    assert mail_from == SENDER and rcpts == ["ok@remote.test", "ok2@x.sub.test"]
    # CRLF on the wire, dot-stuffed there and un-stuffed by the peer: the text arrives intact
    assert content.endswith(b"\r\n\r\nline one\r\n.dotted line\r\n..two dots\r\nend\r\n")
    st = state(sender, qid)
    assert st["ok@remote.test"]["status"] == "sent"
    assert st["temp@remote.test"]["status"] == "deferred"
    assert st["temp@remote.test"]["reason"].startswith("4.3.0")
    assert st["rej@remote.test"]["status"] == "bounced"
    [(_, found)] = [(s, p) for s, p in Queue(sender.root / "queue").all_entries() if p.name == qid]
    assert found.parent.parent.name == "deferred"
    # the DSN (for rej only) waits in new/ for the sender
    run_once(sender)
    [dsn] = sender.messages("alice")
    _, _, blocks = dsn_parts(dsn)
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; rej@remote.test"]
    # the peer recovers; a flush retries now; only temp@ is sent again
    handler.mode["temp"] = ""  # accept from now on
    flush = sender.run("pymta.cli", "queue", "flush")
    assert flush.returncode == 0, flush.stderr
    run_once(sender)
    assert handler.transactions == 2
    assert handler.messages[1][1] == ["temp@remote.test"]
    assert not sender.queue_files()


def test_retry_backoff_and_lifetime_expiry(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port) + "max_lifetime = 3.0\n")
    q = Queue(sender.root / "queue")
    qid = q.enqueue(SENDER, ["temp@remote.test"], msg("slow"))
    t0 = time.time()
    log = run_once(sender)
    assert "next attempt in 1s" in log
    st = json.loads((sender.root / "queue" / "state" / qid).read_text())
    assert t0 + 0.5 < st["next"] < t0 + 3
    # second attempt doubles the delay
    assert sender.run("pymta.cli", "queue", "flush").returncode == 0
    log = run_once(sender)
    assert "next attempt in 2s" in log
    time.sleep(3.1)
    assert sender.run("pymta.cli", "queue", "flush").returncode == 0
    log = run_once(sender)
    assert "5.4.7 delivery time expired" in log
    run_once(sender)
    [dsn] = sender.messages("alice")
    _, _, blocks = dsn_parts(dsn)
    assert blocks[1]["Status"] == "5.4.7" and blocks[1]["Action"] == "failed"


@pytest.mark.parametrize("mode", ["at-once", "after-mail"])
def test_dropped_connections_defer(make_mailsys, mode):
    port, stop = dropper(mode)
    try:
        sender = make_mailsys(relay_config(port))
        qid = Queue(sender.root / "queue").enqueue(SENDER, ["rita@remote.test"], msg("dropped"))
        log = run_once(sender)
    finally:
        stop()
    st = state(sender, qid)
    assert st["rita@remote.test"]["status"] == "deferred"
    assert "4.4.2" in st["rita@remote.test"]["reason"]
    assert "status=deferred" in log
    assert not sender.messages("alice")  # no DSN for a deferral


def test_connection_refused_defers(make_mailsys):
    sender = make_mailsys(relay_config(free_port()))
    qid = Queue(sender.root / "queue").enqueue(SENDER, ["rita@remote.test"], msg("refused"))
    run_once(sender)
    st = state(sender, qid)
    assert st["rita@remote.test"]["status"] == "deferred"
    assert "4.4.1 connect to" in st["rita@remote.test"]["reason"]


def test_size_limit_bounces_without_sending(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    Queue(sender.root / "queue").enqueue(SENDER, ["ok@remote.test"], msg("big", "x" * 70 + "\n") * 400)
    log = run_once(sender)
    assert "5.3.4" in log and "status=bounced" in log
    assert handler.transactions == 0


def test_null_sender_failure_goes_to_postmaster_and_never_loops(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    q = Queue(sender.root / "queue")
    q.enqueue("", ["rej@remote.test"], msg("a bounce"))
    run_once(sender)  # fails; the notice goes to postmaster (alias -> alice), not to <>
    run_once(sender)
    [notice] = sender.messages("alice")
    m, _, _ = dsn_parts(notice)
    assert m["To"] == "<postmaster@example.test>"
    # a failing postmaster notice is only logged
    q.enqueue("", ["rej@remote.test"], msg("double"), {"dsn": "postmaster"})
    log = run_once(sender)
    assert "double bounce" in log
    run_once(sender)
    assert len(sender.messages("alice")) == 1


def test_8bit_message_uses_body_8bitmime(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    Queue(sender.root / "queue").enqueue(SENDER, ["ok@remote.test"], msg("8bit", "Grüße\n"))
    run_once(sender)
    [(_, _, content)] = handler.messages
    assert "Grü".encode() in content


def test_tls_verify_policy_defers_on_bad_certificate(make_mailsys):
    peer = make_mailsys()
    peer.config.write_text(peer.config.read_text().replace('domains = ["example.test"]', 'domains = ["remote.test"]'))
    port = peer.start_smtpd()
    sender = make_mailsys(relay_config(port, 'tls_policy = { "remote.test" = "verify" }'))
    qid = Queue(sender.root / "queue").enqueue(SENDER, ["rita@remote.test"], msg("verify"))
    run_once(sender)
    st = state(sender, qid)
    assert st["rita@remote.test"]["status"] == "deferred"
    assert "4.7.5" in st["rita@remote.test"]["reason"]


def test_tls_required_but_not_offered_defers(make_mailsys, aio_peer):
    handler, port = aio_peer  # aiosmtpd without a TLS context offers no STARTTLS
    sender = make_mailsys(relay_config(port, 'tls = "require"'))
    qid = Queue(sender.root / "queue").enqueue(SENDER, ["ok@remote.test"], msg("require"))
    run_once(sender)
    st = state(sender, qid)
    assert st["ok@remote.test"]["status"] == "deferred" and "4.7.4" in st["ok@remote.test"]["reason"]
    assert handler.transactions == 0


def test_relay_host_with_auth(make_mailsys):
    peer = make_mailsys()
    peer.config.write_text(
        peer.config.read_text().replace('domains = ["example.test"]', 'domains = ["remote.test"]')
        + "[smtpd]\ntrusted_networks = []\n"
    )
    port = peer.start_smtpd("listen", "--service", "submission")
    sender = make_mailsys(
        f'[relay]\nhost = "[127.0.0.1]:{port}"\nusername = "alice@example.test"\n'
        f'password_file = "relay.pw"\ncommand_timeout = 10.0\n'
    )
    (sender.root / "relay.pw").write_text(PASSWORD + "\n")
    Queue(sender.root / "queue").enqueue(SENDER, ["someone@elsewhere.test"], msg("via relay"))
    log = run_once(sender)
    assert "status=sent" in log, log
    [entry] = list((peer.root / "queue" / "new").iterdir())
    envelope = json.loads(entry.read_bytes().split(b"\n", 1)[0])
    assert envelope["meta"]["auth"] == "alice@example.test"
    assert envelope["recipients"] == ["someone@elsewhere.test"]


def test_pass_cost_is_driven_by_due_entries_not_the_deferred_backlog(make_mailsys, aio_peer):
    """20,000 entries deferred into future buckets: a pass only looks at what is due."""
    import os

    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    deferred = sender.root / "queue" / "deferred"
    future = int(time.time() // 60) + 60
    for b in range(100):
        d = deferred / f"{future + b:010d}"
        d.mkdir(parents=True)
        for i in range(200):
            fd = os.open(d / f"{future + b:08X}{i:011X}", os.O_CREAT | os.O_WRONLY, 0o640)
            os.close(fd)
    q = Queue(sender.root / "queue")
    q.enqueue(SENDER, ["ok@remote.test"], msg("due one"))
    from pymta.lib import config
    from pymta.qrunner import Runner

    runner = Runner(config.load(sender.config))
    t0 = time.time()
    assert len(runner.due_paths()) == 1
    runner.run_pass()
    runner.remote.close_all()
    assert time.time() - t0 < 1.0
    assert handler.transactions == 1


def test_delay_warning_is_sent_once(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port) + "delay_warning = 0.5\n")
    q = Queue(sender.root / "queue")
    q.enqueue(SENDER, ["temp@remote.test"], msg("late"))
    time.sleep(0.6)
    run_once(sender)
    sender.run("pymta.cli", "queue", "flush")
    run_once(sender)  # still deferred: no second warning; the warning itself is delivered
    [warning] = sender.messages("alice")
    m, parts, blocks = dsn_parts(warning)
    assert m["Subject"].startswith("Delayed Mail")
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"].startswith("4.")
    assert "Will-Retry-Until" in blocks[1]


def test_notify_never_suppresses_the_bounce(make_mailsys, aio_peer):
    handler, port = aio_peer
    sender = make_mailsys(relay_config(port))
    Queue(sender.root / "queue").enqueue(SENDER, ["rej@remote.test"], msg("quiet"), {"notify": "never"})
    log = run_once(sender)
    assert "NOTIFY=never" in log
    run_once(sender)
    assert not sender.messages("alice")
