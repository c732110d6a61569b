"""The deep checks of ``pymail config check``: what a config file that parses
can still get wrong (TLS files, the users and aliases files, directories,
DNSBL sites, limits), and the warnings about recipients smtpd would refuse.

Kept out of the command-line code so that other tools (and tests) can run
the checks; pymta/cli.py only prints them.
"""

from __future__ import annotations

import os

from pymta.aliases import Aliases, unknown_targets
from pymta.aliases import check as check_aliases
from pymta.lib import config
from pymta.lib.users import UsersError, UsersFile, quota_limits


def os_message(exc: OSError) -> str:
    """``file: reason`` for an OSError, as the admin command prints it."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


def unclaimed_postmaster(cfg: config.Config, users, aliases) -> str | None:
    """``postmaster@<first local domain>`` when no user or alias takes its mail
    (RFC 5321 4.5.1 requires one), else None.  ``users``/``aliases``: a
    UsersFile and an Aliases; their errors reach the caller."""
    if not cfg.domains:
        return None
    postmaster = f"postmaster@{cfg.domains[0].lower()}"
    if users.exists(postmaster) or aliases.lookup(postmaster) is not None:
        return None
    return postmaster


def problems(cfg: config.Config) -> list[tuple[str, str]]:
    """What a valid file can still get wrong: TLS files, users file, directories."""
    from pymta.lib import tls  # noqa: PLC0415 lazy

    found = []
    if os.geteuid() == 0 and not cfg["daemon_user"]:
        found.append(
            (
                "daemon_user",
                "empty, and run as root the queue runner refuses to start: name the "
                'daemons\' user (pymail init does), or "root" on purpose',
            )
        )
    rounds = cfg.get("auth.bcrypt_rounds", 10)
    if not 4 <= rounds <= 31:
        found.append(("auth.bcrypt_rounds", "must be between 4 and 31"))
    cert, key = cfg.path_of("tls_cert"), cfg.path_of("tls_key")
    if not cert.exists():
        found.append(("paths.tls_cert", f"{cert}: no such file"))
    elif not key.exists():
        found.append(("paths.tls_key", f"{key}: no such file"))
    else:
        try:
            tls.server_context(cert, key)
        except tls.TLSConfigError as exc:
            found.append(("paths.tls_cert", str(exc)))
    users = cfg.path_of("users")
    try:
        for lineno, message in UsersFile(users).problems():
            found.append(("paths.users", f"{users}:{lineno}: {message}"))
        for record in UsersFile(users).list():
            try:
                quota_limits(record)
            except ValueError as exc:
                found.append(("paths.users", f"{users}: {record.address}: {exc} (no quota enforced)"))
    except FileNotFoundError:
        found.append(("paths.users", f"{users}: no such file"))
    except OSError as exc:
        found.append(("paths.users", os_message(exc)))
    aliases = cfg.path_of("aliases")
    if aliases.exists():
        try:
            text = aliases.read_text(encoding="utf-8", errors="replace")
            for lineno, message in check_aliases(text, str(aliases)):
                found.append(("paths.aliases", f"{aliases}:{lineno}: {message}"))
        except OSError as exc:
            found.append(("paths.aliases", os_message(exc)))
    if cfg.get("smtpd.dnsbl_sites"):
        from pymta.dnsbl import parse_site  # noqa: PLC0415 lazy

        for spec in cfg["smtpd.dnsbl_sites"]:
            try:
                parse_site(spec)
            except ValueError as exc:
                found.append(("smtpd.dnsbl_sites", str(exc)))
    for name in ("queue", "mail"):
        path = cfg.path_of(name)
        if not path.is_dir():
            found.append((f"paths.{name}", f"{path}: no such directory"))
        elif not os.access(path, os.W_OK | os.X_OK):
            found.append((f"paths.{name}", f"{path}: not writable"))
    return found


def recipient_warnings(cfg: config.Config) -> list[str]:
    """Addresses smtpd refuses at RCPT although the admin meant them to work:
    postmaster (RFC 5321 4.5.1) and aliases that end at no user.  Warnings,
    not failures: the mail system runs, and says why such mail is refused."""
    if not cfg.domains:
        return []
    users, aliases = UsersFile(cfg.path_of("users")), Aliases(cfg.path_of("aliases"))
    is_local = lambda a: cfg.is_local_domain(a.rpartition("@")[2])  # noqa: E731
    first = cfg.domains[0].lower()
    out = []
    try:
        names = sorted(aliases.table())
        postmaster = unclaimed_postmaster(cfg, users, aliases)
        if postmaster is not None:
            out.append(
                f"{postmaster}: no alias or user takes postmaster's mail (RFC 5321 4.5.1 requires one), so "
                f"it is refused; add 'postmaster: ADDRESS' to {aliases.path}"
            )
        for name in names:
            address = name if "@" in name else f"{name}@{first}"
            if not is_local(address):
                continue
            for target in unknown_targets(aliases, address, is_local, users.exists) or []:
                where = "is an alias loop" if target == address else f"leads to {target}, which is no user"
                out.append(f"{aliases.path}: alias {name} {where}: mail to {address} is refused")
                break
    except (UsersError, OSError) as exc:
        out.append(f"cannot check postmaster and the aliases: {exc}")
    return out
