"""``pymail rules ...``: found by pymta.cli's plugin hook (cli_<name> modules)."""

from pymda.rules.cli import rules as command  # noqa: F401
