"""RFC 5321 path/mailbox grammar (pymta.lib.address)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymta.lib.address import (
    AddressError,
    is_safe_envelope_field,
    normalize_domain,
    parse_mailbox,
    parse_path,
    split,
    split_path,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<user@example.com>", "user@example.com"),
        ("<User.Name+tag@Example.COM>", "User.Name+tag@Example.COM"),  # nothing lower-cased
        ("<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~@example.com"),
        ('<"john doe"@example.com>', '"john doe"@example.com'),  # quoted form kept
        ('<"a\\"b"@example.com>', '"a\\"b"@example.com'),
        ('<"a@b"@example.com>', '"a@b"@example.com'),
        # quotes that are not needed are not part of the address (RFC 5322 3.2.4)
        ('<"bob"@example.com>', "bob@example.com"),
        ('<"b\\ob.x"@example.com>', "bob.x@example.com"),
        ('<"bob%evil.example"@example.com>', "bob%evil.example@example.com"),
        ('<".bob"@example.com>', '".bob"@example.com'),
        ('<""@example.com>', '""@example.com'),
        ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
        ("<user@localhost>", "user@localhost"),
        ("<user@x-1.example>", "user@x-1.example"),
        ("<@relay.example,@other.example:user@example.com>", "user@example.com"),  # source route dropped
        ("<@relay.example:user@example.com>", "user@example.com"),
        ("<" + "a" * 64 + "@example.com>", "a" * 64 + "@example.com"),
    ],
)
def test_parse_path_accepts(text, expected):
    assert parse_path(text, allow_null=False) == expected


def test_null_path_only_when_allowed():
    assert parse_path("<>", allow_null=True) == ""
    with pytest.raises(AddressError):
        parse_path("<>", allow_null=False)


@pytest.mark.parametrize(
    "text",
    [
        "user@example.com",  # angle brackets are required (RFC 5321 4.1.2)
        "<user@example.com",
        "user@example.com>",
        "<user>",
        "<@example.com>",
        "<user@>",
        "<user@@example.com>",
        "<.user@example.com>",
        "<user.@example.com>",
        "<us..er@example.com>",
        "<us er@example.com>",
        "<us\\er@example.com>",
        "<us\ter@example.com>",
        "<user@exa mple.com>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@example..com>",
        "<user@.example.com>",
        "<user@example.com.>",
        "<user@exa_mple.com>",
        "<user@" + "a" * 64 + ".com>",
        "<user@" + ".".join(["abcdefghi"] * 26) + ">",  # > 255 octets
        "<" + "a" * 65 + "@example.com>",  # > 64 octets
        "<user\r\n@example.com>",
        "<user@example.com\r\nRCPT TO:<x@y>>",
        "<user\x00@example.com>",
        '<"unterminated@example.com>',
        '<"a"b"@example.com>',
        '<"a\r"@example.com>',
        '<"ab\\"@example.com>',
        "<user@[192.0.2.256]>",
        "<user@[192.0.2]>",
        "<user@[1.2.3.4.5]>",
        "<user@[IPv6:nonsense]>",
        "<user@[IPv6:fe80::1%eth0]>",
        "<user@[tag:value]>",
        "<user@[192.0.2.1>",
        "<@relay.example user@example.com>",
        "<@relay.example,user@example.com>",
        "<@[192.0.2.1]:user@example.com>",
        "<user@example.com> ",
    ],
)
def test_parse_path_rejects(text):
    with pytest.raises(AddressError):
        parse_path(text, allow_null=True)


def test_non_ascii_needs_smtputf8():
    for text in ("<jösé@example.com>", "<user@bücher.example>", '<"jö sé"@example.com>'):
        with pytest.raises(AddressError):
            parse_path(text, allow_null=False)
        assert parse_path(text, allow_null=False, smtputf8=True) == text[1:-1]


def test_smtputf8_still_refuses_controls_and_separators():
    for bad in ("\x85", "\u2028", "\ud800", "\u00a0"):
        with pytest.raises(AddressError):
            parse_path(f"<a{bad}b@example.com>", allow_null=False, smtputf8=True)


def test_local_part_limit_counts_octets():
    with pytest.raises(AddressError):
        parse_path("<" + "é" * 33 + "@example.com>", allow_null=False, smtputf8=True)  # 66 octets


def test_parse_mailbox_without_brackets():
    assert parse_mailbox("root@localhost") == "root@localhost"
    with pytest.raises(AddressError):
        parse_mailbox("<root@localhost>")
    with pytest.raises(AddressError):
        parse_mailbox("root")


def test_split_path():
    assert split_path("<a@b> SIZE=10") == ("<a@b>", " SIZE=10")
    assert split_path('<"x> y"@b> BODY=8BITMIME') == ('<"x> y"@b>', " BODY=8BITMIME")
    assert split_path("<>") == ("<>", "")
    with pytest.raises(AddressError):
        split_path("a@b")
    with pytest.raises(AddressError):
        split_path("<a@b")


def test_split_normalize_and_safety():
    assert split('"a@b"@example.com') == ('"a@b"', "example.com")
    assert split("postmaster") == ("postmaster", "")
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("example.com") == "example.com"
    assert is_safe_envelope_field("a@b")
    for bad in ("a\rb", "a\nb", "a\0b"):
        assert not is_safe_envelope_field(bad)
        assert not is_safe_envelope_field(bad.encode())


@given(st.text(max_size=80), st.booleans(), st.booleans())
def test_fuzz_parse_path_only_raises_address_error(text, allow_null, smtputf8):
    try:
        result = parse_path(text, allow_null=allow_null, smtputf8=smtputf8)
    except AddressError:
        return
    # Whatever passes is safe to write into an envelope file.
    assert is_safe_envelope_field(result)
    assert result == "" or "@" in result
    assert smtputf8 or result.isascii()


@given(st.text(max_size=80))
def test_fuzz_split_path_only_raises_address_error(text):
    try:
        path, rest = split_path(text)
    except AddressError:
        return
    assert path + rest == text
