"""pymta.lib.dkimfast: each stand-in for a dkimpy helper returns what dkimpy's
own returns (or raises what it raises), on random and on hand-picked input."""

from __future__ import annotations

import random

import dkim
import pytest
from dkim import canonicalization

from pymta.lib import dkimfast

dkimfast.install(dkim)
ORIG = dkimfast.ORIGINALS

# bytes that matter to the helpers: white space, line ends, colons, tag syntax
ALPHABET = b"ab=;:/+ \t\r\nXY09sv\x7f\x80"


def _samples(count: int, length: int):
    rng = random.Random(20261205)
    for _ in range(count):
        yield bytes(rng.choice(ALPHABET) for _ in range(rng.randint(0, length)))


def _outcome(fn, arg):
    try:
        return ("ok", fn(arg))
    except Exception as exc:  # the stand-in must fail where dkimpy fails, with the same error
        return ("error", type(exc), str(exc))


def test_installed_in_dkim():
    assert canonicalization.compress_whitespace is not ORIG["compress"]
    assert dkim.rfc822_parse is not ORIG["parse"]
    assert dkim.RE_BTAG is dkimfast.RE_BTAG


def test_canonicalization_helpers_equal_dkimpy_on_random_input():
    for sample in _samples(30000, 24):
        assert canonicalization.compress_whitespace(sample) == ORIG["compress"](sample), sample
        assert canonicalization.unfold_header_value(sample) == ORIG["unfold"](sample), sample
        assert canonicalization.strip_trailing_whitespace(sample) == ORIG["strip"](sample), sample


def test_btag_regex_equals_dkimpy_on_random_input():
    for sample in _samples(30000, 24):
        assert dkimfast.RE_BTAG.sub(rb"\1", sample) == ORIG["btag"].sub(rb"\1", sample), sample
    signature = (
        b" v=1; a=rsa-sha256; c=relaxed/relaxed; d=bench.test; s=sel;\r\n\th=from:to;"
        b" bh=abcd=;\r\n\tb=" + b"\r\n\t".join([b"A" * 70] * 5) + b"\r\n"
    )
    assert dkimfast.RE_BTAG.sub(rb"\1", signature) == ORIG["btag"].sub(rb"\1", signature)
    assert dkimfast.RE_BTAG.sub(rb"\1", signature).endswith(b"\tb=")


PARSE_CASES = [
    b"From: a@b.example\r\nTo: c@d.example\r\n\r\nbody\r\nmore\r\n",
    b"Subject: folded\r\n over\r\n\tagain\r\nX: y\r\n\r\n",
    b"X: y\r\n\r\n",
    b"X: y\r\n\r\n\r\n\r\n",
    b"X: y\r\n\r\nbare\nline\r\n",  # a bare LF in the body: dkimpy's own
    b"X: y\nZ: w\r\n\r\nb\r\n",  # a bare LF in the header
    b"From sender Fri Dec  4 12:00:00 2026\r\nX: y\r\n\r\nb\r\n",  # an mbox line, skipped
    b"::odd: name\r\n\r\nb\r\n",  # the lazy name match reaches past the first colon
    b"bad line\r\n\r\nb\r\n",  # MessageFormatError
    b" starts folded\r\nX: y\r\n\r\nb\r\n",  # IndexError in dkimpy
    b"\r\n\r\nbody only\r\n",
    b"\r\nX: y\r\n\r\n",
    b"X: y\r\nno blank line",
    b"X: cr\r alone\r\n\r\nb\rc\r\n",
    b"X\x80: y\r\n\r\nb\r\n",
    b"",
]


@pytest.mark.parametrize("message", PARSE_CASES)
def test_parse_equals_dkimpy(message):
    assert _outcome(dkim.rfc822_parse, message) == _outcome(ORIG["parse"], message)


def test_parse_equals_dkimpy_on_random_messages():
    rng = random.Random(4)
    names = [b"From", b"To", b"X-A", b"Subject"] * 4 + [b"b:c", b"", b" ", b"\tcont", b" cont", b"From x", b"na me"]
    for _ in range(5000):
        lines = [rng.choice(names) + rng.choice([b": v", b":", b" v", b": a  b\t"]) for _ in range(rng.randint(0, 4))]
        ends = [rng.choice([b"\r\n"] * 12 + [b"\n", b"\r"]) for _ in lines]
        head = b"".join(line + end for line, end in zip(lines, ends, strict=True))
        pieces = [b"x\r\n", b"  y \r\n", b"\r\n", b"z"] * 3 + [b"\n"]
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        message = head + rng.choice([b"\r\n"] * 4 + [b"\n", b""]) + body
        assert _outcome(dkim.rfc822_parse, message) == _outcome(ORIG["parse"], message), message


def test_signature_still_verifies_and_fails(tmp_path):
    """End to end through dkimpy with the stand-ins: a good signature passes, a changed body fails."""
    import subprocess

    from pymta import dkim_sign
    from pymta.lib import dkimverify

    key = tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    record = f"v=DKIM1; k=rsa; p={dkim_sign.public_key_b64(key)}".encode()
    text = b"From: a@sig.example\nTo: b@c.example\nSubject:  two  spaces\t\n\nline one  \nline\ttwo\n\n\n"
    signed = (dkim_sign.sign(text, "sig.example", "s", key.read_bytes()) + text).replace(b"\n", b"\r\n")
    txt = lambda name, timeout=None: record  # noqa: E731
    assert [s.result for s in dkimverify.verify_all(signed, txt)] == ["pass"]
    changed = signed.replace(b"line one", b"line 1")
    assert [s.result for s in dkimverify.verify_all(changed, txt)] == ["fail"]
