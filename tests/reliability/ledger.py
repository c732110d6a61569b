"""Account for every message of a crash or soak run.

A run makes each message from a *token* (``make_message``): the token is in
the Message-ID, the Subject and an ``X-Crash-Token:`` header, and the body
is derived from the token alone (sha256-seeded lines, some long, some with
leading dots, ending with an ``END <token>`` line), so any copy found later
can be checked byte for byte: a truncated, torn or altered copy is
*corrupted*.

The load generator records what the system acknowledged (``Ledger.ack``:
SMTP 250 after DATA, sendmail / pymta-queue exit 0, IMAP APPEND OK) and
what clients took away before deleting it (``Ledger.consumed``: POP3 RETR
before DELE, IMAP FETCH before EXPUNGE).  ``Ledger.scan`` then looks at the
whole tree -- every Maildir folder (new/ and cur/), the relay sink's
received messages, the bounces, the queue -- and returns a ``Report``:

* lost: acknowledged, but no copy anywhere and no bounce naming it (must be 0);
* duplicated: more than one copy (reported; a crash may repeat a delivery);
* corrupted: a copy whose body or size does not match (must be 0);
* unreadable: a file in new/ or cur/ that is not a complete message, a
  ``pymail-index`` that ``pymda.index`` cannot read, a committed queue
  entry ``pymta.queue`` cannot open (must be empty).

Usage::

    ledger = Ledger()
    token = ledger.token("smtp-local")
    data = make_message(token, "dave@example.test", "alice@example.test")
    ... send data; on 250: ledger.ack(token, "smtp-local")
    report = ledger.scan(root, sink=[(rcpts, bytes), ...])
    print(report.summary()); assert report.ok
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_HEADER = b"X-Crash-Token: "
_TOKEN_RE = re.compile(rb"^X-Crash-Token: ([A-Za-z0-9_-]+)$", re.MULTILINE)
_LINE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_=+/()"


# -- messages ----------------------------------------------------------------------


def body_for(token: str) -> bytes:
    """The body (LF line ends) that belongs to ``token``; deterministic."""
    rng = random.Random(int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big"))
    lines = []
    for _i in range(rng.randint(5, 60)):
        kind = rng.random()
        if kind < 0.1:
            n = rng.randint(200, 990)  # long lines, under the 998 limit
        elif kind < 0.15:
            n = 0
        else:
            n = rng.randint(1, 78)
        text = "".join(rng.choice(_LINE_CHARS) for _ in range(n)).rstrip()
        if rng.random() < 0.12:
            text = "." + text  # leading dots: SMTP dot-stuffing must round-trip
        if rng.random() < 0.03:
            text = "."  # a lone dot line
        lines.append(text)
    lines.append(f"END {token}")
    return ("\n".join(lines) + "\n").encode()


def make_message(token: str, sender: str, recipient: str) -> bytes:
    """A complete RFC 5322 message for ``token`` with LF line ends."""
    head = (
        f"From: <{sender}>\nTo: <{recipient}>\nSubject: crash test {token}\n"
        f"Message-ID: <{token}@crash.invalid>\nDate: Sat, 28 Nov 2026 09:00:00 +0000\n"
        f"X-Crash-Token: {token}\n\n"
    )
    return head.encode() + body_for(token)


def crlf(data: bytes) -> bytes:
    """LF -> CRLF (for smtplib/imaplib, which want CRLF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def check_message(data: bytes) -> tuple[str | None, str]:
    """(token, problem) for one stored or received copy.

    ``token`` is None when the message carries no token (a bounce, a
    notice); ``problem`` is "" when the copy is complete and intact.
    """
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    m = _TOKEN_RE.search(head)
    if m is None:
        if not sep:
            return None, "no header/body separator"
        return None, ""
    token = m.group(1).decode()
    if not sep:
        return token, "truncated in the header"
    if (
        f"Message-ID: <{token}@crash.invalid>".encode() not in head
        or f"Subject: crash test {token}".encode() not in head
    ):
        return token, "header damaged"
    expected = body_for(token)
    if body != expected:
        if expected.startswith(body):
            return token, f"truncated body ({len(body)} of {len(expected)} octets)"
        return token, "body differs"
    return token, ""


def is_bounce(data: bytes) -> bool:
    head = data.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    return b"report-type=delivery-status" in head and b"From: Mail Delivery System" in head


def bounced_tokens(data: bytes) -> list[str]:
    """Tokens named in a DSN's returned headers (text/rfc822-headers part)."""
    data = data.replace(b"\r\n", b"\n")
    part = data.partition(b"Content-Type: text/rfc822-headers")[2]
    return [m.decode() for m in _TOKEN_RE.findall(part)]


def bounce_complete(data: bytes) -> bool:
    """A DSN ends with its closing MIME boundary: anything else is torn."""
    data = data.replace(b"\r\n", b"\n")
    m = re.search(rb'boundary="([^"]+)"', data)
    return bool(m) and data.rstrip(b"\n").endswith(b"--" + m.group(1) + b"--")


# -- the ledger ----------------------------------------------------------------------


@dataclass
class Report:
    acked: dict = field(default_factory=dict)  # kind -> count
    delivered: int = 0
    bounced: int = 0
    lost: list = field(default_factory=list)  # tokens
    duplicated: dict = field(default_factory=dict)  # token -> copies
    duplicated_kinds: dict = field(default_factory=dict)  # kind -> duplicated tokens
    duplicated_where: dict = field(default_factory=dict)  # local / remote / mixed -> duplicated tokens
    corrupted: list = field(default_factory=list)  # (token or None, where, problem)
    unreadable: list = field(default_factory=list)  # (path, problem)
    unacked_found: int = 0  # not acknowledged, yet delivered (allowed)
    queue_left: list = field(default_factory=list)  # committed entries still queued
    copies_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.corrupted and not self.unreadable

    def summary(self) -> str:
        lines = [
            "acknowledged: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.acked.items()))
            + f" (total {sum(self.acked.values())})",
            f"delivered: {self.delivered}  bounced: {self.bounced}  copies checked: {self.copies_checked}"
            f"  unacknowledged but delivered: {self.unacked_found}",
            f"lost: {len(self.lost)}  duplicated: {len(self.duplicated)}  corrupted: {len(self.corrupted)}"
            f"  unreadable: {len(self.unreadable)}  left in queue: {len(self.queue_left)}",
        ]
        if self.lost:
            lines.append("  lost tokens: " + " ".join(self.lost[:50]))
        if self.duplicated:
            lines.append(
                "  duplicated by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(self.duplicated_kinds.items()))
            )
            lines.append(
                "  duplicated where: "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.duplicated_where.items()))
                + "  (redelivered: two Maildir copies of one queue entry; resubmitted: the client sent it"
                " again after a lost answer; remote: two at the relay; mixed: delivered and bounced)"
            )
            lines.append("  duplicated: " + " ".join(f"{t}x{n}" for t, n in list(self.duplicated.items())[:30]))
        for item in self.corrupted[:50]:
            lines.append(f"  corrupted: {item}")
        for item in self.unreadable[:50]:
            lines.append(f"  unreadable: {item}")
        for item in self.queue_left[:20]:
            lines.append(f"  still queued: {item}")
        return "\n".join(lines)


class Ledger:
    """Thread-safe record of tokens made, acknowledged and consumed."""

    def __init__(self, prefix: str = "t") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._n = 0
        self.kinds: dict[str, str] = {}  # token -> kind (every token made)
        self.acked: dict[str, str] = {}  # token -> kind
        self.consumed: dict[str, list] = {}  # token -> [(how, identity)]
        self.corrupt_seen: list = []  # problems seen by clients while consuming
        self.torn_seen: list = []  # (path, problem) from peek() during the run

    def token(self, kind: str) -> str:
        """A new unique token for a message of ``kind``."""
        with self._lock:
            self._n += 1
            token = f"{self.prefix}{self._n:06d}{os.urandom(3).hex()}"
            self.kinds[token] = kind
        return token

    def ack(self, token: str, kind: str | None = None) -> None:
        """The system acknowledged ``token`` (250, exit 0, APPEND OK)."""
        with self._lock:
            self.acked[token] = kind or self.kinds.get(token, "?")

    def consumed_copy(self, data: bytes, how: str, identity: str) -> str | None:
        """A client retrieved ``data`` before deleting it (POP3 RETR, IMAP FETCH).

        ``identity`` names the stored copy (POP3: the UIDL, which is the
        Maildir base name; IMAP: folder/uidvalidity/uid).  Returns the token.
        """
        token, problem = check_message(data)
        with self._lock:
            if problem:
                self.corrupt_seen.append((token, f"{how} {identity}", problem))
            if token is not None:
                self.consumed.setdefault(token, []).append((how, identity))
        return token

    # -- accounting ---------------------------------------------------------------

    def scan(self, root: Path, sink: list | None = None, queue_dir: Path | None = None) -> Report:
        """Account for every acknowledged token; see the module docstring.

        ``root`` is the mail store (MAIL/, holding <domain>/<user>/ Maildirs);
        ``sink`` is a list of (recipients, message bytes) the relay sink
        accepted; ``queue_dir`` the queue, whose committed entries must open.
        """
        from pymda import maildir as md

        report = Report()
        copies: dict[str, set] = {}  # token -> identities of stored/received copies
        bounces: dict[str, int] = {}
        report.corrupted.extend(self.corrupt_seen)
        report.unreadable.extend(self.torn_seen)

        from pypop.maildrop import uidl_for

        def add_copy(token, identity):
            copies.setdefault(token, set()).add(identity)

        for folder in _folders(Path(root)):
            for sub, name in md.list_messages(folder):
                path = folder / sub / name
                problem = ""
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    report.unreadable.append((str(path), f"cannot read: {exc}"))
                    continue
                _, fields, _ = md.parse_name(name)
                if fields.get("S", "").isdigit() and int(fields["S"]) != len(data):
                    problem = f"S={fields['S']} but {len(data)} octets on disk"
                elif fields.get("W", "").isdigit() and int(fields["W"]) != md.crlf_size(data):
                    problem = f"W={fields['W']} but CRLF size {md.crlf_size(data)}"
                report.copies_checked += 1
                if is_bounce(data):
                    if not bounce_complete(data):
                        report.corrupted.append((None, str(path), "torn bounce"))
                    for t in bounced_tokens(data):
                        bounces[t] = bounces.get(t, 0) + 1
                    continue
                token, why = check_message(data)
                problem = problem or why
                if problem:
                    if token is None:
                        report.unreadable.append((str(path), problem))
                    else:
                        report.corrupted.append((token, str(path), problem))
                    continue
                if token is not None:
                    add_copy(token, ("maildir", uidl_for(name.partition(":")[0])))  # as POP3 names it
            _check_index(folder, report)

        for i, (_rcpts, data) in enumerate(sink or []):
            report.copies_checked += 1
            token, problem = check_message(data)
            if problem:
                report.corrupted.append((token, f"relay sink message {i}", problem))
            elif token is not None:
                add_copy(token, ("sink", i))

        for token, records in self.consumed.items():
            for how, identity in records:
                if how == "pop3":
                    add_copy(token, ("maildir", identity))  # UIDL: the base name, or its unique part past 70
                elif not any(k == "maildir" for k, _ in copies.get(token, ())):
                    add_copy(token, (how, identity))  # gone from the store: the fetched copy counts

        if queue_dir is not None:
            _check_queue(Path(queue_dir), report)

        for token, kind in self.acked.items():
            report.acked[kind] = report.acked.get(kind, 0) + 1
            n = len(copies.get(token, ()))
            if n:
                report.delivered += 1
            elif bounces.get(token):
                report.bounced += 1
            else:
                report.lost.append(token)
            if n + bounces.get(token, 0) > 1:
                report.duplicated[token] = n + bounces.get(token, 0)
                report.duplicated_kinds[kind] = report.duplicated_kinds.get(kind, 0) + 1
                report.duplicated_where[where_repeated(copies.get(token, ()))] = (
                    report.duplicated_where.get(where_repeated(copies.get(token, ())), 0) + 1
                )
        report.unacked_found = sum(1 for t in copies if t not in self.acked)
        return report


def where_repeated(copies) -> str:
    """Why a token has more than one copy.  ``redelivered``: two Maildir files
    carry the same queue tag (``V<queue ID><recipient hash>``), the runner
    delivered one entry twice -- what pymail promises not to do; ``resubmitted``:
    Maildir copies from different queue entries or IMAP APPENDs (a client that
    lost the answer sent it again); ``remote``: two copies at the relay."""
    import re

    tags = [
        m[1]
        for how, name in copies
        if how == "maildir" and isinstance(name, str)
        for m in [re.search(r"V([0-9A-Za-z]+)\.", name)]
        if m
    ]
    if len(tags) != len(set(tags)):
        return "redelivered"
    local = sum(1 for how, _ in copies if how != "sink")
    if local > 1:
        return "resubmitted"
    return "remote" if len(copies) - local > 1 else "mixed"


def peek(mail_root: Path, queue_dir: Path | None, rng: random.Random, limit: int = 40) -> list:
    """Look at up to ``limit`` random files now visible in new/ and cur/ of
    every folder and in the queue's new/, deferred/ and hold/: each must
    be complete the moment it is visible (the Maildir size must match its
    S=, a queue entry must open and hold an intact message).  Returns
    (path, problem) pairs; run it while the load and the kills go on."""
    from pymda import maildir as md

    problems = []
    files = []
    for folder in _folders(Path(mail_root)):
        files.extend(("maildir", folder / sub / name) for sub, name in md.list_messages(folder))
    if queue_dir is not None:
        from pymta.queue import Queue

        queue = Queue(queue_dir)
        files.extend(("queue", path) for _where, path in queue.all_entries())
    for kind, path in rng.sample(files, min(limit, len(files))):
        try:
            if kind == "maildir":
                _, fields, _ = md.parse_name(path.name)
                size = os.stat(path).st_size
                if fields.get("S", "").isdigit():
                    if int(fields["S"]) != size:
                        problems.append((str(path), f"visible with {size} of S={fields['S']} octets"))
                    continue
                token, problem = check_message(path.read_bytes())
            else:
                from pymta.queue import CorruptEntry

                try:
                    entry = queue.open_entry(path, lock=False)
                except CorruptEntry as exc:
                    problems.append((str(path), f"visible queue entry unreadable: {exc.reason}"))
                    continue
                if entry is None:
                    continue
                with entry:
                    token, problem = check_message(entry.read_message())
            if problem and token is not None:
                problems.append((str(path), f"visible copy: {problem}"))
        except FileNotFoundError:
            continue  # moved or removed meanwhile
    return problems


def _folders(mail_root: Path):
    """Every Maildir (INBOX and Maildir++ folders) under MAIL/<domain>/<user>/."""
    for domain in sorted(p for p in mail_root.iterdir() if p.is_dir()):
        for user in sorted(p for p in domain.iterdir() if p.is_dir()):
            if (user / "cur").is_dir() or (user / "new").is_dir():
                yield user
            for sub in sorted(user.iterdir()):
                if sub.is_dir() and sub.name.startswith(".") and sub.name not in (".", ".."):
                    yield sub


def _check_index(folder: Path, report: Report) -> None:
    from pymda.index import INDEX_NAME, FolderIndex

    if not (folder / INDEX_NAME).exists():
        return
    try:
        snap = FolderIndex(folder).read()
    except Exception as exc:  # any failure to read is what we look for
        report.unreadable.append((str(folder / INDEX_NAME), f"{type(exc).__name__}: {exc}"))
        return
    if snap is None:
        report.unreadable.append((str(folder / INDEX_NAME), "pymda.index cannot parse it"))
        return
    try:
        FolderIndex(folder).sync()
    except Exception as exc:
        report.unreadable.append((str(folder / INDEX_NAME), f"sync failed: {type(exc).__name__}: {exc}"))


def _state_note(queue, queue_id: str) -> str:
    """Why an entry is still queued: each recipient's status, attempts and last reason."""
    state = queue.read_state(queue_id) or {}
    rcpts = state.get("rcpts") or []
    return (
        "".join(
            f" [{r.get('to')}: {r.get('status')} x{r.get('attempts')} {r.get('reason', '')!r}]"
            for r in rcpts
            if isinstance(r, dict)
        )
        or " [no state]"
    )


def _check_queue(queue_dir: Path, report: Report) -> None:
    from pymta.queue import CorruptEntry, Queue

    queue = Queue(queue_dir)
    for where, path in queue.all_entries():
        try:
            entry = queue.open_entry(path, lock=False)
        except CorruptEntry as exc:
            report.unreadable.append((str(path), f"queue entry: {exc.reason}"))
            continue
        if entry is None:
            continue
        with entry:
            token, problem = check_message(entry.read_message())
        if problem:
            report.corrupted.append((token, str(path), "queued copy: " + problem))
        report.queue_left.append(f"{where}/{path.name}{_state_note(queue, path.name)}")
    corrupt = queue_dir / "corrupt"
    for name in os.listdir(corrupt) if corrupt.is_dir() else []:
        report.unreadable.append((str(corrupt / name), "quarantined by the runner"))
