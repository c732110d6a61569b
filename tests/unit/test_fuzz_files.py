"""Hostile input to the file parsers: the config, the users file, aliases,
rules.  The rule (h11's): parse it or report a problem -- never raise,
never hang, never lose a line number."""

from __future__ import annotations

import os
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymda.rules import parser as rules_parser
from pymta import aliases
from pymta.lib import config, users

# PYMAIL_FUZZ_EXAMPLES: the long run (see tests/unit/test_fuzz_protocols.py)
FAST = settings(
    max_examples=int(os.environ.get("PYMAIL_FUZZ_EXAMPLES", "0") or 0) or 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

toml_scalars = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=4),
)
known_keys = st.sampled_from([p.name for p in config.PARAMS] + ["bogus", "smtpd.bogus", "paths"])


@st.composite
def config_tables(draw):
    data: dict = {}
    for key in draw(st.lists(known_keys, max_size=12)):
        value = draw(st.one_of(toml_scalars, st.dictionaries(st.text(max_size=8), toml_scalars, max_size=3)))
        section, _, name = key.partition(".")
        if name:
            table = data.setdefault(section, {})
            if isinstance(table, dict):
                table[name] = value
        else:
            data[key] = value
    return data


@FAST
@given(config_tables())
def test_config_check_reports_and_never_raises(data):
    values, problems = config.check(data)
    assert all(isinstance(k, str) and isinstance(m, str) for k, m in problems)
    if not problems:
        assert set(values) == set(config.PARAM_BY_NAME)


@FAST
@given(st.text(max_size=300))
def test_config_load_of_any_text_is_a_config_error_or_a_config(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "pymail.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        config.load(path)
    except config.ConfigError as exc:
        assert exc.problems
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - load must wrap it
        raise AssertionError("TOML errors must become ConfigError") from exc


@FAST
@given(st.binary(max_size=2000))
def test_users_file_parser_skips_bad_lines_with_their_numbers(data):
    parsed = users._parse(data)
    lines = data.count(b"\n") + 1
    assert all(1 <= n <= lines for n, _ in parsed.problems)


@FAST
@given(st.text(max_size=1500))
def test_aliases_parse_and_check_never_raise(text):
    table, problems = aliases.parse(text)
    lines = len(text.splitlines()) + 1
    assert all(0 <= n <= lines for n, _ in problems + aliases.check(text))
    for name, targets in table.items():
        assert name and targets


@FAST
@given(st.text(alphabet=st.sampled_from(list(":0*!|{}$^\\/<>?.,HBDAaEecwWifhb \t\n\"'=abcxyz123")), max_size=600))
def test_rules_parser_reports_errors_instead_of_raising(text):
    rule_file = rules_parser.parse(text, "fuzz.rc", compile_regex=True)
    assert rule_file is not None


def test_deeply_nested_rule_blocks_are_a_syntax_error_not_a_crash():
    text = ":0\n{\n" * 5000 + "}\n" * 5000
    rule_file = rules_parser.parse(text, "deep.rc")
    assert any("nested more than" in message for _, message in rule_file.problems)
