"""Crash consistency, quick version (issue 7): the harness of
tests/reliability/crash_harness.py with ~30 SIGKILLs (listening parents and
workers of `pymail run`'s daemons among them), plus the checks that
prove the ledger can fail and a regression test for a bug the harness found.

The long run: ``python3 tests/reliability/crash_harness.py --kills 200``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import DOMAIN

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))

import crash_harness
from ledger import Ledger, body_for, check_message, make_message, peek


def test_crash_quick(tmp_path, tls_files):
    result = crash_harness.run(kills=30, clients=3, root=tmp_path, tls_files=tls_files, gap=(0.05, 0.3))
    summary = result.summary()
    print(summary)
    r = result.report
    assert sum(result.kills.values()) == 30, summary
    assert len(result.kills) >= 4, summary  # several kinds of victims, not one
    # pymail run alone brings back a killed daemon (parent) and each parent its killed workers
    assert any(kind.endswith("-parent") for kind in result.kills), summary
    assert any(kind.endswith("-worker") for kind in result.kills), summary
    assert result.problems == [], summary
    assert r.lost == [], summary
    assert r.corrupted == [], summary
    assert r.unreadable == [], summary
    assert r.queue_left == [], summary
    total = sum(r.acked.values())
    assert r.acked.get("smtp-local", 0) > 0 and total >= 30, summary
    assert r.delivered + r.bounced == total, summary
    assert r.duplicated_where.get("redelivered", 0) == 0, summary  # a local delivery is made once
    if r.duplicated:
        print(f"duplicates (resubmitted by clients, or remote): {len(r.duplicated)}")


def _maildir(root: Path, user: str) -> Path:
    box = root / "mail" / DOMAIN / user
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    return box


def _put(box: Path, name: str, data: bytes, size: int | None = None) -> Path:
    from pymda.maildir import crlf_size

    path = box / "new" / f"{name},S={len(data) if size is None else size},W={crlf_size(data)}"
    path.write_bytes(data)
    return path


def test_ledger_finds_lost_corrupt_torn_and_unreadable(tmp_path):
    """The accounting can fail: each kind of damage is reported as such."""
    from pymta.queue import Queue

    ledger = Ledger()
    good, truncated, lost, bounced, twice = (ledger.token("smtp-local") for _ in range(5))
    for t in (good, truncated, lost, bounced, twice):
        ledger.ack(t)
    box = _maildir(tmp_path, "alice")
    msg = make_message(good, "dave@example.test", "alice@example.test")
    _put(box, "1.M1P1Q1R1.host", msg)
    whole = make_message(truncated, "dave@example.test", "alice@example.test")
    _put(box, "1.M2P1Q1R1.host", whole[:-20])
    _put(box, "1.M3P1Q1R1.host", make_message(twice, "a@b", "c@d"))
    _put(box, "1.M4P1Q1R1.host", make_message(twice, "a@b", "c@d"))
    half = _put(box, "1.M5P1Q1R1.host", msg[:-30], size=len(msg))  # smaller than its S=
    dsn = (
        b"From: Mail Delivery System <MAILER-DAEMON@mx>\nContent-Type: multipart/report; "
        b'report-type=delivery-status;\n\tboundary="B"\n\n--B\nContent-Type: text/rfc822-headers\n\n'
        + make_message(bounced, "a@b", "c@d").partition(b"\n\n")[0]
        + b"\n\n--B--\n"
    )
    _put(box, "1.M6P1Q1R1.host", dsn)
    (box / "pymail-index").write_bytes(b"garbage\n")
    queue = Queue(tmp_path / "queue")
    queue.create()
    (queue.path / "new" / "0000000000000ABCDEF").write_bytes(b'{"v":1,"id":"0000000000000ABCDEF"')
    report = ledger.scan(tmp_path / "mail", sink=[], queue_dir=queue.path)
    assert report.lost == [truncated, lost]  # its only copy is damaged
    assert [c[0] for c in report.corrupted] == [truncated, good]
    assert "truncated body" in report.corrupted[0][2]
    assert "S=" in report.corrupted[1][2]
    assert report.duplicated == {twice: 2}
    assert report.bounced == 1 and report.delivered == 2
    assert sorted(Path(u[0]).name for u in report.unreadable) == ["0000000000000ABCDEF", "pymail-index"]
    assert not report.ok
    import random

    torn = peek(tmp_path / "mail", queue.path, random.Random(1), limit=100)
    assert sorted(Path(p).name for p, _ in torn) == ["0000000000000ABCDEF", half.name]


def test_message_check_round_trips_and_detects_changes():
    token = Ledger().token("x")
    msg = make_message(token, "a@b", "c@d")
    assert check_message(msg) == (token, "")
    assert check_message(msg.replace(b"\n", b"\r\n")) == (token, "")
    body = body_for(token)
    assert body.endswith(f"END {token}\n".encode())
    assert check_message(msg + b"\n")[1] == "body differs"
    assert check_message(msg.replace(b"\n.", b"\n..", 1))[1] in ("body differs", "")  # no dot line: unchanged
    assert check_message(msg[:-5])[1].startswith("truncated body")


@pytest.mark.parametrize("size", [200, 100_000])
def test_exec_delivery_gets_the_whole_message(make_mailsys, size):
    """Regression: with deliver.mode = "exec" the runner gave pymda-deliver its
    queue file positioned after the envelope line's read-ahead, so a message
    under 8 KiB arrived empty and a larger one without its first part."""
    from pymta.queue import Queue

    ms = make_mailsys('[deliver]\nmode = "exec"\n')
    line = b"0123456789" * 7 + b"\n"
    msg = b"From: <carol@remote.example>\nSubject: exec\n\n" + line * (size // len(line))
    Queue(ms.root / "queue").enqueue("carol@remote.example", ["alice@example.test"], msg)
    run = ms.run("pymta.qrunner", "--once")
    assert run.returncode == 0, run.stderr
    [path] = ms.messages("alice")
    trace = b"Return-Path: <carol@remote.example>\nDelivered-To: alice@example.test\n"
    assert path.read_bytes() == trace + msg
    assert not [p for p in ms.queue_files() if p.parent.name != "tmp"]
    assert os.path.getsize(path) == len(trace + msg)
