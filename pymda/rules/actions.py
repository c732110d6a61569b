"""Running programs for recipes: pipes, filters, captures, ``?`` conditions, forwards.

Every program gets a clean environment (the rules' variables, nothing
inherited), its own process group, a time limit (``$TIMEOUT``) after which
the whole group is killed, and the message on stdin.  Envelope data reaches
programs only through the environment (``SENDER``, ``RECIPIENT``,
``EXTENSION``) or argv, never pasted into a shell string.
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

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out and not self.error


def run(argv: list[str], data: bytes | None, env: dict, cwd: str | None, timeout: float, *,
        capture: bool = False, stderr=None) -> Result:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if capture else None, stderr=stderr, env=env,
                                cwd=cwd if cwd and os.path.isdir(cwd) else None, start_new_session=True,
                                close_fds=True)
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
        try:
            while True:
                chunk = proc.stdout.read(65536)
                if not chunk:
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
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        result.code = None
    for t in threads:
        t.join(timeout=5)
    if capture and proc.stdout:
        proc.stdout.close()
    result.output = b"".join(chunks)
    return result
