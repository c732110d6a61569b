"""DKIM verification on the fast path a listening smtpd takes (pymta.lib.dkimverify):
key records parsed once, RSA checked by OpenSSL after FAST_RSA_AFTER signatures.
Every answer must be the one dkimpy's pure-Python RSA gives."""

from __future__ import annotations

import hashlib
import subprocess

import dkim
import dkim.crypto
import pytest

from pymta import dkim_sign
from pymta.lib import dkimverify

TEXT = (
    b"From: News <news@bench.test>\nTo: a@example.test\nSubject: fast\nMessage-ID: <f@bench.test>\n\n"
    + b"The quick brown fox jumps over the lazy dog.\n" * 8
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two 2048-bit keys (the second to sign with a key the record does not hold) and a 512-bit one."""
    made = []
    for bits in (2048, 2048, 512):
        path = tmp_path_factory.mktemp("k") / "key.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", str(path)],
            check=True,
            capture_output=True,
        )
        made.append(path)
    return made


@pytest.fixture
def pure_then_fast(monkeypatch):
    """dkimpy's own RSA, as a process starts; restored after the test."""
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkim.crypto.RSASSA_PKCS1_v1_5_verify)
    monkeypatch.setattr(dkimverify, "_rsa_verified", 0)
    monkeypatch.setattr(dkimverify, "_openssl", None)
    monkeypatch.setattr(dkimverify, "_KEYS", {})


def record(key) -> bytes:
    return f"v=DKIM1; k=rsa; p={dkim_sign.public_key_b64(key)}".encode()


def signed(key, text=TEXT) -> bytes:
    return (dkim_sign.sign(text, "bench.test", "sel", key.read_bytes()) + text).replace(b"\n", b"\r\n")


def test_the_fast_path_gives_dkimpys_results(keys, pure_then_fast):
    good = signed(keys[0])
    cases = {
        "good": (good, "pass"),
        "changed body": (good.replace(b"lazy dog.\r\n", b"lazy cat.\r\n", 1), "fail"),
        "changed header": (good.replace(b"Subject: fast", b"Subject: slow"), "fail"),
        "other key": (signed(keys[1]), "fail"),
    }
    txt = {"rec": record(keys[0])}
    lookups = []

    def lookup(name, timeout):
        lookups.append(name)
        return txt["rec"]

    before = {name: dkimverify.verify_all(message, lookup) for name, (message, _) in cases.items()}
    assert {name: [s.result for s in sigs] for name, sigs in before.items()} == {
        name: [want] for name, (_, want) in cases.items()
    }
    for _ in range(dkimverify.FAST_RSA_AFTER):
        dkimverify.verify_all(good, lookup)
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkimverify._openssl_rsa_verify  # switched
    after = {name: dkimverify.verify_all(message, lookup) for name, (message, _) in cases.items()}
    assert after == before
    assert len(dkimverify._KEYS) == 1  # one record, parsed once
    # a changed record is parsed anew: the old key no longer verifies
    txt["rec"] = record(keys[1])
    assert [s.result for s in dkimverify.verify_all(good, lookup)] == ["fail"]
    assert [s.result for s in dkimverify.verify_all(cases["other key"][0], lookup)] == ["pass"]


def test_openssl_and_pure_rsa_agree_on_raw_signatures(keys, pure_then_fast):
    import dkim.crypto as crypto

    pk = dkim.evaluate_pk(b"x", record(keys[0]))[0]
    for _ in range(dkimverify.FAST_RSA_AFTER):
        dkimverify._use_fast_rsa(dkim)
    for name in ("sha256", "sha1"):
        for signature in (b"\0" * 256, b"\x01" * 256, b"\xff" * 256, b"\x01" * 10, b"", b"\x01" * 300):
            want = crypto.RSASSA_PKCS1_v1_5_verify(dkim.HashThrough(hashlib.new(name, b"x")), signature, pk)
            got = dkimverify._openssl_rsa_verify(dkim.HashThrough(hashlib.new(name, b"x")), signature, pk)
            assert got == want, (name, signature[:4], len(signature))
    # a key too small for OpenSSL's checks keeps dkimpy's answer (and its error)
    small = dkim.evaluate_pk(b"x", record(keys[2]))[0]
    for signature in (b"\x01" * 64, b"\0" * 64):
        h = dkim.HashThrough(hashlib.sha256(b"x"))
        assert dkimverify._openssl_rsa_verify(h, signature, small) == crypto.RSASSA_PKCS1_v1_5_verify(
            dkim.HashThrough(hashlib.sha256(b"x")), signature, small
        )


def test_a_small_key_is_policy_on_both_paths(keys, pure_then_fast):
    message = signed(keys[2])
    results = []
    for _ in range(dkimverify.FAST_RSA_AFTER + 2):
        results.append([s.result for s in dkimverify.verify_all(message, lambda n, timeout: record(keys[2]))])
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkimverify._openssl_rsa_verify
    assert results == [["policy"]] * len(results)


def test_a_bad_key_record_is_permerror_and_not_cached(pure_then_fast):
    field = b"DKIM-Signature: v=1; a=rsa-sha256; d=bench.test; s=sel; h=from; bh=eHh4eA==; b=eXl5eXl5eXl5\n"
    message = (field + TEXT).replace(b"\n", b"\r\n")
    for rec, reason in ((b"v=DKIM1; k=rsa; p=AAAA", "unusable key record"), (None, "no key for signature")):
        [sig] = dkimverify.verify_all(message, lambda n, timeout, rec=rec: rec)
        assert (sig.result, sig.reason) == ("permerror", reason)
    assert dkimverify._KEYS == {}
