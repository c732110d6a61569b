"""Configuration: every parameter declared once (name, type, default, doc).

The file is TOML (``pymail.toml``).  Top-level keys and ``[section]`` keys map
to dotted names (``smtpd.max_message_size``).  Relative paths are resolved
against ``root``, and a relative ``root`` against the config file's folder, so
a setup made by ``pymail init DIR`` can be moved as a whole.

Programs find their file through ``-C FILE``, then ``$PYMAIL_CONFIG``, then
``/etc/pymail/pymail.toml`` (``find_config_file``).  ``man/pymail.toml.5``
documents every key; ``pymail config check`` validates a file against this
table.
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

from pymta.lib import log

DEFAULT_CONFIG_FILE = "/etc/pymail/pymail.toml"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists (key, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


# Param.type is one of: str, int, float, bool, list, path, listen, table, choice:a|b
# (a namedtuple, not a dataclass: dataclasses costs every inetd session ~10 ms)
Param = namedtuple("Param", "name type default doc")


PARAMS: tuple[Param, ...] = (
    # -- identity and places -------------------------------------------------
    Param(
        "hostname",
        "str",
        "localhost",
        "Name this system gives itself in greetings and Received: headers (Maildir file names use the kernel's host "
        "name, as the Maildir rules ask).",
    ),
    Param(
        "domains", "list", [], "Local domains: mail for them is delivered here; mail for any other domain is relayed."
    ),
    Param(
        "root",
        "path",
        "/var/lib/pymail",
        "Root folder; the relative paths below are taken from here. A relative root is taken from the config file's "
        "folder.",
    ),
    Param("paths.queue", "path", "queue", "The mail queue (see pymail(7) for its layout)."),
    Param("paths.mail", "path", "mail", "The mail store: a user's Maildir is MAIL/<domain>/<user>/."),
    Param("paths.users", "path", "users", "The users file, in Dovecot passwd-file format (pymail-users(5))."),
    Param("paths.aliases", "path", "aliases", "The aliases file, in /etc/aliases format (aliases(5))."),
    Param("paths.tls_cert", "path", "tls/cert.pem", "PEM certificate chain for STARTTLS and implicit TLS."),
    Param("paths.tls_key", "path", "tls/key.pem", "PEM private key for paths.tls_cert."),
    Param(
        "daemon_user",
        "str",
        "",
        "User the network daemons (pymta-smtpd, pypop-pop3d, pyimap-imapd) and the queue runner become, with that "
        "user's groups, when started as root: after opening their sockets and reading the TLS key, before serving any "
        "client or reading any message (like Postfix's mail_owner). The queue, mail store, users file and ROOT/run "
        "must be accessible to it; `pymail init` run as root makes the user pymail and sets this. Empty: keep the uid "
        'they were started with -- except the queue runner, which refuses to run as root unless this says "root" '
        "(then it delivers into other uids' mailboxes through pymda-deliver, which becomes their owner). Started by a "
        "user other than root or this one, they refuse to run (exit 77).",
    ),
    Param(
        "batch_scheduling",
        "bool",
        True,
        "Run the listening daemons and the queue runner under Linux's SCHED_BATCH policy: a thread woken by the "
        "kernel does not preempt a running one (of the same process, most often, which holds the interpreter lock), "
        "so fewer context switches are wasted under load. Same nice value and fairness towards other programs; "
        "false keeps the default policy (pymail(7), HOW DAEMONS ARE STARTED).",
    ),
    # -- listeners used by `pymail run` ---------------------------------------
    Param("listen.smtp", "listen", "127.0.0.1:2525", "SMTP (MX) listener for `pymail run`; empty to disable."),
    Param("listen.submission", "listen", "127.0.0.1:2587", "Submission listener (AUTH required before MAIL)."),
    Param("listen.smtps", "listen", "127.0.0.1:2465", "Submission over implicit TLS."),
    Param("listen.pop3", "listen", "127.0.0.1:2110", "POP3 listener (when pypop-pop3d is installed)."),
    Param("listen.pop3s", "listen", "127.0.0.1:2995", "POP3 over implicit TLS."),
    Param("listen.imap", "listen", "127.0.0.1:2143", "IMAP listener (when pyimap-imapd is installed)."),
    Param("listen.imaps", "listen", "127.0.0.1:2993", "IMAP over implicit TLS."),
    Param(
        "listen.lmtp",
        "listen",
        "",
        "LMTP listener (pymta-lmtpd: an MTA such as Postfix hands it mail for the Maildirs) for `pymail run`; empty "
        "(the default): not started. A UNIX socket is given to pymta-lmtpd itself (--listen unix:PATH).",
    ),
    Param(
        "listen.autoconfig",
        "listen",
        "",
        "HTTP listener for client autoconfiguration (Thunderbird autoconfig, Outlook autodiscover, Apple profile; "
        "see autoconfig.*), started by `pymail run` when set. Empty (the default): not started; `pymail autoconfig "
        "--out DIR` writes the same answers as files for an existing web server.",
    ),
    Param(
        "listen.metrics",
        "listen",
        "",
        "HTTP listener for Prometheus (GET /metrics: the text `pymail stats` prints), started by `pymail run` when "
        "set. Empty (the default): not started. Keep it on loopback, e.g. 127.0.0.1:9154: anyone who reaches it "
        "sees how the server is used.",
    ),
    Param(
        "run.restart_delay",
        "float",
        1.0,
        "Seconds `pymail run` waits before starting again a program that died. Each further death within ten times "
        "this long of its start doubles the wait, up to run.max_restart_delay; it retries forever, and the other "
        "programs keep running.",
    ),
    Param(
        "run.max_restart_delay",
        "float",
        60.0,
        "Longest wait, in seconds, before `pymail run` starts again a program that keeps dying.",
    ),
    # -- client autoconfiguration (pymail autoconfig) ------------------------------
    Param(
        "autoconfig.hostname",
        "str",
        "",
        "Server name the autoconfiguration answers give clients, the name in the TLS certificate (the listen.* keys "
        "are local bind addresses). Empty: hostname.",
    ),
    Param("autoconfig.imaps_port", "int", 993, "IMAP over implicit TLS port advertised to clients; 0: not advertised."),
    Param("autoconfig.imap_port", "int", 0, "IMAP with STARTTLS port advertised to clients (143); 0: not advertised."),
    Param("autoconfig.pop3s_port", "int", 995, "POP3 over implicit TLS port advertised to clients; 0: not advertised."),
    Param("autoconfig.pop3_port", "int", 0, "POP3 with STARTTLS port advertised to clients (110); 0: not advertised."),
    Param(
        "autoconfig.smtps_port",
        "int",
        465,
        "Submission over implicit TLS port advertised to clients; 0: not advertised.",
    ),
    Param(
        "autoconfig.submission_port",
        "int",
        587,
        "Submission with STARTTLS port advertised to clients; 0: not advertised.",
    ),
    Param(
        "autoconfig.tls",
        "bool",
        False,
        "The autoconfig listener speaks HTTPS with paths.tls_cert (Outlook asks only over HTTPS; Thunderbird tries "
        "HTTPS, then HTTP). False: plain HTTP, for a reverse proxy or a port 80 listener.",
    ),
    # -- authentication ---------------------------------------------------------
    Param(
        "auth.allow_plaintext",
        "bool",
        False,
        "Allow passwords (AUTH, USER/PASS, LOGIN) over connections without TLS from non-loopback peers.",
    ),
    Param("auth.allow_plaintext_loopback", "bool", True, "Allow passwords without TLS from 127.0.0.0/8 and ::1."),
    Param("auth.allow_plain_scheme", "bool", False, "Accept {PLAIN}/{CLEARTEXT} password entries in the users file."),
    Param(
        "auth.failure_delay",
        "float",
        1.0,
        "Seconds a failed login waits before its answer; doubled for each recent failure from the same client address "
        "(IPv6: the same /64), up to auth.max_failure_delay. While such failures are remembered, every password check "
        "from that address (a right one, or one on a parallel connection) first waits as long (Dovecot's auth "
        "penalty). Failures for an account do not slow other addresses: auth.account_failure_limit bounds those.",
    ),
    Param("auth.max_failure_delay", "float", 30.0, "Longest wait after a failed login, in seconds."),
    Param(
        "auth.failure_window",
        "float",
        900.0,
        "Seconds a failed login is remembered, for the per-address delay and the per-account budget.",
    ),
    Param(
        "auth.account_failure_limit",
        "int",
        20,
        "Failed password checks one account may get in any auth.failure_window seconds, from all client addresses and "
        "processes together (80 an hour with the defaults). Beyond it, logins to the account are refused without "
        "checking the password (SMTP 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]), except from the "
        "addresses that logged in to it successfully within auth.known_address_days. 0: no budget.",
    ),
    Param(
        "auth.known_address_days",
        "int",
        30,
        "Days a client address (IPv6: its /64) that logged in to an account successfully stays known-good for it, so "
        "it keeps getting password checks while the account's failure budget is spent. Each account remembers its "
        "last 16 such addresses.",
    ),
    Param(
        "auth.bcrypt_rounds",
        "int",
        10,
        "bcrypt cost (log2 of rounds, 4-31) for passwords set by `pymail user add/passwd`; existing hashes keep their "
        "own cost.",
    ),
    Param(
        "auth.cache_size",
        "int",
        10000,
        "Successful logins remembered per daemon process, like Dovecot's auth_cache_size: a login with the same "
        "password within auth.cache_ttl skips the slow hash. Only an HMAC of the password under a key made at random "
        "by each process is kept, never the password; a failed login is never remembered, and any change of the "
        "users file forgets them all. 0 turns the cache off.",
    ),
    Param(
        "auth.cache_ttl", "float", 3600.0, "Seconds a remembered login stays valid (auth.cache_size); 0 turns it off."
    ),
    # -- smtpd -------------------------------------------------------------------
    Param(
        "smtpd.max_message_size", "int", 25 * 1024 * 1024, "Largest message accepted, in octets; advertised as SIZE."
    ),
    Param("smtpd.max_recipients", "int", 100, "Recipients per message (RFC 5321 4.5.3.1.8 asks for at least 100)."),
    Param(
        "smtpd.max_command_line",
        "int",
        2048,
        "Longest command line in octets including CRLF (RFC 5321 4.5.3.1.4 says 512, plus room for ESMTP parameters).",
    ),
    Param(
        "smtpd.max_text_line",
        "int",
        8192,
        "Longest line of message text including CRLF; longer lines get 500 5.5.2 (RFC 5321 4.5.3.1.6 says 1000).",
    ),
    Param("smtpd.max_errors", "int", 10, "Protocol errors in one session before it is closed with 421."),
    Param(
        "smtpd.command_timeout", "float", 300.0, "Seconds to wait for a command (RFC 5321 4.5.3.2.7 says 5 minutes)."
    ),
    Param("smtpd.data_timeout", "float", 600.0, "Seconds to wait for the next block of message text."),
    Param("smtpd.tls_handshake_timeout", "float", 30.0, "Seconds a TLS handshake may take."),
    Param("smtpd.max_sessions", "int", 100, "Concurrent sessions of one listening smtpd process; more get 421."),
    Param(
        "smtpd.max_sessions_per_client",
        "int",
        50,
        "Concurrent sessions one client address may have with smtpd in any mode, all its processes together "
        "(Postfix's smtpd_client_connection_count_limit); more get 421 4.7.0. IPv6 clients count per /84. 0: no "
        "limit. Addresses in limits.exempt_networks are not counted.",
    ),
    Param(
        "smtpd.connection_rate_per_client",
        "int",
        60,
        "Connections one client address may open to smtpd (listening or inetd) per limits.rate_time_unit, refused ones "
        "included (Postfix's smtpd_client_connection_rate_limit); more get 421 4.7.0. 0: no limit.",
    ),
    Param(
        "smtpd.processes",
        "int",
        0,
        "Processes a listening smtpd forks to serve its sockets (each with its own limits); 0: one per CPU.",
    ),
    Param(
        "smtpd.trusted_networks",
        "list",
        ["127.0.0.0/8", "::1/128"],
        "Client networks allowed to relay without AUTH (like Postfix mynetworks).",
    ),
    Param("smtpd.require_tls_for_auth", "bool", True, "Offer AUTH only over TLS (unless auth.allow_plaintext*)."),
    Param(
        "smtpd.max_session_time",
        "float",
        3600.0,
        "Seconds one SMTP session may last in all, however busy the client keeps it; then 421 4.4.2 and the "
        "connection is closed (smtpd.command_timeout only counts silence).",
    ),
    Param(
        "smtpd.max_junk_commands",
        "int",
        100,
        "NOOP, RSET, VRFY, HELP, HELO and EHLO commands a session may send before it is closed with 421 4.7.0 "
        "(Postfix's smtpd_junk_command_limit); the count starts again after each message accepted.",
    ),
    Param(
        "smtpd.dnsbl_sites",
        "list",
        [],
        'DNS block and allow lists asked about each client of the smtp service (port 25), as "zone[=filter]*weight" '
        "like postscreen_dnsbl_sites: filter an answer address such as 127.0.0.2 or 127.0.0.[2..11] (default: any), "
        "weight default 1, negative for an allowlist. Empty (the default): no lookups, so a fresh install asks no "
        "third party about its clients.",
    ),
    Param(
        "smtpd.dnsbl_threshold",
        "int",
        1,
        "A client whose weights add up to this or more is refused at RCPT with 554 5.7.1 (postmaster excepted).",
    ),
    Param(
        "smtpd.dnsbl_timeout",
        "float",
        10.0,
        "Seconds the DNS list lookups of one client may take; an unanswered list counts as not listing the client.",
    ),
    Param(
        "smtpd.greylist",
        "bool",
        False,
        "Greylist the smtp service (port 25): the first attempt of each (client network, sender, recipient) gets 450 "
        "4.2.0 until smtpd.greylist_delay has passed. Trusted networks and authenticated clients are never greylisted.",
    ),
    Param(
        "smtpd.greylist_delay",
        "float",
        300.0,
        "Seconds a new (client network, sender, recipient) triplet is refused with 450 before a retry is accepted.",
    ),
    Param(
        "smtpd.greylist_retry_window",
        "float",
        172800.0,
        "Seconds after the first attempt a retry still counts (postgrey's retry window, 2 days); later, greylisting "
        "starts again.",
    ),
    Param(
        "smtpd.greylist_max_age",
        "float",
        35 * 86400.0,
        "Seconds a passed triplet and an auto-allowlisted client network are remembered after their last mail "
        "(postgrey's max-age).",
    ),
    Param(
        "smtpd.greylist_auto_allowlist",
        "int",
        1,
        "Triplets a client network must pass before all its mail skips greylisting for smtpd.greylist_max_age; 0: "
        "never.",
    ),
    # -- inbound checks: SPF, DKIM, DMARC (pymta/authcheck.py) ----------------------
    Param(
        "checks.enabled",
        "bool",
        True,
        "Check SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489) of mail arriving on the smtp service (port 25) "
        "from clients outside smtpd.trusted_networks that did not log in, and put an Authentication-Results field "
        "(RFC 8601, authserv-id: hostname) on top of it, after removing any that claims to be ours. Lookups go to "
        "relay.dns_servers (else the system resolver).",
    ),
    Param(
        "checks.time_budget",
        "float",
        5.0,
        "Seconds the checks of one message may make the client wait after its end of DATA (the SPF lookups, started "
        "at MAIL FROM, get as long). A lookup not answered by then is a temperror.",
    ),
    Param(
        "checks.spf_reject",
        "list",
        ["fail"],
        "SPF results refused at the end of DATA when DMARC does not decide (the From: domain publishes no DMARC "
        'record): 550 5.7.23, or 5.7.24 for "permerror". Any of fail, softfail, neutral, none, permerror; empty: '
        "SPF is only recorded.",
    ),
    Param(
        "checks.temperror",
        "choice:accept|defer",
        "accept",
        "A DNS failure (SPF or DMARC temperror where it would decide): accept the message and record it, or defer it "
        "with 451 4.7.24 (SPF) / 451 4.7.1 (DMARC) so the sender tries again.",
    ),
    Param(
        "checks.dkim_max_signatures",
        "int",
        5,
        "DKIM signatures verified per message, topmost first; more are ignored.",
    ),
    Param(
        "checks.dkim_min_key_bits",
        "int",
        1024,
        "Smallest RSA key a DKIM signature may use to pass (RFC 8301 3.2); smaller ones get dkim=policy.",
    ),
    Param(
        "checks.dmarc_reject",
        "choice:reject|quarantine|record",
        "reject",
        "What to do with a message that fails DMARC when the From: domain's policy asks to reject it: refuse it at the "
        "end of DATA with 550 5.7.1, deliver it with an X-Pymail-Quarantine: field (the rules can file it into Junk), "
        "or only record the result.",
    ),
    Param(
        "checks.dmarc_quarantine",
        "choice:reject|quarantine|record",
        "quarantine",
        "The same for a domain whose policy asks for quarantine.",
    ),
    Param(
        "checks.arc_trusted_sealers",
        "list",
        [],
        "Domains (the d= of an ARC-Seal) whose valid ARC chain (RFC 8617) lets a message through when DMARC, or SPF "
        "where DMARC does not decide, would refuse or quarantine it: forwarders and mailing lists you trust to have "
        "checked the mail before changing it. The Authentication-Results field says arc=pass and the override. "
        "Empty: ARC is verified and recorded, never trusted.",
    ),
    Param(
        "checks.arc_seal",
        "bool",
        True,
        "Seal mail that is forwarded (aliases, .forward, rules' !) with an ARC set (RFC 8617) when it leaves, "
        "with the DKIM key of dkim.selector of the forwarding address's domain (else of the first local domain "
        "that has one), so DMARC survives the forward at the next hop. Mail is taken as forwarded when it carries "
        "the Authentication-Results field smtpd's checks added on arrival.",
    ),
    # -- milters: the Sendmail/Postfix milter protocol (pymta/milters.py) -----------
    Param(
        "milter.smtpd_milters",
        "list",
        [],
        'Milters every message received by pymta-smtpd goes through, in order, as "inet:HOST:PORT", '
        '"inet:[IPv6]:PORT" or "unix:/path" (Postfix\'s smtpd_milters); milter.listener_milters may give a '
        "listener its own list. Each sees the session's events at their stage (connect, HELO, MAIL, RCPT, DATA, "
        "headers, body, end of message) and may refuse, discard, quarantine or change the message before the 250.",
    ),
    Param(
        "milter.listener_milters",
        "table",
        {},
        'Per-listener milter lists, a table listener = "SPEC SPEC ..." for smtp (port 25), submission and smtps, '
        "like master.cf's -o smtpd_milters=...: a listener named here uses its list (empty: no milter) instead of "
        "milter.smtpd_milters.",
    ),
    Param(
        "milter.non_smtpd_milters",
        "list",
        [],
        "Milters for mail that does not come in over SMTP: sendmail's, through the maildrop pickup or written "
        "straight to the queue (Postfix's non_smtpd_milters). They are told of a connection from localhost "
        "[127.0.0.1] that said HELO localhost.",
    ),
    Param(
        "milter.default_action",
        "choice:tempfail|accept|reject",
        "tempfail",
        "What a milter that cannot be reached, times out or answers outside the protocol amounts to: tempfail "
        "(451 4.7.1, the sender tries again), accept (go on without that milter) or reject (550 5.7.1). One log line "
        "says which milter and why; the milter is not asked again during that session.",
    ),
    Param(
        "milter.connect_timeout", "float", 30.0, "Seconds to connect to a milter (Postfix's milter_connect_timeout)."
    ),
    Param(
        "milter.command_timeout",
        "float",
        30.0,
        "Seconds a milter may take to answer one SMTP event, option negotiation included "
        "(Postfix's milter_command_timeout).",
    ),
    Param(
        "milter.content_timeout",
        "float",
        300.0,
        "Seconds a milter may take to answer one piece of the message text, and the end of the message (Postfix's "
        "milter_content_timeout); each SMFIR_PROGRESS it sends starts the wait again.",
    ),
    Param(
        "milter.protocol",
        "int",
        6,
        "Milter protocol version offered in the option negotiation (Postfix's milter_protocol), 2 to 6.",
    ),
    Param(
        "milter.macro_daemon_name",
        "str",
        "",
        "Value of the {daemon_name} macro (Postfix's milter_macro_daemon_name). Empty: hostname.",
    ),
    Param(
        "milter.connect_macros",
        "list",
        ["j", "{daemon_name}", "{daemon_addr}", "v", "_", "{client_addr}", "{client_name}", "{client_port}"],
        "Macros sent with the connect event (Postfix's milter_connect_macros, plus the client's address, name and "
        "port). Known: j (hostname), _ (client name and [address]), v, {daemon_name}, {daemon_addr}, "
        "{client_addr}, {client_name}, {client_port}, {client_ptr}; a macro without a value is left out.",
    ),
    Param(
        "milter.helo_macros",
        "list",
        ["{tls_version}", "{cipher}"],
        "Macros sent with HELO/EHLO: {tls_version} and {cipher} when the session uses TLS.",
    ),
    Param(
        "milter.mail_macros",
        "list",
        ["i", "{auth_type}", "{auth_authen}", "{mail_addr}"],
        "Macros sent with MAIL FROM: i (the queue ID, chosen at MAIL), {auth_type} and {auth_authen} for an "
        "authenticated client, {mail_addr} (the sender).",
    ),
    Param(
        "milter.rcpt_macros",
        "list",
        ["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        "Macros sent with each RCPT TO: {rcpt_addr}, {rcpt_host} (its domain), {rcpt_mailer} (local or smtp).",
    ),
    Param("milter.data_macros", "list", ["i"], "Macros sent with the DATA command."),
    Param("milter.eoh_macros", "list", ["i"], "Macros sent with the end of the headers."),
    Param("milter.eom_macros", "list", ["i"], "Macros sent with the end of the message."),
    # -- submission: what an authenticated user may send ---------------------------
    Param(
        "submission.sender_login_match",
        "bool",
        True,
        "An authenticated client may use as MAIL FROM and in From: only addresses its login owns: the account's "
        "address, its +extensions and the aliases that lead to it (Postfix's reject_sender_login_mismatch). "
        "Users-file extra fields allow_any_sender=yes / allow_senders=... widen it (pymail-users(5)).",
    ),
    Param(
        "submission.max_messages_per_hour",
        "int",
        200,
        "Messages one authenticated user (or one local uid through sendmail's maildrop) may send per hour; more get "
        "450 4.7.1 at MAIL. 0: unlimited.",
    ),
    Param(
        "submission.max_recipients_per_hour",
        "int",
        500,
        "Recipients one authenticated user (or one local uid through sendmail's maildrop) may send to per hour; more "
        "get 450 4.7.1 at RCPT. 0: unlimited.",
    ),
    # -- queue runner -------------------------------------------------------------
    Param(
        "qrunner.scan_interval",
        "float",
        60.0,
        "Seconds between safety scans of the queue when nothing wakes the runner.",
    ),
    Param(
        "qrunner.retry_min",
        "float",
        300.0,
        "First retry delay for a deferred recipient, in seconds; doubled each attempt.",
    ),
    Param("qrunner.retry_max", "float", 14400.0, "Largest retry delay, in seconds."),
    Param(
        "qrunner.max_lifetime", "float", 5 * 86400.0, "Seconds a message may stay in the queue before it is bounced."
    ),
    Param("qrunner.concurrency", "int", 8, "Deliveries the runner makes at once, all its processes together."),
    Param(
        "qrunner.processes",
        "int",
        0,
        "Processes the runner delivers in, each with its share of qrunner.concurrency (rounded down) and of "
        "qrunner.destination_concurrency; 0: one per CPU. At most qrunner.concurrency.",
    ),
    # -- local delivery -------------------------------------------------------------
    Param(
        "deliver.mode",
        "choice:inprocess|exec",
        "inprocess",
        "inprocess: the runner writes Maildirs itself (fast, one uid); exec: it runs pymda-deliver per recipient "
        "(needed when mailboxes belong to different uids).",
    ),
    Param(
        "quota.default_rule",
        "str",
        "",
        'Quota of users whose users-file line sets none, in Dovecot\'s quota_rule syntax ("*:storage=1G", '
        '"*:storage=1G:messages=10000"; pymail-users(5)); a user\'s userdb_quota_rule replaces it. Counted in each '
        "Maildir's maildirsize (Maildir++), enforced at delivery (452 4.2.2 at RCPT, else a deferral) and by IMAP "
        "APPEND and COPY (NO [OVERQUOTA]). Empty: no quota but the users file's.",
    ),
    # -- local delivery rules (pymda) -------------------------------------------------
    Param(
        "deliver.rules_file",
        "str",
        ".procmailrc",
        "The user's procmail-style rules file (pymda-rules(5)), relative to the user's home: the users-file home "
        "field, else the user's Maildir. Empty: no per-user rules.",
    ),
    Param(
        "deliver.site_rules",
        "str",
        "rules",
        "Site-wide rules file run before each user's own (like /etc/procmailrc), relative to root; not used when "
        "it does not exist. The one pymail init writes files mail marked as spam (DMARC quarantine, SpamAssassin, "
        "rspamd) into the user's Junk folder unless the user's own rules deliver it (pymda-rules(5)). Empty: none.",
    ),
    Param(
        "deliver.forward_file",
        "str",
        ".forward",
        "Per-user forwarding file (aliases(5) targets), relative to the user's home; applied before the rules. Empty: "
        "not used.",
    ),
    Param(
        "deliver.pipe_timeout",
        "float",
        300.0,
        "Seconds a program run by a rule (pipe, filter, condition) may take before it is killed; the rules' TIMEOUT "
        "variable starts with this value.",
    ),
    Param(
        "deliver.recipient_delimiter",
        "str",
        "+",
        "Separator of user+extension addresses; the extension is $EXTENSION and $1 in the rules.",
    ),
    Param(
        "deliver.sendmail",
        "str",
        "",
        "Program the rules' '!' forward action runs ($SENDMAIL). Empty: the sendmail installed beside pymda-deliver, "
        "else /usr/sbin/sendmail.",
    ),
    # -- outbound relay, retries, bounces, sendmail (pymta) ---------------------------
    Param(
        "relay.transport_map",
        "table",
        {},
        'Per-domain next hop, a table domain = "[host]:port": ".example.org" matches subdomains, "*" everything. '
        'Checked before relay.host and MX. "lmtp:[host]:port" (port 24 by default) or "lmtp:unix:/path" (relative '
        "to root) delivers there over LMTP (RFC 2033), to Dovecot's LMTP for instance, one reply per recipient.",
    ),
    Param(
        "relay.host",
        "str",
        "",
        "Smart host for all remote mail not in relay.transport_map, as [host]:port or host; empty: deliver by MX.",
    ),
    Param("relay.port", "int", 25, "Port of relay.host when it names none (587 for most providers)."),
    Param("relay.username", "str", "", "AUTH user name for relay.host (empty: no AUTH)."),
    Param("relay.password_file", "path", "", "File holding the AUTH password for relay.host (first line)."),
    Param(
        "relay.tls",
        "choice:opportunistic|require|verify|none",
        "opportunistic",
        "STARTTLS policy: opportunistic (when offered, unverified), require (must encrypt), verify (must encrypt with "
        "a valid certificate for the host name), none.",
    ),
    Param("relay.tls_policy", "table", {}, 'Per-destination-domain overrides of relay.tls, a table domain = "verify".'),
    Param("relay.tls_ca_file", "path", "", "CA bundle for the verify policy (empty: the system CAs)."),
    Param("relay.smtp_port", "int", 25, "Port used for MX hosts and next hops without a port."),
    Param(
        "relay.dns_servers",
        "list",
        [],
        'DNS servers for MX lookups, as "IP" or "IP:PORT" (empty: the system resolver).',
    ),
    Param("relay.dns_timeout", "float", 20.0, "Seconds a DNS lookup may take."),
    Param("relay.connect_timeout", "float", 30.0, "Seconds to wait for a TCP connection to a remote server."),
    Param(
        "relay.command_timeout",
        "float",
        300.0,
        "Seconds to wait for each reply of a remote server (RFC 5321 4.5.3.2 allows up to 10 minutes for the final "
        "DATA reply).",
    ),
    Param("relay.helo_name", "str", "", "Name sent in EHLO (empty: hostname)."),
    Param(
        "relay.connection_cache_time",
        "float",
        5.0,
        "Seconds an idle connection to a destination is kept for the next message (0: no reuse).",
    ),
    Param(
        "qrunner.destination_concurrency",
        "int",
        10,
        "Connections to one destination (MX domain or next hop) at once, all the runner's processes together "
        "(each takes its share, rounded down, at least 1).",
    ),
    Param(
        "qrunner.delay_warning",
        "float",
        0.0,
        "Send the sender a delay notice (RFC 3464 Action: delayed) once a message has waited this many seconds (0: "
        "never).",
    ),
    Param(
        "bounce.postmaster",
        "str",
        "",
        "Where failures of mail with the null sender <> and copies of double bounces go (empty: postmaster@ the first "
        "local domain).",
    ),
    Param(
        "bounce.size_limit",
        "int",
        50000,
        "Most octets of the original message a bounce quotes (Postfix's bounce_size_limit). Bounces quote only the "
        "original's headers, cut at this size, never its body: a forged sender gets no copy of a spammer's text.",
    ),
    Param(
        "dkim.selector", "str", "", "DKIM selector used to sign outbound mail from local domains (empty: no signing)."
    ),
    Param(
        "dkim.key_dir",
        "path",
        "dkim",
        "Folder of DKIM private keys, DOMAIN/SELECTOR.key (made by `pymail dkim keygen`).",
    ),
    Param(
        "sendmail.maildrop",
        "path",
        "maildrop",
        "Drop folder for sendmail run by ordinary users (mode 1733, like Postfix's maildrop); only the runner reads "
        "it.",
    ),
    # -- pop3d (pypop) ---------------------------------------------------------------
    Param("pop3d.processes", "int", 0, "Processes a listening pop3d forks to serve its sockets; 0: one per CPU."),
    Param(
        "pop3d.max_sessions",
        "int",
        100,
        "Concurrent sessions of one listening pop3d process; more get -ERR [SYS/TEMP].",
    ),
    Param(
        "pop3d.max_sessions_per_client",
        "int",
        20,
        "Concurrent sessions one client address may have with pop3d, all its processes together (any mode; per "
        "address, not per user and address as Dovecot's mail_max_userip_connections = 10: room for a few users behind "
        "one NAT); more get -ERR [SYS/TEMP]. 0: no limit.",
    ),
    Param(
        "pop3d.connection_rate_per_client",
        "int",
        60,
        "Connections one client address may open to pop3d (listening or inetd) per limits.rate_time_unit, refused ones "
        "included; more get -ERR [SYS/TEMP]. 0: no limit.",
    ),
    Param(
        "pop3d.timeout",
        "float",
        600.0,
        "Seconds of client silence before a POP3 session is closed without deleting anything (RFC 1939 autologout: at "
        "least 10 minutes).",
    ),
    Param(
        "pop3d.enable_apop",
        "bool",
        False,
        "Offer APOP (timestamp in the greeting). Works only for users whose users-file entry is {PLAIN}/{CLEARTEXT} "
        "with auth.allow_plain_scheme = true.",
    ),
    # -- lmtpd (pymta-lmtpd) ---------------------------------------------------------
    Param("lmtpd.processes", "int", 1, "Processes a listening lmtpd forks to serve its sockets; 0: one per CPU."),
    Param(
        "lmtpd.max_sessions",
        "int",
        100,
        "Concurrent sessions of one listening lmtpd process; more get 421 4.3.2. Each delivers in the process's job "
        "threads.",
    ),
    Param(
        "lmtpd.max_sessions_per_client",
        "int",
        0,
        "Concurrent sessions one client address may have with lmtpd, all its processes together; more get 421 4.7.0. "
        "0 (the default): no limit, since LMTP clients are the site's own MTAs.",
    ),
    Param(
        "lmtpd.connection_rate_per_client",
        "int",
        0,
        "Connections one client address may open to lmtpd per limits.rate_time_unit; more get 421 4.7.0. 0: no limit.",
    ),
    Param(
        "lmtpd.trusted_networks",
        "list",
        ["127.0.0.0/8", "::1/128"],
        "TCP clients allowed to hand mail to lmtpd (LMTP has no login: whoever connects can deliver to every "
        "mailbox); others get 554 5.7.1 at MAIL. Clients on a UNIX socket are allowed by the socket's mode "
        "(lmtpd.socket_mode).",
    ),
    Param(
        "lmtpd.socket_mode",
        "str",
        "0666",
        "Octal mode of the UNIX sockets lmtpd makes itself (--listen unix:PATH), as Dovecot's lmtp unix_listener "
        "default; 0660 or 0600 with a socket in a folder only the MTA can reach to narrow it.",
    ),
    # -- imapd (pyimap) --------------------------------------------------------------
    Param(
        "imapd.max_sessions",
        "int",
        10000,
        "Concurrent sessions of one listening imapd process (Dovecot's imap process_limit is 1024); more get * BYE. "
        "Each needs an open file at rest, more while it works: the daemon raises its soft RLIMIT_NOFILE to the hard "
        "one (at most 65536; LimitNOFILE= in a unit, ulimit -Hn in a shell) and warns below three per session.",
    ),
    Param(
        "imapd.max_sessions_per_client",
        "int",
        50,
        "Concurrent sessions one client address may have with imapd, all its processes together (any mode; per "
        "address, not per user and address as Dovecot's mail_max_userip_connections = 10: room for several users "
        "behind one NAT, each with a few connections); more get * BYE. 0: no limit.",
    ),
    Param(
        "imapd.connection_rate_per_client",
        "int",
        120,
        "Connections one client address may open to imapd (listening or inetd) per limits.rate_time_unit, refused ones "
        "included; more get * BYE. 0: no limit.",
    ),
    Param(
        "imapd.max_line", "int", 65536, "Longest IMAP command line in octets, literals excluded; longer lines get BAD."
    ),
    Param(
        "imapd.max_literal",
        "int",
        100 * 1024 * 1024,
        "Largest APPEND message in octets, advertised as APPENDLIMIT; bigger literals get NO [TOOBIG] before any byte "
        "is read.",
    ),
    Param(
        "imapd.autologout",
        "float",
        1800.0,
        "Seconds a logged-in IMAP session may be idle, IDLE included (RFC 3501 5.4: at least 30 minutes).",
    ),
    Param(
        "imapd.login_timeout",
        "float",
        60.0,
        "Seconds an IMAP client has to log in between commands before it is disconnected.",
    ),
    Param(
        "imapd.idle_poll",
        "float",
        0.5,
        "Seconds between mailbox checks while a client is in IDLE and its mailbox is not watched by inotify (inetd "
        "mode, imapd.idle_inotify off, no inotify instance or out of watches).",
    ),
    Param(
        "imapd.idle_inotify",
        "bool",
        True,
        "A listening imapd watches the mailboxes of IDLE sessions with inotify (one instance per process, three "
        "watches per mailbox shared by its sessions) and looks only when they change; false: every IDLE polls.",
    ),
    Param("imapd.processes", "int", 0, "Processes a listening imapd forks to serve its sockets; 0: one per CPU."),
    # -- protocol trace (imapd, pop3d) ---------------------------------------------------
    Param(
        "rawlog.dir",
        "str",
        "",
        "Folder (relative to root) for the per-user protocol traces of imapd and pop3d, as Dovecot's rawlog: a "
        "session of a user in rawlog.users writes, from its login on, what the client sent to "
        "DIR/USER/PROTO-DATE-TIME-PID-N.in and what the server sent to .out (the login line with the password is "
        "never written). The folder must exist and be writable by daemon_user; USER/ is made 0700, the files 0600, "
        "no symbolic link followed. Empty (the default): no trace.",
    ),
    Param(
        "rawlog.users",
        "list",
        [],
        'Accounts traced into rawlog.dir (their canonical addresses; "*": everyone, for a test system only: the '
        "traces hold the mail read). Empty: no trace.",
    ),
    # -- per-client connection limits (smtpd, pop3d, imapd) ------------------------------
    Param(
        "limits.exempt_networks",
        "list",
        ["127.0.0.0/8", "::1/128"],
        "Client networks the per-client limits (SECTION.max_sessions_per_client, SECTION.connection_rate_per_client) "
        "do not count: loopback, where a webmail or a local relay speaks for many users. Like smtpd.trusted_networks, "
        "but for every service; empty to count everyone.",
    ),
    Param(
        "limits.rate_time_unit",
        "float",
        60.0,
        "Seconds over which SECTION.connection_rate_per_client is counted (Postfix's anvil_rate_time_unit).",
    ),
)

PARAM_BY_NAME = {p.name: p for p in PARAMS}
SECTIONS = {p.name.split(".")[0] for p in PARAMS if "." in p.name}


def find_config_file(option: str | None = None) -> Path:
    """-C FILE, then $PYMAIL_CONFIG, then /etc/pymail/pymail.toml."""
    if option:
        return Path(option)
    env = os.environ.get("PYMAIL_CONFIG")
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_FILE)


def _flatten(data: dict) -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SECTIONS:
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def _check_value(param: Param, value) -> tuple[object, str | None]:
    kind = param.type
    if kind in ("str", "path"):
        if not isinstance(value, str):
            return None, "must be a string"
        if "\x00" in value:
            return None, "must not contain NUL"
        return value, None
    if kind == "listen":
        if not isinstance(value, str):
            return None, "must be a string HOST:PORT (or empty)"
        if value:
            try:
                parse_listen(value)
            except ValueError as exc:
                return None, str(exc)
        return value, None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "must be an integer"
        if value < 0:
            return None, "must not be negative"
        return value, None
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "must be a number"
        if value < 0:
            return None, "must not be negative"
        return float(value), None
    if kind == "bool":
        if not isinstance(value, bool):
            return None, "must be true or false"
        return value, None
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, "must be a list of strings"
        return list(value), None
    if kind == "table":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return None, "must be a table of strings"
        return {k.lower(): v for k, v in value.items()}, None
    if kind.startswith("choice:"):
        choices = kind[7:].split("|")
        if value not in choices:
            return None, f"must be one of {', '.join(choices)}"
        return value, None
    raise AssertionError(kind)


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Config:
    """A loaded, validated configuration.  ``cfg["smtpd.max_recipients"]``."""

    def __init__(self, values: dict, path: Path | None = None) -> None:
        self._values = values
        self.path = path

    def __getitem__(self, name: str):
        return self._values[name]

    def get(self, name: str, default=None):
        return self._values.get(name, default)

    def items(self):
        return self._values.items()

    @property
    def root(self) -> Path:
        cached = self.__dict__.get("_root")
        if cached is None:  # made once: the queue runner asks for it per delivery
            cached = self.__dict__["_root"] = Path(self._values["root"])
        return cached

    def path_of(self, name: str) -> Path:
        """A ``paths.*`` parameter as an absolute path."""
        paths = self.__dict__.setdefault("_paths", {})
        found = paths.get(name)
        if found is None:
            found = paths[name] = self.root / self._values[f"paths.{name}"]
        return found

    @property
    def queue_dir(self) -> Path:
        return self.path_of("queue")

    @property
    def mail_dir(self) -> Path:
        return self.path_of("mail")

    @property
    def domains(self) -> list[str]:
        return self._values["domains"]

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self._local_domains

    @property
    def _local_domains(self) -> frozenset:
        cached = self.__dict__.get("_ld")
        if cached is None:
            cached = frozenset(d.lower().rstrip(".") for d in self._values["domains"])
            self.__dict__["_ld"] = cached
        return cached


def check(data: dict, path: Path | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """Validate parsed TOML; return (values with defaults, problems)."""
    problems: list[tuple[str, str]] = []
    values = {p.name: p.default for p in PARAMS}
    for key, value in _flatten(data).items():
        param = PARAM_BY_NAME.get(key)
        if param is None:
            problems.append((key, "unknown key"))
            continue
        checked, error = _check_value(param, value)
        if error:
            problems.append((key, error))
        else:
            values[key] = checked
    if values["quota.default_rule"]:
        from pymta.lib.users import parse_quota_rule  # noqa: PLC0415 lazy

        try:
            parse_quota_rule(values["quota.default_rule"])
        except ValueError as exc:
            problems.append(("quota.default_rule", str(exc)))
    for domain in values["domains"]:
        if not domain or "/" in domain or domain.startswith(".") or ".." in domain or any(c.isspace() for c in domain):
            problems.append(("domains", f"{domain!r} is not a domain name"))
    for key in ("smtpd.trusted_networks", "limits.exempt_networks"):
        for net in values[key]:
            import ipaddress  # noqa: PLC0415 lazy

            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                problems.append((key, f"{net!r} is not a network"))
    for result in values["checks.spf_reject"]:
        if result not in ("fail", "softfail", "neutral", "none", "permerror"):
            problems.append(("checks.spf_reject", f"{result!r} is not one of fail, softfail, neutral, none, permerror"))
    problems += _check_milters(values)
    root = Path(values["root"])
    if not root.is_absolute():
        base = path.parent if path is not None else Path.cwd()
        root = base.resolve() / root
    values["root"] = str(root)
    return values, problems


MILTER_LISTENERS = ("smtp", "submission", "smtps")


def _check_milters(values: dict) -> list[tuple[str, str]]:
    problems = []
    specs = [("milter.smtpd_milters", s) for s in values["milter.smtpd_milters"]]
    specs += [("milter.non_smtpd_milters", s) for s in values["milter.non_smtpd_milters"]]
    for listener, text in values["milter.listener_milters"].items():
        if listener not in MILTER_LISTENERS:
            problems.append(("milter.listener_milters", f"{listener!r} is not one of {', '.join(MILTER_LISTENERS)}"))
        specs += [("milter.listener_milters", s) for s in text.replace(",", " ").split()]
    if specs:
        from pymta.lib.milterconn import parse_spec  # noqa: PLC0415 lazy

        for key, spec in specs:
            try:
                parse_spec(spec)
            except ValueError as exc:
                problems.append((key, str(exc)))
    if not 2 <= values["milter.protocol"] <= 6:
        problems.append(("milter.protocol", "must be 2 to 6"))
    return problems


def load(path: str | os.PathLike | None = None, *, write_cache: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with every problem.

    The parse is kept beside the file (``configcache``) when we may write
    there, so the next process (an inetd session) skips tomllib."""
    from pymta.lib import configcache  # noqa: PLC0415 lazy

    file = find_config_file(str(path) if path is not None else None)
    try:
        with open(file, "rb") as fh:
            raw = fh.read()
            st = os.fstat(fh.fileno())
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{file}: no such file")]) from None
    except PermissionError:
        raise ConfigError([("(file)", f"{file}: permission denied")]) from None
    except OSError as exc:
        raise ConfigError([("(file)", f"{file}: {exc.strerror or exc}")]) from None
    data = configcache.lookup(file, raw, st)
    if data is None:
        import tomllib  # noqa: PLC0415 lazy

        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError([("(file)", f"{file}: not UTF-8")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("(file)", f"{file}: {exc}")]) from None
        if write_cache:
            configcache.store(file, raw, data, st)
    values, problems = check(data, file.resolve())
    if problems:
        raise ConfigError(problems)
    return Config(values, file)


def load_logged(path: str | os.PathLike | None = None) -> Config | None:
    """``load`` for programs: every problem logged as ``config: KEY: message``;
    None when the file cannot be used (the caller exits 78, EX_CONFIG)."""
    try:
        return load(path)
    except ConfigError as exc:
        for key, message in exc.problems:
            log.error(f"config: {key}: {message}")
        return None
