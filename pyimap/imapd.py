"""pyimap-imapd: the IMAP4rev1 server program.

The IMAP dialogue is ``pyimap.imap_server`` (sans-I/O); this module is the
policy behind it -- how passwords are checked (users file + auth guard),
where a user's mail lives (``MAIL/<domain>/<user>/``) -- and ``main``.

Services: ``imap`` (port 143, STARTTLS) and ``imaps`` (993, implicit TLS).
"""

from __future__ import annotations

import sys
import time

from pymta.lib import log
from pymta.lib.authguard import LoginBackend


class IMAPBackend(LoginBackend):
    def authenticate(self, info, username: str, password: bytes):
        """The canonical account name, or None; runs in a Job (it sleeps after
        failures).  Raises LoginRefused when the account's failure budget is
        spent: the IMAP machine logs it and answers NO [UNAVAILABLE]."""
        ok, delay = self.check_login(info, username, password)
        record = self.users.lookup(username) if ok else None
        if ok:
            log.info(f"imap-login: user=<{record.address}>, rip={info.peer_ip}, tls={'yes' if info.tls else 'no'}, ok")
        else:
            log.warning(
                f"imap-login: auth failed, user=<{username[:100]}>, rip={info.peer_ip} "
                f"(user {'known' if self.users.exists(username) else 'unknown'}, tls={'yes' if info.tls else 'no'})"
            )
        if delay:
            time.sleep(delay)
        return record.address if ok else None

    rawlog = None  # account -> rawlog.RawLog or None, when rawlog.users are traced

    def open_store(self, account: str):
        from pyimap.store import UserStore  # noqa: PLC0415 lazy
        from pymda.maildir import user_maildir  # noqa: PLC0415 lazy

        limits = (0, 0)
        record = self.users.lookup(account)
        if record is not None and (record.fields or self.cfg.get("quota.default_rule")):
            from pymda.quota import limits_of  # noqa: PLC0415 lazy

            limits = limits_of(self.cfg, record)
        store = UserStore(user_maildir(self.cfg.mail_dir, account), limits)
        store.ensure()
        return store


def build(cfg, service: str):
    from pyimap.imap_server import IMAPServer, IMAPSettings  # noqa: PLC0415 lazy

    backend = IMAPBackend(cfg, service)
    if cfg.get("rawlog.dir"):
        from pymta.lib import rawlog  # noqa: PLC0415 lazy: only when tracing is configured

        backend.rawlog = rawlog.from_config(cfg, "imap")
    base = IMAPSettings(
        hostname=cfg["hostname"],
        max_line=cfg["imapd.max_line"],
        max_literal=cfg["imapd.max_literal"],
        autologout=cfg["imapd.autologout"],
        login_timeout=cfg["imapd.login_timeout"],
        idle_poll=cfg["imapd.idle_poll"],
        idle_inotify=cfg["imapd.idle_inotify"],
    )
    from pymta.lib.daemon import per_connection  # noqa: PLC0415 lazy

    return per_connection(
        IMAPServer, base, backend, lambda settings, info: settings.replace(plaintext_ok=backend.plaintext_ok(info))
    )


# What a session may import, loaded before the switch to daemon_user (see daemon.preload).
PRELOAD = (
    "pyimap.imapd",
    "pyimap.imap_server",
    "pyimap.store",
    "pyimap.fetch",
    "pyimap.search",
    "pyimap.message",
    "pyimap.parser",
    "pyimap.mailbox_names",
    "pymda.maildir",
    "pymda.index",
    "pymda.quota",
)


# Jobs of one listening process that run Python at once (pymta.lib.jobslots): with
# more, eight clients fetching at once make every thread, the loop first, wait its
# turn for the interpreter lock (measured: 60-67 sessions/s at 8 or 32, 72-75 at 2).
JOB_SLOTS = 2


def main(argv: list[str] | None = None) -> int:
    from pymta.lib import daemon  # noqa: PLC0415 lazy

    return daemon.main(
        argv,
        prog="pyimap-imapd",
        description="The pymail IMAP4rev1 server.",
        service="imap",
        tls_service="imaps",
        build=build,
        busy_reply=b"* BYE Too many connections, try again later\r\n",
        section="imapd",
        client_busy_reply=b"* BYE Too many connections from your address, try again later\r\n",
        preload=PRELOAD,
        job_slots=JOB_SLOTS,
    )


if __name__ == "__main__":
    sys.exit(main())
