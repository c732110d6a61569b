#!/usr/bin/env python3
"""Generate the KEYS part of man/pymail.toml.5 from the PARAMS table.

Every configuration parameter is declared once, in ``pymta/lib/config.py``
(name, type, default, doc).  This script turns that table into roff and puts
it between the two marker lines of ``man/pymail.toml.5``::

    .\\" BEGIN GENERATED KEYS ...
    .\\" END GENERATED KEYS

so the page can never disagree with the code.  The text outside the markers
is written by hand.

Usage::

    python3 man/gen_config_page.py            # rewrite the page in place
    python3 man/gen_config_page.py --check    # exit 1 (and show a diff) if the page is stale
    python3 man/gen_config_page.py --stdout   # print only the generated part

A test can call ``generated_keys()`` and compare it with ``page_keys()``.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE / "pymail.toml.5"
BEGIN = '.\\" BEGIN GENERATED KEYS (man/gen_config_page.py writes this part; do not edit it by hand)'
END = '.\\" END GENERATED KEYS'

sys.path.insert(0, str(HERE.parent))
from pymta.lib.config import PARAMS  # noqa: E402

# One sentence for the sections we know; a new section simply has none.
SECTION_INTRO = {
    "": "Keys at the top of the file, before any table.",
    "paths": "Where things are.  A relative path is taken from \\fBroot\\fR.",
    "listen": (
        "Listeners started by \\fBpymail run\\fR only.  "
        "Under systemd or inetd the socket units or \\fIinetd.conf\\fR lines decide the addresses "
        "and these keys are not read."
    ),
    "run": (
        "How \\fBpymail run\\fR restarts a program that died; systemd's \\fBRestart=\\fR does this job under systemd."
    ),
    "auth": "Passwords: who may send them, and how they are checked and made.",
    "smtpd": "Limits and policy of \\fBpymta\\-smtpd\\fR(8).",
    "qrunner": "The queue runner, \\fBpymta\\-qrunner\\fR(8).",
    "deliver": "Local delivery into Maildirs.",
    "relay": "Delivery of mail for other domains by SMTP.",
    "bounce": "Delivery status notifications.",
    "dkim": "DKIM signatures on outbound mail.",
    "checks": (
        "SPF, DKIM and DMARC checks of inbound mail on port 25 and the Authentication\\-Results field "
        "(\\fBpymta\\-smtpd\\fR(8), \\(lqPort 25: SPF, DKIM, DMARC and Authentication\\-Results\\(rq)."
    ),
    "milter": (
        "Milters (the Sendmail/Postfix milter protocol) that mail passes through before it is queued "
        "(\\fBpymta\\-smtpd\\fR(8), \\(lqMilters\\(rq)."
    ),
    "sendmail": "The sendmail command.",
    "pop3d": "The POP3 server.",
    "imapd": "The IMAP server.",
    "limits": (
        "What the per-client connection limits of the listening daemons leave out, and their time unit.  "
        "Under inetd or an \\fBAccept=yes\\fR socket unit these limits are the starter's job: "
        "see \\fBpymail\\-security\\fR(7)."
    ),
}

# type -> (name shown with each key, what a value must be)
TYPES = {
    "str": ("string", "A TOML string without NUL."),
    "path": ("path", "A TOML string without NUL, taken from \\fBroot\\fR when relative."),
    "int": ("integer", "A TOML integer, 0 or more."),
    "float": ("number", "A TOML integer or float, 0 or more; times are in seconds."),
    "bool": ("boolean", "\\fBtrue\\fR or \\fBfalse\\fR."),
    "list": ("list of strings", "A TOML array of strings."),
    "table": ("table of strings", "A TOML table whose values are strings; its keys are compared in lower case."),
    "listen": (
        "HOST:PORT",
        "A string \\fIHOST\\fR:\\fIPORT\\fR, [\\fIIPv6\\fR]:\\fIPORT\\fR, or :\\fIPORT\\fR "
        "(all IPv4 addresses, 0.0.0.0); an empty string disables the listener.",
    ),
}


def type_name(kind: str) -> str:
    if kind.startswith("choice:"):
        return "one of " + ", ".join(kind[7:].split("|"))
    return TYPES[kind][0] if kind in TYPES else kind


def toml_value(value) -> str:
    """The default as it would be written in pymail.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def _escape(text: str) -> str:
    """Plain text -> roff text (no macro may start a line, backslashes survive)."""
    return text.replace("\\", "\\e")


def _code(text: str) -> str:
    return "\\fB" + _escape(text).replace("-", "\\-") + "\\fR"


_MARKUP = re.compile(r"`([^`]+)`|\b([a-z][a-z0-9.]*(?:-[a-z0-9]+)*)\(([1-8])\)")


def roff_text(text: str) -> str:
    """A doc string as roff: `code` and name(N) references in bold."""
    out, pos = [], 0
    for m in _MARKUP.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        if m.group(1) is not None:
            out.append(_code(m.group(1)))
        else:
            out.append(_code(m.group(2)) + f"({m.group(3)})")
        pos = m.end()
    out.append(_escape(text[pos:]))
    line = "".join(out)
    return "\\&" + line if line[:1] in (".", "'") else line


def sections() -> list[tuple[str, list]]:
    """[(section, params)] in the order of PARAMS; "" is the top level."""
    order: dict[str, list] = {}
    for param in PARAMS:
        section = param.name.split(".", 1)[0] if "." in param.name else ""
        order.setdefault(section, []).append(param)
    return list(order.items())


def generated_keys() -> str:
    """The roff between the markers (without the marker lines)."""
    lines = [".SH TYPES"]
    used = {"choice" if p.type.startswith("choice:") else p.type for p in PARAMS}
    kinds = [k for k in TYPES if k in used] + ["choice"] * ("choice" in used)
    kinds += sorted(used - set(kinds))
    for kind in kinds:
        lines.append(".TP")
        if kind == "choice":
            lines += ["\\fBone of\\fR ...", "One of the words listed with the key."]
        elif kind in TYPES:
            lines += [f"\\fB{TYPES[kind][0]}\\fR", TYPES[kind][1]]
        else:  # a new type: at least name it
            lines += [f"\\fB{_escape(kind)}\\fR", "See \\fIpymta/lib/config.py\\fR."]
    lines += [
        ".SH KEYS",
        "Every key, by table, as declared in \\fIpymta/lib/config.py\\fR.",
        "Each entry shows the key as it is written inside its table, its type and its default.",
    ]
    for section, params in sections():
        lines.append(f'.SS "{"Top level" if not section else "[" + section + "]"}"')
        intro = SECTION_INTRO.get(section)
        if intro:
            lines.append(intro)
        for param in params:
            key = param.name.split(".", 1)[1] if section else param.name
            lines.append(".TP")
            default = _escape(toml_value(param.default)).replace("-", "\\-")
            lines.append(f"\\fB{_escape(key)}\\fR \\(em {_escape(type_name(param.type))}; default \\fB{default}\\fR")
            lines.append(roff_text(param.doc))
    return "\n".join(lines) + "\n"


def page_keys(page: str) -> str | None:
    """The generated part currently in ``page``, or None without markers."""
    try:
        start = page.index(BEGIN + "\n") + len(BEGIN) + 1
        end = page.index(END + "\n", start)
    except ValueError:
        return None
    return page[start:end]


def render(page: str) -> str:
    if page_keys(page) is None:
        raise SystemExit(f"{PAGE}: the marker lines are missing:\n{BEGIN}\n{END}")
    start = page.index(BEGIN + "\n") + len(BEGIN) + 1
    end = page.index(END + "\n", start)
    return page[:start] + generated_keys() + page[end:]


def main(argv: list[str]) -> int:
    if "--stdout" in argv:
        sys.stdout.write(generated_keys())
        return 0
    page = PAGE.read_text(encoding="utf-8")
    new = render(page)
    if "--check" in argv:
        if new == page:
            return 0
        sys.stdout.writelines(difflib.unified_diff(page.splitlines(True), new.splitlines(True), str(PAGE), "generated"))
        print(f"{PAGE} is stale: run python3 man/gen_config_page.py", file=sys.stderr)
        return 1
    if new != page:
        PAGE.write_text(new, encoding="utf-8")
        print(f"updated {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
