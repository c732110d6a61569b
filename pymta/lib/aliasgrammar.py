"""The target grammar of aliases(5), shared by /etc/aliases and ``~/.forward``.

A target list is comma-separated (commas inside double quotes do not
split); a line starting with ``#`` is a comment.  One target is, after
optional surrounding double quotes are removed:

- ``|command``       -- a pipe;
- ``/path``          -- a file (mbox, or a Maildir with a trailing ``/``);
- ``:include:/path`` -- a list of further targets, one file (aliases only);
- anything else      -- an address.

What each kind means is the reader's business: the aliases table expands
it for the queue runner, a ``.forward`` delivers it as the user.
"""

from __future__ import annotations

from collections.abc import Iterable

INCLUDE = ":include:"


def split_targets(text: str) -> list[str]:
    """Comma-separated targets; commas inside double quotes do not split."""
    out: list[str]
    cur: list[str]
    out, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [t for t in out if t]


def targets_in(lines: Iterable[str]) -> list[str]:
    """Every target on ``lines``, blank lines and ``#`` comments skipped."""
    out = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            out.extend(split_targets(line))
    return out


def unquote(raw: str) -> str:
    """The target stripped, without one pair of surrounding double quotes."""
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        raw = raw[1:-1]
    return raw


def parse_target(target: str) -> tuple[str, str]:
    """(kind, value) of an unquoted target: ("pipe", command), ("file", path),
    ("include", path) or ("address", target)."""
    if target.startswith("|"):
        return "pipe", target[1:].strip()
    if target.startswith("/"):
        return "file", target
    if target.lower().startswith(INCLUDE):
        return "include", target[len(INCLUDE) :].strip()
    return "address", target
