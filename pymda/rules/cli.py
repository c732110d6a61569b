"""``pymail rules``: check rules files (pymda-rules(5)).

Registered with the admin command through ``pymda/cli_rules.py`` (the
plugin hook of pymta.cli), so ``pymail rules check FILE`` works without
loading this module for other commands.
"""

from __future__ import annotations

import sys

import click

from pymda.rules.parser import Recipe, parse_file, walk


@click.group("rules")
def rules():
    """Procmail-style delivery rules (pymda-rules(5))."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(files):
    """Report syntax errors in rules FILES with their line numbers.

    Exit status 0 when every file is fine, 65 when any has a problem,
    66 when a file cannot be read.
    """
    status = 0
    for name in files:
        try:
            result = parse_file(name, compile_regex=True)
        except OSError as exc:
            click.echo(f"{name}: {exc.strerror}", err=True)
            status = max(status, 66)
            continue
        if result.problems:
            for line, message in result.problems:
                click.echo(f"{name}:{line}: {message}")
            status = max(status, 65)
        else:
            recipes = sum(1 for item in walk(result.items) if isinstance(item, Recipe))
            click.echo(f"{name}: ok ({recipes} recipe{'s' if recipes != 1 else ''})")
    sys.exit(status)
