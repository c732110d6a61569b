"""The documentation stays true: config page generated from the table, a man
page for every program, and every option of --help named in that page."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_config_page_matches_the_parameter_table():
    check = subprocess.run(
        [sys.executable, str(REPO / "man" / "gen_config_page.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("program", sorted(SCRIPTS))
def test_every_program_has_a_man_page_naming_each_option(program):
    pages = [p for p in (REPO / "man").iterdir() if p.name.split(".")[0] == program and p.suffix[1:].isdigit()]
    assert pages, f"no man page for {program}"
    page = pages[0].read_text().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")
    module, _, func = SCRIPTS[program].partition(":")
    code = f"import sys; sys.argv[0] = {program!r}; from {module} import {func}; {func}(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+|-[A-Za-z])\b", out.stdout))
    options -= {"-h", "--help"}
    missing = sorted(o for o in options if o not in page)
    assert not missing, f"{program}: options in --help but not in {pages[0].name}: {missing}"


# -- what the pages say is missing ------------------------------------------------------------------

# Phrases that say a feature is missing or temporary.  Each use must be one of
# ALLOWED: a statement about something else (a message not yet acknowledged)
# or a limit that is real (pyimap-imapd(8) NOT SUPPORTED).  A page that says
# "not yet" about something that works misleads the admin who reads it.
STALE = re.compile(r"\b(?:yet|not supported|unsupported|for now|not implemented|not used yet|todo)\b", re.I)
ALLOWED = {
    "mailq.1": [r"an entry not tried yet"],
    "pyimap-imapd.8": [r"no session has seen yet", r"NOT SUPPORTED [A-Z]"],
    "pymail-security.7": [r"a message not yet acknowledged"],
    "pymail.7": [r"committed and not yet tried"],
    "pymda-rules.5": [r"Not supported: MH folders"],
    "pymta-smtpd.8": [
        r"end-of-data was not yet answered",
        r"the session is not yet encrypted",
        r"Error: command not implemented",
    ],
}


def page_text(path: Path) -> str:
    """A man page as plain words: request names, font escapes and line breaks gone."""
    text = re.sub(r"^\.[A-Za-z]+ ?", "", path.read_text(), flags=re.M)
    text = re.sub(r"\\f[BIRP]|\\&|\\(?=-)", "", text)
    return " ".join(text.split())


def test_no_page_calls_a_working_feature_missing():
    stale = []
    for path in sorted((REPO / "man").glob("*.[1-8]")):
        text = page_text(path)
        for m in STALE.finditer(text):
            around = text[max(0, m.start() - 80) : m.end() + 80]
            if not any(re.search(allowed, around) for allowed in ALLOWED.get(path.name, [])):
                stale.append(f"{path.name}: ...{around}...")
    assert not stale, "\n".join(stale)


def test_every_config_key_is_documented():
    sys.path.insert(0, str(REPO))
    from pymta.lib import config

    raw = (REPO / "man" / "pymail.toml.5").read_text()
    parts = re.split(r'^\.SS "([^"]*)"$', raw, flags=re.M)  # text, heading, text, heading, text...
    by_section = {h.strip("[]") if h != "Top level" else "": t for h, t in zip(parts[1::2], parts[2::2], strict=True)}
    missing = [
        param.name
        for param in config.PARAMS
        if f"\\fB{param.name.rpartition('.')[2]}\\fR \\(em" not in by_section.get(param.name.rpartition(".")[0], "")
    ]
    assert not missing, f"config keys missing from pymail.toml(5): {missing}"


def test_every_imap_capability_is_in_the_imapd_page():
    """pyimap-imapd(8) names every capability the server can advertise (issue 13)."""
    import ast

    source = (REPO / "pyimap" / "core.py").read_text()
    tree = ast.parse(source)
    caps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_capabilities":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    if re.fullmatch(r"[A-Z][A-Za-z0-9=+-]*", sub.value):
                        caps.add(sub.value.rstrip("="))  # APPENDLIMIT={n}
    assert {"IMAP4rev1", "IMAP4rev2", "BINARY", "QRESYNC", "UNAUTHENTICATE", "APPENDLIMIT", "STARTTLS"} <= caps
    page = (REPO / "man" / "pyimap-imapd.8").read_text().replace("\\-", "-")
    missing = sorted(c for c in caps if c not in page)
    assert not missing, f"capabilities missing from pyimap-imapd(8): {missing}"
