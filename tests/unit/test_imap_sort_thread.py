"""pyimap.sort and pyimap.thread, sans I/O: RFC 5256 base subject (one test per rule), sort keys,
criteria, ties, ORDEREDSUBJECT and REFERENCES (each step's rule) and the THREAD response text."""

from __future__ import annotations

import calendar

import pytest

from pyimap.message import Headers
from pyimap.parser import Atom, ParseError
from pyimap.sort import base_subject, display_key, mailbox_key, parse_criteria, sent_date, sort_messages
from pyimap.thread import ordered_subject, references, render


def subj(value: str | bytes) -> tuple[str, bool]:
    return base_subject(value.encode() if isinstance(value, str) else value)


# -- RFC 5256 2.1, base subject ---------------------------------------------------------------


def test_step1_encoded_words_decoded_to_utf8():
    assert subj("=?iso-8859-1?Q?caf=E9?=") == ("café", False)
    assert subj("=?utf-8?B?w6l0w6k=?= =?utf-8?Q?_d=C3=A9j=C3=A0?=") == ("été déjà", False)  # adjacent words join
    assert subj("=?koi8-r?B?8NLJ18XU?=") == ("Привет", False)


def test_step1_tabs_continuations_and_runs_of_spaces_become_one_space():
    assert subj("a\t b   c\r\n\td") == ("a b c d", False)


def test_step2_trailers_removed_repeatedly():
    assert subj("hello (fwd)") == ("hello", True)
    assert subj("hello (FWD) (fwd)   ") == ("hello", True)
    assert subj("hello   ") == ("hello", False)  # WSP alone is no forward
    assert subj("(fwd) hello") == ("(fwd) hello", False)


@pytest.mark.parametrize(
    "value",
    ["Re: hello", "RE: hello", "re:hello", "Re : hello", "Fwd: hello", "FW: hello", "Re[2]: hello", "Re [x] : hello"],
)
def test_step3_subj_refwd_leader(value):
    assert subj(value) == ("hello", True)


def test_step3_blobs_before_refwd_and_what_is_no_leader():
    assert subj("[dev] Re: hello") == ("hello", True)
    assert subj("[a][b] Fwd: hello") == ("hello", True)
    assert subj("AW: hello") == ("AW: hello", False)  # only re, fw, fwd
    assert subj("Reply: hello") == ("Reply: hello", False)
    assert subj("Re hello") == ("Re hello", False)  # no colon


def test_step4_blob_removed_only_if_something_remains():
    assert subj("[dev] hello") == ("hello", False)
    assert subj("[dev]") == ("[dev]", False)
    assert subj("[dev]   ") == ("[dev]", False)
    assert subj("[a] [b]") == ("[b]", False)


def test_step5_steps_3_and_4_repeated():
    assert subj("[dev] Re: [ops] Fwd: Re:Re: hello") == ("hello", True)
    assert subj("Re: [list] Re: hello") == ("hello", True)


def test_step6_fwd_wrapping_removed_then_again_from_step2():
    assert subj("[Fwd: hello]") == ("hello", True)
    assert subj("[fwd: Re: hello (fwd)]") == ("hello", True)
    assert subj("Fwd: [Fwd: [dev] Re: hello]") == ("hello", True)
    assert subj("[Fwd: hello] more") == ("more", False)  # no trailer "]": a subj-blob (step 4)


def test_step7_empty_and_missing_subjects():
    assert base_subject(None) == ("", False)
    assert subj("") == ("", False)
    assert subj("Re:") == ("", True)
    assert subj("   ") == ("", False)


# -- sort keys ----------------------------------------------------------------------------------


def h(text: str | bytes) -> Headers:
    raw = text.encode() if isinstance(text, str) else text
    return Headers(raw.replace(b"\n", b"\r\n") + b"\r\n")


def test_sent_date_in_utc_else_the_internal_date():
    utc = calendar.timegm((2024, 1, 2, 10, 0, 0))
    assert sent_date(h("Date: Tue, 02 Jan 2024 12:00:00 +0200\n"), 7) == utc
    assert sent_date(h("Date: 2 Jan 2024 03:00:00 -0700\n"), 7) == utc
    assert sent_date(h("Date: Tue, 02 Jan 24 10:00:00\n"), 7) == utc  # no zone: UTC; two-digit year
    assert sent_date(h("Date: yesterday\n"), 7) == 7
    assert sent_date(h("Subject: x\n"), 7) == 7


def test_address_keys():
    assert mailbox_key(h("From: Ann <ann@x.org>, bob@y.org\n"), "from") == "ANN"
    assert mailbox_key(h("To: team: a@x.org;\n"), "to") == "TEAM"  # a group's name is its addr-mailbox
    assert mailbox_key(h("Subject: x\n"), "cc") == ""
    assert display_key(h("From: =?utf-8?Q?=C3=A9mile?= <e@x.org>\n"), "from") == "éMILE"  # ASCII letters only
    assert display_key(h("From: user@domain (Real Name)\n"), "from") == "REAL NAME"
    assert display_key(h('From: "" <u@d.org>\n'), "from") == "U@D.ORG"
    assert display_key(h("To: <u@d.org>\n"), "to") == "U@D.ORG"
    assert display_key(h("Subject: x\n"), "to") == ""


def test_criteria():
    assert parse_criteria([Atom("REVERSE"), Atom("date"), Atom("SUBJECT")]) == [("DATE", True), ("SUBJECT", False)]
    for bad in ([], [Atom("REVERSE")], [Atom("REVERSE"), Atom("REVERSE"), Atom("DATE")], [Atom("SPAM")], [b"DATE"]):
        with pytest.raises(ParseError):
            parse_criteria(bad)
    with pytest.raises(ParseError):
        parse_criteria(Atom("DATE"))


class Msg:
    def __init__(self, seq: int, head: str = "", size: int = 0, idate: int = 0) -> None:
        self.seq = self.uid = seq
        self.size, self.idate = size, idate
        self._h = h(head)

    def headers(self) -> Headers:
        return self._h


def test_ties_keep_mailbox_order_even_reversed():
    msgs = [Msg(1, size=5), Msg(2, size=9), Msg(3, size=5), Msg(4, size=9)]
    assert [m.seq for m in sort_messages(msgs, [("SIZE", False)])] == [1, 3, 2, 4]
    assert [m.seq for m in sort_messages(msgs, [("SIZE", True)])] == [2, 4, 1, 3]
    assert [m.seq for m in sort_messages(msgs, [("SIZE", True), ("ARRIVAL", True)])] == [2, 4, 1, 3]


def test_second_key_only_among_equal_first_keys():
    msgs = [Msg(1, "Subject: b\n", idate=3), Msg(2, "Subject: Re: a\n", idate=2), Msg(3, "Subject: A\n", idate=1)]
    assert [m.seq for m in sort_messages(msgs, [("SUBJECT", False), ("ARRIVAL", False)])] == [3, 2, 1]
    assert [m.seq for m in sort_messages(msgs, [("SUBJECT", False), ("REVERSE", False)][:1])] == [2, 3, 1]


# -- THREAD -------------------------------------------------------------------------------------


def mail(seq: int, mid: str | None, date_min: int, subject: str = "x", refs: str = "", irt: str = "") -> Msg:
    head = f"Subject: {subject}\nDate: Tue, 02 Jan 2024 10:{date_min:02}:00 +0000\n"
    if mid:
        head += f"Message-ID: <{mid}@x>\n"
    if refs:
        head += "References: " + " ".join(f"<{r}@x>" for r in refs.split()) + "\n"
    if irt:
        head += f"In-Reply-To: <{irt}@x>\n"
    return Msg(seq, head)


def seqs(threads) -> str:
    return render(threads, lambda m: m.seq)


def test_orderedsubject_groups_by_base_subject_then_date():
    msgs = [
        mail(1, "a", 5, "Lunch"),
        mail(2, "b", 1, "Re: lunch"),
        mail(3, "c", 3, "Report"),
        mail(4, "d", 9, "Fwd: Lunch"),
        mail(5, "e", 2, "re: report"),
    ]
    assert seqs(ordered_subject(msgs)) == "(2 (1)(4))(5 3)"


def test_references_chain_and_children_by_date():
    msgs = [
        mail(1, "a", 1, "t"),
        mail(2, "b", 5, "Re: t", refs="a"),
        mail(3, "c", 3, "Re: t", refs="a"),
        mail(4, "d", 4, "Re: t", refs="a c"),
    ]
    assert seqs(references(msgs)) == "(1 (3 4)(2))"


def test_references_in_reply_to_when_no_references_and_first_valid_id_only():
    msgs = [mail(1, "a", 1, "s"), mail(2, "b", 2, "other", irt="a")]
    assert seqs(references(msgs)) == "(1 2)"


def test_references_missing_parent_dummy_kept_at_root_with_two_children():
    msgs = [mail(1, "b", 2, "one", refs="gone"), mail(2, "c", 1, "two", refs="gone")]
    assert seqs(references(msgs)) == "((2)(1))"


def test_references_dummy_with_one_child_promoted():
    msgs = [mail(1, "b", 2, "one", refs="gone"), mail(2, "c", 1, "two", refs="gone b")]
    assert seqs(references(msgs)) == "(1 2)"


def test_references_dummy_inside_a_thread_gives_its_children_to_its_parent():
    msgs = [mail(1, "a", 1, "s"), mail(2, "c", 2, "t", refs="a gone"), mail(3, "d", 3, "u", refs="a gone")]
    assert seqs(references(msgs)) == "(1 (2)(3))"


def test_references_last_reference_wins_and_loops_refused():
    # 2 names 1 as its parent, 1 names 2: the link that would close the loop is not made
    msgs = [mail(1, "a", 1, "s", refs="b"), mail(2, "b", 2, "t", refs="a")]
    assert seqs(references(msgs)) == "(2 1)"
    msgs = [mail(1, "a", 1, "s", refs="a")]  # its own parent
    assert seqs(references(msgs)) == "(1)"


def test_references_duplicate_message_id_belongs_to_the_first():
    msgs = [mail(1, "a", 1, "s"), mail(2, "a", 2, "t"), mail(3, "c", 3, "u", refs="a")]
    assert seqs(references(msgs)) == "(1 3)(2)"


def test_references_no_message_id_is_a_message_of_its_own():
    msgs = [mail(1, None, 1, "s"), mail(2, None, 2, "t")]
    assert seqs(references(msgs)) == "(1)(2)"


def test_references_subject_merge_reply_under_original():
    # no references at all: the reply joins the thread of the message with the same base subject
    msgs = [mail(1, "a", 1, "Plan"), mail(2, "b", 2, "Re: Plan"), mail(3, "c", 3, "Other")]
    assert seqs(references(msgs)) == "(1 2)(3)"


def test_references_subject_merge_two_originals_under_a_dummy():
    msgs = [mail(1, "a", 1, "Plan"), mail(2, "b", 2, "Plan")]
    assert seqs(references(msgs)) == "((1)(2))"


def test_references_subject_merge_into_a_dummy_and_two_dummies():
    msgs = [
        mail(1, "b", 1, "Plan", refs="gone1"),
        mail(2, "c", 2, "Plan", refs="gone1"),
        mail(3, "d", 3, "Re: Plan", refs="gone2"),
        mail(4, "e", 4, "Re: Plan", refs="gone2"),
        mail(5, "f", 5, "Plan"),
    ]
    assert seqs(references(msgs)) == "((1)(2)(3)(4)(5))"


def test_references_empty_subjects_never_merged():
    msgs = [mail(1, "a", 1, ""), mail(2, "b", 2, "Re:")]
    assert seqs(references(msgs)) == "(1)(2)"


def test_references_roots_by_date_ties_by_sequence():
    msgs = [mail(1, "a", 5, "p"), mail(2, "b", 1, "q"), mail(3, "c", 5, "r")]
    assert seqs(references(msgs)) == "(2)(1)(3)"


def test_a_long_chain_does_not_recurse():
    n = 5000
    msgs = [mail(1, "m1", 0, "deep")] + [mail(i, f"m{i}", 0, "Re: deep", irt=f"m{i - 1}") for i in range(2, n + 1)]
    assert seqs(references(msgs)) == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


def test_render():
    assert render([], str) == ""


# -- any input ----------------------------------------------------------------------------------

from datetime import timedelta  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow])
subject_bits = st.lists(
    st.sampled_from(["Re:", "re :", "Fwd:", "fw", "[", "]", "[x]", "[fwd:", "(fwd)", " ", "\t", "a", "Z", "é", ":"]),
    max_size=12,
).map("".join)


@FUZZ
@given(st.one_of(subject_bits, st.text(max_size=40)))
def test_base_subject_of_anything_is_stable(text):
    base, _reply = subj(text)
    assert base == base.strip(" ") or not base.strip(" ")
    if "=?" not in text:
        assert subj(base)[0] == base  # nothing left to remove


@FUZZ
@given(st.binary(max_size=60))
def test_base_subject_of_any_bytes(raw):
    assert isinstance(base_subject(raw)[0], str)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 8)),  # Message-ID m<n>, duplicates likely
            st.lists(st.integers(0, 10), max_size=4),  # References
            st.one_of(st.none(), st.integers(0, 10)),  # In-Reply-To
            st.sampled_from(["a", "Re: a", "b", "Fwd: b", "", "[x] a (fwd)"]),
            st.integers(0, 5),  # minute of the Date
        ),
        max_size=14,
    )
)
def test_every_message_threaded_once(specs):
    msgs = [
        mail(
            i,
            None if mid is None else f"m{mid}",
            minute,
            subject,
            " ".join(f"m{r}" for r in refs),
            "" if irt is None else f"m{irt}",
        )
        for i, (mid, refs, irt, subject, minute) in enumerate(specs, 1)
    ]
    for algorithm in (references, ordered_subject):
        text = seqs(algorithm(msgs))
        numbers = text.replace("(", " ").replace(")", " ").split()
        assert sorted(int(n) for n in numbers) == list(range(1, len(msgs) + 1)), text
        assert text.count("(") == text.count(")")
        assert "()" not in text and "( " not in text and " )" not in text
