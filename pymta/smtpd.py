"""pymta-smtpd: the ESMTP server program.

The SMTP dialogue is ``pymta.smtp_server`` (sans-I/O); this module is the
policy behind it -- who may relay, which recipients exist, how passwords
are checked, where messages go (the queue) -- and the program's ``main``.

Services: ``smtp`` (port 25: mail for local users, relay only for trusted
networks or after AUTH), ``submission`` and ``smtps`` (AUTH required before
MAIL; smtps is implicit TLS).
"""

from __future__ import annotations

import sys
import threading
import time
from functools import partial

from pymta.lib import jobslots, log, metrics
from pymta.lib.address import qualify
from pymta.lib.authguard import LoginBackend
from pymta.lib.jobslots import after_reply
from pymta.queue import Queue, QueueError
from pymta.smtp_server import IN_JOB, Reply, SMTPServer, SMTPSettings

SUBMISSION_SERVICES = ("submission", "smtps")
_WATCH_LOCK = threading.Lock()


class _Sink:
    """Queue writer that turns a write failure into a failed commit.

    The SMTP machine keeps draining DATA after a disk error and answers once
    (451) at the end; this is where the error waits until then.
    """

    def __init__(self, open_writer) -> None:
        self.error: Exception | None = None
        self.writer = None
        self.size = 0
        try:
            self.writer = open_writer()
            self.queue_id = self.writer.queue_id
        except (QueueError, OSError) as exc:
            self.error = exc
            self.queue_id = "NOQUEUE"

    def write(self, data: bytes) -> None:
        if self.error is None:
            try:
                self.writer.write(data)
                self.size += len(data)
            except (QueueError, OSError) as exc:
                self.error = exc

    def commit(self) -> str:
        if self.error is not None:
            raise QueueError(str(self.error), getattr(self.error, "errno", None))
        return self.writer.commit()

    def revise(self, sender: str, recipients: list[str], meta: dict, hold: bool = False) -> None:
        """The milters' envelope (QueueWriter.revise), before any text is written."""
        if self.error is None:
            self.writer.revise(sender, recipients, meta, hold)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class SMTPBackend(LoginBackend):
    """smtpd's policy and queue behind the SMTP machine (smtp_server.Backend).

    ``queue``: where messages go (default: the queue; ``sendmail -bs`` run by
    an ordinary user passes the maildrop).  ``check_local_recipients=False``
    accepts every local recipient unchecked, for a caller that cannot read
    the users file: the runner checks them (unknown ones bounce), as
    Postfix's ``sendmail -bs`` does."""

    def __init__(self, cfg, service: str, queue=None, check_local_recipients: bool = True) -> None:
        super().__init__(cfg, service)
        self.queue = Queue(cfg.queue_dir) if queue is None else queue
        self.check_local_recipients = check_local_recipients
        self._aliases = None
        self._trusted = None
        self._milter_specs: list[str] | None = None
        self._milter_settings = None

    @property
    def aliases(self):
        if self._aliases is None:
            from pymta.aliases import Aliases  # noqa: PLC0415 lazy

            self._aliases = Aliases(self.cfg.path_of("aliases"))
        return self._aliases

    def is_trusted(self, ip: str) -> bool:
        if ip == "local":  # sendmail -bs: a local user on a pipe
            return True
        if self._trusted is None:
            import ipaddress  # noqa: PLC0415 lazy

            self._trusted = [ipaddress.ip_network(n, strict=False) for n in self.cfg["smtpd.trusted_networks"]]
        if not self._trusted:
            return False
        import ipaddress  # noqa: PLC0415 lazy

        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def checks_apply(self, session) -> bool:
        """SPF, DKIM and DMARC (pymta.authcheck) for this session: port 25, a
        client outside the trusted networks that did not log in."""
        return (
            self.service == "smtp"
            and self.cfg["checks.enabled"]
            and not session.auth_user
            and not self.is_trusted(session.info.peer_ip)
            and _is_ip(session.info.peer_ip)
        )

    @property
    def checker(self):
        if self._checker is None:
            from pymta.authcheck import Checker  # noqa: PLC0415 lazy: dnspython, pyspf, dkimpy only when used

            self._checker = Checker(self.cfg)
        return self._checker

    _checker = None

    def plaintext_auth_ok(self, info) -> bool:
        return not self.cfg["smtpd.require_tls_for_auth"] or self.plaintext_ok(info)

    # -- the machine's backend interface ------------------------------------------
    def check_sender(self, session, envelope, address: str):
        """On the event loop: a stranger's sender starts the SPF check (in its
        threads); a login's is checked in a Job (recheck_sender)."""
        if session.auth_user:
            return IN_JOB  # the users and aliases files, the rate file and its lock
        if self.checks_apply(session):
            envelope.checks = self.checker.start(session.info.peer_ip, address, session.helo or "")
        return None

    def recheck_sender(self, session, envelope, address: str):
        """In a Job: an authenticated client may use only its own addresses
        (Postfix's reject_sender_login_mismatch), within its hourly message budget."""
        login = session.auth_user
        if not login:
            return self.check_sender(session, envelope, address)
        if self.cfg["submission.sender_login_match"]:
            from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy

            try:
                owned = self.sender_owned(login, address)
            except UsersUnavailable:
                return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
            if not owned:
                return self._refuse(
                    "MAIL",
                    session,
                    envelope,
                    address,
                    "sender_not_owned",
                    Reply(
                        553, "5.7.1", f"<{address}>: Sender address rejected: not owned by user {log.printable(login)}"
                    ),
                )
        if self.sendrate.charge(self.account_key(login), messages=1):
            return self._refuse(
                "MAIL",
                session,
                envelope,
                address,
                "rate_limit",
                Reply(
                    450,
                    "4.7.1",
                    f"<{address}>: Sender address rejected: rate limit exceeded for user "
                    f"{log.printable(login)} ({self.cfg['submission.max_messages_per_hour']} messages per hour)",
                ),
            )
        return None

    def check_recipient(self, session, envelope, address: str):
        """On the event loop, from memory only: IN_JOB whenever the answer
        needs the disk -- a login's rate file, users and aliases not read yet
        or changed since, an unknown recipient (checked again from the disk),
        an ``:include:`` list."""
        if session.auth_user:
            return IN_JOB
        return self._check_recipient(session, envelope, address, False)

    def recheck_recipient(self, session, envelope, address: str):
        """In a Job: check_recipient with the users and aliases files looked at."""
        return self._check_recipient(session, envelope, address, True)

    def _check_recipient(self, session, envelope, address: str, look: bool):
        if not self.check_local_recipients:
            local, _, domain = address.rpartition("@")
            if local and domain and self.cfg.is_local_domain(domain):
                return None
        # RFC 5321 4.5.1: <Postmaster> without a domain is postmaster of the
        # first local domain, checked like any other local recipient
        address = self.qualify(address)
        local, _, domain = address.rpartition("@")
        if not local or not domain:
            return Reply(501, "5.1.3", "Bad recipient address syntax")
        if self.cfg.is_local_domain(domain):
            reply = self._check_local(session, envelope, address, look)
            if reply is not None:
                return reply
        elif not (session.auth_user or self.is_trusted(session.info.peer_ip)):
            return self._refuse(
                "RCPT",
                session,
                envelope,
                address,
                "relay_denied",
                Reply(554, "5.7.1", f"<{address}>: Relay access denied"),
            )
        if session.auth_user and self.sendrate.charge(self.account_key(session.auth_user), recipients=1):
            return self._refuse(
                "RCPT",
                session,
                envelope,
                address,
                "rate_limit",
                Reply(
                    450,
                    "4.7.1",
                    f"<{address}>: Recipient address rejected: rate limit exceeded for user "
                    f"{log.printable(session.auth_user)} "
                    f"({self.cfg['submission.max_recipients_per_hour']} recipients per hour)",
                ),
            )
        return None

    def _check_local(self, session, envelope, address: str, look: bool = True):
        """Every local recipient, aliases expanded, ends at a user -- else it is
        refused now, not bounced later to a sender who may be forged.
        ``look=False`` (the event loop): from the tables in memory, when no
        change came since a Job read them, and only to accept; IN_JOB otherwise."""
        from pymta.aliases import unknown_targets  # noqa: PLC0415 lazy
        from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy

        if not look:
            changes = self._table_changes
            if changes is None or changes.poll() != self._tables_generation:
                return IN_JOB  # not read yet, or changed since
            exists = partial(self.users.exists, look=False)
            unknown = unknown_targets(self.aliases, address, self._is_local_address, exists, False)
            return None if unknown == [] else IN_JOB  # None: an :include: list to read
        generation = self._watch_tables()
        try:
            unknown = unknown_targets(self.aliases, address, self._is_local_address, self.users.exists)
        except UsersUnavailable:
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
        self._tables_generation = generation  # what was read is what the loop may use
        if not unknown:
            return None
        if unknown != [address]:  # the admin's alias is broken: say where, in the log only
            log.warning(f"alias <{address}> leads to <{unknown[0]}>, which is no user: recipient refused")
        return self._refuse(
            "RCPT",
            session,
            envelope,
            address,
            "unknown_user",
            Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown in local recipient table"),
        )

    # The loop answers RCPT from the users and aliases in memory only while no
    # change to either file came since a Job read them (FileChanges: inotify,
    # read without blocking).  None: no watch (not made yet, or no inotify): Jobs.
    _table_changes = None
    _tables_generation = -2
    _table_watch_failed = False

    def _watch_tables(self) -> int:
        """In a Job, before the files are read: the change generation to note.
        Only a listening daemon watches (inetd: one session, no loop to spare)."""
        if self._table_changes is None and not self._table_watch_failed and jobslots.threaded():
            with _WATCH_LOCK:  # two sessions' first Jobs at once make one instance
                if self._table_changes is None and not self._table_watch_failed:
                    self._make_table_watch()
        changes = self._table_changes
        return -2 if changes is None else changes.generation

    def _make_table_watch(self) -> None:
        from pymta.lib.dirwatch import FileChanges  # noqa: PLC0415 lazy

        paths = [self.users.path] + ([self.aliases.path] if self.aliases.path else [])
        try:
            self._table_changes = FileChanges(paths)
        except OSError as exc:  # out of inotify instances: every local RCPT is a Job
            self._table_watch_failed = True
            log.warning(f"inotify for the users and aliases files: {exc.strerror}; each lookup is a job")

    def _is_local_address(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    def sender_owned(self, login: str, address: str) -> bool:
        from pymta.senders import sender_owned  # noqa: PLC0415 lazy

        return sender_owned(self.cfg, login, address, users=self.users, aliases=self.aliases)

    @property
    def sendrate(self):
        if self._sendrate is None:
            from pymta.lib.sendrate import SendRate  # noqa: PLC0415 lazy

            self._sendrate = SendRate(self.cfg)
        return self._sendrate

    _sendrate = None

    def _refuse(self, stage: str, session, envelope, address: str, reason: str, reply):
        """One log line per refusal, as Postfix's NOQUEUE: reject lines, and
        one count under ``reason`` (pymta/metrics.py REFUSAL_REASONS)."""
        metrics.count_later("pymail_smtp_refused_total", service=self.service, reason=reason)  # often on the loop
        auth = f" sasl_username=<{log.printable(session.auth_user)}>" if session.auth_user else ""
        what = f"from=<{envelope.mail_from}>" + (f" to=<{address}>" if stage == "RCPT" else "")
        log.info(
            f"NOQUEUE: reject: {stage} from [{session.info.peer_ip}]: {reply.code} {reply.enhanced} {reply.text}; "
            f"{what}{auth}"
        )
        return reply

    def check_policy(self, session, envelope, address: str):
        """Port 25's checks of the client, asked by the machine (as a Job: DNS
        and disk) after check_recipient accepted ``address``: DNSBL/DNSWL
        score (pymta.dnsbl), then greylisting (pymta.greylist).  Trusted
        networks and authenticated clients skip both.  First, on every service,
        a local user over quota: 452 4.2.2 (pymda.quota)."""
        reply = self._check_quota(session, envelope, address)
        if reply is not None or self.service != "smtp" or not self.client_policy:
            return reply
        ip = session.info.peer_ip
        if session.auth_user or self.is_trusted(ip):
            return None
        allowlisted = False
        if self.cfg["smtpd.dnsbl_sites"]:
            if self._dnsbl is None:
                from pymta.dnsbl import DNSBL  # noqa: PLC0415 lazy

                self._dnsbl = DNSBL(self.cfg)
            verdict = self._dnsbl.verdict(ip)
            # postmaster stays reachable, so a blocked sender can ask why (RFC 5321 4.5.1)
            if verdict.blocked and not self._is_postmaster(address):
                return self._reject(
                    session,
                    envelope,
                    address,
                    "dnsbl",
                    Reply(
                        554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {', '.join(verdict.listed)}"
                    ),
                )
            allowlisted = verdict.score < 0
        if self.cfg["smtpd.greylist"] and not allowlisted:
            from pymta.greylist import Greylist  # noqa: PLC0415 lazy

            passed, why = Greylist.from_config(self.cfg).check(ip, envelope.mail_from, address)
            if not passed:
                return self._reject(
                    session, envelope, address, "greylist", Reply(450, "4.2.0", "Greylisted, try again later")
                )
            if why == "retry":
                log.info(f"greylist: client=[{ip}], from=<{envelope.mail_from}>, to=<{address}>: passed")
        return None

    client_policy = False  # DNSBL or greylisting configured (build)

    def wants_policy(self, session, envelope, address: str) -> bool:
        """The RCPT Job only where it may refuse: port 25's client policy for
        a stranger, or a local user who may have a quota (the users file is in
        memory by now: check_recipient read it)."""
        if self.client_policy and not (session.auth_user or self.is_trusted(session.info.peer_ip)):
            return True
        address = self.qualify(address)
        if not self.check_local_recipients or not self._is_local_address(address):
            return False
        if self.cfg["quota.default_rule"]:
            return True
        from pymta.lib.users import UsersUnavailable, has_quota_rule  # noqa: PLC0415 lazy

        try:
            record = self.users.lookup(address, look=False)  # check_recipient just answered from it
        except UsersUnavailable:
            return False  # check_recipient answered for the file already
        return record is not None and has_quota_rule(record)

    def _check_quota(self, session, envelope, address: str):
        address = self.qualify(address)
        if not self.check_local_recipients or not self._is_local_address(address):
            return None
        from pymda import quota  # noqa: PLC0415 lazy
        from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy

        try:
            full = quota.full_at_rcpt(self.cfg, self.users, address, envelope.size or 0)
        except UsersUnavailable:
            return None  # check_recipient answered for the file already
        if not full:
            return None
        return self._reject(
            session,
            envelope,
            address,
            "over_quota",
            Reply(452, "4.2.2", f"<{address}>: Recipient address rejected: {quota.TEXT}"),
        )

    _dnsbl = None  # pymta.dnsbl.DNSBL, made on first use (its cache serves every session)

    def _is_postmaster(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        return address.lower() == "postmaster" or (local.lower() == "postmaster" and self.cfg.is_local_domain(domain))

    def _reject(self, session, envelope, address: str, reason: str, reply):
        """Log a policy refusal the way Postfix does, one line, count it, and return it."""
        metrics.count_later("pymail_smtp_refused_total", service=self.service, reason=reason)  # often on the loop
        info = session.info
        log.info(
            f"NOQUEUE: reject: RCPT from [{info.peer_ip}]: {reply.code} {reply.enhanced} {reply.text}; "
            f"from=<{envelope.mail_from}> to=<{address}> helo=<{log.printable(session.helo or '')}>"
        )
        return reply

    def qualify(self, address: str) -> str:
        return qualify(self.cfg, address)

    def authenticate(self, session, username: str, password: str) -> bool:
        """Raises LoginRefused (the smtp machine answers 454 4.7.0 and logs it)
        when the account's failure budget is spent."""
        info = session.info
        ok, delay = self.check_login(info, username, password)
        if ok:
            log.info(f"client=[{info.peer_ip}], sasl_username={username}, auth ok")
        else:
            # Say in the log why a login failed (the client only hears "failed"), and make guessing slow.
            log.warning(
                f"client=[{info.peer_ip}], sasl_username={username}, auth failed "
                f"(user {'known' if self.users.exists(username) else 'unknown'}, tls={'yes' if info.tls else 'no'})"
            )
        if delay:
            time.sleep(delay)
        return ok

    # -- milters (pymta.milters): each stage in a Job ----------------------------------
    def milter_specs(self) -> list[str]:
        if self._milter_specs is None:
            if self.service in ("smtp", "submission", "smtps") and (
                self.cfg["milter.smtpd_milters"] or self.cfg["milter.listener_milters"]
            ):
                from pymta.milters import smtpd_specs  # noqa: PLC0415 lazy

                self._milter_specs = smtpd_specs(self.cfg, self.service)
            else:
                self._milter_specs = []
        return self._milter_specs

    def _milter_chain(self, session):
        chain = session.info.extra.get("milters")
        if chain is None:
            from pymta import milters  # noqa: PLC0415 lazy

            if self._milter_settings is None:
                self._milter_settings = milters.Settings(self.cfg)
            chain = session.info.extra["milters"] = milters.Chain(self.milter_specs(), self._milter_settings)
        return chain

    def milter_event(self, session, envelope, stage: str, *args):
        chain = self._milter_chain(session)
        info = session.info
        if stage == "connect":
            return chain.connect("", info.peer_ip if _is_ip(info.peer_ip) else "", info.peer_port, info.local_ip)
        if stage == "helo":
            return chain.helo(args[0], info.tls_version if info.tls else "", info.tls_cipher if info.tls else "")
        if stage == "mail":
            from pymta.queue import make_queue_id  # noqa: PLC0415 lazy

            envelope.queue_id = make_queue_id()
            return chain.mail(envelope.mail_from, list(args), envelope.queue_id, session.auth_user or "")
        if stage == "rcpt":
            return chain.rcpt(args[0], args[1])
        if stage == "data":
            return chain.data()
        chain.abort()
        return None

    def milter_close(self, session) -> None:
        chain = session.info.extra.pop("milters", None)
        if chain is not None:
            chain.close(wait=False)

    def open_message(self, session, envelope):
        meta = {"client": session.info.peer_ip, "helo": session.helo or "", "service": self.service}
        if session.auth_user:
            meta["auth"] = session.auth_user
        rcpts = [self.qualify(r) for r in envelope.rcpt_to]
        sink = _Sink(lambda: self.queue.writer(envelope.mail_from, rcpts, meta, queue_id=envelope.queue_id))
        if sink.error is None and self.milter_specs():
            from pymta.milters import MilterSink  # noqa: PLC0415 lazy

            chain = self._milter_chain(session)
            sink = MilterSink(sink, chain, envelope.mail_from, rcpts, meta, self.queue._tmp_dir)
        received = self.received_header(session, envelope, sink.queue_id)
        if envelope.checks is not None and sink.error is None:
            from pymta.authcheck import CheckedSink  # noqa: PLC0415 lazy

            # held until the end of DATA: Authentication-Results goes above Received:
            sink = CheckedSink(sink, self.checker, envelope.checks, session, envelope, received, self.queue._tmp_dir)
        else:
            sink.write(received)
        logged = _LoggingSink(sink, session, envelope)
        if session.auth_user and self.cfg["submission.sender_login_match"]:
            return _FromCheck(logged, self, session, envelope)
        return logged

    def received_header(self, session, envelope, queue_id: str) -> bytes:
        info = session.info
        proto = ("ESMTP" if session.esmtp else "SMTP") + ("S" if info.tls else "") + ("A" if session.auth_user else "")
        helo = log.printable(session.helo or "unknown")
        lines = [
            f"Received: from {helo} ([{info.peer_ip}])",
            f"\tby {self.cfg['hostname']} (pymail) with {proto} id {queue_id}",
        ]
        if info.tls:
            lines.append(f"\t(using {info.tls_version} with cipher {info.tls_cipher})")
        if session.auth_user:
            lines.append(f"\t(authenticated as {log.printable(session.auth_user)})")
        rcpt = f"\tfor <{envelope.rcpt_to[0]}>" if len(envelope.rcpt_to) == 1 else "\t"
        lines.append(f"{rcpt}; {time.strftime('%a, %d %b %Y %H:%M:%S %z')}")
        return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def _is_ip(text: str) -> bool:
    import ipaddress  # noqa: PLC0415 lazy

    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


class _FromCheck:
    """Keeps the header block as the text streams into the queue, and at the
    end refuses the message (550 5.7.1, nothing queued) when its From: names
    an address the login does not own."""

    def __init__(self, inner, backend: SMTPBackend, session, envelope) -> None:
        from pymta.senders import HeaderCatcher  # noqa: PLC0415 lazy

        self.inner = inner
        self.backend = backend
        self.session = session
        self.envelope = envelope
        self.queue_id = inner.queue_id
        self.headers = HeaderCatcher()

    def write(self, data: bytes) -> None:
        self.headers.feed(data)
        self.inner.write(data)

    def commit(self) -> str:
        reply = self._verdict()
        if reply is not None:
            from pymta.smtp_server import Refused  # noqa: PLC0415 lazy

            self.backend._refuse(
                "END-OF-MESSAGE",
                self.session,
                self.envelope,
                self.envelope.mail_from,
                "sender_not_owned" if reply.code >= 500 else "lookup_failure",
                reply,
            )
            raise Refused(reply)
        return self.inner.commit()

    def _verdict(self):
        from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy
        from pymta.senders import header_addresses  # noqa: PLC0415 lazy

        login = log.printable(self.session.auth_user)
        self.headers.finish()
        if self.headers.too_large:
            return Reply(550, "5.7.1", "Message header too large to check the From: address")
        addresses = header_addresses(self.headers.block)
        if addresses is None:
            return Reply(550, "5.7.1", "From: header without a readable address")
        try:
            for address in addresses:
                if not self.backend.sender_owned(self.session.auth_user, address):
                    return Reply(
                        550, "5.7.1", f"<{log.printable(address)}>: From: address rejected: not owned by user {login}"
                    )
        except UsersUnavailable:
            return Reply(451, "4.3.0", "Temporary lookup failure")
        return None

    def abort(self) -> None:
        self.inner.abort()


class _LoggingSink:
    """Logs the Postfix-style line for each queued message."""

    def __init__(self, sink, session, envelope) -> None:
        self.sink = sink
        self.session = session
        self.envelope = envelope
        self.queue_id = sink.queue_id
        self.write = sink.write

    def commit(self) -> str:
        try:
            qid = self.sink.commit()
        except QueueError as exc:
            log.error(f"cannot queue message from <{self.envelope.mail_from}>: {exc}", self.queue_id)
            raise
        # the client has its 250 first; the HELO name and login as they are now (an EHLO
        # or AUTH may follow the 250 before this runs)
        after_reply(partial(self._account, qid, self.session.helo, self.session.auth_user))
        return qid

    def _account(self, qid: str, helo: str | None, auth_user: str | None) -> None:
        """The counters and the log line of a queued message."""
        accepted = ("pymail_smtp_accepted_total", 1, {"service": self.session.info.service})
        metrics.count_all([accepted, *getattr(self.sink, "metric_events", ())])  # the checks' with it: one write
        auth = f", sasl_username={auth_user}" if auth_user else ""
        checks = getattr(self.sink, "summary", "")  # spf=... dkim=... dmarc=... (pymta.authcheck)
        kept = getattr(self.sink, "disposition", "") or getattr(getattr(self.sink, "inner", None), "disposition", "")
        if kept == "discarded":  # a milter dropped it (logged there): nothing queued
            return
        log.info(
            f"client={log.printable(helo or 'unknown')}[{self.session.info.peer_ip}]{auth}, "
            f"from=<{self.envelope.mail_from}>, size={self.sink.size}, nrcpt={len(self.envelope.rcpt_to)}"
            f"{', ' + checks if checks else ''} ({'held' if kept == 'held' else 'queued'})",
            qid,
        )

    def abort(self) -> None:
        self.sink.abort()


def build(cfg, service: str, *, queue=None, check_local_recipients: bool = True):
    """The session factory; ``queue`` and ``check_local_recipients`` as SMTPBackend's."""
    backend = SMTPBackend(cfg, service, queue, check_local_recipients)
    client_policy = service == "smtp" and bool(cfg["smtpd.dnsbl_sites"] or cfg["smtpd.greylist"])
    backend.client_policy = client_policy
    base = SMTPSettings(
        hostname=cfg["hostname"],
        max_message_size=cfg["smtpd.max_message_size"],
        max_recipients=cfg["smtpd.max_recipients"],
        max_command_line=cfg["smtpd.max_command_line"],
        max_text_line=cfg["smtpd.max_text_line"],
        max_errors=cfg["smtpd.max_errors"],
        command_timeout=cfg["smtpd.command_timeout"],
        data_timeout=cfg["smtpd.data_timeout"],
        require_auth=service in SUBMISSION_SERVICES,
        max_session_time=cfg["smtpd.max_session_time"],
        max_junk_commands=cfg["smtpd.max_junk_commands"],
        # a Job after each RCPT: the quota of local users (every service), DNSBL and
        # greylisting (port 25 only, never submission)
        recipient_policy=check_local_recipients or client_policy,
        milters=bool(backend.milter_specs()),
    )
    from pymta.lib.daemon import per_connection  # noqa: PLC0415 lazy

    return per_connection(
        SMTPServer,
        base,
        backend,
        lambda settings, info: settings.replace(auth_plaintext_ok=backend.plaintext_auth_ok(info)),
    )


# What a session may import, loaded before the switch to daemon_user (see daemon.preload).
PRELOAD = ("pymta.smtpd", "pymta.aliases", "pymta.queue", "pymda.quota")


def main(argv: list[str] | None = None) -> int:
    from pymta.lib import daemon  # noqa: PLC0415 lazy

    return daemon.main(
        argv,
        prog="pymta-smtpd",
        description="The pymail ESMTP server.",
        service="smtp",
        tls_service="smtps",
        build=build,
        busy_reply=b"421 4.3.2 Too many connections, try again later\r\n",
        section="smtpd",
        client_busy_reply=b"421 4.7.0 Too many connections from your address, try again later\r\n",
        preload=PRELOAD,
    )


if __name__ == "__main__":
    sys.exit(main())
