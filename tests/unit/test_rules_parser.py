"""Rules file parser: recipes, conditions, actions, line numbers, problems."""

from __future__ import annotations

from pymda.rules.parser import Assign, Recipe, parse


def test_recipe_parts_and_lines():
    rf = parse("# comment\nVAR=value\n\n:0 Bfw: lock.lck\n* ^Subject: x\n* ! ^From: y\n| sed -e s/a/b/\n")
    assert rf.problems == []
    assign, recipe = rf.items
    assert isinstance(assign, Assign) and assign.name == "VAR" and assign.line == 2
    assert isinstance(recipe, Recipe) and recipe.line == 4
    assert recipe.flags == "Bfw" and recipe.lockfile == "lock.lck"
    assert [(c.kind, c.negate, c.line) for c in recipe.conditions] == [("regex", False, 5), ("regex", True, 6)]
    assert recipe.action.kind == "pipe" and recipe.action.text == "sed -e s/a/b/" and recipe.action.line == 7
    assert not recipe.delivering


def test_condition_kinds_and_weights():
    rf = parse(
        ":0\n* < 1000\n* > 5\n* ? test -n x\n* $ ^To:.*$ME\n* SUBJ ?? ^hi\n* B ?? body\n"
        "* 2^1 ^Received:\n* -1.5^0 \\!literal\nfolder/\n"
    )
    assert rf.problems == []
    conds = rf.items[0].conditions
    assert [c.kind for c in conds] == ["size", "size", "program", "expand", "var", "var", "regex", "regex"]
    assert conds[0].op == "<" and conds[0].arg == "1000"
    assert conds[4].var == "SUBJ" and conds[5].var == "B"
    assert conds[6].weight == (2.0, 1.0)
    assert conds[7].weight == (-1.5, 0.0) and conds[7].arg == "!literal"


def test_actions():
    rf = parse(":0:\nmbox\n:0\n! a@b c@d\n:0\nVAR=| cat\n:0\n{ X=1 }\n:0 c\n.Folder/ # comment\n")
    assert rf.problems == []
    kinds = [(r.action.kind, r.action.text, r.lockfile) for r in rf.items]
    assert kinds == [
        ("folder", "mbox", ""),
        ("forward", "a@b c@d", None),
        ("capture", "cat", None),
        ("block", "{", None),
        ("folder", ".Folder/", None),
    ]
    assert rf.items[2].action.var == "VAR"
    assert [type(i).__name__ for i in rf.items[3].action.items] == ["Assign"]


def test_quoting_and_continuations():
    rf = parse("A=\"two words\" B='$lit' C=`echo hi`\nD=x\\\ny\n:0\n* ^Subject: a\\\n   b\nf/\n")
    assert rf.problems == []
    a, b, c, d, r = rf.items
    assert a.value == [("dq", "two words")] and b.value == [("sq", "$lit")] and c.value == [("bq", "echo hi")]
    assert d.value == [("plain", "xy")]
    assert r.conditions[0].arg == "^Subject: ab"


def test_nested_blocks():
    rf = parse(":0\n* a\n{\n  :0\n  * b\n  {\n    :0\n    x/\n  }\n  :0\n  y/\n}\n")
    assert rf.problems == []
    outer = rf.items[0].action.items
    assert len(outer) == 2 and outer[0].action.kind == "block"


def test_problems_have_line_numbers():
    rf = parse(":0\n* ^ok\nok/\n:0 Q\n* (a+)+\nx/\n:0\n* [abc\ny/\nstray words here\n}\n:0\n{\n")
    msgs = dict(rf.problems)
    assert "unknown flag" in msgs[4]
    assert "exponential" in msgs[5]
    assert "bad regular expression" in msgs[8]
    assert "unexpected text" in msgs[10]
    assert "without a block" in msgs[11]
    assert "never closed" in msgs[13]


def test_recipe_without_action():
    rf = parse(":0\n* ^Subject\n")
    assert rf.problems == [(1, "recipe has no action line")]
