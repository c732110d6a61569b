"""pymta-lmtpd: the LMTP server (RFC 2033), delivering straight into the Maildirs.

The dialogue is the SMTP machine in its LMTP mode (``pymta.smtp_server``
with ``SMTPSettings.lmtp``); this module is what stands behind it: which
clients may deliver (``lmtpd.trusted_networks``, or a UNIX socket), which
recipients exist (users and aliases, looked up in a Job as smtpd's policy
checks are), and the delivery itself, which runs in the Job that ends DATA,
never on the event loop:

* the message is spooled to an unlinked file in the queue's ``tmp/``;
* a recipient that is a user (or an alias of exactly one local user) is
  delivered at once through ``pymta.local.LocalDelivery``, the queue
  runner's own seam into pymda -- in process when the mailbox belongs to
  our uid, else pymda-deliver as a child (when root) or the privileged
  pymda-local (another uid), so every user's rules run as that user;
* any other alias (several targets, pipes, files, remote addresses) is
  handed to the queue in one entry, which the runner expands as for mail
  that came by SMTP.

Each recipient gets its own reply: 250 delivered or queued, 452 4.2.2 over
quota, 451 4.2.0 another temporary failure, 550 5.1.1 no such user.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from pymta.lib import log
from pymta.lib.address import qualify
from pymta.smtp_server import Reply, SMTPServer, SMTPSettings

# What a session may import, loaded before the switch to daemon_user (see daemon.preload).
PRELOAD = (
    "pymta.lmtpd",
    "pymta.local",
    "pymta.queue",
    "pymta.aliases",
    "pymda.deliver",
    "pymda.quota",
    "pymda.localserver",
    "pymda.forward",
    "pymda.rules.engine",
    "pymda.rules.actions",
    "pymda.rules.mbox",
    "pymda.maildir",
    "pymta.lib.privilege",
)

# For type checkers only: importing typing costs every inetd connection.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymta.aliases import Aliases
    from pymta.lib.users import UsersFile
    from pymta.local import LocalDelivery
    from pymta.queue import Queue

_QUOTA_TEXTS = tuple(os.strerror(e) for e in (errno.EDQUOT, errno.ENOSPC)) + ("quota",)


class LMTPBackend:
    """lmtpd's policy and delivery behind the SMTP machine (smtp_server.Backend)."""

    def __init__(self, cfg, service: str) -> None:
        self.cfg = cfg
        self.service = service
        self._users: UsersFile | None = None
        self._aliases: Aliases | None = None
        self._queue: Queue | None = None
        self._local: LocalDelivery | None = None
        self._trusted: list | None = None

    # -- what it reads, made on first use ---------------------------------------------
    @property
    def users(self):
        if self._users is None:
            from pymta.lib.users import UsersFile  # noqa: PLC0415 lazy

            self._users = UsersFile(self.cfg.path_of("users"))
        return self._users

    @property
    def aliases(self):
        if self._aliases is None:
            from pymta.aliases import Aliases  # noqa: PLC0415 lazy

            self._aliases = Aliases(self.cfg.path_of("aliases"))
        return self._aliases

    @property
    def queue(self):
        if self._queue is None:
            from pymta.queue import Queue  # noqa: PLC0415 lazy

            self._queue = Queue(self.cfg.queue_dir)
        return self._queue

    @property
    def local(self):
        """The seam into pymda (pymta/local.py), as the queue runner's."""
        if self._local is None:
            from pymta.local import LocalDelivery  # noqa: PLC0415 lazy

            self._local = LocalDelivery(self.cfg, self.users)
        return self._local

    def is_local(self, address: str) -> bool:
        return self.cfg.is_local_domain(address.rpartition("@")[2])

    def is_trusted(self, ip: str) -> bool:
        if ip in ("unix", "local", "unknown"):  # a UNIX socket (the asyncio driver names no peer): its mode decides
            return True
        import ipaddress  # noqa: PLC0415 lazy

        if self._trusted is None:
            self._trusted = [ipaddress.ip_network(n, strict=False) for n in self.cfg["lmtpd.trusted_networks"]]
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    # -- the machine's backend interface ----------------------------------------------
    def check_sender(self, session, envelope, address: str):
        ip = session.info.peer_ip
        if self.is_trusted(ip):
            return None
        log.info(f"NOQUEUE: reject: MAIL from [{ip}]: 554 5.7.1 not in lmtpd.trusted_networks; from=<{address}>")
        return Reply(554, "5.7.1", "Access denied: this LMTP server does not serve your address")

    def check_recipient(self, session, envelope, address: str):
        """Syntax and domain only, on the event loop; the lookups are check_policy's (a Job)."""
        address = qualify(self.cfg, address)
        local, _, domain = address.rpartition("@")
        if not local or not domain:
            return Reply(501, "5.1.3", "Bad recipient address syntax")
        if not self.cfg.is_local_domain(domain):
            return self._refuse(envelope, address, Reply(550, "5.1.2", f"<{address}>: not a local domain"))
        return None

    def wants_policy(self, session, envelope, address: str) -> bool:
        return True  # every recipient is checked in the Job (users and aliases are read there)

    def check_policy(self, session, envelope, address: str):
        """Runs as a Job: the recipient, aliases expanded, ends at users (as smtpd checks it)."""
        from pymta.aliases import unknown_targets  # noqa: PLC0415 lazy
        from pymta.lib.users import UsersUnavailable  # noqa: PLC0415 lazy

        address = qualify(self.cfg, address)
        try:
            unknown = unknown_targets(self.aliases, address, self.is_local, self.users.exists)
        except UsersUnavailable:
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
        if not unknown:
            from pymda import quota  # noqa: PLC0415 lazy

            try:
                full = quota.full_at_rcpt(self.cfg, self.users, address, envelope.size or 0)
            except UsersUnavailable:
                full = False
            if full:  # as Dovecot's lmtp_rcpt_check_quota
                return self._refuse(envelope, address, Reply(452, "4.2.2", f"<{address}>: {quota.TEXT}"))
            return None
        if unknown != [address]:
            log.warning(f"alias <{address}> leads to <{unknown[0]}>, which is no user: recipient refused")
        return self._refuse(envelope, address, Reply(550, "5.1.1", f"<{address}>: User unknown"))

    def _refuse(self, envelope, address: str, reply):
        log.info(f"NOQUEUE: reject: RCPT: {reply.code} {reply.enhanced} {reply.text}; from=<{envelope.mail_from}>")
        return reply

    def authenticate(self, session, username: str, password: str) -> bool:
        return False  # never offered: LMTP has no AUTH here

    def open_message(self, session, envelope):
        return _Delivery(self, session, envelope)

    def received_header(self, session, queue_id: str, rcpts: list[str]) -> bytes:
        info = session.info
        proto = "LMTPS" if info.tls else "LMTP"  # RFC 3848
        peer = f"[{info.peer_ip}]" if info.peer_ip not in ("unix", "unknown", "local") else "local"
        lines = [
            f"Received: from {log.printable(session.helo or 'unknown')} ({peer})",
            f"\tby {self.cfg['hostname']} (pymail) with {proto} id {queue_id}",
        ]
        rcpt = f"\tfor <{rcpts[0]}>" if len(set(rcpts)) == 1 else "\t"
        lines.append(f"{rcpt}; {time.strftime('%a, %d %b %Y %H:%M:%S %z')}")
        return ("\n".join(lines) + "\n").encode("utf-8", "replace")


class _Delivery:
    """One message: spooled as it arrives, delivered to each recipient at
    ``commit`` (the machine's Job), which returns one Reply per RCPT."""

    def __init__(self, backend: LMTPBackend, session, envelope) -> None:
        from pymta.queue import make_queue_id  # noqa: PLC0415 lazy

        self.backend = backend
        self.session = session
        self.envelope = envelope
        self.queue_id = make_queue_id()
        self.error: OSError | None = None
        self.size = 0
        self.fh = None
        self.rcpts = [qualify(backend.cfg, r) for r in envelope.rcpt_to]
        try:
            tmp = str(backend.queue.path / "tmp")
            try:  # unlinked from the start: nothing to clean up after a crash
                fd = os.open(tmp, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                import tempfile  # noqa: PLC0415 lazy: a file system without O_TMPFILE

                fd = os.dup(tempfile.TemporaryFile(dir=tmp).fileno())
            self.fh = os.fdopen(fd, "w+b")
        except OSError as exc:
            self.error = exc
        self.write(backend.received_header(session, self.queue_id, self.rcpts))

    def write(self, data: bytes) -> None:
        if self.error is None and self.fh is not None:
            try:
                self.fh.write(data)
                self.size += len(data)
            except OSError as exc:
                self.error = exc

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def commit(self) -> list[Reply]:
        if self.error is not None:
            log.error(f"cannot spool message from <{self.envelope.mail_from}>: {self.error}", self.queue_id)
            raise self.error
        assert self.fh is not None
        try:
            self.fh.flush()
            return self._deliver_all()
        finally:
            self.abort()

    def _deliver_all(self) -> list[Reply]:
        from pymta.queue import Entry, Envelope  # noqa: PLC0415 lazy

        backend = self.backend
        sender = self.envelope.mail_from or ""
        qid = self.queue_id
        info = self.session.info
        log.info(
            f"client={log.printable(self.session.helo or 'unknown')}[{info.peer_ip}], from=<{sender}>, "
            f"size={self.size}, nrcpt={len(self.rcpts)} (lmtp)",
            qid,
        )
        entry = Entry(backend.queue, backend.queue.path / "tmp" / qid, self.fh, Envelope(sender, self.rcpts, qid), 0)
        replies: dict[str, Reply] = {}
        by_user: dict[str, Reply] = {}  # one copy per mailbox (alice and postmaster -> alice), as the runner
        queued: list[str] = []
        for rcpt in self.rcpts:
            if rcpt in replies or rcpt in queued:
                continue
            user = self._single_user(rcpt)
            if user is None:
                queued.append(rcpt)
            elif user.lower() in by_user:
                replies[rcpt] = by_user[user.lower()]
            else:
                replies[rcpt] = by_user[user.lower()] = self._deliver_one(entry, user, rcpt)
        if queued:
            reply = self._queue(entry, queued)
            for rcpt in queued:
                replies[rcpt] = reply
        return [replies[r] for r in self.rcpts]

    def _single_user(self, rcpt: str) -> str | None:
        """The one local user mail to ``rcpt`` goes to, or None when it is an
        alias with anything else (several targets, a pipe, a file, a remote address)."""
        try:
            targets = self.backend.aliases.expand(rcpt, self.backend.is_local)
            if len(targets) != 1:
                return None
            target = targets[0][1]
            if target.kind != "address" or not self.backend.is_local(target.value):
                return None
            return target.value if self.backend.users.exists(target.value) else None
        except Exception:  # users file unavailable and the like: the queue retries it
            return None

    def _deliver_one(self, entry, user: str, rcpt: str) -> Reply:
        from pymda.deliver import DeliveryError  # noqa: PLC0415 lazy
        from pymta.lib import sysexits  # noqa: PLC0415 lazy

        qid = self.queue_id
        try:
            way = self.backend.local.deliver(entry, user, rcpt, once=False)
        except DeliveryError as exc:
            text = str(exc)
            if exc.exit_code == sysexits.EX_NOUSER:
                reply = Reply(550, "5.1.1", f"<{rcpt}>: User unknown")
            elif exc.temporary or exc.exit_code not in sysexits.PERMANENT:
                if exc.enhanced == "4.2.2" or any(t.lower() in text.lower() for t in _QUOTA_TEXTS):
                    reply = Reply(452, "4.2.2", f"<{rcpt}>: Mailbox full")
                else:
                    reply = Reply(451, "4.2.0", f"<{rcpt}>: Temporary delivery failure, try again later")
            else:
                reply = Reply(550, "5.2.0", f"<{rcpt}>: Delivery failed")
            self._log(rcpt, user, reply, text)
            return reply
        except Exception as exc:  # a bug or a disk error must not end the session: the client retries
            reply = Reply(451, "4.3.0", f"<{rcpt}>: Local error in processing")
            self._log(rcpt, user, reply, f"{type(exc).__name__}: {exc}")
            return reply
        reply = Reply(250, "2.0.0", f"<{rcpt}> {qid} Saved")
        self._log(rcpt, user, reply, f"delivered ({way})")
        return reply

    def _queue(self, entry, rcpts: list[str]) -> Reply:
        """Aliases go to the queue, in one entry the runner expands."""
        from pymta.queue import QueueError  # noqa: PLC0415 lazy

        backend = self.backend
        info = self.session.info
        meta = {"client": info.peer_ip, "helo": self.session.helo or "", "service": backend.service}
        writer = None
        try:
            writer = backend.queue.writer(self.envelope.mail_from or "", rcpts, meta)
            for chunk in entry.message_chunks():
                writer.write(chunk)
            qid = writer.commit()
        except (QueueError, OSError) as exc:
            if writer is not None:
                writer.abort()
            no_space = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            reply = (
                Reply(452, "4.3.1", "Insufficient system storage") if no_space else Reply(451, "4.3.0", "Queue error")
            )
            for rcpt in rcpts:
                self._log(rcpt, rcpt, reply, f"cannot queue: {exc}")
            return reply
        backend.queue.wake(qid)
        reply = Reply(250, "2.1.5", f"Ok: queued as {qid}")
        for rcpt in rcpts:
            self._log(rcpt, rcpt, reply, f"alias, queued as {qid}")
        return reply

    def _log(self, rcpt: str, user: str, reply: Reply, what: str) -> None:
        status = "sent" if reply.code < 400 else "deferred" if reply.code < 500 else "bounced"
        orig = f", orig_to=<{rcpt}>" if user != rcpt else ""
        log.info(
            f"to=<{user}>{orig}, relay=lmtp, status={status} ({reply.code} {reply.enhanced}; {what})", self.queue_id
        )


def build(cfg, service: str):
    """The session factory."""
    backend = LMTPBackend(cfg, service)
    settings = SMTPSettings(
        hostname=cfg["hostname"],
        max_message_size=cfg["smtpd.max_message_size"],
        max_recipients=cfg["smtpd.max_recipients"],
        max_command_line=cfg["smtpd.max_command_line"],
        max_text_line=cfg["smtpd.max_text_line"],
        max_errors=cfg["smtpd.max_errors"],
        command_timeout=cfg["smtpd.command_timeout"],
        data_timeout=cfg["smtpd.data_timeout"],
        max_session_time=cfg["smtpd.max_session_time"],
        max_junk_commands=cfg["smtpd.max_junk_commands"],
        recipient_policy=True,  # the users and aliases are read in a Job, never on the event loop
        lmtp=True,
    )
    if os.geteuid() == 0 and not cfg["daemon_user"]:
        # as the queue runner: deliveries never run as root by accident (pymail-security(7))
        log.error(
            'refusing to run as root: set daemon_user (pymail init does), or daemon_user = "root" '
            "to deliver as root on purpose"
        )
        from pymta.lib import sysexits  # noqa: PLC0415 lazy

        raise SystemExit(sysexits.EX_CONFIG)
    return lambda: SMTPServer(settings, backend)


def main(argv: list[str] | None = None) -> int:
    from pymta.lib import daemon  # noqa: PLC0415 lazy

    return daemon.main(
        argv,
        prog="pymta-lmtpd",
        description="The pymail LMTP server: delivers into the Maildirs.",
        service="lmtp",
        tls_service="lmtps",
        build=build,
        busy_reply=b"421 4.3.2 Too many connections, try again later\r\n",
        section="lmtpd",
        client_busy_reply=b"421 4.7.0 Too many connections from your address, try again later\r\n",
        preload=PRELOAD,
    )


if __name__ == "__main__":
    sys.exit(main())
