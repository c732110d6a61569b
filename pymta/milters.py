"""Milters in pymail's mail path (issue 12 §2), as Postfix runs them.

A ``Chain`` is the milters of one SMTP session (``milter.smtpd_milters``
or the listener's own list) or of one message that did not come over
SMTP (``milter.non_smtpd_milters``: sendmail's mail).  It holds one
connection per milter (``pymta.lib.milterconn``) and tells each the events
at their stage -- connect, HELO, MAIL (with its ESMTP arguments), RCPT
(with its arguments), DATA, then at the end of the message the headers,
the end of the headers, the body and the end of message -- with the
macros of ``milter.*_macros``.  Every call blocks on sockets: smtpd makes
them in Jobs, never on its event loop.

A milter's verdict: ``continue`` goes on; ``accept`` stops talking to
that milter for the message (for the session at connect or HELO);
``reject``, ``tempfail`` and ``replycode`` give the SMTP reply at that
stage (at RCPT for that recipient only); ``discard`` accepts the message
and drops it; ``quarantine`` at the end puts the entry on hold.  The end
of message's modifications (headers, recipients, sender, body) are
applied in the milter's order, and the next milter sees the changed
message.  A milter that cannot be reached, times out or breaks the
protocol is ``milter.default_action``, logged once with the queue ID, and
is not asked again in that session.

``MilterSink`` sits in front of the queue writer: it holds the message
text (``pymta.lib.spool``: past 1 MB in an unlinked file, so a big message
is streamed to the milters and into the entry in chunks, never held whole),
runs the end of message at commit, and writes the result into the entry --
envelope changes included (``QueueWriter.revise``), into ``hold/`` for a
quarantine -- before the 250, once.  ESMTP parameters of a milter's
ADDRCPT_PAR or CHGFROM are logged and left out, as Postfix does with those it
does not support: pymail's SMTP server takes none a queue entry keeps (no DSN).
"""

from __future__ import annotations

import os

from pymta.lib import log
from pymta.lib import milter as m
from pymta.lib.milterconn import MilterConnection, MilterFailure, Timeouts
from pymta.lib.spool import Spool
from pymta.smtp_server import Refused, Reply

REJECT = Reply(550, "5.7.1", "Command rejected")
TEMPFAIL = Reply(451, "4.7.1", "Service unavailable - try again later")

_MACRO_KEYS = {
    m.SMFIC_CONNECT: "milter.connect_macros",
    m.SMFIC_HELO: "milter.helo_macros",
    m.SMFIC_MAIL: "milter.mail_macros",
    m.SMFIC_RCPT: "milter.rcpt_macros",
    m.SMFIC_DATA: "milter.data_macros",
    m.SMFIC_EOH: "milter.eoh_macros",
    m.SMFIC_BODYEOB: "milter.eom_macros",
}
_STAGES = {
    m.SMFIC_CONNECT: "CONNECT",
    m.SMFIC_HELO: "HELO",
    m.SMFIC_MAIL: "MAIL",
    m.SMFIC_RCPT: "RCPT",
    m.SMFIC_DATA: "DATA",
    m.SMFIC_HEADER: "END-OF-MESSAGE",
    m.SMFIC_EOH: "END-OF-MESSAGE",
    m.SMFIC_BODY: "END-OF-MESSAGE",
    m.SMFIC_BODYEOB: "END-OF-MESSAGE",
}


def smtpd_specs(cfg, service: str) -> list[str]:
    """The milters of one smtpd listener: its own list, else milter.smtpd_milters."""
    own = cfg["milter.listener_milters"].get(service)
    if own is not None:
        return own.replace(",", " ").split()
    return list(cfg["milter.smtpd_milters"])


class Settings:
    """What every Chain of a process needs from the config, read once."""

    def __init__(self, cfg) -> None:
        self.timeouts = Timeouts(
            cfg["milter.connect_timeout"], cfg["milter.command_timeout"], cfg["milter.content_timeout"]
        )
        self.default_action = cfg["milter.default_action"]
        self.protocol = cfg["milter.protocol"]
        self.macros = {event: tuple(cfg[key]) for event, key in _MACRO_KEYS.items()}
        self.hostname = cfg["hostname"]
        self.daemon_name = cfg["milter.macro_daemon_name"] or cfg["hostname"]
        self.is_local_domain = cfg.is_local_domain


class _Milter:
    """One milter of a chain."""

    __slots__ = ("spec", "conn", "failed", "done_session", "done_message", "in_message")

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.conn: MilterConnection | None = None
        self.failed = False  # down or broke the protocol: the default action from now on
        self.done_session = False  # accepted at connect/HELO: not asked again in this session
        self.done_message = False  # accepted the message: not asked again until the next MAIL
        self.in_message = False  # told of a MAIL not yet ended (end of message or abort)


class Outcome:
    """The end of message through every milter."""

    def __init__(self, sender: str, recipients: list[str]) -> None:
        self.reply: Reply | None = None  # refuse the message with this
        self.discard = False
        self.hold: str | None = None  # quarantine reason: the entry goes on hold
        self.sender = sender
        self.recipients = recipients
        self.message: _Message | None = None  # the changed message; None: as it came
        self.changes: list[str] = []  # for the log line: "header added X-Spam", ...


class Chain:
    """The milters of one SMTP session (or of one non-SMTP message)."""

    def __init__(self, specs: list[str], settings: Settings) -> None:
        self.milters = [_Milter(s) for s in specs]
        self.settings = settings
        self.values: dict[str, str] = {
            "j": settings.hostname,
            "{daemon_name}": settings.daemon_name,
            "v": "pymail",
        }
        self.refusal: Reply | None = None  # a connect/HELO verdict that answers every later command
        self.discard_session = False
        self.discard = False  # a milter said discard before the end of the message
        self.queue_id = ""
        self.client = "unknown"  # host[addr], for the log lines
        self.helo_name = ""
        self.sender = ""
        self.recipients: list[str] = []

    # -- the events ----------------------------------------------------------------

    def connect(self, name: str, addr: str, port: int = 0, daemon_addr: str = "") -> Reply | None:
        """Open every milter and tell it of the client (``name`` "" when unknown)."""
        family = m.FAMILY_INET6 if ":" in addr else m.FAMILY_INET if addr else m.FAMILY_UNKNOWN
        shown = name or (f"[{addr}]" if addr else "localhost")
        self.client = f"{name or 'unknown'}[{addr}]"
        self.values.update(
            {
                "{client_addr}": addr,
                "{client_name}": name or "unknown",
                "{client_ptr}": name or "unknown",
                "{client_port}": str(port) if port else "",
                "{daemon_addr}": daemon_addr,
                "_": f"{name or 'unknown'} [{addr}]",
            }
        )
        t = self.settings.timeouts
        for mt in self.milters:
            mt.conn = MilterConnection(mt.spec, t)
            try:
                mt.conn.open(version=self.settings.protocol)
            except MilterFailure as exc:
                self._failed(mt, "CONNECT", str(exc))
        packet = m.encode_connect(shown, family, port, addr)
        return self._event(m.SMFIC_CONNECT, packet, session_wide=True)

    def helo(self, name: str, tls_version: str = "", cipher: str = "") -> Reply | None:
        self.helo_name = name
        self.values.update({"{tls_version}": tls_version, "{cipher}": cipher})
        self._abort_message()  # HELO/EHLO ends a transaction, as RSET does
        return self._event(m.SMFIC_HELO, m.encode_helo(name), session_wide=True)

    def mail(self, sender: str, args: list[str], queue_id: str, auth_user: str = "") -> Reply | None:
        self._abort_message()
        self.queue_id = queue_id
        self.sender = sender
        self.recipients = []
        self.discard = self.discard_session
        self.values.update(
            {
                "i": queue_id,
                "{mail_addr}": sender,
                "{auth_authen}": auth_user,
                "{auth_type}": "PLAIN" if auth_user else "",
            }
        )
        for mt in self.milters:
            mt.done_message = False
            mt.in_message = not (mt.failed or mt.done_session)
        return self._event(m.SMFIC_MAIL, m.encode_mail(sender, args))

    def rcpt(self, rcpt: str, args: list[str]) -> Reply | None:
        domain = rcpt.rpartition("@")[2]
        self.values.update(
            {
                "{rcpt_addr}": rcpt,
                "{rcpt_host}": domain,
                "{rcpt_mailer}": "local" if not domain or self.settings.is_local_domain(domain) else "smtp",
            }
        )
        reply = self._event(m.SMFIC_RCPT, m.encode_rcpt(rcpt, args), what=f"to=<{rcpt}>")
        if reply is None:
            self.recipients.append(rcpt)
        return reply

    def data(self) -> Reply | None:
        return self._event(m.SMFIC_DATA, m.encode_data())

    def abort(self) -> None:
        """RSET (or a message the client never finished): the milters forget the message."""
        self._abort_message()

    def close(self, wait: bool = True) -> None:
        """The session is over: SMFIC_QUIT and close; ``wait=False`` on an event loop."""
        for mt in self.milters:
            if mt.conn is not None:
                mt.conn.close(wait)
                mt.conn = None

    # -- the end of the message --------------------------------------------------------

    def end_of_message(self, message: Spool, sender: str, recipients: list[str]) -> Outcome:
        """Headers, end of headers, body and end of message to each milter in
        turn, each seeing the message as the ones before it left it."""
        out = Outcome(sender, list(recipients))
        if self.refusal is not None:
            out.reply = self.refusal
            return out
        if self.discard:
            self._abort_message()
            out.discard = True
            return out
        parsed = _Message(message)
        changed = False
        for mt in self.milters:
            if not mt.in_message or mt.done_message:
                continue
            if mt.failed:
                reply = self._default_reply()
                if reply is not None:
                    out.reply = reply
                    break
                continue
            try:
                result = self._message_to(mt, parsed)
            except MilterFailure as exc:
                reply = self._failed(mt, "END-OF-MESSAGE", str(exc))
                if reply is not None:
                    out.reply = reply
                    break
                continue
            mt.in_message = False
            if isinstance(result, m.EndOfMessage):
                if isinstance(result.reply, m.ProtocolError):  # checked by the transport; kept for the types
                    continue
                changed |= self._apply(mt, result.modifications, parsed, out)
                if result.quarantine is not None:
                    out.hold = result.quarantine or "quarantined by a milter"
                verdict = result.reply
            else:
                verdict = result
            if verdict.kind == "discard":
                out.discard = True
                break
            reply = _smtp_reply(verdict)
            if reply is not None:
                out.reply = reply
                self._log_reject("END-OF-MESSAGE", reply, "")
                break
        self._abort_message()  # those not asked (after a verdict) forget the message
        if out.reply is None and not out.discard and not out.recipients:
            log.info(f"milter-discard: END-OF-MESSAGE from {self.client}: every recipient deleted", self.queue_id)
            out.discard = True
        if changed:
            out.message = parsed
        else:
            parsed.close()
        return out

    def _message_to(self, mt: _Milter, msg: _Message) -> m.Reply | m.EndOfMessage | None:
        cmd_t, body_t = self.settings.timeouts.command, self.settings.timeouts.content
        for name, value in msg.headers:
            r = self._send(mt, m.SMFIC_HEADER, m.encode_header(name, _header_value(value)), cmd_t)
            if isinstance(r, m.Reply) and r.kind not in ("continue", "skip"):
                return r
        r = self._send(mt, m.SMFIC_EOH, m.encode_eoh(), cmd_t)
        if isinstance(r, m.Reply) and r.kind != "continue":
            return r
        skipped = False
        for text in msg.body_chunks():
            for chunk in m.encode_body(text.replace(b"\n", b"\r\n")):
                r = self._send(mt, m.SMFIC_BODY, chunk, body_t)
                if isinstance(r, m.Reply):
                    if r.kind == "skip":
                        skipped = True
                        break
                    if r.kind != "continue":
                        return r
            if skipped:
                break
        r = self._send(mt, m.SMFIC_BODYEOB, m.encode_eom(), body_t)
        if not isinstance(r, m.EndOfMessage):
            raise MilterFailure("no end-of-message reply")
        if isinstance(r.reply, m.ProtocolError):
            raise MilterFailure(r.reply.reason)
        return r

    def _apply(self, mt: _Milter, mods: list[m.Modification], msg: _Message, out: Outcome) -> bool:
        from pymta.lib.address import valid_envelope_address  # noqa: PLC0415 lazy

        body: Spool | None = None
        carry = b""  # a CR that ended a REPLBODY packet: the LF may start the next
        for mod in mods:
            kind = mod.kind
            if kind == "addheader":
                msg.headers.append((mod.name, _field_value(mod.value)))
            elif kind == "insheader":
                msg.headers.insert(min(mod.index, len(msg.headers)), (mod.name, _field_value(mod.value)))
            elif kind == "chgheader":
                msg.change_header(mod.name, mod.index, mod.value)
            elif kind in ("addrcpt", "delrcpt", "chgfrom"):
                address = mod.value.strip().removeprefix("<").removesuffix(">")
                if not valid_envelope_address(address, allow_null=kind == "chgfrom"):
                    log.warning(
                        f"milter {mt.spec}: {kind} <{log.printable(address)}> ignored: bad address", self.queue_id
                    )
                    continue
                if mod.args.strip():
                    log.warning(
                        f"milter {mt.spec}: {kind} <{log.printable(address)}>: ESMTP parameters "
                        f"{log.printable(mod.args.strip())[:200]} ignored (none is supported)",
                        self.queue_id,
                    )
                if kind == "addrcpt":
                    if address not in out.recipients:
                        out.recipients.append(address)
                elif kind == "delrcpt":
                    out.recipients = [r for r in out.recipients if r.lower() != address.lower()]
                else:
                    out.sender = address
            elif kind == "replbody":
                if body is None:
                    body = Spool(msg.tmp_dir)
                data = carry + mod.body
                carry = b"\r" if data.endswith(b"\r") else b""
                body.write(data[: len(data) - len(carry)].replace(b"\r\n", b"\n"))
            out.changes.append(f"{kind} {mod.name or mod.value}".strip() if kind != "replbody" else kind)
        if body is not None:
            body.write(carry)
            msg.replace_body(body)
        return any(mod.kind in ("addheader", "insheader", "chgheader", "replbody") for mod in mods)

    # -- helpers -------------------------------------------------------------------------

    def _send(self, mt: _Milter, event: bytes, packet: bytes, timeout: float):
        conn = mt.conn
        assert conn is not None and conn.session is not None
        if conn.session.negotiation.skips(event):
            return None
        names = self.settings.macros.get(event)
        if names:
            values = {n: self.values[n] for n in names if self.values.get(n)}
            if values:
                conn.event(m.SMFIC_MACRO, m.encode_macro(event, values), timeout)
        return conn.event(event, packet, timeout)

    def _event(self, event: bytes, packet: bytes, session_wide: bool = False, what: str = "") -> Reply | None:
        """One event to every milter still listening, in order; the first
        refusal is the answer (later milters are not asked)."""
        if self.refusal is not None:
            return self.refusal
        stage = _STAGES[event]
        timeout = self.settings.timeouts.command
        for mt in self.milters:
            if mt.failed:
                # the default action answers from MAIL on: HELO/EHLO go through, as the client must say who it is
                reply = None if session_wide else self._default_reply()
                if reply is not None:
                    return reply
                continue
            if mt.done_session or (mt.done_message and not session_wide) or mt.conn is None:
                continue
            try:
                r = self._send(mt, event, packet, timeout)
            except MilterFailure as exc:
                reply = self._failed(mt, stage, str(exc))
                if reply is not None and not session_wide:
                    return reply
                continue
            if not isinstance(r, m.Reply) or r.kind == "continue":
                continue
            if r.kind == "accept":
                if session_wide:
                    mt.done_session = True
                else:
                    mt.done_message = True
                continue
            if r.kind == "discard":
                if session_wide:
                    self.discard_session = True
                self.discard = True
                continue
            reply = _smtp_reply(r)
            if reply is None:  # skip outside the body, shutdown, conn_fail, an early quarantine
                reply = self._failed(mt, stage, f"unexpected {r.kind} reply")
                if reply is not None and not session_wide:
                    return reply
                continue
            self._log_reject(stage, reply, what)
            if session_wide:
                self.refusal = reply
            return reply
        return None

    def _abort_message(self) -> None:
        t = self.settings.timeouts.command
        for mt in self.milters:
            if mt.in_message and not (mt.failed or mt.done_session or mt.done_message) and mt.conn is not None:
                try:
                    mt.conn.event(m.SMFIC_ABORT, m.encode_abort(), t)
                except MilterFailure as exc:
                    self._failed(mt, "ABORT", str(exc))
            mt.in_message = False

    def _default_reply(self) -> Reply | None:
        return {"tempfail": TEMPFAIL, "reject": REJECT}.get(self.settings.default_action)

    def _failed(self, mt: _Milter, stage: str, why: str) -> Reply | None:
        """A milter that is down, slow or broken: logged once, then the default action."""
        mt.failed = True
        mt.in_message = False
        if mt.conn is not None:
            mt.conn.close(wait=False)
        action = self.settings.default_action
        log.warning(
            f"milter {mt.spec}: {stage} from {self.client}: {why}; milter_default_action={action}",
            self.queue_id or "NOQUEUE",
        )
        return self._default_reply()

    def _log_reject(self, stage: str, reply: Reply, what: str) -> None:
        log.info(
            f"milter-reject: {stage} from {self.client}: {reply.code} {reply.enhanced} {reply.text}; "
            f"from=<{self.sender}>{' ' + what if what else ''} helo=<{log.printable(self.helo_name)}>",
            self.queue_id or "NOQUEUE",
        )


def _smtp_reply(r: m.Reply) -> Reply | None:
    """The SMTP reply of a refusing verdict (Postfix's words), None for the others."""
    if r.kind == "reject":
        return REJECT
    if r.kind == "tempfail":
        return TEMPFAIL
    if r.kind == "replycode":
        text = " ".join(r.text.replace("\r", "\n").split("\n")).strip()
        text = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
        enhanced, _, rest = text.partition(" ")
        parts = enhanced.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == r.code[0]:
            return Reply(int(r.code), enhanced, rest)
        return Reply(int(r.code), "", text)
    return None


def _header_value(raw: str) -> str:
    """A stored field's value as milters get it: without the space after the colon."""
    return raw.lstrip(" \t")


def _field_value(value: str) -> str:
    """A milter's header value as stored: after ": ", LF line ends, every
    continuation line indented."""
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [lines[0]] + [ln if ln[:1] in (" ", "\t") else "\t" + ln for ln in lines[1:]]
    text = "\n".join(lines).replace("\0", "")
    return " " + text if text and text[0] not in " \t" else text


class _Message:
    """A message as header fields (name, raw value after the colon) and a body
    read from a spool in chunks (the header block is read into memory)."""

    def __init__(self, spool: Spool) -> None:
        self.tmp_dir = spool.tmp_dir
        limit = 1 << 16
        while True:  # enough of the text to hold the header block
            head = spool.read(0, limit)
            if head.startswith(b"\n") or b"\n\n" in head or len(head) == spool.size:
                break
            limit *= 4
        self.headers: list[tuple[str, str]] = []
        pos = 0
        self.separator = ""
        while pos < len(head):
            end = head.find(b"\n", pos)
            line = head[pos:] if end < 0 else head[pos:end]
            nxt = len(head) if end < 0 else end + 1
            if line == b"":
                self.separator = "\n"
                pos = nxt
                break
            if line[:1] in (b" ", b"\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + "\n" + _text(line))
            else:
                name, colon, value = line.partition(b":")
                if not colon or not name or any(c <= 32 or c == 127 for c in name):
                    break  # no field: the body starts here
                self.headers.append((_text(name), _text(value)))
            pos = nxt
        self._body: tuple[Spool, int] = (spool, pos)  # the body: the spool's text from an offset
        self._own: Spool | None = None  # a body a milter gave (REPLBODY), closed with the message

    def body_chunks(self):
        """The body (LF line ends), a chunk at a time."""
        spool, start = self._body
        return spool.chunks(start)

    def replace_body(self, body: Spool) -> None:
        if self._own is not None:
            self._own.close()
        self._own = body
        self._body = (body, 0)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None

    def change_header(self, name: str, index: int, value: str) -> None:
        """The index-th (from 1) field called ``name``: changed, or removed when
        ``value`` is empty; added when there is no such field."""
        index = max(index, 1)
        seen = 0
        for i, (n, _) in enumerate(self.headers):
            if n.lower() == name.lower():
                seen += 1
                if seen == index:
                    if value:
                        self.headers[i] = (n, _field_value(value))
                    else:
                        del self.headers[i]
                    return
        if value:
            self.headers.append((name, _field_value(value)))

    def header_bytes(self) -> bytes:
        head = "".join(f"{n}:{v}\n" for n, v in self.headers)
        return (head + self.separator).encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class MilterSink:
    """In front of a queue writer's sink: holds the text, and at commit runs
    the end of message through ``chain`` and writes the outcome into the
    entry (or refuses it: ``Refused``; or drops it: discard)."""

    def __init__(self, inner, chain: Chain, sender: str, recipients: list[str], meta: dict, tmp_dir=None) -> None:
        """``tmp_dir``: where a message past 1 MB waits, in an unlinked file (the queue's tmp/)."""
        self.inner = inner
        self.chain = chain
        self.queue_id = inner.queue_id
        self.sender = sender
        self.recipients = recipients
        self.meta = meta
        self.disposition = "queued"  # or "discarded", "held" after commit
        self.error = None  # made only over a sink that opened (smtpd's _Sink)
        self._spool = Spool(tmp_dir)
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._spool.write(data)
        self._size += len(data)

    def commit(self) -> str:
        try:
            return self._commit()
        finally:
            self._spool.close()

    def _commit(self) -> str:
        out = self.chain.end_of_message(self._spool, self.sender, self.recipients)
        try:
            return self._deliver(out)
        finally:
            if out.message is not None:
                out.message.close()

    def _deliver(self, out: Outcome) -> str:
        if out.reply is not None:
            raise Refused(out.reply)
        who = f"from {self.chain.client}: " if self.chain.client else ""
        if out.discard:
            self.inner.abort()
            self.disposition = "discarded"
            log.info(
                f"milter-discard: END-OF-MESSAGE {who}milter triggers DISCARD action; from=<{self.sender}>",
                self.queue_id,
            )
            return self.queue_id
        meta = dict(self.meta)
        if out.hold is not None:
            meta["hold_reason"] = f"milter: {out.hold}"[:200]
        if out.sender != self.sender or out.recipients != self.recipients or out.hold is not None:
            self.inner.revise(out.sender, out.recipients, meta, hold=out.hold is not None)
        if out.changes:
            log.info(f"milter: {', '.join(out.changes)[:500]}", self.queue_id)
        if out.message is None:
            for chunk in self._spool.chunks():
                self.inner.write(chunk)
        else:
            head = out.message.header_bytes()
            self.inner.write(head)
            self._size = len(head)
            for chunk in out.message.body_chunks():
                self.inner.write(chunk)
                self._size += len(chunk)
        qid = self.inner.commit()
        if out.hold is not None:
            self.disposition = "held"
            log.info(
                f"milter-hold: END-OF-MESSAGE {who}milter triggers HOLD action ({log.printable(out.hold)}); "
                f"from=<{out.sender}>",
                qid,
            )
        return qid

    def abort(self) -> None:
        self._spool.close()
        self.inner.abort()


def filter_local(cfg, writer, sender: str, recipients: list[str], message: bytes) -> str:
    """Mail that did not come over SMTP (sendmail's: the maildrop pickup, or
    written straight to the queue) through ``milter.non_smtpd_milters``, into
    ``writer`` (a QueueWriter): told, as Postfix does, of a connection from
    localhost [127.0.0.1] that said HELO localhost.  The queue ID (also when a
    milter discarded the message); ``Refused`` when a milter refuses it (a
    recipient refused is left out, all of them refuse the message)."""
    chain = Chain(list(cfg["milter.non_smtpd_milters"]), Settings(cfg))
    chain.client = "localhost[127.0.0.1]"
    try:
        reply = chain.connect("localhost", "127.0.0.1", 0, "127.0.0.1") or chain.helo("localhost")
        reply = reply or chain.mail(sender, [], writer.queue_id)
        if reply is not None:
            raise Refused(reply)
        kept = []
        for rcpt in recipients:
            reply = chain.rcpt(rcpt, [])
            if reply is None:
                kept.append(rcpt)
        if not kept:
            raise Refused(reply or REJECT)
        reply = chain.data()
        if reply is not None:
            raise Refused(reply)
        sink = MilterSink(writer, chain, sender, kept, writer.envelope.meta, os.path.dirname(writer.tmp))
        sink.write(message)
        return sink.commit()
    finally:
        chain.close()
