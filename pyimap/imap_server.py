"""The IMAP4rev1 server as a sans-I/O state machine (see ``pymta.lib.sansio``).

RFC 3501 plus the extensions clients depend on: IDLE (2177), UIDPLUS
(4315), MOVE (6851), LITERAL+ (7888), NAMESPACE (2342), ID (2971), ENABLE
(5161), UNSELECT (3691), CHILDREN (3348), SPECIAL-USE (6154), LIST-EXTENDED
(5258), LIST-STATUS (5819), SASL-IR (4959), CONDSTORE and QRESYNC (7162),
SORT and THREAD (5256, 5957), IMAP4rev2 (9051) once enabled, UTF8=ACCEPT
(6855), UNAUTHENTICATE (8437).

Bytes in, actions out.  Policy (passwords, where a user's mail lives) is
the *backend*'s, and the mail store it opens is named by
``pyimap.storage``; this module imports no storage.  ``IMAPServer`` is the
protocol core (``core``) with the commands: those of any state and the
login here, the mailbox tree in ``mailboxes``, the selected mailbox in
``selected``.  ``COMMANDS`` is the table that dispatches them.
"""

from __future__ import annotations

from pyimap.append import AppendCommands
from pyimap.core import (
    ANY_STATE,
    AUTH,
    IO_NONE,
    IO_SELECTED,
    LOGOUT,
    NOT_AUTH,
    SELECTED,
    Command,
    IMAPCore,
    IMAPSettings,
)
from pyimap.mailboxes import MailboxCommands
from pyimap.parser import Atom, ParseError
from pyimap.quota_commands import QuotaCommands
from pyimap.selected import SelectedCommands
from pyimap.sorting import SortCommands
from pymta.lib.sansio import STARTTLS, Job, catching

__all__ = ["IMAPServer", "IMAPSettings", "COMMANDS"]

# ENABLE's extensions (RFC 5161), by their upper-case names, as ENABLED names them
ENABLE_NAMES = {"CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC", "IMAP4REV2": "IMAP4rev2", "UTF8=ACCEPT": "UTF8=ACCEPT"}

COMMANDS = {
    "CAPABILITY": Command("cmd_capability", ANY_STATE, io=IO_SELECTED),
    "NOOP": Command("cmd_noop", ANY_STATE, io=IO_SELECTED),
    "LOGOUT": Command("cmd_logout", ANY_STATE, io=IO_NONE),
    "ID": Command("cmd_id", ANY_STATE, io=IO_SELECTED),
    "ENABLE": Command("cmd_enable", (AUTH,), io=IO_SELECTED),
    "STARTTLS": Command("cmd_starttls", (NOT_AUTH,), io=IO_NONE),
    "LOGIN": Command("cmd_login", (NOT_AUTH,), io=IO_NONE),
    "AUTHENTICATE": Command("cmd_authenticate", (NOT_AUTH,), io=IO_NONE),
    "UNAUTHENTICATE": Command("cmd_unauthenticate", (AUTH, SELECTED), io=IO_NONE),
    "SELECT": Command("cmd_select", (AUTH, SELECTED)),
    "EXAMINE": Command("cmd_examine", (AUTH, SELECTED)),
    "CREATE": Command("cmd_create", (AUTH, SELECTED)),
    "DELETE": Command("cmd_delete", (AUTH, SELECTED)),
    "RENAME": Command("cmd_rename", (AUTH, SELECTED)),
    "SUBSCRIBE": Command("cmd_subscribe", (AUTH, SELECTED)),
    "UNSUBSCRIBE": Command("cmd_unsubscribe", (AUTH, SELECTED)),
    "LIST": Command("cmd_list", (AUTH, SELECTED)),
    "LSUB": Command("cmd_lsub", (AUTH, SELECTED)),
    "STATUS": Command("cmd_status", (AUTH, SELECTED)),
    "APPEND": Command("cmd_append", (AUTH, SELECTED)),
    "NAMESPACE": Command("cmd_namespace", (AUTH, SELECTED), io=IO_SELECTED),
    "IDLE": Command("cmd_idle", (AUTH, SELECTED), io=IO_NONE),  # its looks at the mailbox are Jobs
    "CHECK": Command("cmd_check", (SELECTED,)),
    "CLOSE": Command("cmd_close", (SELECTED,)),
    "UNSELECT": Command("cmd_unselect", (SELECTED,), io=IO_NONE),
    "EXPUNGE": Command("cmd_expunge", (SELECTED,), uid=True),
    "SEARCH": Command("cmd_search", (SELECTED,), uid=True),
    "FETCH": Command("cmd_fetch", (SELECTED,), uid=True),
    "STORE": Command("cmd_store", (SELECTED,), uid=True),
    "COPY": Command("cmd_copy", (SELECTED,), uid=True),
    "MOVE": Command("cmd_move", (SELECTED,), uid=True),
    "SORT": Command("cmd_sort", (SELECTED,), uid=True),
    "THREAD": Command("cmd_thread", (SELECTED,), uid=True),
    "GETQUOTAROOT": Command("cmd_getquotaroot", (AUTH, SELECTED)),  # RFC 9208: quota_commands
    "GETQUOTA": Command("cmd_getquota", (AUTH, SELECTED)),
    "SETQUOTA": Command("cmd_setquota", (AUTH, SELECTED)),
}


class IMAPServer(IMAPCore, MailboxCommands, SelectedCommands, SortCommands, QuotaCommands, AppendCommands):
    COMMANDS = COMMANDS

    # -- any state --------------------------------------------------------------------

    def cmd_capability(self, tag, args):
        self._need(args, 0, 0)
        self._untagged(f"CAPABILITY {self._capabilities()}")
        self._done(tag, "CAPABILITY completed")

    def cmd_noop(self, tag, args):
        self._done(tag, "NOOP completed")

    def cmd_logout(self, tag, args):
        self._untagged("BYE Logging out")
        self._tagged(tag, "OK LOGOUT completed")
        self.end_reason = "Logged out"
        self.state = LOGOUT
        self.closed = True

    def cmd_id(self, tag, args):
        self._need(args, 1, 1)
        if isinstance(args[0], list):
            items = args[0]
            if len(items) % 2 or len(items) > 60:
                raise ParseError("Bad ID parameter list")
            self.client_id = {
                self._astring(items[i]).lower()[:30]: (
                    items[i + 1].decode("utf-8", "replace")[:200]
                    if isinstance(items[i + 1], bytes)
                    else str(items[i + 1])[:200]
                )
                for i in range(0, len(items), 2)
            }
        elif not (isinstance(args[0], Atom) and args[0].upper() == "NIL"):
            raise ParseError("Bad ID argument")
        self._untagged('ID ("name" "pymail" "version" "0.1")')
        self._done(tag, "ID completed")

    def cmd_enable(self, tag, args):
        self._need(args, 1)
        on = []
        for a in args:
            name = ENABLE_NAMES.get(self._astring(a).upper(), "")
            if name and name not in self.enabled:
                self.enabled.add(name)
                on.append(name)
                if name in ("CONDSTORE", "QRESYNC"):  # QRESYNC implies CONDSTORE
                    self.condstore = True
        self._untagged("ENABLED" + "".join(" " + n for n in on))
        self._done(tag, "ENABLE completed")

    def cmd_unauthenticate(self, tag, args):
        """RFC 8437: back to the not-authenticated state, as a new connection would be
        after STARTTLS: the mailbox closed (nothing expunged), ENABLEd extensions and
        the saved search gone, the login's trace closed; its log line written."""
        self._need(args, 0, 0)
        self._log_end("Unauthenticated")
        if self.info.trace is not None:
            self.info.trace.close()
            self.info.trace = None
        self.sel = None
        self.store = None
        self.user = None
        self.enabled = set()
        self.condstore = False
        self.state = NOT_AUTH
        self._tagged(tag, f"OK [CAPABILITY {self._capabilities()}] UNAUTHENTICATE completed")

    # -- not authenticated ------------------------------------------------------------

    def cmd_starttls(self, tag, args):
        self._need(args, 0, 0)
        if self.info.tls or not self.info.tls_available:
            self._tagged(tag, "BAD STARTTLS not available")
            return
        self._tagged(tag, "OK Begin TLS negotiation now")
        self.reader.reset()  # CVE-2011-0411: nothing pipelined behind STARTTLS survives
        self.out.append(STARTTLS)

    def _plain_ok(self) -> bool:
        return self.settings.plaintext_ok or self.info.tls

    def cmd_login(self, tag, args):
        self._need(args, 2, 2)
        user, password = self._astring(args[0]), args[1]
        if isinstance(password, Atom):
            password = str(password).encode("utf-8")
        elif not isinstance(password, bytes):
            raise ParseError("Expected a password")
        if not self._plain_ok():
            self._tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections")
            return
        self._start_auth(tag, user, password)

    def cmd_authenticate(self, tag, args):
        self._need(args, 1, 2)
        mech = self._astring(args[0]).upper()
        if mech != "PLAIN":
            self._tagged(tag, "NO Unsupported authentication mechanism")
            return
        if not self._plain_ok():
            self._tagged(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections")
            return
        if len(args) == 2:  # SASL-IR (RFC 4959)
            self._auth_response(
                tag,
                str(args[1])
                if isinstance(args[1], Atom)
                else args[1].decode("ascii", "replace")
                if isinstance(args[1], bytes)
                else "",
                initial=True,
            )
            return
        self.auth_tag = tag
        self._send(b"+ \r\n")

    def _auth_line(self, parts) -> None:
        tag, self.auth_tag = self.auth_tag, None
        assert tag is not None  # the core calls this only while an AUTHENTICATE waits
        if len(parts) != 1:
            self._tagged(tag, "BAD Bad AUTHENTICATE response")
            return
        self._auth_response(tag, parts[0].decode("ascii", "replace").strip(), initial=False)

    def _auth_response(self, tag: str, text: str, initial: bool) -> None:
        from pymta.lib import sasl  # noqa: PLC0415 lazy

        raw = b""
        try:
            # non-ASCII became U+FFFD above, '?' here: invalid base64 either way
            raw = sasl.decode_response(text.encode("ascii", "replace"), initial=True)  # '=' is empty here too
            authc, password = sasl.split_plain(raw)
        except sasl.SaslError as exc:
            if exc.kind == "cancelled" and not initial:
                self._tagged(tag, "BAD AUTHENTICATE cancelled")
            elif exc.kind in ("cancelled", "base64"):  # '*' as an initial response is no base64
                self._tagged(tag, "BAD Invalid base64 data")
            elif exc.kind == "authzid":
                self._tagged(tag, "NO [AUTHORIZATIONFAILED] Authorization identity not allowed")
            elif raw.count(b"\x00") == 2:  # an empty name or password: a failed login, the backend not asked
                self._tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
                self._count_bad()
            else:
                self._tagged(tag, "BAD Invalid AUTHENTICATE PLAIN response")
            return
        try:
            user = authc.decode("utf-8")
        except UnicodeDecodeError:
            self._tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
            return
        self._start_auth(tag, user, password)

    def _start_auth(self, tag: str, user: str, password: bytes) -> None:
        def then(result):
            if isinstance(result, Exception):  # the users file is missing or unreadable
                self._log_error("login", result)
                self._tagged(tag, "NO [UNAVAILABLE] Temporary authentication failure, try again later")
                return
            if not result:
                self._tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
                self._count_bad()
                return
            account, store, trace = result
            if isinstance(store, Exception):
                self._log_error(f"mail home of {account}", store)
                self._tagged(tag, "NO [UNAVAILABLE] Mailbox unavailable, try again later")
                return
            self.store = store
            self.user = account
            self.info.trace = trace  # the driver traces from the reply to the login on (rawlog)
            self.state = AUTH
            self._tagged(tag, f"OK [CAPABILITY {self._capabilities()}] Logged in")

        self.waiting = True
        self._job_then = then
        self.out.append(Job(catching, self._login, user, password))

    def _login(self, user: str, password: bytes):
        """In a Job: check the password, then open the mail home (it may create
        the INBOX): None, or (account, store or the exception that stopped it,
        the account's protocol trace or None)."""
        account = self.backend.authenticate(self.info, user, password)
        if not account:
            return None
        opener = getattr(self.backend, "rawlog", None)
        trace = opener(account) if opener is not None else None
        try:
            return account, self.backend.open_store(account), trace
        except Exception as exc:
            if trace is not None:
                trace.close()
            return account, exc, None
