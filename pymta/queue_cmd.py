"""pymta-queue: the door into the queue for programs (sendmail, forwards, scripts).

::

    pymta-queue [-C FILE] [-f SENDER] [--] RECIPIENT... < message

The message is read from stdin (CRLF or LF line ends; stored with LF),
written with ``pymta.queue.QueueWriter`` -- the same code smtpd uses in
process -- and the program exits 0 only once the entry is fsynced and
renamed into ``new/``.  The submitting uid is recorded in the envelope.
Exit codes: 0 queued, 64 usage, 65 bad address or message larger than
``smtpd.max_message_size``, 75 temporary failure
(disk full, unwritable queue: nothing was queued, try again), 78 config.
"""

from __future__ import annotations

import os
import sys

from pymta.lib import log, sysexits
from pymta.lib.address import valid_envelope_address as valid_address  # sendmail imports it from here
from pymta.lib.cliargs import ArgumentParser
from pymta.lib.lineends import crlf_to_lf
from pymta.lib.sizelimit import TooBig, limited


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymta-queue")
    parser = ArgumentParser(prog="pymta-queue", description="Put the message on standard input into the pymail queue.")
    parser.add_argument(
        "-C",
        dest="config",
        metavar="FILE",
        help="configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)",
    )
    parser.add_argument(
        "-f", dest="sender", default="", metavar="SENDER", help="envelope sender (default: empty, the null sender <>)"
    )
    parser.add_argument("recipients", nargs="+", metavar="RECIPIENT", help="envelope recipients, user@domain")
    args = parser.parse_args(argv)
    if not valid_address(args.sender, allow_null=True):
        log.error(f"bad sender address {args.sender!r}")
        return sysexits.EX_DATAERR
    for rcpt in args.recipients:
        if not valid_address(rcpt):
            log.error(f"bad recipient address {rcpt!r}")
            return sysexits.EX_DATAERR

    from pymta.lib import config  # noqa: PLC0415 lazy
    from pymta.queue import Queue, QueueError  # noqa: PLC0415 lazy

    cfg = config.load_logged(args.config)
    if cfg is None:
        return sysexits.EX_CONFIG
    meta = {"client": "local", "uid": os.getuid(), "service": "pickup"}
    limit = cfg["smtpd.max_message_size"]
    try:
        qid = Queue(cfg.queue_dir).enqueue(
            args.sender, args.recipients, limited(crlf_to_lf(sys.stdin.buffer), limit), meta
        )
    except TooBig:
        log.error(f"message not queued: larger than smtpd.max_message_size ({limit} octets)")
        return sysexits.EX_DATAERR
    except QueueError as exc:
        log.error(f"message not queued: {exc}")
        return sysexits.EX_TEMPFAIL
    except OSError as exc:
        log.error(f"message not queued: cannot read input: {exc}")
        return sysexits.EX_TEMPFAIL
    log.info(f"uid={os.getuid()}, from=<{args.sender}>, nrcpt={len(args.recipients)} (queued)", qid)
    print(qid)
    return sysexits.EX_OK


if __name__ == "__main__":
    sys.exit(main())
