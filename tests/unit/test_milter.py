"""The milter client machine (pymta/lib/milter.py, issue 12 §2): packets
built by hand, byte for byte, for every event, reply and action, and
hostile reply streams fuzzed (never anything but a ProtocolError)."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymta.lib import milter as m

EXAMPLES = int(os.environ.get("PYMAIL_FUZZ_EXAMPLES", "300"))


def pkt(cmd: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload) + 1) + cmd + payload


# -- events -----------------------------------------------------------------


def test_optneg_packet() -> None:
    assert m.encode_optneg(0x1FF, 0x1FFFFF) == (b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")


def test_macro_packet() -> None:
    got = m.encode_macro(m.SMFIC_CONNECT, {"j": "mx.example", "{client_addr}": "192.0.2.1"})
    assert got == pkt(b"D", b"Cj\0mx.example\0{client_addr}\x00192.0.2.1\0")
    assert "{daemon_name}" in m.POSTFIX_MACROS[m.SMFIC_CONNECT]
    assert "i" in m.POSTFIX_MACROS[m.SMFIC_MAIL]


def test_connect_packets() -> None:
    assert m.encode_connect("client.example", m.FAMILY_INET, 25, "192.0.2.1") == pkt(
        b"C", b"client.example\x004\x00\x19192.0.2.1\0"
    )
    assert m.encode_connect("h", m.FAMILY_INET6, 587, "2001:db8::1") == pkt(b"C", b"h\x006\x02\x4b2001:db8::1\0")
    assert m.encode_connect("localhost") == pkt(b"C", b"localhost\0U")


def test_helo_mail_rcpt_packets() -> None:
    assert m.encode_helo("client.example") == pkt(b"H", b"client.example\0")
    assert m.encode_mail("a@b.example", ["SIZE=100", "BODY=8BITMIME"]) == pkt(
        b"M", b"<a@b.example>\0SIZE=100\0BODY=8BITMIME\0"
    )
    assert m.encode_mail("") == pkt(b"M", b"<>\0")
    assert m.encode_rcpt("c@d.example", ["NOTIFY=NEVER"]) == pkt(b"R", b"<c@d.example>\0NOTIFY=NEVER\0")


def test_data_header_eoh_eom_abort_quit_packets() -> None:
    assert m.encode_data() == b"\0\0\0\x01T"
    assert m.encode_header("Subject", "hi there") == pkt(b"L", b"Subject\0hi there\0")
    assert m.encode_eoh() == b"\0\0\0\x01N"
    assert m.encode_eom() == b"\0\0\0\x01E"
    assert m.encode_abort() == b"\0\0\0\x01A"
    assert m.encode_quit() == b"\0\0\0\x01Q"


def test_body_chunks_at_most_65535() -> None:
    body = b"x" * (65535 * 2 + 10)
    chunks = m.encode_body(body)
    assert len(chunks) == 3
    assert chunks[0] == pkt(b"B", b"x" * 65535)
    assert chunks[2] == pkt(b"B", b"x" * 10)
    assert m.encode_body(b"") == []


def test_nul_in_strings_dropped() -> None:
    assert m.encode_helo("a\0b") == pkt(b"H", b"ab\0")


# -- replies and actions ------------------------------------------------------


def test_simple_replies() -> None:
    for cmd, kind in [
        (b"a", "accept"),
        (b"c", "continue"),
        (b"r", "reject"),
        (b"t", "tempfail"),
        (b"d", "discard"),
        (b"p", "progress"),
        (b"s", "skip"),
    ]:
        assert m.parse_reply(cmd, b"") == m.Reply(kind)


def test_replycode_and_quarantine() -> None:
    assert m.parse_reply(b"y", b"550 5.7.1 go away\0") == m.Reply("replycode", "550", "5.7.1 go away")
    assert m.parse_reply(b"y", b"451\0") == m.Reply("replycode", "451", "")
    assert isinstance(m.parse_reply(b"y", b"250 ok\0"), m.ProtocolError)
    assert isinstance(m.parse_reply(b"y", b"55"), m.ProtocolError)
    assert m.parse_reply(b"q", b"spam\0") == m.Reply("quarantine", text="spam")


def test_header_actions() -> None:
    assert m.parse_reply(b"h", b"X-Spam\0Yes\0") == m.Modification("addheader", "X-Spam", "Yes")
    assert m.parse_reply(b"i", b"\0\0\0\x00X-A\0v\0") == m.Modification("insheader", "X-A", "v", 0)
    assert m.parse_reply(b"m", b"\0\0\0\x02Subject\0new\0") == m.Modification("chgheader", "Subject", "new", 2)
    # change with an empty value deletes the header
    assert m.parse_reply(b"m", b"\0\0\0\x01X-B\0\0") == m.Modification("chgheader", "X-B", "", 1)
    assert isinstance(m.parse_reply(b"m", b"\0\0"), m.ProtocolError)
    assert isinstance(m.parse_reply(b"h", b"X\0"), m.ProtocolError)


def test_recipient_sender_body_actions() -> None:
    assert m.parse_reply(b"+", b"<x@y>\0") == m.Modification("addrcpt", value="<x@y>")
    assert m.parse_reply(b"2", b"<x@y>\0NOTIFY=NEVER\0") == m.Modification(
        "addrcpt", value="<x@y>", args="NOTIFY=NEVER"
    )
    assert m.parse_reply(b"-", b"<x@y>\0") == m.Modification("delrcpt", value="<x@y>")
    assert m.parse_reply(b"e", b"<s@t>\0") == m.Modification("chgfrom", value="<s@t>")
    assert m.parse_reply(b"e", b"<s@t>\0SIZE=1\0") == m.Modification("chgfrom", value="<s@t>", args="SIZE=1")
    assert m.parse_reply(b"b", b"new body\r\n") == m.Modification("replbody", body=b"new body\r\n")
    assert isinstance(m.parse_reply(b"+", b""), m.ProtocolError)


def test_unknown_reply() -> None:
    assert isinstance(m.parse_reply(b"Z", b""), m.ProtocolError)


# -- framing -----------------------------------------------------------------


def test_reader_frames_split_input() -> None:
    r = m.PacketReader()
    data = pkt(b"c") + pkt(b"h", b"A\0b\0")
    got = []
    for i in range(len(data)):
        got += r.feed(data[i : i + 1])
    assert got == [(b"c", b""), (b"h", b"A\0b\0")]
    assert r.error is None and r.pending == 0


def test_reader_refuses_huge_and_zero_length() -> None:
    r = m.PacketReader()
    assert r.feed(struct.pack(">I", 1 << 30) + b"a") == []
    assert r.error is not None and r.pending == 0
    assert r.feed(pkt(b"a")) == []
    r2 = m.PacketReader()
    assert r2.feed(b"\0\0\0\0") == [] and r2.error is not None


# -- negotiation and session ---------------------------------------------------


def test_optneg_reply() -> None:
    neg = m.parse_optneg(b"O", struct.pack(">III", 6, m.SMFIF_ADDHDRS, m.SMFIP_NOHELO | m.SMFIP_NR_RCPT))
    assert isinstance(neg, m.Negotiation)
    assert neg.skips(m.SMFIC_HELO) and not neg.skips(m.SMFIC_MAIL)
    assert not neg.replies(m.SMFIC_RCPT) and neg.replies(m.SMFIC_MAIL)
    assert not neg.replies(m.SMFIC_MACRO)
    assert isinstance(m.parse_optneg(b"O", b"\0\0"), m.ProtocolError)
    assert isinstance(m.parse_optneg(b"a", b""), m.ProtocolError)
    assert isinstance(m.parse_optneg(b"O", struct.pack(">III", 6, 0x1FF, 0)), m.Negotiation)
    assert isinstance(m.parse_optneg(b"O", struct.pack(">III", 6, 0x1FF, 0), offered_actions=1), m.ProtocolError)


def _session(actions: int = m.ALL_ACTIONS, protocol: int = 0) -> m.MilterSession:
    return m.MilterSession(m.Negotiation(6, actions, protocol))


def test_session_event_replies() -> None:
    s = _session(protocol=m.SMFIP_NOHELO | m.SMFIP_NR_HDR)
    assert s.expect_reply(m.SMFIC_CONNECT)
    assert s.receive(pkt(b"c")) == m.Reply("continue")
    assert not s.expect_reply(m.SMFIC_HELO)
    assert not s.expect_reply(m.SMFIC_HEADER)
    assert s.expect_reply(m.SMFIC_RCPT)
    assert s.receive(pkt(b"y", b"550 5.1.1 no\0")[:-3]) is None
    assert s.receive(b"no\0") == m.Reply("replycode", "550", "5.1.1 no")
    assert s.receive(pkt(b"p") + pkt(b"t")) == m.Reply("tempfail")


def test_session_end_of_message_modifications_in_order() -> None:
    s = _session()
    assert s.expect_reply(m.SMFIC_BODYEOB)
    stream = (
        pkt(b"h", b"X-Spam\0Yes\0")
        + pkt(b"m", b"\0\0\0\x01Subject\0\0")
        + pkt(b"p")
        + pkt(b"+", b"<new@x>\0")
        + pkt(b"-", b"<old@x>\0")
        + pkt(b"e", b"<s@x>\0")
        + pkt(b"b", b"body\r\n")
        + pkt(b"a")
    )
    r = s.receive(stream)
    assert isinstance(r, m.EndOfMessage)
    assert r.reply == m.Reply("accept")
    assert [x.kind for x in r.modifications] == [
        "addheader",
        "chgheader",
        "addrcpt",
        "delrcpt",
        "chgfrom",
        "replbody",
    ]


def test_session_refuses_unnegotiated_or_early_modification() -> None:
    s = _session(actions=m.SMFIF_ADDHDRS)
    s.expect_reply(m.SMFIC_MAIL)
    assert isinstance(s.receive(pkt(b"h", b"A\0b\0")), m.ProtocolError)
    s = _session(actions=m.SMFIF_ADDHDRS)
    s.expect_reply(m.SMFIC_BODYEOB)
    assert isinstance(s.receive(pkt(b"b", b"x")), m.ProtocolError)


def test_session_bad_length_is_protocol_error() -> None:
    s = _session()
    s.expect_reply(m.SMFIC_BODYEOB)
    assert isinstance(s.receive(b"\x40\0\0\0a"), m.ProtocolError)


# -- fuzzing -------------------------------------------------------------------

_reply_cmds = st.sampled_from(list(b"+-24abcdefhilmpqrsty") + [0x5A, 0x00]).map(lambda c: bytes([c]))
_packets = st.builds(
    lambda c, p, lie: struct.pack(">I", max(0, len(p) + 1 + lie)) + c + p,
    _reply_cmds,
    st.binary(max_size=40),
    st.integers(-3, 3),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(_packets, st.binary(max_size=12)), max_size=8), st.integers(1, 20))
def test_fuzz_reply_stream(parts: list[bytes], step: int) -> None:
    s = _session()
    s.expect_reply(m.SMFIC_BODYEOB)
    data = b"".join(parts)
    for i in range(0, len(data), step):
        r = s.receive(data[i : i + step])
        assert r is None or isinstance(r, (m.Reply, m.EndOfMessage, m.ProtocolError))
        if r is not None:
            break
    assert s.reader.pending <= m.MAX_PACKET


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(_reply_cmds, st.binary(max_size=64))
def test_fuzz_parse_reply(cmd: bytes, payload: bytes) -> None:
    assert isinstance(m.parse_reply(cmd, payload), (m.Reply, m.Modification, m.ProtocolError))
    assert isinstance(m.parse_optneg(cmd, payload), (m.Negotiation, m.ProtocolError))


def test_session_quarantine_at_end_of_message() -> None:
    s = _session()
    s.expect_reply(m.SMFIC_BODYEOB)
    r = s.receive(pkt(b"q", b"spam\0") + pkt(b"h", b"X\0y\0") + pkt(b"c"))
    assert isinstance(r, m.EndOfMessage)
    assert r.quarantine == "spam" and r.reply == m.Reply("continue")
    assert len(r.modifications) == 1
