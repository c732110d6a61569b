"""sendmail, mailq, newaliases: the sendmail-compatible command line.

::

    sendmail [options] [--] [recipient ...]  < message
    mailq                                     (= sendmail -bp)
    newaliases                                (= sendmail -bi)

Two doors into the queue:

* A caller that can write the queue (root, the mail user) enqueues directly
  through ``pymta.queue`` -- the same code smtpd and pymta-queue use.
* Any other local user writes into the *maildrop* folder (``pymta.maildrop``,
  which also holds the runner's side: the pickup and its checks).

A message is either queued (exit 0) or the caller gets a non-zero sysexits
code and a message on stderr -- never dropped.  sendmail checks the limits
the runner applies (``smtpd.max_message_size``, counted while reading;
``smtpd.max_recipients``; address syntax) before it exits; a maildrop file
the runner still refuses (written or grown by hand) is bounced to its
owner (``pymta.maildrop_bounce``).  Missing ``From:``,
``Date:`` and ``Message-ID:`` headers are added; ``-t`` takes recipients
from To/Cc/Bcc and removes Bcc.
"""

from __future__ import annotations

import os
import re
import sys
import time

from pymta.lib import log, sysexits
from pymta.lib.address import origin_domain, qualify
from pymta.lib.cliargs import UsageError, getopt
from pymta.maildrop import MaildropQueue, poke, received_field, user_name

# Postfix sendmail's getopt string (-q is made a flag: see parse_args)
_GETOPT = "A:B:C:F:L:N:O:R:V:X:b:e:f:h:o:p:r:qGIUcimntvx"
MAX_HEADER_BLOCK = 1024 * 1024


class Options:
    def __init__(self) -> None:
        self.mode = "m"  # -b mode: m (deliver), s (SMTP), p (mailq), i (newaliases)
        self.extract = False
        self.dot_ends = True
        self.sender = None
        self.full_name = None
        self.config = None
        self.verbose = False
        self.delivery = "b"  # -od: i, b, q
        self.run_queue = False
        self.notify = None
        self.body = None
        self.recipients: list[str] = []


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    # -q takes only a joined value (-q30m, -qIqid): run the queue now
    words = ["-q" if w.startswith("-q") else w for w in argv]
    given, opts.recipients = getopt(words, _GETOPT)
    for name, value in given:
        letter = name[1]
        if letter == "t":
            opts.extract = True
        elif letter == "i":
            opts.dot_ends = False
        elif letter == "v":
            opts.verbose = True
        elif letter == "I":
            opts.mode = "i"
        elif letter == "q":
            opts.run_queue = True
        elif letter in "fr":
            opts.sender = value
        elif letter == "F":
            opts.full_name = value
        elif letter == "C":
            opts.config = value
        elif letter == "N":
            opts.notify = value.lower()
        elif letter == "B":
            if value.upper() not in ("7BIT", "8BITMIME"):
                raise UsageError(f"-B {value}: must be 7BIT or 8BITMIME")
            opts.body = value.upper()
        elif letter == "b":
            if value not in ("m", "s", "p", "i", "d", "v"):
                raise UsageError(f"-b{value}: unsupported mode")
            opts.mode = value
        elif letter == "o":
            if value == "i":
                opts.dot_ends = False
            elif value.startswith("d") and value[1:2] in ("i", "b", "q", "d", ""):
                opts.delivery = {"d": "q", "": "b"}.get(value[1:2], value[1:2])
            # -oem, -oep, -oeq, -oew, -om, -oX... are accepted and ignored (as Postfix does)
        # -A -L -O -R -V -X -e -h -p and -G -U -c -m -n -x: accepted, ignored
    return opts


# -- the message --------------------------------------------------------------------------


def read_message(stream, dot_ends: bool, limit: int | None = None) -> bytes:
    """stdin -> LF message; a line '.' ends it unless -i.

    Counts while reading: past ``limit`` octets it raises TooBig and reads
    no further (a script piping endless output must not fill memory).
    Reading also stops at the ending dot, as Postfix's sendmail does.
    """
    from pymta.lib.lineends import crlf_to_lf  # noqa: PLC0415 lazy
    from pymta.lib.sizelimit import TooBig  # noqa: PLC0415 lazy

    data = bytearray()
    for chunk in crlf_to_lf(stream):
        searched = max(0, len(data) - 2)  # a "\n.\n" may straddle two reads
        data += chunk
        if dot_ends:
            if data.startswith(b".\n"):
                return b""
            cut = data.find(b"\n.\n", searched)
            if cut >= 0:
                del data[cut + 1 :]
                break
        if limit is not None and len(data) > limit:
            raise TooBig(limit)
    if dot_ends:
        if data == b".":
            return b""
        if data.endswith(b"\n."):
            del data[-1:]
    if limit is not None and len(data) > limit:
        raise TooBig(limit)
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return bytes(data)


def split_headers(data: bytes) -> tuple[list[bytes], bytes]:
    """(header fields with their continuation lines, the rest: blank line + body).

    The header block ends at the first empty line, or at the first line that
    is neither a field nor a continuation (then a blank line is inserted).
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(data) and pos < MAX_HEADER_BLOCK:
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if line in (b"\n", b""):
            return fields, data[pos:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif not fields and pos == 0 and line.startswith(b"From "):
            pass  # an mbox "From " line at the top is dropped
        else:
            name = line.split(b":", 1)[0]
            if b":" not in line or not name or any(c <= 32 or c > 126 for c in name):
                return fields, b"\n" + data[pos:] if fields else data[pos:]
            fields.append(line if line.endswith(b"\n") else line + b"\n")
        pos = end
    return fields, data[pos:]


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("latin-1").lower()


_EMPTY_GROUP = re.compile(r"\s*[^:;<>@\"]*:\s*;\s*")  # "undisclosed-recipients:;"


def recipients_from_headers(fields: list[bytes]) -> list[str]:
    """To/Cc/Bcc (or the Resent- ones) addresses; ValueError for a field whose addresses cannot be read."""
    from email.utils import getaddresses  # noqa: PLC0415 lazy

    values = []
    resent = any(_name(f) in ("resent-to", "resent-cc", "resent-bcc") for f in fields)
    names = ("resent-to", "resent-cc", "resent-bcc") if resent else ("to", "cc", "bcc")
    for f in fields:
        if _name(f) in names:
            values.append(f.split(b":", 1)[1].decode("utf-8", "replace").replace("\n", " "))
    for value in values:
        # an address the parser cannot read comes back empty: refuse it rather than drop that recipient
        if any(not addr for _, addr in getaddresses([value])) and not _EMPTY_GROUP.fullmatch(value):
            raise ValueError(f"cannot read the recipient addresses in {value.strip()[:200]!r}")
    return [addr for _, addr in getaddresses(values) if addr]


def complete_headers(
    fields: list[bytes], sender: str, full_name: str | None, hostname: str, remove_bcc: bool
) -> list[bytes]:
    from email.utils import formatdate, make_msgid  # noqa: PLC0415 lazy

    if remove_bcc:
        fields = [f for f in fields if _name(f) not in ("bcc", "resent-bcc")]
    present = {_name(f) for f in fields}
    added = []
    if "from" not in present:
        if full_name:
            safe = full_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
            added.append(f'From: "{safe}" <{sender}>\n'.encode())
        else:
            added.append(f"From: {sender}\n".encode())
    if "date" not in present:
        added.append(f"Date: {formatdate(localtime=True)}\n".encode())
    if "message-id" not in present:
        added.append(f"Message-ID: {make_msgid(domain=hostname)}\n".encode())
    return fields + added


# Fields whose bare user names get the local domain (Postfix's append_at_myorigin
# rewrites the same ones in locally submitted mail).
ADDRESS_FIELDS = frozenset(
    ("from", "sender", "reply-to", "to", "cc", "bcc", "errors-to", "return-receipt-to")
    + ("resent-from", "resent-sender", "resent-reply-to", "resent-to", "resent-cc", "resent-bcc")
)
_SPECIALS = '()<>,;:"'


def _bare_names(value: str) -> list[int]:
    """Where ``@domain`` goes after each bare user name in an address list
    (``carol``, ``root (Cron Daemon)``, ``Carol <carol>``): positions in
    ``value``.  Quoted strings and comments are skipped; a group's display
    name (``undisclosed-recipients:;``) is no address."""
    found: list[int] = []
    item: list[tuple[str, int, int]] = []  # (kind, start, end) of the current address's words and specials

    def close() -> None:
        words = [t for t in item if t[0] != "comment"]
        if "<" in [k for k, _, _ in words]:
            i = [k for k, _, _ in words].index("<")
            inner = words[i + 1 : i + 2] if i + 2 < len(words) and words[i + 2][0] == ">" else []
        else:
            inner = words if len(words) == 1 else []
        if inner and inner[0][0] == "word" and "@" not in value[inner[0][1] : inner[0][2]]:
            found.append(inner[0][2])
        item.clear()

    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c.isspace():
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            item.append(("quoted", i, min(j + 1, n)))
            i = j + 1
        elif c == "(":
            depth, j = 0, i
            while j < n:
                if value[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(value[j], 0)
                j += 1
                if depth == 0:
                    break
            item.append(("comment", i, j))
            i = j
        elif c in ",;":
            close()
            i += 1
        elif c == ":":
            item.clear()  # a group's display name
            i += 1
        elif c in _SPECIALS:
            item.append((c, i, i + 1))
            i += 1
        else:
            j = i
            while j < n and not value[j].isspace() and value[j] not in _SPECIALS:
                j += 1
            item.append(("word", i, j))
            i = j
    close()
    return found


def qualify_header_addresses(fields: list[bytes], domain: str) -> list[bytes]:
    """``To: carol`` -> ``To: carol@DOMAIN`` in the address fields (ADDRESS_FIELDS)."""
    out = []
    for field in fields:
        if _name(field) not in ADDRESS_FIELDS:
            out.append(field)
            continue
        name, _, raw = field.partition(b":")
        value = raw.decode("utf-8", "surrogateescape")
        for pos in reversed(_bare_names(value)):
            value = f"{value[:pos]}@{domain}{value[pos:]}"
        out.append(name + b":" + value.encode("utf-8", "surrogateescape"))
    return out


def can_write_queue(cfg) -> bool:
    from pymta.queue import Queue  # noqa: PLC0415 lazy

    return Queue(cfg.queue_dir).writable()


# -- mailq ------------------------------------------------------------------------------------


def format_mailq(queue) -> str:
    """Postfix's mailq layout: ID (+ '*' active, '!' held), size, arrival, sender; recipients with reasons."""
    from pymta.recipient import BOUNCED, SENT  # noqa: PLC0415 lazy

    entries = queue.all_entries()
    if not entries:
        return "Mail queue is empty\n"
    out = [f"{'-Queue ID-':<20} {'--Size--':>8} {'----Arrival Time----':<20} -Sender/Recipient-------"]
    total = 0
    shown = 0
    for where, path in entries:
        entry = queue.open_entry(path, lock=False)
        if entry is None:
            continue
        with entry:
            env = entry.envelope
            size = entry.size
        total += size
        shown += 1
        mark = {"hold": "!", "new": "*"}.get(where, " ")
        arrival = time.strftime("%a %b %e %H:%M:%S", time.localtime(env.arrival))  # "Dec  4", as Postfix's
        out.append(f"{env.queue_id + mark:<20} {size:>8} {arrival:<20} {env.sender or 'MAILER-DAEMON'}")
        reason = env.meta.get("hold_reason") if where == "hold" else None
        if isinstance(reason, str) and reason:  # a milter's quarantine (pymta.milters)
            out.append(f"{'':51}(held: {reason[:200]})")
        state = queue.load_state(env.queue_id)
        if state:
            by_reason: dict[str, list[str]] = {}
            for r in state.rcpts:
                if r.state in (SENT, BOUNCED):
                    continue
                by_reason.setdefault(r.reason.text, []).append(r.to)
            for reason, rcpts in by_reason.items():
                if reason:
                    out.append(f"{'':51}({reason[:200]})")
                out += [f"{'':51}{r}" for r in rcpts]
        else:
            out += [f"{'':51}{r}" for r in env.recipients]
        out.append("")
    out.append(f"-- {(total + 1023) // 1024} Kbytes in {shown} Request{'s' if shown != 1 else ''}.")
    return "\n".join(out) + "\n"


def mailq(cfg, prog: str = "mailq") -> int:
    """-bp: the queue read directly by those who may (root, the mail user);
    anyone else gets the same listing from the running queue runner
    through ``.mailq`` in the maildrop (Postfix's showq service)."""
    from pymta.queue import Queue  # noqa: PLC0415 lazy

    try:
        sys.stdout.write(format_mailq(Queue(cfg.queue_dir)))
        return sysexits.EX_OK
    except PermissionError as exc:
        denied = exc
    from pymta.maildrop import ask_runner_for_mailq, folder  # noqa: PLC0415 lazy

    try:
        sys.stdout.write(ask_runner_for_mailq(folder(cfg)))
    except OSError as exc:
        print(
            f"{prog}: fatal: cannot read the queue ({denied.filename}: permission denied), "
            f"and the queue runner does not answer: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return sysexits.EX_UNAVAILABLE
    return sysexits.EX_OK


# -- main ---------------------------------------------------------------------------------------


def _load_config(path):
    from pymta.lib import config  # noqa: PLC0415 lazy

    try:
        return config.load(path)
    except config.ConfigError as exc:
        for key, message in exc.problems:
            print(f"sendmail: fatal: {key}: {message}", file=sys.stderr)
        return None


def _default_sender(cfg) -> str:
    return qualify(cfg, user_name(os.getuid()))


def _door(cfg):
    """The queue itself for trusted callers, else the maildrop."""
    from pymta.queue import Queue  # noqa: PLC0415 lazy

    if can_write_queue(cfg):
        return Queue(cfg.queue_dir), True
    return MaildropQueue(cfg.root / cfg["sendmail.maildrop"]), False


def run_queue(cfg) -> int:
    """-q: every deferred entry is due now (``Queue.flush``, each under its
    lock), and the running runner is woken; with no runner listening, one
    pass of ``pymta-qrunner --once`` runs before sendmail exits.  A user
    who cannot write the queue only wakes the runner's pickup."""
    from pymta.queue import Queue  # noqa: PLC0415 lazy

    if not can_write_queue(cfg):
        poke(cfg.root / cfg["sendmail.maildrop"])
        return sysexits.EX_OK
    queue = Queue(cfg.queue_dir)
    queue.flush()
    if not queue.wake():
        return run_qrunner_once(cfg)
    return sysexits.EX_OK


def run_qrunner_once(cfg, *queue_ids: str) -> int:
    """No runner listens: ``pymta-qrunner --once [ID...]`` as a child, waited for.

    A child, not the runner in this process: the runner's identity rules
    (``daemon_user``) and its imports stay its own."""
    import subprocess  # noqa: PLC0415 lazy

    argv = [sys.executable, "-m", "pymta.qrunner", "--once", *queue_ids]
    if cfg.path is not None:
        argv[3:3] = ["-C", str(cfg.path)]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        print(f"sendmail: warning: cannot run the queue runner: {exc}", file=sys.stderr)
        return sysexits.EX_OK  # the message is queued: the runner delivers it when it starts
    if done.returncode != 0:
        print(f"sendmail: warning: pymta-qrunner --once exited {done.returncode}", file=sys.stderr)
    return sysexits.EX_OK


def newaliases(cfg) -> int:
    from pymta.aliases import check, parse  # noqa: PLC0415 lazy

    path = cfg.path_of("aliases")
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        print(f"newaliases: fatal: {path}: {exc.strerror}", file=sys.stderr)
        return sysexits.EX_OSFILE
    table, _ = parse(text, str(path))
    problems = check(text, str(path))  # syntax, plus targets that cannot work (empty |, unreadable :include:)
    for lineno, message in problems:
        print(f"newaliases: warning: {path}, line {lineno}: {message}", file=sys.stderr)
    print(f"newaliases: {path}: {len(table)} aliases (read directly; no database to rebuild)", file=sys.stderr)
    # as Postfix's: a bad line is a warning, and the rest is used (pymail skips that line when it reads the file)
    return sysexits.EX_OK


def verify(cfg, addresses: list[str], out=None) -> int:
    """-bv: each recipient's delivery route on stdout, nothing sent.

    The recipients go through the aliases and the routing the queue runner
    uses: a local user (and the Maildir), a ``|command`` or file target, or
    a remote next hop (the transport map, the relay host, or the domain's
    MX hosts, looked up).  Exit 0 when every one is deliverable; else 67
    when one is not (unknown user, bad domain), 75 when one cannot be told
    now (DNS or the users file unavailable).  Postfix mails the same report
    to the sender; pymail prints it.
    """
    from pymda.maildir import user_maildir  # noqa: PLC0415 lazy
    from pymta.aliases import Aliases  # noqa: PLC0415 lazy
    from pymta.lib.address import valid_envelope_address  # noqa: PLC0415 lazy
    from pymta.lib.users import UsersFile, UsersUnavailable  # noqa: PLC0415 lazy
    from pymta.recipient import expand  # noqa: PLC0415 lazy
    from pymta.routing import RouteError, resolve, route  # noqa: PLC0415 lazy

    out = out or sys.stdout
    users = UsersFile(cfg.path_of("users"))
    aliases = Aliases(cfg.path_of("aliases"))

    def is_local(address: str) -> bool:
        return cfg.is_local_domain(address.rpartition("@")[2])

    worst = sysexits.EX_OK

    def report(address: str, ok: bool | None, text: str) -> None:
        # ok None: cannot be told now (temporary)
        nonlocal worst
        verdict = "deliverable" if ok else "undeliverable" if ok is False else "deferred"
        out.write(f"{address}: {verdict}: {text}\n")
        if ok is False:
            worst = sysexits.EX_NOUSER
        elif ok is None and worst == sysexits.EX_OK:
            worst = sysexits.EX_TEMPFAIL

    for address in addresses:
        if not valid_envelope_address(address):
            report(address, False, "bad address syntax")
            continue
        for rcpt in expand(aliases, is_local, [address], set()):
            via = f"{address} -> {rcpt.to}" if rcpt.to.lower() != address.lower() else address
            if rcpt.kind in ("error", "defer"):
                report(address, False if rcpt.kind == "error" else None, rcpt.verdict)
            elif rcpt.kind == "pipe":
                report(address, True, f"alias command |{rcpt.to}")
            elif rcpt.kind == "file":
                report(address, True, f"alias {'maildir' if rcpt.to.endswith('/') else 'mbox file'} {rcpt.to}")
            elif is_local(rcpt.to):
                try:
                    record = users.lookup(rcpt.to)
                except (UsersUnavailable, OSError) as exc:
                    report(via, None, f"local domain; cannot read the users file: {exc}")
                    continue
                if record is None:
                    report(via, False, "5.1.1 unknown user")
                    continue
                box = user_maildir(cfg.mail_dir, record.address)
                report(via, True, f"local user {record.address}, Maildir {box}/")
            else:
                hop = route(cfg, rcpt.to.rpartition("@")[2])
                how = {"transport": "relay.transport_map", "relay": "relay.host", "mx": "MX of"}[hop.kind]
                try:
                    resolve(cfg, hop)
                except RouteError as exc:
                    report(via, None if exc.temporary else False, f"smtp via {how} {hop.nexthop}: {exc}")
                    continue
                hosts = ", ".join(f"{host}[{ip}]:{port}" for host, ip, port in hop.hosts)
                report(via, True, f"smtp via {how} {hop.nexthop}: {hosts}")
    return worst


def smtp_session(cfg) -> int:
    from pymta.lib.driver_blocking import serve_pipes  # noqa: PLC0415 lazy
    from pymta.smtpd import build  # noqa: PLC0415 lazy

    door, direct = _door(cfg)
    # an ordinary user cannot read the users file: local recipients are
    # checked by the runner (unknown ones bounce), as Postfix's sendmail -bs does
    serve_pipes(build(cfg, "local", queue=door, check_local_recipients=direct)())
    return sysexits.EX_OK


def _too_big(limit: int) -> int:
    # Postfix's sendmail: "Message file too big", EX_UNAVAILABLE (cleanup's size status)
    print(f"sendmail: fatal: message file too big (smtpd.max_message_size is {limit} octets)", file=sys.stderr)
    return sysexits.EX_UNAVAILABLE


def submit(cfg, opts: Options) -> int:
    from pymta.lib.address import valid_envelope_address as valid_address  # noqa: PLC0415 lazy
    from pymta.lib.sizelimit import TooBig  # noqa: PLC0415 lazy
    from pymta.queue import QueueError  # noqa: PLC0415 lazy

    sender = opts.sender if opts.sender is not None else _default_sender(cfg)
    if sender in ("<>",):
        sender = ""
    sender = sender.strip("<>") if sender.startswith("<") else sender
    if sender:
        sender = qualify(cfg, sender)
    if not valid_address(sender, allow_null=True):
        print(f"sendmail: fatal: bad sender address {sender!r}", file=sys.stderr)
        return sysexits.EX_DATAERR
    limit = cfg["smtpd.max_message_size"]
    try:
        data = read_message(sys.stdin.buffer, opts.dot_ends, limit)
    except TooBig:
        return _too_big(limit)
    except OSError as exc:
        print(f"sendmail: fatal: cannot read the message: {exc}", file=sys.stderr)
        return sysexits.EX_IOERR
    fields, body = split_headers(data)
    recipients = [qualify(cfg, r.strip()) for arg in opts.recipients for r in arg.split(",") if r.strip()]
    if opts.extract:
        try:
            recipients += [qualify(cfg, r) for r in recipients_from_headers(fields)]
        except ValueError as exc:
            print(f"sendmail: fatal: {exc}", file=sys.stderr)
            return sysexits.EX_DATAERR
    seen, unique = set(), []
    for r in recipients:
        if r.lower() not in seen:
            seen.add(r.lower())
            unique.append(r)
    if not unique:
        print(
            "sendmail: fatal: no recipient addresses found in message header"
            if opts.extract
            else "sendmail: fatal: no recipients specified",
            file=sys.stderr,
        )
        return sysexits.EX_USAGE
    for r in unique:
        if not valid_address(r):
            print(f"sendmail: fatal: bad recipient address {r!r}", file=sys.stderr)
            return sysexits.EX_DATAERR
    if len(unique) > cfg["smtpd.max_recipients"]:
        # the runner would refuse the maildrop file; say so now, while someone listens
        print(
            f"sendmail: fatal: too many recipients ({len(unique)}; smtpd.max_recipients is "
            f"{cfg['smtpd.max_recipients']})",
            file=sys.stderr,
        )
        return sysexits.EX_UNAVAILABLE
    fields = complete_headers(
        fields, sender or "MAILER-DAEMON@" + cfg["hostname"], opts.full_name, cfg["hostname"], remove_bcc=opts.extract
    )
    fields = qualify_header_addresses(fields, origin_domain(cfg))  # Postfix's append_at_myorigin
    message = b"".join(fields) + (body if body.startswith(b"\n") or not body else b"\n" + body)
    if not body:
        message += b"\n"
    meta = {"client": "local", "service": "sendmail", "uid": os.getuid(), "user": user_name(os.getuid())}
    if opts.notify:
        meta["notify"] = opts.notify
    if opts.body:
        meta["body"] = opts.body
    door, direct = _door(cfg)
    try:
        writer = door.writer(sender, unique, meta)
        # a caller that writes the queue is trusted with its own Received: line; the
        # maildrop's comes from the pickup, which knows the file's owner for sure
        received = received_field(cfg, os.getuid(), writer.queue_id) if direct else b""
        if len(received) + len(message) > limit:  # the header fields added here count too
            writer.abort()
            return _too_big(limit)
        try:
            if direct and cfg["milter.non_smtpd_milters"]:  # the maildrop's pickup runs them otherwise
                from pymta.milters import filter_local  # noqa: PLC0415 lazy
                from pymta.smtp_server import Refused  # noqa: PLC0415 lazy

                try:
                    qid = filter_local(cfg, writer, sender, unique, received + message)
                except Refused as exc:
                    writer.abort()
                    r = exc.reply
                    print(
                        f"sendmail: fatal: message refused by a milter: {r.code} {r.enhanced} {r.text}", file=sys.stderr
                    )
                    return sysexits.EX_TEMPFAIL if r.code < 500 else sysexits.EX_UNAVAILABLE
            else:
                writer.write(received + message)
                qid = writer.commit()
        except BaseException:
            writer.abort()
            raise
    except QueueError as exc:
        print(f"sendmail: fatal: message not queued: {exc}", file=sys.stderr)
        return sysexits.EX_TEMPFAIL
    except OSError as exc:
        print(f"sendmail: fatal: message not queued: {exc}", file=sys.stderr)
        return sysexits.EX_TEMPFAIL
    how = "queued" if direct else "dropped in maildrop"
    log.info(f"uid={os.getuid()}, from=<{sender}>, nrcpt={len(unique)} ({how})", qid)
    if opts.verbose:
        print(f"sendmail: queued as {qid}: from=<{sender}>, nrcpt={len(unique)} ({how})", file=sys.stderr)
    if direct and opts.delivery == "i" and not door.wake(qid):
        run_qrunner_once(cfg, qid)  # no runner listens: deliver it before returning
    return sysexits.EX_OK


def main(argv: list[str] | None = None, prog: str = "sendmail") -> int:
    log.set_program(prog)
    log.to_syslog()  # silent on success, as Postfix's: cron mails whatever a job prints
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"{prog}: {exc}\nusage: {prog} [options] [--] [recipient ...]", file=sys.stderr)
        return sysexits.EX_USAGE
    if opts.mode == "d":
        print(f"{prog}: -bd is not supported (start pymta-smtpd instead)", file=sys.stderr)
        return sysexits.EX_USAGE
    cfg = _load_config(opts.config)
    if cfg is None:
        return sysexits.EX_CONFIG
    if opts.mode == "p":
        return mailq(cfg, prog)
    if opts.mode == "i":
        return newaliases(cfg)
    if opts.mode == "s":
        return smtp_session(cfg)
    if opts.mode == "v":
        recipients = [qualify(cfg, r.strip()) for arg in opts.recipients for r in arg.split(",") if r.strip()]
        if not recipients:
            print(f"{prog}: fatal: no recipients specified", file=sys.stderr)
            return sysexits.EX_USAGE
        return verify(cfg, recipients)
    if opts.run_queue and not opts.recipients and not opts.extract:
        return run_queue(cfg)
    return submit(cfg, opts)


def mailq_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return main(["-bp"] + argv, prog="mailq")


def newaliases_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return main(["-bi"] + argv, prog="newaliases")


if __name__ == "__main__":
    sys.exit(main())
