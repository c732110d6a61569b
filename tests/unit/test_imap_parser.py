"""The IMAP command reader and tokenizer: literals, limits, byte-at-a-time input, fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyimap.parser import (
    COMMAND,
    CONTINUE,
    ERROR,
    Atom,
    ParseError,
    Reader,
    expand,
    parse_sequence_set,
    quote,
    tokenize,
)


def events(reader, data: bytes):
    reader.feed(data)
    out = []
    while (ev := reader.next_event()) is not None:
        out.append(ev)
    return out


def test_simple_command():
    r = Reader()
    [(kind, parts)] = events(r, b"a1 NOOP\r\n")
    assert kind == COMMAND and parts == [b"a1 NOOP"]
    toks = tokenize(parts)
    assert toks == ["a1", "NOOP"] and isinstance(toks[0], Atom)


def test_synchronizing_literal_asks_for_continuation():
    r = Reader()
    assert events(r, b"a LOGIN {5}\r\n") == [(CONTINUE, "Ready for literal data")]
    assert events(r, b"alice {2}\r\n") == [(CONTINUE, "Ready for literal data")]
    [(kind, parts)] = events(r, b"pw\r\n")
    assert kind == COMMAND
    assert tokenize(parts) == ["a", "LOGIN", b"alice", b"pw"]


def test_non_synchronizing_literal_gets_no_continuation():
    r = Reader()
    [(kind, parts)] = events(r, b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n")
    assert tokenize(parts) == ["a", "LOGIN", b"alice", b"pw"]


def test_byte_at_a_time_gives_the_same_result():
    data = b'a1 LOGIN "al\\"ice" {3+}\r\npw!\r\na2 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.10>)\r\n'
    whole = [e for e in events(Reader(), data)]
    r = Reader()
    pieces = []
    for i in range(len(data)):
        pieces += events(r, data[i : i + 1])
    assert pieces == whole
    assert tokenize(whole[1][1]) == ["a2", "FETCH", "1:*", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (From To)]<0.10>"]]


def test_quoted_strings_and_nesting():
    toks = tokenize([b'a SEARCH OR (FROM "x y") (NOT SUBJECT "q\\\\") ALL'])
    assert toks == ["a", "SEARCH", "OR", ["FROM", b"x y"], ["NOT", "SUBJECT", b"q\\"], "ALL"]


@pytest.mark.parametrize(
    "bad", [b'a "unterminated', b"a (((", b"a )", b'a "nul\x00"', b"a BODY[x\x00]", b'a "bad\\q"', b"a {3}x"]
)
def test_malformed_input_is_a_parse_error(bad):
    with pytest.raises(ParseError):
        tokenize([bad])


def test_nesting_is_capped():
    with pytest.raises(ParseError):
        tokenize([b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100])


def test_literal_over_the_cap_is_refused_before_reading():
    r = Reader(max_mem_literal=10)
    assert events(r, b"a LOGIN {11}\r\n") == [(ERROR, "a", "NO [TOOBIG] Literal too big")]
    # the client did not send the bytes; the next command works
    [(kind, parts)] = events(r, b"b NOOP\r\n")
    assert tokenize(parts) == ["b", "NOOP"]


def test_non_sync_literal_over_the_cap_is_drained_not_stored():
    r = Reader(max_mem_literal=10)
    evs = events(r, b"a LOGIN {20+}\r\n" + b"x" * 20 + b"\r\nb NOOP\r\n")
    assert evs[0] == (ERROR, "a", "NO [TOOBIG] Literal too big")
    assert tokenize(evs[1][1]) == ["b", "NOOP"]
    assert len(r.buf) == 0


def test_huge_literal_announcement_against_max_literal():
    r = Reader(max_literal=1000, sink_for=lambda segs, size: None)
    assert events(r, b"a APPEND INBOX {99999999999}\r\n") == [(ERROR, "a", "NO [TOOBIG] Literal too big")]


def test_line_too_long_is_answered_once_and_skipped():
    r = Reader(max_line=100)
    evs = events(r, b"a NOOP " + b"x" * 500)
    assert evs == [(ERROR, "a", "BAD Line too long")]
    evs = events(r, b"y" * 500 + b"\r\nb NOOP\r\n")
    assert [tokenize(e[1]) for e in evs] == [["b", "NOOP"]]
    assert len(r.buf) < 200


def test_sink_receives_literal_as_it_arrives():
    class Sink:
        def __init__(self):
            self.chunks = []

        def write(self, b):
            self.chunks.append(b)

    sink = Sink()
    r = Reader(sink_for=lambda segs, size: sink)
    assert events(r, b"a APPEND INBOX {10}\r\n") == [(CONTINUE, "Ready for literal data")]
    assert events(r, b"01234") == []
    assert events(r, b"56789") == []
    [(kind, parts)] = events(r, b"\r\n")
    assert b"".join(sink.chunks) == b"0123456789"
    assert tokenize(parts)[-1] is sink


def test_sequence_sets():
    assert parse_sequence_set("1:3,5,7:*") == [(1, 3), (5, 5), (7, None)]
    assert expand(parse_sequence_set("2:*"), [1, 2, 3, 4], 4) == [2, 3, 4]
    assert expand(parse_sequence_set("*:2"), [1, 2, 3, 4], 4) == [2, 3, 4]
    assert expand(parse_sequence_set("10:*"), [1, 5], 5) == [5]  # RFC 3501: n:* with n > * is *:n
    for bad in ("0", "1:0", "a", "1,,2", "", "1:2:3", "4294967296"):
        with pytest.raises(ParseError):
            parse_sequence_set(bad)


def test_quote_falls_back_to_literal():
    assert quote('a"b') == b'"a\\"b"'
    assert quote("ä") == b"{2}\r\n\xc3\xa4"
    assert quote(None) == b"NIL"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_reader_and_tokenizer_only_raise_parse_errors(data):
    r = Reader(max_line=64, max_mem_literal=32)
    r.feed(data + b"\r\n")
    while True:
        ev = r.next_event()
        if ev is None:
            break
        if ev[0] == COMMAND:
            try:
                tokenize(ev[1])
            except ParseError:
                pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"a",
                b" ",
                b"(",
                b")",
                b'"',
                b"\\",
                b"{1}\r\n",
                b"{2+}\r\n",
                b"[",
                b"]",
                b"<",
                b"1:*",
                b"\r\n",
                b"\x00",
                b"\xff",
                b"BODY[",
                b"NIL",
            ]
        ),
        max_size=40,
    )
)
def test_fuzz_grammar_fragments(pieces):
    r = Reader(max_line=128, max_mem_literal=16)
    r.feed(b"".join(pieces) + b"\r\n")
    while (ev := r.next_event()) is not None:
        if ev[0] == COMMAND:
            try:
                tokenize(ev[1])
            except ParseError:
                pass


def test_brackets_are_atom_characters_outside_fetch_sections():
    # RFC 3501 9: ASTRING-CHAR includes "]" and "[" is an ATOM-CHAR; only BODY[, BODY.PEEK[ and
    # BINARY[ open a section, which may hold spaces and parentheses.
    assert tokenize([b"a SELECT foo]bar"]) == ["a", "SELECT", "foo]bar"]
    assert tokenize([b'a LIST "" foo[bar']) == ["a", "LIST", b"", "foo[bar"]
    assert tokenize([b"a CREATE !#$&-'+,-.0123456789:;<=>?@AZ[]^_`az|}~"]) == [
        "a",
        "CREATE",
        "!#$&-'+,-.0123456789:;<=>?@AZ[]^_`az|}~",
    ]
    assert tokenize([b"a FETCH 1 (body.peek[HEADER.FIELDS (A B)]<0.5> x[y z])"]) == [
        "a",
        "FETCH",
        "1",
        ["body.peek[HEADER.FIELDS (A B)]<0.5>", "x[y", "z]"],
    ]
