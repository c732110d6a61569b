"""Running programs for recipes: pipes, filters, captures, ``?`` conditions, forwards.

Every program gets a clean environment (the rules' variables, nothing
inherited), its own process group, a time limit (``$TIMEOUT``) after which
the whole group is killed, the message on stdin, and a bound on the output
read back (``limit``: past it the group is killed and the run fails).
Envelope data reaches programs only through the environment (``SENDER``,
``RECIPIENT``, ``EXTENSION``) or argv, never pasted into a shell string.
``redirections`` finds the files a shell command writes with ``>``/``>>``
so the engine can confine them like folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass


@dataclass
class Result:
    code: int | None  # None: did not start or timed out
    output: bytes = b""
    write_error: str = ""
    timed_out: bool = False
    error: str = ""
    overflow: bool = False  # more output than the limit: killed
    refused: bool = False  # not run: it would write outside the user's directories

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out and not self.error and not self.overflow

    def why(self) -> str:
        """What went wrong, for a log line."""
        if self.error:
            return self.error
        if self.overflow:
            return "wrote more output than allowed and was killed"
        return "timed out" if self.timed_out else f"exited {self.code}"


def run(
    argv: list[str],
    data: bytes | None,
    env: dict,
    cwd: str | None,
    timeout: float,
    *,
    capture: bool = False,
    stderr=None,
    limit: int | None = None,
) -> Result:
    """Run ``argv``; with ``capture`` read its output, at most ``limit`` bytes.

    Output not captured goes where ``stderr`` goes (the LOGFILE), else to
    /dev/null: never to the deliverer's own stdout.
    """
    if capture:
        stdout = subprocess.PIPE
    else:
        stdout = stderr if stderr is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd if cwd and os.path.isdir(cwd) else None,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        return Result(None, error=f"cannot run {argv[0]}: {exc.strerror}")
    result = Result(None)
    chunks: list[bytes] = []

    def feed():
        try:
            proc.stdin.write(data)
        except OSError as exc:  # BrokenPipeError: the program did not read it all
            result.write_error = exc.strerror or str(exc)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def drain():
        got = 0
        try:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                got += len(chunk)
                if limit is not None and got > limit:
                    result.overflow = True
                    _kill_group(proc)
                    break
                chunks.append(chunk)
        except (OSError, ValueError):
            pass

    threads = []
    if data is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    if capture:
        threads.append(threading.Thread(target=drain, daemon=True))
    for t in threads:
        t.start()
    try:
        result.code = proc.wait(timeout=timeout if timeout and timeout > 0 else None)
    except subprocess.TimeoutExpired:
        result.timed_out = True
        _kill_group(proc)
        proc.wait()
        result.code = None
    for t in threads:
        t.join(timeout=5)
        if t.is_alive():  # a child left in the background still holds the pipe
            _kill_group(proc)
            t.join(timeout=5)
    if capture and proc.stdout:
        proc.stdout.close()
    result.output = b"" if result.overflow else b"".join(chunks)
    return result


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


_WORD_END = " \t\n;&|<>()"


def redirections(command: str) -> list[list[tuple[str, str]]]:
    """The targets of the output redirections (``>``, ``>>``, ``>|``,
    ``&>``, ``n>``, ``<>``) in shell ``command``, each as segments
    ``(kind, text)`` with kind plain/dq/sq like the rules parser's words.

    A light reading of sh(1): quotes and backslashes are honoured;
    ``>&2``-style descriptor copies are not files.  It errs towards
    finding too much (a ``>`` inside ``$(...)`` counts), never too little.
    """
    out = []
    i, n = 0, len(command)
    quote = ""
    while i < n:
        c = command[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
            i += 1
            continue
        if c == "\\":
            i += 2
            continue
        if c in "'\"":
            quote = c
            i += 1
            continue
        if c == "#" and (i == 0 or command[i - 1] in " \t\n;&|"):
            end = command.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == ">" or (c == "<" and command.startswith("<>", i)):
            i += 1 if c == ">" else 2
            dup = c == ">" and i < n and command[i] == "&"
            if i < n and command[i] in ">|&":
                i += 1
            while i < n and command[i] in " \t":
                i += 1
            word, i = _word(command, i)
            text = "".join(t for _, t in word)
            if dup and (text.isdigit() or text == "-"):
                continue  # >&2: a copy of a descriptor
            out.append(word)
            continue
        i += 1
    return out


def _word(command: str, i: int) -> tuple[list[tuple[str, str]], int]:
    segs: list[tuple[str, str]] = []
    plain: list[str] = []
    n = len(command)
    while i < n and command[i] not in _WORD_END:
        c = command[i]
        if c == "\\" and i + 1 < n:
            plain.append(command[i + 1])
            i += 2
            continue
        if c in "'\"":
            if plain:
                segs.append(("plain", "".join(plain)))
                plain = []
            end = command.find(c, i + 1)
            end = n if end < 0 else end
            segs.append(("sq" if c == "'" else "dq", command[i + 1 : end]))
            i = end + 1
            continue
        plain.append(c)
        i += 1
    if plain:
        segs.append(("plain", "".join(plain)))
    return segs, i
