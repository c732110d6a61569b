"""pymta-lmtpd's reply for each recipient after DATA (RFC 2033 4.2), from the outcome of its delivery.

The delivery seam (pymta/local.py) is replaced by a fake that fails as a real delivery can --
over quota, a temporary failure, no such user, a permanent failure -- so every mapping is seen.
"""

from __future__ import annotations

import pytest

from pymda.deliver import DeliveryError
from pymta.lib import config, sysexits
from pymta.lib.sansio import ConnectionInfo
from pymta.lmtpd import LMTPBackend
from pymta.queue import Queue
from pymta.smtp_server import Envelope, Session

FAILURES = {
    "full": DeliveryError("/mail/example.test/full/tmp/x: [Errno 122] Disk quota exceeded", sysexits.EX_TEMPFAIL),
    "disk": DeliveryError("/mail/example.test/disk/tmp/x: No space left on device", sysexits.EX_TEMPFAIL),
    "later": DeliveryError("pymda-deliver exited 75", sysexits.EX_TEMPFAIL),
    "gone": DeliveryError("gone@example.test: no such user", sysexits.EX_NOUSER),
    "refused": DeliveryError("rules exit code 77", sysexits.EX_NOPERM),
    "crash": RuntimeError("a bug"),
}


class FakeLocal:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, bytes]] = []

    def deliver(self, entry, rcpt: str, orig: str, once: bool) -> str:
        failure = FAILURES.get(rcpt.partition("@")[0])
        if failure is not None:
            raise failure
        self.delivered.append((rcpt, orig, b"".join(entry.message_chunks())))
        return "in process"


@pytest.fixture
def backend(tmp_path):
    names = ["alice", *FAILURES]
    (tmp_path / "users").write_text("".join(f"{n}@example.test:{{PLAIN}}x::::::\n" for n in names))
    (tmp_path / "aliases").write_text("postmaster: alice\nteam: alice, full\n")
    (tmp_path / "pymail.toml").write_text(
        f'hostname = "mx.example.test"\ndomains = ["example.test"]\nroot = "{tmp_path}"\n'
    )
    Queue(tmp_path / "queue").create()
    b = LMTPBackend(config.load(str(tmp_path / "pymail.toml")), "lmtp")
    b._local = FakeLocal()
    return b


def transaction(backend, rcpts: list[str], text: bytes = b"Subject: hi\n\nhello\n"):
    session = Session(ConnectionInfo(peer_ip="127.0.0.1"), helo="mta.example")
    envelope = Envelope("sender@elsewhere.example", list(rcpts))
    sink = backend.open_message(session, envelope)
    sink.write(text)
    return sink.commit()


def test_each_outcome_has_its_reply(backend):
    names = ["alice", "full", "disk", "later", "gone", "refused", "crash"]
    replies = transaction(backend, [f"{n}@example.test" for n in names])
    assert [(r.code, r.enhanced) for r in replies] == [
        (250, "2.0.0"),
        (452, "4.2.2"),  # over quota
        (452, "4.2.2"),  # the disk is full
        (451, "4.2.0"),
        (550, "5.1.1"),
        (550, "5.2.0"),
        (451, "4.3.0"),  # an internal error defers, never loses the message
    ]
    assert all(r.text.startswith(f"<{n}@example.test>") for r, n in zip(replies, names, strict=True))


def test_one_copy_per_user_and_the_message_as_received(backend):
    replies = transaction(backend, ["alice@example.test", "postmaster@example.test", "alice@example.test"])
    assert [r.code for r in replies] == [250, 250, 250]
    [(rcpt, orig, data)] = backend.local.delivered
    assert (rcpt, orig) == ("alice@example.test", "alice@example.test")
    assert data.startswith(b"Received: from mta.example ([127.0.0.1])\n\tby mx.example.test (pymail) with LMTP id ")
    assert data.endswith(b"\nSubject: hi\n\nhello\n")


def test_an_alias_of_several_targets_goes_to_the_queue(backend):
    replies = transaction(backend, ["team@example.test", "alice@example.test"])
    assert [(r.code, r.enhanced) for r in replies] == [(250, "2.1.5"), (250, "2.0.0")]
    assert replies[0].text.startswith("Ok: queued as ")
    qid = replies[0].text.rsplit(" ", 1)[1]
    entry = backend.queue.path / "new" / qid
    head, _, body = entry.read_bytes().partition(b"\n")
    assert b'"recipients":["team@example.test"]' in head and body.endswith(b"Subject: hi\n\nhello\n")
