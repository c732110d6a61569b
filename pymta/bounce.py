"""Delivery status notifications (RFC 3464) for failed and delayed recipients.

A DSN is a message like any other: it goes through the same queue door
(``Queue.enqueue``) with the null sender ``<>``, so it can itself never
cause a bounce to a sender (maddy#327: DSNs must be delivered end to end).

* The sender is not ``<>``: the DSN goes to the envelope sender.
* The sender is ``<>`` (the failed message was itself a notification): no
  DSN to anybody outside; a copy goes to the postmaster
  (``bounce.postmaster``, default postmaster@ the first local domain),
  unless the failed message already was such a postmaster notice -- then
  it is only logged (no double-bounce loop).

Structure (RFC 3462/6522 multipart/report; report-type=delivery-status):
a human-readable ``text/plain`` part, the ``message/delivery-status`` part
(per-message and per-recipient fields, RFC 3464 2.2-2.3) and the original
headers as ``text/rfc822-headers`` (at most ``bounce.size_limit`` octets, never the body).
"""

from __future__ import annotations

import time
from email.utils import formatdate, make_msgid

from pymta.lib import log, metrics
from pymta.lib.address import qualify
from pymta.recipient import BOUNCED, Recipient


def _postmaster(cfg) -> str:
    if cfg["bounce.postmaster"]:
        return cfg["bounce.postmaster"]
    return qualify(cfg, "postmaster")


def _original_headers(entry, limit: int) -> bytes:
    """The original's header block, at most ``limit`` octets (whole lines).

    The block ends at the empty line, or at the first line that is neither
    a header field nor a continuation: a message that is all "header" (no
    empty line) must not send its text back to a sender who may be forged.
    """
    out = bytearray()
    for chunk in entry.message_chunks():
        out += chunk
        if len(out) > limit or b"\n\n" in out or out.startswith(b"\n"):
            break
    lines = bytes(out[: limit + 1]).split(b"\n")
    if len(out) > limit or not out.endswith(b"\n"):
        lines.pop()  # a line cut by the limit or the end of the text
    kept = []
    for line in lines:
        if not _header_line(line, first=not kept):
            break
        kept.append(line + b"\n")
    return b"".join(kept)


def _header_line(line: bytes, first: bool) -> bool:
    if line[:1] in (b" ", b"\t"):
        return not first  # a continuation needs a field before it
    name, colon, _ = line.partition(b":")
    return bool(colon and name) and all(33 <= c <= 126 for c in name)


def _clean(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))[:900]


def _status(rcpt: Recipient) -> str:
    """The recipient's RFC 3463 code, carried with its result."""
    if rcpt.reason.enhanced:
        return rcpt.reason.enhanced
    return "5.0.0" if rcpt.state == BOUNCED else "4.0.0"


def build_dsn(cfg, entry, rcpts: list[Recipient], action: str, to: str) -> bytes:
    """The DSN message (LF line ends, as the queue keeps messages)."""
    env = entry.envelope
    host = cfg["hostname"]
    boundary = f"{env.queue_id}.{int(time.time())}/{host}"
    date = formatdate(localtime=True)
    failed = action == "failed"
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    human = [
        f"This is the mail system at host {host}.",
        "",
        (
            "I'm sorry to have to inform you that your message could not be delivered to one or more recipients."
            if failed
            else "Your message could not be delivered yet; the mail system will keep trying until the message is "
            f"{int(cfg['qrunner.max_lifetime'] // 3600)} hours old."
        ),
        "It's attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "                   The mail system",
        "",
    ]
    for rcpt in rcpts:
        human.append(f"<{_clean(rcpt.to)}>: {_clean(rcpt.reason.text)}")
    report = [
        f"Reporting-MTA: dns; {host}",
        f"X-Pymail-Queue-ID: {env.queue_id}",
        f"X-Original-Envelope-From: <{_clean(env.sender)}>" if env.sender else "X-Original-Envelope-From: <>",
        f"Arrival-Date: {formatdate(env.arrival, localtime=True)}",
    ]
    for rcpt in rcpts:
        report.append("")
        report.append(f"Final-Recipient: rfc822; {_clean(rcpt.to)}")
        if rcpt.orig and rcpt.orig != rcpt.to:
            report.append(f"Original-Recipient: rfc822; {_clean(rcpt.orig)}")
        report.append(f"Action: {action}")
        report.append(f"Status: {_status(rcpt) if failed else '4' + _status(rcpt)[1:]}")
        if rcpt.remote:
            report.append(f"Remote-MTA: dns; {_clean(rcpt.remote.split('[')[0])}")
        report.append(f"Diagnostic-Code: {_clean(rcpt.diag or 'X-Pymail; ' + rcpt.reason.text)}")
        report.append(f"Last-Attempt-Date: {date}")
        if not failed:
            report.append(f"Will-Retry-Until: {formatdate(env.arrival + cfg['qrunner.max_lifetime'], localtime=True)}")
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: {make_msgid(domain=host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *report,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    text = "\n".join(headers).encode() + b"\n" + _original_headers(entry, cfg["bounce.size_limit"])
    return text + f"\n--{boundary}--\n".encode()


def _enqueue(cfg, queue, entry, rcpts, action: str) -> str | None:
    env = entry.envelope
    notify = env.meta.get("notify")
    if isinstance(notify, str) and notify:
        wanted = {n.strip() for n in notify.lower().split(",")}
        if "never" in wanted or ("failure" if action == "failed" else "delay") not in wanted:
            log.info(f"no {action} notice: the sender asked for NOTIFY={notify}", env.queue_id)
            return None
    meta = {"client": "local", "service": "bounce", "dsn": action, "orig_id": env.queue_id}
    if env.sender:
        to = env.sender
    elif env.meta.get("dsn") == "postmaster":
        log.warning(f"double bounce for <{rcpts[0].to}> discarded ({len(rcpts)} recipient(s))", env.queue_id)
        return None
    else:
        if action != "failed":
            return None  # no delay notices about notices
        to = _postmaster(cfg)
        meta["dsn"] = "postmaster"
    message = build_dsn(cfg, entry, rcpts, action, to)
    qid = queue.enqueue("", [to], message, meta)
    metrics.count("pymail_bounces_total", kind="failure" if action == "failed" else "delay")
    log.info(f"sender {'non-delivery' if action == 'failed' else 'delay'} notification: {qid}", env.queue_id)
    return qid


def send_bounce(cfg, queue, entry, bounced: list[Recipient]) -> str | None:
    """Queue a 'failed' DSN for ``bounced`` recipients; returns its queue ID (None if none was made)."""
    return _enqueue(cfg, queue, entry, bounced, "failed")


def send_delay_warning(cfg, queue, entry, deferred: list[Recipient]) -> str | None:
    """Queue a 'delayed' DSN (Postfix delay_warning_time) for recipients still waiting."""
    return _enqueue(cfg, queue, entry, deferred, "delayed")
