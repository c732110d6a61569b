"""pymta.lib.sasl: the one SASL PLAIN/LOGIN decoder of SMTP, POP3 and IMAP."""

import base64

import pytest

from pymta.lib.sasl import SaslError, decode_response, split_plain


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_and_without_authzid():
    assert split_plain(decode_response(b64(b"\0alice\0pw"))) == (b"alice", b"pw")
    assert split_plain(decode_response(b64(b"alice\0alice\0pw"))) == (b"alice", b"pw")


@pytest.mark.parametrize(
    "line, kind",
    [
        (b"*", "cancelled"),
        (b"not base64!", "base64"),
        (b"YQ", "base64"),  # missing padding is strict-mode invalid
    ],
)
def test_bad_lines(line, kind):
    with pytest.raises(SaslError) as err:
        decode_response(line)
    assert err.value.kind == kind


def test_equals_is_empty_only_as_an_initial_response():
    assert decode_response(b"=", initial=True) == b""
    with pytest.raises(SaslError):
        decode_response(b"=")


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"alice\0pw", "malformed"),
        (b"\0\0pw", "malformed"),
        (b"\0alice\0", "malformed"),
        (b"a\0b\0c\0d", "malformed"),
        (b"bob\0alice\0pw", "authzid"),
    ],
)
def test_plain_refusals(data, kind):
    with pytest.raises(SaslError) as err:
        split_plain(data)
    assert err.value.kind == kind
