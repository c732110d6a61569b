"""A bounce for a maildrop file the runner refused (too big, too many recipients, bad addresses).

sendmail checks what it can before it exits, but the maildrop file is the
user's: it can be written by hand or grown after sendmail is gone.  What
the pickup refuses then never enters the queue, so no runner would ever
report on it; instead of dropping it in silence (the log line alone reaches
only the admin), the submitting user gets an ordinary DSN through the queue
(``bounce.send_bounce``, null sender), as Postfix's pickup/cleanup do.

The DSN goes to the envelope sender when that address is the user's own,
else to the user's login name at the first local domain -- never to a
sender the user made up (that would make the maildrop a backscatter tool).
"""

from __future__ import annotations

from dataclasses import replace

from pymta import bounce
from pymta.queue import Entry, Envelope, is_queue_id
from pymta.recipient import BOUNCED, Recipient, Status

MAX_LISTED = 20  # recipients named in the DSN; a refused list of 10,000 stays a short notice


def bounce_refused(cfg, queue, path, fh, offset: int, env, to: str, reason: Status) -> str | None:
    """Queue a DSN to ``to`` about the maildrop file ``path`` (open as ``fh``,
    message at ``offset``); its queue ID.  ``to`` is the submitter's address
    (``pymta.maildrop.submitter_address``); ``reason`` is why the pickup
    refused the file (``5.3.4 message file too big``)."""
    qid = env.queue_id if is_queue_id(env.queue_id) else path.name[:19]
    notify = env.meta.get("notify")
    meta = {"notify": notify} if isinstance(notify, str) else {}
    about = Envelope(to, list(env.recipients), qid, env.arrival, meta)
    rcpts = [Recipient(to=r, orig=r, state=BOUNCED, reason=reason) for r in env.recipients[:MAX_LISTED]]
    if len(env.recipients) > MAX_LISTED:
        more = f" (and {len(env.recipients) - MAX_LISTED} more recipients)"
        rcpts[-1].reason = replace(reason, text=reason.text + more)
    # the entry reads the headers from the maildrop file itself (bounded: bounce quotes headers only)
    return bounce.send_bounce(cfg, queue, Entry(queue, path, fh, about, offset), rcpts)
