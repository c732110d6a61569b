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
