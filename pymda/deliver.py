"""pymda-deliver: deliver one message to one local user's Maildir.

Used in-process by pymta-qrunner (``deliver_message``) and as a program by
other MTAs (Postfix ``mailbox_command``), in the manner of dovecot-lda and
procmail::

    pymda-deliver [-C FILE] -d USER [-f SENDER] [-a ADDRESS] < message

Exit codes are sysexits: 0 delivered, 67 no such user, 75 temporary failure
(the MTA retries), 65 bad input, 64 usage, 78 configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pymda import maildir
from pymta.lib import log, sysexits
from pymta.lib.address import qualify
from pymta.lib.cliargs import UsageError, getopt
from pymta.lib.lineends import crlf_to_lf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_ENVELOPE_LINE = 4096  # a longer first line is no envelope line: it stays in the message


class DeliveryError(Exception):
    """``uncertain``: the deliverer died or went silent, so the message may be
    in the Maildir already (the next attempt must look before writing)."""

    def __init__(self, message: str, exit_code: int, uncertain: bool = False, enhanced: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.uncertain = uncertain
        self.enhanced = enhanced  # the RFC 3463 code when it says more than the exit code ("4.2.2" over quota)

    @property
    def temporary(self) -> bool:
        return self.exit_code == sysexits.EX_TEMPFAIL


def user_maildir(mail_root: Path, address: str) -> Path:
    """``maildir.user_maildir``, an unsafe name refused as DeliveryError (EX_DATAERR)."""
    try:
        return maildir.user_maildir(mail_root, address)
    except maildir.MaildirError as exc:
        raise DeliveryError(str(exc), sysexits.EX_DATAERR) from None


def trace_headers(sender: str, recipient: str) -> bytes:
    """``Return-Path:`` and ``Delivered-To:``, as Postfix's local(8) adds them."""
    return f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode("utf-8", "surrogateescape")


def default_sendmail() -> str:
    """The ``sendmail`` installed beside this program (or the checkout's bin/), else /usr/sbin/sendmail."""
    here = Path(__file__).resolve().parent.parent
    for d in (os.path.dirname(os.path.abspath(sys.argv[0] or ".")), os.path.dirname(sys.executable), str(here / "bin")):
        candidate = os.path.join(d, "sendmail")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return "/usr/sbin/sendmail"


def split_extension(address: str, delimiter: str = "+") -> str:
    """The extension of ``user+ext@domain`` ("" when there is none)."""
    local = address.rpartition("@")[0] or address
    if not delimiter:
        return ""
    base, sep, ext = local.partition(delimiter)
    return ext if sep and base else ""


def user_home(record, box: Path) -> Path:
    """The user's home: the users-file home field, else the Maildir itself."""
    return Path(record.home) if getattr(record, "home", "") else box


def rules_files(cfg, home: Path, qid: str | None = None) -> list[Path]:
    """The site rules file and the user's rules file, those that exist and
    are safe to run as this process (``trusted_file``), in order."""
    found = []
    site = cfg.get("deliver.site_rules") or ""
    if site:
        path = Path(site) if os.path.isabs(site) else cfg.root / site
        if os.path.exists(path) and trusted_file(path, qid):
            found.append(path)
    name = cfg.get("deliver.rules_file", ".procmailrc")
    if name:
        path = Path(name) if os.path.isabs(name) else home / name
        if os.path.exists(path) and trusted_file(path, qid):
            found.append(path)
    return found


def trusted_file(path: Path, qid: str | None = None) -> bool:
    """May this process run the rules or forward file ``path``?  Like
    procmail's "suspicious rcfile" check: it must belong to this uid or to
    root and be writable by nobody else; otherwise it is skipped (the mail
    goes to the INBOX) and the log says why."""
    from pymta.lib.privilege import safe_for  # noqa: PLC0415 lazy

    problem = safe_for(path, os.geteuid())
    if problem is None:
        return True
    log.warning(f"{path}: not used: {problem}", qid)
    return False


def mailbox_owner(cfg, record) -> tuple[int, int]:
    """(uid, gid) a delivery to ``record`` runs as: the users-file uid/gid,
    else the owner of the user's Maildir -- or, before the first delivery
    made it, of the folder above it (MAIL/<domain>, then MAIL)."""
    uid, gid = record.uid, record.gid
    if uid is None:
        box = user_maildir(cfg.mail_dir, record.address)
        for path in (box, box.parent, Path(cfg.mail_dir)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            uid = st.st_uid
            gid = st.st_gid if gid is None else gid
            break
        else:
            raise DeliveryError(f"{record.address}: no Maildir and no mail store {cfg.mail_dir}", sysexits.EX_TEMPFAIL)
    if gid is None:
        import pwd  # noqa: PLC0415 lazy

        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    return uid, gid


def rules_variables(cfg, record, box: Path, home: Path, recipient: str, sender: str, original: str | None) -> dict:
    """The variables a user's rules start with (pymda-rules(5), ENVIRONMENT)."""
    delim = cfg.get("deliver.recipient_delimiter", "+")
    ext = split_extension(recipient, delim) or split_extension(original or "", delim)
    local = record.address.rpartition("@")[0]
    return {
        "HOME": str(home),
        "LOGNAME": local,
        "USER": record.address,
        "SHELL": "/bin/sh",
        "PATH": f"{home}/bin:/usr/local/bin:/usr/bin:/bin",
        "MAILDIR": str(box),
        "DEFAULT": f"{box}/",
        "ORGMAIL": f"{box}/",
        "SENDMAIL": cfg.get("deliver.sendmail") or default_sendmail(),
        "SENDMAILFLAGS": "-oi",
        "LOCKEXT": ".lock",
        "SHELLMETAS": "&|<>~;?*[",
        "SHELLFLAGS": "-c",
        "MSGPREFIX": "msg.",
        "TIMEOUT": str(int(cfg.get("deliver.pipe_timeout", 300.0))),
        "HOST": cfg.get("hostname", "localhost"),
        "SENDER": sender,
        "RECIPIENT": original or recipient,
        "EXTENSION": ext,
    }


def split_envelope_line(chunks) -> tuple[bytes | None, Iterator[bytes]]:
    """A leading mbox ``From sender date`` line taken off the message:
    (that line or None, the message without it).  Postfix's local(8)
    ``mailbox_command`` and pipe(8) with the ``F`` flag prepend one, as
    for procmail and dovecot-lda."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if not (head.startswith(b"From ") or b"From ".startswith(head)):
            break  # not an envelope line
        if b"\n" in head or len(head) > MAX_ENVELOPE_LINE:
            break
    line = None
    nl = head.find(b"\n")
    if head.startswith(b"From ") and 0 <= nl <= MAX_ENVELOPE_LINE:
        line, head = head[: nl + 1], head[nl + 1 :]

    def rest() -> Iterator[bytes]:
        if head:
            yield head
        yield from it

    return line, rest()


def _chunks_bytes(chunks) -> bytes:
    if isinstance(chunks, (bytes, bytearray)):
        return bytes(chunks)
    return b"".join(chunks)


def lookup_user(users, address: str):
    """The user's record, None if unknown; a missing or unreadable users file
    is a temporary failure (75), never "no such user" (67)."""
    from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy

    try:
        return users.lookup(address)
    except UsersUnavailable as exc:
        raise DeliveryError(str(exc), sysexits.EX_TEMPFAIL) from None


OVER_QUOTA = "4.2.2"  # RFC 3463 mailbox full: deferred, 452 at RCPT and in LMTP


def over_quota(address: str) -> DeliveryError:
    from pymda.quota import TEXT  # noqa: PLC0415 lazy

    return DeliveryError(f"{address}: {TEXT}", sysexits.EX_TEMPFAIL, enhanced=OVER_QUOTA)


def _quota_check(box: Path, limits: tuple[int, int], address: str, size: int) -> None:
    """DeliveryError (75, 4.2.2) when a message of ``size`` octets does not fit (pymda.quota)."""
    from pymda import quota  # noqa: PLC0415 lazy

    try:
        quota.check(box, limits, size)
    except quota.QuotaExceeded:
        raise over_quota(address) from None


def deliver_message(
    cfg,
    users,
    recipient: str,
    chunks,
    sender: str,
    *,
    original: str | None = None,
    qid: str | None = None,
    dry_run: bool = False,
    record=None,
    once: bool = False,
):
    """Deliver to the user ``recipient`` names, through their rules when they have any.

    ``chunks`` is an iterable of message bytes with LF line ends.  Without
    a rules or forward file this is a straight write into the INBOX and the
    rules engine is never imported.  Returns the file written (the INBOX
    file, or the first folder the rules used).  Raises DeliveryError:
    EX_NOUSER for unknown users, EX_TEMPFAIL for anything a retry may cure
    (disk full, a failing pipe), other codes as the rules' EXITCODE says.
    With a queue ID, every Maildir file written carries it
    (``maildir.queue_tag``); ``once`` says this delivery may be a repeat
    after a crash, so a folder already holding the tagged copy gets no
    second one.
    """
    if record is None:  # main() passes the record it looked up before dropping privileges
        record = lookup_user(users, recipient)
    if record is None:
        raise DeliveryError(f"{recipient}: no such user", sysexits.EX_NOUSER)
    box = user_maildir(cfg.mail_dir, record.address)
    home = user_home(record, box)
    files = rules_files(cfg, home, qid)
    fwd_name = cfg.get("deliver.forward_file", "") or ""
    fwd = (Path(fwd_name) if os.path.isabs(fwd_name) else home / fwd_name) if fwd_name else None
    has_forward = fwd is not None and os.path.exists(fwd) and trusted_file(fwd, qid)
    tag = maildir.queue_tag(qid, record.address) if qid else None
    limits = (0, 0)
    if not dry_run and (record.fields or cfg.get("quota.default_rule")):
        from pymda.quota import limits_of  # noqa: PLC0415 lazy

        limits = limits_of(cfg, record)

    if not files and not has_forward and not dry_run:

        def with_trace():
            yield trace_headers(sender, record.address)
            if isinstance(chunks, (bytes, bytearray)):
                yield bytes(chunks)
            else:
                yield from chunks

        written: list[int] = []

        def admit(size: int) -> None:  # complete in tmp/: does it fit?
            _quota_check(box, limits, record.address, size)
            written.append(size)

        try:
            path = maildir.deliver(box, with_trace(), tag=tag, once=once, admit=admit if any(limits) else None)
        except maildir.MaildirError as exc:
            code = sysexits.EX_TEMPFAIL if exc.temporary else sysexits.EX_CANTCREAT
            raise DeliveryError(str(exc), code) from None
        if written:  # not for a copy found from an earlier attempt
            from pymda import quota  # noqa: PLC0415 lazy

            quota.record(box, limits, written[0], 1)
        log.info(f"to=<{record.address}>, orig_to=<{original or recipient}>, delivered to maildir {path.name}", qid)
        return path

    from pymda.rules.engine import run_rules  # noqa: PLC0415 lazy

    data = trace_headers(sender, record.address) + _chunks_bytes(chunks)
    if any(limits):  # once, before the rules: each folder they file into is in the quota
        _quota_check(box, limits, record.address, len(data))
    variables = rules_variables(cfg, record, box, home, recipient, sender, original)
    # In every mode rule paths stay under the user's Maildir and home
    # (pymda.confined): even as the user, rules must not reach out of them.
    confine = [box, home]
    args = [variables["EXTENSION"]] if variables["EXTENSION"] else []
    context = maildir.delivery_tag.set((tag, once) if tag else None)
    try:
        if has_forward:
            from pymda import forward  # noqa: PLC0415 lazy

            outcome = forward.apply(
                fwd,
                data,
                variables,
                record=record,
                box=box,
                sender=sender,
                files=files,
                dry_run=dry_run,
                qid=qid,
                args=args,
                confine=confine,
            )
        else:
            outcome = run_rules(
                data, files, variables, args=args, inbox=box, sender=sender, dry_run=dry_run, qid=qid, confine=confine
            )
    except (DeliveryError, MemoryError):
        raise
    except Exception as exc:  # a bug must not lose mail: the MTA keeps it and retries
        log.error(f"{record.address}: internal error in rules: {type(exc).__name__}: {exc}", qid)
        raise DeliveryError(f"internal error in rules: {exc}", sysexits.EX_TEMPFAIL) from None
    finally:
        maildir.delivery_tag.reset(context)
    if dry_run:
        return outcome
    if any(limits):  # written, whatever the rules' exit code says
        _record_folders(box, limits, outcome.folders)
    where = ", ".join(outcome.folders) or "nowhere"
    if outcome.exit_code != sysexits.EX_OK:
        raise DeliveryError(
            f"{record.address}: {outcome.reason or 'rules exit code ' + str(outcome.exit_code)} (delivered to: {where})"
            if outcome.folders
            else f"{record.address}: {outcome.reason or 'rules exit code ' + str(outcome.exit_code)}",
            outcome.exit_code,
        )
    log.info(f"to=<{record.address}>, orig_to=<{original or recipient}>, delivered by rules to {where}", qid)
    first = outcome.folders[0] if outcome.folders else str(box)
    return Path(first) if not first.startswith(("|", "!")) else box


def _record_folders(box: Path, limits: tuple[int, int], folders: list[str]) -> None:
    """The messages the rules wrote into the user's Maildir++ folders, counted in its maildirsize."""
    from pymda import quota  # noqa: PLC0415 lazy

    nbytes = count = 0
    inside = str(box) + "/"
    for where in folders:
        directory, _, name = where.rpartition("/")
        if where.startswith(inside) and directory.endswith("/new") and name:
            nbytes += quota.size_of(directory, name)
            count += 1
    quota.record(box, limits, nbytes, count)


def deliver_alias_target(
    cfg, kind: str, target: str, chunks, sender: str, *, original: str, qid: str | None = None
) -> str:
    """Deliver to a ``|command`` or ``/path/to/mbox`` target from the aliases file (aliases(5)).

    The command runs with ``/bin/sh -c`` (the aliases file is the admin's),
    with the message on stdin, a clean environment in which the envelope
    is ``$SENDER``/``$RECIPIENT``/``$EXTENSION`` (never pasted into the
    command), the ``deliver.pipe_timeout`` limit, and as ``nobody`` when
    the runner is root (Postfix's default_privs).  Exit 0 delivers; 75 or
    a timeout defers; any other status bounces.  A path gets an mbox
    append (a trailing ``/`` makes it a Maildir).  Returns where it went.
    """
    data = trace_headers(sender, original) + _chunks_bytes(chunks)
    delim = cfg.get("deliver.recipient_delimiter", "+")
    if kind == "pipe":
        import subprocess  # noqa: PLC0415 lazy

        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "SHELL": "/bin/sh",
            "HOME": "/",
            "SENDER": sender,
            "RECIPIENT": original,
            "EXTENSION": split_extension(original, delim),
            "LOGNAME": "nobody",
        }
        extra = {}
        if os.geteuid() == 0:
            extra = {"user": "nobody", "group": "nogroup" if _group_exists("nogroup") else "nobody"}
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", target],
                input=data,
                env=env,
                cwd="/",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=cfg.get("deliver.pipe_timeout", 300.0),
                start_new_session=True,
                **extra,
            )
        except subprocess.TimeoutExpired:
            raise DeliveryError(f"command {target!r} timed out", sysexits.EX_TEMPFAIL) from None
        except OSError as exc:
            raise DeliveryError(f"cannot run {target!r}: {exc.strerror}", sysexits.EX_TEMPFAIL) from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = f": {err[-1][:200]}" if err else ""
            code = sysexits.EX_TEMPFAIL if proc.returncode in (sysexits.EX_TEMPFAIL, -9) else sysexits.EX_UNAVAILABLE
            raise DeliveryError(f"command {target!r} exited {proc.returncode}{detail}", code)
        log.info(f"to=<{original}>, delivered to command {target!r}", qid)
        return f"command {target}"
    if kind == "file":
        if target.endswith("/"):
            try:
                path = maildir.deliver(Path(target), data)
            except maildir.MaildirError as exc:
                raise DeliveryError(
                    str(exc), sysexits.EX_TEMPFAIL if exc.temporary else sysexits.EX_CANTCREAT
                ) from None
            log.info(f"to=<{original}>, delivered to maildir {path}", qid)
            return f"maildir {target}"
        from pymda.rules import mbox  # noqa: PLC0415 lazy

        try:
            mbox.append(target, mbox.format_message(None, *_split_message(data), sender=sender))
        except mbox.MboxError as exc:
            raise DeliveryError(str(exc), sysexits.EX_TEMPFAIL if exc.temporary else sysexits.EX_CANTCREAT) from None
        log.info(f"to=<{original}>, delivered to mbox {target}", qid)
        return f"mbox {target}"
    raise DeliveryError(f"unknown target kind {kind!r}", sysexits.EX_SOFTWARE)


def _group_exists(name: str) -> bool:
    import grp  # noqa: PLC0415 lazy

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _split_message(data: bytes) -> tuple[bytes, bytes]:
    idx = data.find(b"\n\n")
    return (data, b"") if idx < 0 else (data[: idx + 2], data[idx + 2 :])


USAGE = """\
usage: pymda-deliver [-C FILE] [--dry-run] -d USER [-f SENDER] [-a ADDRESS] [--queue-id QID [--once]] < message
       pymda-deliver [--dry-run] [-f SENDER] -m [VAR=value ...] RCFILE [ARG ...] < message

Deliver the message on standard input to the Maildir of USER, through the
user's rules file (pymda-rules(5)) when there is one; or, with -m, run the
rules file RCFILE as procmail -m does (a general mail filter).

options:
  -C FILE     configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)
  -d USER     the recipient: user@domain as in the users file (+extension allowed),
              or a bare user name (the first local domain is added)
  -f SENDER   envelope sender, for Return-Path: and $SENDER (default: the sender of a
              leading "From sender date" line, which is taken off; else <>, the null sender)
  -a ADDRESS  original recipient address ($RECIPIENT; its +extension is $EXTENSION and $1)
  -m          procmail -m mode: VAR=value assignments, then RCFILE, then $1, $2, ...
  --queue-id QID
              the message's queue ID: in log lines and in the Maildir file names
  --once      this delivery may repeat one a crash interrupted: a folder that
              already holds the copy named with --queue-id gets no second one
  --dry-run   print which recipes match and where the message would go; deliver nothing
  -h, --help  show this help and exit

exit status: 0 delivered, 64 usage, 65 bad input, 67 no such user,
73 not delivered (-m without DEFAULT), 75 temporary failure (retry later),
78 configuration error; or the rules' EXITCODE.
"""


def _parse_args(argv: list[str]) -> dict:
    opts: dict = {"C": None, "d": None, "f": None, "a": None, "m": None}
    opts.update(dry_run=False, queue_id=None, once=False)
    try:
        given, rest = getopt(argv, "hC:d:f:a:nm", ["help", "dry-run", "once", "queue-id="], stop_after="-m")
    except UsageError as exc:
        raise DeliveryError(str(exc), sysexits.EX_USAGE) from None
    for name, value in given:
        if name in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(sysexits.EX_OK)
        if name in ("-n", "--dry-run"):
            opts["dry_run"] = True
        elif name == "--once":
            opts["once"] = True
        elif name == "--queue-id":
            opts["queue_id"] = value
        elif name == "-m":
            # procmail's -m [VAR=value ...] RCFILE [ARG ...]
            assigns = []
            while (
                rest
                and "=" in rest[0]
                and not rest[0].startswith(("/", "."))
                and rest[0].split("=", 1)[0].replace("_", "a").isalnum()
            ):
                assigns.append(rest.pop(0).split("=", 1))
            if not rest:
                raise DeliveryError("-m needs a rules file", sysexits.EX_USAGE)
            opts["m"] = (assigns, rest[0], rest[1:])
            rest = []
        else:
            opts[name[1]] = value
    if rest:
        raise DeliveryError(f"unexpected argument {rest[0]!r}", sysexits.EX_USAGE)
    if not opts["d"] and not opts["m"]:
        raise DeliveryError("-d USER or -m RCFILE is required", sysexits.EX_USAGE)
    return opts


def become_mailbox_owner(cfg, record) -> None:
    """When root, become the mailbox owner (``mailbox_owner``) before
    anything of the user's is read: rules, ``.forward``, the paths in them.
    A mailbox that belongs to root is root's own: its delivery stays root,
    and ``trusted_file`` lets it run only files root owns."""
    if os.geteuid() != 0:
        return
    uid, gid = mailbox_owner(cfg, record)
    if uid == 0:
        return
    preload_delivery()
    from pymta.lib.privilege import PrivilegeError, become  # noqa: PLC0415 lazy

    try:
        become(uid, gid)
    except PrivilegeError as exc:
        raise DeliveryError(str(exc), sysexits.EX_TEMPFAIL) from None


# What a delivery may import after leaving root (see preload_delivery).
DELIVERY_MODULES = (
    "pymda.deliver",
    "pymda.localserver",
    "pymda.forward",
    "pymda.rules.engine",
    "pymda.rules.actions",
    "pymda.rules.mbox",
    "pymda.maildir",
    "pymta.lib.privilege",
)
DELIVERY_OTHERS = ("hashlib", "shlex", "subprocess")


def preload_delivery() -> None:
    """Import now what delivery may need: after the switch the interpreter's
    own files may be out of reach (e.g. a Python under /root)."""
    from pymta.lib.daemon import preload  # noqa: PLC0415 lazy

    preload(DELIVERY_MODULES, DELIVERY_OTHERS, common=False)


def _print_report(outcome, out=None) -> None:
    out = out or sys.stdout
    for where, text in outcome.report:
        out.write(f"{where}: {text}\n" if where else f"{text}\n")
    if outcome.delivered:
        out.write("would deliver to: " + (", ".join(outcome.folders) or "nowhere") + "\n")
    else:
        out.write(f"would not deliver: {outcome.reason} (exit {outcome.exit_code})\n")
    if outcome.exit_code:
        out.write(f"exit status: {outcome.exit_code}\n")


def run_m_mode(opts: dict, data: bytes) -> int:
    """procmail -m: assignments, RCFILE, arguments; DEFAULT decides where unmatched mail goes."""
    from pymda.rules.engine import run_rules  # noqa: PLC0415 lazy

    assigns, rcfile, args = opts["m"]
    sender = opts["f"]
    if sender is None and data.startswith(b"From "):
        from pymda.rules.mbox import from_line_sender  # noqa: PLC0415 lazy

        sender = from_line_sender(data[: data.find(b"\n") + 1])
    home = os.environ.get("HOME") or "/"
    variables = {
        "HOME": home,
        "LOGNAME": os.environ.get("LOGNAME", os.environ.get("USER", "")),
        "SHELL": "/bin/sh",
        "PATH": f"{home}/bin:/usr/local/bin:/usr/bin:/bin",
        "MAILDIR": os.getcwd(),
        "SENDMAIL": default_sendmail(),
        "SENDMAILFLAGS": "-oi",
        "LOCKEXT": ".lock",
        "SHELLMETAS": "&|<>~;?*[",
        "SHELLFLAGS": "-c",
        "MSGPREFIX": "msg.",
        "TIMEOUT": "960",
        "SENDER": sender or "",
    }
    for name, value in assigns:
        variables[name] = value
    if not os.path.isabs(variables["MAILDIR"]):
        variables["MAILDIR"] = os.path.abspath(variables["MAILDIR"])
    default = variables.get("DEFAULT")
    inbox = None
    if default and default.endswith("/"):
        inbox = Path(default if os.path.isabs(default) else os.path.join(variables["MAILDIR"], default)).resolve()
    rcpath = rcfile if os.path.isabs(rcfile) else os.path.abspath(rcfile)
    if not os.path.exists(rcpath):
        log.error(f"{rcfile}: no such rules file")
        return sysexits.EX_NOINPUT
    outcome = run_rules(data, [rcpath], variables, args=args, inbox=inbox, sender=sender or "", dry_run=opts["dry_run"])
    if opts["dry_run"]:
        _print_report(outcome)
        return sysexits.EX_OK
    if not outcome.delivered:
        log.error(f"not delivered: {outcome.reason}")
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymda-deliver")
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = _parse_args(argv)
        if any(c in (opts["f"] or "") + (opts["d"] or "") + (opts["a"] or "") for c in "\r\n\x00"):
            raise DeliveryError("address contains CR, LF or NUL", sysexits.EX_DATAERR)
        if opts["queue_id"] is not None and not (
            opts["queue_id"].isascii() and opts["queue_id"].isalnum() and len(opts["queue_id"]) <= 64
        ):
            raise DeliveryError("--queue-id takes letters and digits only", sysexits.EX_USAGE)
        if opts["m"]:
            return run_m_mode(opts, b"".join(crlf_to_lf(sys.stdin.buffer)))
        from pymta.lib import config  # noqa: PLC0415 lazy
        from pymta.lib.users import UsersFile  # noqa: PLC0415 lazy

        try:
            cfg = config.load(opts["C"])
        except config.ConfigError as exc:
            raise DeliveryError(f"configuration: {exc}", sysexits.EX_CONFIG) from None
        users = UsersFile(cfg.path_of("users"))
        recipient = qualify(cfg, opts["d"])  # mailbox_command = pymda-deliver -d "$USER"
        envelope, message = split_envelope_line(crlf_to_lf(sys.stdin.buffer))
        sender = opts["f"]  # "" is the null sender: Return-Path: <>
        if sender is None:
            sender = ""
            if envelope is not None:
                from pymda.rules.mbox import from_line_sender  # noqa: PLC0415 lazy

                sender = from_line_sender(envelope)
        record = lookup_user(users, recipient)
        if record is None:
            raise DeliveryError(f"{recipient}: no such user", sysexits.EX_NOUSER)
        become_mailbox_owner(cfg, record)
        result = deliver_message(
            cfg,
            users,
            recipient,
            message,
            sender,
            original=opts["a"],
            dry_run=opts["dry_run"],
            record=record,
            qid=opts["queue_id"],
            once=opts["once"],
        )
        if opts["dry_run"]:
            if isinstance(result, Path):
                sys.stdout.write(f"would deliver to: {result}/ (INBOX; no rules file)\n")
            else:
                _print_report(result)
        return sysexits.EX_OK
    except DeliveryError as exc:
        log.error(str(exc))
        return exc.exit_code
    except OSError as exc:
        log.error(f"temporary failure: {exc}")
        return sysexits.EX_TEMPFAIL
    except Exception as exc:  # never a traceback and a lost message: the MTA retries
        log.error(f"temporary failure: internal error: {type(exc).__name__}: {exc}")
        return sysexits.EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
