"""Parallel password guessing (issue 11, 2.2), end to end with real daemons.

The attacker's many addresses are 127.0.0.x: every one of them is loopback
on Linux, so binding the client socket to it makes it a different client.

* Failures for one account from many addresses spend a budget
  (auth.account_failure_limit per auth.failure_window); then logins are
  refused *without a password check* -- a right password from a fresh
  attacking address does not get in either -- and the refusal is fast.
* The budget holds across processes: an inetd imapd (a process per
  connection) and a listening smtpd with two workers share it, and parallel
  connections cannot slip past it.
* The owner is not slowed: a right password from an address that logged in
  before is answered at once while the budget is spent, and from a clean
  address while the account is under attack but within budget.
* The per-address delay doubles per failure (Dovecot's auth penalty), and
  stays with the address, not with the accounts it tried.
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import PASSWORD
from test_access_control import ALICE, BOB, SMTP, Line, b64, imap_tagged

BASE = 0.3  # auth.failure_delay: a refusal must come well before it
LIMIT = 5  # auth.account_failure_limit
CONFIG = (
    f"[auth]\nfailure_delay = {BASE}\nmax_failure_delay = 2.0\naccount_failure_limit = {LIMIT}\n"
    "failure_window = 120\n[smtpd]\nprocesses = 2\n[pop3d]\nprocesses = 1\n[imapd]\nprocesses = 1\n"
)
DAEMONS = {"smtp": ("pymta.smtpd", "submission"), "pop3": ("pypop.pop3d", "pop3"), "imap": ("pyimap.imapd", "imap")}

# What each protocol answers: logged in, wrong password, refused (temporary).
REPLIES = {
    "smtp": {
        b"235 2.7.0 Authentication successful\r\n": "ok",
        b"535 5.7.8 Authentication credentials invalid\r\n": "wrong",
        b"454 4.7.0 Temporary authentication failure\r\n": "refused",
    },
    "pop3": {
        b"-ERR [AUTH] Authentication failed\r\n": "wrong",
        b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n": "refused",
    },
    "imap": {
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n": "wrong",
        b"a NO [UNAVAILABLE] Temporary authentication failure, try again later\r\n": "refused",
    },
}


def login(proto: str, port: int, source: str, user: str, password: str) -> tuple[str, float]:
    """One login from ``source``: ("ok" | "wrong" | "refused", seconds from
    the line carrying the password to the answer)."""
    if proto == "smtp":
        c = SMTP(port, source=source)
        c.ehlo()
        started = time.monotonic()
        reply = c.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
    elif proto == "pop3":
        c = Line(port, source=source)
        assert c.line().startswith(b"+OK ")
        c.send(f"USER {user}\r\n")
        assert c.line() == b"+OK\r\n"
        started = time.monotonic()
        c.send(f"PASS {password}\r\n")
        reply = c.line()
        if reply.startswith(b"+OK Logged in, "):
            reply = b"ok"
    else:
        c = Line(port, source=source)
        assert c.line().startswith(b"* OK ")
        started = time.monotonic()
        c.send(f'a LOGIN "{user}" "{password}"\r\n')
        reply = imap_tagged(c, b"a")[1]
        if reply.startswith(b"a OK "):
            reply = b"ok"
    elapsed = time.monotonic() - started
    c.close()
    outcome = "ok" if reply == b"ok" else REPLIES[proto].get(reply)
    assert outcome, (proto, reply)
    return outcome, elapsed


@pytest.mark.parametrize("proto", ["smtp", "pop3", "imap"])
def test_spent_budget_refuses_fresh_addresses_without_a_password_check(make_mailsys, proto):
    system = make_mailsys(CONFIG)
    module, service = DAEMONS[proto]
    port = system.start_daemon(module, "listen", "--service", service)

    # The owner's phone logs in once: its address becomes known-good.
    assert login(proto, port, "127.0.0.2", ALICE, PASSWORD)[0] == "ok"
    # An attacker spends the budget from LIMIT addresses, one guess each;
    # every spelling of the account is the same account.
    spellings = [ALICE, "ALICE@Example.Test", "alice+x@example.test", "alice+y@example.test.", ALICE]
    for i in range(LIMIT):
        assert login(proto, port, f"127.0.0.{10 + i}", spellings[i], f"guess{i}")[0] == "wrong"

    # Now even the right password from a fresh attacking address is refused,
    # with the same temporary answer as a wrong one, and at once.
    for source, password in (("127.0.0.20", PASSWORD), ("127.0.0.21", "guess"), ("127.0.0.22", PASSWORD)):
        outcome, elapsed = login(proto, port, source, ALICE, password)
        assert outcome == "refused" and elapsed < BASE, (source, outcome, elapsed)
    assert login(proto, port, "127.0.0.23", "alice+z@example.test", PASSWORD)[0] == "refused"

    # The owner's known address still gets in, quickly; other accounts are untouched.
    outcome, elapsed = login(proto, port, "127.0.0.2", ALICE, PASSWORD)
    assert outcome == "ok" and elapsed < 2.0, elapsed
    assert login(proto, port, "127.0.0.24", BOB, PASSWORD)[0] == "ok"
    # The owner's success gave the attacker nothing back.
    assert login(proto, port, "127.0.0.25", ALICE, PASSWORD)[0] == "refused"


def test_budget_holds_across_processes_and_parallel_connections(make_mailsys):
    system = make_mailsys(CONFIG)
    imap_port = system.start_daemon("pyimap.imapd", "inetd")  # a new process per connection
    smtp_port = system.start_daemon("pymta.smtpd", "listen", "--service", "submission")  # two workers

    # LIMIT * 4 guesses at once, from as many addresses, split over both daemons:
    # exactly LIMIT get a password check, however the processes interleave.
    outcomes: list[str] = []

    def guess(n: int) -> None:
        proto, port = ("imap", imap_port) if n % 2 else ("smtp", smtp_port)
        outcomes.append(login(proto, port, f"127.0.0.{30 + n}", ALICE, f"guess{n}")[0])

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(LIMIT * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * (LIMIT * 3) + ["wrong"] * LIMIT, outcomes
    # Spent for both daemons, right password or not.
    assert login("imap", imap_port, "127.0.0.60", ALICE, PASSWORD)[0] == "refused"
    assert login("smtp", smtp_port, "127.0.0.61", ALICE, PASSWORD)[0] == "refused"


def test_owner_on_a_clean_address_is_not_slowed_by_an_attack_within_budget(make_mailsys):
    # A cap well above the 2 s promise: the old account-wide delay would show.
    system = make_mailsys("[auth]\nfailure_delay = 0.05\nmax_failure_delay = 10\n")
    port = system.start_daemon("pyimap.imapd", "listen")
    for i in range(12):  # under the default budget of 20
        assert login("imap", port, f"127.0.0.{10 + i}", ALICE, "guess")[0] == "wrong"
    outcome, elapsed = login("imap", port, "127.0.0.40", ALICE, PASSWORD)
    assert outcome == "ok" and elapsed < 2.0, elapsed


def test_per_address_delay_doubles_and_stays_with_the_address(make_mailsys):
    base = 0.1
    system = make_mailsys(f"[auth]\nfailure_delay = {base}\nmax_failure_delay = 0.4\n[smtpd]\nprocesses = 1\n")
    port = system.start_daemon("pymta.smtpd", "listen", "--service", "submission")
    # One address, a different account each time: the answer to the n-th
    # failure waits base * 2**(n-1), capped, and so does the check before
    # it (the penalty for the failures so far): 0.1, 0.1+0.2, 0.2+0.4, 0.4+0.4.
    times = []
    for _i, user in enumerate([ALICE, BOB, "carol@example.test", "dave@example.test"]):
        outcome, elapsed = login("smtp", port, "127.0.0.2", user, "guess")
        assert outcome == "wrong"
        times.append(elapsed)
    assert times[0] >= base and times[1] >= 3 * base and times[2] >= 6 * base and times[3] >= 8 * base, times
    assert times[0] < 2 * base and times[3] < 12 * base, times
    # The right password from that address pays the penalty too ...
    outcome, elapsed = login("smtp", port, "127.0.0.2", BOB, PASSWORD)
    assert outcome == "ok" and elapsed >= 4 * base, elapsed
    # ... while another address is not slowed by the accounts it tried.
    outcome, elapsed = login("smtp", port, "127.0.0.3", ALICE, PASSWORD)
    assert outcome == "ok" and elapsed < base, elapsed
    outcome, elapsed = login("smtp", port, "127.0.0.4", BOB, "guess")
    assert outcome == "wrong" and base <= elapsed < 2 * base, elapsed
