"""The crash test's relay sink: an aiosmtpd server in a process of its own.

::

    python3 relay_sink.py PORT DIR SEED

Answers ``550`` to ``reject*`` recipients and ``451`` to about one DATA in
twenty (from SEED), and keeps every message it accepts as ``DIR/N.msg``:
one JSON line with the recipients, then the message bytes, written to a
temporary name and renamed.  Prints ``ready`` once it listens, and stops
when its standard input closes or on SIGTERM.

A process of its own, not a thread of the harness: the harness runs the
load's clients, the killer and the file sampler in threads, and the peer
our qrunner relays to must not depend on how they share the GIL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from pathlib import Path


class Sink:
    def __init__(self, directory: Path, seed: int) -> None:
        self.directory = directory
        self.rng = random.Random(seed ^ 0x51AC)
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.rng.random() < 0.05:
            return "451 4.3.0 try again later"
        self.count += 1
        tmp = self.directory / f".{self.count}.tmp"
        tmp.write_bytes(json.dumps(list(envelope.rcpt_tos)).encode() + b"\n" + bytes(envelope.content))
        os.replace(tmp, self.directory / f"{self.count}.msg")
        return "250 2.0.0 OK"


def received(directory: Path) -> list[tuple[list[str], bytes]]:
    """What the sink in ``directory`` accepted, in order: (recipients, message)."""
    out = []
    names = sorted((n for n in os.listdir(directory) if n.endswith(".msg")), key=lambda n: int(n[:-4]))
    for name in names:
        head, _, data = (directory / name).read_bytes().partition(b"\n")
        out.append((json.loads(head), data))
    return out


def main(argv: list[str]) -> int:
    from aiosmtpd.controller import Controller

    port, directory, seed = int(argv[0]), Path(argv[1]), int(argv[2])
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(directory, seed), hostname="127.0.0.1", port=port)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    done.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
