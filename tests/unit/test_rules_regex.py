"""procmail regex dialect -> Python re."""

from __future__ import annotations

import threading
import time

import pytest

from pymda.rules import regex as rx


def find(pattern, text, cs=False):
    return rx.search(rx.compile_pattern(pattern, cs), text)


@pytest.mark.parametrize(
    "pattern,text,hit",
    [
        ("^Subject: hi", "From: a\nsubject: HI there\n", True),  # case-insensitive by default
        ("^TO_bob@example\\.test", "Cc: x, bob@example.test\n", True),
        ("^TO_bob@example\\.test", "Cc: xbob@example.test\n", False),  # ^TO_ wants a delimiter before the address
        ("^TObob", "To: Bob Smith <b@x>\n", True),
        ("^TObob", "To: bobby@x\n", True),  # ^TO wants a non-letter only before
        ("^FROM_DAEMON", "From: MAILER-DAEMON@mx.example\n", True),
        ("^FROM_DAEMON", "Precedence: bulk\n", True),
        ("^FROM_DAEMON", "From: alice@example.org\n", False),
        ("^FROM_MAILER", "From: postmaster@example.org\n", True),
        ("^FROM_MAILER", "Precedence: list\n", False),
        ("[^a]b", "a\nb", False),  # [^...] never matches a newline
        ("x{2}", "x{2}", True),  # '{' is not an operator
        ("\\<word\\>", "a word here", True),
        ("\\<word\\>", "swordfish", False),
        ("^^From", "From: a\n", True),
        ("^^Subject", "From: a\nSubject: b\n", False),
        ("*star", "a *star", True),  # a leading '*' is literal
        ("a\\.b", "aXb", False),
    ],
)
def test_translation(pattern, text, hit):
    assert bool(find(pattern, text)) is hit


def test_case_sensitive_flag():
    assert find("^subject", "Subject: x", cs=True) is None
    assert find("^Subject", "Subject: x", cs=True)


def test_match_operator_left_side_minimal():
    m = find("^Subject:.*\\/[0-9]+", "Subject: a 12 b 345\n")
    assert m.group("MATCH") == "12"
    m = find("^Subject:\\/.*", "Subject: Hello world\nX: y\n")
    assert m.group("MATCH") == " Hello world"


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*", "(.*x)+", "((ab)+c)*"])
def test_catastrophic_patterns_refused(pattern):
    with pytest.raises(rx.RegexError, match="exponential"):
        rx.translate(pattern)


@pytest.mark.parametrize("pattern", ["(ab)+", "(a|b)*c", "(x.*)?", rx.FROM_DAEMON])
def test_ordinary_patterns_allowed(pattern):
    rx.translate(pattern)


def test_bad_patterns_are_errors():
    for bad in ("(abc", "abc)", "[abc"):
        with pytest.raises(rx.RegexError):
            rx.compile_pattern(bad)


def test_search_time_is_bounded_in_main_thread():
    import re

    slow = re.compile(r"(a|aa)+$")  # not caught by the static guard
    start = time.time()
    with pytest.raises(rx.RegexTimeout):
        rx.search(slow, "a" * 60 + "b", timeout=0.3)
    assert time.time() - start < 5


def test_search_in_thread_does_not_use_signals():
    out = []
    t = threading.Thread(target=lambda: out.append(bool(find("^a", "a"))))
    t.start()
    t.join()
    assert out == [True]


def test_escape():
    assert rx.escape("[Python-Dev] a.b") == "\\[Python-Dev\\] a\\.b"


def test_search_time_is_bounded_in_threads_when_regex_module_is_there():
    pytest.importorskip("regex")
    import re

    slow = re.compile(r"(a|aa)+$")
    out = []

    def work():
        try:
            rx.search(slow, "a" * 60 + "b", timeout=0.3)
            out.append("finished")
        except rx.RegexTimeout:
            out.append("timeout")

    t = threading.Thread(target=work)
    start = time.time()
    t.start()
    t.join(20)
    assert out == ["timeout"] and time.time() - start < 10
    # and ordinary searches give the same answers as re
    t = threading.Thread(
        target=lambda: out.append(rx.search(rx.compile_pattern("^Subject:\\/.*"), "Subject: x\n").group("MATCH"))
    )
    t.start()
    t.join()
    assert out[-1] == " x"


@pytest.mark.parametrize(
    "pattern,literals",
    [
        ("^Subject:.*never-3\\>", {"subject:", "never-3"}),
        ("foo|bar", set()),
        ("abc*d", {"ab", "d"}),
        ("ab?c", {"a", "c"}),
        ("(abc)+xyz", {"xyz"}),
        ("^TO_Bob@Example\\.test", {"bob@example.test"}),
        ("^FROM_DAEMON", set()),
        ("x[ab]Yz", {"x", "yz"}),
    ],
)
def test_required_literals(pattern, literals):
    assert set(rx.required_literals(pattern)) == literals


@pytest.mark.parametrize(
    "pattern,text",
    [
        ("abc*d", "xxABD"),
        ("ab+c", "abbbc"),
        ("a(b|c)d", "acd"),
        ("^Subject:.*\\/[0-9]+", "subject: 12"),
        ("x.?y", "xy"),
        ("\\<w\\>", " w "),
        ("a\\.b", "A.B"),
        ("^TO_bob", "Cc: x, bob"),
        ("[^a]bc", "xbc"),
    ],
)
def test_required_literals_are_in_every_match(pattern, text):
    assert find(pattern, text)
    low = rx.ascii_lower(text)
    assert all(lit in low for lit in rx.required_literals(pattern))
