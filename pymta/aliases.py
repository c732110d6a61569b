"""The aliases file, in /etc/aliases format.

::

    # comment
    postmaster: alice
    team:       alice, bob@example.test,
                carol@elsewhere.example      (continuation: leading space)
    list:       :include:/etc/pymail/list.members

A name without ``@`` applies to every local domain; ``name@domain`` only to
that domain.  Targets are addresses (a bare name means the same local part
in the recipient's domain), ``:include:FILE`` (one target per line), and
``|command`` / ``/path/to/mbox`` (handled by local delivery, see aliases(5)).
"""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

from pymta.lib import log
from pymta.lib.aliasgrammar import parse_target, split_targets, targets_in, unquote

MAX_DEPTH = 10  # Postfix's limit on alias nesting is similar; stops loops


# kind: "address", "pipe", "file"; "error" (bounce) / "defer" (retry) with the reason as value.
# A named tuple, not a dataclass: smtpd expands aliases at every local RCPT,
# and under inetd ``dataclasses`` (inspect, ast, dis...) costs ~10 ms a connection.
Target = namedtuple("Target", "kind value")


def parse(text: str, source: str = "aliases") -> tuple[dict[str, list[str]], list[tuple[int, str]]]:
    """Parse aliases text; return (table, problems as (line number, message))."""
    table: dict[str, list[str]] = {}
    problems: list[tuple[int, str]] = []
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            if not entries:
                problems.append((number, "continuation line with no alias before it"))
                continue
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
        else:
            entries.append((number, line.strip()))
    for number, entry in entries:
        name, sep, rest = entry.partition(":")
        name = name.strip().strip('"').lower()
        if not sep or not name:
            problems.append((number, "expected 'name: target, ...'"))
            continue
        if any(c.isspace() or c in "\x00/" for c in name):
            problems.append((number, f"bad alias name {name!r}"))
            continue
        targets = split_targets(rest)
        if not targets:
            problems.append((number, f"alias {name!r} has no targets"))
            continue
        if name in table:
            problems.append((number, f"duplicate alias {name!r}"))
        table[name] = targets
    return table, problems


class Aliases:
    """The aliases file, re-read when it changes."""

    def __init__(self, path: os.PathLike | str | None) -> None:
        self.path = Path(path) if path else None
        self._key = None
        self._table: dict[str, list[str]] = {}

    def table(self, look: bool = True) -> dict[str, list[str]]:
        """The aliases; ``look=False``: as read last, without a look at the disk."""
        if self.path is None:
            return {}
        if not look:
            return self._table
        try:
            st = os.stat(self.path)
        except OSError:
            self._key, self._table = None, {}
            return self._table
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                self._table, _ = parse(fh.read(), str(self.path))
            self._key = key
        return self._table

    def lookup(self, address: str, look: bool = True) -> list[str] | None:
        """The targets for ``address`` (``local@domain``), or None."""
        local, _, domain = address.rpartition("@")
        table = self.table(look)
        local = local.lower()
        base = local.split("+", 1)[0]
        for key in (f"{local}@{domain.lower()}", local, f"{base}@{domain.lower()}", base):
            if key in table:
                return table[key]
        return None

    def expand(self, address: str, is_local, look: bool = True) -> list[tuple[str, Target]]:
        """Expand ``address`` recursively into (original, Target) pairs.

        ``is_local(addr)`` says whether an address is in a local domain
        (only those are looked up again).  An alias that names itself is
        delivered to the user of that name, as sendmail does.
        """
        out: list[tuple[str, Target]] = []
        seen: set[str] = set()

        def walk(addr: str, depth: int) -> None:
            key = addr.lower()
            if key in seen:
                return
            seen.add(key)
            targets = self.lookup(addr, look) if is_local(addr) else None
            if targets is None or depth >= MAX_DEPTH:
                out.append((address, Target("address", addr)))
                return
            domain = addr.rpartition("@")[2]
            for raw in targets:
                for target in self._resolve(raw, domain, depth, look):
                    if target.kind != "address":
                        out.append((address, target))
                    elif target.value.lower() == key:
                        out.append((address, target))  # "alice: alice, bob" keeps a copy
                    else:
                        walk(target.value, depth + 1)

        walk(address, 0)
        if not out:
            # Every path led back to a name already expanded: without this the
            # recipient would vanish without a delivery or a bounce.
            out.append((address, Target("error", "5.4.6 alias loop: no deliverable target")))
        return out

    def _resolve(self, raw: str, domain: str, depth: int, look: bool = True) -> list[Target]:
        kind, value = parse_target(unquote(raw))
        if kind in ("pipe", "file"):
            return [Target(kind, value)]
        if kind == "include":
            if depth >= MAX_DEPTH:
                return []
            if not look:  # a file to read: not without a look at the disk
                return [Target("look", value)]
            path = value
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    items = targets_in(fh)
            except OSError as exc:
                # Maybe fixed in a minute: keep the message, never drop the list.
                return [Target("defer", f"4.3.0 cannot read include file {path}: {exc.strerror}")]
            out = []
            for item in items:
                for target in self._resolve(item, domain, depth + 1):
                    if target.kind == "defer":
                        out.append(target)
                        continue
                    if target.kind != "address":
                        # as Postfix's allow_mail_to_commands/files default: not from
                        # :include: files, which someone other than root may write
                        log.warning(f"{path}: {target.kind} target {target.value!r} ignored in an :include: file")
                        continue
                    out.append(target)
            return out
        if "@" not in value:
            value = f"{value}@{domain}"
        return [Target("address", value)]


def check(text: str, source: str = "aliases", *, is_local=None, user_exists=None) -> list[tuple[int, str]]:
    """``newaliases``-style validation: every problem as (line number, message).

    On top of ``parse``'s syntax problems: empty ``|`` commands, file
    targets that are not absolute paths, ``:include:`` files that cannot be
    read, targets with spaces or control characters, and (when
    ``is_local``/``user_exists`` are given) local targets that are neither
    a user nor another alias.
    """
    table, problems = parse(text, source)
    names = set(table)
    line_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line and line[0] not in " \t#":
            name = line.partition(":")[0].strip().strip('"').lower()
            line_of.setdefault(name, number)
    for name, targets in table.items():
        number = line_of.get(name, 0)
        for raw in targets:
            t = unquote(raw)
            kind, value = parse_target(t)
            if any(ord(c) < 32 for c in t):
                problems.append((number, f"{name}: control character in target {raw!r}"))
            elif kind == "pipe":
                if not value:
                    problems.append((number, f"{name}: '|' without a command"))
            elif kind == "include":
                if not value.startswith("/"):
                    problems.append((number, f"{name}: :include: needs an absolute path, not {value!r}"))
                elif not os.access(value, os.R_OK):
                    problems.append((number, f"{name}: cannot read include file {value}"))
            elif kind == "file":
                if "/../" in t + "/" or t.endswith("/.."):
                    problems.append((number, f"{name}: '..' in file target {t!r}"))
            elif t.startswith(("~", ".")):
                problems.append((number, f"{name}: file targets must be absolute paths: {t!r}"))
            elif any(c.isspace() for c in t) or t.count("@") > 1 or t.startswith("-"):
                problems.append((number, f"{name}: bad address {raw!r}"))
            elif user_exists is not None and "@" not in t and t.lower() not in names:
                local = t.lower()
                if not user_exists(local):
                    problems.append((number, f"{name}: {t!r} is neither a user nor an alias"))
    problems.sort()
    return problems


def unknown_targets(aliases: Aliases, address: str, is_local, user_exists, look: bool = True) -> list[str] | None:
    """The local addresses mail to ``address`` would end at that are no user.

    Checked at RCPT time, so pymail never accepts mail it would then bounce
    to a (maybe forged) sender.  Pipes, files, ``:include:`` lists and remote
    targets are the admin's own and count as deliverable; an unreadable
    include file too (the runner retries it).  An alias loop with no way
    out is reported as the address itself.  ``user_exists`` may raise
    (users file unavailable): the caller answers that with a 4xx.
    ``look=False``: the aliases as read last, without a look at the disk;
    None when that cannot tell (an ``:include:`` file would have to be read).
    """
    unknown = []
    for _orig, target in aliases.expand(address, is_local, look):
        if target.kind == "look":
            return None
        if target.kind == "error":
            unknown.append(address)
        elif target.kind == "address" and is_local(target.value) and not user_exists(target.value):
            unknown.append(target.value)
    return unknown


def with_alias(text: str, name: str, target: str) -> str | None:
    """``text`` with ``name: target`` added at the end, comments and all kept;
    None when the file already has an alias ``name``."""
    table, _ = parse(text)
    if name.lower() in table:
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{name}: {target}\n"
