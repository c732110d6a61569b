"""A listening daemon's shutdown survives a second SIGTERM.

systemd stops a unit by signalling every process of its group, and the
pre-forking parent then signals its children again.  The asyncio loop closes
its self-pipe before it removes its signal handlers, so a second SIGTERM in
that window printed "Exception ignored when trying to write to the signal
wakeup fd ... BrokenPipeError" (found by tests/bench/soak.py).  Once serve()
has seen the first signal, no handler may write to the loop's self-pipe.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, os, signal, socket, sys
sys.path.insert(0, sys.argv[1])
from pymta.lib.driver_async import AsyncServer

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
server = AsyncServer(lambda: None)

async def main():
    asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    await server.serve([sock])
    # serve() returned; the loop is still open, about to close
    print("handler", "ignored" if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN else "other")
    print("wakeup", signal.set_wakeup_fd(-1))

asyncio.run(main())
os.kill(os.getpid(), signal.SIGTERM)  # the second signal, after the loop closed
print("alive")
"""


def test_second_sigterm_after_serve_is_harmless():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.stdout.splitlines() == ["handler ignored", "wakeup -1", "alive"], (proc.stdout, proc.stderr)
    assert proc.returncode == 0
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
