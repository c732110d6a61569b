"""Logging in the Postfix manner: one line per event, ``program[pid]: QUEUEID: text``.

Lines go to stderr, which systemd sends to the journal and ``pymail run``
shows on the terminal -- except when stderr is the client's own socket
(classic inetd puts the connection on fds 0, 1 and 2; so does an
``Accept=yes`` unit without ``StandardError=``), and for commands people
and cron run (``to_syslog``: sendmail, and through ``PYMAIL_LOG=syslog``
in the environment the programs it starts): then they go to syslog
(facility mail), as Postfix's do.  No ``logging`` import: it costs start-up
time on every inetd connection.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "pymail"
_debug = bool(os.environ.get("PYMAIL_DEBUG"))


def printable(text: str, limit: int = 255) -> str:
    """``text`` safe to put in a log line or a reply: ASCII graphic characters
    only (the rest, spaces too, become '?'), at most ``limit`` of them."""
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text[:limit])


_syslog: Any = None  # None: not decided yet; False: stderr; else the syslog module


def _stderr_is_the_connection() -> bool:
    import stat  # noqa: PLC0415 lazy

    try:
        err = os.fstat(2)
        if not stat.S_ISSOCK(err.st_mode):
            return False
        return any((err.st_dev, err.st_ino) == (o.st_dev, o.st_ino) for o in (os.fstat(0), os.fstat(1)))
    except OSError:
        return False


def set_program(name: str) -> None:
    global _program
    _program = name


def to_syslog() -> None:
    """Send this program's lines to syslog (facility mail; the journal
    under systemd) whatever stderr is: for commands a person or cron runs
    (sendmail), whose stderr is the caller's and must stay quiet on
    success, as Postfix's sendmail and postdrop log."""
    global _syslog
    import syslog  # noqa: PLC0415 lazy

    syslog.openlog(_program, syslog.LOG_PID, syslog.LOG_MAIL)
    _syslog = syslog
    os.environ["PYMAIL_LOG"] = "syslog"  # and the programs it starts (sendmail -odi's queue runner)


def _write(level: str, text: str) -> None:
    global _syslog
    text = text.replace("\r", "\\r").replace("\n", "\\n")  # one event, one line
    if _syslog is None:
        if os.environ.get("PYMAIL_LOG") == "syslog" or _stderr_is_the_connection():
            import syslog  # noqa: PLC0415 lazy

            syslog.openlog(_program, syslog.LOG_PID, syslog.LOG_MAIL)
            _syslog = syslog
        else:
            _syslog = False
    if _syslog:
        priority = {"": _syslog.LOG_INFO, "warning": _syslog.LOG_WARNING, "error": _syslog.LOG_ERR}.get(
            level, _syslog.LOG_DEBUG
        )
        _syslog.syslog(priority, f"{level}: {text}" if level else text)
        return
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
