"""Mailbox names: modified UTF-7 round trips, Maildir++ mapping, unsafe names refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyimap import mailbox_names as mn


@pytest.mark.parametrize(
    "text, wire",
    [
        ("INBOX", "INBOX"),
        ("a&b", "a&-b"),
        ("&", "&-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("台北", "&U,BTFw-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ],
)
def test_mutf7_examples(text, wire):  # RFC 3501 5.1.3; "&" must round-trip (stalwartlabs/stalwart#76)
    assert mn.encode_mutf7(text) == wire
    assert mn.decode_mutf7(wire) == text


@given(st.text(max_size=40))
def test_mutf7_round_trip(text):
    assert mn.decode_mutf7(mn.encode_mutf7(text)) == text


@pytest.mark.parametrize("bad", ["&", "&Jjo", "&Jjo!-", "a\x01b", "\x7f"])
def test_malformed_mutf7(bad):
    with pytest.raises(mn.BadName):
        mn.decode_mutf7(bad)


@pytest.mark.parametrize(
    "name, d",
    [
        ("Sent", ".Sent"),
        ("Lists/python", ".Lists.python"),
        ("a.b", ".a&AC4-b"),
        ("Entwürfe", ".Entw&APw-rfe"),
        ("INBOX", ""),
    ],
)
def test_maildir_mapping(name, d):
    assert mn.to_dir(name) == d
    if d:
        assert mn.from_dir(d) == name


@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "a/../b",
        "/etc",
        "a//b",
        "a/",
        "~root",
        "a\\b",
        "x\x00y",
        "x\ny",
        ".",
        "a/./b",
        "&AC4-&AC4-",
        "a/&AC4-&AC4-/b",
    ],
)
def test_unsafe_names_are_refused(bad):
    with pytest.raises(mn.BadName):
        mn.normalize(bad)


def test_inbox_is_case_insensitive():
    assert mn.normalize("inbox") == "INBOX"
    assert mn.normalize("InBoX/sub") == "INBOX/sub"


@given(st.text(min_size=1, max_size=30))
def test_no_name_escapes_the_mail_home(text):
    try:
        name = mn.normalize(mn.encode_mutf7(text))
    except mn.BadName:
        return
    d = mn.to_dir(name)
    assert "/" not in d and not d.startswith("..") and "\x00" not in d
    assert d == "" or (d.startswith(".") and mn.from_dir(d) == name)
