"""`pymail queue ...` and mailq against a real queue."""

from __future__ import annotations

import json
import re

from pymta.queue import Queue
from test_relay import relay_config


def pymail(system, *args):
    return system.run("pymta.cli", "queue", *args)


def setup_deferred(make_mailsys, n=2):
    from conftest import free_port

    system = make_mailsys(relay_config(free_port()))  # nothing listens: remote mail is deferred
    q = Queue(system.root / "queue")
    ids = [q.enqueue("alice@example.test", [f"r{i}@remote.test"], f"Subject: m{i}\n\nx\n".encode()) for i in range(n)]
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0
    return system, q, ids


def where(q, qid):
    path = q.locate(qid)
    return None if path is None else ("deferred" if path.parent.parent.name == "deferred" else path.parent.name)


def test_list_shows_the_last_deferral_reason(make_mailsys):
    system, q, ids = setup_deferred(make_mailsys, 1)
    out = pymail(system, "list").stdout.decode().splitlines()
    assert re.match(rf"{ids[0]} +\d+ ", out[1])  # deferred: no '*'
    assert out[2].strip().startswith("(4.4.1 connect to 127.0.0.1[127.0.0.1]:")
    assert out[3].strip() == "r0@remote.test"


def test_show(make_mailsys):
    system, q, ids = setup_deferred(make_mailsys, 1)
    out = pymail(system, "show", ids[0])
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert f"queue-id: {ids[0]}" in text and "sender: <alice@example.test>" in text
    assert "state: <r0@remote.test> deferred attempts=1 4.4.1" in text
    assert text.endswith("Subject: m0\n\nx\n")
    assert pymail(system, "show", "0" * 19).returncode == 66
    assert pymail(system, "show", "../../etc/passwd").returncode == 65


def test_hold_release_flush_requeue_delete(make_mailsys):
    system, q, ids = setup_deferred(make_mailsys, 3)
    a, b, c = ids
    assert all(where(q, i) == "deferred" for i in ids)
    assert pymail(system, "hold", a).returncode == 0
    assert where(q, a) == "hold"
    assert "!" in pymail(system, "list").stdout.decode().splitlines()[1]
    # flush moves deferred entries, not held ones
    assert b"2 entries scheduled" in pymail(system, "flush").stdout
    assert (where(q, a), where(q, b), where(q, c)) == ("hold", "new", "new")
    run = system.run("pymta.qrunner", "--once")
    assert run.returncode == 0
    assert where(q, a) == "hold"  # the runner leaves held mail alone
    assert pymail(system, "release", a).returncode == 0
    assert where(q, a) == "new"
    # requeue restarts the retry schedule
    state = json.loads((system.root / "queue" / "state" / b).read_text())
    assert state["rcpts"][0]["attempts"] == 2
    assert pymail(system, "requeue", b).returncode == 0
    state = json.loads((system.root / "queue" / "state" / b).read_text())
    assert state["rcpts"][0]["attempts"] == 0 and where(q, b) == "new"
    assert pymail(system, "delete", c).returncode == 0
    assert where(q, c) is None and not (system.root / "queue" / "state" / c).exists()
    assert pymail(system, "delete", c).returncode != 0
    out = pymail(system, "delete", "ALL")
    assert out.returncode == 0 and b"2 entries deleted" in out.stdout
    assert pymail(system, "list").stdout == b"Mail queue is empty\n"
    assert not system.messages("alice")  # deleting never bounces
