"""The rules engine in-process: flags, scoring, variables, parts of the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymda.rules.engine import Engine, run_rules
from pymda.rules.parser import parse

MSG = b"From: alice@example.org\nTo: bob@example.test\nSubject: Report 42\n\nbody text\nmore\n"


def run(tmp_path: Path, rules: str, message: bytes = MSG, **variables):
    rc = tmp_path / "rc"
    rc.write_text(rules)
    base = {
        "MAILDIR": str(tmp_path),
        "DEFAULT": f"{tmp_path}/inbox/",
        "SHELL": "/bin/sh",
        "PATH": "/usr/bin:/bin",
        "LOCKEXT": ".lock",
        "SENDMAILFLAGS": "-oi",
    }
    base.update(variables)
    return run_rules(message, [rc], base, inbox=tmp_path / "inbox", sender="alice@example.org")


def msgs(folder: Path) -> list[bytes]:
    new = folder / "new"
    return sorted(p.read_bytes() for p in new.iterdir()) if new.is_dir() else []


def engine(tmp_path, rules, message=MSG, **variables):
    base = {"MAILDIR": str(tmp_path), "DEFAULT": f"{tmp_path}/inbox/", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    base.update(variables)
    eng = Engine(message, base, inbox=tmp_path / "inbox")
    eng.run_file(parse(rules, "rc"))
    return eng


def test_default_when_nothing_matches(tmp_path):
    out = run(tmp_path, ":0\n* ^Subject: nothing\nx/\n")
    assert out.exit_code == 0 and msgs(tmp_path / "inbox") == [MSG]


@pytest.mark.parametrize(
    "rules,folders",
    [
        # A: only when the last recipe without A matched
        (":0\n* ^Subject: Report\n{ }\n:0 A\na/\n", ["a"]),
        (":0\n* ^Subject: Nope\n{ }\n:0 A\na/\n:0\nb/\n", ["b"]),
        # a: ...and the previous one succeeded
        (":0 c\n* ^Subject\nnot/a/dir/mbox\n:0 a\na/\n:0\nb/\n", ["b"]),
        # E: else-if chains
        (":0\n* ^Subject: X\nx/\n:0 E\n* ^Subject: Y\ny/\n:0 E\nz/\n", ["z"]),
        (":0 c\n* ^Subject: Report\nx/\n:0 E\ny/\n:0 E\nz/\n:0\nw/\n", ["w", "x"]),
        # e: the previous recipe was tried and failed
        (":0 c\nnot/a/dir/mbox\n:0 e\nerr/\n", ["err"]),
        (":0 c\nok/\n:0 e\nerr/\n:0\nlast/\n", ["last", "ok"]),
    ],
)
def test_chaining_flags(tmp_path, rules, folders):
    out = run(tmp_path, rules)
    assert out.exit_code == 0
    got = sorted(p.name for p in tmp_path.iterdir() if (p / "new").is_dir() and msgs(p))
    assert got == folders


def test_carbon_copy_of_block_clones(tmp_path):
    out = run(tmp_path, ":0 c\n{\n  :0\n  * ^Subject: Report\n  reports/\n}\n:0\nall/\n")
    assert out.exit_code == 0
    assert msgs(tmp_path / "reports") == [MSG] and msgs(tmp_path / "all") == [MSG]


def test_scoring_sets_equals_and_decides(tmp_path):
    eng = engine(tmp_path, ":0\n* 3^0 ^Subject\n* -1^0 ^From\n* 2^1 e\n{ }\n", message=MSG)
    # 3 - 1 + 2 * (matches of 'e' in the header) -> positive
    header_e = eng.msg.text("H").lower().count("e")
    assert eng.special["="] == str(int(3 - 1 + 2 * header_e))
    eng = engine(tmp_path, ":0\n* 1^0 ^Subject\n* -5^0 ^From\nx/\n")
    assert eng.special["="] == "-4" and not eng.delivered


def test_size_weights(tmp_path):
    eng = engine(tmp_path, ":0\n* 10^1 > 10\n{ }\n")
    size = len(MSG)
    assert eng.special["="] == str(int(10 * size / 10))


def test_variable_forms(tmp_path):
    eng = engine(
        tmp_path,
        "A=x\nB=${A:-d}${U:-d}${A:+p}${U:+p}\nC=\"$#|$1|$@\"\nD='$A'\nE=$\\F\nF=a.b\nG=$\\F\n",
    )
    assert eng.vars["B"] == "xdp"
    assert eng.vars["D"] == "$A"
    assert eng.vars["G"] == "a\\.b"
    eng = Engine(MSG, {"MAILDIR": str(tmp_path), "SHELL": "/bin/sh"}, args=["one", "two"])
    eng.run_file(parse('C="$#|$1|$@"\n'))
    assert eng.vars["C"] == "2|one|one two"


def test_match_and_var_conditions(tmp_path):
    eng = engine(tmp_path, ":0\n* ^Subject: \\/[a-z]+ [0-9]+\n{ S=$MATCH }\n:0\n* S ?? 42$\n{ OK=yes }\n")
    assert eng.vars["S"] == "Report 42" and eng.vars["OK"] == "yes"


def test_parts_to_pipe_exact_bytes(tmp_path):
    run(tmp_path, ":0 hc\n| cat > head\n:0 bc\n| cat > body\n:0 c\n| cat > all\n:0 rc\n| cat > raw\n:0\n/dev/null\n")
    header, body = MSG.split(b"\n\n", 1)
    assert (tmp_path / "head").read_bytes() == header + b"\n\n"
    assert (tmp_path / "body").read_bytes() == body + b"\n"
    assert (tmp_path / "all").read_bytes() == MSG + b"\n"
    assert (tmp_path / "raw").read_bytes() == MSG


def test_capture_and_backquote(tmp_path):
    eng = engine(tmp_path, ":0\nLINES=| wc -l\nSUBJ=`sed -n 's/^Subject: //p'`\n")
    assert eng.vars["LINES"].strip() == str(MSG.count(b"\n") + 1)  # + the empty line procmail ensures
    assert eng.vars["SUBJ"] == "Report 42"


def test_includerc_and_switchrc(tmp_path):
    (tmp_path / "inc").write_text("INC=1\n:0\n* ^Subject: Report\nincluded/\n")
    out = run(tmp_path, "INCLUDERC=inc\n:0\nafter/\n")
    assert msgs(tmp_path / "included") == [MSG] and not (tmp_path / "after").exists()
    (tmp_path / "sw").write_text("SW=1\n")
    out = run(tmp_path, "SWITCHRC=sw\n:0\nnever/\n")
    assert out.exit_code == 0 and not (tmp_path / "never").exists()


def test_broken_include_is_skipped(tmp_path):
    (tmp_path / "bad").write_text(":0 Q\n/dev/null\n")
    run(tmp_path, "INCLUDERC=bad\n:0\nafter/\n")
    assert msgs(tmp_path / "after") == [MSG]


def test_filter_failure_leaves_message(tmp_path):
    run(tmp_path, ":0 fw\n| exit 2\n:0 f\n| true\n:0\nkept/\n")
    assert msgs(tmp_path / "kept") == [MSG]


def test_lastfolder_and_folder_traversal_refused(tmp_path):
    eng = engine(tmp_path, "X=../../etc\n:0 c\n$X/\n:0 c\nsafe/\n:0\n{ LF=$LASTFOLDER }\n")
    assert not eng.delivered
    assert eng.vars["LF"].startswith(str(tmp_path / "safe" / "new"))


def test_dry_run_touches_nothing(tmp_path):
    rc = tmp_path / "rc"
    rc.write_text(":0 c\ncopy/\n:0\n! x@y\n")
    out = run_rules(MSG, [rc], {"MAILDIR": str(tmp_path), "DEFAULT": f"{tmp_path}/inbox/"}, dry_run=True)
    assert out.folders == [f"{tmp_path}/copy/", "! x@y"]
    assert not (tmp_path / "copy").exists()
    assert any("forward to: x@y" in text for _, text in out.report)


def test_i_flag_ignores_unread_input(tmp_path):
    big = MSG + b"x" * 300000 + b"\n"
    out = run(tmp_path, ":0 c\n| true\n:0 e\nnotread/\n:0 ic\n| true\n:0 e\nnever/\n:0\n/dev/null\n", message=big)
    assert out.exit_code == 0
    assert len(msgs(tmp_path / "notread")) == 1  # the write error made the first pipe fail
    assert not (tmp_path / "never").exists()  # with i it did not


def test_w_and_W_flags_on_filters(tmp_path):
    run(tmp_path, ":0 fW\n| exit 1\n:0 e\nfailed/\n")
    assert msgs(tmp_path / "failed") == [MSG]


def test_maildir_and_default_assignments(tmp_path):
    (tmp_path / "sub").mkdir()
    run(tmp_path, "MAILDIR=sub\nDEFAULT=elsewhere/\n:0 c\nrel/\n")
    assert msgs(tmp_path / "sub" / "rel") == [MSG]
    assert msgs(tmp_path / "sub" / "elsewhere") == [MSG]


def test_local_lockfile_for_pipe_and_global_lockfile(tmp_path):
    out = run(
        tmp_path,
        "LOCKFILE=global.lock\n:0 c:\n| cat >> log.txt\n:0 c: explicit.lck\n| cat >> log2.txt\n:0\n/dev/null\n",
    )
    assert out.exit_code == 0
    assert (tmp_path / "log.txt").read_bytes() == MSG + b"\n"
    assert (tmp_path / "log2.txt").read_bytes() == MSG + b"\n"
    assert not any(p.name.endswith((".lock", ".lck")) for p in tmp_path.iterdir())


def test_verbose_log_and_abstract(tmp_path):
    run(tmp_path, "LOGFILE=log\nVERBOSE=yes\n:0\n* ^Subject: Report\nrep/\n")
    text = (tmp_path / "log").read_text()
    assert "match (1 condition)" in text and "Subject: Report 42" in text and "Folder: " in text
