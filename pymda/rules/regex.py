"""procmail's egrep dialect -> Python ``re``.

procmail's regexes are POSIX egrep with a few extensions (procmailrc(5),
"Extended regular expressions"): ``^^`` anchors at the very start/end of
the search area, ``\\<``/``\\>`` match the (non-word) character before or
after a word, ``\\/`` splits the expression and what the right side matches
becomes ``$MATCH``, and the macros ``^TO_``, ``^TO``, ``^FROM_DAEMON``,
``^FROM_MAILER``.  ``{`` is not an operator.  Matching is case-insensitive
unless the recipe has the ``D`` flag.

Python's ``re`` backtracks, so a pattern such as ``(a+)+$`` can take
exponential time; procmail's own matcher cannot.  ``translate`` refuses
nested unbounded quantifiers (``(x+)*``, ``(.*y)+``) as errors, and
``search`` bounds the time of each search: with SIGALRM in the main thread
(a pymda-deliver process), and in worker threads (the queue runner
delivering in process) with the ``regex`` module's timeout when that
module is installed.

``required_literals`` gives the plain text every match must contain
(lower case); the engine looks for it with ``in`` before compiling or
running a pattern, so most non-matching conditions cost neither.
"""

from __future__ import annotations

import re
import signal
import threading

TO_ = r"(^((Original-)?(Resent-)?(To|Cc|Bcc)|(X-Envelope|Apparently(-Resent)?)-To):(.*[^-a-zA-Z0-9_.])?)"
TO = r"(^((Original-)?(Resent-)?(To|Cc|Bcc)|(X-Envelope|Apparently(-Resent)?)-To):(.*[^a-zA-Z])?)"
FROM_DAEMON = (
    r"(^(Mailing-List:|Precedence:.*(junk|bulk|list)|To: Multiple recipients of |"
    r"(((Resent-)?(From|Sender)|X-Envelope-From):|>?From )([^>]*[^(.%@a-z0-9])?"
    r"(Post(ma?(st(e?r)?|n)|office)|(send)?Mail(er)?|daemon|m(mdf|ajordomo)|n?uucp|LIST(SERV|proc)|"
    r"NETSERV|o(wner|ps)|r(e(quest|sponse)|oot)|b(ounce|bs\.smtp)|echo|mirror|s(erv(ices?|er)|"
    r"mtp(error)?|ystem)|A(dmin(istrator)?|MMGR|utoanswer))(([^).!:a-z0-9][-_a-z0-9]*)?[%@>\t ][^<)]*"
    r"(\(.*\).*)?)?$([^>]|$)))"
)
FROM_MAILER = (
    r"(^(((Resent-)?(From|Sender)|X-Envelope-From):|>?From )([^>]*[^(.%@a-z0-9])?"
    r"(Post(ma(st(er)?|n)|office)|(send)?Mail(er)?|daemon|mmdf|n?uucp|ops|r(esponse|oot)|"
    r"(bbs\.)?smtp(error)?|s(erv(ices?|er)|ystem)|A(dmin(istrator)?|MMGR))(([^).!:a-z0-9][-_a-z0-9]*)?"
    r"[%@>\t ][^<)]*(\(.*\).*)?)?$([^>]|$))"
)
MACROS = (("^TO_", TO_), ("^FROM_DAEMON", FROM_DAEMON), ("^FROM_MAILER", FROM_MAILER), ("^TO", TO))

SEARCH_TIMEOUT = 5.0  # seconds one search may take (main thread only; see search())
MAX_PATTERN = 8192

_WORDLESS = "[^a-zA-Z0-9_]"


class RegexError(ValueError):
    pass


class RegexTimeout(Exception):
    pass


def expand_macros(pattern: str) -> str:
    for name, value in MACROS:
        if name in pattern:
            pattern = pattern.replace(name, value)
    return pattern


def translate(pattern: str) -> tuple[str, bool]:
    """Return (Python pattern, has ``\\/``).  Raise RegexError for patterns we refuse."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError("regular expression too long")
    original = pattern
    pattern = expand_macros(pattern)
    out: list[str] = []
    # literal text every match must contain (top level, not optional): a cheap
    # test that spares compiling and running most patterns that cannot match
    runs: list[str] = []
    run: list[str] = []
    top_alternation = False

    def end_run():
        if run:
            runs.append("".join(run))
            run.clear()

    # per open group: [index in out of its "(", contains an unbounded quantifier]
    stack: list[list] = []
    split = False
    lazy = False  # left of \/ : match as little as possible, as procmail does
    can_repeat = False  # is there an atom to repeat?
    last_atom_unbounded = False  # the atom just closed was a group holding * or +
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1] if i + 1 < n else ""
            i += 2
            if nxt == "/":
                if split:
                    out.append(re.escape("/"))
                    can_repeat, last_atom_unbounded = True, False
                    continue
                if stack:
                    raise RegexError("\\/ inside parentheses")
                split = True
                lazy = False
                end_run()
                out.append("(?P<MATCH>")
                can_repeat, last_atom_unbounded = False, False
                continue
            if nxt == "<":
                out.append(rf"(?:\A|{_WORDLESS})")
                end_run()
            elif nxt == ">":
                out.append(rf"(?:{_WORDLESS}|\Z)")
                end_run()
            elif nxt == "":
                out.append(r"\\")
                if not stack:
                    run.append("\\")
            else:
                out.append(re.escape(nxt))
                if not stack:
                    run.append(nxt)
            can_repeat, last_atom_unbounded = True, False
            continue
        if c in "*+?":
            i += 1
            if not can_repeat:
                out.append(re.escape(c))  # egrep: a leading '*' is literal
                can_repeat, last_atom_unbounded = True, False
                end_run()
                continue
            if not stack and run and out and out[-1] != ")":
                run.pop()  # the repeated character is not required (or not once only)
            end_run()
            if out and out[-1] in ("*", "+", "?", "*?", "+?", "??"):
                continue  # 'a**' is 'a*'
            if c in "*+":
                if last_atom_unbounded:
                    raise RegexError("nested repetition such as (x+)* can take exponential time; rewrite it")
                for group in stack:
                    group[1] = True
            out.append(c + ("?" if lazy else ""))
            last_atom_unbounded = False
            continue
        i += 1
        if c not in "{}#&~ \t\n-" and not (c.isalnum() or c in "!\"%',/:;<=>@_`"):
            end_run()
        if c == "|" and not stack:
            top_alternation = True
        if c == "^":
            if i == 1 or (i == 2 and False):
                pass
            if pattern.startswith("^", i) and (i == 1 or i + 1 == n):
                i += 1
                out.append(r"\A" if i == 2 else r"\Z")
            else:
                out.append("^")
            can_repeat, last_atom_unbounded = False, False
        elif c == "$":
            out.append("$")
            can_repeat, last_atom_unbounded = False, False
        elif c == "(":
            stack.append([len(out), False])
            out.append("(?:")
            can_repeat, last_atom_unbounded = False, False
        elif c == ")":
            if not stack:
                raise RegexError("unmatched )")
            _, unbounded = stack.pop()
            if unbounded:
                for group in stack:
                    group[1] = True
            out.append(")")
            can_repeat, last_atom_unbounded = True, unbounded
        elif c == "|":
            out.append("|")
            can_repeat, last_atom_unbounded = False, False
        elif c == "[":
            j = i
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items = []
            first = True
            while j < n and (pattern[j] != "]" or first):
                ch = pattern[j]
                if ch == "\\" and j + 1 < n:
                    items.append(re.escape(pattern[j + 1]))
                    j += 2
                elif ch == "-" and not first and j + 1 < n and pattern[j + 1] != "]":
                    items.append("-")
                    j += 1
                else:
                    items.append(re.escape(ch) if ch in "\\[]^&~|-" else ch)
                    j += 1
                first = False
            if j >= n:
                raise RegexError("unmatched [")
            i = j + 1
            if negate:
                items.append(r"\n")  # procmail: [^...] never matches a newline
            out.append("[" + ("^" if negate else "") + "".join(items) + "]")
            can_repeat, last_atom_unbounded = True, False
        elif c in "{}":
            out.append("\\" + c)
            can_repeat, last_atom_unbounded = True, False
            if not stack:
                run.append(c)
        elif c == ".":
            out.append(".")
            can_repeat, last_atom_unbounded = True, False
        else:
            out.append(re.escape(c) if c in "#&~ \t\n-" else c)
            can_repeat, last_atom_unbounded = True, False
            if not stack:
                run.append(c)
    if stack:
        raise RegexError("unmatched (")
    end_run()
    _literals[original] = () if top_alternation else tuple({r.translate(_ASCII_LOWER) for r in runs if r})
    if split:
        out.append(")")
        # left of \/ as short as possible
        idx = out.index("(?P<MATCH>")
        out[:idx] = [t + "?" if t in ("*", "+", "?") else t for t in out[:idx]]
    return "".join(out), split


_cache: dict[tuple[str, bool], re.Pattern] = {}
_literals: dict[str, str] = {}
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def required_literals(pattern: str) -> tuple:
    """Lower-case texts every match of ``pattern`` must contain (() when none is known).

    A necessary condition only: when they are all present, the real search decides.
    """
    lits = _literals.get(pattern)
    if lits is None:
        if len(_literals) > 4096:
            _literals.clear()
        translate(pattern)
        lits = _literals.get(pattern, ())
    return lits


def compile_pattern(pattern: str, case_sensitive: bool = False) -> re.Pattern:
    key = (pattern, case_sensitive)
    compiled = _cache.get(key)
    if compiled is None:
        py, _ = translate(pattern)
        flags = re.MULTILINE | re.ASCII | (0 if case_sensitive else re.IGNORECASE)
        try:
            compiled = re.compile(py, flags)
        except re.error as exc:
            raise RegexError(str(exc)) from None
        if len(_cache) > 512:
            _cache.clear()
        _cache[key] = compiled
    return compiled


class _Alarm:
    """Bound the time of a search with SIGALRM when we are the main thread.

    CPython's regex engine checks for signals while it backtracks, so the
    alarm interrupts a runaway search.  In worker threads (the queue
    runner's pool) signals cannot be used and the static guard in
    ``translate`` is what protects us.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = False

    def __enter__(self):
        if self.seconds > 0 and threading.current_thread() is threading.main_thread():
            try:
                self.old = signal.signal(signal.SIGALRM, _raise_timeout)
                signal.setitimer(signal.ITIMER_REAL, self.seconds)
                self.armed = True
            except (ValueError, OSError):
                self.armed = False
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _raise_timeout(signum, frame):
    raise RegexTimeout()


_threaded: dict[tuple, object] = {}


def _for_thread(compiled: re.Pattern):
    """In a worker thread: the same pattern compiled by the third-party ``regex``
    module, whose searches take a timeout, when it is installed (else None)."""
    key = (compiled.pattern, compiled.flags)
    if key in _threaded:
        return _threaded[key]
    try:
        import regex as third_party  # noqa: PLC0415 optional
    except ImportError:
        third_party = None
    value = None
    if third_party is not None:
        flags = (
            third_party.MULTILINE
            | third_party.ASCII
            | (third_party.IGNORECASE if compiled.flags & re.IGNORECASE else 0)
        )
        try:
            value = third_party.compile(compiled.pattern, flags | third_party.V0)
        except Exception:
            value = None
    if len(_threaded) > 512:
        _threaded.clear()
    _threaded[key] = value
    return value


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def search(compiled: re.Pattern, text: str, timeout: float = SEARCH_TIMEOUT):
    if timeout > 0 and not _in_main_thread():
        other = _for_thread(compiled)
        if other is not None:
            try:
                return other.search(text, timeout=timeout)
            except TimeoutError:
                raise RegexTimeout() from None
    with _Alarm(timeout):
        return compiled.search(text)


def count(compiled: re.Pattern, text: str, limit: int = 100000, timeout: float = SEARCH_TIMEOUT) -> int:
    n = 0
    if timeout > 0 and not _in_main_thread():
        other = _for_thread(compiled)
        if other is not None:
            try:
                for _ in other.finditer(text, timeout=timeout):
                    n += 1
                    if n >= limit:
                        break
                return n
            except TimeoutError:
                raise RegexTimeout() from None
    with _Alarm(timeout):
        for _ in compiled.finditer(text):
            n += 1
            if n >= limit:
                break
    return n


def escape(value: str) -> str:
    """``$\\VAR``: every regex-magic character disarmed."""
    return "".join("\\" + c if c in "\\^$.[]|()*+?" else c for c in value)
