"""Parse a procmail rules file (procmailrc(5)) into recipe objects with line numbers.

The result is a ``RuleFile``: a list of items (``Assign``, ``Recipe``) and a
list of problems ``(line, message)``.  A file with problems is not run at
all: the message goes to ``$DEFAULT`` (pymda-rules(5), "Differences").
Regular expressions that need no variable expansion are compiled here, so
``pymail rules check`` reports a bad or catastrophic regex with its line.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from . import regex as rx

MAX_NESTING = 64  # { } blocks inside blocks (qmail rule: every structure has a limit)

FLAGS = "HBDAaEecwWirfhb"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WEIGHT = re.compile(r"(-?(?:\d+(?:\.\d*)?|\.\d+))\s*\^\s*(-?(?:\d+(?:\.\d*)?|\.\d+))(?:\s+|$)")
_VARTEST = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\?\?\s*(.*)\Z", re.S)
_CAPTURE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=\s*\|(.*)\Z", re.S)


@dataclass
class Assign:
    name: str
    value: list | None  # segments [(kind, text)] kind in plain/dq/sq/bq; None = unset
    line: int


@dataclass
class Condition:
    kind: str  # regex, size, program, var, expand
    arg: str  # regex / command / number / text to expand
    line: int
    negate: bool = False
    weight: tuple[float, float] | None = None
    op: str = ""  # '<' or '>' for size
    var: str = ""  # for var tests (B, H, HB, BH or a variable name)
    text: str = ""  # as written, for logs and --dry-run


@dataclass
class Action:
    kind: str  # folder, pipe, forward, block, capture
    text: str
    line: int
    var: str = ""
    items: list = field(default_factory=list)


@dataclass
class Recipe:
    flags: str
    lockfile: str | None  # None: no local lock; "": derive from the destination
    conditions: list
    action: Action
    line: int

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def delivering(self) -> bool:
        a = self.action
        if "c" in self.flags or a.kind in ("block", "capture"):
            return False
        return not (a.kind == "pipe" and "f" in self.flags)


@dataclass
class RuleFile:
    path: str
    items: list
    problems: list


def parse_condition(
    text: str, line: int, case_sensitive: bool = False, *, allow_weight: bool = True, compile_regex: bool = False
) -> Condition:
    """Parse what follows ``*`` on a condition line; raise ValueError with a message."""
    original = text
    text = text.strip()
    weight = None
    if allow_weight:
        m = _WEIGHT.match(text)
        if m:
            weight = (float(m.group(1)), float(m.group(2)))
            text = text[m.end() :].strip()
    negate = False
    while True:
        if text.startswith("!"):
            negate = not negate
            text = text[1:].lstrip()
            continue
        break
    cond = Condition("regex", text, line, negate, weight, text=original.strip())
    if text.startswith("$"):
        cond.kind, cond.arg = "expand", text[1:].lstrip()
    elif text.startswith("?"):
        cond.kind, cond.arg = "program", text[1:].strip()
        if not cond.arg:
            raise ValueError("'?' condition without a program")
    elif text[:1] in ("<", ">"):
        cond.kind, cond.op = "size", text[0]
        number = text[1:].strip()
        if not number.isdigit():
            raise ValueError(f"size condition needs a number of bytes, not {number!r}")
        cond.arg = number
    else:
        m = _VARTEST.match(text)
        if m:
            cond.kind, cond.var, cond.arg = "var", m.group(1), m.group(2).strip()
        elif text.startswith("\\") and text[1:2] in ("!", "$", "?", "<", ">", "\\", " ", "\t"):
            cond.arg = text[1:]
        if cond.kind in ("regex", "var"):
            try:
                if compile_regex:
                    rx.compile_pattern(cond.arg, case_sensitive)
                else:
                    rx.translate(cond.arg)  # cheap: bad syntax and catastrophic patterns
            except rx.RegexError as exc:
                raise ValueError(f"bad regular expression {cond.arg!r}: {exc}") from None
    return cond


class _Parser:
    def __init__(self, text: str, path: str, compile_regex: bool = False) -> None:
        self.compile_regex = compile_regex
        self.s = text
        self.n = len(text)
        self.pos = 0
        self.path = path
        self.problems: list[tuple[int, str]] = []
        self._nl = [i for i, c in enumerate(text) if c == "\n"]

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_left(self._nl, self.pos if pos is None else pos) + 1

    def error(self, message: str, pos: int | None = None) -> None:
        self.problems.append((self.line(pos), message))

    # -- low level --
    def skip_space(self, newlines: bool = True, comments: bool = True) -> None:
        s, n = self.s, self.n
        while self.pos < n:
            c = s[self.pos]
            if c in " \t\r" or (c == "\n" and newlines):
                self.pos += 1
            elif c == "\\" and s.startswith("\\\n", self.pos):
                self.pos += 2
            elif c == "#" and comments:
                end = s.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                break

    def rest_of_line(self) -> str:
        """To the end of the logical line (backslash-newline continues it), raw."""
        s, n = self.s, self.n
        start = self.pos
        while self.pos < n:
            end = s.find("\n", self.pos)
            if end < 0:
                self.pos = n
                break
            backslashes = 0
            k = end - 1
            while k >= start and s[k] == "\\":
                backslashes += 1
                k -= 1
            if backslashes % 2:
                self.pos = end + 1
                continue
            self.pos = end + 1
            return s[start:end]
        return s[start : self.pos]

    @staticmethod
    def joined(raw: str) -> str:
        return re.sub(r"\\\n[ \t]*", "", raw).rstrip("\r")

    @staticmethod
    def strip_comment(text: str) -> str:
        m = re.search(r"(^|[ \t])#", text)
        return text[: m.start()] if m else text

    # -- statements --
    def parse(self) -> list:
        items = self.statements(0)
        return items

    def statements(self, depth: int, opened: int = 0) -> list:
        items: list = []
        while True:
            self.skip_space()
            if self.pos >= self.n:
                if depth:
                    self.problems.append((opened or self.line(), "block '{' is never closed with '}'"))
                return items
            c = self.s[self.pos]
            if c == "}":
                self.pos += 1
                if depth:
                    return items
                self.error("'}' without a block to close")
                continue
            if c == ":":
                recipe = self.recipe(depth)
                if recipe is not None:
                    items.append(recipe)
                continue
            m = _NAME.match(self.s, self.pos)
            if m:
                after = self.pos + len(m.group(0))
                k = after
                while k < self.n and self.s[k] in " \t":
                    k += 1
                if k < self.n and self.s[k] == "=":
                    line = self.line()
                    self.pos = k + 1
                    value = self.word()
                    items.append(Assign(m.group(0), value, line))
                    self.skip_space(newlines=False)
                    continue
                if k >= self.n or self.s[k] in "\n#":
                    items.append(Assign(m.group(0), None, self.line()))
                    self.pos = k
                    continue
            line = self.line()
            text = self.rest_of_line().strip()
            self.problems.append(
                (line, f"unexpected text {text[:40]!r} (expected a recipe ':0', an assignment or '}}')")
            )

    def word(self) -> list:
        """An assignment value: sh-like word of plain, "double", 'single' and `back` quoted parts."""
        s, n = self.s, self.n
        segs: list[tuple[str, str]] = []
        plain: list[str] = []
        start_line = self.line()

        def flush():
            if plain:
                segs.append(("plain", "".join(plain)))
                plain.clear()

        while self.pos < n:
            c = s[self.pos]
            if c in " \t\r\n":
                break
            if c == "\\":
                if s.startswith("\\\n", self.pos):
                    self.pos += 2
                    continue
                plain.append(s[self.pos : self.pos + 2])
                self.pos += 2
                continue
            if c in "\"'`":
                flush()
                end = self.pos + 1
                buf = []
                while end < n and s[end] != c:
                    if s[end] == "\\" and c != "'" and end + 1 < n:
                        if s[end + 1] == "\n":
                            end += 2
                            continue
                        if s[end + 1] in ('"', "\\", "`") or (c == '"' and s[end + 1] == "$"):
                            buf.append(s[end : end + 2] if s[end + 1] == "$" else s[end + 1])
                            end += 2
                            continue
                    buf.append(s[end])
                    end += 1
                if end >= n:
                    self.problems.append((start_line, f"unterminated {c} quote"))
                    self.pos = n
                    return segs
                segs.append(({'"': "dq", "'": "sq", "`": "bq"}[c], "".join(buf)))
                self.pos = end + 1
                continue
            plain.append(c)
            self.pos += 1
        flush()
        return segs

    def recipe(self, depth: int) -> Recipe | None:
        line = self.line()
        header = self.strip_comment(self.joined(self.rest_of_line())).strip()
        m = re.fullmatch(r":(\d*)\s*([^:]*?)\s*(?::\s*(.*?))?\s*", header)
        if not m:
            self.problems.append((line, f"bad recipe line {header!r}"))
            return None
        if m.group(1) not in ("", "0"):
            self.problems.append(
                (line, f"old-style ':{m.group(1)}' recipe line is not supported; use ':0' and '*' conditions")
            )
        flags = re.sub(r"\s+", "", m.group(2))
        bad = [f for f in flags if f not in FLAGS]
        if bad:
            self.problems.append((line, f"unknown flag(s) {''.join(bad)!r} on recipe"))
        lockfile = None if m.group(3) is None else m.group(3).strip()
        conditions = []
        while True:
            self.skip_space()
            if self.pos >= self.n:
                self.problems.append((line, "recipe has no action line"))
                return None
            if self.s[self.pos] != "*":
                break
            cline = self.line()
            self.pos += 1
            text = self.joined(self.rest_of_line())
            try:
                conditions.append(parse_condition(text, cline, "D" in flags, compile_regex=self.compile_regex))
            except ValueError as exc:
                self.problems.append((cline, str(exc)))
        aline = self.line()
        c = self.s[self.pos]
        if c == "{":
            nxt = self.s[self.pos + 1 : self.pos + 2]
            if nxt and nxt not in " \t\r\n":
                self.problems.append((aline, "'{' must be followed by white space"))
            self.pos += 1
            if depth + 1 > MAX_NESTING:
                # A syntax error already sends the mail to DEFAULT; stop here
                # rather than recurse until the interpreter's stack runs out.
                self.problems.append((aline, f"blocks nested more than {MAX_NESTING} deep"))
                self.pos = self.n
                return None
            items = self.statements(depth + 1, aline)
            action = Action("block", "{", aline, items=items)
        else:
            raw = self.rest_of_line()
            if c == "|":
                action = Action("pipe", raw[1:].strip(), aline)
            elif c == "!":
                text = self.strip_comment(self.joined(raw[1:])).strip()
                if not text:
                    self.problems.append((aline, "'!' action without an address"))
                action = Action("forward", text, aline)
            else:
                cm = _CAPTURE.match(raw)
                if cm:
                    action = Action("capture", cm.group(2).strip(), aline, var=cm.group(1))
                else:
                    text = self.strip_comment(self.joined(raw)).strip()
                    if not text:
                        self.problems.append((aline, "empty action line"))
                    action = Action("folder", text, aline)
        if action.kind == "pipe" and not action.text and "f" in flags:
            self.problems.append((aline, "filter recipe without a program"))
        return Recipe(flags, lockfile, conditions, action, line)


def parse(text: str, path: str = "rules", *, compile_regex: bool = False) -> RuleFile:
    """Parse rules text.  ``compile_regex`` also compiles every fixed regex
    (``pymail rules check``); delivery compiles them when first used."""
    p = _Parser(text, path, compile_regex)
    items = p.parse()
    p.problems.sort()
    return RuleFile(path, items, p.problems)


def parse_file(path, *, compile_regex: bool = False, opener=None) -> RuleFile:
    """``opener``: as for open(); the engine passes a confined one (pymda.confined)."""
    with open(path, "rb", opener=opener) as fh:
        data = fh.read(1 << 20)
    return parse(data.decode("utf-8", "surrogateescape"), str(path), compile_regex=compile_regex)


def walk(items):
    """Every recipe and assignment, nested blocks included."""
    for item in items:
        yield item
        if isinstance(item, Recipe) and item.action.kind == "block":
            yield from walk(item.action.items)
