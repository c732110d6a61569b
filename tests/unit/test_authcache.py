"""The auth cache (auth.cache_size, auth.cache_ttl): a repeated good login
skips the slow hash; nothing else ever does."""

from __future__ import annotations

import pytest

from pymta.lib import users as users_mod
from pymta.lib.authcache import AuthCache
from pymta.lib.users import UsersFile, hash_password

PW = "correct horse"
ALICE = "alice@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_login_hits_only_with_the_same_password_and_hash():
    cache = AuthCache(10, 60)
    cache.remember(ALICE, "{X}stored", PW)
    assert cache.hit(ALICE, "{X}stored", PW)
    assert cache.hit(ALICE, "{X}stored", PW.encode())
    assert not cache.hit(ALICE, "{X}stored", "wrong")
    assert not cache.hit("bob@example.test", "{X}stored", PW)
    assert not cache.hit(ALICE, "{X}changed", PW)  # the users file holds a new hash: forgotten
    assert not cache.hit(ALICE, "{X}stored", PW)


def test_the_cache_keeps_no_password_and_a_per_process_key():
    a, b = AuthCache(10, 60), AuthCache(10, 60)
    a.remember(ALICE, "{X}s", PW)
    b.remember(ALICE, "{X}s", PW)
    assert PW.encode() not in repr(a._entries).encode()
    assert a._entries[ALICE][1] != b._entries[ALICE][1]  # keyed: not a plain hash of the password


def test_entries_expire_after_the_ttl_and_the_oldest_go_first():
    clock = Clock()
    cache = AuthCache(2, 60, clock=clock)
    cache.remember(ALICE, "s", PW)
    clock.now += 59
    assert cache.hit(ALICE, "s", PW)
    clock.now += 2
    assert not cache.hit(ALICE, "s", PW)
    for name in ("a@x", "b@x", "c@x"):
        cache.remember(name, "s", PW)
    assert len(cache) == 2 and not cache.hit("a@x", "s", PW) and cache.hit("c@x", "s", PW)


@pytest.mark.parametrize(("size", "ttl"), [(0, 60), (10, 0)])
def test_zero_turns_it_off(size, ttl):
    cache = AuthCache(size, ttl)
    cache.remember(ALICE, "s", PW)
    assert not cache.hit(ALICE, "s", PW)


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = users_mod.verify_hash

    def verify_hash(stored, password, *args, **kwargs):
        calls.append(password)
        return real(stored, password, *args, **kwargs)

    monkeypatch.setattr(users_mod, "verify_hash", verify_hash)
    return calls


def _users(tmp_path, password=PW):
    path = tmp_path / "users"
    path.write_text(f"{ALICE}:{hash_password(password, rounds=4)}\n")
    return path


def test_users_file_checks_the_hash_once_for_repeated_good_logins(tmp_path, counted):
    users = UsersFile(_users(tmp_path), cache_size=10, cache_ttl=60)
    assert users.verify(ALICE, PW) and users.verify(ALICE, PW) and users.verify("Alice@Example.Test", PW)
    assert len(counted) == 1


def test_failed_logins_are_never_remembered(tmp_path, counted):
    users = UsersFile(_users(tmp_path), cache_size=10, cache_ttl=60)
    assert not users.verify(ALICE, "wrong") and not users.verify(ALICE, "wrong")
    assert len(counted) == 2
    assert users.verify(ALICE, PW) and not users.verify(ALICE, "wrong")
    assert len(counted) == 4


def test_a_password_change_by_another_process_ends_the_old_password(tmp_path, counted):
    path = _users(tmp_path)
    users = UsersFile(path, cache_size=10, cache_ttl=60)
    assert users.verify(ALICE, PW)
    UsersFile(path).set_password(ALICE, "new password", rounds=4)  # pymail user passwd
    assert not users.verify(ALICE, PW)
    assert users.verify(ALICE, "new password")


def test_a_deleted_user_cannot_log_in_from_the_cache(tmp_path):
    path = _users(tmp_path)
    users = UsersFile(path, cache_size=10, cache_ttl=60)
    assert users.verify(ALICE, PW)
    UsersFile(path).delete(ALICE)  # pymail user del
    assert not users.verify(ALICE, PW)


def test_without_settings_there_is_no_cache(tmp_path, counted):
    users = UsersFile(_users(tmp_path))
    assert users.verify(ALICE, PW) and users.verify(ALICE, PW)
    assert len(counted) == 2
