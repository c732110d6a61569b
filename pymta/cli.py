"""pymail: the admin command (init, user, config, run).

The work itself lives in pymta.lib (config, users, tls); this module turns it
into commands, one-line messages and sysexits codes -- never a traceback for
a user error.

Every command finds its config the same way: ``DIR/pymail.toml`` when DIR is
given, else ``-C FILE`` (on the command or before it), else $PYMAIL_CONFIG,
else /etc/pymail/pymail.toml.

More command groups (queue, rules, dkim, ...) plug in without editing this
file: either ``cli.add_command(group)`` from code that imports this module,
or a module ``<package>/cli_<name>.py`` (package one of pymta, pymda, pypop,
pyimap) whose ``command`` attribute is a click command; it is found and
imported only when ``pymail <name>`` is run or help is listed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import secrets
import socket
import sys
import textwrap
import tomllib
from pathlib import Path

import click

from pymda.maildir import ensure_maildir, user_maildir
from pymta import configcheck
from pymta.aliases import Aliases, with_alias
from pymta.configcheck import os_message, unclaimed_postmaster
from pymta.lib import config, log
from pymta.lib.cliargs import click_main
from pymta.lib.privilege import daemon_account
from pymta.lib.setup import chown_tree, ensure_daemon_account, hand_tree_to, share_tls_key, unreachable_by
from pymta.lib.sysexits import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE
from pymta.lib.users import InvalidAddress, NoSuchUser, UserExists, UsersError, UsersFile, normalize_address
from pymta.queue import Queue

PLUGIN_PACKAGES = ("pymta", "pymda", "pypop", "pyimap")


# -- the group ------------------------------------------------------------------------


class _Group(click.Group):
    """A click group that also finds ``<package>.cli_<name>`` modules on demand."""

    def _plugins(self) -> dict[str, str]:
        found = {}
        for package in PLUGIN_PACKAGES:
            try:
                path = importlib.import_module(package).__path__
            except ImportError:
                continue
            for info in pkgutil.iter_modules(path):
                if info.name.startswith("cli_"):
                    found.setdefault(info.name[4:].replace("_", "-"), f"{package}.{info.name}")
        return found

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = getattr(importlib.import_module(plugins[name]), "command", None)
        return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "--config",
    "config_file",
    metavar="FILE",
    help="Config file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml).",
)
def cli(config_file):
    """Set up and run pymail, and manage its users."""


def main(argv: list[str] | None = None) -> int:
    return click_main(cli, argv, "pymail")


# -- shared helpers ---------------------------------------------------------------------


def _fail(message: str, code: int):
    click.echo(f"pymail: {message}", err=True)
    raise click.exceptions.Exit(code)


def _os_message(exc: OSError) -> str:
    return os_message(exc)


def _config_option(f):
    return click.option("-C", "--config", "config_file", metavar="FILE", help="Config file, instead of DIR.")(f)


def _config_path(directory: str | None, config_file: str | None) -> Path:
    if directory:
        path = Path(directory)
        return path if path.is_file() else path / "pymail.toml"  # a file given as DIR is taken as the config
    if config_file is None:
        config_file = click.get_current_context().find_root().params.get("config_file")
    return config.find_config_file(config_file)


def load_config(directory: str | None, config_file: str | None) -> config.Config:
    """The config every command uses (see the module doc), or exit EX_CONFIG with its problems."""
    try:
        return config.load(_config_path(directory, config_file))
    except config.ConfigError as exc:
        for key, message in exc.problems:
            click.echo(f"pymail: {key}: {message}", err=True)
        raise click.exceptions.Exit(EX_CONFIG) from None


def _toml(value) -> str:
    """A value as TOML, so `config show` output can be pasted into pymail.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _bcrypt_rounds(cfg: config.Config) -> int:
    rounds = cfg.get("auth.bcrypt_rounds", 10)
    if not 4 <= rounds <= 31:
        _fail("auth.bcrypt_rounds: must be between 4 and 31", EX_CONFIG)
    return rounds


# -- init ---------------------------------------------------------------------------------


def _check_reachable(directory: Path, owner) -> None:
    """Fail now, not as a crash loop later, when daemon_user cannot reach the tree."""
    if os.geteuid() != 0 or owner.pw_uid == 0:
        return
    blocked = unreachable_by(directory, owner)
    if blocked is not None:
        _fail(
            f"{owner.pw_name} (daemon_user) cannot reach {directory.absolute()}: {blocked}; use a folder "
            "it can reach, such as /var/lib/pymail, or --daemon-user root for a trial on a machine of your own",
            EX_CANTCREAT,
        )


_INIT_EXPLICIT = ("", "paths", "listen", "auth")  # sections written out; the rest as commented defaults
DEFAULT_DAEMON_USER = "pymail"  # what `pymail init` run as root sets up (Postfix: mail_owner = postfix)


def _valid_hostname(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(lab) <= 63
        and lab[0] != "-"
        and lab[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in lab)
        for lab in labels
    )


def _default_hostname() -> str:
    try:
        name = socket.getfqdn()
    except OSError:
        name = ""
    return name if _valid_hostname(name) and name != "localhost.localdomain" else "localhost"


def _comment(text: str, indent: str = "") -> list[str]:
    return [indent + "# " + line for line in textwrap.wrap(text, 76)]


def _init_toml(values: dict) -> str:
    out = [
        "# pymail configuration, made by `pymail init`.  Every key is described in",
        "# pymail.toml(5); `pymail config show` prints every value in effect and",
        "# `pymail config check` validates this file.",
    ]
    sections: dict[str, list[config.Param]] = {"": []}
    for param in config.PARAMS:
        section = param.name.split(".")[0] if "." in param.name else ""
        sections.setdefault(section, []).append(param)
    for section, params in sections.items():
        explicit = section in _INIT_EXPLICIT
        out.append("")
        if section:
            out.append(f"[{section}]")
        for param in params:
            key = param.name.split(".", 1)[1] if section else param.name
            value = values.get(param.name, param.default)
            if param.name == "root":
                out += _comment(
                    'Relative paths are taken from root; "." is the folder of this file, '
                    "so the whole tree can be moved."
                )
            else:
                out += _comment(param.doc)
            out.append(f"{key} = {_toml(value)}" if explicit else f"# {key} = {_toml(value)}")
    return "\n".join(out) + "\n"


_ALIASES_HEADER = """\
# aliases(5): mail for NAME at any local domain goes to the targets instead.
#   NAME: TARGET, TARGET, ...
# A target is an address, a local user or a |command.  Examples:
#   postmaster: admin@example.test
#   abuse: postmaster
"""

# The site rules file (deliver.site_rules, pymda-rules(5) "FILING SPAM"). Mail marked as
# spam gets the Junk folder as its DEFAULT, so the user's own rules still run and win.
_SITE_RULES = """\
# Site rules (pymda-rules(5)), run for every delivery before the user's own
# rules file (deliver.rules_file, .procmailrc in the user's home).
#
# Mail marked as spam goes to the user's Junk folder: it becomes the DEFAULT,
# where a message goes when no rule delivers it.  So the user's own rules
# still come first: a rule of theirs that delivers the message elsewhere
# wins, and a line DEFAULT=$MAILDIR/ in their file keeps spam in the INBOX.
#   X-Pymail-Quarantine:  DMARC policy quarantine (pymta-smtpd(8))
#   X-Spam-Flag: YES      SpamAssassin (spamc, spamass-milter)
#   X-Spam: Yes           rspamd

:0
* ^X-Pymail-Quarantine:
{ DEFAULT=$MAILDIR/.Junk/ }

:0
* ^X-Spam-Flag: *YES
{ DEFAULT=$MAILDIR/.Junk/ }

:0
* ^X-Spam: *Yes
{ DEFAULT=$MAILDIR/.Junk/ }
"""


def _write_new(path: Path, data: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _postmaster_target(address: str) -> str:
    try:
        return normalize_address(address)
    except InvalidAddress as exc:
        _fail(f"--postmaster: {exc}", EX_DATAERR)


def _add_alias(path: Path, name: str, target: str) -> bool:
    """Add ``name: target`` to the aliases file unless ``name`` is there;
    rewritten atomically, comments kept.  True when it was added."""
    try:
        old = os.stat(path)
        text = path.read_text(encoding="utf-8")  # not UTF-8: ValueError, never rewritten
    except FileNotFoundError:
        old, text = None, ""
    new = with_alias(text, name, target)
    if new is None:
        return False
    _write_new(path, new, old.st_mode & 0o7777 if old else 0o644)
    if old is not None and os.geteuid() == 0:
        os.chown(path, old.st_uid, old.st_gid)  # keep e.g. the daemon user's file its own
    return True


@cli.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", default="example.test", show_default=True, help="The local mail domain.")
@click.option("--hostname", default=None, help="This system's name (default: the machine's FQDN, or localhost).")
@click.option(
    "--force", is_flag=True, help="Overwrite an existing DIR/pymail.toml (users, aliases and TLS files are kept)."
)
@click.option(
    "--daemon-user",
    "daemon_user",
    default=None,
    metavar="NAME",
    help="The user the daemons and the queue runner run as (daemon_user). Default when run as root: "
    "pymail, made as a system user if missing; else the user running init.",
)
@click.option(
    "--postmaster",
    default=None,
    metavar="ADDRESS",
    help="Where mail to postmaster goes (an alias in DIR/aliases). Default: the first user added.",
)
def init(
    directory: Path, domain: str, hostname: str | None, force: bool, daemon_user: str | None, postmaster: str | None
):
    """Create a ready-to-run setup in DIR: config, queue, mail store, users, aliases, TLS."""
    from pymta.lib import tls  # noqa: PLC0415 lazy

    if postmaster is not None:
        postmaster = _postmaster_target(postmaster)

    hostname = hostname or _default_hostname()
    if not _valid_hostname(hostname):
        _fail(f"{hostname!r} is not a host name", EX_DATAERR)
    conf = directory / "pymail.toml"
    values = {"hostname": hostname, "domains": [domain.lower()], "root": "."}
    _, problems = config.check({k: v for k, v in values.items()}, conf)
    if problems:
        _fail("; ".join(f"{k}: {m}" for k, m in problems), EX_DATAERR)
    if conf.exists() and not force:
        _fail(f"{conf} exists; use --force to overwrite it", EX_CANTCREAT)
    owner = None
    if daemon_user is None and os.geteuid() == 0:
        daemon_user = DEFAULT_DAEMON_USER
    if daemon_user:
        try:
            owner = ensure_daemon_account(daemon_user, directory)
        except OSError as exc:
            _fail(f"--daemon-user {daemon_user}: {exc}", EX_CANTCREAT)
        values["daemon_user"] = daemon_user
        _check_reachable(directory, owner)
    made, kept = [], []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_new(conf, _init_toml(values), 0o644)
        made.append(conf)
        for sub, mode in (("queue", 0o700), ("mail", 0o711)):  # mail: other uids' Maildirs are below it
            path = directory / sub
            (kept if path.is_dir() else made).append(path)
            if path in made:
                path.mkdir(mode=mode)
                os.chmod(path, mode)  # not cut by the umask

        Queue(directory / "queue").create()  # smtpd can queue before the runner ever ran
        for name, content, mode in (
            ("users", "", 0o640),
            ("aliases", _ALIASES_HEADER, 0o644),
            ("rules", _SITE_RULES, 0o644),  # deliver.site_rules
        ):
            path = directory / name
            if path.exists():
                kept.append(path)
            else:
                _write_new(path, content, mode)
                made.append(path)
        if postmaster is not None:  # RFC 5321 4.5.1: postmaster must exist
            try:
                if not _add_alias(directory / "aliases", "postmaster", postmaster):
                    click.echo(
                        f"pymail: warning: {directory / 'aliases'} already has a postmaster alias; kept it", err=True
                    )
            except ValueError:
                _fail(f"{directory / 'aliases'}: not UTF-8; add 'postmaster: {postmaster}' yourself", EX_DATAERR)
        if owner is not None and os.geteuid() == 0:
            hand_tree_to(directory, owner)
    except OSError as exc:
        _fail(_os_message(exc), EX_CANTCREAT)
    cert, key = directory / "tls" / "cert.pem", directory / "tls" / "key.pem"
    tls_note = ""
    if cert.exists() and key.exists():
        kept += [cert, key]
    else:
        try:
            tls.make_self_signed(cert, key, hostname)
            made += [cert, key]
            if owner is not None and os.geteuid() == 0:
                share_tls_key(key, owner)
        except (tls.TLSConfigError, OSError) as exc:
            tls_note = f"warning: no TLS certificate ({exc}); put one in {cert} and {key}"
    for path in made:
        click.echo(f"created {path}{'/' if path.is_dir() else ''}")
    for path in kept:
        click.echo(f"kept    {path}")
    if tls_note:
        click.echo(f"pymail: {tls_note}", err=True)
    click.echo(
        textwrap.dedent(f"""
        Next steps:
          pymail user add {directory} you@{domain.lower()}     (prints the new password)
          pymail config check {directory}
          pymail run {directory}     (SMTP on {config.PARAM_BY_NAME["listen.smtp"].default}; Ctrl-C stops it)""")
    )


# -- user ---------------------------------------------------------------------------------


@cli.group()
def user():
    """Add, remove and list mail users (the users file)."""


def _dir_and_address(args: tuple[str, ...]) -> tuple[str | None, str]:
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1:
        return None, args[0]
    raise click.UsageError("expected [DIR] ADDRESS")


def _user_target(args, config_file, *, must_be_local: bool = True):
    """(config, users file, canonical address) for a user subcommand."""
    directory, address = _dir_and_address(args)
    cfg = load_config(directory, config_file)
    try:
        address = normalize_address(address)
    except InvalidAddress as exc:
        _fail(str(exc), EX_DATAERR)
    users = UsersFile(cfg.path_of("users"))
    domain = address.rpartition("@")[2]
    if must_be_local and not cfg.is_local_domain(domain):
        _fail(f"{domain} is not a local domain (domains = {_toml(cfg.domains)} in {cfg.path})", EX_DATAERR)
    return cfg, users, address


def _new_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated?)"""
    if from_stdin:
        line = click.get_text_stream("stdin").readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            _fail("empty password on standard input", EX_DATAERR)
        if "\x00" in password:
            _fail("password contains NUL", EX_DATAERR)
        return password, False
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # no 0/O, 1/l/I look-alikes
    return "".join(secrets.choice(alphabet) for _ in range(16)), True


def _users_call(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except UserExists as exc:
        _fail(str(exc), EX_CANTCREAT)
    except NoSuchUser as exc:
        _fail(str(exc), EX_NOUSER)
    except UsersError as exc:
        _fail(str(exc), EX_CANTCREAT)
    except OSError as exc:
        _fail(_os_message(exc), EX_CANTCREAT)


def _ensure_maildir(path: Path, mail_root: Path, owner: tuple[int, int] | None = None) -> None:
    """Create a user's Maildir; when root makes it, it belongs to ``owner``
    (the users-file uid/gid), else to the mail store's owner (the daemons'
    user), not to root, or no delivery could write it.  The domain's folder
    stays the mail store's."""
    ensure_maildir(path)
    if os.geteuid() == 0:
        store = os.stat(mail_root)
        if store.st_uid != 0:
            os.chown(path.parent, store.st_uid, store.st_gid)
        uid, gid = owner or (store.st_uid, store.st_gid)
        if uid != 0 or gid != 0:
            chown_tree(path, uid, gid)


@user.command("add")
@click.argument("args", nargs=-1, metavar="[DIR] ADDRESS")
@_config_option
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from one line of standard input (else one is generated and printed).",
)
@click.option("--uid", type=click.IntRange(0, 2**32 - 2), help="The uid deliveries to this user run as (users file).")
@click.option("--gid", type=click.IntRange(0, 2**32 - 2), help="Their gid (default: the uid's login group).")
@click.option("--home", metavar="DIR", help="Their home, where .procmailrc and .forward are read (users file).")
@click.option(
    "--quota",
    metavar="RULE",
    help='Their quota, in Dovecot\'s quota_rule syntax ("*:storage=1G", "*:storage=1G:messages=10000").',
)
def user_add(args, config_file, password_stdin, uid, gid, home, quota):
    """Add a user and create their Maildir (owned by --uid/--gid when given)."""
    cfg, users, address = _user_target(args, config_file)
    rounds = _bcrypt_rounds(cfg)
    if address in {r.address for r in users.list()}:
        _fail(f"{address}: user exists", EX_CANTCREAT)  # before asking for a password
    if home is not None and not os.path.isabs(home):
        _fail(f"--home {home}: must be an absolute path", EX_DATAERR)
    if uid is not None and gid is None:
        import pwd  # noqa: PLC0415 lazy

        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    if gid is not None and uid is None:
        _fail("--gid needs --uid", EX_DATAERR)
    if quota is not None:
        _check_quota_rule(quota)
    password, generated = _new_password(password_stdin)
    _users_call(users.add, address, password, rounds=rounds, uid=uid, gid=gid, home=home or "")
    if quota is not None:
        _users_call(users.set_quota, address, quota)

    maildir = user_maildir(cfg.mail_dir, address)
    try:
        _ensure_maildir(maildir, cfg.mail_dir, (uid, gid) if uid is not None and gid is not None else None)
    except OSError as exc:
        _fail(f"{address} added, but its Maildir could not be made: {_os_message(exc)}", EX_CANTCREAT)
    click.echo(f"added {address} (Maildir {maildir})")
    _give_postmaster_to(cfg, users, address)
    if generated:
        click.echo(f"password: {password}")


def _give_postmaster_to(cfg, users, address: str) -> None:
    """RFC 5321 4.5.1: postmaster must exist.  While no alias or user takes
    postmaster's mail, the user just added gets it (``pymail init
    --postmaster`` names someone else)."""
    path = cfg.path_of("aliases")
    if unclaimed_postmaster(cfg, users, Aliases(path)) is None:
        return
    try:
        if _add_alias(path, "postmaster", address):
            click.echo(f"postmaster mail goes to {address} (alias 'postmaster: {address}' added to {path})")
    except (OSError, ValueError) as exc:
        click.echo(
            f"pymail: warning: no postmaster alias added to {path} "
            f"({_os_message(exc) if isinstance(exc, OSError) else 'not UTF-8'}): add 'postmaster: {address}'",
            err=True,
        )


@user.command("passwd")
@click.argument("args", nargs=-1, metavar="[DIR] ADDRESS")
@_config_option
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from one line of standard input (else one is generated and printed).",
)
def user_passwd(args, config_file, password_stdin):
    """Set a user's password."""
    cfg, users, address = _user_target(args, config_file)
    rounds = _bcrypt_rounds(cfg)
    password, generated = _new_password(password_stdin)
    _users_call(users.set_password, address, password, rounds=rounds)
    click.echo(f"password changed for {address}")
    if generated:
        click.echo(f"password: {password}")


def _check_quota_rule(rule: str) -> None:
    from pymta.lib.users import parse_quota_rule  # noqa: PLC0415 lazy

    try:
        parse_quota_rule(rule)
    except ValueError as exc:
        _fail(f"--quota: {exc}", EX_DATAERR)


@user.command("mod")
@click.argument("args", nargs=-1, metavar="[DIR] ADDRESS")
@_config_option
@click.option(
    "--quota",
    metavar="RULE",
    required=True,
    help='Their quota, in Dovecot\'s quota_rule syntax ("*:storage=1G", "*:messages=10000"); "none" removes it.',
)
def user_mod(args, config_file, quota):
    """Change a user's quota (the userdb_quota_rule field of the users file)."""
    cfg, users, address = _user_target(args, config_file, must_be_local=False)
    rule = None if quota.lower() in ("none", "") else quota
    if rule is not None:
        _check_quota_rule(rule)
    _users_call(users.set_quota, address, rule)
    click.echo(f"quota of {address}: {rule or 'none'}")


@user.command("del")
@click.argument("args", nargs=-1, metavar="[DIR] ADDRESS")
@_config_option
def user_del(args, config_file):
    """Remove a user (their Maildir is kept)."""
    cfg, users, address = _user_target(args, config_file, must_be_local=False)
    # a user of a domain no longer served may still be removed; anything else must be local
    domain = address.rpartition("@")[2]
    if not cfg.is_local_domain(domain) and address not in {r.address for r in users.list()}:
        _fail(f"{domain} is not a local domain (domains = {_toml(cfg.domains)} in {cfg.path})", EX_DATAERR)
    _users_call(users.delete, address)
    local = address.rpartition("@")[0]
    click.echo(f"deleted {address}; mail in {cfg.mail_dir / domain / local} was kept")


@user.command("list")
@click.argument("directory", required=False, metavar="[DIR]")
@_config_option
def user_list(directory, config_file):
    """List the users, one address a line."""
    cfg = load_config(directory, config_file)
    for record in UsersFile(cfg.path_of("users")).list():
        click.echo(record.address)


# -- config -------------------------------------------------------------------------------


@cli.group("config")
def config_group():
    """Check and show the configuration."""


@config_group.command("check")
@click.argument("directory", required=False, metavar="[DIR]")
@_config_option
def config_check(directory, config_file):
    """Validate the config file and the files it names."""
    path = _config_path(directory, config_file)
    try:
        cfg = config.load(path)
        problems = configcheck.problems(cfg)
    except config.ConfigError as exc:
        problems = exc.problems
    for key, message in problems:
        click.echo(f"{key}: {message}")
    if problems:
        raise click.exceptions.Exit(EX_CONFIG)
    from pymta.local import describe  # noqa: PLC0415 lazy

    for line in describe(cfg, UsersFile(cfg.path_of("users"))):
        click.echo(f"note: {line}")
    for line in configcheck.recipient_warnings(cfg):
        click.echo(f"warning: {line}", err=True)
    click.echo(f"config OK: {path.absolute()}")


@config_group.command("show")
@click.argument("directory", required=False, metavar="[DIR]")
@_config_option
@click.option("-n", "non_default", is_flag=True, help="Only the parameters the file sets (like postconf -n).")
def config_show(directory, config_file, non_default):
    """Print every parameter as `name = value` (valid TOML)."""
    cfg = load_config(directory, config_file)
    explicit = None
    if non_default:
        with open(cfg.path, "rb") as fh:
            data = tomllib.load(fh)
        explicit = set()
        for key, value in data.items():
            if isinstance(value, dict) and key in config.SECTIONS:
                explicit.update(f"{key}.{sub}" for sub in value)
            else:
                explicit.add(key)
    for param in config.PARAMS:
        if explicit is None or param.name in explicit:
            click.echo(f"{param.name} = {_toml(cfg[param.name])}")


# -- run ----------------------------------------------------------------------------------

# service -> (module, extra arguments); each gets -C, --listen and --service
SERVICES = {
    "smtp": ("pymta.smtpd", ()),
    "submission": ("pymta.smtpd", ()),
    "smtps": ("pymta.smtpd", ("--tls",)),
    "pop3": ("pypop.pop3d", ()),
    "pop3s": ("pypop.pop3d", ("--tls",)),
    "imap": ("pyimap.imapd", ()),
    "imaps": ("pyimap.imapd", ("--tls",)),
    "lmtp": ("pymta.lmtpd", ()),  # off by default (listen.lmtp empty)
    "autoconfig": ("pymta.autoconfig_http", ()),  # HTTP(S) by autoconfig.tls
    "metrics": ("pymta.metrics_http", ()),  # Prometheus text, GET /metrics
}
# SIGHUP: a renewed TLS certificate, sessions go on
RELOADING = {"pymta.smtpd", "pypop.pop3d", "pyimap.imapd", "pymta.lmtpd"}
QUEUE_RUNNER = "pymta.qrunner"
LOCAL_DELIVERY = "pymda.localserver"


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _checkout_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_option(service: str):
    return click.option(
        f"--{service}-port",
        f"{service}_port",
        type=click.IntRange(1, 65535),
        metavar="N",
        help=f"Port for {service} (host from listen.{service}).",
    )


def _run_options(f):
    for service in reversed(SERVICES):
        f = _port_option(service)(f)
    return f


@cli.command()
@click.argument("directory", required=False, metavar="[DIR]")
@_config_option
@_run_options
def run(directory, config_file, **ports):
    """Run every daemon and the queue runner in the foreground (Ctrl-C stops them)."""
    from pymta.lib import tls  # noqa: PLC0415 lazy
    from pymta.supervisor import Program, Supervisor  # noqa: PLC0415 lazy

    log.set_program("pymail")
    cfg = load_config(directory, config_file)
    conf = str(cfg.path.resolve())
    programs, missing = [], {}
    for service, (module, extra) in SERVICES.items():
        listen, port = cfg[f"listen.{service}"], ports.get(f"{service}_port")
        if not listen and port is None:
            continue  # disabled in the config
        if not _module_exists(module):
            missing.setdefault(module, []).append(service)
            continue
        host = config.parse_listen(listen)[0] if listen else "127.0.0.1"
        where = _host_port(host, port if port is not None else config.parse_listen(listen)[1])
        argv = [sys.executable, "-m", module, "-C", conf, "--listen", where, "--service", service, *extra]
        programs.append(Program(service, argv, where, reloads=module in RELOADING))
    if _module_exists(QUEUE_RUNNER):
        programs.append(Program("qrunner", [sys.executable, "-m", QUEUE_RUNNER, "-C", conf]))
    else:
        missing[QUEUE_RUNNER] = ["qrunner"]
    if os.geteuid() == 0:
        if not cfg["daemon_user"]:
            _fail(
                'started as root with no daemon_user: set one (pymail init does), or daemon_user = "root" '
                "to run everything as root on purpose",
                EX_CONFIG,
            )
        if cfg["daemon_user"] != "root":
            owner, problem = daemon_account(cfg["daemon_user"])
            if problem:
                _fail(problem, EX_CONFIG)
            _check_reachable(cfg.root, owner)
        if cfg["daemon_user"] != "root":  # the runner leaves root: this one step keeps it (pymda-local(8))
            programs.append(Program("local", [sys.executable, "-m", LOCAL_DELIVERY, "-C", conf], "run/local.sock"))
    notes = [f"{', '.join(names)} skipped: {module} is not installed" for module, names in missing.items()]
    if not programs:
        for note in notes:
            click.echo(note, err=True)
        _fail("nothing to run", EX_UNAVAILABLE)
    if any(p.name != "qrunner" for p in programs):
        try:  # one clear message now rather than every TLS listener crash-looping
            tls.server_context(cfg.path_of("tls_cert"), cfg.path_of("tls_key"))
        except tls.TLSConfigError as exc:
            _fail(f"paths.tls_cert: {exc}", EX_CONFIG)
    env = dict(os.environ)
    root = _checkout_root()
    if root is not None:  # so `python -m pymta.smtpd` finds the package in a checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    width = max(len(p.name) for p in programs)
    lines = [f"pymail run: config {conf}"]
    lines += [f"  {p.name:<{width}}  {p.where:<22} {p.argv[2]}" for p in programs]
    lines += [f"  ({note})" for note in notes]
    lines.append("Ctrl-C (or SIGTERM) stops everything.")
    click.echo("\n".join(lines))
    sys.stdout.flush()
    code = Supervisor(
        programs, env=env, restart_delay=cfg["run.restart_delay"], max_restart_delay=cfg["run.max_restart_delay"]
    ).run()
    raise click.exceptions.Exit(code)


if __name__ == "__main__":
    sys.exit(main())
