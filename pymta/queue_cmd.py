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

import click

from pymta.lib import log, sysexits
from pymta.lib.address import valid_envelope_address as valid_address
from pymta.lib.cliargs import CONFIG_HELP, click_main
from pymta.lib.lineends import crlf_to_lf
from pymta.lib.sizelimit import TooBig, limited


def main(argv: list[str] | None = None) -> int:
    log.set_program("pymta-queue")
    return click_main(command, argv, "pymta-queue")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "config_file", metavar="FILE", help=CONFIG_HELP)
@click.option(
    "-f", "sender", default="", metavar="SENDER", help="Envelope sender (default: empty, the null sender <>)."
)
@click.argument("recipients", nargs=-1, required=True, metavar="RECIPIENT...")
def command(config_file: str | None, sender: str, recipients: tuple[str, ...]) -> int:
    """Put the message on standard input into the pymail queue.

    RECIPIENT: envelope recipients, user@domain."""
    if not valid_address(sender, allow_null=True):
        log.error(f"bad sender address {sender!r}")
        return sysexits.EX_DATAERR
    for rcpt in recipients:
        if not valid_address(rcpt):
            log.error(f"bad recipient address {rcpt!r}")
            return sysexits.EX_DATAERR

    from pymta.lib import config  # noqa: PLC0415 lazy
    from pymta.queue import Queue, QueueError  # noqa: PLC0415 lazy

    cfg = config.load_logged(config_file)
    if cfg is None:
        return sysexits.EX_CONFIG
    meta = {"client": "local", "uid": os.getuid(), "service": "pickup"}
    limit = cfg["smtpd.max_message_size"]
    try:
        qid = Queue(cfg.queue_dir).enqueue(sender, list(recipients), limited(crlf_to_lf(sys.stdin.buffer), limit), meta)
    except TooBig:
        log.error(f"message not queued: larger than smtpd.max_message_size ({limit} octets)")
        return sysexits.EX_DATAERR
    except QueueError as exc:
        log.error(f"message not queued: {exc}")
        return sysexits.EX_TEMPFAIL
    except OSError as exc:
        log.error(f"message not queued: cannot read input: {exc}")
        return sysexits.EX_TEMPFAIL
    log.info(f"uid={os.getuid()}, from=<{sender}>, nrcpt={len(list(recipients))} (queued)", qid)
    print(qid)
    return sysexits.EX_OK


if __name__ == "__main__":
    sys.exit(main())
