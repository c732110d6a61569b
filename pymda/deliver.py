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
from pymta.lib.lineends import crlf_to_lf


class DeliveryError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def temporary(self) -> bool:
        return self.exit_code == sysexits.EX_TEMPFAIL


def user_maildir(mail_root: Path, address: str) -> Path:
    """``MAIL/<domain>/<local>/`` for a canonical ``local@domain``.

    The address comes from the users file, which refuses '/' and '..'; we
    check again because this builds a path.
    """
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        if not part or part.startswith(".") or "/" in part or "\x00" in part:
            raise DeliveryError(f"unsafe mailbox name {address!r}", sysexits.EX_DATAERR)
    return Path(mail_root) / domain.lower() / local.lower()


def trace_headers(sender: str, recipient: str) -> bytes:
    """``Return-Path:`` and ``Delivered-To:``, as Postfix's local(8) adds them."""
    return f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode("utf-8", "surrogateescape")


def deliver_message(cfg, users, recipient: str, chunks, sender: str, *, original: str | None = None,
                    qid: str | None = None) -> Path:
    """Deliver into the INBOX of the user ``recipient`` names; return the file written.

    ``chunks`` is an iterable of message bytes with LF line ends.  Raises
    DeliveryError: EX_NOUSER for unknown users, EX_TEMPFAIL for anything a
    retry may cure (disk full, permissions).
    """
    record = users.lookup(recipient)
    if record is None:
        raise DeliveryError(f"{recipient}: no such user", sysexits.EX_NOUSER)
    box = user_maildir(cfg.mail_dir, record.address)

    def with_trace():
        yield trace_headers(sender, record.address)
        if isinstance(chunks, (bytes, bytearray)):
            yield bytes(chunks)
        else:
            yield from chunks

    try:
        path = maildir.deliver(box, with_trace())
    except maildir.MaildirError as exc:
        code = sysexits.EX_TEMPFAIL if exc.temporary else sysexits.EX_CANTCREAT
        raise DeliveryError(str(exc), code) from None
    return path


USAGE = """\
usage: pymda-deliver [-C FILE] -d USER [-f SENDER] [-a ADDRESS] < message

Deliver the message on standard input to the Maildir of USER.

options:
  -C FILE     configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)
  -d USER     the recipient: user@domain as in the users file (+extension allowed)
  -f SENDER   envelope sender, for Return-Path: (default: MAILER-DAEMON)
  -a ADDRESS  original recipient address, for logging
  -h, --help  show this help and exit

exit status: 0 delivered, 64 usage, 65 bad input, 67 no such user,
75 temporary failure (retry later), 78 configuration error.
"""


def _parse_args(argv: list[str]) -> dict:
    opts = {"C": None, "d": None, "f": "", "a": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(sysexits.EX_OK)
        if len(arg) >= 2 and arg[0] == "-" and arg[1] in opts:
            key = arg[1]
            if len(arg) > 2:
                opts[key] = arg[2:]
            elif i + 1 < len(argv):
                i += 1
                opts[key] = argv[i]
            else:
                raise DeliveryError(f"option {arg} needs a value", sysexits.EX_USAGE)
        else:
            raise DeliveryError(f"unexpected argument {arg!r}", sysexits.EX_USAGE)
        i += 1
    if not opts["d"]:
        raise DeliveryError("-d USER is required", sysexits.EX_USAGE)
    return opts


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymda-deliver")
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = _parse_args(argv)
        from pymta.lib import config
        from pymta.lib.users import UsersFile

        try:
            cfg = config.load(opts["C"])
        except config.ConfigError as exc:
            raise DeliveryError(f"configuration: {exc}", sysexits.EX_CONFIG) from None
        users = UsersFile(cfg.path_of("users"))
        sender = opts["f"] or "MAILER-DAEMON"
        if any(c in sender + opts["d"] for c in "\r\n\x00"):
            raise DeliveryError("address contains CR, LF or NUL", sysexits.EX_DATAERR)
        path = deliver_message(cfg, users, opts["d"], crlf_to_lf(sys.stdin.buffer), sender, original=opts["a"])
        log.info(f"to=<{opts['d']}>, orig_to=<{opts['a'] or opts['d']}>, status=sent (delivered to maildir {path.name})")
        return sysexits.EX_OK
    except DeliveryError as exc:
        log.error(str(exc))
        return exc.exit_code
    except OSError as exc:
        log.error(f"temporary failure: {exc}")
        return sysexits.EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
