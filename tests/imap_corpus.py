"""A deterministic corpus of real-looking messages for comparing pyimap-imapd with Dovecot.

``messages()`` gives the same list of ``(data, internal_date)`` every time (a seeded
``random.Random``; no clock, no environment): at least 200 messages with LF line ends.

What it holds, so that SORT, THREAD, SEARCH, ESEARCH, FETCH BINARY, ENVELOPE and
BODYSTRUCTURE all meet the awkward cases:

- threads: Message-ID / In-Reply-To / References chains several levels deep, replies whose
  parent is missing from the mailbox, References naming a parent's parent only, a loop,
  duplicate Message-IDs, replies with only In-Reply-To, subjects of replies with ``Re:``,
  ``RE :``, ``Fwd:``, ``Fw:``, ``[list]`` tags, ``(fwd)`` trailers and ``[Fwd: ...]`` wrapping;
- encoded words (RFC 2047) in several charsets (UTF-8, ISO-8859-1, ISO-8859-2, ISO-8859-15,
  windows-1252, KOI8-R, Shift_JIS, GB2312, ISO-2022-JP), B and Q, in subjects and names,
  some split across words, some malformed;
- attachments: multipart/mixed with base64 parts (binary data), quoted-printable text,
  multipart/alternative inside mixed, nested message/rfc822 (forwarded mail, itself multipart);
- broken headers: no Date, unparseable dates, dates with odd zones, a From that is no address,
  an empty From, no From at all, duplicate Subject/From/Date, 8-bit bytes in headers (UTF-8
  and Latin-1), folded headers, a header with no colon line, very long subjects.

``deliver_all(maildir_path)`` writes them into ``new/`` of a Maildir in order (names that sort
in delivery order, so every server numbers them alike) and sets each file's mtime to its
internal date (INTERNALDATE, the fallback sent date of SORT and THREAD).
"""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

SEED = 20240611
BASE_TIME = 1_700_000_000  # 2023-11-14: internal dates run forwards from here

FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj"]
LAST = ["Martin", "Bernard", "Dubois", "Müller", "Schmidt", "Nowak", "Kowalski", "Rossi", "García", "Søren"]
DOMAINS = ["example.org", "mail.example.com", "lists.example.net", "corp.example", "uni.example.edu"]
# (charset, a string that charset can carry)
WORDS = [
    ("utf-8", "Réunion d'équipe — ordre du jour"),
    ("iso-8859-1", "Café crème à volonté"),
    ("iso-8859-2", "Zażółć gęślą jaźń"),
    ("iso-8859-15", "Prix en €uros"),
    ("windows-1252", "“Smart” quotes – and dashes"),
    ("koi8-r", "Привет, мир"),
    ("shift_jis", "会議の議事録"),
    ("gb2312", "会议纪要"),
    ("iso-2022-jp", "お知らせ"),
    ("utf-8", "Ελληνικά και 日本語 😀"),
]
TOPICS = [
    "Quarterly report",
    "Lunch on Friday?",
    "Build failure on main",
    "Server migration plan",
    "Holiday schedule",
    "Invoice 2023-118",
    "Conference travel",
    "Patch review: fix the parser",
    "Office move",
    "Minutes of the board meeting",
    "New hire onboarding",
    "Password policy update",
    "Budget draft v2",
    "Weekend hike",
    "Release notes 4.2",
    "Printer on 3rd floor",
]
LISTS = ["[dev]", "[announce]", "[Users]", "[ops-team]"]
ZONES = ["+0000", "-0700", "+0100", "+0530", "-0330", "+1400", "-1200", "+0200", "GMT", "EST", "UT"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class _Gen:
    def __init__(self) -> None:
        self.r = random.Random(SEED)
        self.out: list[tuple[bytes, int]] = []
        self.idate = BASE_TIME
        self.ids: list[str] = []  # every Message-ID given out, to refer to later

    # -- small parts ----------------------------------------------------------------------

    def person(self, encoded: bool = False) -> tuple[str, str]:
        first, last = self.r.choice(FIRST), self.r.choice(LAST)
        mailbox = f"{first.lower()}.{self.r.randrange(100)}"
        domain = self.r.choice(DOMAINS)
        return f"{first} {last}", f"{mailbox}@{domain}"

    def address(self) -> str:
        name, addr = self.person()
        style = self.r.randrange(6)
        if style == 0:
            return addr
        if style == 1:
            return f"<{addr}>"
        if style == 2:
            return f"{addr} ({name})"
        if style == 3 or name.isascii():
            return f'"{name}" <{addr}>' if style == 3 else f"{name} <{addr}>"
        return f"{self.encode_word(name, 'utf-8', self.r.choice('BQ'))} <{addr}>"

    def addresses(self, most: int) -> str:
        return ", ".join(self.address() for _ in range(self.r.randint(1, most)))

    def encode_word(self, text: str, charset: str, kind: str = "B") -> str:
        if charset == "iso-2022-jp" or kind == "B":
            raw = text.encode(charset)
            return f"=?{charset}?B?{base64.b64encode(raw).decode()}?="
        return _q_word(text, charset)

    def date(self, when: int) -> str:
        zone = self.r.choice(ZONES)
        import time

        t = time.gmtime(when)
        day = f"{DAYS[t.tm_wday]}, " if self.r.randrange(4) else ""
        return f"{day}{t.tm_mday} {MONTHS[t.tm_mon - 1]} {t.tm_year} {t.tm_hour:02}:{t.tm_min:02}:{t.tm_sec:02} {zone}"

    def msgid(self) -> str:
        i = f"<{len(self.ids)}.{self.r.randrange(10**8):08d}@{self.r.choice(DOMAINS)}>"
        self.ids.append(i)
        return i

    def body(self, lines: int = 3) -> str:
        words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
        return "".join(
            " ".join(self.r.choice(words) for _ in range(self.r.randint(3, 12))) + "\n" for _ in range(lines)
        )

    def add(self, headers: list[tuple[str, str | bytes]], body: bytes | str, idate_step: int | None = None) -> None:
        step = idate_step if idate_step is not None else self.r.randint(30, 20000)
        self.idate += step
        head = b"".join(
            (name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("utf-8")) + b"\n")
            for name, value in headers
        )
        self.out.append((head + b"\n" + (body if isinstance(body, bytes) else body.encode("utf-8")), self.idate))

    def common(self, subject: str | bytes, when: int | None = None) -> list[tuple[str, str | bytes]]:
        when = when if when is not None else self.idate + self.r.randint(-86400 * 3, 3600)
        return [
            ("From", self.address()),
            ("To", self.addresses(2)),
            *([("Cc", self.addresses(3))] if self.r.randrange(3) == 0 else []),
            ("Subject", subject),
            ("Date", self.date(when)),
        ]

    # -- kinds of message -----------------------------------------------------------------

    def thread(self, topic: str, size: int) -> None:
        """A discussion: each reply names its parent (and its ancestry, mostly), some parents
        are never delivered, some replies only carry In-Reply-To."""
        tag = self.r.choice(LISTS) + " " if self.r.randrange(3) == 0 else ""
        posted: list[tuple[str, list[str]]] = []  # (message-id, references)
        for n in range(size):
            mid = self.msgid()
            if n == 0:
                subject, refs = tag + topic, []
            else:
                parent_id, parent_refs = self.r.choice(posted[-4:])
                refs = parent_refs + [parent_id]
                prefix = self.r.choice(["Re: ", "RE: ", "Re: ", "re: ", "Re:Re: ", "Re[2]: ", "AW: ", "Re : ", "Fwd: "])
                subject = (tag + prefix + topic) if self.r.randrange(2) else (prefix + tag + topic)
            posted.append((mid, refs))
            if n and self.r.randrange(7) == 0:
                continue  # this one never arrives: its replies have a missing parent
            headers = self.common(subject)
            headers.append(("Message-ID", mid))
            if refs:
                style = self.r.randrange(5)
                if style == 0:
                    headers.append(("In-Reply-To", refs[-1]))
                elif style == 1:
                    headers.append(("References", " ".join(refs[-1:])))
                elif style == 2 and len(refs) > 1:
                    headers.append(("References", "\n\t".join(refs[:-1])))  # the parent's parent only
                    headers.append(("In-Reply-To", f"{refs[-1]} (Ann's message of today)"))
                else:
                    headers.append(("In-Reply-To", refs[-1]))
                    headers.append(("References", "\n ".join(refs)))
            self.add(headers, "> quoted\n" + self.body())

    def encoded(self, i: int) -> None:
        charset, text = WORDS[i % len(WORDS)]
        kind = "BQ"[i % 2]
        word = self.encode_word(text, charset, kind)
        prefix = ["", "Re: ", "Fwd: ", "[announce] ", "=?utf-8?Q?Re:?= "][i % 5]
        subject = prefix + word + [" (fwd)", "", " tail"][i % 3]
        headers = self.common(subject)
        name, addr = self.person()
        headers[0] = ("From", f"{self.encode_word(name, 'iso-8859-1' if name.isascii() else 'utf-8', kind)} <{addr}>")
        headers.append(("Message-ID", self.msgid()))
        headers.append(("MIME-Version", "1.0"))
        headers.append(("Content-Type", f'text/plain; charset="{charset}"'))
        headers.append(("Content-Transfer-Encoding", "8bit"))
        self.add(headers, (text + "\n").encode(charset, "replace") + self.body().encode())

    def attachment(self, i: int) -> None:
        b = f"----=_Part_{i}_{self.r.randrange(10**6)}"
        headers = self.common(self.r.choice(["Scan", "Photos", "Your documents", "Contract"]) + f" #{i}")
        headers += [
            ("Message-ID", self.msgid()),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/mixed; boundary="{b}"'),
        ]
        blob = bytes(self.r.randrange(256) for _ in range(self.r.randint(40, 1500)))
        b64 = base64.encodebytes(blob).decode()
        alt = f"alt{i}"
        parts = [
            f"--{b}\nContent-Type: multipart/alternative; boundary={alt}\n\n"
            f"--{alt}\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
            f"Bonjour, voici le fichier =E0 lire.=\n soft break\n"
            f"--{alt}\nContent-Type: text/html; charset=utf-8\n\n<p>Bonjour</p>\n--{alt}--\n",
            f'--{b}\nContent-Type: application/octet-stream; name="data{i}.bin"\n'
            f'Content-Disposition: attachment; filename="data{i}.bin"\nContent-Transfer-Encoding: base64\n\n{b64}',
            f'--{b}\nContent-Type: image/png; name="=?utf-8?B?{base64.b64encode("résumé.png".encode()).decode()}?="\n'
            "Content-Disposition: attachment;\n filename*=utf-8''r%C3%A9sum%C3%A9.png\n"
            "Content-Transfer-Encoding: base64\n\n"
            f"{base64.encodebytes(blob[:64]).decode()}",
        ]
        if i % 2:  # a forwarded message, itself multipart
            inner_b = f"inner{i}"
            inner = (
                f"From: {self.address()}\nTo: {self.address()}\nSubject: Re: {self.r.choice(TOPICS)}\n"
                f"Date: {self.date(self.idate - 86400 * 9)}\nMessage-ID: {self.msgid()}\nMIME-Version: 1.0\n"
                f"Content-Type: multipart/mixed; boundary={inner_b}\n\n--{inner_b}\nContent-Type: text/plain\n\n"
                f"inner text\n--{inner_b}\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
                f"{base64.encodebytes(blob[:200]).decode()}--{inner_b}--\n"
            )
            parts.append(f"--{b}\nContent-Type: message/rfc822\nContent-Disposition: inline\n\n{inner}")
        self.add(headers, "This is a multi-part message in MIME format.\n" + "".join(parts) + f"--{b}--\n")

    def forwarded(self, i: int) -> None:
        """A forward whose subject is wrapped: [Fwd: ...], and one nested message/rfc822."""
        topic = self.r.choice(TOPICS)
        subject = [
            f"[Fwd: {topic}]",
            f"Fwd: [Fwd: Re: {topic}]",
            f"[fwd: [dev] {topic}] (fwd)",
            f"Fw: {topic} (fwd) (FWD)",
            f"[Fwd: {topic}] extra",
            f"Re: [Fwd: {topic}]",
        ][i % 6]
        headers = self.common(subject)
        headers += [("Message-ID", self.msgid()), ("MIME-Version", "1.0"), ("Content-Type", "message/rfc822")]
        inner = f"From: {self.address()}\nSubject: {topic}\nDate: {self.date(self.idate - 3600)}\n\nforwarded body\n"
        self.add(headers, inner)

    def broken(self, i: int) -> None:
        """Each with a fault of its own."""
        mid = ("Message-ID", self.msgid())
        kind = i % 16
        when = self.idate + self.r.randint(-86400, 0)
        good_date = ("Date", self.date(when))
        if kind == 0:  # no Date at all: the internal date stands in
            self.add([("From", self.address()), ("Subject", "no date here"), mid], self.body())
        elif kind == 1:
            self.add([("From", self.address()), ("Subject", "bad date"), ("Date", "yesterday at noon"), mid], "x\n")
        elif kind == 2:
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "date out of range"),
                    ("Date", "Mon, 32 Foo 2023 25:61:00 +9999"),
                    mid,
                ],
                "x\n",
            )
        elif kind == 3:
            self.add([("From", "this is not an address"), ("Subject", "unparseable from"), good_date, mid], "x\n")
        elif kind == 4:
            self.add([("From", ""), ("Subject", "empty from"), good_date, mid], "x\n")
        elif kind == 5:
            self.add([("Subject", "no from at all"), ("To", self.address()), good_date, mid], "x\n")
        elif kind == 6:
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "first subject"),
                    ("Subject", "second subject"),
                    ("From", self.address()),
                    good_date,
                    ("Date", self.date(when - 86400 * 30)),
                    mid,
                ],
                "duplicated headers\n",
            )
        elif kind == 7:  # raw UTF-8 in headers (RFC 6532 style)
            self.add(
                [("From", "Jürgen Groß <jürgen@bücher.example>"), ("Subject", "Grüße aus Köln"), good_date, mid],
                "8bit\n",
            )
        elif kind == 8:  # raw Latin-1 in headers
            self.add(
                [
                    ("From", "Ren\xe9 <rene@example.org>".encode("latin-1")),
                    ("Subject", "Re: caf\xe9 cr\xe8me".encode("latin-1")),
                    good_date,
                    mid,
                ],
                "x\n",
            )
        elif kind == 9:  # a malformed encoded word and one with an unknown charset
            self.add(
                [
                    ("From", "=?utf-8?B?!!!notbase64?= <x@example.org>"),
                    ("Subject", "=?x-unknown?Q?strange?= and =?utf-8?Q?bro ken?="),
                    good_date,
                    mid,
                ],
                "x\n",
            )
        elif kind == 10:  # folded, with tabs and runs of spaces
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "  Folded\n\tsubject   with\n    lots   of  space  "),
                    good_date,
                    mid,
                ],
                "x\n",
            )
        elif kind == 11:  # empty subject, and only a reply prefix
            self.add([("From", self.address()), ("Subject", "Re:" if i % 32 == 11 else ""), good_date, mid], "x\n")
        elif kind == 12:  # a very long subject
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "Long " + " ".join(self.r.choice(TOPICS) for _ in range(20))),
                    good_date,
                    mid,
                ],
                "x\n",
            )
        elif kind == 13:  # a date with no zone, two-digit year, and lower case
            self.add(
                [("From", self.address()), ("Subject", "two-digit year"), ("Date", "tue, 5 mar 24 08:00:00"), mid],
                "x\n",
            )
        elif kind == 14:  # references that loop back and a duplicate Message-ID
            dup = self.ids[self.r.randrange(len(self.ids))]
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "Re: loop"),
                    good_date,
                    ("Message-ID", dup),
                    ("References", f"{dup} <loop-a@x> <loop-b@x> <loop-a@x>"),
                ],
                "x\n",
            )
        else:  # a body with no header/body separator issue: header line without a colon
            self.add(
                [
                    ("From", self.address()),
                    ("Subject", "odd header line"),
                    good_date,
                    mid,
                    ("X-Broken", "value\nthis line has no colon"),
                ],
                "x\n",
            )

    def build(self) -> list[tuple[bytes, int]]:
        topics = TOPICS[:]
        self.r.shuffle(topics)
        for n, topic in enumerate(topics):
            self.thread(topic, self.r.randint(2, 12) if n % 4 else 1)
            self.encoded(n)
            self.attachment(n)
            if n % 2 == 0:
                self.forwarded(n // 2)
            for k in range(2):
                self.broken(2 * n + k)
        for n in range(len(topics), 40):
            self.encoded(n)
            if n % 3 == 0:
                self.broken(n)
            self.thread(self.r.choice(TOPICS), self.r.randint(1, 4))
        return self.out


def _q_word(text: str, charset: str) -> str:
    raw = text.encode(charset)
    q = "".join(
        chr(c) if (0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) else "_" if c == 0x20 else f"={c:02X}"
        for c in raw
    )
    return f"=?{charset}?Q?{q}?="


def messages() -> list[tuple[bytes, int]]:
    """The corpus: ``(message with LF line ends, internal date as epoch seconds)``."""
    return _Gen().build()


def deliver_all(maildir: Path | str) -> int:
    """Write the corpus into ``maildir/new`` (created if needed), names sorting in order,
    mtimes set to the internal dates; returns how many."""
    new = Path(maildir) / "new"
    for sub in ("cur", "new", "tmp"):
        (Path(maildir) / sub).mkdir(parents=True, exist_ok=True)
    corpus = messages()
    for n, (data, idate) in enumerate(corpus):
        path = new / f"{idate}.M{n:06d}P1.corpus"
        path.write_bytes(data)
        os.utime(path, (idate, idate))
    return len(corpus)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: imap_corpus.py MAILDIR", file=sys.stderr)
        raise SystemExit(64)
    print(deliver_all(sys.argv[1]))
