"""Logging in the Postfix manner: one line per event, ``program[pid]: QUEUEID: text``.

Lines go to stderr, which systemd sends to the journal and ``pymail run``
shows on the terminal.  No ``logging`` import: it costs start-up time on
every inetd connection.
"""

from __future__ import annotations

import os
import sys

_program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pymail"
_debug = bool(os.environ.get("PYMAIL_DEBUG"))


def set_program(name: str) -> None:
    global _program
    _program = name


def _write(level: str, text: str) -> None:
    text = text.replace("\r", "\\r").replace("\n", "\\n")  # one event, one line
    prefix = f"{_program}[{os.getpid()}]: "
    if level:
        prefix += level + ": "
    try:
        sys.stderr.write(prefix + text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must never take a delivery down with it


def info(text: str, qid: str | None = None) -> None:
    _write("", f"{qid}: {text}" if qid else text)


def warning(text: str, qid: str | None = None) -> None:
    _write("warning", f"{qid}: {text}" if qid else text)


def error(text: str, qid: str | None = None) -> None:
    _write("error", f"{qid}: {text}" if qid else text)


def debug(text: str, qid: str | None = None) -> None:
    if _debug:
        _write("debug", f"{qid}: {text}" if qid else text)
