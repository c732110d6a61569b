"""The auth guard's state files: the per-account budget and per-address
delay under corrupt files, clock jumps, a full disk and many processes
(tests/test_auth_guard.py drives it through the real daemons)."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from pymta.lib.authguard import AuthGuard, LoginRefused, address_key
from test_faults import small_disk  # noqa: F401 (a fixture)


class Cfg(dict):
    def __init__(self, root, **auth) -> None:
        super().__init__(
            {
                "auth.failure_delay": 0.1,
                "auth.max_failure_delay": 0.4,
                "auth.failure_window": 900.0,
                "auth.account_failure_limit": 3,
                "auth.known_address_days": 30,
            }
        )
        self.update({f"auth.{k}": v for k, v in auth.items()})
        self.root = root


def fail(guard: AuthGuard, ip: str, account: str = "alice") -> float:
    return guard.record(guard.admit(ip, account), False)


def account_file(guard: AuthGuard, account: str = "alice"):
    return guard._path("user", account)


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7" == address_key("192.0.2.7")
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an\naddress") == "notanaddress"  # never a line break in a state file


def test_delay_doubles_per_address_up_to_the_cap(tmp_path):
    guard = AuthGuard(Cfg(tmp_path))
    waits = [fail(guard, "192.0.2.1", f"user{i}") for i in range(5)]
    assert waits == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert guard.penalty("192.0.2.1") == 0.4 and guard.penalty("192.0.2.2") == 0.0
    # an IPv6 attacker gains nothing by moving inside its /64
    fail(guard, "2001:db8::1")
    assert guard.penalty("2001:db8::2") == 0.1


def test_budget_refuses_unknown_addresses_and_keeps_known_ones(tmp_path):
    guard = AuthGuard(Cfg(tmp_path))
    guard.record(guard.admit("198.51.100.1", "alice"), True)  # the owner
    for i in range(3):
        fail(guard, f"192.0.2.{i}")
    with pytest.raises(LoginRefused, match=r"user=<alice>, rip=192\.0\.2\.9: 3 failed logins"):
        guard.admit("192.0.2.9", "alice")
    attempt = guard.admit("198.51.100.1", "alice")
    guard.record(attempt, True)
    with pytest.raises(LoginRefused):  # the owner's login gave the budget nothing back
        guard.admit("192.0.2.9", "alice")
    guard.admit("192.0.2.9", "bob")  # other accounts are untouched


def test_a_known_address_that_keeps_failing_loses_its_pass(tmp_path):
    guard = AuthGuard(Cfg(tmp_path))
    guard.record(guard.admit("198.51.100.1", "alice"), True)
    for _i in range(3):
        fail(guard, "198.51.100.1")
    with pytest.raises(LoginRefused):
        guard.admit("198.51.100.1", "alice")


def test_a_check_that_could_not_be_made_gives_its_slot_back(tmp_path):
    guard = AuthGuard(Cfg(tmp_path))
    for _ in range(5):
        guard.release(guard.admit("192.0.2.1", "alice"))
    guard.admit("192.0.2.1", "alice")


def test_corrupt_and_future_state_never_locks_anyone_out(tmp_path):
    guard = AuthGuard(Cfg(tmp_path))
    guard.admit("192.0.2.1", "alice")  # makes the folder
    future = time.time() + 10 * 365 * 86400
    account_file(guard).write_bytes(
        b"".join(b"f %.3f t%d\n" % (future, i) for i in range(50))
        + b"f nan x\nf inf x\n\xff\xfe garbage\n"
        + b"x" * 200_000
    )
    guard._path("ip", "192.0.2.1").write_bytes(b"999999 %.0f\n" % future)
    guard.record(guard.admit("192.0.2.1", "alice"), False)  # admitted: none of that counts
    assert guard.penalty("192.0.2.1") == 0.1
    assert account_file(guard).stat().st_size < 100  # rewritten small


def test_state_stays_small(tmp_path):
    guard = AuthGuard(Cfg(tmp_path, account_failure_limit=1000))
    for i in range(40):
        guard.record(guard.admit(f"10.0.{i}.1", "alice"), True)
    for i in range(1000):
        guard.admit(f"10.1.{i // 250}.{i % 250}", "alice")
    for _i in range(200):  # over budget, only a known address gets checks: still bounded
        guard.admit("10.0.39.1", "alice")
    text = account_file(guard).read_text().splitlines()
    assert sum(line.startswith("g ") for line in text) == 16
    assert sum(line.startswith("f ") for line in text) == 1000


def test_idle_files_are_swept_but_known_addresses_kept(tmp_path):
    guard = AuthGuard(Cfg(tmp_path, failure_window=60.0))
    guard.record(guard.admit("198.51.100.1", "alice"), True)
    for i in range(3):
        fail(guard, f"192.0.2.{i}", f"madeup{i}")
    old = time.time() - 120
    for path in guard.dir.iterdir():
        os.utime(path, (old, old))
    guard.admit("192.0.2.99", "newname")  # a new file: time to sweep
    left = {p.name for p in guard.dir.iterdir() if not p.name.startswith(".")}
    assert left == {account_file(guard, "alice").name, account_file(guard, "newname").name}


def _spend(root: str, n: int, queue) -> None:
    guard = AuthGuard(Cfg(root, account_failure_limit=7))
    try:
        guard.record(guard.admit(f"203.0.113.{n}", "alice"), False)
        queue.put("checked")
    except LoginRefused:
        queue.put("refused")


def test_parallel_processes_share_one_budget(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_spend, args=(str(tmp_path), n, queue)) for n in range(24)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = sorted(queue.get(timeout=5) for _ in procs)
    assert outcomes == ["checked"] * 7 + ["refused"] * 17


def test_full_disk_keeps_existing_counts_and_lets_new_ones_through(small_disk, caplog):  # noqa: F811
    guard = AuthGuard(Cfg(small_disk.path))
    for i in range(3):
        fail(guard, f"192.0.2.{i}")
    small_disk.fill()
    with pytest.raises(LoginRefused):  # rewritten in place: the budget still holds
        guard.admit("192.0.2.50", "alice")
    # an account file that cannot be made: the check goes on, uncounted, no
    # crash; the address's file, rewritten in place, still counts
    assert fail(guard, "192.0.2.1", "bob") == 0.2
    assert not account_file(guard, "bob").exists() or account_file(guard, "bob").stat().st_size == 0
    small_disk.free()
    with pytest.raises(LoginRefused):
        guard.admit("192.0.2.50", "alice")
