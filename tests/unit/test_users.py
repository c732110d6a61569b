"""pymta.lib.users: the users file and every password scheme Dovecot writes."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymta.lib import passwords as passwords_mod
from pymta.lib import users as users_mod
from pymta.lib.users import (
    InvalidAddress,
    NoSuchUser,
    UserExists,
    UsersFile,
    hash_password,
    normalize_address,
    verify_hash,
)

PW = "correct horse"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def passlib_hash(name: str, **settings_) -> str:
    import passlib.hash

    return getattr(passlib.hash, name).using(**settings_).hash(PW)


# -- schemes ------------------------------------------------------------------------


def scheme_cases():
    from passlib.hash import bcrypt

    blf = bcrypt.using(rounds=4).hash(PW)
    salt = b"NaCl1234"
    cases = {
        "BLF-CRYPT $2b$": "{BLF-CRYPT}" + blf,
        "BLF-CRYPT $2y$ (Dovecot's doveadm)": "{BLF-CRYPT}" + blf.replace("$2b$", "$2y$"),
        "BLF-CRYPT $2a$": "{BLF-CRYPT}" + blf.replace("$2b$", "$2a$"),
        "SHA512-CRYPT": "{SHA512-CRYPT}" + passlib_hash("sha512_crypt", rounds=5000),
        "SHA256-CRYPT": "{SHA256-CRYPT}" + passlib_hash("sha256_crypt", rounds=5000),
        "MD5-CRYPT": "{MD5-CRYPT}" + passlib_hash("md5_crypt"),
        "CRYPT des": "{CRYPT}" + passlib_hash("des_crypt"),
        "CRYPT $6$": "{CRYPT}" + passlib_hash("sha512_crypt", rounds=5000),
        "CRYPT $1$": "{CRYPT}" + passlib_hash("md5_crypt"),
        "no scheme = CRYPT": passlib_hash("sha256_crypt", rounds=5000),
        "SSHA512": "{SSHA512}" + b64(hashlib.sha512(PW.encode() + salt).digest() + salt),
        "SSHA256": "{SSHA256}" + b64(hashlib.sha256(PW.encode() + salt).digest() + salt),
        "SSHA": "{SSHA}" + b64(hashlib.sha1(PW.encode() + salt).digest() + salt),
        "SHA512": "{SHA512}" + b64(hashlib.sha512(PW.encode()).digest()),
        "SHA256": "{SHA256}" + b64(hashlib.sha256(PW.encode()).digest()),
        "SHA": "{SHA}" + b64(hashlib.sha1(PW.encode()).digest()),
        "SHA256.HEX": "{SHA256.HEX}" + hashlib.sha256(PW.encode()).hexdigest(),
        "SHA hex without suffix": "{SHA}" + hashlib.sha1(PW.encode()).hexdigest(),
        "lower-case scheme": "{ssha256}" + b64(hashlib.sha256(PW.encode() + salt).digest() + salt),
    }
    try:
        import argon2  # noqa: F401

        cases["ARGON2ID"] = "{ARGON2ID}" + passlib_hash("argon2", type="ID", memory_cost=1024, rounds=1)
        cases["ARGON2I"] = "{ARGON2I}" + passlib_hash("argon2", type="I", memory_cost=1024, rounds=1)
    except ImportError:
        pass
    return cases


SCHEMES = scheme_cases()


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_accepts_right_password(name):
    assert verify_hash(SCHEMES[name], PW) is True
    assert verify_hash(SCHEMES[name], PW.encode()) is True  # protocols hand us bytes


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_refuses_wrong_password(name):
    assert verify_hash(SCHEMES[name], "x" + PW) is False  # (DES crypt reads only 8 characters)
    assert verify_hash(SCHEMES[name], "") is False


def test_known_vectors():
    # sha1("password"), and the glibc SHA-crypt specification's example
    assert verify_hash("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "password")
    assert verify_hash(
        "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
        "Hello world!",
    )
    assert verify_hash("{MD5-CRYPT}$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/", "password")


def test_hash_password_is_blf_crypt_2b_cost_10():
    stored = hash_password(PW)
    assert stored.startswith("{BLF-CRYPT}$2b$10$")
    assert verify_hash(stored, PW) and not verify_hash(stored, "nope")
    assert hash_password(PW, rounds=4).startswith("{BLF-CRYPT}$2b$04$")


def test_hash_password_refuses_empty_and_nul():
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError):
            hash_password(bad, rounds=4)


def test_bcrypt_long_password_truncated_like_crypt():
    stored = hash_password("x" * 100, rounds=4)
    assert verify_hash(stored, "x" * 100)
    assert verify_hash(stored, "x" * 72)  # what crypt(3)/Dovecot do


@pytest.mark.parametrize("scheme", ["PLAIN", "CLEARTEXT"])
def test_plain_refused_unless_allowed(scheme, capsys):
    stored = f"{{{scheme}}}{PW}"
    assert verify_hash(stored, PW) is False
    assert "allow_plain_scheme" in capsys.readouterr().err
    assert verify_hash(stored, PW, allow_plain_scheme=True) is True
    assert verify_hash(stored, PW + "x", allow_plain_scheme=True) is False


@pytest.mark.parametrize(
    "stored",
    [
        "{NOSUCH}abc",
        "{BLF-CRYPT}not-a-hash",
        "{SHA512-CRYPT}$5$wrongprefix",
        "{SHA256}!!!notbase64",
        "{SHA}" + b64(b"short"),
        "{SSHA}" + b64(b"x"),
        "{CRYPT}weird",
        "{ARGON2ID}$argon2id$broken",
    ],
)
def test_unknown_or_malformed_is_false_with_warning(stored, capsys):
    assert verify_hash(stored, PW) is False
    assert "warning" in capsys.readouterr().err


@pytest.mark.parametrize("stored", [None, "", 42, "{SHA}"])
def test_never_raises(stored):
    assert verify_hash(stored, PW) is False


def test_nul_in_password_is_false_not_exception():
    assert verify_hash(SCHEMES["BLF-CRYPT $2b$"], PW + "\x00") is False


# -- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "noat",
        "@x.test",
        "a@",
        "a:b@x.test",
        "a/b@x.test",
        "a@x/y",
        "a\\b@x.test",
        "a b@x.test",
        "a\n@x.test",
        "a\x00@x.test",
        "a\t@x.test",
        "..@x.test",
        ".a@x.test",
        "a.@x.test",
        "a..b@x.test",
        "a@..",
        "a@.x.test",
        "a@x..test",
        "a@x.test.",
        "a@b@x.test",
        "#a@x.test",
        "a@x\u200btest",
        "x" * 65 + "@x.test",
    ],
)
def test_invalid_addresses(bad):
    with pytest.raises(InvalidAddress):
        normalize_address(bad)


def test_normalize_lowercases_both_parts():
    assert normalize_address("Alice.Smith+Tag@Example.TEST") == "alice.smith+tag@example.test"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_normalize_either_refuses_or_is_safe(text):
    try:
        address = normalize_address(text)
    except InvalidAddress:
        return
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        assert part not in (".", "..") and "/" not in part and ":" not in part
        assert not any(c.isspace() or not c.isprintable() for c in part)


# -- the file ------------------------------------------------------------------------


@pytest.fixture
def ufile(tmp_path):
    path = tmp_path / "users"
    return UsersFile(path)


def write(path, text: str) -> None:
    path.write_text(text)


def test_missing_file_is_a_temporary_failure_not_unknown_users(ufile):
    for call in (ufile.lookup, ufile.exists, lambda a: ufile.verify(a, PW)):
        with pytest.raises(users_mod.UsersUnavailable):
            call("a@x.test")
    assert ufile.list() == []  # a new setup simply has no users yet


def test_lookup_fields_and_case(ufile):
    stored = hash_password(PW, rounds=4)
    write(ufile.path, f"# users\n\nAlice@Example.Test:{stored}:1000:1001::/home/alice::userdb_quota=1G\n")
    record = ufile.lookup("ALICE@example.TEST")
    assert record.address == "alice@example.test"
    assert (record.uid, record.gid, record.home, record.extra) == (1000, 1001, "/home/alice", "userdb_quota=1G")
    assert record.password == stored
    assert ufile.exists("alice@EXAMPLE.test.")  # a trailing root dot is the same domain


def test_lookup_with_extension(ufile):
    write(ufile.path, f"bob@x.test:{hash_password(PW, rounds=4)}\n")
    assert ufile.lookup("bob+lists@x.test").address == "bob@x.test"
    assert ufile.lookup("Bob+A+B@X.test").address == "bob@x.test"
    assert ufile.lookup("+lists@x.test") is None
    assert ufile.verify("bob+tag@x.test", PW)


def test_exact_entry_with_delimiter_wins(ufile):
    write(ufile.path, "bob@x.test:{PLAIN}one\nbob+x@x.test:{PLAIN}two\n")
    assert ufile.lookup("bob+x@x.test").password == "{PLAIN}two"


@pytest.mark.parametrize("junk", [None, "", "no-at-sign", "@", "a@", 5])
def test_lookup_of_junk_is_none(ufile, junk):
    write(ufile.path, "a@x.test:{PLAIN}p\n")
    assert ufile.lookup(junk) is None


def test_corrupt_lines_skipped_with_line_number(ufile, capsys):
    good = hash_password(PW, rounds=4)
    ufile.path.write_bytes(
        b"# comment\n"
        b"no-password-field\n"
        b"not an address:{PLAIN}x\n"
        b"c@x.test:{PLAIN}x:notanumber\n"
        b"\xff\xfe@x.test:{PLAIN}x\n" + f"ok@x.test:{good}\n".encode() + b"ok@x.test:{PLAIN}dup\n"
    )
    assert [r.address for r in ufile.list()] == ["ok@x.test"]
    assert ufile.verify("ok@x.test", PW)
    err = capsys.readouterr().err
    for lineno in (2, 3, 4, 5, 7):
        assert f"users:{lineno}:" in err
    assert "users:6:" not in err
    assert "{PLAIN}" not in err and "dup" not in err.replace("duplicate", "")  # no secrets in the log
    assert [n for n, _ in ufile.problems()] == [2, 3, 4, 5, 7]


def test_verify_plain_scheme_needs_permission(ufile):
    write(ufile.path, "p@x.test:{PLAIN}secret\n")
    assert not ufile.verify("p@x.test", "secret")
    assert ufile.verify("p@x.test", "secret", allow_plain_scheme=True)


def test_unknown_user_checks_a_dummy_hash(ufile, monkeypatch):
    write(ufile.path, f"a@x.test:{hash_password(PW, rounds=5)}\n")
    seen = []
    real = users_mod.verify_hash
    monkeypatch.setattr(users_mod, "verify_hash", lambda stored, *a, **k: seen.append(stored) or real(stored, *a, **k))
    assert ufile.verify("nobody@x.test", PW) is False
    assert ufile.verify("a@x.test", "wrong") is False
    assert len(seen) == 2
    assert seen[0].startswith("{BLF-CRYPT}$2b$05$")  # same cost as the file's users: same time


def test_dummy_default_cost_is_precomputed():
    assert users_mod._dummy_hash(10) == users_mod._DUMMY_BCRYPT_10
    assert not verify_hash(users_mod._DUMMY_BCRYPT_10, "")


def test_add_set_delete_round_trip(ufile):
    header = "# pymail users\n\n# keep me\nbroken line\n"
    write(ufile.path, header)
    ufile.add("New@X.test", "first", rounds=4)
    assert ufile.verify("new@x.test", "first")
    ufile.set_password("new@x.test", "second", rounds=4)
    assert not ufile.verify("new@x.test", "first") and ufile.verify("new@x.test", "second")
    ufile.delete("NEW@x.test")
    assert not ufile.exists("new@x.test")
    assert ufile.path.read_text() == header  # comments, blanks and unparsed lines survive


def test_set_password_keeps_other_fields(ufile):
    write(ufile.path, "u@x.test:{PLAIN}old:1000:1000:Gecos:/home/u:/bin/sh:userdb_x=y\n")
    ufile.set_password("u@x.test", "new", rounds=4)
    fields = ufile.path.read_text().rstrip("\n").split(":")
    assert fields[0] == "u@x.test" and fields[1].startswith("{BLF-CRYPT}$2b$04$")
    assert fields[2:] == ["1000", "1000", "Gecos", "/home/u", "/bin/sh", "userdb_x=y"]


def test_add_existing_raises(ufile):
    ufile.add("a@x.test", "pw", rounds=4)
    with pytest.raises(UserExists):
        ufile.add("A@X.TEST", "pw", rounds=4)


def test_changes_to_unknown_user_raise(ufile):
    with pytest.raises(NoSuchUser):
        ufile.set_password("a@x.test", "pw", rounds=4)
    with pytest.raises(NoSuchUser):
        ufile.delete("a@x.test")


def test_add_validates_address(ufile):
    with pytest.raises(InvalidAddress):
        ufile.add("../../etc@x.test", "pw", rounds=4)
    assert not ufile.path.exists()


def test_delete_removes_duplicates_too(ufile):
    write(ufile.path, "d@x.test:{PLAIN}1\nd@x.test:{PLAIN}2\n")
    ufile.delete("d@x.test")
    assert ufile.path.read_text() == ""


def test_rewrite_is_atomic_and_0640(ufile, monkeypatch):
    os.umask(0o022)
    ufile.add("a@x.test", "pw", rounds=4)
    st1 = os.stat(ufile.path)
    assert stat.S_IMODE(st1.st_mode) == 0o640
    before = ufile.path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(users_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        ufile.add("b@x.test", "pw", rounds=4)
    assert ufile.path.read_bytes() == before  # the old file is whole
    assert sorted(p.name for p in ufile.path.parent.iterdir()) == ["users", "users.lock"]  # no tmp left


def test_rewrite_replaces_file_by_rename(ufile):
    ufile.add("a@x.test", "pw", rounds=4)
    ino = os.stat(ufile.path).st_ino
    ufile.add("b@x.test", "pw", rounds=4)
    assert os.stat(ufile.path).st_ino != ino  # a reader never sees a half-written file


def test_cache_rereads_only_on_change(ufile, monkeypatch):
    write(ufile.path, "a@x.test:{PLAIN}1\n")
    calls = []
    real = users_mod._parse
    monkeypatch.setattr(users_mod, "_parse", lambda data: calls.append(1) or real(data))
    for _ in range(5):
        assert ufile.exists("a@x.test")
    assert len(calls) == 1
    write(ufile.path, "a@x.test:{PLAIN}1\nb@x.test:{PLAIN}2\n")  # another program edits it
    assert ufile.exists("b@x.test")
    assert len(calls) == 2
    ufile.path.unlink()
    with pytest.raises(users_mod.UsersUnavailable):  # gone: temporary, not "unknown"
        ufile.exists("a@x.test")


def test_concurrent_adds_all_land(tmp_path):
    path = tmp_path / "users"
    errors = []

    def add(i):
        try:
            UsersFile(path).add(f"u{i}@x.test", "pw", rounds=4)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.address for r in UsersFile(path).list()) == sorted(f"u{i}@x.test" for i in range(8))


def test_unreadable_file_is_a_temporary_failure_and_not_rewritten(ufile, monkeypatch, capsys):
    write(ufile.path, "a@x.test:{PLAIN}1\n")
    before = ufile.path.read_bytes()

    def denied(*args, **kw):
        raise PermissionError(13, "Permission denied", str(ufile.path))

    # as if the file were mode 0600 root (tests may run as root, who reads everything)
    monkeypatch.setattr(users_mod, "open", denied, raising=False)
    monkeypatch.setattr(users_mod.Path, "read_bytes", denied)
    with pytest.raises(users_mod.UsersUnavailable):
        ufile.lookup("a@x.test")
    assert "Permission denied" in capsys.readouterr().err
    with pytest.raises(PermissionError):
        ufile.add("b@x.test", "pw", rounds=4)  # never rewrite what could not be read
    monkeypatch.undo()
    assert ufile.path.read_bytes() == before


# -- the system's libxcrypt and passlib agree -------------------------------------------


def _crypt_hashes():
    import passlib.hash

    return [
        ("BLF-CRYPT", passlib.hash.bcrypt.using(rounds=4, ident="2b").hash("s3cret")),
        ("BLF-CRYPT", passlib.hash.bcrypt.using(rounds=4, ident="2y").hash("s3cret")),
        ("SHA512-CRYPT", passlib.hash.sha512_crypt.using(rounds=5000).hash("s3cret")),
        ("SHA256-CRYPT", passlib.hash.sha256_crypt.using(rounds=5000).hash("s3cret")),
    ]


@pytest.mark.parametrize("scheme,body", _crypt_hashes())
def test_system_crypt_and_passlib_give_the_same_verdicts(scheme, body, monkeypatch):
    if users_mod._crypt_rn() is None:
        pytest.skip("no libxcrypt crypt_rn on this system")
    assert users_mod._system_crypt_verify(body, b"s3cret") is True  # the system's crypt did answer
    assert users_mod._system_crypt_verify(body, b"s3cre") is False
    with_system = [verify_hash(f"{{{scheme}}}{body}", pw) for pw in ("s3cret", "s3cre", "s3cret ")]
    monkeypatch.setattr(passwords_mod, "_crypt_rn", lambda: None)  # passlib only
    assert [verify_hash(f"{{{scheme}}}{body}", pw) for pw in ("s3cret", "s3cre", "s3cret ")] == with_system
    assert with_system == [True, False, False]


def test_system_crypt_truncates_bcrypt_like_passlib():
    if users_mod._crypt_rn() is None:
        pytest.skip("no libxcrypt crypt_rn on this system")
    stored = hash_password("x" * 72, rounds=4)
    assert verify_hash(stored, "x" * 72 + "anything after 72 octets")
    assert not verify_hash(stored, "x" * 71)


def test_a_hash_the_system_crypt_refuses_goes_to_passlib(capsys):
    # crypt_rn fails on a malformed setting; passlib then names the problem
    assert users_mod._system_crypt_verify("$2b$10$short", b"x") is None
    assert verify_hash("{BLF-CRYPT}$2b$10$short", "x") is False
    assert "malformed password hash" in capsys.readouterr().err


def test_system_crypt_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("PYMAIL_NO_SYSTEM_CRYPT", "1")
    assert users_mod._crypt_rn.__wrapped__() is None
