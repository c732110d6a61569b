"""The same rules and messages through real procmail and through pymda-deliver -m.

Each case runs ``procmail -m MAILDIR=D DEFAULT=D/default/ LOGFILE=D/log
SENDMAIL=D/../sendmail-recorder RCFILE < msg`` and the same command line
with pymda-deliver, then compares the exit status and every file the two
left behind: Maildir messages (modulo their unique names), mbox files,
files written by pipes, and what the forward program received.

Like with like: procmail -m writes no ``From_`` line into an mbox when the
message has none; pymda-deliver always does (an mbox without one is not an
mbox).  Mbox contents are compared with generated ``From_`` lines removed;
messages that arrive with a ``From_`` line keep it in both, byte for byte.

Deliberate differences (pymda-rules(5), DIFFERENCES FROM PROCMAIL) are not
among these cases: failing delivering pipes with ``w`` and nothing
after them to deliver (we defer, exit 75),
syntax errors (we skip the whole file), filters that fail without ``w``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROCMAIL = shutil.which("procmail")
pytestmark = pytest.mark.skipif(PROCMAIL is None, reason="procmail is not installed")

PLAIN = (
    b"From: Alice Example <alice@example.org>\n"
    b"To: Bob <bob@example.test>\n"
    b"Cc: carol@example.net\n"
    b"Subject: Meeting notes 2024\n"
    b"Message-ID: <m1@example.org>\n"
    b"\n"
    b"Hello Bob,\n"
    b"From here on we meet on Tuesdays.\n"
    b"Regards\n"
)
FROMLINE = b"From alice@example.org  Sat Nov 28 07:00:00 2026\n" + PLAIN
LIST = (
    b"From: dev-owner@lists.example.org\n"
    b"To: python-dev@lists.example.org\n"
    b"List-Id: Python development <python-dev.lists.example.org>\n"
    b"Precedence: list\n"
    b"Subject: [Python-Dev] PEP 999 accepted\n"
    b"Received: from a by b\nReceived: from c by d\nReceived: from e by f\n"
    b"\n"
    b"The PEP is accepted.\n"
)
BOUNCE = (
    b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>\n"
    b"To: bob@example.test\n"
    b"Subject: Undelivered Mail Returned to Sender\n"
    b"\n"
    b"This is the mail system at host mx.example.org.\n"
)
SPAM = (
    b"From: winner@lottery.example\n"
    b"To: undisclosed-recipients:;\n"
    b"Subject: YOU HAVE WON\n"
    b"X-Spam-Score: 7.5\n"
    b"\n"
    b"viagra viagra viagra cheap cheap\n" + b"x" * 3000 + b"\n"
)
NOEOL = b"From: a@example.org\nSubject: no final newline\n\nlast line"
FOLDED = (
    b"From: Alice Example <alice@example.org>\n"
    b"To: Bob <bob@example.test>,\n  Carol <carol@example.net>\n"
    b"Subject: Re: the numbers for the\n\tquarterly review\n"
    b"Message-ID: <m2@example.org>\n"
    b"\n"
    b"the numbers\n"
)

_PIPED = "cat > piped.tmp; mv piped.tmp piped"

# (id, rules, message, extra assignments)
CASES = [
    ("empty-rules-default", "", PLAIN, []),
    ("header-match-maildir", ":0\n* ^Subject: Meeting\nmeetings/\n", PLAIN, []),
    ("no-match-default", ":0\n* ^Subject: nothing like this\nother/\n", PLAIN, []),
    ("case-insensitive", ":0\n* ^subject: MEETING notes\nmeetings/\n", PLAIN, []),
    ("D-case-sensitive", ":0 D\n* ^subject: MEETING\nmeetings/\n:0\nrest/\n", PLAIN, []),
    ("B-body", ":0 B\n* Tuesdays\nbody/\n", PLAIN, []),
    ("HB-both", ":0 HB\n* ^Regards\nboth/\n", PLAIN, []),
    ("negation", ":0\n* ! ^Subject:.*invoice\n* ^From:.*alice\nfriends/\n", PLAIN, []),
    ("size-less", ":0\n* < 1000\nsmall/\n:0\nbig/\n", PLAIN, []),
    ("size-greater", ":0\n* > 2000\nbig/\n:0\nsmall/\n", SPAM, []),
    ("TO_-macro", ":0\n* ^TO_carol@example\\.net\ncc/\n", PLAIN, []),
    ("TO-macro-word", ":0\n* ^TObob\nbob/\n", PLAIN, []),
    ("FROM_DAEMON", ":0\n* ^FROM_DAEMON\ndaemon/\n:0\nhuman/\n", BOUNCE, []),
    ("FROM_DAEMON-list", ":0\n* ^FROM_DAEMON\ndaemon/\n:0\nhuman/\n", LIST, []),
    ("FROM_MAILER-not-human", ":0\n* ^FROM_MAILER\nmailer/\n:0\nhuman/\n", PLAIN, []),
    ("match-operator-folder", ":0\n* ^List-Id:.*<\\/[a-z-]+\nlist-$MATCH/\n", LIST, []),
    ("match-left-minimal", ":0\n* ^Subject:.*\\/[0-9]+\nyear-$MATCH/\n", PLAIN, []),
    ("assign-and-expand", 'BOX=archive\nSUB="$BOX-2024"\n:0\n${SUB}/\n', PLAIN, []),
    ("default-expansion", ":0\n${UNSET:-fallback}/\n", PLAIN, []),
    ("dollar-condition", "WHO=alice\n:0\n* $ ^From:.*$WHO@\nfrom-$WHO/\n", PLAIN, []),
    ("escaped-var-regex", "SUBJ=[Python-Dev]\n:0\n* $ ^Subject: $\\SUBJ\npydev/\n", LIST, []),
    ("var-test", "KIND=newsletter\n:0\n* KIND ?? ^news\nnews/\n", PLAIN, []),
    ("carbon-copy", ":0 c\ncopy/\n:0\n* ^Subject: Meeting\nmeetings/\n", PLAIN, []),
    ("A-chain", ":0\n* ^From:.*alice\n{ }\n:0 A\n* ^Subject:.*notes\nnotes/\n", PLAIN, []),
    ("A-chain-fails", ":0\n* ^From:.*mallory\n{ }\n:0 A\nnotes/\n:0\nelse/\n", PLAIN, []),
    ("a-after-success", ":0 c\n* ^Subject\nfirst/\n:0 a\nsecond/\n", PLAIN, []),
    ("E-else-chain", ":0\n* ^Subject: nope\none/\n:0 E\n* ^Subject: Meeting\ntwo/\n:0 E\nthree/\n", PLAIN, []),
    ("E-skipped", ":0 c\n* ^Subject: Meeting\none/\n:0 E\ntwo/\n:0\nthree/\n", PLAIN, []),
    ("e-after-error", ":0 c\nno/such/dir/mbox\n:0 e\nrescued/\n", PLAIN, []),
    (
        "nested-blocks",
        ":0\n* ^From:.*alice\n{\n  :0\n  * ^Subject:.*notes\n  {\n    :0\n    deep/\n  }\n}\n",
        PLAIN,
        [],
    ),
    ("block-no-delivery", ":0\n* ^From:.*alice\n{\n  TAG=yes\n}\n:0\n* TAG ?? yes\ntagged/\n", PLAIN, []),
    ("filter-sed", ":0 fw\n| sed -e 's/Meeting/Conference/'\n:0\nout/\n", PLAIN, []),
    ("filter-formail-header", ":0 fhw\n| formail -A 'X-Filtered: yes'\n:0\n* ^X-Filtered: yes\nfiltered/\n", PLAIN, []),
    ("filter-body-tr", ":0 fbw\n| tr a-z A-Z\n:0\nupper/\n", PLAIN, []),
    ("mbox-plain", ":0:\nmailbox\n", PLAIN, []),
    ("mbox-fromline", ":0:\nmailbox\n", FROMLINE, []),
    ("maildir-fromline", ":0\ninbox/\n", FROMLINE, []),
    ("mbox-header-only", ":0 h\nheaders\n", FROMLINE, []),
    ("pipe-whole", ":0 w\n| cat > piped\n", FROMLINE, []),
    ("pipe-body-only", ":0 bw\n| cat > body\n", PLAIN, []),
    ("pipe-header-only-copy", ":0 hcw\n| cat > head\n:0\nrest/\n", PLAIN, []),
    ("pipe-env-var", "TAG=hello\n:0 w\n| printf '%s\\n' \"$TAG\" > tagfile\n", PLAIN, []),
    ("forward", ":0 w\n! bob@example.net carol@example.org\n", PLAIN, []),
    ("forward-copy", ":0 cw\n! archive@example.net\n:0\nkept/\n", FROMLINE, []),
    ("dev-null", ":0\n* ^Subject: YOU HAVE WON\n/dev/null\n", SPAM, []),
    ("weights-positive", ":0\n* 1^0 ^Subject:.*WON\n* -2^0 ^From:.*friend\nspam/\n:0\nham/\n", SPAM, []),
    ("weights-negative", ":0\n* 1^0 ^Subject:.*WON\n* -2^0 ^To:.*undisclosed\nspam/\n:0\nham/\n", SPAM, []),
    ("weights-count", ":0 B\n* 1^1 viagra\n* -2^0 .\nspam/\n:0\nham/\n", SPAM, []),
    ("weights-received", ":0\n* 1^1 ^Received:\n* -2^0\nmanyhops/\n:0\nfewhops/\n", LIST, []),
    ("capture", ":0\nLEN=| wc -l | tr -d ' '\n:0\n* LEN ?? ^^9^^\nnine/\n:0\nother-$LEN/\n", PLAIN, []),
    ("backquote", "SUBJ=`formail -xSubject: | sed 's/^ //'`\n:0\n* SUBJ ?? ^Meeting\nsubj/\n", PLAIN, []),
    ("includerc", "INCLUDERC=$MAILDIR/../inc.rc\n:0\nafter/\n", PLAIN, []),
    ("switchrc", "SWITCHRC=$MAILDIR/../inc.rc\n:0\nnever/\n", BOUNCE, []),
    ("multi-maildir", ":0\none/ two/\n", PLAIN, []),
    ("raw-flag", ":0 r\nrawbox\n", NOEOL, []),
    ("no-final-newline", ":0\nnormal\n", NOEOL, []),
    ("anchor-start", ":0\n* ^^From: Alice\nfirst-header/\n", PLAIN, []),
    ("word-boundary", ":0 B\n* \\<meet\\>\nword/\n:0\nnoword/\n", PLAIN, []),
    ("command-line-var", ":0\n* FOLDER ?? .\n$FOLDER/\n", PLAIN, ["FOLDER=fromargs"]),
    ("args-positional", ":0\n$1/\n", PLAIN, ["--", "posarg"]),
    ("condition-program", ":0\n* ? grep -q Tuesdays\ntuesday/\n:0\nother/\n", PLAIN, []),
    ("condition-program-header", ":0 B\n* ? grep -q Tuesdays\ntuesday/\n:0\nother/\n", PLAIN, []),
    # A folded field is searched as one line: procmail's concon() reads each
    # continuation's newline as a space (the tab stays), so "$" does not
    # anchor at the fold, and neither does "^" at the continuation line.
    ("folded-continuation", ":0\n* ^Subject:.*quarterly\nq/\n", FOLDED, []),
    ("folded-space-tab", ":0\n* ^Subject:.*the \tquarterly\nq/\n", FOLDED, []),
    ("folded-class", ":0\n* ^Subject:.*the[ \t]+quarterly review$\nq/\n", FOLDED, []),
    ("folded-no-dollar", ":0\n* ^Subject:.*the$\nq/\n:0\n* ^[ \t]+quarterly\nc/\n", FOLDED, []),
    ("folded-body-untouched", ":0 HB\n* ^Subject:.*review$\nq/\n", FOLDED, []),
    ("folded-to", ":0\n* ^To:.*bob.*carol@\ntoo/\n", FOLDED, []),
    # A pipe without w: procmail does not look at the exit status (it does
    # not even wait for the program), the delivery is done and the later
    # recipes do not run.  WAITFOR: the file the program leaves last.
    ("pipe-no-w-exit-nonzero", f":0\n| {_PIPED}; exit 3\n:0\nafter/\n", PLAIN, ["WAITFOR:piped"]),
    ("pipe-no-w-killed", f":0\n| {_PIPED}; kill -9 $$\n:0\nafter/\n", PLAIN, ["WAITFOR:piped"]),
    ("pipe-no-w-copy-nonzero", f":0 c\n| {_PIPED}; exit 1\n:0 e\nerror/\n:0\nafter/\n", PLAIN, ["WAITFOR:piped"]),
    ("pipe-w-exit-nonzero-falls-through", f":0 w\n| {_PIPED}; exit 3\n:0\nafter/\n", PLAIN, []),
    ("no-default-m-mode", ":0\n* ^Subject: nope\nx/\n", PLAIN, ["NODEFAULT"]),
]

INCLUDED = ":0\n* ^FROM_DAEMON\nbounces/\n"

RECORDER = (
    "#!/bin/sh\nn=$(ls \"$MAILDIR\" | grep -c '^sent-')\n"
    'printf \'%s\\n\' "$@" > "$MAILDIR/sent-$n.args"\ncat > "$MAILDIR/sent-$n.msg"\n'
)

_FROM_ = re.compile(rb"^From \S+ +\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\n", re.M)


def run_one(tool: str, root: Path, rules: str, message: bytes, extra: list[str]) -> tuple[int, dict]:
    work = root / tool
    mail = work / "mail"
    mail.mkdir(parents=True)
    (work / "rc").write_text(rules)
    (work / "inc.rc").write_text(INCLUDED)
    (work / "sendmail").write_text(RECORDER)
    (work / "sendmail").chmod(0o755)
    assigns = [f"MAILDIR={mail}", f"LOGFILE={work}/log", f"SENDMAIL={work}/sendmail"]
    args = []
    wait_for = [item.split(":", 1)[1] for item in extra if item.startswith("WAITFOR:")]
    extra = [item for item in extra if not item.startswith("WAITFOR:")]
    if "NODEFAULT" not in extra:
        assigns.append(f"DEFAULT={mail}/default/")
    for item in extra:
        if item == "NODEFAULT":
            continue
        if item == "--":
            args = extra[extra.index("--") + 1 :]
            break
        assigns.append(item)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "PYTHONPATH": str(REPO)}
    if tool == "procmail":
        cmd = [PROCMAIL, "-m", *assigns, str(work / "rc"), *args]
    else:
        cmd = [sys.executable, "-m", "pymda.deliver", "-m", *assigns, str(work / "rc"), *args]
    proc = subprocess.run(cmd, input=message, cwd=mail, env=env, capture_output=True, timeout=60)
    deadline = time.monotonic() + 10
    while any(not (mail / name).exists() for name in wait_for) and time.monotonic() < deadline:
        time.sleep(0.02)  # procmail without w leaves the program running
    return proc.returncode, collect(mail)


def collect(mail: Path) -> dict:
    """{relative place: sorted list of contents}; Maildir file names are dropped."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(mail.rglob("*")):
        if not path.is_file() or path.name in ("maildirfolder",) or path.name.endswith(".lock"):
            continue
        rel = path.relative_to(mail)
        data = path.read_bytes()
        if rel.parent.name in ("new", "cur"):
            key = str(rel.parent)
        else:
            key = str(rel)
            data = _FROM_.sub(b"From_\n", data) if not data.startswith(b"From alice@example.org  Sat Nov 28") else data
            data = data.replace(b"From_\n", b"") if b"From_\n" in data else data
        found.setdefault(key, []).append(data)
    return {k: sorted(v) for k, v in found.items()}


@pytest.mark.parametrize("name,rules,message,extra", CASES, ids=[c[0] for c in CASES])
def test_same_as_procmail(tmp_path, name, rules, message, extra):
    p_code, p_files = run_one("procmail", tmp_path, rules, message, extra)
    m_code, m_files = run_one("pymda", tmp_path, rules, message, extra)
    assert (m_code, m_files) == (p_code, p_files)
    assert p_files or p_code or name == "dev-null", "the case should deliver somewhere"


def test_case_count():
    assert len(CASES) >= 30
