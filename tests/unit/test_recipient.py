"""The typed per-recipient records and the state-file JSON they stand for (pymail(7) THE QUEUE)."""

from __future__ import annotations

from pymta.recipient import BOUNCED, DEFERRED, EntryState, Recipient, Status

OLD_STATE = {  # as written before "code" and "enhanced" were kept
    "first": 1764313200.6,
    "next": 1764313500.6,
    "warned": True,
    "rcpts": [
        {
            "to": "alice@example.test",
            "kind": "address",
            "orig": "team@example.test",
            "status": "sent",
            "attempts": 1,
            "reason": "2.0.0 delivered to maildir",
        },
        {
            "to": "bob@remote.test",
            "kind": "address",
            "orig": "bob@remote.test",
            "status": "bounced",
            "attempts": 1,
            "reason": "5.1.1 mx.remote.test[192.0.2.1]:25 said: 550 5.1.1 no such user",
            "remote": "mx.remote.test[192.0.2.1]:25",
            "diag": "smtp; 550 5.1.1 no such user",
            "notified": True,
        },
        {
            "to": "gone@example.test",
            "kind": "error",
            "orig": "gone@example.test",
            "status": "pending",
            "attempts": 0,
            "reason": "",
            "verdict": "5.4.6 alias loop: no deliverable target",
            "dup": True,
        },
        {
            "to": "carol@remote.test",
            "kind": "address",
            "orig": "carol@remote.test",
            "status": "deferred",
            "attempts": 3,
            "reason": "TLS: 421 4.7.4 STARTTLS refused",
        },
    ],
}


def test_a_state_file_written_by_the_old_runner_loads_and_keeps_its_fields():
    state = EntryState.from_dict(OLD_STATE)
    sent, bounced, error, deferred = state.rcpts
    assert sent.reason.enhanced == "2.0.0" and sent.reason.text == "2.0.0 delivered to maildir"
    assert bounced.state == BOUNCED and bounced.reason.enhanced == "5.1.1" and bounced.notified
    assert error.verdict.startswith("5.4.6") and error.dup and error.reason.text == ""
    assert deferred.state == DEFERRED and deferred.reason.enhanced == "4.0.0"  # no code at the start
    again = state.to_dict()
    assert again["first"] == OLD_STATE["first"] and again["next"] == OLD_STATE["next"] and again["warned"]
    for old, new in zip(OLD_STATE["rcpts"], again["rcpts"], strict=True):
        assert {k: v for k, v in new.items() if k not in ("code", "enhanced")} == old


def test_the_status_travels_with_the_record_not_in_its_text():
    rcpt = Recipient(to="dave@remote.test", orig="dave@remote.test")
    rcpt.set(BOUNCED, Status(554, "5.7.1", "mx.remote.test said: 554 rejected"))
    loaded = Recipient.from_dict(rcpt.to_dict())
    assert loaded.reason == Status(554, "5.7.1", "mx.remote.test said: 554 rejected")
    assert Status.of("4.2.0", "mailbox busy") == Status(450, "4.2.0", "4.2.0 mailbox busy")
