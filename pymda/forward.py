"""``~/.forward``: per-user forwarding, applied before the user's rules.

The file holds aliases(5) targets, comma- or line-separated::

    # keep a copy here and send one on
    \\alice, alice@elsewhere.example
    "|/usr/bin/vacation alice"
    /home/alice/archive.mbox

``\\user`` (or the user's own address) keeps a copy: the message then goes
through the user's rules (or to the INBOX).  ``|command`` and
``/path`` (mbox; with a trailing ``/`` a Maildir) are delivered as rule
actions would be, as the user.  Other targets are forwarded with
``$SENDMAIL``.  As sendmail does, the file is ignored (and logged) when it
is writable by group or others or owned by someone other than the user or
root.  Any failing target makes the whole delivery a temporary failure.
"""

from __future__ import annotations

import os

from pymda.confined import Refused
from pymda.rules.engine import Engine, Outcome, default_roots, run_rules
from pymda.rules.parser import Action, Recipe
from pymta.lib import log, sysexits
from pymta.lib.aliasgrammar import parse_target, targets_in, unquote
from pymta.lib.privilege import safe_for


def read_targets(path, opener=None) -> list[str]:
    with open(path, encoding="utf-8", errors="surrogateescape", opener=opener) as fh:
        text = fh.read(1 << 16)
    return targets_in(text.splitlines())


def safe(path) -> bool:
    """procmail's rule for the file (``privilege.safe_for``), logged when it fails."""
    problem = safe_for(path, os.geteuid())
    if problem is not None:
        log.warning(f"{path}: {problem}; ignored")
    return problem is None


def apply(
    path,
    data: bytes,
    variables: dict,
    *,
    record,
    box,
    sender: str,
    files,
    dry_run: bool = False,
    qid=None,
    args=(),
    confine=None,
):
    roots = default_roots(confine, variables)
    try:  # read as the rules files are: a .forward linked out of the user's directories is refused
        targets = read_targets(path, roots.opener() if roots.contains(str(path)) else None) if safe(path) else []
    except OSError as exc:
        log.warning(f"{path}: {exc.strerror}; ignored", qid)
        targets = []
    except Refused as exc:
        log.error(f"{path}: refused: {exc}; ignored", qid)
        targets = []
    if not targets:
        return run_rules(
            data, files, variables, args=args, inbox=box, sender=sender, dry_run=dry_run, qid=qid, confine=confine
        )
    local = record.address.rpartition("@")[0]
    keep = False
    eng = Engine(data, variables, args=args, inbox=box, sender=sender, dry_run=dry_run, qid=qid, confine=confine)
    eng.special["_"] = str(path)
    addresses = []
    for n, target in enumerate(targets, 1):
        t = unquote(target).strip()
        if t.startswith("\\") or t.lower() in (local.lower(), record.address.lower()):
            keep = True
            continue
        kind, value = parse_target(t)
        if kind == "pipe":
            ok = eng.pipe(Recipe("", None, [], Action("pipe", value, n), n))
        elif kind == "file":
            ok = eng.folder(Recipe("", None, [], Action("folder", value, n), n))
        else:  # an address; ":include:" is for the aliases file only
            addresses.append(t)
            continue
        if not ok:
            eng.tempfail = eng.tempfail or f"{path}: target {t!r} failed"
    if addresses:
        if not eng.forward(Recipe("", None, [], Action("forward", " ".join(addresses), 0), 0)):
            eng.tempfail = eng.tempfail or f"{path}: forward failed"
    if eng.tempfail:
        return Outcome(False, sysexits.EX_TEMPFAIL, eng.folders, f"temporary failure: {eng.tempfail}", eng.report)
    if keep:
        outcome = run_rules(
            data, files, variables, args=args, inbox=box, sender=sender, dry_run=dry_run, qid=qid, confine=confine
        )
        outcome.folders[:0] = eng.folders
        outcome.report[:0] = eng.report
        return outcome
    return Outcome(True, sysexits.EX_OK, eng.folders, "", eng.report)
