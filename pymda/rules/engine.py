"""Run procmail recipes against one message (pymda-rules(5)).

``Engine`` holds the message (From_ line, header, body), the variables and
a stack of frames (one per nesting level or included file).  Recipes are
evaluated in order; the first *delivering* recipe that succeeds ends the
run.  A run that falls off the end delivers to ``$DEFAULT``.  A delivering
recipe that failed for a reason a retry may cure (a pipe's exit status
with ``w``, a full disk, a lock timeout) makes the run a temporary failure instead of a
silent fallback, unless a later recipe delivers the message.
"""

from __future__ import annotations

import copy
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pymda import confined, maildir
from pymta.lib import log as _log
from pymta.lib import sysexits

from . import mbox
from . import regex as rx
from .parser import Assign, Condition, Recipe, RuleFile, parse_condition, parse_file

SUPREMUM = 2147483647.0
SHELLMETAS = "&|<>~;?*["
_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*)|\\([A-Za-z_][A-Za-z0-9_]*)|([0-9#$?_\-=@]))")
_NOT_EXPORTED = {"=", "_", "-"}
# Variables naming a path: an assignment leading outside the user's
# directories is refused (logged with file:line) and the old value stays.
_PATH_VARS = ("MAILDIR", "DEFAULT", "ORGMAIL", "LOGFILE")
_UNFOLD = re.compile(rb"\n(?=[ \t])")
CAPTURE_LIMIT = 64 * 1024  # output a backquote or VAR=| may give: a value, not a message
FILTER_LIMIT = 25 * 1024 * 1024  # a filter's output, at least (smtpd.max_message_size's default)


def default_roots(confine, variables: dict) -> confined.Roots:
    """The directories rule paths must stay under: ``confine`` (the deliverer
    passes the user's Maildir and home), else HOME and MAILDIR as the run
    starts (pymda-deliver -m) -- never what the rules assign later."""
    return confined.Roots(confine if confine else (variables.get("HOME"), variables.get("MAILDIR")))


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


@dataclass
class Outcome:
    delivered: bool
    exit_code: int
    folders: list = field(default_factory=list)
    reason: str = ""
    report: list = field(default_factory=list)  # (line, text) for --dry-run


class Message:
    def __init__(self, data: bytes) -> None:
        self.from_ = None
        if data.startswith(b"From "):
            nl = data.find(b"\n")
            if nl >= 0:
                self.from_, data = data[: nl + 1], data[nl + 1 :]
        self.set(data)

    def set(self, data: bytes) -> None:
        idx = data.find(b"\n\n")
        if idx < 0:
            self.header, self.body = data, b""
        else:
            self.header, self.body = data[: idx + 2], data[idx + 2 :]
        self._text = {}

    def text(self, area: str) -> str:
        t = self._text.get(area)
        if t is None:
            raw = b""
            if "H" in area:
                # procmail's concon(): a folded field is searched as one line,
                # each continuation's newline read as a space
                raw += (self.from_ or b"") + _UNFOLD.sub(b" ", self.header)
            if "B" in area:
                raw += self.body
            t = self._text[area] = raw.decode("utf-8", "surrogateescape")
        return t

    def lower(self, area: str) -> str:
        key = "l" + area
        t = self._text.get(key)
        if t is None:
            t = self._text[key] = rx.ascii_lower(self.text(area))
        return t

    def size(self) -> int:
        return len(self.header) + len(self.body)

    def part(self, head: bool, body: bool, from_: bool) -> bytes:
        out = b""
        if head:
            out = ((self.from_ or b"") if from_ else b"") + self.header
        if body:
            out += self.body
        return out


def _ensure_blank(data: bytes) -> bytes:
    # procmail: one newline more unless the text already ends with an empty line
    if data.endswith(b"\n\n") or not data:
        return data
    return data + b"\n"


class _Level:
    __slots__ = ("lastcond", "prev_executed", "prev_failed", "prev_ok")

    def __init__(self) -> None:
        self.lastcond = False
        self.prev_executed = False
        self.prev_failed = False
        self.prev_ok = False


class _Frame:
    __slots__ = ("items", "i", "level", "rcfile")

    def __init__(self, items, rcfile: str, level=None) -> None:
        self.items = items
        self.i = 0
        self.level = level or _Level()
        self.rcfile = rcfile


def _true(value: str) -> bool:
    v = value.strip().lower()
    if not v:
        return False
    if v[0].isdigit():
        return int(re.match(r"\d+", v).group(0)) != 0
    return v[0] in "oyte" and not v.startswith("off")


class _ConfinedLock:
    """A dotlock in a directory held open by descriptor: a link swapped in later cannot move it."""

    def __init__(self, dir_fd: int, name: str, timeout: float) -> None:
        self.dir_fd = dir_fd
        self.lock = mbox.DotLock(confined.fd_path(dir_fd, name), timeout=timeout)

    def acquire(self) -> None:
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class Engine:
    def __init__(
        self,
        data: bytes,
        variables: dict,
        *,
        args=(),
        inbox: Path | None = None,
        sender: str = "",
        dry_run: bool = False,
        qid: str | None = None,
        regex_timeout: float = rx.SEARCH_TIMEOUT,
        confine=None,
        max_output: int | None = None,
    ) -> None:
        self.msg = Message(data)
        self.vars: dict[str, str] = {k: str(v) for k, v in variables.items() if v is not None}
        # Every path the rules name stays under these (pymda.confined), in
        # every delivery mode: the kernel alone would let rules run as the
        # user (or as the one vmail uid) reach any file that uid can.
        self.roots = default_roots(confine, self.vars)
        self.first_default = self.vars.get("DEFAULT")  # the fallback when a later DEFAULT fails
        self.max_output = max_output  # a filter's output limit (None: FILTER_LIMIT or twice the message)
        self.line = 0  # of the item running, for backquotes' log lines
        self.args = list(args)
        self.inbox = Path(inbox) if inbox else None
        self.sender = sender
        self.dry_run = dry_run
        self.qid = qid
        self.regex_timeout = regex_timeout
        self.frames: list[_Frame] = []
        self.done = False
        self.delivered = False
        self.folders: list[str] = []
        self.tempfail = ""
        self.report: list[tuple[str, str]] = []
        self.special = {"=": "0", "?": "0", "_": "", "-": ""}
        self.global_lock = None
        self.clones: list[Outcome] = []

    # -- logging ---------------------------------------------------------------------
    def _logpath(self) -> str | None:
        path = self.vars.get("LOGFILE")
        if not path or path == "/dev/null":
            return None
        return self._abs(path)

    def log(self, text: str, level: str = "info") -> None:
        """A problem or event: to $LOGFILE when set (as procmail), and to our log."""
        path = self._logpath()
        if path and not self.dry_run:
            self._append_log(path, f"pymda: {text}\n")
        if level == "error":
            _log.error(text, self.qid)
        elif level == "warning":
            _log.warning(text, self.qid)
        else:
            _log.debug(text, self.qid)

    def _open_log(self, path: str) -> int | None:
        """LOGFILE opened for appending, inside the user's directories only."""
        try:
            return self.roots.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except (OSError, confined.Refused) as exc:
            _log.warning(f"LOGFILE {path}: {_why(exc)}", self.qid)
            return None

    def _append_log(self, path: str, text: str) -> None:
        fd = self._open_log(path)
        if fd is None:
            return
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            _log.warning(f"LOGFILE {path}: {exc.strerror}", self.qid)
        finally:
            os.close(fd)

    def _refuse(self, line, what: str, exc: Exception) -> None:
        """A path outside the user's directories: an error naming file and line."""
        self.log(f"{self.special['_']}:{line}: {what}: refused: {_why(exc)}", "error")
        self.note(line, f"refused: {what}: {_why(exc)}")

    def _allowed(self, name: str, value: str, line: int) -> bool:
        """May path variable ``name`` take ``value``?  Logs the refusal."""
        if not value or value == "/dev/null":
            return True
        try:
            self.roots.check(self._abs(value))
            return True
        except (OSError, confined.Refused) as exc:
            self._refuse(line, f"{name}={value}", exc)
            return False

    def note(self, line, text: str) -> None:
        self.report.append((f"{self.special['_']}:{line}" if line else "", text))
        if self.vars.get("VERBOSE") and _true(self.vars["VERBOSE"]):
            self.log(f"line {line}: {text}")

    def _abstract(self, folder: str, size: int) -> None:
        path = self._logpath()
        if not path or self.dry_run:
            return
        if "LOGABSTRACT" in self.vars and not _true(self.vars["LOGABSTRACT"]) and self.vars["LOGABSTRACT"] != "all":
            return
        first = (self.msg.from_ or b"From " + (self.sender or "").encode() + b"\n").decode("utf-8", "replace")
        m = re.search(r"^Subject:(.*)$", self.msg.text("H"), re.M | re.I)
        lines = first[5:] if first.startswith("From ") else first
        if m:
            lines += f" Subject:{m.group(1)[:70]}\n"
        lines += f"  Folder: {folder}\t{size}\n"
        self._append_log(path, lines)

    # -- variables -------------------------------------------------------------------
    def _abs(self, path: str) -> str:
        if os.path.isabs(path):
            return path
        return os.path.join(self.vars.get("MAILDIR") or ".", path)

    def getvar(self, name: str) -> str | None:
        if name in self.special and name not in ("?",):
            return self.special[name]
        if name == "?":
            return self.special["?"]
        if name == "LASTFOLDER":
            return self.special["-"]
        if name == "#":
            return str(len(self.args))
        if name == "$":
            return str(os.getpid())
        if name == "@":
            return " ".join(self.args)
        if name.isdigit():
            k = int(name)
            if k == 0:
                return "pymda-deliver"
            return self.args[k - 1] if k <= len(self.args) else ""
        return self.vars.get(name)

    def expand(self, text: str, dq: bool = True) -> str:
        """$VAR, ${VAR}, ${VAR:-x}, ${VAR:+x}, ${VAR-x}, ${VAR+x}, $\\VAR, $#, $n, $$, $?, $_, $-, $=."""
        out = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                if not dq:
                    out.append(nxt)
                elif nxt in '$`"\\':
                    out.append(nxt)
                else:
                    out.append(c + nxt)
                i += 2
                continue
            if c == "$":
                m = _VAR.match(text, i)
                if m:
                    i = m.end()
                    if m.group(1) is not None:
                        out.append(self._brace(m.group(1)))
                    elif m.group(2):
                        out.append(self.getvar(m.group(2)) or "")
                    elif m.group(3):
                        out.append(rx.escape(self.getvar(m.group(3)) or ""))
                    else:
                        out.append(self.getvar(m.group(4)) or "")
                    continue
            out.append(c)
            i += 1
        return "".join(out)

    def _brace(self, inner: str) -> str:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[#$?_\-=@])(?:(:?)([-+])(.*))?", inner, re.S)
        if not m:
            return ""
        value = self.getvar(m.group(1))
        if m.group(3) is None:
            return value or ""
        colon, op, word = m.group(2), m.group(3), m.group(4)
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set else self.expand(word)
        return self.expand(word) if is_set else ""

    def value_of(self, segments) -> str:
        parts = []
        for kind, text in segments:
            if kind == "sq":
                parts.append(text)
            elif kind == "bq":
                parts.append(self.backquote(text))
            elif kind == "dq":
                if "`" in text:
                    pieces = text.split("`")
                    for k, piece in enumerate(pieces):
                        parts.append(self.backquote(piece) if k % 2 else self.expand(piece, dq=True))
                else:
                    parts.append(self.expand(text, dq=True))
            else:
                parts.append(self.expand(text, dq=False))
        return "".join(parts)

    def backquote(self, command: str) -> str:
        res = self._program(command, self.msg.part(True, True, True), capture=True, line=self.line, limit=CAPTURE_LIMIT)
        self.special["?"] = str(res.code if res.code is not None else 1)
        if res.overflow:
            self.log(
                f"{self.special['_']}:{self.line}: `{command}` {res.why()} (over {CAPTURE_LIMIT} bytes)", "warning"
            )
        return res.output.decode("utf-8", "surrogateescape").rstrip("\n")

    def assign(self, item: Assign) -> None:
        name = item.name
        old_maildir = self.vars.get("MAILDIR")
        if item.value is None:
            value = None
            self.vars.pop(name, None)
        else:
            value = self.value_of(item.value)
            if name in _PATH_VARS and not self._allowed(name, value, item.line):
                return  # the old value stays
            self.vars[name] = value
        if name == "LOG" and value:
            path = self._logpath()
            if path and not self.dry_run:
                self._append_log(path, value)
        elif name == "MAILDIR" and value is not None:
            base = old_maildir or os.getcwd()
            full = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
            if os.path.isdir(full):
                self.vars["MAILDIR"] = full
            else:  # procmail: "Couldn't chdir"; relative names keep their old meaning
                self.log(f"line {item.line}: MAILDIR {value}: no such directory", "warning")
                self.vars["MAILDIR"] = base
        elif name == "INCLUDERC" and value:
            self.include(value, item.line, switch=False)
        elif name == "SWITCHRC":
            if value:
                self.include(value, item.line, switch=True)
            else:
                self.frames.clear()
        elif name == "LOCKFILE":
            self._global_lock(value, item.line)
        elif name == "LOCKEXT" and value and "/" in value:
            self._refuse(item.line, f"LOCKEXT={value}", confined.Refused("a lock file name may not hold '/'"))
            self.vars["LOCKEXT"] = ".lock"
        elif name == "SHIFT" and value and value.strip().isdigit():
            self.args = self.args[int(value) :]
            self.vars.pop("SHIFT", None)

    def _global_lock(self, value: str | None, line: int) -> None:
        if self.global_lock is not None:
            self.global_lock.release()
            self.global_lock = None
        if value and not self.dry_run:
            self.global_lock = self._lock(
                self._abs(value), line, "LOCKFILE", timeout=float(self.vars.get("LOCKTIMEOUT_WAIT", 60))
            )

    def _lock(self, path: str, line, what: str, timeout: float = mbox.LOCK_TIMEOUT):
        """A dotlock at ``path`` inside the user's directories, held; None when refused or busy (logged)."""
        try:
            dir_fd, name = self.roots.open_parent(path)
        except (OSError, confined.Refused) as exc:
            self._refuse(line, f"{what} {path}", exc)
            return None
        lock = _ConfinedLock(dir_fd, name, timeout)
        try:
            lock.acquire()
        except mbox.MboxError as exc:
            lock.release()
            self.log(f"{self.special['_']}:{line}: {what}: {exc}", "warning")
            return None
        return lock

    def include(self, path: str, line: int, switch: bool) -> None:
        full = self._abs(path)
        try:
            rules = parse_file(full, opener=self.roots.opener())
        except confined.Refused as exc:
            self._refuse(line, f"{'SWITCHRC' if switch else 'INCLUDERC'} {full}", exc)
            if switch:
                self.frames.clear()
            return
        except OSError as exc:
            self.log(f"line {line}: {'SWITCHRC' if switch else 'INCLUDERC'} {full}: {exc.strerror}", "warning")
            if switch:
                self.frames.clear()
            return
        if rules.problems:
            for n, m in rules.problems:
                self.log(f"{full}:{n}: {m}", "error")
            self.log(f"{full}: not used because of syntax errors", "error")
            if switch:
                self.frames.clear()
            return
        if switch:
            self.frames.clear()
        self.frames.append(_Frame(rules.items, full))
        self.special["_"] = full

    # -- running ---------------------------------------------------------------------
    def run_file(self, rules: RuleFile) -> None:
        self.frames = [_Frame(rules.items, rules.path)]
        self.special["_"] = rules.path
        self.run()

    def run(self) -> None:
        while self.frames and not self.done:
            frame = self.frames[-1]
            if frame.i >= len(frame.items):
                self.frames.pop()
                continue
            item = frame.items[frame.i]
            frame.i += 1
            self.special["_"] = frame.rcfile
            self.line = item.line
            if isinstance(item, Assign):
                self.assign(item)
            else:
                self.recipe(item, frame)

    def recipe(self, r: Recipe, frame: _Frame) -> None:
        lvl = frame.level
        f = r.flags
        if "A" in f or "a" in f:
            allowed = lvl.lastcond and ("a" not in f or (lvl.prev_executed and lvl.prev_ok))
        elif "E" in f:
            allowed = not lvl.prev_executed
        elif "e" in f:
            allowed = lvl.prev_failed
        else:
            allowed = True
        matched = allowed and self.conditions(r)
        if not ("A" in f or "a" in f):
            lvl.lastcond = matched
        if "E" in f:
            lvl.prev_executed = lvl.prev_executed or matched
        else:
            lvl.prev_executed = matched
        if not matched:
            lvl.prev_failed = False
            if allowed:
                self.note(r.line, "no match")
            return
        self.note(r.line, f"match ({len(r.conditions)} condition{'s' if len(r.conditions) != 1 else ''})")
        ok = self.action(r, frame)
        lvl.prev_ok = ok
        lvl.prev_failed = not ok

    # -- conditions ------------------------------------------------------------------
    def _area(self, r: Recipe) -> str:
        h, b = "H" in r.flags, "B" in r.flags
        if h and b:
            return "HB"
        return "B" if b else "H"

    def conditions(self, r: Recipe) -> bool:
        weighted = any(c.weight for c in r.conditions)
        score = 0.0
        for cond in r.conditions:
            try:
                if cond.weight:
                    score += self.weigh(cond, r)
                    if score >= SUPREMUM:
                        score = SUPREMUM
                        break
                    if score <= -SUPREMUM:
                        score = -SUPREMUM
                        break
                elif not self.test(cond, r):
                    self.note(cond.line, f"condition failed: {cond.text}")
                    return False
            except (rx.RegexError, rx.RegexTimeout, ValueError) as exc:
                what = "took too long" if isinstance(exc, rx.RegexTimeout) else str(exc)
                self.log(
                    f"{self.special['_']}:{cond.line}: condition {cond.text!r}: {what}; treated as not matching",
                    "warning",
                )
                return False
        if weighted:
            self.special["="] = str(int(score))
            return score > 0
        return True

    def _resolve(self, cond: Condition) -> Condition:
        if cond.kind != "expand":
            return cond
        inner = parse_condition(self.expand(cond.arg, dq=True), cond.line, allow_weight=False)
        inner.negate ^= cond.negate
        inner.weight = cond.weight
        inner.text = cond.text
        return inner

    def _regex_count(self, pattern: str, text: str, r: Recipe, counting: bool, lowered: str | None = None) -> int:
        literals = rx.required_literals(pattern)
        if literals:
            low = lowered if lowered is not None else rx.ascii_lower(text)
            for lit in literals:
                if lit not in low:
                    return 0  # cannot match: no need to compile or search
        compiled = rx.compile_pattern(pattern, "D" in r.flags)
        if counting:
            return rx.count(compiled, text, timeout=self.regex_timeout)
        m = rx.search(compiled, text, timeout=self.regex_timeout)
        if not m:
            return 0
        if "MATCH" in compiled.groupindex:
            self.vars["MATCH"] = m.group("MATCH") or ""
        return 1

    def _subject(self, cond: Condition, r: Recipe) -> tuple[str, str | None]:
        """(text to search, its ASCII lower-case form when cached)."""
        if cond.kind == "var":
            name = cond.var
            if name in ("H", "B", "HB", "BH"):
                area = "HB" if len(name) == 2 else name
                return self.msg.text(area), self.msg.lower(area)
            return self.getvar(name) or "", None
        area = self._area(r)
        return self.msg.text(area), self.msg.lower(area)

    def test(self, cond: Condition, r: Recipe) -> bool:
        cond = self._resolve(cond)
        if cond.kind == "size":
            size = self.msg.size()
            res = size < int(cond.arg) if cond.op == "<" else size > int(cond.arg)
        elif cond.kind == "program":
            res = self.condition_program(cond, r) == 0
        else:
            text, low = self._subject(cond, r)
            res = self._regex_count(cond.arg, text, r, counting=False, lowered=low) > 0
        return res != cond.negate

    def weigh(self, cond: Condition, r: Recipe) -> float:
        cond = self._resolve(cond)
        w, x = cond.weight
        if cond.kind == "size":
            size = max(self.msg.size(), 1)
            ref = max(int(cond.arg), 1)
            ratio = ref / size if cond.op == "<" else size / ref
            return w * ratio**x
        if cond.kind == "program":
            code = self.condition_program(cond, r)
            ok = (code == 0) != cond.negate
            return w if ok else x
        text, low = self._subject(cond, r)
        n = self._regex_count(cond.arg, text, r, counting=not cond.negate, lowered=low)
        if cond.negate:
            return w if n == 0 else 0.0
        if n == 0:
            return 0.0
        if x == 1:
            return w * n
        total, term = 0.0, w
        for _ in range(n):
            total += term
            term *= x
            if abs(total) >= SUPREMUM or term == 0:
                break
        return total

    def condition_program(self, cond: Condition, r: Recipe) -> int:
        area = self._area(r)
        data = self.msg.part("H" in area, "B" in area, True)
        res = self._program(cond.arg, data, capture=False, line=cond.line)
        code = res.code if res.code is not None else 1
        self.special["?"] = str(code)
        if res.timed_out:
            self.log(f"line {cond.line}: program {cond.arg!r} timed out", "warning")
        return code

    # -- programs --------------------------------------------------------------------
    def env(self) -> dict:
        env = {k: v for k, v in self.vars.items() if k not in _NOT_EXPORTED and "\x00" not in v and "=" not in k}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["LASTFOLDER"] = self.special["-"]
        return env

    def timeout(self) -> float:
        try:
            return float(self.vars.get("TIMEOUT", "960"))
        except ValueError:
            return 960.0

    def _stderr(self):
        path = self._logpath()
        return self._open_log(path) if path else None

    def _program(self, command: str, data: bytes | None, capture: bool, line=None, limit: int | None = None):
        """Run ``command`` with the shell; refused (not run) when it redirects
        output to a file outside the user's directories."""
        shell = self.vars.get("SHELL") or "/bin/sh"
        argv = [shell, "-c", command, "sh", *self.args]
        from . import actions  # noqa: PLC0415 lazy

        for word in actions.redirections(command):
            target = self._redirection_target(word)
            try:
                if target is None:
                    raise confined.Refused("a file named by a command substitution cannot be checked")
                if target and target not in ("/dev/null", "/dev/stdout", "/dev/stderr"):
                    self.roots.check(self._abs(target))
            except (OSError, confined.Refused) as exc:
                self._refuse(line if line is not None else self.line, f"program {command!r} writes to {target}", exc)
                return actions.Result(None, error=f"writes to {target}: {_why(exc)}", refused=True)
        err = self._stderr()
        try:
            return actions.run(
                argv,
                data,
                self.env(),
                self.vars.get("MAILDIR"),
                self.timeout(),
                capture=capture,
                stderr=err,
                limit=limit,
            )
        finally:
            if err is not None:
                os.close(err)

    def _redirection_target(self, word) -> str | None:
        """The file name the shell will open, from our variables (which are its
        environment); None when it depends on a command substitution."""
        parts = []
        for kind, text in word:
            if kind != "sq" and ("`" in text or "$(" in text):
                return None
            parts.append(text if kind == "sq" else self.expand(text, dq=kind == "dq"))
        target = "".join(parts)
        if target.startswith("~") and target[1:2] in ("", "/"):
            target = (self.vars.get("HOME") or "") + target[1:]
        return target

    # -- actions ---------------------------------------------------------------------
    def _parts(self, r: Recipe) -> tuple[bool, bool]:
        h, b = "h" in r.flags, "b" in r.flags
        if not h and not b:
            return True, True
        return h, b

    def action(self, r: Recipe, frame: _Frame) -> bool:
        a = r.action
        kind = a.kind
        if kind == "block":
            if "c" in r.flags:
                self.note(a.line, "copy of the message runs the block (clone)")
                clone = self.clone()
                clone.frames.append(_Frame(a.items, frame.rcfile))
                clone.run()
                outcome = clone.finish()
                self.clones.append(outcome)
                self.report.extend(clone.report)
                if outcome.exit_code == sysexits.EX_TEMPFAIL:
                    self.tempfail = self.tempfail or outcome.reason
                return True
            self.frames.append(_Frame(a.items, frame.rcfile))
            return True
        if kind == "capture":
            res = self._program(
                a.text,
                _maybe_blank(self.msg.part(*self._parts(r), True), r),
                capture=True,
                line=a.line,
                limit=CAPTURE_LIMIT,
            )
            self.special["?"] = str(res.code if res.code is not None else 1)
            if res.overflow:
                self.log(
                    f"{self.special['_']}:{a.line}: {a.var}=| {a.text!r} {res.why()} (over {CAPTURE_LIMIT} bytes)",
                    "warning",
                )
            out = res.output.decode("utf-8", "surrogateescape")
            if out.endswith("\n"):
                out = out[:-1]
            self.vars[a.var] = out
            self.note(a.line, f"{a.var} set from program output")
            return res.ok or "w" not in r.flags.lower()
        lock = self._local_lock(r)
        try:
            if kind == "pipe" and "f" in r.flags:
                return self.filter(r)
            if kind == "pipe":
                ok = self.pipe(r)
            elif kind == "forward":
                ok = self.forward(r)
            else:
                ok = self.folder(r)
        finally:
            if lock is not None:
                lock.release()
        if ok and r.delivering:
            self.delivered = True
            self.done = True
        return ok

    def _local_lock(self, r: Recipe):
        if r.lockfile is None or self.dry_run:
            return None
        name = r.lockfile
        if name:
            name = self.expand(name)
        else:
            a = r.action
            if a.kind == "folder":
                return None  # mbox appends take the folder's own lock; Maildir needs none
            m = re.search(r">>\s*([^\s;|&]+)", a.text)
            if not m:
                self.log(f"line {r.line}: no lockfile name can be derived; none used", "warning")
                return None
            name = self.expand(m.group(1)) + self.vars.get("LOCKEXT", ".lock")
        return self._lock(self._abs(name), r.line, "lockfile")

    def _fail(self, r: Recipe, text: str, temporary: bool = True) -> bool:
        self.log(f"{self.special['_']}:{r.action.line}: {text}", "warning")
        self.note(r.action.line, f"failed: {text}")
        if r.delivering and temporary:
            self.tempfail = text
        return False

    def filter(self, r: Recipe) -> bool:
        h, b = self._parts(r)
        data = _maybe_blank(self.msg.part(h, b, True), r)
        if self.dry_run:
            self.note(r.action.line, f"filter through: {r.action.text}")
        limit = self.max_output or max(FILTER_LIMIT, 2 * len(data))
        res = self._program(r.action.text, data, capture=True, line=r.action.line, limit=limit)
        self.special["?"] = str(res.code if res.code is not None else 1)
        if res.refused:
            return False
        if not res.ok:
            why = res.why() + (f" (over {limit} bytes)" if res.overflow else "")
            return self._fail(r, f"filter {r.action.text!r} {why}; message left unchanged", temporary=False)
        if res.write_error and "i" not in r.flags:
            return self._fail(r, f"filter {r.action.text!r} did not read its input; message left unchanged", False)
        out = res.output
        if not out:
            return self._fail(r, f"filter {r.action.text!r} gave no output; message left unchanged", False)
        if h and b:
            self.msg = Message(out)
        elif h:
            from_ = None
            if out.startswith(b"From "):
                nl = out.find(b"\n")
                from_, out = out[: nl + 1], out[nl + 1 :]
            header = out if out.endswith(b"\n\n") else out + (b"\n" if out.endswith(b"\n") else b"\n\n")
            body = self.msg.body
            self.msg.from_ = from_ if from_ is not None else self.msg.from_
            self.msg.header, self.msg.body, self.msg._text = header, body, {}
        else:
            self.msg.body = out
            self.msg._text = {}
        return True

    def pipe(self, r: Recipe) -> bool:
        h, b = self._parts(r)
        data = _maybe_blank(self.msg.part(h, b, True), r)
        self.special["-"] = r.action.text
        if self.dry_run and (r.delivering or "c" in r.flags):
            self.note(r.action.line, f"{'copy' if 'c' in r.flags else 'deliver'} to program: {r.action.text}")
            self.folders.append("| " + r.action.text)
            return True
        if not r.action.text:
            return self._fail(r, "pipe to standard output is not supported", temporary=False)
        res = self._program(r.action.text, data, capture=False, line=r.action.line)
        self.special["?"] = str(res.code if res.code is not None else 1)
        if res.refused:
            return False  # logged; a permanent failure: the mail goes on to later recipes and DEFAULT
        if res.error:
            return self._fail(r, res.error)
        if res.timed_out:
            return self._fail(r, f"program {r.action.text!r} timed out after {self.timeout():.0f}s")
        if res.code != 0:
            if "w" in r.flags.lower():
                return self._fail(r, f"program {r.action.text!r} exited {res.code}")
            # procmail without w does not look at the exit status: the delivery is done
            self.note(r.action.line, f"program exited {res.code}; ignored without the w flag")
        if res.write_error and "i" not in r.flags:
            return self._fail(r, f"program {r.action.text!r} did not read the whole message")
        self.folders.append("| " + r.action.text)
        self._abstract(r.action.text, len(data))
        return True

    def forward(self, r: Recipe) -> bool:
        addresses = self.expand(r.action.text).split()
        for addr in addresses:
            if addr.startswith("-") or any(ord(c) < 33 for c in addr):
                return self._fail(r, f"refusing to forward to {addr!r}", temporary=False)
        if self.dry_run:
            self.note(r.action.line, f"{'copy' if 'c' in r.flags else 'forward'} to: {' '.join(addresses)}")
            self.folders.append("! " + " ".join(addresses))
            return True
        h, b = self._parts(r)
        data = _maybe_blank(self.msg.part(h, b, False), r)
        import shlex  # noqa: PLC0415 lazy

        from . import actions  # noqa: PLC0415 lazy

        argv = (
            shlex.split(self.vars.get("SENDMAIL") or "/usr/sbin/sendmail")
            + (self.vars.get("SENDMAILFLAGS") or "").split()
            + addresses
        )
        err = self._stderr()
        try:
            res = actions.run(argv, data, self.env(), self.vars.get("MAILDIR"), self.timeout(), stderr=err)
        finally:
            if err is not None:
                os.close(err)
        if not res.ok:
            why = res.error or ("timed out" if res.timed_out else f"exited {res.code}")
            return self._fail(r, f"forward to {' '.join(addresses)}: {argv[0]} {why}")
        self.folders.append("! " + " ".join(addresses))
        self.special["-"] = " ".join(addresses)
        self._abstract(" ".join(addresses), len(data))
        return True

    def folder(self, r: Recipe) -> bool:
        text = self.expand(r.action.text)
        dests = text.split()
        if len(dests) > 1 and not all(d.endswith("/") for d in dests):
            dests = [text]
        if not dests:
            return self._fail(r, "empty folder name", temporary=False)
        h, b = self._parts(r)
        ok = True
        for dest in dests:
            ok = self.deliver_to(dest, r.action.line, h, b, "r" in r.flags, "c" in r.flags, r) and ok
        return ok

    def deliver_to(self, dest: str, line, h: bool, b: bool, raw: bool, copy_: bool, r: Recipe | None) -> bool:
        verb = "copy" if copy_ else "deliver"
        if "\x00" in dest or "\n" in dest or ".." in Path(dest).parts:
            return self._fail_dest(r, line, f"refusing folder name {dest!r}", False)
        if dest == "/dev/null":
            self.note(line, f"{verb} to /dev/null (discard)")
            self.folders.append("/dev/null")
            self.special["-"] = "/dev/null"
            return True
        path = self._abs(dest)
        try:
            self.roots.check(path)  # early, for --dry-run and a clear message; the write is confined again
        except (OSError, confined.Refused) as exc:
            return self._fail_dest(r, line, f"refusing folder {dest!r}: {_why(exc)}", False)
        is_maildir = dest.endswith("/") or (os.path.isdir(path) and os.path.isdir(os.path.join(path, "new")))
        if dest.endswith("/."):
            return self._fail_dest(r, line, f"{dest}: MH folders are not supported", False)
        if not is_maildir and os.path.isdir(path):
            return self._fail_dest(r, line, f"{dest}: a directory that is not a Maildir", False)
        path = path.rstrip("/") or "/"
        plusplus = self.inbox is not None and Path(path).parent == self.inbox and Path(path).name.startswith(".")
        kind = "Maildir++ folder" if plusplus else ("maildir" if is_maildir else "mbox")
        if self.dry_run:
            self.note(line, f"{verb} to {kind} {path}{'/' if is_maildir else ''}")
            self.folders.append(path + ("/" if is_maildir else ""))
            return True
        if is_maildir:
            data = self.msg.part(h, b, False)
            try:
                if plusplus and not os.path.isdir(self.inbox / "new"):
                    self._maildir_write(str(self.inbox), None, False)  # a ++ folder lives inside an INBOX
                where = self._maildir_write(path, data, plusplus)
            except maildir.MaildirError as exc:
                return self._fail_dest(r, line, f"cannot deliver to {path}/: {exc}", exc.temporary)
            except confined.Refused as exc:
                return self._fail_dest(r, line, f"refusing folder {dest!r}: {exc}", False)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a link swapped in for tmp/ or new/
                    return self._fail_dest(r, line, f"refusing folder {dest!r}: a symbolic link in it", False)
                return self._fail_dest(r, line, f"cannot deliver to {path}/: {exc.strerror}", True)
        else:
            data = mbox.format_message(
                self.msg.from_ if h else None,
                self.msg.header if h else b"",
                self.msg.body if b else b"",
                self.sender,
                raw,
            )
            if not h:
                data = mbox.from_line(self.sender) + mbox.quote_from(self.msg.body)
                data = data if raw else _ensure_blank(data)
            try:
                with self.roots.parent(path) as inside:
                    mbox.append(inside, data, lockext=self.vars.get("LOCKEXT", ".lock"))
            except mbox.MboxError as exc:
                return self._fail_dest(r, line, f"cannot deliver to {path}: {exc}".replace(inside, path), exc.temporary)
            except confined.Refused as exc:
                return self._fail_dest(r, line, f"refusing folder {dest!r}: {exc}", False)
            except OSError as exc:
                return self._fail_dest(r, line, f"cannot deliver to {path}: {exc.strerror}", True)
            where = path
        self.folders.append(where)
        self.special["-"] = where
        self.note(line, f"{verb} to {kind} {where}")
        self._abstract(where, len(data))
        return True

    def _maildir_write(self, path: str, data: bytes | None, folder: bool) -> str:
        """Write ``data`` into the Maildir ``path`` (made when missing; None: only
        made) through descriptors from the confined walk; returns the file."""
        box_fd = self.roots.open_dir(path, create=True)
        try:
            tmp_fd, new_fd = maildir.open_subdirs(box_fd, folder)
        finally:
            os.close(box_fd)
        try:
            if data is None:
                return path
            written = maildir.deliver(
                Path(path), data, folder=folder, dirs=(Path(confined.fd_path(tmp_fd)), Path(confined.fd_path(new_fd)))
            )
        finally:
            os.close(tmp_fd)
            os.close(new_fd)
        # /proc/self/fd/N/... means nothing to a reader of the log
        return f"{path}/new/{written.name}" if str(written).startswith("/proc/") else str(written)

    def _fail_dest(self, r, line, text, temporary) -> bool:
        if r is not None:
            return self._fail(r, text, temporary)
        self.log(text, "warning")
        if temporary:
            self.tempfail = text
        return False

    # -- end -------------------------------------------------------------------------
    def clone(self) -> Engine:
        other = copy.copy(self)
        other.vars = dict(self.vars)
        other.special = dict(self.special)
        other.msg = copy.copy(self.msg)
        other.msg._text = dict(self.msg._text)
        other.frames = []
        for fr in self.frames:
            nf = _Frame(fr.items, fr.rcfile, copy.copy(fr.level))
            nf.i = fr.i
            other.frames.append(nf)
        other.folders = []
        other.report = []
        other.clones = []
        other.global_lock = None
        other.done = other.delivered = False
        other.tempfail = ""
        return other

    def finish(self) -> Outcome:
        """Fall back to $DEFAULT when nothing delivered; work out the exit code."""
        if self.global_lock is not None:
            self.global_lock.release()
            self.global_lock = None
        reason = ""
        if not self.delivered:
            if self.tempfail:
                reason = f"temporary failure: {self.tempfail}"
                self.note("", reason)
                return Outcome(False, sysexits.EX_TEMPFAIL, self.folders, reason, self.report)
            default = self.vars.get("DEFAULT")
            if not default:
                self.note("", "no recipe delivered and DEFAULT is not set: not delivered")
                return Outcome(False, sysexits.EX_CANTCREAT, self.folders, "no DEFAULT", self.report)
            self.note("", "no delivering recipe matched: DEFAULT")
            ok = self.deliver_to(default, "", True, True, False, False, None)
            if not ok and not self.tempfail and self.first_default and default != self.first_default:
                # the rules' DEFAULT was refused: the deliverer's own, never lost
                self.note("", f"DEFAULT {default} refused: {self.first_default}")
                ok = self.deliver_to(self.first_default, "", True, True, False, False, None)
            if not ok:
                reason = f"temporary failure: cannot deliver to DEFAULT {default}"
                return Outcome(False, sysexits.EX_TEMPFAIL, self.folders, reason, self.report)
            self.delivered = True
        code = sysexits.EX_OK
        exitcode = self.vars.get("EXITCODE", "").strip()
        if exitcode.isdigit():
            code = int(exitcode)
        return Outcome(True, code, self.folders, reason, self.report)


def _maybe_blank(data: bytes, r: Recipe) -> bytes:
    return data if "r" in r.flags else _ensure_blank(data)


def run_rules(
    data: bytes,
    rule_files,
    variables: dict,
    *,
    args=(),
    inbox=None,
    sender: str = "",
    dry_run: bool = False,
    qid: str | None = None,
    confine=None,
    max_output: int | None = None,
) -> Outcome:
    """Run each existing rules file in turn (site file first) and deliver; see Engine.

    A file with syntax errors is not run: its problems are logged with line
    numbers and the message goes to $DEFAULT (nothing is lost).  A rules
    file inside the user's directories is read through the confined walk
    (a ``.procmailrc`` linked to a file elsewhere is refused); the site's
    file is the admin's.
    """
    eng = Engine(
        data,
        variables,
        args=args,
        inbox=inbox,
        sender=sender,
        dry_run=dry_run,
        qid=qid,
        confine=confine,
        max_output=max_output,
    )
    for path in rule_files:
        try:
            rules = _parsed(path, eng.roots.opener() if eng.roots.contains(str(path)) else None)
        except FileNotFoundError:
            continue
        except confined.Refused as exc:
            eng.log(f"{path}: refused: {exc}; delivering to DEFAULT", "error")
            eng.note("", f"{path}: refused: {exc}")
            break
        except OSError as exc:
            eng.log(f"{path}: {exc.strerror}; delivering to DEFAULT", "error")
            eng.note("", f"{path}: cannot read: {exc.strerror}")
            break
        if rules.problems:
            for line, problem in rules.problems:
                eng.log(f"{path}:{line}: {problem}", "error")
                eng.note(f"{path}:{line}", f"syntax error: {problem}")
            eng.log(f"{path}: not used because of syntax errors; delivering to DEFAULT", "error")
            break
        eng.run_file(rules)
        if eng.done:
            break
    return eng.finish()


_parsed_cache: dict[str, tuple[tuple, RuleFile]] = {}


def _parsed(path, opener=None) -> RuleFile:
    """parse_file, remembered while the file is unchanged (the queue runner delivers many messages)."""
    key = str(path)
    st = os.stat(key)
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
    hit = _parsed_cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    rules = parse_file(key, opener=opener)
    if len(_parsed_cache) > 256:
        _parsed_cache.clear()
    _parsed_cache[key] = (stamp, rules)
    return rules
