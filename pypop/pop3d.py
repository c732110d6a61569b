"""pypop-pop3d: the POP3 server program.

The POP3 dialogue is ``pypop.pop3_server`` (sans-I/O); this module is the
policy behind it -- where passwords are checked, how failed logins are
slowed down, where a user's Maildir is -- and the program's ``main``, built
on the daemon skeleton every pymail server shares (``pymta.lib.daemon``):
``--listen HOST:PORT``, systemd ``LISTEN_FDS`` (Accept=no), or one session
on stdin/stdout (inetd, Accept=yes).

Services: ``pop3`` (port 110, STLS offered when a certificate is
configured) and ``pop3s`` (port 995, implicit TLS: start with ``--tls``).
"""

from __future__ import annotations

import sys
import time

from pymta.lib import log
from pymta.lib.authguard import LoginBackend
from pypop.pop3_server import LoginResult, POP3Server


class POP3Backend(LoginBackend):
    def __init__(self, cfg, service: str) -> None:
        super().__init__(cfg, service)
        self.hostname = cfg["hostname"]
        self.apop_enabled = bool(cfg["pop3d.enable_apop"])
        self.rawlog = None  # account -> rawlog.RawLog or None, when rawlog.users are traced
        if cfg.get("rawlog.dir"):
            from pymta.lib import rawlog  # noqa: PLC0415 lazy: only when tracing is configured

            self.rawlog = rawlog.from_config(cfg, "pop3")

    # -- slow: these run as Jobs -----------------------------------------------------

    def login(self, info, user: str, password: bytes, method: str) -> LoginResult:
        return self._checked_login(info, user, method, password, None, lambda: "wrong password")

    def apop_login(self, info, user: str, timestamp: str, digest: str) -> LoginResult:
        """RFC 1939 7: MD5(timestamp + secret) -- needs the secret in clear in the users file."""
        from pymta.lib.users import split_scheme  # noqa: PLC0415 lazy

        reason = ["wrong digest"]

        def check() -> bool:
            record = self.users.lookup(user)
            if record is None:
                return False
            scheme, body, encoding = split_scheme(record.password)
            if scheme not in ("PLAIN", "CLEARTEXT") or encoding is not None:
                reason[0] = f"APOP needs a {{PLAIN}} password entry (found {{{scheme}}})"
                return False
            if not self.cfg["auth.allow_plain_scheme"]:
                reason[0] = "APOP needs auth.allow_plain_scheme = true"
                return False
            import hashlib  # noqa: PLC0415 lazy
            import hmac  # noqa: PLC0415 lazy

            expected = hashlib.md5((timestamp + body).encode("utf-8")).hexdigest()
            return hmac.compare_digest(expected, digest)

        return self._checked_login(info, user, "APOP", None, check, lambda: reason[0])

    def _checked_login(self, info, user: str, method: str, password, check, reason) -> LoginResult:
        """The guarded password check, then the maildrop; a spent failure
        budget is -ERR [SYS/TEMP], the password unchecked."""
        from pymta.lib.authguard import LoginRefused  # noqa: PLC0415 lazy

        try:
            ok, delay = self.check_login(info, user, password, check)
        except LoginRefused as refused:
            log.warning(f"{refused}, method={method}")
            return LoginResult("temp")
        return self._finish_login(info, user, ok, delay, method, reason())

    def _finish_login(self, info, user: str, ok: bool, delay: float, method: str, reason: str) -> LoginResult:
        record = self.users.lookup(user) if ok else None
        account = record.address if record is not None else user
        tls = "yes" if info.tls else "no"
        if ok and record is not None:
            result = self._open_maildrop(info, account, method, tls)
            if result.status != "ok":
                return result
            log.info(
                f"login: user=<{account}>, method={method}, rip={info.peer_ip}, tls={tls}, "
                f"messages={len(result.maildrop.messages)}"
            )
            return result
        known = self.users.exists(user)
        why = reason if known else "unknown user"
        # Say in the log why a login failed (the client only hears "failed"), and make guessing slow.
        log.warning(
            f"login failed: user=<{log.printable(user)}>, method={method}, rip={info.peer_ip}, tls={tls}, reason={why}"
        )
        if delay:
            time.sleep(delay)
        return LoginResult("auth")

    def _open_maildrop(self, info, account: str, method: str, tls: str) -> LoginResult:
        from pymda.maildir import MaildirError, user_maildir  # noqa: PLC0415 lazy
        from pypop.maildrop import Maildrop, MaildropInUse  # noqa: PLC0415 lazy

        try:
            path = user_maildir(self.cfg.mail_dir, account)
            drop = Maildrop.open(path)
        except MaildropInUse:
            log.warning(
                f"login refused: user=<{account}>, method={method}, rip={info.peer_ip}, tls={tls}, "
                f"reason=maildrop in use by another POP3 session"
            )
            return LoginResult("in-use")
        except (OSError, MaildirError) as exc:
            log.error(f"login failed: user=<{account}>, rip={info.peer_ip}: cannot open maildrop: {exc}")
            return LoginResult("temp")
        trace = self.rawlog(account) if self.rawlog is not None else None
        return LoginResult("ok", account, drop, trace)


def build(cfg, service: str):
    backend = POP3Backend(cfg, service)
    timeout = cfg["pop3d.timeout"]
    return lambda: POP3Server(backend, timeout=timeout)


# What a session may import, loaded before the switch to daemon_user (see daemon.preload).
PRELOAD = ("pypop.pop3d", "pypop.pop3_server", "pypop.maildrop", "pymda.maildir")


def main(argv: list[str] | None = None) -> int:
    from pymta.lib import daemon  # noqa: PLC0415 lazy

    return daemon.main(
        argv,
        prog="pypop-pop3d",
        description="The pymail POP3 server.",
        service="pop3",
        tls_service="pop3s",
        build=build,
        busy_reply=b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
        section="pop3d",
        client_busy_reply=b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
        preload=PRELOAD,
    )


if __name__ == "__main__":
    sys.exit(main())
