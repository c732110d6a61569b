"""Per-recipient progress of a queue entry: typed records for ``state/ID``.

The state file is JSON (pymail(7))::

    {"first": T, "next": T, "warned": true,
     "rcpts": [{"to": ..., "kind": ..., "orig": ..., "status": "deferred",
                "attempts": 2, "reason": "4.2.0 ...", "code": 450, "enhanced": "4.2.0",
                "dup": true, "notified": true, "remote": ..., "diag": ..., "verdict": ...}]}

On disk ``status`` is the recipient's state (pending, attempting, sent,
deferred, bounced) and ``reason`` the text of its last result; ``code`` and
``enhanced`` carry that result's reply code and RFC 3463 code, so a bounce
never has to dig them out of the text.  Files written before those two
keys existed still load: their code is read from the start of ``reason``
(``Status.from_text``, the one place that parses such text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Recipient states kept in state/ID
PENDING, ATTEMPTING, SENT, DEFERRED, BOUNCED = "pending", "attempting", "sent", "deferred", "bounced"
DUPLICATE_NOTE = " (possible duplicate after a crash)"

_CLASS_CODE = {"2": 250, "4": 450, "5": 550}


def _is_enhanced(word: str) -> bool:
    parts = word.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)


@dataclass(frozen=True)
class Status:
    """A delivery result: reply ``code`` (250, 450, 550 or the server's),
    RFC 3463 ``enhanced`` code, and ``text`` as people see it (logs, mailq,
    the DSN) -- usually, but not always, starting with the enhanced code."""

    code: int = 0
    enhanced: str = ""
    text: str = ""

    @classmethod
    def of(cls, enhanced: str, detail: str, code: int = 0) -> Status:
        """``enhanced`` and a detail, shown as ``"5.1.1 unknown user"``."""
        return cls(code or _CLASS_CODE.get(enhanced[:1], 450), enhanced, f"{enhanced} {detail}")

    @classmethod
    def from_text(cls, text: str, failed: bool = True) -> Status:
        """A status from text that may start with an enhanced code (an alias
        verdict, a state file from before ``enhanced`` was kept); without
        one the code is the class default (5.0.0 when ``failed``, else 4.0.0)."""
        first = text.split(" ", 1)[0]
        enhanced = first if _is_enhanced(first) else ("5.0.0" if failed else "4.0.0")
        return cls(_CLASS_CODE.get(enhanced[:1], 450), enhanced, text)

    def __str__(self) -> str:
        return self.text


NO_STATUS = Status()


@dataclass
class Recipient:
    """One final recipient of a queue entry (after aliases).

    ``kind`` is the alias target kind: "address", "pipe", "file", or
    "error"/"defer" with the alias expansion's own ``verdict``."""

    to: str
    kind: str = "address"
    orig: str = ""
    state: str = PENDING  # on disk: "status"
    attempts: int = 0
    reason: Status = NO_STATUS  # the last result
    verdict: str = ""
    dup: bool = False  # may have been delivered by a runner that crashed
    notified: bool = False  # its bounce is queued
    remote: str = ""  # host[ip]:port that answered
    diag: str = ""  # DSN Diagnostic-Code ("smtp; 550 ...")

    def set(self, state: str, reason: Status) -> None:
        self.state = state
        self.reason = reason

    def to_dict(self) -> dict:
        out = {
            "to": self.to,
            "kind": self.kind,
            "orig": self.orig,
            "status": self.state,
            "attempts": self.attempts,
            "reason": self.reason.text,
        }
        if self.reason.enhanced:
            out.update(code=self.reason.code, enhanced=self.reason.enhanced)
        for name in ("verdict", "dup", "notified", "remote", "diag"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Recipient:
        text = str(d.get("reason") or "")
        state = str(d.get("status") or PENDING)
        if d.get("enhanced"):
            reason = Status(int(d.get("code") or 0), str(d["enhanced"]), text)
        elif text:
            reason = Status.from_text(text, failed=state == BOUNCED)
        else:
            reason = NO_STATUS
        return cls(
            to=str(d["to"]),
            kind=str(d.get("kind") or "address"),
            orig=str(d.get("orig") or d["to"]),
            state=state,
            attempts=int(d.get("attempts") or 0),
            reason=reason,
            verdict=str(d.get("verdict") or ""),
            dup=bool(d.get("dup")),
            notified=bool(d.get("notified")),
            remote=str(d.get("remote") or ""),
            diag=str(d.get("diag") or ""),
        )


@dataclass
class EntryState:
    """``state/ID``: the recipients, when the first attempt began, the
    next retry time, and whether the delay warning went out."""

    rcpts: list[Recipient] = field(default_factory=list)
    first: float = field(default_factory=time.time)
    next: float = 0.0
    warned: bool = False

    def to_dict(self) -> dict:
        out: dict = {"rcpts": [r.to_dict() for r in self.rcpts], "first": self.first}
        if self.warned:
            out["warned"] = True
        if self.next:
            out["next"] = self.next
        return out

    @classmethod
    def from_dict(cls, d: dict) -> EntryState:
        rcpts = [Recipient.from_dict(r) for r in d.get("rcpts") or [] if isinstance(r, dict) and "to" in r]
        return cls(
            rcpts=rcpts,
            first=float(d.get("first") or 0.0),
            next=float(d.get("next") or 0.0),
            warned=bool(d.get("warned")),
        )


def expand(aliases, is_local, addresses, seen: set) -> list[Recipient]:
    """Recipients after aliases, each final target once per message
    (``alice`` and ``postmaster -> alice`` give alice one copy)."""
    rcpts = []
    for rcpt in addresses:
        for orig, target in aliases.expand(rcpt, is_local):
            key = (target.kind, target.value.lower())
            if key in seen:
                continue
            seen.add(key)
            if target.kind in ("error", "defer"):  # logged and bounced under the address itself
                rcpts.append(Recipient(to=orig, kind=target.kind, orig=orig, verdict=target.value))
            else:
                rcpts.append(Recipient(to=target.value, kind=target.kind, orig=orig))
    return rcpts


def reexpand_deferred_aliases(aliases, is_local, state: EntryState) -> None:
    """An alias that could not be expanded (unreadable :include:) is tried again."""
    waiting = [r for r in state.rcpts if r.kind == "defer"]
    if not waiting:
        return
    keep = [r for r in state.rcpts if r.kind != "defer"]
    seen = {(r.kind, r.to.lower()) for r in keep}
    fresh = expand(aliases, is_local, [r.orig for r in waiting], seen)
    for r in fresh:
        old = next((w for w in waiting if w.orig == r.orig), None)
        if old is not None:
            r.attempts = old.attempts
    state.rcpts = keep + fresh
