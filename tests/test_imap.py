"""pyimap-imapd as a real process: --listen, systemd-socket-activate --inetd and LISTEN_FDS;
plain, STARTTLS and implicit TLS; two clients; the deliverer; big APPENDs."""

from __future__ import annotations

import imaplib
import re
import socket
import threading
import time

import pytest

from conftest import PASSWORD, client_tls

ALICE = "alice@example.test"
MODES = ["listen", "inetd", "fds"]


def start_imapd(system, mode: str = "listen", *args: str) -> int:
    return system.start_daemon("pyimap.imapd", mode, *args)


def msg(subject="hello", body="Hi there.\r\n") -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}"
    ).encode()


def login(port, *, ssl_mode=False) -> imaplib.IMAP4:
    m = (
        imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=30)
        if ssl_mode
        else imaplib.IMAP4("127.0.0.1", port, timeout=30)
    )
    typ, _ = m.login(ALICE, PASSWORD)
    assert typ == "OK"
    return m


def session_checks(m: imaplib.IMAP4) -> None:
    typ, data = m.append("INBOX", r"(\Flagged)", None, msg("one"))  # \Recent for the first to select
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = m.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][0] == b"1 (FLAGS (\\Flagged \\Recent) RFC822.SIZE 140 BODY[HEADER.FIELDS (SUBJECT)] {16}"
    assert data[0][1] == b"Subject: one\r\n\r\n"
    typ, data = m.fetch("1", "(BODY[])")
    assert data[0][1] == msg("one")
    assert m.fetch("1", "FLAGS")[1] == [b"1 (FLAGS (\\Flagged \\Seen \\Recent))"]
    assert m.store("1", "+FLAGS", "(\\Answered)")[1] == [b"1 (FLAGS (\\Flagged \\Answered \\Seen \\Recent))"]
    assert m.uid("SEARCH", "FROM", '"ann"') == ("OK", [b"1"])
    assert m.search(None, "UNSEEN") == ("OK", [b""])
    typ, data = m._simple_command("UID", "COPY", "1", "Archive")
    assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1 1\]", data[0])
    assert m.status("Archive", "(MESSAGES UNSEEN)") == ("OK", [b'"Archive" (MESSAGES 1 UNSEEN 0)'])
    assert m.logout()[0] == "BYE"


@pytest.mark.parametrize("mode", MODES)
def test_plain_session_in_every_start_mode(mailsys, mode):
    port = start_imapd(mailsys, mode)
    session_checks(login(port))


@pytest.mark.parametrize("mode", ["listen", "inetd"])
def test_implicit_tls(mailsys, mode):
    port = start_imapd(mailsys, mode, "--tls")
    m = login(port, ssl_mode=True)
    session_checks(m)


@pytest.mark.parametrize("mode", ["listen", "inetd", "fds"])
def test_starttls_and_logindisabled(make_mailsys, mode):
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    port = start_imapd(system, mode)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
    assert "AUTH=PLAIN" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login(ALICE, PASSWORD)
    m.starttls(ssl_context=client_tls())
    assert "AUTH=PLAIN" in m.capabilities and "STARTTLS" not in m.capabilities
    m.login(ALICE, PASSWORD)
    session_checks(m)


def test_starttls_injection_is_not_executed(make_mailsys):  # CVE-2011-0411
    system = make_mailsys("[auth]\nallow_plaintext_loopback = false\n")
    port = start_imapd(system, "inetd")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.recv(4096)
    raw.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    time.sleep(0.3)
    first = raw.recv(4096)
    assert first == b"a OK Begin TLS negotiation now\r\n"
    tls = client_tls().wrap_socket(raw)
    tls.sendall(b"c NOOP\r\n")
    time.sleep(0.3)
    assert tls.recv(4096) == b"c OK NOOP completed\r\n"  # no answer to b
    tls.close()


def test_authenticate_plain_sasl_ir_and_failure_delay(mailsys):
    import base64

    port = start_imapd(mailsys)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    t = time.time()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(ALICE, "wrong")
    assert time.time() - t >= 0.9  # auth.failure_delay
    m2 = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    m2.sock.sendall(b"a AUTHENTICATE PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()) + b"\r\n")
    assert m2.sock.recv(4096).startswith(b"a OK [CAPABILITY IMAP4rev1")


def test_two_clients_idle_sees_append_store_expunge_move(mailsys):
    port = start_imapd(mailsys, "inetd")
    a, b = login(port), login(port)
    for i in range(3):
        b.append("INBOX", None, None, msg(f"m{i}"))
    a.select("INBOX")
    b.select("INBOX")
    sock = a.sock
    sock.sendall(b"i1 IDLE\r\n")
    assert sock.recv(100) == b"+ idling\r\n"

    def expect(pattern: bytes, timeout=2.0):
        sock.settimeout(timeout)
        buf = b""
        deadline = time.time() + timeout
        while not re.search(pattern, buf):
            if time.time() > deadline:
                raise AssertionError(f"{pattern!r} not seen in {buf!r}")
            buf += sock.recv(4096)
        return buf

    b.append("INBOX", None, None, msg("m3"))
    expect(rb"\* 4 EXISTS\r\n")
    b.store("2", "+FLAGS", "(\\Flagged)")
    expect(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\)\)\r\n")  # a selected first: \Recent
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    expect(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Deleted \\Recent\)\)\r\n\* 1 EXPUNGE\r\n|\* 1 EXPUNGE\r\n")
    b._simple_command("MOVE", "1", "Trash")
    expect(rb"\* 1 EXPUNGE\r\n")
    sock.sendall(b"DONE\r\n")
    expect(rb"i1 OK IDLE terminated\r\n")
    # what a sees by number is what is there: UIDs 3 and 4, no reuse
    sock.settimeout(10)
    typ, data = a.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [(re.search(rb"UID (\d+)", d[0]).group(1), d[1].strip()) for d in data if isinstance(d, tuple)]
    assert subjects == [(b"3", b"Subject: m2"), (b"4", b"Subject: m3")]
    assert b.append("INBOX", None, None, msg("m4"))[1][0].split()[2] == b"5]"


def test_idle_sees_pymda_deliver_within_two_seconds(mailsys):
    port = start_imapd(mailsys, "listen")
    a = login(port)
    a.select("INBOX")
    sock = a.sock
    sock.sendall(b"i IDLE\r\n")
    assert sock.recv(100) == b"+ idling\r\n"
    for n in (1, 2):
        r = mailsys.run("pymda.deliver", "-d", ALICE, "-f", "ann@example.org", input=msg(f"d{n}"))
        assert r.returncode == 0, r.stderr
        t = time.time()
        sock.settimeout(2.0)
        buf = b""
        while b"* %d EXISTS\r\n" % n not in buf:
            buf += sock.recv(4096)
        assert time.time() - t < 2.0
    sock.sendall(b"DONE\r\n")
    sock.settimeout(10)
    assert b"i OK IDLE terminated" in sock.recv(4096)
    typ, data = a.fetch("1:2", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [d[1] for d in data if isinstance(d, tuple)] == [b"Subject: d1\r\n\r\n", b"Subject: d2\r\n\r\n"]


def test_noop_while_deliverer_and_other_process_write(mailsys):
    """Many writers at once (deliverer + another imapd appending + expunging): UIDs stay unique and ordered."""
    port = start_imapd(mailsys, "inetd")
    a, b = login(port), login(port)
    a.select("INBOX")

    def writer():
        for i in range(10):
            b.append("INBOX", None, None, msg(f"b{i}"))

    th = threading.Thread(target=writer)
    th.start()
    for i in range(10):
        mailsys.run("pymda.deliver", "-d", ALICE, "-f", "x@y", input=msg(f"d{i}"))
    th.join()
    a.noop()
    typ, data = a.fetch("1:*", "(UID)")
    uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
    assert len(uids) == 20 and uids == sorted(uids) and len(set(uids)) == 20


def test_big_append_streams_to_disk(mailsys):
    port = start_imapd(mailsys, "listen")
    pid = None
    for p in mailsys.procs:
        pid = p.pid
    m = login(port)
    body = (b"x" * 76 + b"\r\n") * (50 * 1024 * 1024 // 78)
    data = b"Subject: big\r\n\r\n" + body
    typ, resp = m.append("INBOX", None, None, data)
    assert typ == "OK"
    with open(f"/proc/{pid}/status") as fh:
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", fh.read()).group(1))
    assert hwm < 40 * 1024, f"peak RSS {hwm} kB"
    m.select("INBOX")
    typ, d = m.fetch("1", "(RFC822.SIZE)")
    assert d == [b"1 (RFC822.SIZE %d)" % len(data)]
    typ, d = m.fetch("1", "(BODY.PEEK[])")  # streamed back, the file read in job threads
    assert d[0][1] == data
    with open(f"/proc/{pid}/status") as fh:
        hwm = int(re.search(r"VmHWM:\s+(\d+) kB", fh.read()).group(1))
    assert hwm < 40 * 1024, f"peak RSS {hwm} kB"


def test_too_big_literal_refused_without_reading(make_mailsys):
    system = make_mailsys("[imapd]\nmax_literal = 1000\n")
    port = start_imapd(system, "inetd")
    m = login(port)
    s = m.sock
    s.sendall(b"a APPEND INBOX {5000000}\r\n")
    s.settimeout(5)
    assert s.recv(4096) == b"a NO [TOOBIG] Literal too big\r\n"
    s.sendall(b"b NOOP\r\n")
    assert s.recv(4096) == b"b OK NOOP completed\r\n"


# -- RFC 3501 to the letter (issue 13 section 1): exact responses, both start modes -----------------

BOTH = ["listen", "inetd"]


def exchange(m: imaplib.IMAP4, command: str) -> list[str]:
    """Send one command on an imaplib session; every line the server answers, exactly."""
    tag = m._new_tag().decode()
    m.send(f"{tag} {command}\r\n".encode())
    lines = []
    pending = b""
    while True:
        line = pending + m.readline()
        lit = re.search(rb"\{(\d+)\}\r\n$", line)
        if lit:
            pending = line + m.read(int(lit.group(1)))
            continue
        pending = b""
        lines.append(line.decode("utf-8", "replace").removesuffix("\r\n"))
        if line.startswith(tag.encode() + b" "):
            lines[-1] = lines[-1][len(tag) + 1 :]
            return lines


@pytest.mark.parametrize("mode", BOTH)
def test_brackets_in_atoms_and_mailbox_names(mailsys, mode):
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert exchange(m, "SELECT foo]bar") == ["NO [NONEXISTENT] Mailbox does not exist"]
    assert exchange(m, 'LIST "" foo[bar') == ["OK LIST completed"]
    assert exchange(m, "CREATE foo[bar") == ["OK CREATE completed"]
    assert exchange(m, 'LIST "" foo[bar') == ['* LIST (\\HasNoChildren) "/" "foo[bar"', "OK LIST completed"]
    assert exchange(m, "CREATE foo]bar") == ["OK CREATE completed"]
    odd = "!#$&-'+,-.0123456789:;<=>?@AZ[]^_`az|}~"
    assert m.create(odd) == ("OK", [b"CREATE completed"])  # imaplib sends it as an atom
    assert m.select(odd)[0] == "OK"
    assert m.select("foo]bar") == ("OK", [b"0"])
    assert exchange(m, 'LIST "" *[*') == [
        f'* LIST (\\HasNoChildren) "/" "{odd}"',
        '* LIST (\\HasNoChildren) "/" "foo[bar"',
        "OK LIST completed",
    ]
    # a FETCH section still parses, spaces and all
    m.append("foo]bar", None, None, msg("brackets"))
    assert exchange(m, "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.8>)") == [
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)]<0> {8}\r\nSubject:)",
        "OK FETCH completed",
    ]


@pytest.mark.parametrize("mode", BOTH)
def test_recent_for_append_copy_and_move(mailsys, mode):
    """RFC 3501 2.3.2: a message APPENDed, COPYed or MOVEd is \\Recent in the first session
    that sees it, and in no other (inetd: each session its own process)."""
    port = start_imapd(mailsys, mode)
    a, b, c, d = login(port), login(port), login(port), login(port)
    b.append("INBOX", None, None, msg("r1"))
    assert exchange(b, "STATUS INBOX (MESSAGES RECENT)") == [
        '* STATUS "INBOX" (MESSAGES 1 RECENT 1)',
        "OK STATUS completed",
    ]
    lines = exchange(a, "SELECT INBOX")
    assert "* 1 EXISTS" in lines and "* 1 RECENT" in lines
    assert exchange(a, "FETCH 1 FLAGS") == ["* 1 FETCH (FLAGS (\\Recent))", "OK FETCH completed"]
    assert exchange(a, "SEARCH RECENT") == ["* SEARCH 1", "OK SEARCH completed"]
    assert exchange(a, "SEARCH NEW") == ["* SEARCH 1", "OK SEARCH completed"]
    assert exchange(a, "SEARCH OLD") == ["* SEARCH", "OK SEARCH completed"]
    # a has it now: nobody else
    assert exchange(b, "STATUS INBOX (RECENT)") == ['* STATUS "INBOX" (RECENT 0)', "OK STATUS completed"]
    lines = exchange(b, "SELECT INBOX")
    assert "* 0 RECENT" in lines
    assert exchange(b, "FETCH 1 FLAGS") == ["* 1 FETCH (FLAGS ())", "OK FETCH completed"]
    assert exchange(b, "SEARCH OLD") == ["* SEARCH 1", "OK SEARCH completed"]
    # appended (by a session without it selected) while a and b have the mailbox selected:
    # the first to look gets it as \Recent
    c.append("INBOX", None, None, msg("r2"))
    assert exchange(a, "NOOP") == ["* 2 EXISTS", "* 2 RECENT", "OK NOOP completed"]
    assert exchange(a, "FETCH 2 FLAGS") == ["* 2 FETCH (FLAGS (\\Recent))", "OK FETCH completed"]
    assert exchange(b, "NOOP") == ["* 2 EXISTS", "* 0 RECENT", "OK NOOP completed"]
    # COPY and MOVE into another mailbox
    assert exchange(b, "COPY 1 Archive")[-1].startswith("OK [COPYUID ")
    assert exchange(b, "MOVE 2 Archive")[-1] == "OK MOVE completed"
    assert exchange(b, "STATUS Archive (MESSAGES RECENT)") == [
        '* STATUS "Archive" (MESSAGES 2 RECENT 2)',
        "OK STATUS completed",
    ]
    lines = exchange(c, "EXAMINE Archive")  # read-only: shows them, leaves them recent (RFC 3501 6.3.2)
    assert "* 2 RECENT" in lines
    assert exchange(c, "FETCH 1:* FLAGS") == [
        "* 1 FETCH (FLAGS (\\Recent))",
        "* 2 FETCH (FLAGS (\\Recent))",
        "OK FETCH completed",
    ]
    lines = exchange(d, "SELECT Archive")
    assert "* 2 EXISTS" in lines and "* 2 RECENT" in lines
    assert exchange(d, "SEARCH RECENT NEW") == ["* SEARCH 1 2", "OK SEARCH completed"]
    assert exchange(b, "STATUS Archive (MESSAGES RECENT)") == [
        '* STATUS "Archive" (MESSAGES 2 RECENT 0)',
        "OK STATUS completed",
    ]


@pytest.mark.parametrize("mode", BOTH)
def test_delete_keeps_the_subscription(mailsys, mode):
    """RFC 3501 6.3.9: DELETE does not unsubscribe; RFC 5258: LIST (SUBSCRIBED) says \\NonExistent."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    for command in ("CREATE gone", "SUBSCRIBE gone", "DELETE gone"):
        assert exchange(m, command) == [f"OK {command.split()[0]} completed"]
    assert exchange(m, 'LIST (SUBSCRIBED) "" gone') == [
        '* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" "gone"',
        "OK LIST completed",
    ]
    assert exchange(m, 'LSUB "" gone') == ['* LSUB () "/" "gone"', "OK LSUB completed"]
    assert exchange(m, 'LIST "" gone') == ["OK LIST completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_recursivematch_gives_childinfo(mailsys, mode):
    """RFC 5258 3.5: a parent whose child is subscribed gets CHILDINFO ("SUBSCRIBED"),
    listed even when not subscribed itself."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    for name in ("par/child", "top", "top/kid"):
        exchange(m, f"CREATE {name}")
        exchange(m, f"SUBSCRIBE {name}")
    exchange(m, "CREATE lone")
    exchange(m, "CREATE lone/kid")
    assert exchange(m, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%o%"') == [
        '* LIST (\\HasChildren \\Subscribed) "/" "top" ("CHILDINFO" ("SUBSCRIBED"))',
        "OK LIST completed",
    ]
    assert exchange(m, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "p%"') == [
        '* LIST (\\NonExistent \\HasChildren) "/" "par" ("CHILDINFO" ("SUBSCRIBED"))',
        "OK LIST completed",
    ]
    assert exchange(m, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')[-4:] == [
        '* LIST (\\HasNoChildren \\Subscribed) "/" "par/child"',
        '* LIST (\\HasChildren \\Subscribed) "/" "top" ("CHILDINFO" ("SUBSCRIBED"))',
        '* LIST (\\HasNoChildren \\Subscribed) "/" "top/kid"',
        "OK LIST completed",
    ]
    # without RECURSIVEMATCH: only what is subscribed, no CHILDINFO
    assert exchange(m, 'LIST (SUBSCRIBED) "" "%o%"') == [
        '* LIST (\\HasChildren \\Subscribed) "/" "top"',
        "OK LIST completed",
    ]


@pytest.mark.parametrize("mode", BOTH)
def test_uidvalidity_grows_for_every_recreated_mailbox(mailsys, mode):
    """DELETE + CREATE within one second, from different sessions (inetd: processes):
    UIDVALIDITY strictly greater each time."""
    port = start_imapd(mailsys, mode)
    seen = []
    for _ in range(4):
        m = login(port)
        exchange(m, "CREATE again")
        m.append("again", None, None, msg("uv"))
        lines = exchange(m, "STATUS again (UIDVALIDITY UIDNEXT)")
        uv, uidnext = re.match(r'\* STATUS "again" \(UIDVALIDITY (\d+) UIDNEXT (\d+)\)', lines[0]).groups()
        assert uidnext == "2"
        seen.append(int(uv))
        assert exchange(m, "DELETE again") == ["OK DELETE completed"]
        m.logout()
    assert seen == sorted(set(seen)), seen
    assert seen[0] >= int(time.time()) - 60


@pytest.mark.parametrize("mode", BOTH)
def test_envelope_name_from_comment(mailsys, mode):
    from pymda import maildir

    maildir.deliver(
        mailsys.maildir("alice"),
        b"From: user@domain (Real Name)\nTo: a@b (c1) (c2), <user-to (comment)@ (comment) domain.org>\n"
        b'Cc: "Q" <q@x> (ignored), grp: u@d (In Group);\nSubject: s\n\nx\n',
        fsync=False,
    )
    port = start_imapd(mailsys, mode)
    m = login(port)
    m.select("INBOX")
    assert exchange(m, "FETCH 1 ENVELOPE") == [
        '* 1 FETCH (ENVELOPE (NIL "s" (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain")) '
        '(("Real Name" NIL "user" "domain")) (("c2" NIL "a" "b")(NIL NIL "user-to" "domain.org")) '
        '(("Q" NIL "q" "x")(NIL NIL "grp" NIL)("In Group" NIL "u" "d")(NIL NIL NIL NIL)) NIL NIL NIL))',
        "OK FETCH completed",
    ]


# the messages of imaptest's search-addresses test, in our own words
ADDRESS_MESSAGES = [
    b"From: user-from@domain.org\nTo: user-to@domain.org\nCc: user-cc@domain.org\nBcc: user-bcc@domain.org\n\n1\n",
    b"From: RealFrom <user-from@domain.org>\nTo: RealTo <user-to@domain.org>\nCc: RealCc <user-cc@domain.org>\n"
    b"Bcc: RealBcc <user-bcc@domain.org>\n\n2\n",
    b"From: <user-from (comment)@ (comment) domain.org>\nTo: <user-to@domain.org>\nCc: <user-cc@domain.org>\n"
    b"Bcc: <user-bcc@domain.org>\n\n3\n",
    b"From: user-from@domain.org (RealFrom)\nTo: user-to@domain.org (RealTo)\nCc: user-cc@domain.org (RealCc)\n"
    b"Bcc: user-bcc@domain.org (RealBcc)\n\n4\n",
    b"From: user-from1@domain.org, user-from2@domain.org\nCc: user-cc@domain.org\n\n5\n",
    b"To: groupname: groupuser1@domain.org, groupuser2@domain.org;,\n  groupname2: groupuser3@domain.org;\n\n6\n",
    b"From: =?utf-8?q?Caf=C3=A9?= <user-x (c) @domain.org>\n\n7\n",
]
ADDRESS_SEARCHES = {
    "FROM user-from@domain.org": "1 2 3 4",
    "TO user-to@domain.org": "1 2 3 4",
    "BCC user-bcc@domain.org": "1 2 3 4",
    "FROM realfrom": "2 4",
    "CC ealc": "2 4",
    "FROM ser-fro": "1 2 3 4 5",
    "FROM user-from2": "5",
    "TO groupname2": "6",
    "TO groupuser3": "6",
    "TO groupuser4": "",
    'FROM "<user-from@domain.org>"': "1 2 3 4",
    'FROM "realfrom <user-from@"': "2 4",
    "FROM user-x@domain.org": "7",
    'FROM "caf\u00e9 <"': "7",
}


@pytest.mark.parametrize("mode", BOTH)
def test_search_addresses_as_envelope_parses_them(mailsys, mode):
    from pymda import maildir

    for data in ADDRESS_MESSAGES:
        maildir.deliver(mailsys.maildir("alice"), data, fsync=False)
    port = start_imapd(mailsys, mode)
    m = login(port)
    m.select("INBOX")
    for key, hits in ADDRESS_SEARCHES.items():
        charset = "CHARSET UTF-8 " if not key.isascii() else ""
        assert exchange(m, f"SEARCH {charset}{key}") == [f"* SEARCH {hits}".rstrip(), "OK SEARCH completed"], key


@pytest.mark.parametrize("mode", BOTH)
def test_new_keyword_from_another_session_announced_before_its_fetch(mailsys, mode):
    """RFC 3501 7.2.6: FLAGS (and PERMANENTFLAGS) naming a new keyword precede the FETCH using it."""
    port = start_imapd(mailsys, mode)
    a, b = login(port), login(port)
    b.append("INBOX", None, None, msg("kw"))
    a.select("INBOX")
    b.select("INBOX")
    assert exchange(b, "STORE 1 +FLAGS ($Urgent)") == [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Urgent)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Urgent \\*)] Flags permitted",
        "* 1 FETCH (FLAGS ($Urgent))",
        "OK STORE completed",
    ]
    assert exchange(a, "NOOP") == [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Urgent)",
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Urgent \\*)] Flags permitted",
        "* 1 FETCH (UID 1 FLAGS ($Urgent \\Recent))",
        "OK NOOP completed",
    ]
    assert exchange(a, "NOOP") == ["OK NOOP completed"]  # said once


@pytest.mark.parametrize("mode", BOTH)
def test_fetch_of_a_message_expunged_by_another_session(mailsys, mode):
    """RFC 2180 4.1.2 as Dovecot does it: the data still known, NIL for the text,
    OK [EXPUNGEISSUED] (RFC 5530); the EXPUNGE comes when it may."""
    port = start_imapd(mailsys, mode)
    a, b = login(port), login(port)
    for i in range(3):
        b.append("INBOX", None, None, msg(f"x{i}"))
    a.select("INBOX")
    b.select("INBOX")
    b.store("2", "+FLAGS.SILENT", "(\\Deleted)")
    b.expunge()
    assert exchange(a, "FETCH 2:3 (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        "* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE 138 BODY[HEADER.FIELDS (SUBJECT)] NIL)",
        "* 3 FETCH (UID 3 FLAGS (\\Recent) RFC822.SIZE 138 BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: x2\r\n\r\n)",
        "OK [EXPUNGEISSUED] Some messages were already expunged",
    ]
    assert exchange(a, "FETCH 2 (BODY[] BODYSTRUCTURE)") == [
        '* 2 FETCH (BODY[] NIL BODYSTRUCTURE ("text" "plain" NIL NIL NIL "7bit" 0 0 NIL NIL NIL NIL))',
        "OK [EXPUNGEISSUED] Some messages were already expunged",
    ]
    assert exchange(a, "NOOP") == ["* 2 EXPUNGE", "OK NOOP completed"]
    assert exchange(a, "FETCH 2 (UID)") == ["* 2 FETCH (UID 3)", "OK FETCH completed"]


def _imap_raw(port: int, user: str) -> socket.socket:
    """A logged-in session on a plain socket, INBOX selected (answers read by _answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    _answer(sock, b"")
    sock.sendall(b'l LOGIN "%s" "%s"\r\n' % (user.encode(), PASSWORD.encode()))
    _answer(sock, b"l")
    sock.sendall(b"s SELECT INBOX\r\n")
    _answer(sock, b"s")
    return sock


def _answer(sock: socket.socket, tag: bytes, timeout: float = 30.0) -> bytes:
    """Everything up to the tagged line of ``tag`` (b"": the greeting)."""
    sock.settimeout(timeout)
    buf = b""
    end = tag + b" " if tag else b"* OK"
    while not (buf.startswith(end) or b"\r\n" + end in buf) or not buf.endswith(b"\r\n"):
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed: {buf!r}")
        buf += data
    return buf


def test_a_held_index_lock_stalls_only_its_own_session(make_mailsys):
    """No disk I/O or lock wait on the event loop: while another process holds
    alice's INBOX index lock for 5 s and alice's NOOP waits for it, bob's
    sessions in the same imapd process answer NOOP and FETCH within 100 ms."""
    import subprocess
    import sys

    system = make_mailsys("[imapd]\nprocesses = 1\n")
    port = start_imapd(system, "listen")
    for user in ("alice", "bob"):
        m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        m.login(f"{user}@example.test", PASSWORD)
        for i in range(3):
            m.append("INBOX", None, None, msg(f"{user}{i}"))
        m.logout()
    alice = _imap_raw(port, ALICE)
    bobs = [_imap_raw(port, "bob@example.test") for _ in range(2)]
    lock = system.maildir("alice") / "pymail-index.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(5)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        held_at = time.monotonic()
        # a new message in new/: alice's next look at her INBOX needs the lock
        (system.maildir("alice") / "new" / "1700000000.M1P1.host,S=20,W=21").write_bytes(b"Subject: late\n\nhello\n")
        alice.sendall(b"n NOOP\r\n")
        time.sleep(0.2)  # alice's NOOP is waiting for the lock now
        worst = 0.0
        rounds = 0
        while time.monotonic() - held_at < 3.5:
            for i, bob in enumerate(bobs):
                t = time.monotonic()
                bob.sendall(b"a%d NOOP\r\n" % rounds)
                assert b"OK NOOP completed" in _answer(bob, b"a%d" % rounds)
                bob.sendall(b"f%d FETCH 1:3 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n" % rounds)
                got = _answer(bob, b"f%d" % rounds)
                assert b"Subject: bob%d" % i in got and b"OK FETCH completed" in got
                worst = max(worst, time.monotonic() - t)
            rounds += 1
        assert rounds > 5
        assert worst < 0.1, f"bob waited {worst:.3f} s while alice's index was locked"
        # alice's NOOP is answered once the lock is free, with the new message
        got = _answer(alice, b"n", timeout=30)
        assert time.monotonic() - held_at >= 4.5
        assert b"* 4 EXISTS" in got and b"n OK NOOP completed" in got
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(("inotify", "poll"), [(True, 60.0), (False, 0.2)])
def test_idle_by_inotify_and_by_polling(make_mailsys, inotify, poll):
    """With inotify (the default) IDLE hears of new mail, flag changes and expunges
    at once although the poll interval is a minute; with imapd.idle_inotify off it
    polls every imapd.idle_poll seconds."""
    system = make_mailsys(
        f"[imapd]\nprocesses = 1\nidle_poll = {poll}\nidle_inotify = {'true' if inotify else 'false'}\n"
    )
    port = start_imapd(system, "listen")
    other = login(port)
    other.append("INBOX", None, None, msg("first"))
    idlers = [_imap_raw(port, ALICE) for _ in range(3)]  # one watch, shared
    for n, sock in enumerate(idlers):
        sock.sendall(b"i%d IDLE\r\n" % n)
        assert _answer(sock, b"+") == b"+ idling\r\n"

    def seen_by_all(pattern: bytes, within: float) -> None:
        t = time.monotonic()
        for sock in idlers:
            sock.settimeout(max(0.05, within - (time.monotonic() - t)))
            buf = b""
            while not re.search(pattern, buf):
                try:
                    buf += sock.recv(4096)
                except TimeoutError:
                    raise AssertionError(f"{pattern!r} not seen in {within} s: {buf!r}") from None

    time.sleep(0.3)
    r = system.run("pymda.deliver", "-d", ALICE, "-f", "ann@example.org", input=msg("second"))
    assert r.returncode == 0, r.stderr
    seen_by_all(rb"\* 2 EXISTS\r\n", 1.5)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Flagged $Work)")  # the keyword lives only in the index file
    seen_by_all(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Flagged \$Work( \\Recent)?\)\)", 1.5)
    other.store("2", "+FLAGS", "(\\Deleted)")
    other.expunge()
    seen_by_all(rb"\* 2 EXPUNGE\r\n", 1.5)
    for n, sock in enumerate(idlers):
        sock.sendall(b"DONE\r\n")
        assert b"i%d OK IDLE terminated" % n in _answer(sock, b"i%d" % n)
        sock.sendall(b"n NOOP\r\n")
        assert _answer(sock, b"n") == b"n OK NOOP completed\r\n"


def test_idle_sessions_of_a_mailbox_share_one_look(make_mailsys):
    """Sessions idling on one mailbox in one listening imapd are woken by one shared
    look: each sees the same EXISTS, every new message is \\Recent in exactly one
    session, a message landing during the burst is seen too, and the sessions
    idling on another mailbox hear nothing.  (The driver's part, one look per
    burst: tests/unit/test_driver_watch.py.)"""
    system = make_mailsys("[imapd]\nprocesses = 1\nidle_poll = 60\n")
    port = start_imapd(system, "listen")
    other = login(port)
    other.append("INBOX", None, None, msg("first"))
    bob = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    bob.login("bob@example.test", PASSWORD)
    bob.append("INBOX", None, None, msg("bob's"))
    alices = [_imap_raw(port, ALICE) for _ in range(5)]
    bobs = [_imap_raw(port, "bob@example.test") for _ in range(2)]
    for n, sock in enumerate(alices + bobs):
        sock.sendall(b"i%d IDLE\r\n" % n)
        assert _answer(sock, b"+") == b"+ idling\r\n"
    time.sleep(0.3)
    r = system.run("pymda.deliver", "-d", ALICE, "-f", "ann@example.org", input=msg("second"))
    assert r.returncode == 0, r.stderr
    # another message right behind it, while the sessions are being told of the first
    (system.maildir("alice") / "new" / "1700000001.M1P1.host,S=20,W=21").write_bytes(b"Subject: third\n\nhello\n")
    for sock in alices:
        sock.settimeout(3)
        buf = b""
        while b"* 3 EXISTS\r\n" not in buf:
            try:
                buf += sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"3 EXISTS not seen: {buf!r}") from None
        assert b"EXPUNGE" not in buf
    for sock in bobs:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    recent: dict[int, int] = {}
    for n, sock in enumerate(alices + bobs):
        sock.sendall(b"DONE\r\nf FETCH 1:* (UID FLAGS)\r\n")
        got = _answer(sock, b"f")
        assert b"i%d OK IDLE terminated" % n in got and b"f OK FETCH completed" in got
        if sock in alices:
            assert len(re.findall(rb"\* \d+ FETCH", got)) == 3
            for uid in re.findall(rb"\(UID (\d+) FLAGS \([^)]*\\Recent", got):
                recent[int(uid)] = recent.get(int(uid), 0) + 1
    assert recent == {1: 1, 2: 1, 3: 1}  # each message \Recent in exactly one session


def esearch(m: imaplib.IMAP4, command: str) -> list[str]:
    """exchange() with the command's own tag in ``(TAG "...")`` written as ``(TAG "t")``."""
    return [re.sub(r'^\* ESEARCH \(TAG "[^"]*"\)', '* ESEARCH (TAG "t")', x) for x in exchange(m, command)]


@pytest.mark.parametrize("mode", BOTH)
def test_esearch(mailsys, mode):
    """RFC 4731: SEARCH RETURN (MIN MAX COUNT ALL) (in Dovecot's order: MIN MAX ALL COUNT),
    UID SEARCH RETURN, RETURN () = ALL, compact sequence sets, COUNT 0 and nothing else when nothing matches."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    for i in range(6):
        m.append("INBOX", "(\\Seen)" if i in (0, 1, 2, 4) else None, None, msg(f"e{i}"))
    assert "ESEARCH" in exchange(m, "CAPABILITY")[0].split()
    exchange(m, "SELECT INBOX")
    assert esearch(m, "SEARCH RETURN (MIN MAX COUNT ALL) SEEN") == [
        '* ESEARCH (TAG "t") MIN 1 MAX 5 ALL 1:3,5 COUNT 4',
        "OK SEARCH completed",
    ]
    assert esearch(m, "SEARCH RETURN () SEEN") == ['* ESEARCH (TAG "t") ALL 1:3,5', "OK SEARCH completed"]
    assert esearch(m, "SEARCH RETURN (COUNT) UNSEEN") == ['* ESEARCH (TAG "t") COUNT 2', "OK SEARCH completed"]
    assert esearch(m, "SEARCH RETURN (MIN ALL) DELETED") == ['* ESEARCH (TAG "t")', "OK SEARCH completed"]
    assert esearch(m, "SEARCH RETURN (COUNT MIN) DELETED") == [
        '* ESEARCH (TAG "t") COUNT 0',
        "OK SEARCH completed",
    ]
    assert esearch(m, "UID SEARCH RETURN (MAX MIN) 2:*") == [
        '* ESEARCH (TAG "t") UID MIN 2 MAX 6',
        "OK SEARCH completed",
    ]
    assert esearch(m, "UID SEARCH RETURN (ALL) CHARSET UTF-8 SUBJECT e") == [
        '* ESEARCH (TAG "t") UID ALL 1:6',
        "OK SEARCH completed",
    ]
    assert esearch(m, "SEARCH RETURN (FOO) ALL")[-1].startswith("BAD ")
    assert esearch(m, "SEARCH ALL") == ["* SEARCH 1 2 3 4 5 6", "OK SEARCH completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_searchres(mailsys, mode):
    """RFC 5182: SEARCH RETURN (SAVE) keeps the result for ``$`` in FETCH, STORE, COPY, MOVE,
    SEARCH and their UID forms; SAVE alone sends no ESEARCH; expunged messages drop out;
    SELECT, EXAMINE, UNSELECT and CLOSE empty it."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    for i in range(5):
        m.append("INBOX", "(\\Seen)" if i in (1, 3) else None, None, msg(f"s{i}"))
    assert "SEARCHRES" in exchange(m, "CAPABILITY")[0].split()
    exchange(m, "SELECT INBOX")
    assert exchange(m, "SEARCH RETURN (SAVE) SEEN") == ["OK SEARCH completed"]
    assert exchange(m, "FETCH $ (UID)") == ["* 2 FETCH (UID 2)", "* 4 FETCH (UID 4)", "OK FETCH completed"]
    assert exchange(m, "UID FETCH $ (FLAGS)") == [
        "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))",
        "* 4 FETCH (UID 4 FLAGS (\\Seen \\Recent))",
        "OK FETCH completed",
    ]
    assert exchange(m, "SEARCH $") == ["* SEARCH 2 4", "OK SEARCH completed"]
    assert exchange(m, "UID SEARCH UID $ SUBJECT s3") == ["* SEARCH 4", "OK SEARCH completed"]
    assert esearch(m, "SEARCH RETURN (SAVE COUNT) NOT $") == ['* ESEARCH (TAG "t") COUNT 3', "OK SEARCH completed"]
    assert exchange(m, "STORE $ +FLAGS.SILENT (\\Flagged)") == ["OK STORE completed"]
    assert exchange(m, "SEARCH FLAGGED") == ["* SEARCH 1 3 5", "OK SEARCH completed"]
    assert exchange(m, "COPY $ Archive")[-1].startswith("OK [COPYUID ")
    assert exchange(m, "UID MOVE $ Archive")[1:] == ["* 1 EXPUNGE", "* 2 EXPUNGE", "* 3 EXPUNGE", "OK MOVE completed"]
    assert exchange(m, "SEARCH ALL") == ["* SEARCH 1 2", "OK SEARCH completed"]
    assert exchange(m, "FETCH $ (UID)") == ["OK FETCH completed"]  # all moved away
    exchange(m, "SEARCH RETURN (SAVE) ALL")
    assert exchange(m, "SEARCH $") == ["* SEARCH 1 2", "OK SEARCH completed"]
    exchange(m, "EXAMINE INBOX")
    assert exchange(m, "SEARCH $") == ["* SEARCH", "OK SEARCH completed"]
    exchange(m, "SEARCH RETURN (SAVE) ALL")
    exchange(m, "UNSELECT")
    exchange(m, "SELECT INBOX")
    assert exchange(m, "SEARCH $") == ["* SEARCH", "OK SEARCH completed"]


@pytest.mark.parametrize("mode", BOTH)
def test_list_status_and_status_size(mailsys, mode):
    """RFC 5819 LIST ... RETURN (STATUS (...)): a STATUS after each selectable mailbox's LIST;
    RFC 8438 STATUS SIZE: the sum of the messages' RFC822.SIZE."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    a, b = msg("z1"), msg("z2", body="Longer body here.\r\n" * 3)
    m.append("INBOX", None, None, a)
    m.append("INBOX", "(\\Seen)", None, b)
    assert exchange(m, "CREATE Work") == ["OK CREATE completed"]
    assert "STATUS=SIZE" in exchange(m, "CAPABILITY")[0].split()
    assert exchange(m, "STATUS INBOX (MESSAGES SIZE)") == [
        f'* STATUS "INBOX" (MESSAGES 2 SIZE {len(a) + len(b)})',
        "OK STATUS completed",
    ]
    assert exchange(m, "STATUS Work (SIZE)") == ['* STATUS "Work" (SIZE 0)', "OK STATUS completed"]
    lines = exchange(m, 'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    assert lines[-1] == "OK LIST completed"
    i = lines.index('* LIST (\\HasNoChildren) "/" "INBOX"')
    assert lines[i + 1] == f'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1 SIZE {len(a) + len(b)})'
    i = lines.index('* LIST (\\HasNoChildren) "/" "Work"')
    assert lines[i + 1] == '* STATUS "Work" (MESSAGES 0 UNSEEN 0 SIZE 0)'
    # a \Noselect parent gets no STATUS
    assert exchange(m, "CREATE P/c") == ["OK CREATE completed"]
    assert exchange(m, 'LIST "" "P*" RETURN (STATUS (MESSAGES))') == [
        '* LIST (\\Noselect \\HasChildren) "/" "P"',
        '* LIST (\\HasNoChildren) "/" "P/c"',
        '* STATUS "P/c" (MESSAGES 0)',
        "OK LIST completed",
    ]


@pytest.mark.parametrize("mode", BOTH)
def test_create_special_use(mailsys, mode):
    """RFC 6154 CREATE (USE (...)): special uses follow from the name here, so the name's own
    use is accepted and any other refused with NO [USEATTR], creating nothing."""
    port = start_imapd(mailsys, mode)
    m = login(port)
    assert "CREATE-SPECIAL-USE" in exchange(m, "CAPABILITY")[0].split()
    for name in ("Sent", "Trash", "Junk", "Drafts", "Archive"):  # the fixture's, made anew here
        assert exchange(m, f"DELETE {name}") == ["OK DELETE completed"]
    assert exchange(m, "CREATE Sent (USE (\\Sent))") == ["OK CREATE completed"]
    assert exchange(m, "CREATE Trash (USE ())") == ["OK CREATE completed"]
    assert exchange(m, "CREATE Stuff (USE (\\Drafts))") == [
        "NO [USEATTR] Only the special use that goes with the name can be given"
    ]
    assert exchange(m, "CREATE Junk (USE (\\Junk \\Trash))")[0].startswith("NO [USEATTR] ")
    assert exchange(m, 'LIST "" "*" RETURN (SPECIAL-USE)') == [
        '* LIST (\\HasNoChildren) "/" "INBOX"',
        '* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        '* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
        "OK LIST completed",
    ]
    assert exchange(m, "CREATE X (FOO)")[0].startswith("BAD ")
