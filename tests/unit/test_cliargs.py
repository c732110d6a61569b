"""The one hand-written option parser (daemons, sendmail, pymda-deliver)."""

import pytest

from pymta.lib.cliargs import UsageError, getopt


def test_short_options_cluster_and_take_joined_or_next_values():
    assert getopt(["-ti", "-fbob@x", "-C", "file", "rcpt"], "tiC:f:") == (
        [("-t", ""), ("-i", ""), ("-f", "bob@x"), ("-C", "file")],
        ["rcpt"],
    )


def test_long_options_take_equals_or_next_word():
    assert getopt(["--listen=a:1", "--listen", "b:2", "--tls"], "", ["listen=", "tls"]) == (
        [("--listen", "a:1"), ("--listen", "b:2"), ("--tls", "")],
        [],
    )


def test_operands_between_options_and_after_double_dash():
    assert getopt(["a", "-t", "b", "--", "-x", "c"], "t") == ([("-t", "")], ["a", "b", "-x", "c"])
    assert getopt(["-"], "t") == ([], ["-"])


def test_stop_after_makes_the_rest_operands():
    assert getopt(["-n", "-m", "X=1", "-d", "rc"], "nmd:", stop_after="-m") == (
        [("-n", ""), ("-m", "")],
        ["X=1", "-d", "rc"],
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-Z"], "invalid option -- 'Z'"),
        (["-C"], "option requires an argument -- 'C'"),
        (["--bogus"], "unrecognized option '--bogus'"),
        (["--listen"], "option '--listen' requires an argument"),
        (["--tls=yes"], "option '--tls' doesn't allow an argument"),
    ],
)
def test_mistakes_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        getopt(argv, "C:", ["listen=", "tls"])
